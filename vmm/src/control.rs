//! The control socket (`--control-socket PATH`): requests while the VM
//! runs. One request per connection, a JSON line ([`Request`]) sent in one
//! message, with the images' descriptors attached (SCM_RIGHTS) for
//! `attach`: the jailed VMM cannot open files, so whoever asks passes
//! them open. One JSON line answers ([`Reply`]).
//!
//! - `{"attach":{"serial":"husk-pod-1"}}` + N descriptors (read-only
//!   image files, each a non-zero multiple of 512 bytes): the disk slot
//!   with that serial reads them one after the other, then zeros.
//! - `{"detach":{"serial":"husk-pod-1"}}`: the slot reads zeros again and
//!   its files are closed.
//!
//! The thread serving it runs under the device workers' seccomp filter
//! (accept4, recvmsg, sendmsg, fstat and lseek are all it needs).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use serde::{Deserialize, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::devices::virtio::block::{ConcatImage, SlotBacking};

/// Most descriptors one request may carry (an image has at most 125
/// layers).
pub const MAX_PASSED_FDS: usize = 253;
/// The longest request line.
const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Attach { serial: String },
    Detach { serial: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Error(String),
}

/// Binds the socket (before the jail: its path is the host's).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

/// Serves the socket on a thread of its own, for the process's life.
pub fn spawn(listener: UnixListener, slots: Vec<(String, SlotBacking)>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            if let Err(e) = crate::jail::seccomp::apply(crate::jail::seccomp::ThreadKind::Worker) {
                tracing::error!("control socket disabled: {e}");
                return;
            }
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => serve_one(&stream, &slots),
                    Err(e) => tracing::warn!("control socket: {e}"),
                }
            }
        })
        .map(|_| ())
}

/// Reads one request with its descriptors and answers it.
pub fn serve_one(stream: &UnixStream, slots: &[(String, SlotBacking)]) {
    let reply = match receive(stream) {
        Ok((line, files)) => match serde_json::from_slice::<Request>(&line) {
            Ok(request) => handle(request, files, slots),
            Err(e) => Reply::Error(format!("bad request: {e}")),
        },
        Err(e) => Reply::Error(format!("reading the request: {e}")),
    };
    if let Reply::Error(message) = &reply {
        tracing::warn!("control request refused: {message}");
    }
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        let _ = (&*stream).write_all(&line);
    }
}

/// The request line (without its newline) and the descriptors that came
/// with it, each owned from here on.
fn receive(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<File>)> {
    let mut line = Vec::new();
    let mut files = Vec::new();
    loop {
        let mut buf = [0u8; 1024];
        let mut fds = [-1 as RawFd; MAX_PASSED_FDS];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points to `buf`, which outlives the call.
        let (read, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut fds) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        for fd in fds.iter().take(nfds.min(MAX_PASSED_FDS)) {
            // SAFETY: the kernel just gave us these descriptors; nobody
            // else owns them.
            files.push(unsafe { File::from_raw_fd(*fd) });
        }
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the request ended without a newline",
            ));
        }
        line.extend_from_slice(&buf[..read]);
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            line.truncate(end);
            return Ok((line, files));
        }
        if line.len() > MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request line too long",
            ));
        }
    }
}

/// Carries out a request on the slots (by serial).
pub fn handle(request: Request, files: Vec<File>, slots: &[(String, SlotBacking)]) -> Reply {
    let find = |serial: &str| {
        slots
            .iter()
            .find(|(s, _)| s == serial)
            .map(|(_, slot)| slot)
            .ok_or_else(|| format!("no disk slot with serial {serial:?}"))
    };
    let result = match request {
        Request::Attach { serial } => find(&serial).and_then(|slot| {
            let image = ConcatImage::from_files(files).map_err(|e| e.to_string())?;
            let size = image.size();
            slot.attach(image).map_err(|e| e.to_string())?;
            tracing::info!(%serial, size, "disk slot attached");
            Ok(())
        }),
        Request::Detach { serial } => {
            if !files.is_empty() {
                Err("detach takes no descriptors".to_string())
            } else {
                find(&serial).map(|slot| {
                    slot.detach();
                    tracing::info!(%serial, "disk slot emptied");
                })
            }
        }
    };
    match result {
        Ok(()) => Reply::Ok,
        Err(message) => Reply::Error(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;

    fn image(bytes: usize) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; bytes]).unwrap();
        f
    }

    fn ask(slots: &[(String, SlotBacking)], line: &str, files: &[File]) -> Reply {
        let (client, server) = UnixStream::pair().unwrap();
        let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        client
            .send_with_fds(&[format!("{line}\n").as_bytes()], &fds)
            .unwrap();
        serve_one(&server, slots);
        let mut answer = String::new();
        BufReader::new(&client).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    #[test]
    fn attach_and_detach_through_the_socket_with_passed_descriptors() {
        let slot = SlotBacking::new(1 << 20);
        let slots = vec![("husk-pod-1".to_string(), slot.clone())];
        let files = [image(4096), image(512)];
        assert_eq!(
            ask(&slots, r#"{"attach":{"serial":"husk-pod-1"}}"#, &files),
            Reply::Ok
        );
        assert!(slot.is_attached());
        assert_eq!(
            ask(&slots, r#"{"detach":{"serial":"husk-pod-1"}}"#, &[]),
            Reply::Ok
        );
        assert!(!slot.is_attached());
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason_and_change_nothing() {
        let slot = SlotBacking::new(4096);
        let slots = vec![("husk-pod-1".to_string(), slot.clone())];
        let cases: Vec<(&str, Vec<File>, &str)> = vec![
            (
                r#"{"attach":{"serial":"husk-pod-9"}}"#,
                vec![image(512)],
                "no disk slot",
            ),
            (
                r#"{"attach":{"serial":"husk-pod-1"}}"#,
                vec![],
                "no image files",
            ),
            (
                r#"{"attach":{"serial":"husk-pod-1"}}"#,
                vec![image(100)],
                "multiple of 512",
            ),
            (
                r#"{"attach":{"serial":"husk-pod-1"}}"#,
                vec![image(8192)],
                "slot holds 4096",
            ),
            (
                r#"{"detach":{"serial":"husk-pod-1"}}"#,
                vec![image(512)],
                "no descriptors",
            ),
            (r#"{"format":{}}"#, vec![], "bad request"),
            ("not json", vec![], "bad request"),
        ];
        for (line, files, want) in cases {
            match ask(&slots, line, &files) {
                Reply::Error(message) => assert!(message.contains(want), "{line}: {message}"),
                Reply::Ok => panic!("{line} was accepted"),
            }
            assert!(!slot.is_attached(), "{line}");
        }
    }

    #[test]
    fn a_request_without_its_newline_is_refused() {
        let slots = vec![("s".to_string(), SlotBacking::new(4096))];
        let (client, server) = UnixStream::pair().unwrap();
        (&client)
            .write_all(br#"{"detach":{"serial":"s"}}"#)
            .unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        serve_one(&server, &slots);
        let mut answer = String::new();
        BufReader::new(&client).read_line(&mut answer).unwrap();
        assert!(answer.contains("without a newline"), "{answer}");
    }
}
