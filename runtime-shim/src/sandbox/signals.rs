//! Signals husk handles itself rather than dying of: they are blocked and
//! read from a signalfd in the same poll loops that watch the VM and the
//! agent, so Ctrl-C during boot tears the VM down cleanly and Ctrl-C while
//! the container runs is forwarded to it.
//!
//! Must be set up on the main thread before any other thread starts (the
//! mask is per thread and inherited). Child processes do not inherit the
//! mask: `std::process::Command` resets it before exec.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Signals forwarded to the container (SIGWINCH is handled as a resize).
pub const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

#[derive(Debug, thiserror::Error)]
#[error("setting up signal handling: {0}")]
pub struct SignalError(#[from] nix::Error);

/// Blocks the handled signals and reads them from a signalfd; restores the
/// previous mask when dropped.
pub struct SignalWatch {
    fd: SignalFd,
    previous: SigSet,
}

impl SignalWatch {
    pub fn new() -> Result<Self, SignalError> {
        let mut set = SigSet::empty();
        for sig in FORWARDED {
            set.add(*sig);
        }
        set.add(Signal::SIGWINCH);
        let mut previous = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous))?;
        let fd = match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = nix::sys::signal::pthread_sigmask(
                    SigmaskHow::SIG_SETMASK,
                    Some(&previous),
                    None,
                );
                return Err(e.into());
            }
        };
        Ok(SignalWatch { fd, previous })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next pending signal, if any (never blocks).
    pub fn next(&self) -> Option<Signal> {
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(sig) => return Some(sig),
                    Err(_) => continue,
                },
                Ok(None) => return None,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the signalfd");
                    return None;
                }
            }
        }
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        // Signals that arrived but were not read stay pending and would be
        // delivered on unblocking: drain them first.
        while self.next().is_some() {}
        let _ =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.previous), None);
    }
}
