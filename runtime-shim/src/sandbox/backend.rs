//! The seam between a sandbox and the program that runs its VM.
//!
//! A backend turns a [`VmConfig`] (kernel, initramfs, disks, console socket,
//! vCPUs, memory) into a running VM process. Both backends (our `husk-vmm`
//! and QEMU) are child processes, so the handle is one concrete type,
//! [`VmProcess`], that owns the child and kills it when dropped: a VM never
//! outlives the `husk` that started it.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::vm_cgroup::{Limits, VmCgroup};

/// Which program runs the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Our own VMM, `husk-vmm`.
    HuskVmm,
    /// `qemu-system-x86_64 -M microvm` with KVM acceleration.
    QemuKvm,
    /// `qemu-system-x86_64 -M microvm` with software emulation (TCG).
    QemuTcg,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::HuskVmm => "husk-vmm (KVM)",
            BackendKind::QemuKvm => "qemu microvm (KVM)",
            BackendKind::QemuTcg => "qemu microvm (TCG, software emulation)",
        })
    }
}

/// What a guest disk's content comes from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskImage {
    /// One raw image file (scratch disks; no CLI flag offers one yet).
    #[cfg_attr(not(test), allow(dead_code))]
    File(PathBuf),
    /// Read-only image files presented as ONE disk, one after the other
    /// (each a non-zero multiple of 512 bytes): how an image's layers reach
    /// the guest without a virtio device per layer. The backend writes its
    /// own description of the list to `listing` (husk-vmm: a list of
    /// files; QEMU: a VMDK descriptor with flat extents); a relative
    /// `listing` is resolved in the VM's run directory by [`DiskConfig::in_dir`].
    Concat {
        parts: Vec<PathBuf>,
        listing: PathBuf,
    },
}

/// A block device for the guest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    pub image: DiskImage,
    pub read_only: bool,
    /// virtio-blk serial: the guest finds its disks by this name (both
    /// backends set it; at most 20 bytes of `[A-Za-z0-9_-]`).
    pub serial: String,
}

impl DiskConfig {
    /// This disk with a relative concat `listing` placed in `dir` (the VM's
    /// run directory, known only once the VM is about to start).
    pub fn in_dir(&self, dir: &Path) -> DiskConfig {
        let mut disk = self.clone();
        if let DiskImage::Concat { listing, .. } = &mut disk.image {
            if listing.is_relative() {
                *listing = dir.join(&*listing);
            }
        }
        disk
    }

    /// Refuses a serial the guest could not read back unchanged, or that a
    /// backend's option syntax would split.
    pub fn check_serial(&self) -> Result<(), BackendError> {
        let ok = !self.serial.is_empty()
            && self.serial.len() <= 20
            && self
                .serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(())
        } else {
            Err(BackendError::Config(format!(
                "bad disk serial {:?} (1-20 characters of A-Z a-z 0-9 - _)",
                self.serial
            )))
        }
    }
}

/// The sizes of a concatenated disk's parts, checked: each a non-zero
/// multiple of 512 bytes (the unit both backends address).
pub fn concat_part_sizes(parts: &[PathBuf]) -> Result<Vec<u64>, BackendError> {
    if parts.is_empty() {
        return Err(BackendError::Config(
            "a concatenated disk needs at least one part".into(),
        ));
    }
    parts
        .iter()
        .map(|part| {
            let len = std::fs::metadata(part)
                .map_err(|e| BackendError::Config(format!("disk part {}: {e}", part.display())))?
                .len();
            if len == 0 || !len.is_multiple_of(512) {
                return Err(BackendError::Config(format!(
                    "disk part {} is {len} bytes, not a non-zero multiple of 512",
                    part.display()
                )));
            }
            Ok(len)
        })
        .collect()
}

/// Writes `text` to `path` (a listing in the run directory).
pub(crate) fn write_listing(path: &Path, text: &str) -> Result<(), BackendError> {
    std::fs::write(path, text).map_err(|source| BackendError::Log {
        path: path.to_path_buf(),
        source,
    })
}

