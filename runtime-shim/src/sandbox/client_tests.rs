//! The agent client and the stdio session against fake guests: dead,
//! silent, garbled, and well-behaved ones (see `fake_agent`).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use husk_protocol::{
    ErrorReply, Event, ExitStatus, Frame, Reply, Request, Response, Stream, INITIAL_WINDOW,
};

use super::agent_client::{AgentClient, AgentError};
use super::fake_agent::{hello, recv, send, send_raw, Fixture};
use super::stdio::{self, HostStdio, SessionOptions};

const SHORT: Duration = Duration::from_secs(5);

fn connect(fx: &Fixture, vm: &mut super::backend::VmProcess) -> AgentClient {
    AgentClient::connect(&fx.socket, vm, None, SHORT).expect("connect")
}

#[test]
fn handshake_and_request_round_trip() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|mut s| {
        hello(&mut s);
        match recv(&mut s) {
            Frame::Request {
                id,
                request: Request::Start { container: None },
            } => {
                // Unrelated traffic first: the client must keep it queued.
                send(
                    &mut s,
                    Frame::Data {
                        process: 1,
                        stream: Stream::Stdout,
                        data: b"early".to_vec(),
                    },
                );
                send(
                    &mut s,
                    Frame::Response {
                        id,
                        response: Response::Ok(Reply::Done),
                    },
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        match recv(&mut s) {
            Frame::Request {
                id,
                request: Request::Stats { container: None },
            } => send(
                &mut s,
                Frame::Response {
                    id,
                    response: Response::Error(ErrorReply {
                        step: "stats".into(),
                        message: "nope".into(),
                    }),
                },
            ),
            other => panic!("unexpected {other:?}"),
        }
    });
    let mut client = connect(&fx, &mut vm);
    let hello = client.handshake(&mut vm, None, SHORT).unwrap();
    assert_eq!(hello.agent_version, "test");
    assert_eq!(
        client
            .call(&mut vm, None, Request::Start { container: None }, SHORT)
            .unwrap(),
        Reply::Done
    );
    assert!(matches!(client.next_frame(), Some(Frame::Data { .. })));
    let err = client
        .call(&mut vm, None, Request::Stats { container: None }, SHORT)
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Agent(e) if e.step == "stats"),
        "{err}"
    );
    agent.join().unwrap();
}

#[test]
fn dead_vm_before_the_socket_exists_is_an_error_not_a_hang() {
    let fx = Fixture::new();
    let mut vm = fx.vm("echo 'qemu: could not load kernel' >&2; exit 1");
    let start = Instant::now();
    let err = AgentClient::connect(&fx.socket, &mut vm, None, Duration::from_secs(30))
        .err()
        .expect("error");
    assert!(start.elapsed() < Duration::from_secs(5));
    let text = err.to_string();
    assert!(matches!(err, AgentError::VmEnded { .. }), "{text}");
    assert!(
        text.contains("exited with status 1") && text.contains("could not load kernel"),
        "{text}"
    );
}

#[test]
fn silent_agent_times_out() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|s| {
        std::thread::sleep(Duration::from_secs(2));
        drop(s);
    });
    let mut client = connect(&fx, &mut vm);
    let start = Instant::now();
    let err = client
        .handshake(&mut vm, None, Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, AgentError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    agent.join().unwrap();
}

#[test]
fn garbage_from_the_guest_is_a_protocol_error() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|mut s| {
        send_raw(
            &mut s,
            b"[    0.000000] Linux version 6.1.0 (root@host) #1 SMP",
        );
        std::thread::sleep(Duration::from_secs(1));
    });
    let mut client = connect(&fx, &mut vm);
    let err = client.handshake(&mut vm, None, SHORT).unwrap_err();
    assert!(matches!(err, AgentError::Protocol(_)), "{err}");
    agent.join().unwrap();
}

#[test]
fn oversized_frame_header_is_refused_before_buffering() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|mut s| {
        hello(&mut s);
        let _ = recv(&mut s);
        // Data frame claiming 4 GiB of payload.
        send_raw(
            &mut s,
            &[0x48, 0x4b, 5, 2, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
        );
        std::thread::sleep(Duration::from_secs(1));
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let err = client
        .call(&mut vm, None, Request::Start { container: None }, SHORT)
        .unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    agent.join().unwrap();
}

#[test]
fn vm_dying_mid_request_is_reported() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let pid = vm.pid();
    let agent = fx.agent(move |mut s| {
        hello(&mut s);
        let _ = recv(&mut s);
        // The guest dies: its VM process is killed and the socket closes.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        drop(s);
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let start = Instant::now();
    let err = client
        .call(
            &mut vm,
            None,
            Request::Start { container: None },
            Duration::from_secs(30),
        )
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, AgentError::VmEnded { .. }), "{err}");
    assert!(err.to_string().contains("killed by signal 9"), "{err}");
    agent.join().unwrap();
}

