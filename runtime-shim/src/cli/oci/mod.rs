//! The OCI runtime command line (`husk-runc`): runc's commands, flags and
//! exit codes on husk's lifecycle ([`crate::container`]). The container's
//! `pid` is its monitor's (see README).

pub mod bundle;
pub mod hooks;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use husk_protocol::LayerDisk;
use nix::sys::signal::Signal;
use oci_spec::runtime::{Hook, Process, Spec};
use serde::Serialize;

use crate::container::control::{ControlReply, ControlRequest};
use crate::container::instance::INIT_PROCESS;
use crate::container::monitor::{InitStdio, MonitorConfig};
use crate::container::state::{self, now_rfc3339, Op, State, StateDir, Status};
use crate::container::{self as lifecycle, ContainerError};
use crate::sandbox::backend::{DiskConfig, DiskImage};
use crate::sandbox::launch::vm_memory_mib;
use crate::sandbox::select::{self, BackendChoice};
use crate::sandbox::signals::SignalWatch;
use crate::sandbox::terminal::{self, RawModeGuard};
use crate::sandbox::{assets, initramfs};

/// The runtime-spec version `state` reports.
const OCI_VERSION: &str = "1.0.2";

#[derive(clap::Parser, Debug)]
#[command(
    name = "husk-runc",
    version,
    about = "husk's OCI runtime command line (runc-compatible): containers in KVM microVMs"
)]
pub struct OciCli {
    /// Directory of container state.
    #[arg(long, global = true, default_value = "/run/husk")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json (with json, the error that ends a command
    /// is appended to --log as a JSON line, as runc's callers read it).
    #[arg(long = "log-format", global = true, default_value = "text")]
    pub log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted and ignored: the container's cgroup is inside its VM.
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Image store (the initramfs and bundle disk caches).
    #[arg(
        long,
        global = true,
        env = "HUSK_STORE",
        default_value = "/var/lib/husk"
    )]
    pub store: PathBuf,
    /// Which program runs the VMs.
    #[arg(long, global = true, env = "HUSK_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    #[command(subcommand)]
    pub command: OciCommand,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Bundle directory (config.json and the rootfs).
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's pid (its monitor's) here.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the terminal's master to.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Accepted: the guest does its own pivot_root.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted and ignored.
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Accepted; only 0 is supported.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum OciCommand {
    /// Create a container (VM booted, init created, not started).
    Create(CreateArgs),
    /// Start a created container's process.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init.
    Kill {
        /// Every process of the container.
        #[arg(short = 'a', long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container (stopped, or any with --force).
    Delete {
        #[arg(short = 'f', long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short = 'd', long)]
        detach: bool,
        /// Keep the container after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a process in a running container.
    Exec(ExecArgs),
    /// List containers.
    List {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Host processes of a container (its monitor and VM).
    Ps {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        id: String,
    },
    /// Freeze a container's vCPUs.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// A container's stats (with --stats once, else every --interval).
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// What this runtime supports (JSON).
    Features,
    /// Write a default config.json to the bundle.
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
        /// Accepted; the spec is the same.
        #[arg(long)]
        rootless: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// process.json to run (replaces the flags below).
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    #[arg(long)]
    pub cwd: Option<String>,
    /// `UID[:GID]`, numeric (names resolve through the container's /etc/passwd).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl OciCli {
    fn log_level(&self) -> &'static str {
        if self.debug {
            "debug"
        } else {
            "warn"
        }
    }
}

/// Runs one command; the process exit code.
pub fn run(cli: OciCli) -> anyhow::Result<i32> {
    match &cli.command {
        OciCommand::Create(args) => {
            create(&cli, args, false)?;
            Ok(0)
        }
        OciCommand::Start { id } => {
            start(&cli, id)?;
            Ok(0)
        }
        OciCommand::State { id } => {
            let state = lifecycle::state(&cli.root, id)?;
            println!("{}", serde_json::to_string_pretty(&oci_state(&state))?);
            Ok(0)
        }
        OciCommand::Kill { all, id, signal } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            lifecycle::kill(&cli.root, id, sig, *all)?;
            Ok(0)
        }
        OciCommand::Delete { force, id } => {
            delete(&cli, id, *force)?;
            Ok(0)
        }
        OciCommand::Run {
            create: args,
            detach,
            keep,
        } => run_container(&cli, args, *detach, *keep),
        OciCommand::Exec(args) => exec(&cli, args),
        OciCommand::List { format, quiet } => list(&cli, format, *quiet),
        OciCommand::Ps { format, id } => ps(&cli, format, id),
        OciCommand::Pause { id } => {
            lifecycle::pause(&cli.root, id)?;
            Ok(0)
        }
        OciCommand::Resume { id } => {
            lifecycle::resume(&cli.root, id)?;
            Ok(0)
        }
        OciCommand::Events {
            stats,
            interval,
            id,
        } => events(&cli, id, *stats, interval),
        OciCommand::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
        OciCommand::Spec { bundle, .. } => {
            write_spec(bundle)?;
            Ok(0)
        }
    }
}

/// The OCI state document (with runc's extra fields).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciState<'a> {
    oci_version: &'static str,
    id: &'a str,
    pid: i32,
    status: &'static str,
    bundle: &'a Path,
    rootfs: String,
    created: &'a str,
    owner: &'a str,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    annotations: &'a std::collections::HashMap<String, String>,
}

