//! `husk run`: a command in a new container, in its own microVM.

use std::path::{Path, PathBuf};

use super::registry::RegistryArgs;
use crate::image::registry::{self, platform::Platform};
use crate::image::{Store, StoreError};
use crate::network::{NetworkMode, NetworkOptions, PortMapping};
use crate::sandbox::agent_client::AgentError;
use crate::sandbox::launch::{self, Launch, LaunchError, Outcome};
use crate::sandbox::select::BackendChoice;
use crate::sandbox::spec::{parse_size, RunOptions, SeccompChoice};
use crate::sandbox::terminal;

/// Docker's minimum for `--memory`.
const MIN_MEMORY_BYTES: u64 = 6 << 20;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it exits (else it stays, stopped, for
    /// `husk ps -a`, `inspect` and `rm`, as with docker).
    #[arg(long)]
    pub rm: bool,
    /// Run in the background under a monitor: print the container's ID and
    /// return (see `husk ps`, `exec`, `logs`, `stop`, `rm`).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open and forward it to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// A name for the container (shown in logs and recorded in the spec).
    #[arg(long)]
    pub name: Option<String>,
    /// Memory limit (e.g. 256M, 1g); the VM gets this plus room for the
    /// guest kernel and agent.
    #[arg(short = 'm', long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// CPUs: the VM's vCPU count (rounded up) and the container's CPU quota.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Process limit of the container (cgroup pids.max).
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Add a supplementary group (numeric GID); repeatable.
    #[arg(long = "group-add", value_name = "GID")]
    pub group_add: Vec<u32>,
    /// Set an environment variable (K=V, or K to take husk's value).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User as `USER[:GROUP]`: numbers, or names from the image's /etc/passwd and /etc/group.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container host name (default: the start of its ID).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Security options: `seccomp=FILE` (an OCI seccomp profile, JSON) or
    /// `seccomp=unconfined`; the default is husk's Docker-like profile.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// The container's network: `bridge` (a NIC on the host bridge husk0,
    /// NAT to the outside) or `none` (only lo).
    #[arg(long, value_enum, default_value_t = NetworkMode::Bridge)]
    pub network: NetworkMode,
    /// Publish a container port: [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]
    /// (repeatable); refused before boot if the host port is taken.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]"
    )]
    pub publish: Vec<PortMapping>,
    /// Which program runs the VM: auto follows `husk check`.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Guest kernel (default: $HUSK_KERNEL, then /usr/lib/husk/vmlinux).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// When to pull the image from its registry first: `missing` (the
    /// default, as docker does), `always`, or `never`.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    /// Platform to pull (OS/ARCH[/VARIANT]); default: this host's.
    #[arg(long, value_parser = Platform::parse)]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Image name or ID.
    pub image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    Missing,
    Never,
}

/// Pulls the image when the policy says so; returns what to run (the
/// image ID for a digest reference, which names no tag in the store).
pub fn ensure_image(
    store: &Path,
    image: &str,
    policy: PullPolicy,
    registry_args: &RegistryArgs,
    platform: Option<Platform>,
) -> anyhow::Result<String> {
    let store = Store::open(store)?;
    match (policy, local_image(&store, image)?) {
        (PullPolicy::Always, _) => {}
        (_, Some(found)) => return Ok(found),
        // The run reports the image missing.
        (PullPolicy::Never, None) => return Ok(image.to_string()),
        (PullPolicy::Missing, None) => {
            eprintln!("husk: image {image} is not in the store: pulling it")
        }
    }
    let report = super::registry::pull_into(
        &store,
        image,
        registry_args,
        platform,
        true,
        registry::DEFAULT_CONCURRENT_DOWNLOADS,
    )?;
    Ok(report.name.unwrap_or(report.id))
}