/// Pipes standing in for husk's stdin, stdout and stderr.
struct Pipes {
    stdin_r: std::os::fd::OwnedFd,
    stdin_w: Option<std::os::fd::OwnedFd>,
    out_r: std::os::fd::OwnedFd,
    out_w: std::os::fd::OwnedFd,
    err_r: std::os::fd::OwnedFd,
    err_w: std::os::fd::OwnedFd,
}

fn pipes() -> Pipes {
    let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    Pipes {
        stdin_r,
        stdin_w: Some(stdin_w),
        out_r,
        out_w,
        err_r,
        err_w,
    }
}

fn drain(fd: std::os::fd::OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut out).unwrap();
        out
    })
}

#[test]
fn session_keeps_streams_apart_and_returns_the_exit() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|mut s| {
        hello(&mut s);
        send(
            &mut s,
            Frame::Data {
                process: 1,
                stream: Stream::Stdout,
                data: b"to stdout\n".to_vec(),
            },
        );
        send(
            &mut s,
            Frame::Data {
                process: 1,
                stream: Stream::Stderr,
                data: b"to stderr\n".to_vec(),
            },
        );
        send(
            &mut s,
            Frame::Eof {
                process: 1,
                stream: Stream::Stdout,
            },
        );
        send(
            &mut s,
            Frame::Eof {
                process: 1,
                stream: Stream::Stderr,
            },
        );
        send(
            &mut s,
            Frame::Event(Event::ProcessExited {
                process: 1,
                status: ExitStatus::signaled(9),
            }),
        );
        std::thread::sleep(Duration::from_millis(500));
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let p = pipes();
    let host = HostStdio {
        stdin: p.stdin_r.as_fd(),
        stdout: p.out_w.as_fd(),
        stderr: p.err_w.as_fd(),
    };
    let opts = SessionOptions {
        process: 1,
        forward_stdin: false,
        terminal: false,
    };
    let status = stdio::run(&mut client, &mut vm, None, &host, opts).unwrap();
    assert_eq!(status.shell_code(), 137);
    let (out_r, err_r) = (p.out_r, p.err_r);
    drop(p.out_w);
    drop(p.err_w);
    assert_eq!(drain(out_r).join().unwrap(), b"to stdout\n");
    assert_eq!(drain(err_r).join().unwrap(), b"to stderr\n");
    agent.join().unwrap();
}

