//! Advisory locks (flock) on files under `locks/` and on staging
//! directories. Released when the guard drops, or by the kernel when the
//! process dies, so an interrupted import never leaves a stale lock.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

pub struct LockGuard {
    _lock: Flock<File>,
}

/// Blocks until the exclusive lock on `path` (created if missing) is held.
pub fn exclusive(path: &Path) -> io::Result<LockGuard> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    lock_file(file, FlockArg::LockExclusive)?
        .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
}

/// Takes the exclusive lock on an existing file or directory if nobody holds
/// it; `Ok(None)` if someone does.
pub fn try_exclusive_existing(path: &Path) -> io::Result<Option<LockGuard>> {
    lock_file(File::open(path)?, FlockArg::LockExclusiveNonblock)
}

/// Like [`exclusive`] without blocking: `Ok(None)` when the lock is busy.
pub fn try_exclusive(path: &Path) -> io::Result<Option<LockGuard>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    lock_file(file, FlockArg::LockExclusiveNonblock)
}

fn lock_file(file: File, arg: FlockArg) -> io::Result<Option<LockGuard>> {
    loop {
        match Flock::lock(file.try_clone()?, arg) {
            Ok(lock) => return Ok(Some(LockGuard { _lock: lock })),
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, Errno::EINTR)) => continue,
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = exclusive(&path).unwrap();
        assert!(try_exclusive(&path).unwrap().is_none());
        drop(first);
        assert!(try_exclusive(&path).unwrap().is_some());
        // Directories can be locked too (staging directories).
        let held = try_exclusive_existing(dir.path()).unwrap();
        assert!(held.is_some());
        assert!(try_exclusive_existing(dir.path()).unwrap().is_none());
    }
}
