//! The host terminal for `husk run -t`: raw mode while the container owns
//! it (restored by a guard on every exit path) and its window size.

use std::os::fd::{AsFd, AsRawFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Puts husk's stdin terminal in raw mode; the previous mode comes back on
/// drop.
pub struct RawModeGuard {
    stdin: std::io::Stdin,
    saved: Termios,
}

impl RawModeGuard {
    /// Raw mode on stdin if it is a terminal; `None` if it is not.
    pub fn stdin() -> nix::Result<Option<Self>> {
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Some(RawModeGuard { stdin, saved }))
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // TCSADRAIN: let the container's last output reach the screen first.
        if let Err(e) = termios::tcsetattr(self.stdin.as_fd(), SetArg::TCSADRAIN, &self.saved) {
            tracing::warn!(error = %e, "restoring the terminal mode");
        }
    }
}

/// Rows and columns of the terminal on `fd`, if it is one.
pub fn window_size(fd: impl AsFd) -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the pointed-to struct.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// The first of stdin, stdout, stderr that is a terminal.
pub fn host_window_size() -> Option<(u16, u16)> {
    window_size(std::io::stdin())
        .or_else(|| window_size(std::io::stdout()))
        .or_else(|| window_size(std::io::stderr()))
}
