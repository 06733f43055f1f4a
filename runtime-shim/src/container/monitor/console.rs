//! Container terminals on the host: a pty pair whose master goes to a
//! console socket (SCM_RIGHTS), as runc does.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::fcntl::{FcntlArg, OFlag};

use super::output::{Proc, Sink};

/// A host pty pair for a container terminal: the master goes to the
/// console socket, the (raw) slave carries the process's stdio.
pub(super) fn pty_proc(socket: &Path) -> Result<(Proc, OwnedFd), String> {
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("opening a pty: {e}"))?;
    // The guest's pty does the line discipline; the host pair only carries
    // bytes.
    if let Ok(mut attrs) = nix::sys::termios::tcgetattr(&pty.slave) {
        nix::sys::termios::cfmakeraw(&mut attrs);
        let _ =
            nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &attrs);
    }
    let name = fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/dev/pts".into());
    send_console(socket, pty.master.as_fd(), &name).map_err(|e| {
        format!(
            "sending the terminal to the console socket {}: {e}",
            socket.display()
        )
    })?;
    // Ours alone: non-blocking, so that output the terminal's reader has
    // not taken yet waits in the sink instead of stopping the monitor.
    nix::fcntl::fcntl(&pty.slave, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| format!("setting up the pty: {e}"))?;
    let slave_in = pty
        .slave
        .try_clone()
        .map_err(|e| format!("duplicating the pty: {e}"))?;
    Ok((
        Proc::new(
            Some(slave_in),
            Sink::new(Some(File::from(pty.slave))),
            Sink::new(None),
        ),
        pty.master,
    ))
}

/// Sends `master` over the Unix socket at `path` with SCM_RIGHTS, its name
/// as the payload (what runc's console-socket receivers expect).
pub fn send_console(path: &Path, master: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let stream = UnixStream::connect(path)?;
    let iov = [io::IoSlice::new(name.as_bytes())];
    let fds = [master.as_raw_fd()];
    nix::sys::socket::sendmsg::<nix::sys::socket::UnixAddr>(
        stream.as_raw_fd(),
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )?;
    Ok(())
}
