//! The process's stdio: pipes, or a pty for `terminal: true`.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{openpty, Winsize};
use nix::unistd::{pipe2, ttyname};

use crate::error::StepError;

/// The agent's ends (all non-blocking, close-on-exec).
#[derive(Debug)]
pub struct ParentStdio {
    /// Where stdin data goes (pipe write end, or the pty master).
    pub stdin: Option<OwnedFd>,
    /// Pipe read end, or the pty master (output of both streams).
    pub stdout: OwnedFd,
    /// `None` with a terminal: the pty merges stderr into stdout.
    pub stderr: Option<OwnedFd>,
    /// The pty master for window-size changes.
    pub pty_master: Option<OwnedFd>,
}

/// The process's ends, dup'ed onto 0, 1, 2 in the child.
#[derive(Debug)]
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The pty slave's path, bound at /dev/console for an init process.
    pub console: Option<PathBuf>,
}

fn set_cloexec(fd: BorrowedFd<'_>) -> nix::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

fn pipe(step: &str) -> Result<(OwnedFd, OwnedFd), StepError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|err| StepError::new(step, err))
}

pub fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets a pty's window size (TIOCSWINSZ).
pub fn resize(master: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let size = winsize(rows, cols);
    // SAFETY: TIOCSWINSZ reads one Winsize from the pointer, which is valid
    // for the duration of the call; the fd is borrowed, so it is open.
    let result = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    nix::errno::Errno::result(result).map(drop)
}

pub fn create(
    terminal: bool,
    with_stdin: bool,
    size: Option<(u16, u16)>,
) -> Result<(ParentStdio, ChildStdio), StepError> {
    if terminal {
        let size = size.map(|(rows, cols)| winsize(rows, cols));
        let pty = openpty(size.as_ref(), None).map_err(|err| StepError::new("openpty", err))?;
        let console = ttyname(&pty.slave).map_err(|err| StepError::new("pty name", err))?;
        for fd in [pty.master.as_fd(), pty.slave.as_fd()] {
            set_cloexec(fd).map_err(|err| StepError::new("pty cloexec", err))?;
        }
        set_nonblocking(pty.master.as_fd()).map_err(|err| StepError::new("pty nonblock", err))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|err| StepError::new("dup pty", err));
        let parent = ParentStdio {
            stdin: Some(dup(&pty.master)?),
            stdout: dup(&pty.master)?,
            stderr: None,
            pty_master: Some(pty.master),
        };
        let child = ChildStdio {
            stdin: dup(&pty.slave)?,
            stdout: dup(&pty.slave)?,
            stderr: pty.slave,
            console: Some(console),
        };
        return Ok((parent, child));
    }

    let (stdin_child, stdin_parent) = if with_stdin {
        let (read, write) = pipe("stdin pipe")?;
        (read, Some(write))
    } else {
        let null = File::options()
            .read(true)
            .open("/dev/null")
            .map_err(|err| StepError::new("open /dev/null", err))?;
        (OwnedFd::from(null), None)
    };
    let (stdout_parent, stdout_child) = pipe("stdout pipe")?;
    let (stderr_parent, stderr_child) = pipe("stderr pipe")?;
    for fd in [
        Some(&stdout_parent),
        Some(&stderr_parent),
        stdin_parent.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd.as_fd()).map_err(|err| StepError::new("stdio nonblock", err))?;
    }
    Ok((
        ParentStdio {
            stdin: stdin_parent,
            stdout: stdout_parent,
            stderr: Some(stderr_parent),
            pty_master: None,
        },
        ChildStdio {
            stdin: stdin_child,
            stdout: stdout_child,
            stderr: stderr_child,
            console: None,
        },
    ))
}
