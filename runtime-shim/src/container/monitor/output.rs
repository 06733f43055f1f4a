//! Where a process's output goes on the host (a descriptor or the
//! bounded container log), and its stdin source.
//!
//! The monitor serves the agent, its control socket and every process from
//! one loop, so output is passed on without ever blocking that loop: what
//! the target does not take now waits in the sink, and the agent gets
//! credit back only for what was taken. A slow reader (a containerd FIFO
//! nobody drains, a paused terminal) therefore stops that stream's sender
//! in the guest, not the monitor's answers to kill, exec or delete.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::{ExitStatus, RecvWindow, SendCredit};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::MAX_CONTAINER_LOG;

/// What a blocking pipe or terminal accepts without blocking once poll
/// says it is writable (POSIX PIPE_BUF).
const WRITABLE_AT_LEAST: usize = libc::PIPE_BUF;

/// Output of one process to the host.
pub(super) struct Sink {
    target: Option<File>,
    /// Whether a write of any size returns at once: the descriptor is
    /// non-blocking, or a regular file. Otherwise at most
    /// [`WRITABLE_AT_LEAST`] bytes go per write, after poll said so.
    writes_never_block: bool,
    pub(super) window: RecvWindow,
    /// Bytes written to a log target, for its bound.
    pub(super) logged: Option<(PathBuf, u64)>,
    /// Received from the agent, not yet taken by the target. At most one
    /// window: the agent sends no more until credit is granted back.
    pending: VecDeque<u8>,
}

impl Sink {
    pub(super) fn new(target: Option<File>) -> Self {
        let target = target.map(own_nonblocking_pipe);
        let writes_never_block = target.as_ref().is_some_and(|file| {
            let nonblocking = fcntl(file, FcntlArg::F_GETFL)
                .is_ok_and(|flags| OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK));
            nonblocking || file.metadata().is_ok_and(|m| m.is_file())
        });
        Sink {
            target,
            writes_never_block,
            window: RecvWindow::new(),
            logged: None,
            pending: VecDeque::new(),
        }
    }

    /// Takes `data` from the agent and passes on what the target takes
    /// now; returns the credit to grant the agent for it, if any.
    pub(super) fn take(&mut self, data: &[u8]) -> Option<u32> {
        self.pending.extend(data);
        self.pass_on_waiting()
    }

    /// Passes on what waits and the target now takes; returns the credit
    /// to grant the agent for it, if any.
    pub(super) fn pass_on_waiting(&mut self) -> Option<u32> {
        let passed = self.pass_on();
        self.window.on_consumed(passed)
    }

    /// Passes on as much waiting output as the target takes without
    /// blocking; returns the bytes passed on. Output of a target that has
    /// gone (its reader closed) counts as passed on: it is discarded.
    fn pass_on(&mut self) -> usize {
        let mut passed = 0;
        while !self.pending.is_empty() {
            let Some(file) = &self.target else {
                passed += self.pending.len();
                self.pending.clear();
                break;
            };
            if !self.writes_never_block && !writable_now(file.as_fd()) {
                break;
            }
            let chunk = self.pending.as_slices().0;
            let limit = if self.writes_never_block {
                chunk.len()
            } else {
                chunk.len().min(WRITABLE_AT_LEAST)
            };
            match nix::unistd::write(file, &chunk[..limit]) {
                Ok(n) => {
                    self.pending.drain(..n);
                    passed += n;
                    self.account_log(n);
                }
                Err(nix::Error::EINTR) => {}
                Err(nix::Error::EAGAIN) => break,
                Err(e) => {
                    tracing::info!(error = %e, "container output no longer taken; discarding it");
                    self.target = None;
                }
            }
        }
        passed
    }

    /// The target to wait on (POLLOUT) while output waits for it.
    pub(super) fn blocked_on(&self) -> Option<BorrowedFd<'_>> {
        match &self.target {
            Some(file) if !self.pending.is_empty() => Some(file.as_fd()),
            _ => None,
        }
    }

    pub(super) fn is_drained(&self) -> bool {
        self.pending.is_empty()
    }

    /// Passes on what still waits, giving a reader that takes nothing for
    /// `patience` up (the rest is then dropped).
    pub(super) fn drain(&mut self, patience: Duration) {
        let mut last_progress = Instant::now();
        while !self.pending.is_empty() {
            if self.pass_on() > 0 {
                last_progress = Instant::now();
                continue;
            }
            let Some(fd) = self.blocked_on() else { break };
            let left = patience.saturating_sub(last_progress.elapsed());
            if left.is_zero() {
                tracing::warn!(
                    bytes = self.pending.len(),
                    "container output not taken in time; dropping it"
                );
                self.pending.clear();
                break;
            }
            let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
            let _ = nix::poll::poll(
                &mut fds,
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
            );
        }
    }

    fn account_log(&mut self, written: usize) {
        if let Some((path, total)) = &mut self.logged {
            *total += written as u64;
            if *total > MAX_CONTAINER_LOG {
                *total = trim_log(path, MAX_CONTAINER_LOG / 2);
            }
        }
    }
}