/// The image `husk run` would use without pulling, if the store has it.
fn local_image(store: &Store, image: &str) -> anyhow::Result<Option<String>> {
    if let Some((_, digest)) = image.split_once('@') {
        let digest = crate::image::digest::Digest::parse(digest)?;
        return Ok(store.image_by_manifest(&digest)?.map(|id| id.to_string()));
    }
    match store.resolve_id(image) {
        Ok(_) => Ok(Some(image.to_string())),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn parse_memory(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(format!("{text} is below the minimum of 6M"));
    }
    Ok(bytes)
}

pub fn run(store: &Path, args: RunArgs) -> anyhow::Result<i32> {
    if args.detach {
        super::containers::check_detached(&args)?;
    }
    let (detach, remove) = (args.detach, args.rm);
    if let Some(name) = &args.name {
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        anyhow::ensure!(
            valid,
            "invalid container name {name:?}: [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        );
    }
    let vcpus = match args.cpus {
        Some(cpus) if cpus.is_finite() && cpus > 0.0 => (cpus.ceil() as u32).clamp(1, 64),
        Some(cpus) => anyhow::bail!("--cpus {cpus} is not a positive number"),
        None => 1,
    };
    let network = NetworkOptions {
        mode: args.network,
        publish: args.publish,
    };
    network.check().map_err(anyhow::Error::msg)?;
    if let Some(limit) = args.pids_limit {
        anyhow::ensure!(limit > 0, "--pids-limit must be positive");
    }
    let mut seccomp = SeccompChoice::Default;
    for opt in &args.security_opt {
        match opt.split_once(['=', ':']) {
            Some(("seccomp", value)) => seccomp = SeccompChoice::parse(value)?,
            _ => anyhow::bail!(
                "unsupported --security-opt {opt:?} (supported: seccomp=FILE|unconfined)"
            ),
        }
    }
    let image = ensure_image(
        store,
        &args.image,
        args.pull,
        &args.registry,
        args.platform.clone(),
    )?;
    let options = RunOptions {
        command: args.command,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        hostname: args.hostname.unwrap_or_default(),
        terminal: args.tty,
        console_size: if args.tty {
            terminal::host_window_size()
        } else {
            None
        },
        memory_bytes: args.memory,
        cpus: args.cpus,
        pids_limit: args.pids_limit,
        group_add: args.group_add,
        seccomp,
    };
    let launch = Launch {
        image,
        options,
        forward_stdin: args.interactive,
        name: args.name,
        backend: args.backend,
        kernel: args.kernel,
        vcpus,
        id: None,
        network,
    };
    if detach {
        return super::containers::run_detached(store, launch, remove, "info");
    }
    // The run stays in this process; like docker, a container run without
    // --rm is kept (stopped) for `ps -a`, `inspect` and `rm`.
    let mut launch = launch;
    let record = super::containers::Foreground::begin(store, &launch, remove)?;
    launch.id = Some(record.id().to_string());
    let result = foreground(store, launch);
    record.finish(*result.as_ref().unwrap_or(&125));
    result
}

fn foreground(store: &Path, launch: Launch) -> anyhow::Result<i32> {
    match launch::run(store, launch) {
        Ok(Outcome::Exited(code)) => Ok(code),
        Ok(Outcome::StartFailed { code, error }) => {
            eprintln!("husk: cannot run the container's command: {error}");
            Ok(code)
        }
        // Stopped by the user: the shell's status for that signal.
        Err(LaunchError::Agent(
            e @ (AgentError::Interrupted(sig) | AgentError::Abandoned(sig)),
        )) => {
            eprintln!("husk: {e}");
            Ok(128 + sig as i32)
        }
        // The reader of our output went away: end quietly with the status
        // of a pipeline member killed by SIGPIPE.
        Err(LaunchError::Agent(AgentError::OutputClosed(stream))) => {
            tracing::info!("{stream} closed by its reader; container stopped");
            Ok(128 + libc::SIGPIPE)
        }
        Err(e) => Err(e.into()),
    }
}
