//! A container's run directory (`<store>/run/<id>`): the console socket, the
//! serial log and the VM program's log. Removed when the guard drops, on
//! every exit path; the VM must be gone first (its handle is dropped
//! before this guard).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
}

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
        Ok(RunDir { path })
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
    fn long_store_paths_are_refused_up_front() {
        let store = tempfile::tempdir().unwrap();
        let deep = store.path().join("x".repeat(100));
        assert!(matches!(
            RunDir::create(&deep, "id"),
            Err(RunDirError::SocketPathTooLong(_))
        ));
    }
}
