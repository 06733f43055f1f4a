//! Test double for the guest side: a "VM" that is a plain child process and
//! an "agent" thread on the console socket that speaks (or mangles) the
//! protocol, so the host's client and session are tested against a dead,
//! silent, garbled or well-behaved guest without booting anything.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread::JoinHandle;

use husk_protocol::{read_frame, write_frame, Frame, Hello, PROTOCOL_VERSION};

use super::backend::{spawn_vm, BackendKind, VmConfig, VmProcess};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("console.sock");
        Fixture { dir, socket }
    }

    /// A stand-in VM process running `script` under sh.
    pub fn vm(&self, script: &str) -> VmProcess {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        spawn_vm(BackendKind::QemuTcg, cmd, &self.config()).expect("spawn fake VM")
    }

    fn config(&self) -> VmConfig {
        let p = |n: &str| self.dir.path().join(n);
        VmConfig {
            kernel: p("k"),
            initramfs: p("i"),
            disks: vec![],
            console_socket: self.socket.clone(),
            serial_log: p("serial.log"),
            vmm_log: p("vmm.log"),
            vcpus: 1,
            memory_mib: 64,
            cmdline_extra: vec![],
            nics: Vec::new(),
            pod: None,
            cgroup: None,
            cpus: None,
        }
    }

    /// Serves one connection with `agent` on a thread.
    pub fn agent<F>(&self, agent: F) -> JoinHandle<()>
    where
        F: FnOnce(UnixStream) + Send + 'static,
    {
        let listener = UnixListener::bind(&self.socket).expect("bind");
        std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                agent(stream);
            }
        })
    }
}

pub fn hello(stream: &mut UnixStream) {
    write_frame(
        stream,
        &Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "test".into(),
        }),
    )
    .expect("send hello");
}

pub fn send(stream: &mut UnixStream, frame: Frame) {
    write_frame(stream, &frame).expect("send frame");
}

pub fn recv(stream: &mut UnixStream) -> Frame {
    read_frame(stream).expect("read frame")
}

pub fn send_raw(stream: &mut UnixStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
}
