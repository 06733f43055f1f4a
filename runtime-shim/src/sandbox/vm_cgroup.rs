//! A cgroup v2 of its own for each VM process (husk-vmm or QEMU), so that a
//! guest that takes over its VM program still cannot take more of the host
//! than its container was given: memory (guest RAM plus a stated overhead
//! for the VM program, no swap), tasks (vCPU threads plus headroom) and CPU
//! time (`--cpus`).
//!
//! `husk/<container id>` under `/sys/fs/cgroup`, made where that is a
//! cgroup v2 mount offering the memory, pids and cpu controllers and this
//! process may write it; elsewhere (cgroup v1 or hybrid hosts, a read-only
//! or undelegated hierarchy) the run goes on without one and `husk check`
//! says why. The VM process joins its cgroup between fork and exec (it
//! writes `0` to the cgroup's already-open `cgroup.procs`), so it never runs
//! a single instruction outside it. The directory is removed when the VM
//! process has been reaped ([`VmCgroup`] is dropped with the VM handle);
//! one left by a process that was killed is removed by a later run once it
//! is empty and a minute old.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::backend::BackendKind;

/// Where the cgroup v2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup (under [`CGROUP_ROOT`]) that holds one cgroup per VM.
pub const PARENT: &str = "husk";
/// What husk-vmm itself needs beside guest RAM: its code, thread stacks,
/// virtqueue buffers, the page cache of the layer files it reads (measured
/// resident: under 4 MiB; the rest is headroom for I/O bursts).
pub const HUSK_VMM_OVERHEAD_MIB: u64 = 128;
/// The same for QEMU, which needs far more of its own (measured resident
/// outside guest RAM: about 50 MiB with KVM; TCG's translation cache grows
/// to hundreds of MiB).
pub const QEMU_OVERHEAD_MIB: u64 = 512;
/// Tasks beside the vCPU threads: the VM program's main and device
/// threads, QEMU's I/O worker pool (up to 64 threads).
pub const PIDS_HEADROOM: u32 = 128;
/// The CFS period `cpu.max` is written in (Docker's, as `--cpus` in the
/// guest's cgroup).
pub const CPU_PERIOD_USEC: u64 = 100_000;
/// The controllers a VM's cgroup needs.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// An empty VM cgroup older than this is stale (its owner died without
/// removing it); younger ones may be a VM about to join.
const STALE_AGE: Duration = Duration::from_secs(60);
/// How long removal waits for the kernel to see an exited VM's cgroup as
/// empty.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot name a cgroup after {0:?} (not a plain container ID)")]
    BadName(String),
    #[error("cgroup {0} exists and has processes in it")]
    Busy(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether per-VM cgroups can be made on this host, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Availability {
    pub available: bool,
    pub reason: Option<String>,
}

impl Availability {
    /// `yes`, or `no: <reason>` (the line `husk check` prints).
    pub fn describe(&self) -> String {
        match &self.reason {
            None => "yes".into(),
            Some(reason) => format!("no: {reason}"),
        }
    }
}

/// Set to `off` to run VM processes without a cgroup of their own (as
/// `HUSK_VMM_JAIL=off` leaves the jail out), e.g. where husk's cgroups
/// would clash with another manager's.
pub const SWITCH_ENV: &str = "HUSK_VM_CGROUP";

/// Checks the real hierarchy at [`CGROUP_ROOT`].
pub fn availability() -> Availability {
    let root = Path::new(CGROUP_ROOT);
    let result = if std::env::var(SWITCH_ENV).as_deref() == Ok("off") {
        Err(format!("turned off ({SWITCH_ENV}=off)"))
    } else {
        is_cgroup2(root).and_then(|()| check_tree(root, &writable))
    };
    Availability {
        available: result.is_ok(),
        reason: result.err(),
    }
}

fn is_cgroup2(root: &Path) -> Result<(), String> {
    match nix::sys::statfs::statfs(root) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Ok(()),
        Ok(_) => Err(format!(
            "{} is not a cgroup v2 mount (this host uses cgroup v1 or a hybrid hierarchy)",
            root.display()
        )),
        Err(e) => Err(format!("{}: {e}", root.display())),
    }
}

