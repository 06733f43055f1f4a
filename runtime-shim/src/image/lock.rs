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
    lock_path(path, FlockArg::LockExclusive)?
        .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
}

/// Opens (creating) and locks `path`, and keeps the lock only if `path`
/// still names the locked file: prune removes lock files of layers that
/// are gone (under their lock), and a locker that opened the file before
/// that must not take a lock nobody else can see; it tries again instead.
fn lock_path(path: &Path, arg: FlockArg) -> io::Result<Option<LockGuard>> {
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let Some(guard) = lock_file(file, arg)? else {
            return Ok(None);
        };
        if guard.names(path) {
            return Ok(Some(guard));
        }
    }
}

impl LockGuard {
    /// Whether `path` is (still) the locked file.
    fn names(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._lock.metadata(), std::fs::metadata(path)) {
            (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
            _ => false,
        }
    }

    /// Removes the lock file while the lock is held (see [`lock_path`]).
    pub fn remove(self, path: &Path) -> io::Result<()> {
        if self.names(path) {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

/// Takes the exclusive lock on an existing file or directory if nobody holds
/// it; `Ok(None)` if someone does.
pub fn try_exclusive_existing(path: &Path) -> io::Result<Option<LockGuard>> {
    lock_file(File::open(path)?, FlockArg::LockExclusiveNonblock)
}

/// Like [`exclusive`] without blocking: `Ok(None)` when the lock is busy.
pub fn try_exclusive(path: &Path) -> io::Result<Option<LockGuard>> {
    lock_path(path, FlockArg::LockExclusiveNonblock)
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

    #[test]
    fn a_removed_lock_file_is_not_a_lock_anyone_can_share() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.lock");
        let held = exclusive(&path).unwrap();
        held.remove(&path).unwrap();
        assert!(!path.exists());
        // Whoever comes next locks a new file at the path, and holds it.
        let next = try_exclusive(&path).unwrap().unwrap();
        assert!(path.exists());
        assert!(next.names(&path));
        assert!(try_exclusive(&path).unwrap().is_none());
    }
}