/// Everything a backend needs to start one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub disks: Vec<DiskConfig>,
    /// Host end of the guest's virtio console (`/dev/hvc0`); the VM listens.
    pub console_socket: PathBuf,
    /// Where the guest's serial console (kernel log) goes.
    pub serial_log: PathBuf,
    /// Where the VM program's own stderr goes, quoted in errors.
    pub vmm_log: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Kernel command-line words appended after the backend's own.
    pub cmdline_extra: Vec<String>,
    /// virtio-net NICs, each over a tap the spawner opens and passes down
    /// as fd [`NIC_FD_BASE`] + its index.
    pub nics: Vec<crate::network::NicConfig>,
    /// A pod's VM: spare layer-disk slots for its members (QEMU only).
    pub pod: Option<super::pod::PodSlots>,
    /// The name of the VM process's own cgroup (`husk/<name>`, the
    /// container's ID; see [`super::vm_cgroup`]), or none.
    pub cgroup: Option<String>,
    /// `--cpus`: the VM process's CPU time (its cgroup's `cpu.max`).
    pub cpus: Option<f64>,
}

/// The VM program finds NIC `i`'s tap at this fd + `i`.
pub const NIC_FD_BASE: i32 = 100;

/// Opens every NIC's tap, each at a number above the range it will be
/// moved to in the child (so the moves in [`spawn_vm`] cannot clobber one
/// another).
fn open_taps(config: &VmConfig) -> Result<Vec<std::os::fd::OwnedFd>, BackendError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let above = NIC_FD_BASE + config.nics.len() as i32;
    config
        .nics
        .iter()
        .map(|nic| {
            let fd = crate::network::tap::open(&nic.tap, nic.netns.as_deref())
                .map_err(|e| BackendError::Config(format!("tap {}: {e}", nic.tap)))?;
            // SAFETY: F_DUPFD_CLOEXEC on an open fd returns a new fd we own.
            let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above) };
            if moved < 0 {
                return Err(BackendError::Config(format!(
                    "tap {}: {}",
                    nic.tap,
                    std::io::Error::last_os_error()
                )));
            }
            // SAFETY: `moved` is a fresh fd owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(moved) })
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{program} not found: {hint}")]
    ProgramMissing { program: String, hint: String },
    #[error("cannot create {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for the VM process: {0}")]
    Wait(std::io::Error),
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error("the VM process's cgroup: {0}")]
    Cgroup(String),
}

/// Starts VMs.
pub trait VmBackend {
    fn kind(&self) -> BackendKind;
    /// Start the VM; it runs until it powers off or the handle is dropped.
    fn start(&self, config: &VmConfig) -> Result<VmProcess, BackendError>;
}