fn oci_state(state: &State) -> OciState<'_> {
    // A stopped container has no process; runc reports pid 0.
    let status = match state.status {
        Status::Creating => "creating",
        other => other.as_str(),
    };
    OciState {
        oci_version: OCI_VERSION,
        id: &state.id,
        pid: if state.status == Status::Stopped {
            0
        } else {
            state.pid.unwrap_or(0)
        },
        status,
        bundle: &state.bundle,
        rootfs: state.bundle.join("rootfs").display().to_string(),
        created: &state.created,
        owner: &state.owner,
        annotations: &state.annotations,
    }
}

fn hooks_of(
    spec: &Spec,
    pick: impl Fn(&oci_spec::runtime::Hooks) -> Option<Vec<Hook>>,
) -> Vec<Hook> {
    spec.hooks().as_ref().and_then(pick).unwrap_or_default()
}

fn state_json(state: &State, status: &'static str) -> Vec<u8> {
    let mut doc = oci_state(state);
    doc.status = status;
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The spec the container was created with.
fn container_spec(root: &Path, id: &str) -> anyhow::Result<Spec> {
    let dir = StateDir::open(root, id)?;
    let bytes = std::fs::read(dir.monitor_config())
        .with_context(|| format!("reading the configuration of container {id}"))?;
    let config: MonitorConfig = serde_json::from_slice(&bytes)?;
    Ok(config.create.spec)
}

fn create(
    cli: &OciCli,
    args: &CreateArgs,
    foreground: bool,
) -> anyhow::Result<std::process::Child> {
    state::validate_id(&args.id)?;
    if StateDir::open(&cli.root, &args.id).is_ok() {
        bail!("container with id {} already exists", args.id);
    }
    if let Some(pid_file) = &args.pid_file {
        let parent = pid_file.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            if !parent.is_dir() {
                bail!(
                    "--pid-file {}: directory {} does not exist",
                    pid_file.display(),
                    parent.display()
                );
            }
        }
    }
    if args.preserve_fds != 0 {
        bail!("--preserve-fds is not supported (the container runs in a VM)");
    }
    let bundle = bundle::load(&args.bundle)?;
    let process = bundle.spec.process().clone().unwrap_or_default();
    let terminal = process.terminal().unwrap_or(false);
    if terminal && args.console_socket.is_none() && !foreground {
        bail!("cannot allocate tty if husk-runc will detach without setting console socket");
    }
    if !terminal && args.console_socket.is_some() {
        bail!("cannot use console socket if the container does not have a terminal (process.terminal is false)");
    }

    let kernel = assets::kernel(None)?;
    let agent = assets::agent()?;
    let selected = select::select(cli.backend, husk_vmm::probe::probe_host)?;
    tracing::info!("backend: {} ({})", selected.backend.kind(), selected.reason);
    let disk = bundle::rootfs_disk(&bundle.rootfs, &cli.store.join("bundles"))?;
    let initramfs = initramfs::cached(&cli.store, &agent)?;
    // The bundle's rootfs is one erofs image: a disk of its own, the whole
    // disk the layer.
    let serial = "husk-rootfs".to_string();
    let memory = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| l as u64);
    let disks = [DiskConfig {
        image: DiskImage::File(disk),
        read_only: true,
        serial: serial.clone(),
    }];
    let stdio = match &args.console_socket {
        Some(socket) => InitStdio::ConsoleSocket(socket.clone()),
        None => InitStdio::Inherited,
    };
    let state = State {
        id: args.id.clone(),
        status: Status::Creating,
        pid: None,
        vmm_pid: None,
        bundle: bundle.dir.clone(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
        created: now_rfc3339(),
        exit: None,
        name: None,
        image: None,
        command: process.args().clone().unwrap_or_default(),
        backend: String::new(),
        owner: owner(),
        ended_by: None,
    };
    // The CRI annotations: a pod's containers share its sandbox's VM.
    let pod = crate::container::monitor::pod::pod_role(&cli.root, &bundle.spec);
    // A network namespace path (CNI): the VM joins it; undone by the
    // monitor when it ends, or by this guard if the monitor never runs.
    let network =
        crate::container::monitor::pod::spec_network(&bundle.spec, &args.id, pod.as_ref())?;
    let mut network_guard = crate::network::ReleaseGuard(network.release.clone());
    let config = MonitorConfig {
        backend: selected.plan.as_str().to_string(),
        kernel,
        initramfs,
        disks: disks.to_vec(),
        vcpus: 1,
        memory_mib: vm_memory_mib(memory),
        cpus: crate::sandbox::vm_cgroup::cpus_of_spec(&bundle.spec),
        create: husk_protocol::CreateContainer {
            container_id: args.id.clone(),
            init_process: INIT_PROCESS,
            spec: network.spec.clone(),
            layers: vec![LayerDisk {
                serial,
                digest: format!("bundle rootfs {}", bundle.rootfs.display()),
                offset: 0,
                length: None,
            }],
            scratch: None,
            stdin: args.console_socket.is_none(),
            network: network.agent.clone(),
            sandbox: None,
        },
        stdio,
        state,
        auto_remove: false,
        nics: network.nics.clone(),
        network: network.release.clone(),
        pod,
        lease: None,
        lease_fds: Vec::new(),
    };
    let (child, state) = lifecycle::create(&cli.root, &config, cli.log_level())?;
    // The monitor runs and owns the network now.
    network_guard.0 = None;
    let after_create = || -> anyhow::Result<()> {
        let creating = state_json(&state, "creating");
        hooks::run(
            "prestart",
            &hooks_of(&bundle.spec, |h| h.prestart().clone()),
            &creating,
        )?;
        hooks::run(
            "createRuntime",
            &hooks_of(&bundle.spec, |h| h.create_runtime().clone()),
            &creating,
        )?;
        hooks::run(
            "createContainer",
            &hooks_of(&bundle.spec, |h| h.create_container().clone()),
            &creating,
        )?;
        if let Some(pid_file) = &args.pid_file {
            write_pid_file(pid_file, state.pid.unwrap_or(0))?;
        }
        Ok(())
    };
    if let Err(e) = after_create() {
        let _ = lifecycle::delete(&cli.root, &args.id, true);
        return Err(e);
    }
    Ok(child)
}

