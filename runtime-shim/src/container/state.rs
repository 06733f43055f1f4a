//! A container's state: its status and the transitions between statuses
//! (checked here and nowhere else), and its state directory
//! (`<root>/<id>/`): `state.json` written atomically, a per-container lock
//! for commands racing on one ID, and the monitor's liveness.
//!
//! Who writes `state.json`: the CLI once at create (status `creating`),
//! then only the container's monitor while it lives. A monitor that is gone
//! cannot update it, so readers combine the file with the monitor's
//! liveness ([`StateDir::load`]): a container whose monitor is dead is
//! `stopped`, whatever the file last said.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use husk_protocol::ExitStatus;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// sockaddr_un holds 107 path bytes and a NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Where sockets go when a state directory's path is too long for them.
pub const SHORT_SOCKET_ROOT: &str = "/run/husk-sockets";

/// OCI statuses, plus `creating` while the VM boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a command wants to do to a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Start,
    Exec,
    Signal,
    Pause,
    Resume,
    Stats,
    /// New resource limits (`runc update`, containerd's Update).
    Update,
    /// `delete` without `--force`.
    Delete,
    /// `delete --force`: any status.
    ForceDelete,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already {0} container")]
    StartAgain(Status),
    #[error("cannot exec in a {0} container")]
    Exec(Status),
    #[error("container not running")]
    NotRunning,
    #[error("container not running (status {0})")]
    Pause(Status),
    #[error("container not paused (status {0})")]
    Resume(Status),
    #[error("cannot delete container that is not stopped: {0}")]
    Delete(Status),
    #[error("container is still being created")]
    Creating,
}

/// Whether `op` is allowed in `status`, and the status it leads to: the one
/// place where the lifecycle's transitions are decided.
pub fn transition(status: Status, op: Op) -> Result<Status, TransitionError> {
    use Status::*;
    match (op, status) {
        (Op::ForceDelete, _) => Ok(Stopped),
        (_, Creating) => Err(TransitionError::Creating),
        (Op::Start, Created) => Ok(Running),
        (Op::Start, Stopped) => Err(TransitionError::StartStopped),
        (Op::Start, other) => Err(TransitionError::StartAgain(other)),
        (Op::Exec, Created | Running) => Ok(status),
        (Op::Exec, other) => Err(TransitionError::Exec(other)),
        (Op::Signal | Op::Stats, Created | Running | Paused) => Ok(status),
        (Op::Signal | Op::Stats, _) => Err(TransitionError::NotRunning),
        // A paused VM's agent cannot answer.
        (Op::Update, Created | Running) => Ok(status),
        (Op::Update, _) => Err(TransitionError::NotRunning),
        (Op::Pause, Running) => Ok(Paused),
        (Op::Pause, other) => Err(TransitionError::Pause(other)),
        (Op::Resume, Paused) => Ok(Running),
        (Op::Resume, other) => Err(TransitionError::Resume(other)),
        (Op::Delete, Created | Stopped) => Ok(Stopped),
        (Op::Delete, other) => Err(TransitionError::Delete(other)),
    }
}

