//! Containers over time: the lifecycle that both command lines (and later
//! the containerd shim) drive.
//!
//! - [`instance`]: the core, one container in one VM, phase by phase;
//! - [`state`](mod@state): statuses and their transitions (checked in one place), the
//!   state directory (`state.json`, locks);
//! - [`monitor`]: the per-container process that owns the VM so that the
//!   container outlives the command that created it;
//! - [`control`]: how commands talk to a monitor.
//!
//! The functions here are the commands' side: each takes the container's
//! lock, checks the transition against the state, and asks the monitor.

pub mod control;
pub mod follow;
pub mod instance;
pub mod monitor;
pub mod names;
pub mod state;

use std::os::fd::RawFd;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use husk_protocol::{ContainerStats, ExitStatus};

use control::{ControlClient, ControlError, ControlReply, ControlRequest};
use monitor::{MonitorConfig, MonitorError};
use state::{transition, Op, State, StateDir, StateError, Status, TransitionError};

/// How long `delete` waits for a monitor to power its VM off and exit.
const MONITOR_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the monitor of container {id} (pid {pid}) did not exit")]
    Stuck { id: String, pid: i32 },
}

/// Creates a container: its state directory, then its monitor, which boots
/// the VM and creates the container. On failure nothing is left.
pub fn create(
    root: &Path,
    config: &MonitorConfig,
    log_level: &str,
) -> Result<(Child, State), ContainerError> {
    create_with_stdio(root, config, log_level, [0, 1, 2])
}

/// [`create`], with the init's stdin, stdout and stderr taken from `stdio`
/// instead of the caller's own (see [`monitor::spawn_with_stdio`]).
pub fn create_with_stdio(
    root: &Path,
    config: &MonitorConfig,
    log_level: &str,
    stdio: [RawFd; 3],
) -> Result<(Child, State), ContainerError> {
    let dir = StateDir::create(root, &config.state.id)?;
    let result = (|| {
        let _lock = dir.lock()?;
        let mut state = config.state.clone();
        state.status = Status::Creating;
        dir.save(&state)?;
        let (child, _pid) = monitor::spawn_with_stdio(&dir, config, log_level, stdio)?;
        Ok::<_, ContainerError>((child, dir.load()?))
    })();
    if result.is_err() {
        if let Err(e) = dir.remove() {
            tracing::warn!(error = %e, "removing the state of a failed create");
        }
    }
    result
}

/// The state of one container (stopped if its monitor is gone).
pub fn state(root: &Path, id: &str) -> Result<State, ContainerError> {
    Ok(StateDir::open(root, id)?.load()?)
}

/// Every container under `root`, by creation time.
pub fn list(root: &Path) -> Vec<State> {
    let mut all: Vec<State> = StateDir::list(root)
        .iter()
        .filter_map(|id| StateDir::open(root, id).ok())
        .filter_map(|dir| dir.load().ok())
        .collect();
    all.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    all
}

/// Checks `op` against the container's state, then sends `request` to its
/// monitor and returns the connection for the replies.
pub fn request(
    root: &Path,
    id: &str,
    op: Op,
    request: &ControlRequest,
    fds: &[RawFd],
) -> Result<ControlClient, ContainerError> {
    let dir = StateDir::open(root, id)?;
    let state = dir.load()?;
    transition(state.status, op)?;
    Ok(ControlClient::send(&dir.socket(), request, fds)?)
}

/// A request with one `ok` reply.
fn simple(root: &Path, id: &str, op: Op, req: ControlRequest) -> Result<(), ContainerError> {
    let dir = StateDir::open(root, id)?;
    let _lock = dir.lock()?;
    let mut client = request(root, id, op, &req, &[])?;
    client.reply()?;
    Ok(())
}

pub fn start(root: &Path, id: &str) -> Result<(), ContainerError> {
    simple(root, id, Op::Start, ControlRequest::Start)
}

pub fn kill(root: &Path, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
    simple(
        root,
        id,
        Op::Signal,
        ControlRequest::Signal {
            process: None,
            signal,
            all,
        },
    )
}

/// New cgroup limits (memory, CPU, pids) for a running container.
pub fn update(
    root: &Path,
    id: &str,
    resources: oci_spec::runtime::LinuxResources,
) -> Result<(), ContainerError> {
    simple(
        root,
        id,
        Op::Update,
        ControlRequest::Update {
            resources: Box::new(resources),
        },
    )
}

pub fn pause(root: &Path, id: &str) -> Result<(), ContainerError> {
    simple(root, id, Op::Pause, ControlRequest::Pause)
}

pub fn resume(root: &Path, id: &str) -> Result<(), ContainerError> {
    simple(root, id, Op::Resume, ControlRequest::Resume)
}

pub fn stats(root: &Path, id: &str) -> Result<ContainerStats, ContainerError> {
    let mut client = request(root, id, Op::Stats, &ControlRequest::Stats, &[])?;
    match client.reply()? {
        ControlReply::Stats(stats) => Ok(stats),
        other => Err(ControlError::Refused(format!("unexpected reply {other:?}")).into()),
    }
}