/// Whether this process may write `path` (false on a read-only mount,
/// even for root).
fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// What makes a cgroup v2 tree at `root` usable (the mount type aside, so
/// that a plain directory can stand in for it in tests): the controllers
/// are offered and the places husk writes are `writable`.
fn check_tree(root: &Path, writable: &dyn Fn(&Path) -> bool) -> Result<(), String> {
    let controllers_file = root.join("cgroup.controllers");
    let offered = fs::read_to_string(&controllers_file)
        .map_err(|e| format!("{}: {e}", controllers_file.display()))?;
    let missing: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !offered.split_whitespace().any(|o| o == *c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the {} controller{} not offered in {}",
            missing.join(", "),
            if missing.len() == 1 { " is" } else { "s are" },
            root.display()
        ));
    }
    let parent = root.join(PARENT);
    let to_write = if parent.is_dir() {
        vec![parent.clone(), parent.join("cgroup.subtree_control")]
    } else {
        vec![root.to_path_buf(), root.join("cgroup.subtree_control")]
    };
    for path in to_write {
        if !writable(&path) {
            return Err(format!("{} is not writable by this user", path.display()));
        }
    }
    Ok(())
}

/// The limits of one VM's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max`, bytes.
    pub memory_max: u64,
    /// `pids.max`.
    pub pids_max: u32,
    /// `cpu.max` (`"<quota> <period>"` or `"max <period>"`).
    pub cpu_max: String,
}

impl Limits {
    /// Guest RAM plus the backend's overhead; the vCPUs plus headroom;
    /// `--cpus` (fractional) as a CFS quota, unlimited without it.
    pub fn for_vm(kind: BackendKind, memory_mib: u32, vcpus: u32, cpus: Option<f64>) -> Limits {
        let overhead = match kind {
            BackendKind::HuskVmm => HUSK_VMM_OVERHEAD_MIB,
            BackendKind::QemuKvm | BackendKind::QemuTcg => QEMU_OVERHEAD_MIB,
        };
        Limits {
            memory_max: (u64::from(memory_mib) + overhead) << 20,
            pids_max: vcpus.max(1).saturating_add(PIDS_HEADROOM),
            cpu_max: cpu_max(cpus),
        }
    }
}

/// `cpu.max` for `--cpus`: 1.5 gives `150000 100000`; none (or a value
/// that is not a positive number) gives `max 100000`. The kernel's least
/// quota is 1 ms.
pub fn cpu_max(cpus: Option<f64>) -> String {
    match cpus {
        Some(cpus) if cpus.is_finite() && cpus > 0.0 => {
            let quota = (cpus * CPU_PERIOD_USEC as f64).round().max(1000.0) as u64;
            format!("{quota} {CPU_PERIOD_USEC}")
        }
        _ => format!("max {CPU_PERIOD_USEC}"),
    }
}

/// The CPUs an OCI spec's CFS quota allows (`linux.resources.cpu`: quota
/// over period), for the VM process's cgroup; none without a quota.
pub fn cpus_of_spec(spec: &oci_spec::runtime::Spec) -> Option<f64> {
    let cpu = spec
        .linux()
        .as_ref()?
        .resources()
        .as_ref()?
        .cpu()
        .as_ref()?;
    let quota = cpu.quota().filter(|q| *q > 0)?;
    let period = cpu.period().filter(|p| *p > 0).unwrap_or(CPU_PERIOD_USEC);
    Some(quota as f64 / period as f64)
}

/// One VM's cgroup, removed when dropped (after its VM process is reaped:
/// the VM handle owns it and drops it after reaping).
#[derive(Debug)]
pub struct VmCgroup {
    path: PathBuf,
    /// `cgroup.procs`, open for writing before the fork so that the child
    /// joins with one `write` and no allocation.
    procs: File,
}