/// Everything kept about a container between commands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub status: Status,
    /// The monitor's pid: the host process that stands for the container.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The VM program's pid.
    #[serde(default)]
    pub vmm_pid: Option<i32>,
    /// OCI bundle directory (empty for containers made from an image).
    #[serde(default)]
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// RFC 3339, UTC.
    pub created: String,
    /// How the container's init process ended, once it has.
    #[serde(default)]
    pub exit: Option<ExitStatus>,
    /// Docker-style name.
    #[serde(default)]
    pub name: Option<String>,
    /// Image the container was made from.
    #[serde(default)]
    pub image: Option<String>,
    /// The init command, for listings.
    #[serde(default)]
    pub command: Vec<String>,
    /// Which program runs the VM.
    #[serde(default)]
    pub backend: String,
    /// The owner of the container's files (runc's `list` column).
    #[serde(default)]
    pub owner: String,
    /// Why the VM ended before the container's init reported its exit
    /// (the init is then taken as killed), for the user to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container with id {0} already exists")]
    Exists(String),
    #[error("invalid container id {0:?}: letters, digits, '_', '.', '-' (not starting with '.' or '-'), at most 1024 characters")]
    BadId(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("state of container {id} is unreadable ({path}): {source}")]
    Corrupt {
        id: String,
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A valid container ID (runc's rule, which also keeps IDs safe as path
/// components).
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

/// `<root>/<id>/`: one container's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub id: String,
    path: PathBuf,
}

/// The per-container command lock (released when dropped).
pub struct CommandLock(#[allow(dead_code)] Flock<File>);

impl StateDir {
    /// The directory of an existing container.
    pub fn open(root: &Path, id: &str) -> Result<Self, StateError> {
        validate_id(id)?;
        let path = root.join(id);
        if !path.join("state.json").is_file() {
            return Err(StateError::NotFound(id.to_string()));
        }
        Ok(StateDir {
            id: id.to_string(),
            path,
        })
    }

    /// Makes the directory of a new container; a second create of the same
    /// ID fails here (mkdir is atomic).
    pub fn create(root: &Path, id: &str) -> Result<Self, StateError> {
        validate_id(id)?;
        fs::create_dir_all(root).map_err(io_err("creating the state root", root))?;
        let path = root.join(id);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_string()))
            }
            Err(e) => return Err(io_err("creating the state directory", &path)(e)),
        }
        Ok(StateDir {
            id: id.to_string(),
            path,
        })
    }

    /// IDs of every container under `root` (unsorted).
    pub fn list(root: &Path) -> Vec<String> {
        let Ok(entries) = fs::read_dir(root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// Where the container's Unix sockets live (the monitor's and, under
    /// `run/vm/`, the VM's console): the state directory itself, or, when
    /// its path is too long for a socket address (a long `--root` and a
    /// 64-character ID), a short directory named by a hash of it under
    /// [`SHORT_SOCKET_ROOT`].
    pub fn sockets_dir(&self) -> PathBuf {
        let longest = self.path.join("run/vm/console.sock");
        if longest.as_os_str().len() <= MAX_SOCKET_PATH {
            return self.path.clone();
        }
        let digest = sha2::Sha256::digest(self.path.as_os_str().as_encoded_bytes());
        PathBuf::from(SHORT_SOCKET_ROOT).join(hex::encode(&digest[..8]))
    }

    /// The monitor's control socket.
    pub fn socket(&self) -> PathBuf {
        self.sockets_dir().join("monitor.sock")
    }

    /// The monitor's own log (its stdout and stderr).
    pub fn monitor_log(&self) -> PathBuf {
        self.path.join("monitor.log")
    }

    /// What the monitor is to run.
    pub fn monitor_config(&self) -> PathBuf {
        self.path.join("monitor.json")
    }

    /// The container's stdout and stderr when nobody else takes them.
    pub fn container_log(&self) -> PathBuf {
        self.path.join("container.log")
    }

    /// The monitor holds this lock for its whole life.
    pub fn monitor_lock(&self) -> PathBuf {
        self.path.join("monitor.lock")
    }

    /// Takes the per-container command lock, waiting for another command on
    /// the same container to finish.
    pub fn lock(&self) -> Result<CommandLock, StateError> {
        let path = self.path.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening the container lock", &path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(CommandLock)
            .map_err(|(_, errno)| io_err("locking", &path)(errno.into()))
    }

    /// Takes the monitor's liveness lock (the monitor calls this once and
    /// keeps it); `None` if another process holds it.
    pub fn take_monitor_lock(&self) -> Result<Option<Flock<File>>, StateError> {
        let path = self.monitor_lock();
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening the monitor lock", &path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(io_err("locking", &path)(errno.into())),
        }
    }

    /// Whether a monitor is alive for this container.
    pub fn monitor_alive(&self) -> bool {
        let Ok(file) = File::open(self.monitor_lock()) else {
            return false;
        };
        matches!(
            Flock::lock(file, FlockArg::LockSharedNonblock),
            Err((_, nix::Error::EWOULDBLOCK))
        )
    }

    /// The state as last written, without the liveness check.
    pub fn read_raw(&self) -> Result<State, StateError> {
        let path = self.state_file();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(self.id.clone()))
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
            id: self.id.clone(),
            path,
            source,
        })
    }

    /// The state with the monitor's liveness applied: without a monitor a
    /// container is stopped.
    pub fn load(&self) -> Result<State, StateError> {
        let mut state = self.read_raw()?;
        if state.status != Status::Stopped && !self.monitor_alive() {
            state.status = Status::Stopped;
        }
        Ok(state)
    }

    /// Writes `state.json` atomically (a temp file renamed over it).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.state_file();
        let tmp = self
            .path
            .join(format!(".state.json.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| StateError::Corrupt {
            id: self.id.clone(),
            path: path.clone(),
            source,
        })?;
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_data()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("writing", &path)(e)
        })
    }

    /// Removes the whole directory (and its short sockets directory).
    pub fn remove(&self) -> Result<(), StateError> {
        let sockets = self.sockets_dir();
        if sockets != self.path {
            let _ = fs::remove_dir_all(&sockets);
        }
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &self.path)(e)),
        }
    }
}

