//! A task process's stdio as containerd hands it over: FIFO paths (any may
//! be empty), or a terminal whose output goes to the stdout FIFO.
//!
//! Without a terminal the FIFOs go to the container's monitor as they are,
//! and it copies the guest's streams into them. With a terminal the monitor
//! sends a pty master to a console socket of ours and we copy between it and
//! the FIFOs, as containerd's runc shim does with runc's console.
//!
//! FIFO ends are opened so that neither side sees a premature end: stdout
//! and stderr read-write (opening never blocks, and a containerd restart
//! that closes its read end does not turn our writes into EPIPE: the data
//! waits in the pipe until containerd opens it again); stdin read-only plus
//! a write end held by the shim until CloseIO, so that the process sees EOF
//! only when containerd has closed its side and asked us to close ours.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

/// The FIFO paths of one process (empty: not connected).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Descriptors to hand to the monitor, and the stdin writer we hold.
pub struct PipeStdio {
    /// stdin, stdout, stderr for the process (`/dev/null` where unset).
    pub fds: [OwnedFd; 3],
    /// Whether the process's stdin is a FIFO (else `/dev/null`).
    pub has_stdin: bool,
    pub stdin_hold: StdinHold,
}

/// The shim's write end of the stdin FIFO, closed by CloseIO.
#[derive(Clone, Default)]
pub struct StdinHold(Arc<Mutex<Option<File>>>);

impl StdinHold {
    pub fn close(&self) {
        if let Ok(mut held) = self.0.lock() {
            held.take();
        }
    }
}

fn null() -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?,
    ))
}

fn open_output(path: &str) -> anyhow::Result<OwnedFd> {
    if path.is_empty() {
        return Ok(null()?);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening the output FIFO {path}"))?;
    Ok(file.into())
}

/// Opens the stdin FIFO for the process and the write end we hold.
fn open_stdin(path: &str) -> anyhow::Result<(OwnedFd, StdinHold)> {
    if path.is_empty() {
        return Ok((null()?, StdinHold::default()));
    }
    let read = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening the stdin FIFO {path}"))?;
    // A reader exists now, so a non-blocking open for writing succeeds.
    let hold = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("holding the stdin FIFO {path}"))?;
    // The process reads with blocking reads.
    let flags = nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok((read.into(), StdinHold(Arc::new(Mutex::new(Some(hold))))))
}

/// Opens the FIFOs of a process without a terminal.
pub fn open_pipes(paths: &StdioPaths) -> anyhow::Result<PipeStdio> {
    let (stdin, stdin_hold) = open_stdin(&paths.stdin)?;
    Ok(PipeStdio {
        fds: [
            stdin,
            open_output(&paths.stdout)?,
            open_output(&paths.stderr)?,
        ],
        has_stdin: !paths.stdin.is_empty(),
        stdin_hold,
    })
}

/// A console socket waiting for the pty master of one process.
pub struct ConsoleSocket {
    pub path: PathBuf,
    receiver: JoinHandle<anyhow::Result<OwnedFd>>,
}

/// How long the monitor has to send a terminal once it was asked for one.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(150);

impl ConsoleSocket {
    /// Listens at `path` (removed first if stale).
    pub fn listen(path: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .with_context(|| format!("console socket {}", path.display()))?;
        let receiver = std::thread::spawn(move || receive_master(listener));
        Ok(Self {
            path: path.to_path_buf(),
            receiver,
        })
    }

    /// The master, once the monitor sent it (the create or exec that asked
    /// for it has returned by then, or failed: then call [`Self::abandon`]).
    pub fn master(self) -> anyhow::Result<OwnedFd> {
        let result = self
            .receiver
            .join()
            .unwrap_or_else(|_| bail!("the console receiver panicked"));
        let _ = std::fs::remove_file(&self.path);
        result
    }

    /// Stops waiting (the request failed before a terminal was sent).
    pub fn abandon(self) {
        // Wake the accept with a connection that sends nothing.
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        let _ = self.receiver.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_master(listener: UnixListener) -> anyhow::Result<OwnedFd> {
    let (stream, _) = listener
        .accept()
        .context("accepting on the console socket")?;
    stream.set_read_timeout(Some(CONSOLE_TIMEOUT))?;
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let msg = recvmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receiving the terminal")?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel installed these descriptors for us.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let mut received = received.into_iter();
    received
        .next()
        .context("the console socket connection carried no terminal")
}

/// Copies between a terminal master and the FIFOs: stdin FIFO → master,
/// master → stdout FIFO. The returned handle ends when the terminal's
/// output has ended (all of its slave ends closed) and the FIFO is closed.
pub fn copy_terminal(
    master: OwnedFd,
    paths: &StdioPaths,
) -> anyhow::Result<(JoinHandle<()>, StdinHold)> {
    let master = File::from(master);
    let output = File::from(open_output(&paths.stdout)?);
    let (stdin, hold) = if paths.stdin.is_empty() {
        (None, StdinHold::default())
    } else {
        let (fd, hold) = open_stdin(&paths.stdin)?;
        (Some(File::from(fd)), hold)
    };
    if let Some(mut input) = stdin {
        let mut to_master = master.try_clone()?;
        std::thread::spawn(move || {
            let _ = io::copy(&mut input, &mut to_master);
        });
    }
    let mut from_master = master;
    let out = std::thread::spawn(move || {
        let mut output = output;
        let mut buf = [0u8; 32 * 1024];
        loop {
            match from_master.read(&mut buf) {
                // EIO: every slave end is closed (the process is gone).
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if output.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok((out, hold))
}

/// Sets a terminal master's window size.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer we pass.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn fifo(dir: &Path, name: &str) -> String {
        let path = dir.join(name);
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn stdin_reaches_eof_only_after_close_io_and_the_writer_closing() {
        let dir = tempfile::tempdir().unwrap();
        let stdin = fifo(dir.path(), "in");
        let stdio = open_pipes(&StdioPaths {
            stdin: stdin.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(stdio.has_stdin);
        let [reader, _, _] = stdio.fds;
        let mut reader = File::from(reader);
        let mut writer = OpenOptions::new().write(true).open(&stdin).unwrap();
        writer.write_all(b"hello").unwrap();
        drop(writer);
        let mut buf = [0u8; 16];
        assert_eq!(reader.read(&mut buf).unwrap(), 5);
        // containerd's writer is gone, but our hold keeps the FIFO open:
        // no hang-up and nothing to read (a read would block)...
        let mut pfd = libc::pollfd {
            fd: reader.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0);
        // ...until CloseIO drops it: then EOF.
        stdio.stdin_hold.close();
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn outputs_open_without_a_reader_and_unset_streams_are_dev_null() {
        let dir = tempfile::tempdir().unwrap();
        let out = fifo(dir.path(), "out");
        let stdio = open_pipes(&StdioPaths {
            stdout: out.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(!stdio.has_stdin);
        let [stdin, stdout, stderr] = stdio.fds;
        let mut stdout = File::from(stdout);
        stdout.write_all(b"kept until read").unwrap();
        let mut reader = OpenOptions::new().read(true).open(&out).unwrap();
        drop(stdout);
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "kept until read");
        for fd in [stdin, stderr] {
            let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            assert_eq!(target, Path::new("/dev/null"));
        }
    }

    #[test]
    fn a_missing_fifo_is_an_error_naming_it() {
        let e = open_pipes(&StdioPaths {
            stdout: "/nonexistent/fifo".into(),
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("/nonexistent/fifo"));
    }
}