impl VmCgroup {
    /// Makes `husk/<name>` with `limits` when this host allows per-VM
    /// cgroups; `Ok(None)` (and a log line saying why) when it does not.
    pub fn create(name: &str, limits: &Limits) -> Result<Option<VmCgroup>, CgroupError> {
        let availability = availability();
        if let Some(reason) = &availability.reason {
            tracing::info!("no per-VM cgroup: {reason}");
            return Ok(None);
        }
        create_in(Path::new(CGROUP_ROOT), name, limits).map(Some)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor the child writes `0` to (see [`Self::join_in_child`]).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Moves the calling process into the cgroup. Meant for the child
    /// between fork and exec: one `write(2)`, no allocation. Its result is
    /// not reported there; the parent checks membership after the spawn
    /// ([`Self::holds`]).
    ///
    /// # Safety
    /// `fd` must be [`Self::procs_fd`] of a live `VmCgroup`.
    pub unsafe fn join_in_child(fd: RawFd) {
        // SAFETY: a write of one byte from a static buffer to an open fd.
        unsafe {
            libc::write(fd, b"0".as_ptr().cast(), 1);
        }
    }

    /// Whether process `pid` is in this cgroup (`/proc/<pid>/cgroup` reads
    /// `0::/husk/<name>`).
    pub fn holds(&self, pid: u32) -> bool {
        let Ok(relative) = self.path.strip_prefix(CGROUP_ROOT) else {
            return false;
        };
        let expected = format!("0::/{}", relative.display());
        fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|text| text.lines().any(|line| line == expected))
            .unwrap_or(false)
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_when_empty(&self.path, EMPTY_WAIT) {
            tracing::warn!(path = %self.path.display(), error = %e, "removing the VM's cgroup (a later run sweeps it)");
        }
    }
}

/// A cgroup directory name: a container ID as husk, runc (`[\w+.-]`) and
/// containerd make them.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
}

/// [`VmCgroup::create`] under `root` (the hierarchy's mount, or a test's
/// stand-in directory).
fn create_in(root: &Path, name: &str, limits: &Limits) -> Result<VmCgroup, CgroupError> {
    if !name_ok(name) {
        return Err(CgroupError::BadName(name.to_string()));
    }
    enable_controllers(root)?;
    let parent = root.join(PARENT);
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("mkdir", &parent)(e)),
    }
    enable_controllers(&parent)?;
    sweep_stale(&parent, name);
    // Container IDs are unique per store or runc root, not per host: a
    // second VM of the same ID (another root) gets `<id>.<pid>`.
    let mut path = parent.join(name);
    match fs::create_dir(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            path = parent.join(format!("{name}.{}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => {}
                // Left by a dead process of this pid: reused when empty.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if populated(&path) {
                        return Err(CgroupError::Busy(path));
                    }
                }
                Err(e) => return Err(io_err("mkdir", &path)(e)),
            }
        }
        Err(e) => return Err(io_err("mkdir", &path)(e)),
    }
    let cgroup = (|| {
        write(&path.join("memory.max"), &limits.memory_max.to_string())?;
        // Present only with swap accounting; without it there is no swap
        // to limit through this cgroup.
        let swap = path.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
        write(&path.join("pids.max"), &limits.pids_max.to_string())?;
        write(&path.join("cpu.max"), &limits.cpu_max)?;
        let procs_path = path.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&procs_path)
            .map_err(io_err("opening", &procs_path))?;
        Ok(VmCgroup {
            path: path.clone(),
            procs,
        })
    })();
    if cgroup.is_err() {
        let _ = fs::remove_dir(&path);
    }
    cgroup
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("writing", path))
}

/// Turns on the controllers a VM's cgroup needs for `dir`'s children
/// (those not already on).
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&path).unwrap_or_default();
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| !current.split_whitespace().any(|on| on == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(&path, &wanted.join(" "))
}

