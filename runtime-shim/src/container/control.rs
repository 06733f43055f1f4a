//! The monitor's control socket (`<state dir>/monitor.sock`): how commands
//! reach a running container.
//!
//! One request per connection: the client sends one JSON line
//! ([`ControlRequest`]), with file descriptors attached (SCM_RIGHTS) where
//! the request says so (an exec's stdin, stdout and stderr). The monitor
//! answers with JSON lines ([`ControlReply`]): one for most requests; for
//! `exec` (unless detached) and `wait`, a `started` first and an `exited`
//! when the process has ended. The monitor closes the connection after its
//! last reply.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::{ContainerStats, ExitStatus, ProcessId};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use serde::{Deserialize, Serialize};

/// Longest request line accepted.
const MAX_REQUEST: usize = 1 << 20;
/// At most this many descriptors per request.
const MAX_FDS: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlRequest {
    /// Start the created container's command.
    Start,
    /// Run a process in the container. Without `console_socket`, three
    /// descriptors come with the request: stdin, stdout, stderr (stdin is
    /// forwarded only if `stdin`). With a terminal and `console_socket`,
    /// the monitor sends the pty master there instead.
    Exec {
        process: Box<oci_spec::runtime::Process>,
        #[serde(default)]
        stdin: bool,
        #[serde(default)]
        console_socket: Option<PathBuf>,
        /// Reply `started` only (the caller does not wait).
        #[serde(default)]
        detach: bool,
    },
    /// Signal the init process (or `process`); `all`: every process of the
    /// container (the init's death takes them all).
    Signal {
        #[serde(default)]
        process: Option<ProcessId>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Resize a process's terminal.
    Resize {
        process: ProcessId,
        rows: u16,
        cols: u16,
    },
    /// Reply `exited` when the init process (or `process`) has exited.
    Wait {
        #[serde(default)]
        process: Option<ProcessId>,
    },
    Stats,
    /// Stay connected and get a reply per container event (`oom`) until
    /// the container ends.
    Events,
    /// Apply new cgroup limits in the guest.
    Update {
        resources: Box<oci_spec::runtime::LinuxResources>,
    },
    Pause,
    Resume,
    /// Stop the VM and end the monitor (`delete`; `force` for a running
    /// container).
    Delete {
        #[serde(default)]
        force: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReply {
    Ok,
    Error {
        message: String,
    },
    Started {
        process: ProcessId,
        pid: i32,
    },
    Exited {
        status: ExitStatus,
    },
    Stats(ContainerStats),
    /// The container's cgroup counted `kills` OOM kills so far.
    Oom {
        kills: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the container's monitor at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the container's monitor: {0}")]
    Io(#[from] io::Error),
    #[error("the container's monitor sent a bad reply: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the container's monitor closed the connection without answering")]
    Closed,
    #[error("{0}")]
    Refused(String),
}

/// A connection to a monitor, from the client side.
pub struct ControlClient {
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects and sends `request` with `fds` attached.
    pub fn send(
        socket: &Path,
        request: &ControlRequest,
        fds: &[RawFd],
    ) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        let iov = [IoSlice::new(&line)];
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
        let sent = sendmsg::<UnixAddr>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
            .map_err(io::Error::from)?;
        if sent < line.len() {
            (&stream).write_all(&line[sent..])?;
        }
        Ok(ControlClient {
            reader: BufReader::new(stream),
        })
    }

    /// The next reply; an `error` reply becomes [`ControlError::Refused`].
    pub fn reply(&mut self) -> Result<ControlReply, ControlError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ControlError::Closed);
        }
        match serde_json::from_str(&line)? {
            ControlReply::Error { message } => Err(ControlError::Refused(message)),
            reply => Ok(reply),
        }
    }

    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }
}

/// One request as the monitor received it.
pub struct Received {
    pub request: ControlRequest,
    pub fds: Vec<OwnedFd>,
    pub stream: UnixStream,
}

/// Reads one request (and its descriptors) from a freshly accepted
/// connection, waiting at most `timeout` for the client.
pub fn receive(stream: UnixStream, timeout: Duration) -> Result<Received, ControlError> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut fds = Vec::new();
    let mut line = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // The first read takes the descriptors with it.
    {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed this descriptor in
                    // our table for us; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let n = msg.bytes;
        line.extend_from_slice(&buf[..n]);
    }
    while !line.contains(&b'\n') {
        if line.len() > MAX_REQUEST {
            return Err(ControlError::Refused("request too long".into()));
        }
        let n = (&stream).read(&mut buf)?;
        if n == 0 {
            return Err(ControlError::Closed);
        }
        line.extend_from_slice(&buf[..n]);
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let request = serde_json::from_slice(&line[..end])?;
    Ok(Received {
        request,
        fds,
        stream,
    })
}

/// Writes one reply line; a client that went away is not an error.
pub fn answer(stream: &UnixStream, reply: &ControlReply) {
    try_answer(stream, reply);
}

/// [`answer`]; false if the client is gone (or stopped reading).
pub fn try_answer(stream: &UnixStream, reply: &ControlReply) -> bool {
    let Ok(mut line) = serde_json::to_vec(reply) else {
        return false;
    };
    line.push(b'\n');
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    if let Err(e) = (&*stream).write_all(&line) {
        tracing::debug!(error = %e, "control client went away");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn requests_carry_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let got = receive(stream, Duration::from_secs(5)).unwrap();
            assert!(matches!(
                got.request,
                ControlRequest::Signal {
                    signal: 15,
                    all: true,
                    ..
                }
            ));
            assert_eq!(got.fds.len(), 1);
            // The descriptor is the write end of the client's pipe.
            let mut file = std::fs::File::from(got.fds.into_iter().next().unwrap());
            file.write_all(b"via fd").unwrap();
            answer(&got.stream, &ControlReply::Ok);
        });
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut client = ControlClient::send(
            &path,
            &ControlRequest::Signal {
                process: None,
                signal: 15,
                all: true,
            },
            &[w.as_raw_fd()],
        )
        .unwrap();
        drop(w);
        assert_eq!(client.reply().unwrap(), ControlReply::Ok);
        server.join().unwrap();
        let mut text = String::new();
        std::fs::File::from(r).read_to_string(&mut text).unwrap();
        assert_eq!(text, "via fd");
        assert!(matches!(client.reply(), Err(ControlError::Closed)));
    }
}