/// Waits until the container's init has exited; its status.
pub fn wait(root: &Path, id: &str) -> Result<ExitStatus, ContainerError> {
    let dir = StateDir::open(root, id)?;
    let state = dir.load()?;
    if state.status == Status::Stopped {
        return Ok(state.exit.unwrap_or(ExitStatus::signaled(libc::SIGKILL)));
    }
    let client = ControlClient::send(&dir.socket(), &ControlRequest::Wait { process: None }, &[]);
    let reply = client.and_then(|mut c| loop {
        if let ControlReply::Exited { status } = c.reply()? {
            return Ok(status);
        }
    });
    match reply {
        Ok(status) => Ok(status),
        // The monitor ended (or died) without answering: what it last
        // wrote, once it is gone.
        Err(ControlError::Closed | ControlError::Io(_) | ControlError::Connect { .. }) => {
            final_exit(&dir)
        }
        Err(e) => Err(e.into()),
    }
}

/// The init's exit status once the monitor is gone (it writes the final
/// state before it stops answering).
pub fn final_exit(dir: &StateDir) -> Result<ExitStatus, ContainerError> {
    let raw = dir.read_raw()?;
    if raw.status != Status::Stopped {
        if let Some(pid) = raw.pid {
            monitor::wait_pid_gone(pid, MONITOR_EXIT_TIMEOUT);
        }
    }
    let state = dir.load()?;
    Ok(state.exit.unwrap_or(ExitStatus::signaled(libc::SIGKILL)))
}

/// Deletes a container: its monitor (and VM) are stopped if still there,
/// then its state directory goes.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<State, ContainerError> {
    let dir = StateDir::open(root, id)?;
    let _lock = dir.lock()?;
    let state = dir.load()?;
    transition(
        state.status,
        if force { Op::ForceDelete } else { Op::Delete },
    )?;
    stop_monitor(&dir, force)?;
    release_network(&dir);
    dir.remove()?;
    Ok(state)
}

/// Releases the container's network if its monitor could not (killed, or
/// still ending when it was stopped); releasing twice is harmless.
fn release_network(dir: &StateDir) {
    let config = std::fs::read(dir.monitor_config())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<monitor::MonitorConfig>(&bytes).ok());
    if let Some(network) = config.and_then(|config| config.network) {
        network.release();
    }
}

/// Ends the monitor of `dir` if it still runs: asks it to delete, then
/// kills it if it does not exit in time.
fn stop_monitor(dir: &StateDir, force: bool) -> Result<(), ContainerError> {
    if !dir.monitor_alive() {
        return Ok(());
    }
    let raw = dir.read_raw()?;
    let Some(pid) = raw.pid else {
        return Ok(());
    };
    // A monitor that is already ending refuses or resets the connection:
    // waiting for it to exit is all there is to do then.
    let asked = ControlClient::send(&dir.socket(), &ControlRequest::Delete { force }, &[])
        .and_then(|mut client| client.reply());
    let answered = match asked {
        Ok(_) => true,
        Err(ControlError::Refused(message)) => return Err(ControlError::Refused(message).into()),
        Err(e) => {
            tracing::debug!(error = %e, "monitor not answering");
            false
        }
    };
    // Forced, and nobody answers (no control socket: a foreground run):
    // no point in waiting before SIGKILL. A monitor that has written the
    // final state is powering its VM off and releasing what it holds
    // (cgroup, network, leases): killing it then would leave those to the
    // next sweep, so it gets its time.
    let ending = raw.status == Status::Stopped;
    let patience = if answered || ending || !force {
        MONITOR_EXIT_TIMEOUT
    } else {
        Duration::ZERO
    };
    if !monitor::wait_pid_gone(pid, patience) && dir.monitor_alive() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        if !monitor::wait_pid_gone(pid, Duration::from_secs(5)) {
            return Err(ContainerError::Stuck {
                id: dir.id.clone(),
                pid,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    /// A forced delete (containerd's) of a container whose monitor has
    /// written the final state and closed its socket waits for that monitor
    /// to end by itself: killed then, it would leave its cgroup, network
    /// and leases to the next sweep.
    #[test]
    fn a_forced_delete_lets_an_ending_monitor_finish() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::create(root.path(), "c1").unwrap();
        // The stand-in monitor: a process that ends when its stdin closes.
        // The test holds the monitor lock for it.
        let mut monitor = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let lock = dir.take_monitor_lock().unwrap().unwrap();
        dir.save(&State {
            status: Status::Stopped,
            pid: Some(monitor.id() as i32),
            exit: Some(ExitStatus::signaled(libc::SIGKILL)),
            ..State::sample("c1")
        })
        .unwrap();

        let (done_tx, done) = mpsc::channel();
        let root_path = root.path().to_path_buf();
        let deleting = std::thread::spawn(move || {
            let result = delete(&root_path, "c1", true).map(|_| ());
            let _ = done_tx.send(());
            result
        });
        // Still waiting for the monitor, which has not ended.
        assert!(
            done.recv_timeout(Duration::from_millis(500)).is_err(),
            "delete returned while the monitor was still ending"
        );
        // The monitor ends: its lock goes, then the process.
        drop(lock);
        drop(monitor.stdin.take());
        done.recv_timeout(Duration::from_secs(10))
            .expect("delete returns once the monitor is gone");
        deleting.join().unwrap().expect("delete succeeds");
        let status = monitor.wait().unwrap();
        assert_eq!(status.signal(), None, "the monitor was killed: {status:?}");
        assert!(matches!(
            StateDir::open(root.path(), "c1"),
            Err(StateError::NotFound(_))
        ));
    }
}