fn owner() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// Writes the pid atomically (a temp file renamed), as runc does.
fn write_pid_file(path: &Path, pid: i32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("pid"),
        std::process::id()
    ));
    std::fs::write(&tmp, pid.to_string())
        .and_then(|_| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing --pid-file {}", path.display()))
}

fn start(cli: &OciCli, id: &str) -> anyhow::Result<()> {
    let spec = container_spec(&cli.root, id)?;
    let state = lifecycle::state(&cli.root, id)?;
    state::transition(state.status, Op::Start)?;
    hooks::run(
        "startContainer",
        &hooks_of(&spec, |h| h.start_container().clone()),
        &state_json(&state, "created"),
    )?;
    lifecycle::start(&cli.root, id)?;
    let state = lifecycle::state(&cli.root, id)?;
    if let Err(e) = hooks::run(
        "poststart",
        &hooks_of(&spec, |h| h.poststart().clone()),
        &state_json(&state, "running"),
    ) {
        tracing::warn!("{e:#}");
    }
    Ok(())
}

fn delete(cli: &OciCli, id: &str, force: bool) -> anyhow::Result<()> {
    let spec = container_spec(&cli.root, id).ok();
    let state = lifecycle::delete(&cli.root, id, force)?;
    if let Some(spec) = spec {
        if let Err(e) = hooks::run(
            "poststop",
            &hooks_of(&spec, |h| h.poststop().clone()),
            &state_json(&state, "stopped"),
        ) {
            tracing::warn!("{e:#}");
        }
    }
    Ok(())
}

