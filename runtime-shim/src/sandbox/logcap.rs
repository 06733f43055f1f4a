//! A VM program's logs kept under a cap by husk.
//!
//! What the VM program writes (its own log; QEMU's serial console) is
//! guest-driven: the VM program gets the write end of a pipe, and a thread
//! of husk copies the pipe into the log file through husk-vmm's
//! `CappedWriter`, which keeps [`LOG_CAP`] bytes and one note, and drops
//! the rest without ever stalling the writer. husk-vmm caps its own serial
//! log itself; QEMU cannot, so its serial port is such a pipe as well.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use husk_vmm::logcap::CappedWriter;

/// The most each log of one VM keeps.
pub const LOG_CAP: u64 = husk_vmm::logcap::DEFAULT_LOG_CAP;

/// A running copy; it ends at EOF, when every writer has closed.
#[derive(Debug)]
pub struct LogCopy {
    done: mpsc::Receiver<u64>,
    /// Bytes read from the pipe, once it ended.
    total: Option<u64>,
}

impl LogCopy {
    /// Waits up to `timeout` for the copy to end (so that a reader of the
    /// file sees everything the VM program wrote before it exited); the
    /// bytes the pipe carried, if it ended.
    pub fn wait(&mut self, timeout: Duration) -> Option<u64> {
        if self.total.is_none() {
            self.total = self.done.recv_timeout(timeout).ok();
        }
        self.total
    }
}

/// Creates `path` and a pipe copied into it under `cap`; returns the write
/// end for the VM program and the copy.
pub fn capped_pipe(path: &Path, cap: u64, what: &'static str) -> io::Result<(OwnedFd, LogCopy)> {
    let file = File::create(path)?;
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("husk-log-copy".into())
        .spawn(move || {
            let mut reader = File::from(read_end);
            let mut log = CappedWriter::new(file, cap, what);
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        total += n as u64;
                        // A failing disk must not stall the VM: keep reading.
                        let _ = log.write_all(&buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = log.flush();
            let _ = tx.send(total);
        })?;
    Ok((
        write_end,
        LogCopy {
            done: rx,
            total: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_through_the_pipe_leaves_the_log_under_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let (write_end, mut copy) = capped_pipe(&path, 64 * 1024, "serial log").unwrap();
        let mut writer = File::from(write_end);
        let chunk = vec![b'z'; 1 << 20];
        // 256 MiB, written as fast as the pipe takes it: the copy keeps up
        // (the writer is never blocked for long) and keeps only the cap.
        for _ in 0..256 {
            writer.write_all(&chunk).unwrap();
        }
        drop(writer);
        assert_eq!(copy.wait(Duration::from_secs(60)), Some(256 << 20));
        let log = std::fs::read(&path).unwrap();
        assert!(log.len() < 64 * 1024 + 200, "{}", log.len());
        assert!(String::from_utf8_lossy(&log).contains("serial log reached its cap"));
    }

    #[test]
    fn a_small_log_is_copied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        let (write_end, mut copy) = capped_pipe(&path, LOG_CAP, "VM program log").unwrap();
        File::from(write_end).write_all(b"booted\n").unwrap();
        assert_eq!(copy.wait(Duration::from_secs(10)), Some(7));
        assert_eq!(std::fs::read(&path).unwrap(), b"booted\n");
    }
}
