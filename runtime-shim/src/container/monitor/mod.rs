//! The per-container monitor: the process that owns a container's VM and
//! its agent connection, so that the container lives on after the command
//! that created it returns.
//!
//! Started by [`spawn`] as `<husk binary> __monitor <state dir> <log level>`,
//! detached (own session, stdout and stderr to `monitor.log`). It holds the
//! state directory's monitor lock for its whole life (its liveness), boots
//! the VM and creates the container ([`super::instance::Instance`]), reports to its starter
//! over a pipe, then serves the control socket ([`super::control`]) and the
//! container's stdio until the init process exits or the container is
//! deleted. Then it writes the final state (`stopped`), powers the VM off
//! and exits.
//!
//! The VM program dies with the monitor (it is spawned with
//! PR_SET_PDEATHSIG), so killing the monitor, even with SIGKILL, leaves no
//! VM; readers then see the container as stopped (see [`super::state`](mod@super::state)).
//! Signals sent to the monitor (it is the container's `pid`) are forwarded
//! to the container's init, as they would reach runc's container process.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_protocol::CreateContainer;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use super::state::{State, StateDir};
use crate::image::store::LayerLease;
use crate::sandbox::backend::DiskConfig;
use std::sync::Arc;

mod console;
mod output;
pub mod pod;
mod serve;

pub use console::send_console;

/// The argument that turns a husk binary into a monitor.
pub const MONITOR_ARG: &str = "__monitor";

/// Descriptor numbers in the monitor: the ready pipe, then the inherited
/// stdin, stdout and stderr of the container's init.
const READY_FD: RawFd = 3;
pub(super) const INHERITED_FDS: [RawFd; 3] = [4, 5, 6];

/// A client has this long to send its request once connected.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a container's end waits on an output reader that takes
/// nothing before the rest of the output is dropped.
pub(super) const OUTPUT_PATIENCE: Duration = Duration::from_secs(10);
/// The container's log is cut back to half when it grows past this.
pub(super) const MAX_CONTAINER_LOG: u64 = 16 << 20;

/// Everything the monitor needs, written by its starter to `monitor.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorConfig {
    /// [`crate::sandbox::select::Plan::as_str`] of the backend picked by the starter.
    pub backend: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub disks: Vec<DiskSpec>,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// CPU time of the VM process (`--cpus`; its cgroup's `cpu.max`).
    #[serde(default)]
    pub cpus: Option<f64>,
    pub create: CreateContainer,
    pub stdio: InitStdio,
    /// The state to publish once created (status and pids are filled in).
    pub state: State,
    /// Remove the container (state and name) once it has stopped.
    #[serde(default)]
    pub auto_remove: bool,
    /// The VM's NICs (taps the monitor opens for the VM program).
    #[serde(default)]
    pub nics: Vec<crate::network::NicConfig>,
    /// The container's network, released when the monitor ends.
    #[serde(default)]
    pub network: Option<crate::network::NetworkRelease>,
    /// The starter's lease on the image's layers ([`LayerLease`]): [`spawn`]
    /// gives the monitor copies of its descriptors, so the monitor holds the
    /// lease until it exits (even when killed), whatever the starter does.
    #[serde(skip)]
    pub lease: Option<Arc<LayerLease>>,
    /// Those copies' numbers in the monitor (set by [`spawn`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lease_fds: Vec<RawFd>,
    /// Its part in a pod that shares one VM (`None`: a VM of its own).
    #[serde(default)]
    pub pod: Option<PodRole>,
}

/// A container's part in a pod whose containers share one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodRole {
    /// The pod's sandbox: its VM boots with `slots` spare layer disks and
    /// its monitor takes members in (see [`pod`]).
    Sandbox { slots: u32 },
    /// A member: it joins the VM of the sandbox `sandbox_id`, whose state
    /// directory is under `sandbox_root`; its layers are its `disks`'.
    Member {
        sandbox_root: PathBuf,
        sandbox_id: String,
    },
}

