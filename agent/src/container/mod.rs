//! Creating the container from an OCI spec: one module per concern; this
//! one ties them together and talks to the child over its pipes.

pub mod capabilities;
pub mod cgroups;
pub mod devices;
pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod seccomp;
pub mod stdio;
mod syscall_table;
mod unsupported;
mod users;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{pipe2, Pid};
use oci_spec::runtime::{Process, Spec};

use husk_agent::protocol::{ContainerStats, CreateContainer, ExecProcess};

use crate::error::StepError;
use crate::network;
use crate::rootfs::{self, Rootfs};
use process::{ChildMessage, ChildSetup, Entry};
use stdio::ParentStdio;

/// Where per-container state (layer mounts, upper, rootfs) lives.
const CONTAINERS_DIR: &str = "/run/husk/containers";
/// How long a child may take to set up (mounts on a slow emulated VM).
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// The child's stack for clone(2); it execs or exits soon.
const CHILD_STACK_BYTES: usize = 1 << 20;

/// A created container: its rootfs, cgroup and init process.
pub struct Container {
    pub id: String,
    pub init_pid: Pid,
    spec: Spec,
    rootfs: Rootfs,
    cgroup: PathBuf,
    /// The init process waits for the start byte until `start`.
    pending: Option<ChildPipes>,
}

/// The agent's ends of a child's sync (child → agent) and start pipes.
struct ChildPipes {
    sync: OwnedFd,
    start: OwnedFd,
}

/// Container ids become paths: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<(), StepError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StepError::new(
            "container id",
            format!("{id:?} must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'"),
        ))
    }
}

/// Reads the child's next message; `None` when the pipe closed (for the
/// start phase: a successful execve).
fn read_child_message(
    sync: &OwnedFd,
    timeout: Duration,
) -> Result<Option<ChildMessage>, StepError> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut file = File::from(
        sync.try_clone()
            .map_err(|err| StepError::new("child pipe", err))?,
    );
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StepError::new(
                "container setup",
                format!("no answer from the child within {}s", timeout.as_secs()),
            ));
        }
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(sync.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => return Err(StepError::new("poll child pipe", err)),
        }
        let mut buf = [0u8; 4096];
        let read = match file.read(&mut buf) {
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(StepError::new("read child pipe", err)),
        };
        if read == 0 {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(StepError::new(
                    "container setup",
                    "child sent a partial message",
                ))
            };
        }
        line.extend_from_slice(&buf[..read]);
        if line.len() > 64 * 1024 {
            return Err(StepError::new("container setup", "child message too long"));
        }
        if let Some(end) = line.iter().position(|byte| *byte == b'\n') {
            return serde_json::from_slice(&line[..end])
                .map(Some)
                .map_err(|err| {
                    StepError::new("container setup", format!("bad child message: {err}"))
                });
        }
    }
}

/// Spawns a child with `flags` running `setup`, and waits until it is set
/// up (Ready) or failed.
fn spawn(
    flags: CloneFlags,
    build: impl FnOnce(OwnedFd, OwnedFd) -> ChildSetup,
) -> Result<(Pid, ChildPipes), StepError> {
    let (sync_read, sync_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|err| StepError::new("sync pipe", err))?;
    let (start_read, start_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|err| StepError::new("start pipe", err))?;
    let mut setup = Some(build(sync_write, start_read));
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let callback = Box::new(move || match setup.take() {
        Some(setup) => process::run(setup),
        None => 126,
    });
    // SAFETY: the agent is single-threaded, so the child (a copy of this
    // process, not sharing memory: no CLONE_VM) cannot inherit a lock held
    // by another thread; the callback only runs in the child.
    let pid =
        unsafe { nix::sched::clone(callback, &mut stack, flags, Some(Signal::SIGCHLD as i32)) }
            .map_err(|err| StepError::new("clone container process", err))?;
    // The callback (and with it the child's pipe ends) was dropped on
    // return, so the sync pipe reports EOF once the child has exec'd.
    let pipes = ChildPipes {
        sync: sync_read,
        start: start_write,
    };
    match read_child_message(&pipes.sync, SETUP_TIMEOUT) {
        Ok(Some(ChildMessage::Ready)) => Ok((pid, pipes)),
        Ok(Some(ChildMessage::Failed(err))) => {
            let _ = waitpid(pid, None);
            Err(StepError::new(err.step, err.message))
        }
        Ok(None) => {
            let _ = waitpid(pid, None);
            Err(StepError::new(
                "container setup",
                "the child exited without reporting",
            ))
        }
        Err(err) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            Err(err)
        }
    }
}