/// Kernel command line shared by every backend: the serial console for the
/// kernel's messages, a panic ends the VM at once (no reboot loop), and
/// little chatter so boot stays fast. How a reboot ends the VM differs per
/// backend, so each adds its own `reboot=`.
pub fn base_cmdline() -> Vec<String> {
    ["console=ttyS0", "panic=-1", "loglevel=4"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Spawn a VM program: stdin closed, stdout and stderr to `vmm_log`, in its
/// own process group (a Ctrl-C on the terminal is for the container, which
/// husk forwards, not for the VM program) and killed by the kernel if husk
/// dies without cleaning up.
pub(crate) fn spawn_vm(
    kind: BackendKind,
    command: Command,
    config: &VmConfig,
) -> Result<VmProcess, BackendError> {
    spawn_vm_with(kind, command, config, PidNamespace::Host)
}

/// Where the VM program's process lives among the host's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PidNamespace {
    Host,
    /// PID 1 of a namespace of its own (see `pid_namespace`; needs root).
    Own,
}

/// [`spawn_vm`], optionally in a PID namespace of its own.
pub(crate) fn spawn_vm_with(
    kind: BackendKind,
    mut command: Command,
    config: &VmConfig,
    pid_namespace: PidNamespace,
) -> Result<VmProcess, BackendError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let cgroup = match &config.cgroup {
        Some(name) => {
            let limits = Limits::for_vm(kind, config.memory_mib, config.vcpus, config.cpus);
            VmCgroup::create(name, &limits).map_err(|e| BackendError::Cgroup(e.to_string()))?
        }
        None => None,
    };
    if let Some(cgroup) = &cgroup {
        let procs = cgroup.procs_fd();
        // SAFETY: one write(2) to a descriptor that stays open in the
        // parent (the cgroup lives past the spawn); nothing allocates.
        unsafe {
            command.pre_exec(move || {
                VmCgroup::join_in_child(procs);
                Ok(())
            });
        }
    }
    let taps = open_taps(config)?;
    if !taps.is_empty() {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 is async-signal-safe; the taps live in the closure
        // until the command is dropped, after the spawn.
        unsafe {
            command.pre_exec(move || {
                for (index, tap) in taps.iter().enumerate() {
                    // dup2 leaves the new fd without close-on-exec.
                    if libc::dup2(tap.as_raw_fd(), NIC_FD_BASE + index as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    // Through a pipe and a cap: the guest can make the VM program log.
    let log_error = |source| BackendError::Log {
        path: config.vmm_log.clone(),
        source,
    };
    let (log, log_copy) =
        super::logcap::capped_pipe(&config.vmm_log, super::logcap::LOG_CAP, "VM program log")
            .map_err(log_error)?;
    let log_err = log.try_clone().map_err(log_error)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0);
    // The parent may die before prctl takes effect. In the host's PID
    // namespace getppid() then changes; in a namespace of its own it is 0
    // either way, so there the child watches a pipe whose write end only
    // husk holds once the child has closed its inherited copy: a hang-up
    // means husk is gone.
    let (alive_read, alive_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| BackendError::Spawn {
            program: program.clone(),
            source: e.into(),
        })?;
    // SAFETY: the closure runs between fork and exec and calls only prctl,
    // getppid, close and poll, which are async-signal-safe.
    unsafe {
        use std::os::fd::AsRawFd;
        let parent = libc::getpid();
        let (read_fd, write_fd) = (alive_read.as_raw_fd(), alive_write.as_raw_fd());
        command.pre_exec(move || {
            libc::close(write_fd);
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let ppid = libc::getppid();
            let mut watch = libc::pollfd {
                fd: read_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let hung_up = libc::poll(&mut watch, 1, 0) > 0;
            if (ppid != 0 && ppid != parent) || hung_up {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    tracing::debug!(?command, ?pid_namespace, "starting VM");
    let spawned = match pid_namespace {
        PidNamespace::Host => command.spawn().map(|child| (child, None)),
        PidNamespace::Own => {
            super::pid_namespace::spawn(command).map(|(child, parent)| (child, Some(parent)))
        }
    };
    drop((alive_read, alive_write));
    let (child, namespace_parent) = spawned.map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BackendError::ProgramMissing {
                program: program.clone(),
                hint: "install it or pick another --backend".into(),
            }
        } else {
            BackendError::Spawn {
                program: program.clone(),
                source,
            }
        }
    })?;
    let pid = child.id();
    let vm = VmProcess {
        child: Some(child),
        joined_pid: 0,
        kind,
        program,
        serial_log: config.serial_log.clone(),
        vmm_log: config.vmm_log.clone(),
        status: None,
        log_copies: vec![log_copy],
        _namespace_parent: namespace_parent,
        cgroup,
    };
    if let Some(cgroup) = &vm.cgroup {
        // The child could not report a failed join; a VM outside its
        // limits does not run (dropping `vm` kills it, then the cgroup goes).
        if !cgroup.holds(pid) {
            return Err(BackendError::Cgroup(format!(
                "the VM process (pid {pid}) did not join {}",
                cgroup.path().display()
            )));
        }
        tracing::info!(path = %cgroup.path().display(), "VM process in its own cgroup");
    }
    Ok(vm)
}

/// A running VM program. Dropping it kills and reaps the process.
///
/// A pod member's handle ([`VmProcess::joined`]) stands for its sandbox's
/// VM, which another process (the sandbox's monitor) owns: it always reads
/// as running (the member learns of the VM's end from its channel) and
/// dropping it ends nothing.
#[derive(Debug)]
pub struct VmProcess {
    child: Option<Child>,
    /// The pod VM's program, for a joined handle.
    joined_pid: u32,
    kind: BackendKind,
    program: String,
    serial_log: PathBuf,
    vmm_log: PathBuf,
    status: Option<ExitStatus>,
    /// The capped copies of its logs (see `logcap`).
    log_copies: Vec<super::logcap::LogCopy>,
    /// The thread that forked it into a PID namespace of its own, kept
    /// until it has been reaped (dropped after `Drop::drop` kills it).
    _namespace_parent: Option<super::pid_namespace::NamespaceParent>,
    /// Its cgroup, removed when this handle drops: after [`Drop`] has
    /// reaped the process (fields drop after `drop` runs).
    cgroup: Option<VmCgroup>,
}

impl VmProcess {
    /// The handle of a pod member: the VM (program `pid`) is its sandbox's.
    pub fn joined(kind: BackendKind, pid: u32, serial_log: PathBuf, vmm_log: PathBuf) -> Self {
        VmProcess {
            child: None,
            joined_pid: pid,
            kind,
            program: "the pod's VM".into(),
            serial_log,
            vmm_log,
            status: None,
            log_copies: Vec::new(),
            _namespace_parent: None,
            cgroup: None,
        }
    }

    /// Whether this handle stands for another container's VM.
    pub fn is_joined(&self) -> bool {
        self.child.is_none()
    }

    pub fn pid(&self) -> u32 {
        match &self.child {
            Some(child) => child.id(),
            None => self.joined_pid,
        }
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// The VM process's own cgroup, when it has one.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(VmCgroup::path)
    }

    /// Keeps another capped log copy of this VM (QEMU's serial port), so
    /// that reading the logs after the end sees all of it.
    pub fn keep_log(&mut self, copy: super::logcap::LogCopy) {
        self.log_copies.push(copy);
    }

    /// The exit status if the VM program has ended, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, BackendError> {
        if let (None, Some(child)) = (self.status, self.child.as_mut()) {
            self.status = child.try_wait().map_err(BackendError::Wait)?;
        }
        Ok(self.status)
    }

    pub fn is_running(&mut self) -> bool {
        // An error from waitpid means there is no such child any more.
        matches!(self.try_wait(), Ok(None))
    }

    /// Wait up to `timeout` for the VM program to end on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, BackendError> {
        if self.is_joined() {
            // Not ours to wait for: it ends with the pod.
            return Ok(None);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill the VM program (if still running) and reap it.
    pub fn kill(&mut self) -> Result<ExitStatus, BackendError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let Some(child) = self.child.as_mut() else {
            // A joined handle ends nothing.
            return Ok(ExitStatus::from_raw(0));
        };
        // ESRCH here means it just ended; the wait below reaps it either way.
        let _ = child.kill();
        let status = child.wait().map_err(BackendError::Wait)?;
        self.status = Some(status);
        Ok(status)
    }

    /// A one-line description of how the VM program ended, with the end of
    /// its own log and of the guest's serial console, for error messages.
    pub fn describe_end(&mut self) -> String {
        let how = match self.try_wait() {
            Ok(Some(status)) => describe_status(status),
            Ok(None) => "is still running".to_string(),
            Err(e) => e.to_string(),
        };
        if self.status.is_some() {
            // The copies end right after the program: let them finish.
            for copy in &mut self.log_copies {
                copy.wait(Duration::from_secs(2));
            }
        }
        let mut text = format!("{} (pid {}) {how}", self.program, self.pid());
        for (label, path) in [
            ("its log", &self.vmm_log),
            ("guest console", &self.serial_log),
        ] {
            // Both logs carry guest-controlled text.
            let tail = super::printable::printable(
                &tail_of_file(path, 1500),
                super::printable::Lines::Keep,
            );
            if !tail.trim().is_empty() {
                text.push_str(&format!(
                    "\n--- {label} ({}) ---\n{}",
                    path.display(),
                    tail.trim_end()
                ));
            }
        }
        text
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(pid = self.pid(), error = %e, "could not reap the VM process");
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended ({status})"),
    }
}

/// The last `max` bytes of a file as lossy text, or "" if unreadable.
pub(crate) fn tail_of_file(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> VmConfig {
        VmConfig {
            kernel: dir.join("k"),
            initramfs: dir.join("i"),
            disks: vec![],
            console_socket: dir.join("sock"),
            serial_log: dir.join("serial.log"),
            vmm_log: dir.join("vmm.log"),
            vcpus: 1,
            memory_mib: 64,
            cmdline_extra: vec![],
            nics: Vec::new(),
            pod: None,
            cgroup: None,
            cpus: None,
        }
    }

    #[test]
    fn dropping_the_handle_kills_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let vm = spawn_vm(BackendKind::QemuTcg, cmd, &config(dir.path())).unwrap();
        let pid = vm.pid() as i32;
        drop(vm);
        // Reaped: the pid no longer names our child.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "VM process {pid} survived its handle");
    }

    #[test]
    fn wait_timeout_reports_exit_and_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let mut vm = spawn_vm(BackendKind::QemuTcg, cmd, &config(dir.path())).unwrap();
        let status = vm.wait_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(status.code(), Some(3));
        let text = vm.describe_end();
        assert!(text.contains("exited with status 3"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }

    #[test]
    fn wait_timeout_gives_up_on_a_running_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut vm = spawn_vm(BackendKind::QemuTcg, cmd, &config(dir.path())).unwrap();
        assert!(vm
            .wait_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none());
        let status = vm.kill().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn missing_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Command::new("/nonexistent/qemu-system-x86_64");
        let err = spawn_vm(BackendKind::QemuTcg, cmd, &config(dir.path())).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent/qemu-system-x86_64 not found"),
            "{err}"
        );
    }
}