fn run_container(cli: &OciCli, args: &CreateArgs, detach: bool, keep: bool) -> anyhow::Result<i32> {
    // Signals to us go to the container while it runs.
    let signals = if detach {
        None
    } else {
        Some(SignalWatch::new()?)
    };
    let mut child = create(cli, args, !detach)?;
    if let Err(e) = start(cli, &args.id) {
        let _ = lifecycle::delete(&cli.root, &args.id, true);
        let _ = child.wait();
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let terminal = container_spec(&cli.root, &args.id)
        .ok()
        .and_then(|s| s.process().as_ref().and_then(|p| p.terminal()))
        .unwrap_or(false);
    let _raw = if terminal {
        RawModeGuard::stdin().ok().flatten()
    } else {
        None
    };
    let status =
        lifecycle::follow::wait_forwarding(&cli.root, &args.id, None, signals.as_ref(), terminal)?;
    drop(_raw);
    if !keep {
        delete(cli, &args.id, true)?;
    }
    let _ = child.wait();
    Ok(status)
}

fn exec(cli: &OciCli, args: &ExecArgs) -> anyhow::Result<i32> {
    let spec = container_spec(&cli.root, &args.id)?;
    let state = lifecycle::state(&cli.root, &args.id)?;
    state::transition(state.status, Op::Exec)?;
    let mut process: Process = match &args.process {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --process {}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => exec_process(
            &spec,
            &args.args,
            args.tty,
            &args.env,
            args.cwd.as_deref(),
            args.user.as_deref(),
        )?,
    };
    let terminal = process.terminal().unwrap_or(false);
    if terminal {
        if process.console_size().is_none() {
            if let Some((rows, cols)) = terminal::host_window_size() {
                process.set_console_size(
                    oci_spec::runtime::BoxBuilder::default()
                        .height(rows)
                        .width(cols)
                        .build()
                        .ok(),
                );
            }
        }
        if args.detach && args.console_socket.is_none() {
            bail!("cannot allocate tty if husk-runc will detach without setting console socket");
        }
    }
    let signals = if args.detach {
        None
    } else {
        Some(SignalWatch::new()?)
    };
    let console_socket = args.console_socket.clone().filter(|_| terminal);
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let fds = if console_socket.is_some() {
        Vec::new()
    } else {
        vec![
            stdin.as_fd().as_raw_fd(),
            stdout.as_fd().as_raw_fd(),
            stderr.as_fd().as_raw_fd(),
        ]
    };
    let request = ControlRequest::Exec {
        process: Box::new(process),
        stdin: true,
        console_socket,
        detach: args.detach,
    };
    let mut client = lifecycle::request(&cli.root, &args.id, Op::Exec, &request, &fds)?;
    let process_id = match client.reply()? {
        ControlReply::Started { process, pid } => {
            tracing::debug!(process, guest_pid = pid, "exec started");
            process
        }
        other => bail!("unexpected reply from the monitor: {other:?}"),
    };
    // The pid that stands for the exec'd process: a waiter that exits with
    // its status when detached, else this command itself.
    if args.detach {
        let dir = StateDir::open(&cli.root, &args.id)?;
        let waiter = lifecycle::follow::spawn_exec_waiter(&dir, process_id)
            .context("starting the exec's waiter")?;
        if let Some(pid_file) = &args.pid_file {
            write_pid_file(pid_file, waiter)?;
        }
        return Ok(0);
    }
    if let Some(pid_file) = &args.pid_file {
        write_pid_file(pid_file, std::process::id() as i32)?;
    }
    let _raw = if terminal {
        RawModeGuard::stdin().ok().flatten()
    } else {
        None
    };
    Ok(lifecycle::follow::wait_forwarding(
        &cli.root,
        &args.id,
        Some((process_id, client)),
        signals.as_ref(),
        terminal,
    )?)
}

fn list(cli: &OciCli, format: &str, quiet: bool) -> anyhow::Result<i32> {
    let all = lifecycle::list(&cli.root);
    if quiet {
        for s in &all {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    match format {
        "json" => {
            let docs: Vec<_> = all.iter().map(oci_state).collect();
            println!("{}", serde_json::to_string(&docs)?);
        }
        "table" => {
            let rows: Vec<[String; 6]> = all
                .iter()
                .map(|s| {
                    let doc = oci_state(s);
                    [
                        s.id.clone(),
                        doc.pid.to_string(),
                        doc.status.to_string(),
                        s.bundle.display().to_string(),
                        s.created.clone(),
                        s.owner.clone(),
                    ]
                })
                .collect();
            print_table(
                &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
                &rows,
            );
        }
        other => bail!("invalid format option {other:?}: table or json"),
    }
    Ok(0)
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}", width = w + 3));
            }
        }
        text
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

fn ps(cli: &OciCli, format: &str, id: &str) -> anyhow::Result<i32> {
    let state = lifecycle::state(&cli.root, id)?;
    let pids: Vec<i32> = if state.status == Status::Stopped {
        Vec::new()
    } else {
        state.pid.into_iter().chain(state.vmm_pid).collect()
    };
    match format {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            let mut command = std::process::Command::new("ps");
            command.arg("-f");
            if pids.is_empty() {
                // Header only.
                command.args(["-p", "0"]);
            } else {
                let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                command.arg("-p").arg(list.join(","));
            }
            let out = command.output().context("running ps")?;
            std::io::stdout().write_all(&out.stdout)?;
        }
        other => bail!("invalid format option {other:?}: table or json"),
    }
    Ok(0)
}