/// Now as RFC 3339 UTC with nanoseconds (runc's `created` format).
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
impl State {
    /// A created container's state, for tests to adjust.
    pub(crate) fn sample(id: &str) -> State {
        State {
            id: id.into(),
            status: Status::Created,
            pid: Some(1),
            vmm_pid: None,
            bundle: PathBuf::from("/b"),
            annotations: HashMap::new(),
            created: now_rfc3339(),
            exit: None,
            name: None,
            image: None,
            command: vec![],
            backend: String::new(),
            owner: "root".into(),
            ended_by: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_oci_lifecycle() {
        use Status::*;
        assert_eq!(transition(Created, Op::Start), Ok(Running));
        assert_eq!(
            transition(Running, Op::Start),
            Err(TransitionError::StartAgain(Running))
        );
        assert_eq!(
            transition(Stopped, Op::Start),
            Err(TransitionError::StartStopped)
        );
        assert_eq!(transition(Running, Op::Pause), Ok(Paused));
        assert_eq!(transition(Paused, Op::Resume), Ok(Running));
        assert!(transition(Running, Op::Resume).is_err());
        assert_eq!(transition(Running, Op::Exec), Ok(Running));
        assert_eq!(
            transition(Stopped, Op::Exec),
            Err(TransitionError::Exec(Stopped))
        );
        assert_eq!(
            transition(Paused, Op::Exec),
            Err(TransitionError::Exec(Paused))
        );
        assert_eq!(
            transition(Stopped, Op::Signal),
            Err(TransitionError::NotRunning)
        );
        assert_eq!(
            transition(Running, Op::Delete),
            Err(TransitionError::Delete(Running))
        );
        assert_eq!(transition(Created, Op::Delete), Ok(Stopped));
        assert_eq!(transition(Running, Op::ForceDelete), Ok(Stopped));
        assert_eq!(
            transition(Creating, Op::Start),
            Err(TransitionError::Creating)
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("abc-1_2.3").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_round_trips_and_a_dead_monitor_means_stopped() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::create(root.path(), "c1").unwrap();
        assert!(matches!(
            StateDir::create(root.path(), "c1"),
            Err(StateError::Exists(_))
        ));
        dir.save(&State::sample("c1")).unwrap();
        assert_eq!(dir.read_raw().unwrap().status, Status::Created);
        // Nobody holds the monitor lock: stopped.
        assert_eq!(dir.load().unwrap().status, Status::Stopped);
        let held = dir.take_monitor_lock().unwrap().unwrap();
        assert!(dir.monitor_alive());
        assert_eq!(dir.load().unwrap().status, Status::Created);
        drop(held);
        assert!(!dir.monitor_alive());
        assert_eq!(StateDir::list(root.path()), vec!["c1".to_string()]);
        let opened = StateDir::open(root.path(), "c1").unwrap();
        opened.remove().unwrap();
        assert!(matches!(
            StateDir::open(root.path(), "c1"),
            Err(StateError::NotFound(_))
        ));
    }

    #[test]
    fn long_state_paths_get_short_socket_dirs() {
        let root = tempfile::tempdir().unwrap();
        let short = StateDir::create(root.path(), "c").unwrap();
        assert_eq!(short.sockets_dir(), short.path());
        let deep = root.path().join("r".repeat(60));
        let long = StateDir::create(&deep, &"a".repeat(64)).unwrap();
        let dir = long.sockets_dir();
        assert!(dir.starts_with(SHORT_SOCKET_ROOT), "{}", dir.display());
        assert!(dir.join("run/vm/console.sock").as_os_str().len() <= MAX_SOCKET_PATH);
        assert_eq!(dir, long.clone().sockets_dir(), "the same path every time");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_764_644_700, 0), "2025-12-02T03:05:00.000000000Z");
    }
}
