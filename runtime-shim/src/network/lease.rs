//! Leases: one JSON file per container under `<state dir>/leases/`,
//! changed only under the exclusive lock `<state dir>/lock`, so that
//! concurrent `husk` processes never hand out one address twice.

use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::options::PortMapping;
use super::NetworkError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub address: Ipv4Addr,
    pub mac: String,
    pub tap: String,
    pub ports: Vec<PortMapping>,
    pub owner: Owner,
}

/// The process that runs the container's VM, by pid and start time (so a
/// reused pid is not mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start_time: Option<u64>,
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Owner {
    pub fn of(pid: u32) -> Self {
        Owner {
            pid,
            start_time: start_time(pid),
        }
    }

    pub fn alive(&self) -> bool {
        match start_time(self.pid) {
            Some(now) => self.start_time.is_none_or(|then| then == now),
            None => false,
        }
    }
}

/// The lease directory, locked.
pub struct Leases {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn state_error(path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError + '_ {
    move |source| NetworkError::State {
        path: path.to_path_buf(),
        source,
    }
}

impl Leases {
    pub fn lock(dir: &Path) -> Result<Self, NetworkError> {
        let leases = dir.join("leases");
        fs::create_dir_all(&leases).map_err(state_error(&leases))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(state_error(&lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| state_error(&lock_path)(errno.into()))?;
        Ok(Leases {
            dir: leases,
            _lock: lock,
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn all(&self) -> Result<Vec<Lease>, NetworkError> {
        let mut all = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(state_error(&self.dir))? {
            let path = entry.map_err(state_error(&self.dir))?.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                match fs::read(&path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                {
                    Some(lease) => all.push(lease),
                    None => {
                        tracing::warn!(path = %path.display(), "unreadable network lease ignored")
                    }
                }
            }
        }
        Ok(all)
    }

    pub fn get(&self, id: &str) -> Result<Option<Lease>, NetworkError> {
        let path = self.path(id);
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(state_error(&path)(e)),
        }
    }

    /// Writes atomically (temporary file, then rename).
    pub fn write(&self, lease: &Lease) -> Result<(), NetworkError> {
        let path = self.path(&lease.id);
        let temporary = self.dir.join(format!(".{}.tmp", lease.id));
        let bytes = serde_json::to_vec_pretty(lease).expect("a lease serializes");
        fs::write(&temporary, bytes).map_err(state_error(&temporary))?;
        fs::rename(&temporary, &path).map_err(state_error(&path))
    }

    pub fn remove(&self, id: &str) -> Result<(), NetworkError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(state_error(&path)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip_and_dead_owners_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::lock(dir.path()).unwrap();
        let lease = Lease {
            id: "abc".into(),
            address: "10.88.0.2".parse().unwrap(),
            mac: "02:68:0a:58:00:02".into(),
            tap: "husk-tap-abc".into(),
            ports: vec!["8080:80".parse().unwrap()],
            owner: Owner::of(std::process::id()),
        };
        leases.write(&lease).unwrap();
        assert_eq!(leases.get("abc").unwrap(), Some(lease.clone()));
        assert_eq!(leases.all().unwrap(), vec![lease.clone()]);
        assert!(lease.owner.alive());
        let reused = Owner {
            pid: std::process::id(),
            start_time: Some(1),
        };
        assert!(!reused.alive(), "a reused pid is not the owner");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!Owner::of(pid).alive());
        leases.remove("abc").unwrap();
        assert!(leases.all().unwrap().is_empty());
    }
}