/// Bind mounts of the network files (hosts, hostname, resolv.conf) the
/// host asked for, written under the container's directory.
fn network_mounts(
    base: &Path,
    request: &CreateContainer,
) -> Result<Vec<oci_spec::runtime::Mount>, StepError> {
    let Some(config) = &request.network else {
        return Ok(Vec::new());
    };
    let spec_mounts = request.spec.mounts().clone().unwrap_or_default();
    network::files::prepare(
        &base.join("net"),
        config,
        request.spec.hostname().as_deref(),
        &spec_mounts,
    )
}

/// Opens the namespaces (`/proc/<pid>/ns/<name>`) of a pod's sandbox init
/// that a member shares.
fn open_namespaces(
    pid: Pid,
    shared: &[(&str, CloneFlags)],
) -> Result<Vec<(OwnedFd, CloneFlags)>, StepError> {
    shared
        .iter()
        .map(|(name, kind)| {
            File::open(format!("/proc/{pid}/ns/{name}"))
                .map(|file| (OwnedFd::from(file), *kind))
                .map_err(|err| StepError::new(format!("open the sandbox's {name} namespace"), err))
        })
        .collect()
}

/// Lets a Ready child exec and reports whether execve worked.
fn release(pipes: ChildPipes) -> Result<(), StepError> {
    let ChildPipes { sync, start } = pipes;
    File::from(start)
        .write_all(&[1])
        .map_err(|err| StepError::new("start process", err))?;
    match read_child_message(&sync, SETUP_TIMEOUT)? {
        None => Ok(()),
        Some(ChildMessage::Failed(err)) => Err(StepError::new(err.step, err.message)),
        Some(ChildMessage::Ready) => Err(StepError::new("start process", "child said ready twice")),
    }
}

fn console_size(process: &Process) -> Option<(u16, u16)> {
    process.console_size().map(|size| {
        (
            u16::try_from(size.height()).unwrap_or(u16::MAX),
            u16::try_from(size.width()).unwrap_or(u16::MAX),
        )
    })
}

impl Container {
    /// Assembles the rootfs and creates the init process, stopped before
    /// execve. Returns the container and the agent's stdio ends.
    /// `sandbox_init`: for a pod member, the sandbox's init process, whose
    /// namespaces it may share.
    pub fn create(
        request: &CreateContainer,
        sandbox_init: Option<Pid>,
    ) -> Result<(Self, ParentStdio), StepError> {
        validate_id(&request.container_id)?;
        let spec = &request.spec;
        if let Some(field) = unsupported::first_unsupported(spec) {
            return Err(StepError::new(
                "spec",
                format!("{field} is not supported by husk"),
            ));
        }
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| StepError::new("spec", "the spec has no process"))?;
        let linux = spec.linux().clone().unwrap_or_default();
        let (own, shared) = namespaces::split_shared(
            linux.namespaces().as_deref().unwrap_or_default(),
            sandbox_init.is_some(),
        );
        let flags =
            namespaces::clone_flags(&own).map_err(|err| StepError::new("namespaces", err))?;
        let join = match sandbox_init {
            Some(pid) => open_namespaces(pid, &shared)?,
            None => Vec::new(),
        };
        let caps = capabilities::plan(process.capabilities().as_ref())
            .map_err(|err| StepError::new("capabilities", err))?;
        let filters = match linux.seccomp() {
            Some(profile) => {
                seccomp::compile(profile).map_err(|err| StepError::new("seccomp profile", err))?
            }
            None => Vec::new(),
        };