fn events(cli: &OciCli, id: &str, once: bool, interval: &str) -> anyhow::Result<i32> {
    let every = parse_duration(interval)?;
    loop {
        let stats = match lifecycle::stats(&cli.root, id) {
            Ok(stats) => stats,
            Err(ContainerError::Transition(_)) if !once => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let event = serde_json::json!({"type": "stats", "id": id, "data": stats});
        println!("{event}");
        if once {
            return Ok(0);
        }
        std::thread::sleep(every);
    }
}

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad interval {text:?}"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("bad interval {text:?}"),
    })
}

/// The process of an exec: the container's own process (capabilities,
/// rlimits, environment) with the command and the caller's overrides.
pub fn exec_process(
    spec: &Spec,
    args: &[String],
    tty: bool,
    env: &[String],
    cwd: Option<&str>,
    user: Option<&str>,
) -> anyhow::Result<Process> {
    if args.is_empty() {
        bail!("exec needs a command");
    }
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(args.to_vec()));
    p.set_terminal(Some(tty));
    p.set_console_size(None);
    if !env.is_empty() {
        let mut all = p.env().clone().unwrap_or_default();
        for pair in env {
            let key = pair.split('=').next().unwrap_or("");
            all.retain(|e| e.split('=').next() != Some(key));
            all.push(pair.clone());
        }
        p.set_env(Some(all));
    }
    if let Some(cwd) = cwd {
        p.set_cwd(PathBuf::from(cwd));
    }
    if let Some(user) = user {
        use crate::sandbox::spec::{parse_user, validate_user_name, SpecError};
        let mut u = p.user().clone();
        u.set_additional_gids(None);
        match parse_user(user) {
            Ok((uid, gid)) => {
                u.set_uid(uid);
                u.set_gid(gid);
                u.set_username(None);
            }
            // Resolved in the guest against the container's /etc/passwd.
            Err(SpecError::UserName(_)) => {
                validate_user_name(user)?;
                u.set_uid(0);
                u.set_gid(0);
                u.set_username(Some(user.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        p.set_user(u);
    }
    Ok(p)
}

/// A signal by name (`KILL`, `SIGKILL`) or number.
pub fn parse_signal(text: &str) -> anyhow::Result<i32> {
    if let Ok(n) = text.parse::<i32>() {
        if Signal::try_from(n).is_ok() {
            return Ok(n);
        }
        bail!("unknown signal {text:?}");
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| anyhow::anyhow!("unknown signal {text:?}"))
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "relatime", "strictatime", "bind", "rbind"],
        "linux": {
            "namespaces": ["pid", "mount", "ipc", "uts", "network", "cgroup"],
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.husk.vm": "every container runs in its own microVM; the pid is the container's monitor",
            "io.husk.ignored": "--systemd-cgroup, --no-pivot, --no-new-keyring, --log-format json (only the final error is a JSON line), hooks run on the host (createContainer and startContainer too)",
            "io.husk.rootfs": "the rootfs directory becomes a read-only erofs disk; container writes stay in the VM"
        }
    })
}

fn write_spec(bundle: &Path) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let spec = Spec::default();
    let text = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("usr1").unwrap(), 10);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("x").is_err());
    }
}
