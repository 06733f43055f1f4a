//! One container in one microVM, start to finish (`husk run` in the
//! foreground): resolve the image, build the spec and the initramfs
//! ([`prepare`]), then the lifecycle's phases ([`Instance`]: boot, create,
//! start), the container's session, and shutdown.
//!
//! Cleanup is by ownership: the VM handle kills its process when dropped and
//! the run directory guard removes the socket and logs, so every return path
//! (errors and signals included) leaves nothing behind.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use husk_protocol::{CreateContainer, ErrorReply, LayerDisk};
use oci_spec::runtime::Spec;

use super::agent_client::AgentError;
use super::assets::{self, AssetError};
use super::backend::{BackendError, DiskConfig, VmConfig};
use super::initramfs::{self, InitramfsError};
use super::layers::{self, LayersError};
use super::rundir::{RunDir, RunDirError};
use super::select::{self, BackendChoice};
use super::signals::{SignalError, SignalWatch};
use super::spec::{self, RunOptions, SpecError};
use super::stdio::{self, HostStdio, SessionOptions};
use super::terminal::RawModeGuard;
use crate::container::instance::{Instance, StartError, INIT_PROCESS};
use crate::image::store::LayerLease;
use crate::image::{Store, StoreError};

/// Guest kernel and agent need this on top of the container's memory.
pub const VM_MEMORY_HEADROOM_MIB: u32 = 128;
/// VM memory when `--memory` is not given (no container limit then).
pub const DEFAULT_VM_MEMORY_MIB: u32 = 512;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Asset(#[from] AssetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layers(#[from] LayersError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Signals(#[from] SignalError),
    #[error("{0}")]
    Agent(#[from] AgentError),
    #[error("creating the container failed: {0}")]
    Create(ErrorReply),
    #[error("setting the terminal to raw mode: {0}")]
    Terminal(nix::Error),
    #[error("network: {0}")]
    Network(#[from] crate::network::NetworkError),
}

/// What the user asked for.
pub struct Launch {
    pub image: String,
    pub options: RunOptions,
    pub forward_stdin: bool,
    pub name: Option<String>,
    pub backend: BackendChoice,
    pub kernel: Option<PathBuf>,
    pub vcpus: u32,
    /// The container's ID (a new random one when `None`).
    pub id: Option<String>,
    /// `--network` and `-p`.
    pub network: crate::network::NetworkOptions,
}

/// How it ended when the container got as far as its command.
pub enum Outcome {
    /// The process ran; its exit code in the shell convention (128+N).
    Exited(i32),
    /// The command could not be executed (not found: 127, not executable:
    /// 126), as the agent reported it.
    StartFailed { code: i32, error: ErrorReply },
}

pub fn run(store_root: &Path, launch: Launch) -> Result<Outcome, LaunchError> {
    let started = Instant::now();
    // First, before any thread or child exists: Ctrl-C from here on is ours.
    let signals = SignalWatch::new()?;
    let kernel = assets::kernel(launch.kernel.as_deref())?;
    let agent = assets::agent()?;

    let selected = select::select(launch.backend, husk_vmm::probe::probe_host)?;
    tracing::info!("backend: {} ({})", selected.backend.kind(), selected.reason);

    let prepared = prepare(store_root, &launch, kernel, &agent)?;
    let container_id = prepared.id.clone();
    // Before the VM: a refused port fails here, and the drop at the end of
    // this function (after the VM is gone) releases it all.
    let network = prepared.attach_network(&launch.network)?;

    // The run directory is handed to the instance, which drops it after the
    // VM: the VM goes first, then its socket and logs.
    RunDir::sweep_stale(store_root);
    let rundir = RunDir::create(store_root, &container_id)?;
    tracing::debug!(path = %rundir.path().display(), "run directory");
    let mut config = prepared.vm_config(&rundir);
    config.nics = network.nics.clone();
    let mut instance = Instance::boot(
        container_id,
        selected.backend.as_ref(),
        &config,
        rundir,
        Some(&signals),
    )?;
    tracing::info!(agent = %instance.agent_version, elapsed = ?started.elapsed(), vm_to_hello_ms = instance.boot_time.as_millis() as u64, "agent ready");

    let terminal = prepared
        .spec
        .process()
        .as_ref()
        .is_some_and(|p| p.terminal().unwrap_or(false));
    let mut create = prepared.create_request(launch.forward_stdin);
    create.network = Some(network.agent.clone());
    instance.create(create, Some(&signals))?;

    // Raw mode only once the container is about to own the terminal, and
    // only when input is forwarded (as `docker run -it`).
    let _raw = if terminal && launch.forward_stdin {
        RawModeGuard::stdin().map_err(LaunchError::Terminal)?
    } else {
        None
    };
    match instance.start(Some(&signals)) {
        Ok(()) => {}
        Err(StartError::Exec(error)) => {
            instance.shutdown();
            return Ok(Outcome::StartFailed {
                code: exec_failure_code(&error),
                error,
            });
        }
        Err(StartError::Other(e)) => return Err(e),
    }
    tracing::info!(elapsed = ?started.elapsed(), "container started");

    let session = SessionOptions {
        process: INIT_PROCESS,
        forward_stdin: launch.forward_stdin,
        terminal,
    };
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let host = HostStdio {
        stdin: stdin.as_fd(),
        stdout: stdout.as_fd(),
        stderr: stderr.as_fd(),
    };
    let status = stdio::run(
        &mut instance.client,
        &mut instance.vm,
        Some(&signals),
        &host,
        session,
    )?;
    drop(_raw);
    tracing::info!(?status, elapsed = ?started.elapsed(), serial_log = %instance.vm.serial_log().display(), "container exited");
    instance.shutdown();
    Ok(Outcome::Exited(status.shell_code()))
}

/// A container ready to boot: its ID, its VM's parts and its spec.
pub struct Prepared {
    pub id: String,
    pub image: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub disks: Vec<DiskConfig>,
    pub layers: Vec<LayerDisk>,
    pub spec: Spec,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// `--cpus`: also the VM process's CPU time (its cgroup's `cpu.max`).
    pub cpus: Option<f64>,
    /// The run's lease on its image's layer disks: held until this value
    /// drops (after the VM, in [`run`]), or handed to the container's
    /// monitor, which holds it until it exits.
    pub lease: LayerLease,
}

impl Prepared {
    /// The VM configuration, its socket and logs in `rundir`.
    pub fn vm_config(&self, rundir: &RunDir) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            disks: self.disks.iter().map(|d| d.in_dir(rundir.path())).collect(),
            console_socket: rundir.console_socket(),
            serial_log: rundir.serial_log(),
            vmm_log: rundir.vmm_log(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            cmdline_extra: Vec::new(),
            nics: Vec::new(),
            pod: None,
            cgroup: Some(self.id.clone()),
            cpus: self.cpus,
        }
    }

    /// The container's network (`owner`: this process runs the VM).
    pub fn attach_network(
        &self,
        options: &crate::network::NetworkOptions,
    ) -> Result<crate::network::Attachment, LaunchError> {
        let hostname = self.spec.hostname().clone().unwrap_or_default();
        Ok(crate::network::attach(
            &self.id,
            &hostname,
            options,
            std::process::id(),
        )?)
    }

    /// The agent request that creates the container.
    pub fn create_request(&self, stdin: bool) -> CreateContainer {
        CreateContainer {
            container_id: self.id.clone(),
            init_process: INIT_PROCESS,
            spec: self.spec.clone(),
            layers: self.layers.clone(),
            scratch: None,
            stdin,
            network: None,
            sandbox: None,
        }
    }
}

/// Resolves the image and builds the disks, the ID and the spec of a
/// container of `launch` (the same for every backend).
pub fn prepare(
    store_root: &Path,
    launch: &Launch,
    kernel: PathBuf,
    agent: &Path,
) -> Result<Prepared, LaunchError> {
    let store = Store::open(store_root)?;
    let image = store.resolve(&launch.image)?;
    // From here to the VM's exit no `image rm`/`prune` deletes these disks.
    let lease = store.lease(&image)?;
    let (layers_disk, layers) = layers::pack(&image.name, &image.layers)?;
    let disks = vec![layers_disk];

    let container_id = launch.id.clone().unwrap_or_else(new_container_id);
    let mut options = launch.options.clone();
    if options.hostname.is_empty() {
        options.hostname = container_id[..12].to_string();
    }
    let mut spec = spec::build(&image.config, &options)?;
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    annotations.insert("io.husk.image".into(), image.name.clone());
    if let Some(name) = &launch.name {
        annotations.insert("io.husk.name".into(), name.clone());
    }
    spec.set_annotations(Some(annotations));

    let initramfs = initramfs::cached(store_root, agent)?;

    let memory_mib = vm_memory_mib(options.memory_bytes);
    Ok(Prepared {
        id: container_id,
        image: image.name.clone(),
        kernel,
        initramfs,
        disks,
        layers,
        spec,
        vcpus: launch.vcpus.max(1),
        memory_mib,
        cpus: options.cpus,
        lease,
    })
}

/// VM memory for a container limit (none: the default).
pub fn vm_memory_mib(limit_bytes: Option<u64>) -> u32 {
    match limit_bytes {
        Some(bytes) => u32::try_from(bytes.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .saturating_add(VM_MEMORY_HEADROOM_MIB),
        None => DEFAULT_VM_MEMORY_MIB,
    }
}

/// Docker's codes for a command that cannot run: 127 when it does not
/// exist, 126 when it cannot be executed. The protocol carries the error as
/// text, so the errno's message is what is matched.
pub fn exec_failure_code(error: &ErrorReply) -> i32 {
    let text = format!("{} {}", error.step, error.message).to_ascii_lowercase();
    if text.contains("no such file") || text.contains("not found") || text.contains("enoent") {
        127
    } else if text.contains("permission denied")
        || text.contains("eacces")
        || text.contains("exec format")
    {
        126
    } else {
        125
    }
}

/// 32 random hex digits; the first 12 are the default hostname.
pub fn new_container_id() -> String {
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !filled {
        // Unique enough without randomness: time and pid.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failures_map_to_docker_codes() {
        let e = |m: &str| ErrorReply {
            step: "exec /nope".into(),
            message: m.into(),
        };
        assert_eq!(
            exec_failure_code(&e("No such file or directory (os error 2)")),
            127
        );
        assert_eq!(
            exec_failure_code(&e("Permission denied (os error 13)")),
            126
        );
        assert_eq!(exec_failure_code(&e("Invalid argument")), 125);
    }

    #[test]
    fn container_ids_are_unique_hex() {
        let a = new_container_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_container_id());
    }
}