        let base = Path::new(CONTAINERS_DIR).join(&request.container_id);
        let rootfs = rootfs::assemble(&base, &request.layers, request.scratch.as_ref())?;
        let mut process = process;
        let created = users::resolve(&rootfs.path, &mut process)
            .and_then(|()| network_mounts(&base, request))
            .and_then(|extra_mounts| {
                Self::create_in(
                    request,
                    process,
                    &linux,
                    flags,
                    caps,
                    filters,
                    &rootfs,
                    extra_mounts,
                    join,
                )
            });
        match created {
            Ok((init_pid, cgroup, pipes, stdio)) => Ok((
                Self {
                    id: request.container_id.clone(),
                    init_pid,
                    spec: spec.clone(),
                    rootfs,
                    cgroup,
                    pending: Some(pipes),
                },
                stdio,
            )),
            Err(err) => {
                // Leave nothing behind, so a corrected request can retry.
                rootfs.unmount();
                let _ = fs::remove_dir(Path::new(cgroups::CGROUP_ROOT).join(&request.container_id));
                Err(err)
            }
        }
    }

    /// Everything after the rootfs: cgroup, stdio, the init process, its
    /// network.
    #[allow(clippy::too_many_arguments)]
    fn create_in(
        request: &CreateContainer,
        process: Process,
        linux: &oci_spec::runtime::Linux,
        flags: CloneFlags,
        caps: capabilities::CapabilityPlan,
        filters: Vec<seccompiler::BpfProgram>,
        rootfs: &Rootfs,
        extra_mounts: Vec<oci_spec::runtime::Mount>,
        join: Vec<(OwnedFd, CloneFlags)>,
    ) -> Result<(Pid, PathBuf, ChildPipes, ParentStdio), StepError> {
        let spec = &request.spec;
        let cgroup_root = Path::new(cgroups::CGROUP_ROOT);
        cgroups::enable_controllers(cgroup_root)
            .map_err(|err| StepError::new("enable cgroup controllers", err))?;
        let cgroup = cgroups::create(
            cgroup_root,
            &request.container_id,
            linux.resources().as_ref(),
        )
        .map_err(|err| StepError::new("cgroup limits", err))?;
        // Before any process joins: the container never holds a device
        // outside its policy, not even during setup.
        let device_rules =
            devices::rules(linux).map_err(|err| StepError::new("device policy", err))?;
        devices::attach(&cgroup, &devices::program(&device_rules))
            .map_err(|err| StepError::new("device cgroup", err))?;

        let terminal = process.terminal().unwrap_or(false);
        let (parent_stdio, child_stdio) =
            stdio::create(terminal, request.stdin, console_size(&process))?;

        let clone_flags = flags - CloneFlags::CLONE_NEWCGROUP;
        let unshare_after_cgroup = flags & CloneFlags::CLONE_NEWCGROUP;
        let rootfs_path = rootfs.path.clone();
        let mut child_spec = Box::new(spec.clone());
        if !extra_mounts.is_empty() {
            let mut mounts = child_spec.mounts().clone().unwrap_or_default();
            mounts.extend(extra_mounts);
            child_spec.set_mounts(Some(mounts));
        }
        let child_cgroup = cgroup.clone();
        let joins_network = join
            .iter()
            .any(|(_, kind)| *kind == CloneFlags::CLONE_NEWNET);
        let (pid, pipes) = spawn(clone_flags, move |sync, start| ChildSetup {
            entry: Entry::Init {
                rootfs: rootfs_path,
                spec: child_spec,
                unshare_after_cgroup,
                join,
            },
            process,
            cgroup: child_cgroup,
            stdio: child_stdio,
            sync,
            start,
            seccomp: filters,
            caps,
        })?;
        // The child is set up and waits for the start byte: its network
        // namespace exists, configure it before anything runs there.
        // A member in its sandbox's network namespace: configured already.
        let own_namespace = !flags.contains(CloneFlags::CLONE_NEWNET);
        let configured = match joins_network {
            true => Ok(()),
            false => network::configure(pid, own_namespace, request.network.as_ref()),
        };
        if let Err(err) = configured {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(err);
        }
        Ok((pid, cgroup, pipes, parent_stdio))
    }

    /// Lets the init process exec its command.
    pub fn start(&mut self) -> Result<(), StepError> {
        let pipes = self
            .pending
            .take()
            .ok_or_else(|| StepError::new("start", "the container was already started"))?;
        release(pipes)
    }

    /// Starts another process in the container's namespaces and cgroup.
    pub fn exec(&self, request: &ExecProcess) -> Result<(Pid, ParentStdio), StepError> {
        if self.pending.is_some() {
            return Err(StepError::new("exec", "the container is not started"));
        }
        let ns_dir = PathBuf::from(format!("/proc/{}/ns", self.init_pid));
        let open = |name: &str| {
            File::open(ns_dir.join(name))
                .map(OwnedFd::from)
                .map_err(|err| StepError::new(format!("open {name} namespace"), err))
        };
        // Mount last: after it, /proc/<pid> paths are the container's.
        let mut namespaces = Vec::new();
        for (name, kind) in [
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ] {
            namespaces.push((open(name)?, kind));
        }
        let target_pid_ns = open("pid")?;
        let own_pid_ns = File::open("/proc/self/ns/pid")
            .map_err(|err| StepError::new("open own pid namespace", err))?;

        let mut process = request.spec.clone();
        users::resolve(&self.rootfs.path, &mut process)?;
        let caps = capabilities::plan(process.capabilities().as_ref())
            .map_err(|err| StepError::new("capabilities", err))?;
        let filters = match self
            .spec
            .linux()
            .as_ref()
            .and_then(|linux| linux.seccomp().as_ref())
        {
            Some(profile) => {
                seccomp::compile(profile).map_err(|err| StepError::new("seccomp profile", err))?
            }
            None => Vec::new(),
        };
        let terminal = process.terminal().unwrap_or(false);
        let (parent_stdio, child_stdio) =
            stdio::create(terminal, request.stdin, console_size(&process))?;
        let cgroup = self.cgroup.clone();

        // setns(CLONE_NEWPID) only changes where our *children* go: spawn
        // the child into the container's pid namespace, then come back.
        setns(target_pid_ns.as_fd(), CloneFlags::CLONE_NEWPID)
            .map_err(|err| StepError::new("enter pid namespace", err))?;
        let spawned = spawn(CloneFlags::empty(), move |sync, start| ChildSetup {
            entry: Entry::Join { namespaces },
            process,
            cgroup,
            stdio: child_stdio,
            sync,
            start,
            seccomp: filters,
            caps,
        });
        let back = setns(own_pid_ns.as_fd(), CloneFlags::CLONE_NEWPID);
        let (pid, pipes) = spawned?;
        if let Err(err) = back {
            // Later children would land in the container: unrecoverable.
            return Err(StepError::new("return to agent pid namespace", err));
        }
        release(pipes)?;
        Ok((pid, parent_stdio))
    }

    /// The container's cgroup directory.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// New limits for the running container's cgroup.
    pub fn update(
        &self,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), cgroups::CgroupError> {
        cgroups::apply(&self.cgroup, resources)
    }

    pub fn stats(&self) -> ContainerStats {
        let read_u64 = |file: &str| -> Option<u64> {
            fs::read_to_string(self.cgroup.join(file))
                .ok()
                .and_then(|text| text.trim().parse().ok())
        };
        let cpu_usage_usec = fs::read_to_string(self.cgroup.join("cpu.stat"))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    line.strip_prefix("usage_usec ")
                        .and_then(|value| value.trim().parse().ok())
                })
            });
        ContainerStats {
            memory_current_bytes: read_u64("memory.current"),
            memory_peak_bytes: read_u64("memory.peak"),
            cpu_usage_usec,
            pids_current: read_u64("pids.current"),
        }
    }

    /// Unmounts the rootfs and layers (best effort: the VM is going away).
    pub fn unmount(&self) {
        self.rootfs.unmount();
        let _ = fs::remove_dir(&self.cgroup);
        tracing::debug!(container = %self.id, "unmounted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_path_safe() {
        assert!(validate_id("busybox-1_a.b").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