/// A disk as the monitor's configuration file holds it (a relative concat
/// listing is placed in the VM's run directory when the VM starts).
pub type DiskSpec = DiskConfig;

/// Where the init process's stdio goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitStdio {
    /// The starter's stdin, stdout and stderr (passed down to the monitor).
    Inherited,
    /// A terminal whose master is sent to this Unix socket (SCM_RIGHTS).
    ConsoleSocket(PathBuf),
    /// `container.log` in the state directory (stdin closed).
    Log,
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("starting the container's monitor: {0}")]
    Spawn(io::Error),
    #[error("writing {path}: {source}")]
    Config { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Failed(String),
    #[error("the container's monitor died before the container was created; its log:\n{0}")]
    Died(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Ready {
    Ok { pid: i32, vmm_pid: i32 },
    Error { message: String },
}

/// Starts the monitor of the container in `dir` and waits until the
/// container is created (or failed). With [`InitStdio::Inherited`], the
/// caller's stdin, stdout and stderr become the init's. Returns the
/// monitor's child handle (its parent may wait for it) and its pid.
pub fn spawn(
    dir: &StateDir,
    config: &MonitorConfig,
    log_level: &str,
) -> Result<(Child, i32), MonitorError> {
    spawn_with_stdio(dir, config, log_level, [0, 1, 2])
}

/// [`spawn`], with `stdio` (stdin, stdout, stderr descriptors of the
/// caller, e.g. the FIFOs containerd hands its shim) as the init's stdio
/// when the configuration says [`InitStdio::Inherited`].
pub fn spawn_with_stdio(
    dir: &StateDir,
    config: &MonitorConfig,
    log_level: &str,
    stdio: [RawFd; 3],
) -> Result<(Child, i32), MonitorError> {
    // Numbered 10 or above like the dup2 sources below, so that the
    // monitor finds them at the numbers its configuration names.
    let lease_fds: Vec<OwnedFd> = config
        .lease
        .iter()
        .flat_map(|lease| lease.fds())
        .map(dup_high)
        .collect::<io::Result<_>>()
        .map_err(MonitorError::Spawn)?;
    let lease_raw: Vec<RawFd> = lease_fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut config = config.clone();
    config.lease_fds = lease_raw.clone();
    let config_path = dir.monitor_config();
    let bytes = serde_json::to_vec_pretty(&config).map_err(|e| MonitorError::Config {
        path: config_path.clone(),
        source: e.into(),
    })?;
    fs::write(&config_path, bytes).map_err(|source| MonitorError::Config {
        path: config_path.clone(),
        source,
    })?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.monitor_log())
        .map_err(MonitorError::Spawn)?;
    let log_err = log.try_clone().map_err(MonitorError::Spawn)?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| MonitorError::Spawn(e.into()))?;
    // Every source of a dup2 below is numbered 10 or above, clear of 3..=6.
    let ready_w = {
        let high = dup_high(ready_w.as_raw_fd()).map_err(MonitorError::Spawn)?;
        drop(ready_w);
        high
    };
    let inherited: Vec<OwnedFd> = if matches!(config.stdio, InitStdio::Inherited) {
        stdio
            .iter()
            .map(|&fd| dup_high(fd))
            .collect::<io::Result<_>>()
            .map_err(MonitorError::Spawn)?
    } else {
        Vec::new()
    };
    let exe = std::env::current_exe().map_err(MonitorError::Spawn)?;
    let mut command = Command::new(exe);
    command
        .arg(MONITOR_ARG)
        .arg(dir.path())
        .arg(log_level)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    let ready_raw = ready_w.as_raw_fd();
    let inherited_raw: Vec<RawFd> = inherited.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: between fork and exec only async-signal-safe calls (setsid,
    // dup2, fcntl) on descriptors that are open in the parent; no allocation
    // (the vectors were built before the fork).
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The lease's copies stay open across exec (all else is
            // close-on-exec); the monitor marks them close-on-exec again.
            for fd in &lease_raw {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::dup2(ready_raw, READY_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            for (src, dst) in inherited_raw.iter().zip(INHERITED_FDS) {
                if libc::dup2(*src, dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(MonitorError::Spawn)?;
    drop(ready_w);
    drop(inherited);
    drop(lease_fds);
    let mut text = String::new();
    let read = File::from(ready_r).read_to_string(&mut text);
    let line = text.lines().next().unwrap_or("");
    match (read, serde_json::from_str::<Ready>(line)) {
        (Ok(_), Ok(Ready::Ok { pid, .. })) => Ok((child, pid)),
        (_, Ok(Ready::Error { message })) => {
            let _ = child.wait();
            Err(MonitorError::Failed(message))
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(dir.monitor_log()).unwrap_or_default();
            Err(MonitorError::Died(log.trim_end().to_string()))
        }
    }
}

/// Takes over the lease descriptors [`spawn`] passed down (numbers from the
/// configuration): close-on-exec again, so the VM program does not get
/// them, and open until the returned values drop (when the monitor ends).
pub(super) fn adopt_lease(fds: &[RawFd]) -> Vec<OwnedFd> {
    fds.iter()
        // Below 10 are our stdio, the ready pipe and the init's stdio.
        .filter(|&&fd| fd >= 10)
        .filter_map(|&fd| {
            // SAFETY: F_SETFD on a descriptor number; EBADF if not open.
            let ok = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0;
            if !ok {
                tracing::warn!(fd, "the lease descriptor from the starter is not open");
                return None;
            }
            // SAFETY: the starter left this descriptor open for us alone.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}

/// A close-on-exec copy of `fd` numbered 10 or above (clear of the
/// numbers the monitor's descriptors are moved to).
pub(super) fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Runs the monitor if the process was started as one (`argv[1]` is
/// [`MONITOR_ARG`]), or an exec's waiter ([`super::follow`]); returns its
/// exit code. Binaries call this first.
pub fn dispatch() -> Option<i32> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(super::follow::EXEC_WAITER_ARG) {
        let dir = PathBuf::from(args.get(2)?);
        let process = args.get(3)?.parse().ok()?;
        return Some(super::follow::exec_waiter_main(&dir, process));
    }
    if args.get(1).map(String::as_str) != Some(MONITOR_ARG) {
        return None;
    }
    let dir = PathBuf::from(args.get(2)?);
    let level = args.get(3).cloned().unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    Some(main(&dir))
}

fn main(dir: &Path) -> i32 {
    // Our descriptors must not leak into the VM program.
    for fd in std::iter::once(READY_FD).chain(INHERITED_FDS) {
        // SAFETY: F_SETFD on a descriptor number; EBADF if it is not open.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    // SAFETY: READY_FD was set up by our starter for us alone.
    let mut ready = unsafe { File::from_raw_fd(READY_FD) };
    let report = |ready: &mut File, msg: Ready| {
        if let Ok(mut line) = serde_json::to_vec(&msg) {
            line.push(b'\n');
            let _ = ready.write_all(&line);
        }
    };
    match serve::serve(dir, &mut ready, report) {
        Ok(()) => 0,
        Err(message) => {
            tracing::error!("{message}");
            1
        }
    }
}

/// Waits up to `timeout` for process `pid` (not our child) to end; true if
/// it has.
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if raw < 0 {
        // EINVAL: the pid no longer names a thread group, i.e. the process
        // was reaped between the kernel's lookup and its check (seen in the
        // test bed, where a vCPU can stall inside that window).
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ESRCH | libc::EINVAL) => true,
            _ => {
                tracing::warn!(pid, %error, "cannot watch the process");
                false
            }
        };
    }
    // SAFETY: `raw` is a descriptor the kernel just gave us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(nix::Error::EINTR) => continue,
            Err(error) => {
                tracing::warn!(pid, %error, "cannot wait for the process");
                return false;
            }
        }
    }
}
