//! A container's run directory (`<store>/run/<id>`): the console socket, the
//! serial log and the VM program's log. Removed when the guard drops, on
//! every exit path; the VM must be gone first (its handle is dropped
//! before this guard).
//!
//! A husk killed outright (SIGKILL) cannot clean up; its VM dies with it
//! (PR_SET_PDEATHSIG) and its directory is swept by the next run: each
//! live run holds a lock on `<dir>/lock`, so a directory whose lock can be
//! taken belongs to no one.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// sockaddr_un holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("creating the run directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error(
        "the console socket path {0} is too long for a Unix socket; use a shorter --store path"
    )]
    SocketPathTooLong(PathBuf),
}

pub struct RunDir {
    path: PathBuf,
    _lock: Flock<File>,
}

/// A directory without a lock file younger than this may be a run that is
/// just starting.
const UNLOCKED_GRACE: Duration = Duration::from_secs(60);

impl RunDir {
    pub fn create(store: &Path, id: &str) -> Result<Self, RunDirError> {
        let path = store.join("run").join(id);
        let socket = path.join("console.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(RunDirError::SocketPathTooLong(socket));
        }
        fs::create_dir_all(store.join("run"))
            .and_then(|_| fs::create_dir(&path))
            .map_err(|source| RunDirError::Create {
                path: path.clone(),
                source,
            })?;
        let lock = File::create(path.join("lock"))
            .and_then(|file| {
                Flock::lock(file, FlockArg::LockExclusiveNonblock)
                    .map_err(|(_, errno)| io::Error::from(errno))
            })
            .map_err(|source| {
                let _ = fs::remove_dir_all(&path);
                RunDirError::Create {
                    path: path.clone(),
                    source,
                }
            })?;
        Ok(RunDir { path, _lock: lock })
    }

    /// Removes the directories of runs whose husk died without cleaning
    /// up. Best effort: failures are logged.
    pub fn sweep_stale(store: &Path) {
        let Ok(entries) = fs::read_dir(store.join("run")) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let stale = match File::open(dir.join("lock")) {
                Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok(),
                Err(_) => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > UNLOCKED_GRACE),
            };
            if stale {
                tracing::info!(path = %dir.display(), "removing a stale run directory");
                if let Err(e) = fs::remove_dir_all(&dir) {
                    tracing::warn!(path = %dir.display(), error = %e, "removing a stale run directory");
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn console_socket(&self) -> PathBuf {
        self.path.join("console.sock")
    }

    pub fn serial_log(&self) -> PathBuf {
        self.path.join("serial.log")
    }

    pub fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "removing the run directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_on_drop_and_unique() {
        let store = tempfile::tempdir().unwrap();
        let dir = RunDir::create(store.path(), "abc").unwrap();
        fs::write(dir.serial_log(), b"log").unwrap();
        assert!(
            RunDir::create(store.path(), "abc").is_err(),
            "same id twice"
        );
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        assert!(store.path().join("run").exists());
    }

    #[test]
    fn sweep_removes_only_unlocked_directories() {
        let store = tempfile::tempdir().unwrap();
        let live = RunDir::create(store.path(), "live").unwrap();
        // A husk that died: its lock file is there, nobody holds it.
        let dead_path = store.path().join("run/dead");
        fs::create_dir(&dead_path).unwrap();
        File::create(dead_path.join("lock")).unwrap();
        fs::write(dead_path.join("serial.log"), b"x").unwrap();
        let young_unlocked = store.path().join("run/starting");
        fs::create_dir(&young_unlocked).unwrap();
        RunDir::sweep_stale(store.path());
        assert!(live.path().exists());
        assert!(!dead_path.exists());
        assert!(
            young_unlocked.exists(),
            "a run that has not locked yet is left alone"
        );
    }

    #[test]
    fn long_store_paths_are_refused_up_front() {
        let store = tempfile::tempdir().unwrap();
        let deep = store.path().join("x".repeat(100));
        assert!(matches!(
            RunDir::create(&deep, "id"),
            Err(RunDirError::SocketPathTooLong(_))
        ));
    }
}