/// A pipe or FIFO (a containerd FIFO, a caller's pipe) reopened through
/// /proc/self/fd as a non-blocking open file description of our own:
/// writes then take what fits at once, and O_NONBLOCK is not set on a
/// description that others share. Anything else, or a failed reopen (no
/// reader yet, no /proc), is kept as it is.
fn own_nonblocking_pipe(file: File) -> File {
    if !file.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        return file;
    }
    File::options()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .unwrap_or(file)
}

/// Whether `fd` takes at least [`WRITABLE_AT_LEAST`] bytes now (or has an
/// error for the next write to report).
fn writable_now(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => true,
        Ok(_) => false,
        // A descriptor poll cannot take: let the write report it.
        Err(e) => io::Error::from(e).kind() != io::ErrorKind::Interrupted,
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
    /// The process has exited while its output still waited for its
    /// reader: its exit is reported once that output is passed on, as a
    /// runc shim reports it after its copies of the pipes end.
    pub(super) exited_before_output: Option<ExitStatus>,
}

impl Proc {
    pub(super) fn new(stdin: Option<OwnedFd>, stdout: Sink, stderr: Sink) -> Self {
        Proc {
            stdin,
            stdin_credit: SendCredit::new(),
            stdout,
            stderr,
            exited_before_output: None,
        }
    }

    pub(super) fn output_drained(&self) -> bool {
        self.stdout.is_drained() && self.stderr.is_drained()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Takes `data` and says how many bytes the target took at once.
    fn passed_on(sink: &mut Sink, data: &[u8]) -> usize {
        sink.pending.extend(data);
        sink.pass_on()
    }

    /// A slow reader: the sink takes a whole window without blocking,
    /// passes on only what the target holds, and the rest once the reader
    /// reads; nothing is lost or reordered.
    fn slow_reader(mut reader: File, mut sink: Sink) {
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        // Returns although the target cannot hold it all.
        let first = passed_on(&mut sink, &data);
        assert!(first > 0 && first < data.len(), "passed on {first}");
        assert!(sink.blocked_on().is_some());
        assert!(!sink.is_drained());

        let mut received = Vec::new();
        let mut passed = first;
        let mut buf = vec![0u8; 16 * 1024];
        while received.len() < data.len() {
            let n = reader.read(&mut buf).unwrap();
            received.extend_from_slice(&buf[..n]);
            passed += sink.pass_on();
        }
        assert_eq!(passed, data.len());
        assert!(sink.is_drained() && sink.blocked_on().is_none());
        assert!(received == data, "the bytes arrive whole and in order");
    }

    /// A blocking pipe is written through a non-blocking description of
    /// the sink's own; the caller's stays blocking.
    #[test]
    fn a_pipe_with_a_slow_reader_never_blocks_the_sink() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let callers = write_end.try_clone().unwrap();
        let sink = Sink::new(Some(File::from(write_end)));
        assert!(sink.writes_never_block, "reopened non-blocking");
        let flags = OFlag::from_bits_truncate(fcntl(&callers, FcntlArg::F_GETFL).unwrap());
        assert!(
            !flags.contains(OFlag::O_NONBLOCK),
            "the caller's description"
        );
        slow_reader(File::from(read_end), sink);
    }

    /// A blocking target that cannot be reopened (a socket here, a
    /// terminal in use) is written in pieces it takes at once.
    #[test]
    fn a_blocking_socket_with_a_slow_reader_never_blocks_the_sink() {
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let sink = Sink::new(Some(File::from(OwnedFd::from(writer))));
        assert!(!sink.writes_never_block);
        slow_reader(File::from(OwnedFd::from(reader)), sink);
    }

    /// Output for a reader that has gone is dropped and counted as passed
    /// on, so the sender in the guest is not stopped for ever.
    #[test]
    fn output_for_a_closed_reader_is_dropped() {
        // Rust's runtime ignores SIGPIPE (in the monitor and here): the
        // write fails with EPIPE.
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        drop(read_end);
        let mut sink = Sink::new(Some(File::from(write_end)));
        assert_eq!(passed_on(&mut sink, &[7u8; 10_000]), 10_000);
        assert!(sink.is_drained());
        assert_eq!(passed_on(&mut sink, b"more"), 4);
    }

    /// At a container's end, a reader that takes nothing does not hold the
    /// monitor for longer than its patience.
    #[test]
    fn draining_gives_up_on_a_reader_that_takes_nothing() {
        let (_read_end, write_end) = nix::unistd::pipe().unwrap();
        let mut sink = Sink::new(Some(File::from(write_end)));
        passed_on(&mut sink, &vec![1u8; 200 * 1024]);
        assert!(!sink.is_drained());
        sink.drain(Duration::from_millis(100));
        assert!(sink.is_drained());
    }
}