/// An echoing agent: stdin comes back on stdout. Three windows' worth must
/// pass, which only works if both sides return credit.
#[test]
fn stdin_round_trip_respects_credit_both_ways() {
    let total = 3 * INITIAL_WINDOW as usize + 12345;
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 60");
    let agent = fx.agent(move |mut s| {
        hello(&mut s);
        let mut reader = s.try_clone().unwrap();
        let mut stdin_window = husk_protocol::RecvWindow::new();
        let mut stdout_credit = husk_protocol::SendCredit::new();
        let mut pending: std::collections::VecDeque<u8> = Default::default();
        let mut stdin_done = false;
        let mut echoed = 0usize;
        loop {
            // Send what credit allows, then read the next frame.
            while !pending.is_empty() {
                let n = stdout_credit.allowance(pending.len());
                if n == 0 {
                    break;
                }
                let chunk: Vec<u8> = pending.drain(..n).collect();
                stdout_credit.consume(n);
                echoed += n;
                send(
                    &mut s,
                    Frame::Data {
                        process: 1,
                        stream: Stream::Stdout,
                        data: chunk,
                    },
                );
                if let Some(bytes) = stdin_window.on_consumed(n) {
                    send(
                        &mut s,
                        Frame::Credit {
                            process: 1,
                            stream: Stream::Stdin,
                            bytes,
                        },
                    );
                }
            }
            if stdin_done && pending.is_empty() {
                break;
            }
            match recv(&mut reader) {
                Frame::Data {
                    stream: Stream::Stdin,
                    data,
                    ..
                } => {
                    stdin_window
                        .on_data(1, Stream::Stdin, data.len())
                        .expect("host overran stdin credit");
                    pending.extend(data);
                }
                Frame::Credit {
                    stream: Stream::Stdout,
                    bytes,
                    ..
                } => stdout_credit.grant(bytes).unwrap(),
                Frame::Eof {
                    stream: Stream::Stdin,
                    ..
                } => stdin_done = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, total);
        send(
            &mut s,
            Frame::Eof {
                process: 1,
                stream: Stream::Stdout,
            },
        );
        send(
            &mut s,
            Frame::Event(Event::ProcessExited {
                process: 1,
                status: ExitStatus::exited(0),
            }),
        );
        std::thread::sleep(Duration::from_millis(300));
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let mut p = pipes();
    let input: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let stdin_w = p.stdin_w.take().unwrap();
    let feeder = {
        let input = input.clone();
        std::thread::spawn(move || std::fs::File::from(stdin_w).write_all(&input).unwrap())
    };
    let out_reader = drain(p.out_r);
    let host = HostStdio {
        stdin: p.stdin_r.as_fd(),
        stdout: p.out_w.as_fd(),
        stderr: p.err_w.as_fd(),
    };
    let opts = SessionOptions {
        process: 1,
        forward_stdin: true,
        terminal: false,
    };
    let status = stdio::run(&mut client, &mut vm, None, &host, opts).unwrap();
    assert_eq!(status.shell_code(), 0);
    drop(p.out_w);
    feeder.join().unwrap();
    assert!(out_reader.join().unwrap() == input, "echoed bytes differ");
    agent.join().unwrap();
}

#[test]
fn guest_overrunning_its_credit_is_cut_off() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|mut s| {
        hello(&mut s);
        // One frame larger than the whole window: no credit covers it.
        let data = vec![b'x'; INITIAL_WINDOW as usize + 1];
        let _ = husk_protocol::write_frame(
            &mut s,
            &Frame::Data {
                process: 1,
                stream: Stream::Stdout,
                data,
            },
        );
        std::thread::sleep(Duration::from_secs(1));
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let p = pipes();
    let out_reader = drain(p.out_r);
    let host = HostStdio {
        stdin: p.stdin_r.as_fd(),
        stdout: p.out_w.as_fd(),
        stderr: p.err_w.as_fd(),
    };
    let opts = SessionOptions {
        process: 1,
        forward_stdin: false,
        terminal: false,
    };
    let err = stdio::run(&mut client, &mut vm, None, &host, opts).unwrap_err();
    assert!(err.to_string().contains("credit"), "{err}");
    drop(p.out_w);
    assert!(
        out_reader.join().unwrap().is_empty(),
        "nothing past the window is written"
    );
    agent.join().unwrap();
}

#[test]
fn channel_closing_mid_session_is_an_error() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|mut s| {
        hello(&mut s);
        send(
            &mut s,
            Frame::Data {
                process: 1,
                stream: Stream::Stdout,
                data: b"partial".to_vec(),
            },
        );
        drop(s);
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let p = pipes();
    let host = HostStdio {
        stdin: p.stdin_r.as_fd(),
        stdout: p.out_w.as_fd(),
        stderr: p.err_w.as_fd(),
    };
    let opts = SessionOptions {
        process: 1,
        forward_stdin: false,
        terminal: false,
    };
    let start = Instant::now();
    let err = stdio::run(&mut client, &mut vm, None, &host, opts).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, AgentError::VmEnded { .. }), "{err}");
    agent.join().unwrap();
}

#[test]
fn fatal_event_from_the_agent_ends_the_wait_with_its_message() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|mut s| {
        hello(&mut s);
        let _ = recv(&mut s);
        send(
            &mut s,
            Frame::Event(Event::Fatal {
                message: "channel garbled".into(),
            }),
        );
        std::thread::sleep(Duration::from_millis(500));
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let err = client
        .call(&mut vm, None, Request::Start { container: None }, SHORT)
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Fatal(m) if m == "channel garbled"),
        "{err}"
    );
    agent.join().unwrap();
}

