//! Advisory locks (flock) on files under `locks/` and on staging
//! directories. Released when the guard drops, or by the kernel when the
//! process dies, so an interrupted import never leaves a stale lock.
//!
//! A layer's lock is taken exclusive to build, commit or delete the layer,
//! and shared by a run's lease ([`super::store::LayerLease`]) and by an
//! import that reuses the layer: any number of runs hold it at once, and
//! none of them lets a deleter in.

use nix::errno::Errno;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

/// A held flock. Dropping it closes the file, which releases the lock once
/// no other descriptor of the same open file remains: it does not unlock
/// explicitly (as `nix::fcntl::Flock` does), because a lease's descriptors
/// are copied into the container's monitor, which must keep the lock after
/// its starter drops its guard.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
}

impl AsRawFd for LockGuard {
    /// The locked open file: a copy of it (inherited by a child) holds the
    /// lock as long as it stays open, whatever happens to this guard.
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// How to lock: shared or exclusive, waiting or not.
#[derive(Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
    SharedNonblock,
    ExclusiveNonblock,
}

impl Lock {
    fn operation(self) -> libc::c_int {
        match self {
            Lock::Shared => libc::LOCK_SH,
            Lock::Exclusive => libc::LOCK_EX,
            Lock::SharedNonblock => libc::LOCK_SH | libc::LOCK_NB,
            Lock::ExclusiveNonblock => libc::LOCK_EX | libc::LOCK_NB,
        }
    }
}

/// Blocks until the exclusive lock on `path` (created if missing) is held.
pub fn exclusive(path: &Path) -> io::Result<LockGuard> {
    lock_path(path, Lock::Exclusive)?.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
}

/// Opens (creating) and locks `path`, and keeps the lock only if `path`
/// still names the locked file: prune removes lock files of layers that
/// are gone (under their lock), and a locker that opened the file before
/// that must not take a lock nobody else can see; it tries again instead.
fn lock_path(path: &Path, arg: Lock) -> io::Result<Option<LockGuard>> {
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
        match (self.file.metadata(), std::fs::metadata(path)) {
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
    lock_file(File::open(path)?, Lock::ExclusiveNonblock)
}

/// Like [`exclusive`] without blocking: `Ok(None)` when the lock is busy.
pub fn try_exclusive(path: &Path) -> io::Result<Option<LockGuard>> {
    lock_path(path, Lock::ExclusiveNonblock)
}

/// Blocks until a shared lock on `path` (created if missing) is held: it
/// waits only for an exclusive holder, never for other shared ones.
pub fn shared(path: &Path) -> io::Result<LockGuard> {
    lock_path(path, Lock::Shared)?.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
}

/// Like [`shared`] without blocking: `Ok(None)` when someone holds the
/// lock exclusive.
pub fn try_shared(path: &Path) -> io::Result<Option<LockGuard>> {
    lock_path(path, Lock::SharedNonblock)
}

fn lock_file(file: File, arg: Lock) -> io::Result<Option<LockGuard>> {
    loop {
        // SAFETY: flock(2) on a descriptor `file` owns.
        if unsafe { libc::flock(file.as_raw_fd(), arg.operation()) } == 0 {
            return Ok(Some(LockGuard { file }));
        }
        match Errno::last() {
            Errno::EWOULDBLOCK => return Ok(None),
            Errno::EINTR => continue,
            errno => return Err(errno.into()),
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
    fn shared_locks_coexist_and_keep_the_exclusive_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.lock");
        let first = shared(&path).unwrap();
        let second = try_shared(&path).unwrap().expect("a second shared lock");
        assert!(try_exclusive(&path).unwrap().is_none());
        drop(first);
        assert!(
            try_exclusive(&path).unwrap().is_none(),
            "one shared holder is enough"
        );
        drop(second);
        let exclusive = try_exclusive(&path)
            .unwrap()
            .expect("free once both dropped");
        assert!(try_shared(&path).unwrap().is_none());
        drop(exclusive);
        assert!(try_shared(&path).unwrap().is_some());
    }

    #[test]
    fn a_shared_lock_lives_in_a_copy_of_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.lock");
        let held = shared(&path).unwrap();
        // What a child that inherits the descriptor holds (see monitor::spawn).
        // SAFETY: dup of a descriptor `held` owns; the copy is ours.
        let copy = unsafe { libc::dup(held.as_raw_fd()) };
        assert!(copy >= 0);
        drop(held);
        assert!(try_exclusive(&path).unwrap().is_none());
        // SAFETY: closing the copy made above.
        unsafe { libc::close(copy) };
        assert!(try_exclusive(&path).unwrap().is_some());
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
