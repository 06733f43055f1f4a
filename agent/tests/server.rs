//! The agent's request loop, run as an ordinary process (not PID 1) with a
//! pty standing in for /dev/hvc0: handshake, error replies, and how it
//! treats a garbled channel. Container creation itself needs a VM (layer
//! disks, mounts) and is covered by the guest tests of the `run` side.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_agent::protocol::{
    expect_hello, read_frame, write_frame, Event, Frame, ProtocolError, Request, Response,
    PROTOCOL_VERSION,
};
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use nix::unistd::ttyname;

struct Agent {
    child: Child,
    to_agent: File,
    frames: mpsc::Receiver<Result<Frame, ProtocolError>>,
    _slave: OwnedFd,
}

impl Agent {
    fn spawn() -> Self {
        let pty = openpty(None, None).expect("openpty");
        let mut termios = tcgetattr(&pty.slave).unwrap();
        cfmakeraw(&mut termios);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).unwrap();
        let path = ttyname(&pty.slave).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
            .arg("--channel")
            .arg(&path)
            .env("HUSK_AGENT_LOG", "debug")
            .spawn()
            .expect("spawn agent");
        let master = File::from(pty.master);
        let mut from_agent = master.try_clone().unwrap();
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || loop {
            let frame = read_frame(&mut from_agent);
            let stop = frame.is_err();
            if tx.send(frame).is_err() || stop {
                return;
            }
        });
        Self {
            child,
            to_agent: master,
            frames,
            _slave: pty.slave,
        }
    }

    fn next(&self) -> Frame {
        self.frames
            .recv_timeout(Duration::from_secs(20))
            .expect("agent answered in time")
            .expect("a valid frame")
    }

    fn request(&mut self, id: u32, request: Request) -> Response {
        write_frame(&mut self.to_agent, &Frame::Request { id, request }).unwrap();
        match self.next() {
            Frame::Response { id: got, response } => {
                assert_eq!(got, id);
                response
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("agent did not exit");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hello(agent: &Agent) {
    match agent.next() {
        Frame::Hello(hello) => assert_eq!(hello.protocol_version, PROTOCOL_VERSION),
        other => panic!("expected Hello, got {other:?}"),
    }
}

#[test]
fn hello_comes_first_and_expect_hello_accepts_it() {
    let pty = openpty(None, None).unwrap();
    let mut termios = tcgetattr(&pty.slave).unwrap();
    cfmakeraw(&mut termios);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).unwrap();
    let path = ttyname(&pty.slave).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
        .arg("--channel")
        .arg(&path)
        .spawn()
        .unwrap();
    let mut master = File::from(pty.master);
    let hello = expect_hello(&mut master);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(hello.unwrap().protocol_version, PROTOCOL_VERSION);
}

#[test]
fn requests_without_a_container_get_step_errors() {
    let mut agent = Agent::spawn();
    hello(&agent);
    for (id, request, step) in [
        (1, Request::Start { container: None }, "start"),
        (2, Request::Stats { container: None }, "stats"),
        (
            3,
            Request::Signal {
                process: 7,
                signal: 15,
            },
            "signal",
        ),
        (4, Request::Wait { process: 7 }, "wait"),
        (
            5,
            Request::ResizeTty {
                process: 7,
                rows: 1,
                cols: 1,
            },
            "resize tty",
        ),
    ] {
        match agent.request(id, request) {
            Response::Error(err) => assert_eq!(err.step, step, "{err}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

#[test]
fn a_bad_container_id_is_rejected_before_touching_anything() {
    let mut agent = Agent::spawn();
    hello(&agent);
    let create = husk_agent::protocol::CreateContainer {
        container_id: "../escape".into(),
        init_process: 1,
        spec: oci_spec::runtime::Spec::default(),
        layers: Vec::new(),
        scratch: None,
        stdin: false,
        network: None,
        sandbox: None,
    };
    match agent.request(1, Request::CreateContainer(Box::new(create))) {
        Response::Error(err) => assert_eq!(err.step, "container id", "{err}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn garbage_on_the_channel_is_fatal_and_reported() {
    let mut agent = Agent::spawn();
    hello(&agent);
    agent
        .to_agent
        .write_all(b"this is not a husk frame at all")
        .unwrap();
    match agent.next() {
        Frame::Event(Event::Fatal { message }) => {
            assert!(message.contains("magic"), "{message}")
        }
        other => panic!("expected a Fatal event, got {other:?}"),
    }
    // Not PID 1: it exits instead of powering off.
    assert_eq!(agent.wait_exit(), Some(1));
}

#[test]
fn shutdown_is_answered_then_the_agent_ends() {
    let mut agent = Agent::spawn();
    hello(&agent);
    assert!(matches!(
        agent.request(9, Request::Shutdown),
        Response::Ok(husk_agent::protocol::Reply::Done)
    ));
    assert_eq!(agent.wait_exit(), Some(0));
}