/// Whether any process is in the cgroup at `path` (an unreadable
/// `cgroup.procs` counts as populated, so it is left alone).
fn populated(path: &Path) -> bool {
    match fs::read_to_string(path.join("cgroup.procs")) {
        Ok(text) => !text.trim().is_empty(),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// Removes empty VM cgroups under `parent` older than [`STALE_AGE`] (their
/// owner was killed before it could), except `keep`.
fn sweep_stale(parent: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name() == keep || !path.is_dir() {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age >= STALE_AGE);
        if old && !populated(&path) && fs::remove_dir(&path).is_ok() {
            tracing::info!(path = %path.display(), "removed a stale VM cgroup");
        }
    }
}

/// Removes the cgroup at `path`; if the kernel still counts a task in it
/// (an exited process on its way out), waits up to `timeout` for
/// `cgroup.events` to say `populated 0` (the file signals POLLPRI when it
/// changes) and tries again.
fn remove_when_empty(path: &Path, timeout: Duration) -> io::Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::EBUSY) => return Err(e),
        Err(_) => {}
    }
    // Read through the descriptor polled: a read is what marks its change
    // notification as seen.
    let events = File::open(path.join("cgroup.events"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        let n = std::os::unix::fs::FileExt::read_at(&events, &mut buf, 0)?;
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.lines().any(|l| l.trim() == "populated 0") {
            return fs::remove_dir(path);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        let mut fds = [nix::poll::PollFd::new(
            events.as_fd(),
            nix::poll::PollFlags::POLLPRI,
        )];
        match nix::poll::poll(
            &mut fds,
            nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX),
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for /sys/fs/cgroup: a directory with the files husk reads.
    fn fake_tree(controllers: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    #[test]
    fn limits_follow_the_backend_the_memory_and_the_cpus() {
        let husk = Limits::for_vm(BackendKind::HuskVmm, 256, 2, Some(1.5));
        assert_eq!(husk.memory_max, (256 + 128) << 20);
        assert_eq!(husk.pids_max, 2 + 128);
        assert_eq!(husk.cpu_max, "150000 100000");
        let qemu = Limits::for_vm(BackendKind::QemuKvm, 256, 1, None);
        assert_eq!(qemu.memory_max, (256 + 512) << 20);
        assert_eq!(qemu.pids_max, 129);
        assert_eq!(qemu.cpu_max, "max 100000");
        assert_eq!(
            Limits::for_vm(BackendKind::QemuTcg, 64, 1, None).memory_max,
            (64 + 512) << 20
        );
        assert_eq!(cpu_max(Some(2.0)), "200000 100000");
        assert_eq!(cpu_max(Some(0.25)), "25000 100000");
        // The kernel's least quota, and nonsense treated as no limit.
        assert_eq!(cpu_max(Some(0.001)), "1000 100000");
        assert_eq!(cpu_max(Some(0.0)), "max 100000");
        assert_eq!(cpu_max(Some(f64::NAN)), "max 100000");
    }

    #[test]
    fn cpus_from_an_oci_spec() {
        let spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": {"cpu": {"quota": 150000, "period": 100000}}}
        }))
        .unwrap();
        assert_eq!(cpus_of_spec(&spec), Some(1.5));
        assert_eq!(cpu_max(cpus_of_spec(&spec)), "150000 100000");
        let none: oci_spec::runtime::Spec =
            serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2"})).unwrap();
        assert_eq!(cpus_of_spec(&none), None);
    }

    #[test]
    fn availability_names_what_is_missing() {
        let tree = fake_tree("cpuset cpu io memory hugetlb pids rdma misc");
        assert_eq!(check_tree(tree.path(), &|_| true), Ok(()));

        let tree = fake_tree("cpuset io memory");
        let reason = check_tree(tree.path(), &|_| true).unwrap_err();
        assert!(
            reason.contains("pids, cpu controllers are not offered"),
            "{reason}"
        );

        let empty = tempfile::tempdir().unwrap();
        let reason = check_tree(empty.path(), &|_| true).unwrap_err();
        assert!(reason.contains("cgroup.controllers"), "{reason}");

        // A plain directory is not a cgroup v2 mount.
        let reason = is_cgroup2(empty.path()).unwrap_err();
        assert!(reason.contains("not a cgroup v2 mount"), "{reason}");
        assert!(Availability {
            available: false,
            reason: Some(reason)
        }
        .describe()
        .starts_with("no: "));
    }

    #[test]
    fn an_unwritable_tree_is_not_available() {
        let tree = fake_tree("memory pids cpu");
        let subtree = tree.path().join("cgroup.subtree_control");
        let reason = check_tree(tree.path(), &|p| p != subtree).unwrap_err();
        assert!(
            reason.contains("cgroup.subtree_control is not writable"),
            "{reason}"
        );
        // Once husk/ exists, it is what must be writable.
        fs::create_dir(tree.path().join(PARENT)).unwrap();
        let parent = tree.path().join(PARENT);
        assert_eq!(check_tree(tree.path(), &|p| p != subtree), Ok(()));
        let reason = check_tree(tree.path(), &|p| p != parent).unwrap_err();
        assert!(reason.contains("husk is not writable"), "{reason}");
    }

    #[test]
    fn creates_the_cgroup_with_its_limits_and_controllers() {
        let tree = fake_tree("memory pids cpu io");
        let root = tree.path();
        let limits = Limits::for_vm(BackendKind::HuskVmm, 192, 2, Some(1.5));
        let cgroup = create_in(root, "0123abcd", &limits).unwrap();
        let dir = root.join("husk/0123abcd");
        assert_eq!(cgroup.path(), dir);
        let read = |p: &str| fs::read_to_string(dir.join(p)).unwrap();
        assert_eq!(read("memory.max"), ((192u64 + 128) << 20).to_string());
        assert_eq!(read("pids.max"), "130");
        assert_eq!(read("cpu.max"), "150000 100000");
        for subtree in [
            root.join("cgroup.subtree_control"),
            root.join("husk/cgroup.subtree_control"),
        ] {
            assert_eq!(
                fs::read_to_string(&subtree).unwrap(),
                "+memory +pids +cpu",
                "{}",
                subtree.display()
            );
        }
        // The child's one write lands in cgroup.procs.
        // SAFETY: the fd of the live cgroup above.
        unsafe { VmCgroup::join_in_child(cgroup.procs_fd()) };
        assert_eq!(read("cgroup.procs"), "0");
        // The same ID from another store while the first VM runs: a name
        // of its own.
        let second = create_in(root, "0123abcd", &limits).unwrap();
        assert_eq!(
            second.path(),
            root.join(format!("husk/0123abcd.{}", std::process::id()))
        );
        // (A fake tree's files keep rmdir from working: remove by hand.)
        std::mem::forget(cgroup);
        std::mem::forget(second);

        // Bad names are refused before anything is made.
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(matches!(
                create_in(root, bad, &limits),
                Err(CgroupError::BadName(_))
            ));
        }
    }

    #[test]
    fn stale_empty_cgroups_are_swept_and_live_or_young_ones_kept() {
        let tree = fake_tree("memory pids cpu");
        let parent = tree.path().join(PARENT);
        fs::create_dir(&parent).unwrap();
        let make = |name: &str, age: Duration, procs: &str| {
            let dir = parent.join(name);
            fs::create_dir(&dir).unwrap();
            if !procs.is_empty() {
                fs::write(dir.join("cgroup.procs"), procs).unwrap();
            }
            File::open(&dir)
                .unwrap()
                .set_modified(SystemTime::now() - age)
                .unwrap();
            dir
        };
        let stale = make("stale", Duration::from_secs(120), "");
        let young = make("young", Duration::from_secs(5), "");
        let busy = make("busy", Duration::from_secs(120), "4242\n");
        sweep_stale(&parent, "mine");
        assert!(!stale.exists());
        assert!(young.exists());
        assert!(busy.exists());
    }

    #[test]
    fn removal_of_a_gone_cgroup_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        assert!(remove_when_empty(&dir.path().join("nope"), Duration::ZERO).is_ok());
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(remove_when_empty(&empty, Duration::ZERO).is_ok());
        assert!(!empty.exists());
    }
}
