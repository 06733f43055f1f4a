//! Where a process's output goes on the host (a descriptor or the
//! bounded container log), and its stdin source.

use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use husk_protocol::{RecvWindow, SendCredit};

use super::MAX_CONTAINER_LOG;
use crate::sandbox::stdio::write_all;

/// Output of one process to the host.
pub(super) struct Sink {
    pub(super) target: Option<File>,
    pub(super) window: RecvWindow,
    /// Bytes written to a log target, for its bound.
    pub(super) logged: Option<(PathBuf, u64)>,
}

impl Sink {
    pub(super) fn new(target: Option<File>) -> Self {
        Sink {
            target,
            window: RecvWindow::new(),
            logged: None,
        }
    }

    pub(super) fn write(&mut self, data: &[u8]) {
        let Some(file) = &mut self.target else {
            return;
        };
        if let Err(e) = write_all(file.as_fd(), data) {
            tracing::info!(error = %e, "container output no longer taken; discarding it");
            self.target = None;
            return;
        }
        if let Some((path, written)) = &mut self.logged {
            *written += data.len() as u64;
            if *written > MAX_CONTAINER_LOG {
                *written = trim_log(path, MAX_CONTAINER_LOG / 2);
            }
        }
    }
}

/// Keeps the last `keep` bytes of a log (in place); returns its new size.
fn trim_log(path: &Path, keep: u64) -> u64 {
    let Ok(data) = fs::read(path) else { return 0 };
    let start = data.len().saturating_sub(keep as usize);
    let tail = &data[start..];
    // The file is open in append mode by the sink, so rewriting it in place
    // keeps later writes at its (new) end.
    if fs::write(path, tail).is_err() {
        return data.len() as u64;
    }
    tail.len() as u64
}

/// One process of the container, host side.
pub(super) struct Proc {
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdin_credit: SendCredit,
    pub(super) stdout: Sink,
    pub(super) stderr: Sink,
}