#[test]
fn output_and_exit_sent_just_before_the_channel_closes_are_kept() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|mut s| {
        hello(&mut s);
        send(
            &mut s,
            Frame::Data {
                process: 1,
                stream: Stream::Stdout,
                data: b"last words\n".to_vec(),
            },
        );
        send(
            &mut s,
            Frame::Event(Event::ProcessExited {
                process: 1,
                status: ExitStatus::exited(4),
            }),
        );
        drop(s);
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    agent.join().unwrap();
    let p = pipes();
    let host = HostStdio {
        stdin: p.stdin_r.as_fd(),
        stdout: p.out_w.as_fd(),
        stderr: p.err_w.as_fd(),
    };
    let opts = SessionOptions {
        process: 1,
        forward_stdin: false,
        terminal: false,
    };
    let status = stdio::run(&mut client, &mut vm, None, &host, opts).unwrap();
    assert_eq!(status.shell_code(), 4);
    let out_r = p.out_r;
    drop(p.out_w);
    assert_eq!(drain(out_r).join().unwrap(), b"last words\n");
}

/// Serves the Hello, takes one request and runs `flood` with the stream;
/// then waits for the host to hang up (EOF), so the host decides the end.
fn flooding_agent<F>(fx: &Fixture, flood: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce(&mut std::os::unix::net::UnixStream) + Send + 'static,
{
    fx.agent(move |mut s| {
        hello(&mut s);
        let _ = recv(&mut s);
        flood(&mut s);
        let mut byte = [0u8; 1];
        while matches!(s.read(&mut byte), Ok(n) if n > 0) {}
    })
}

#[test]
fn data_beyond_its_window_is_refused_while_a_call_is_pending() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    // Never answers the call: pours stdout past the window instead, in
    // chunks that are each within the frame limits.
    let agent = flooding_agent(&fx, |s| {
        let chunk = husk_protocol::MAX_DATA_CHUNK;
        for _ in 0..=(INITIAL_WINDOW as usize / chunk) {
            let frame = Frame::Data {
                process: 1,
                stream: Stream::Stdout,
                data: vec![b'x'; chunk],
            };
            if husk_protocol::write_frame(s, &frame).is_err() {
                return;
            }
        }
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let err = client
        .call(&mut vm, None, Request::Stats { container: None }, SHORT)
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Protocol(husk_protocol::ProtocolError::CreditExceeded { .. })
        ),
        "{err}"
    );
    drop(client);
    agent.join().unwrap();
}

#[test]
fn a_100_mib_flood_during_a_pending_call_is_cut_off_at_the_byte_bound() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const FLOOD: usize = 100 << 20;
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    // Each frame is within its stream's window (a new process each time):
    // only the byte bound can stop this.
    let agent = flooding_agent(&fx, move |s| {
        let chunk = husk_protocol::MAX_DATA_CHUNK;
        let mut process = 1;
        while counter.load(Ordering::Relaxed) < FLOOD {
            let frame = Frame::Data {
                process,
                stream: Stream::Stderr,
                data: vec![b'y'; chunk],
            };
            if husk_protocol::write_frame(s, &frame).is_err() {
                return;
            }
            counter.fetch_add(chunk + husk_protocol::HEADER_LEN, Ordering::Relaxed);
            process += 1;
        }
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let err = client
        .call(
            &mut vm,
            None,
            Request::Stats { container: None },
            Duration::from_secs(60),
        )
        .unwrap_err();
    assert!(matches!(err, AgentError::Flood(_)), "{err}");
    // What husk held when it gave up: the bound plus at most one read.
    assert!(
        client.inbox_bytes() <= super::agent_client::MAX_INBOX_BYTES + (64 << 10) * 4,
        "{}",
        client.inbox_bytes()
    );
    drop(client);
    agent.join().unwrap();
    let sent = written.load(Ordering::Relaxed);
    assert!(sent < FLOOD, "the host read all {sent} bytes");
}

#[test]
fn guest_error_text_reaches_the_user_printable() {
    let fx = Fixture::new();
    let mut vm = fx.vm("sleep 30");
    let agent = fx.agent(|mut s| {
        hello(&mut s);
        if let Frame::Request { id, .. } = recv(&mut s) {
            send(
                &mut s,
                Frame::Response {
                    id,
                    response: Response::Error(ErrorReply {
                        step: "mount\x1b]0;owned\x07".into(),
                        message: "bad\x1b[2J\rthing".into(),
                    }),
                },
            );
        }
    });
    let mut client = connect(&fx, &mut vm);
    client.handshake(&mut vm, None, SHORT).unwrap();
    let err = client
        .call(&mut vm, None, Request::Stats { container: None }, SHORT)
        .unwrap_err();
    let shown = err.to_string();
    assert!(!shown.chars().any(|ch| ch.is_control()), "{shown:?}");
    assert!(shown.contains("bad\\u{1b}[2J\\u{d}thing"), "{shown}");
    agent.join().unwrap();
}
