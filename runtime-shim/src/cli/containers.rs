//! The Docker-style container commands on the lifecycle core: `run -d`,
//! `ps`, `exec`, `logs`, `stop`, `kill`, `rm`, `inspect`. Containers live
//! under `<store>/containers`; a container is named by its name, its ID or
//! an unambiguous ID prefix of at least four characters.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::oci::{exec_process, parse_signal};
use super::run::RunArgs;
use crate::container::control::{ControlReply, ControlRequest};
use crate::container::monitor::{self, InitStdio, MonitorConfig};
use crate::container::state::{now_rfc3339, Op, State, StateDir, Status};
use crate::container::{self as lifecycle, follow, names};
use crate::sandbox::assets;
use crate::sandbox::launch::{self, Launch};
use crate::sandbox::select;
use crate::sandbox::signals::SignalWatch;
use crate::sandbox::terminal::{self, RawModeGuard};

/// Where the Docker-style CLI keeps its containers.
pub fn root(store: &Path) -> PathBuf {
    store.join("containers")
}

/// `husk run -d`: create and start the container under a monitor, print
/// its ID.
pub fn run_detached(
    store: &Path,
    launch: Launch,
    remove: bool,
    log_level: &str,
) -> anyhow::Result<i32> {
    let root = root(store);
    let kernel = assets::kernel(launch.kernel.as_deref())?;
    let agent = assets::agent()?;
    let selected = select::select(launch.backend, husk_vmm::probe::probe_host)?;
    tracing::info!("backend: {} ({})", selected.backend.kind(), selected.reason);
    let prepared = launch::prepare(store, &launch, kernel, &agent)?;
    let id = prepared.id.clone();
    if let Some(name) = &launch.name {
        names::claim(&root, name, &id)?;
    }
    // Released by this drop on failure; by the monitor once it runs.
    let network = match prepared.attach_network(&launch.network) {
        Ok(network) => network,
        Err(e) => {
            if let Some(name) = &launch.name {
                names::release(&root, name, &id);
            }
            return Err(e.into());
        }
    };
    let mut create = prepared.create_request(false);
    create.network = Some(network.agent.clone());
    let command = prepared
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    let config = MonitorConfig {
        backend: selected.plan.as_str().to_string(),
        kernel: prepared.kernel.clone(),
        initramfs: prepared.initramfs.clone(),
        disks: prepared.disks.clone(),
        vcpus: prepared.vcpus,
        memory_mib: prepared.memory_mib,
        cpus: prepared.cpus,
        create,
        stdio: InitStdio::Log,
        state: State {
            id: id.clone(),
            status: Status::Creating,
            pid: None,
            vmm_pid: None,
            bundle: PathBuf::new(),
            annotations: prepared.spec.annotations().clone().unwrap_or_default(),
            created: now_rfc3339(),
            exit: None,
            name: launch.name.clone(),
            image: Some(prepared.image.clone()),
            command,
            backend: String::new(),
            owner: String::new(),
            ended_by: None,
        },
        auto_remove: remove,
        nics: network.nics.clone(),
        network: network.to_release(),
        pod: None,
        // The monitor holds the lease from here until it exits.
        lease: Some(std::sync::Arc::new(prepared.lease)),
        lease_fds: Vec::new(),
    };
    let started = lifecycle::create(&root, &config, log_level)
        .map_err(anyhow::Error::from)
        .and_then(|_| lifecycle::start(&root, &id).map_err(anyhow::Error::from));
    if let Err(e) = started {
        let _ = lifecycle::delete(&root, &id, true);
        if let Some(name) = &launch.name {
            names::release(&root, name, &id);
        }
        return Err(e);
    }
    network.keep();
    println!("{id}");
    Ok(0)
}

/// A container run in the foreground by `husk run` (without -d): recorded
/// so that `ps`, `inspect`, `stop`, `kill` and `rm` see it. The `husk`
/// process itself stands for it (it holds the monitor lock while it runs:
/// signals sent to it reach the container); it has no control socket, so
/// `exec` needs a container started with -d.
pub struct Foreground {
    root: PathBuf,
    id: String,
    name: Option<String>,
    remove: bool,
    dir: Option<StateDir>,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Foreground {
    pub fn begin(store: &Path, launch: &Launch, remove: bool) -> anyhow::Result<Self> {
        let root = root(store);
        let id = launch::new_container_id();
        if let Some(name) = &launch.name {
            names::claim(&root, name, &id)?;
        }
        let mut record = Foreground {
            root: root.clone(),
            id: id.clone(),
            name: launch.name.clone(),
            remove,
            dir: None,
            _lock: None,
        };
        if remove {
            return Ok(record);
        }
        let dir = StateDir::create(&root, &id).inspect_err(|_| {
            if let Some(name) = &launch.name {
                names::release(&root, name, &id);
            }
        })?;
        let lock = dir.take_monitor_lock()?;
        let state = State {
            id: id.clone(),
            status: Status::Running,
            pid: Some(std::process::id() as i32),
            vmm_pid: None,
            bundle: PathBuf::new(),
            annotations: Default::default(),
            created: now_rfc3339(),
            exit: None,
            name: launch.name.clone(),
            image: Some(launch.image.clone()),
            command: launch.options.command.clone(),
            backend: String::new(),
            owner: String::new(),
            ended_by: None,
        };
        dir.save(&state)?;
        record.dir = Some(dir);
        record._lock = lock;
        Ok(record)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The run ended with `code`: the record becomes a stopped container
    /// (or goes, with --rm).
    pub fn finish(self, code: i32) {
        if let Some(dir) = &self.dir {
            if let Ok(mut state) = dir.read_raw() {
                state.status = Status::Stopped;
                state.exit = Some(if code > 128 {
                    husk_protocol::ExitStatus::signaled(code - 128)
                } else {
                    husk_protocol::ExitStatus::exited(code)
                });
                let _ = dir.save(&state);
            }
        }
        if self.remove {
            if let Some(name) = &self.name {
                names::release(&self.root, name, &self.id);
            }
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Show stopped containers too.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// IDs only.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// `json`: one JSON object per line.
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// A pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Start the process and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// `USER[:GROUP]`, names or numbers (names through the image's /etc/passwd).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    pub container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Keep following the output until the container stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    pub container: String,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct KillArgs {
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Remove running containers too (killed first).
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

fn resolve(store: &Path, what: &str) -> anyhow::Result<String> {
    Ok(names::resolve(&root(store), what)?)
}

fn status_text(state: &State) -> String {
    match state.status {
        Status::Creating => "Creating".into(),
        Status::Created => "Created".into(),
        Status::Running => "Up".into(),
        Status::Paused => "Up (Paused)".into(),
        Status::Stopped => format!(
            "Exited ({})",
            state.exit.map(|s| s.shell_code()).unwrap_or(137)
        ),
    }
}

/// Signals a container: through its monitor, or, for a container run in
/// the foreground, to the `husk` process that runs it (which forwards
/// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2 to the container; SIGKILL
/// ends it and its VM).
fn signal(root: &Path, id: &str, signal: i32) -> anyhow::Result<()> {
    let dir = StateDir::open(root, id)?;
    if dir.monitor_config().exists() {
        return Ok(lifecycle::kill(root, id, signal, false)?);
    }
    let state = dir.load()?;
    crate::container::state::transition(state.status, Op::Signal)?;
    let pid = state.pid.unwrap_or(0);
    let sig = nix::sys::signal::Signal::try_from(signal)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .with_context(|| format!("signalling pid {pid}"))?;
    Ok(())
}

pub fn ps(store: &Path, args: PsArgs) -> anyhow::Result<i32> {
    let all: Vec<State> = lifecycle::list(&root(store))
        .into_iter()
        .filter(|s| args.all || s.status != Status::Stopped)
        .collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for s in &all {
            writeln!(out, "{}", &s.id[..12.min(s.id.len())])?;
        }
        return Ok(0);
    }
    if args.format.as_deref() == Some("json") {
        for s in &all {
            writeln!(out, "{}", serde_json::to_string(&summary(s))?)?;
        }
        return Ok(0);
    }
    if let Some(other) = &args.format {
        bail!("unknown --format {other:?}: json");
    }
    writeln!(
        out,
        "{:<14}{:<20}{:<24}{:<32}{:<16}NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS"
    )?;
    for s in &all {
        let mut command = s.command.join(" ");
        if command.len() > 20 {
            command.truncate(19);
            command.push('…');
        }
        writeln!(
            out,
            "{:<14}{:<20}{:<24}{:<32}{:<16}{}",
            &s.id[..12.min(s.id.len())],
            s.image.as_deref().unwrap_or(""),
            format!("\"{command}\""),
            s.created,
            status_text(s),
            s.name.as_deref().unwrap_or("")
        )?;
    }
    Ok(0)
}

fn summary(s: &State) -> serde_json::Value {
    serde_json::json!({
        "ID": s.id,
        "Names": s.name.clone().unwrap_or_default(),
        "Image": s.image.clone().unwrap_or_default(),
        "Command": s.command.join(" "),
        "CreatedAt": s.created,
        "State": s.status.as_str(),
        "Status": status_text(s),
    })
}

pub fn exec(store: &Path, args: ExecArgs) -> anyhow::Result<i32> {
    let root = root(store);
    let id = resolve(store, &args.container)?;
    let dir = StateDir::open(&root, &id)?;
    crate::container::state::transition(dir.load()?.status, Op::Exec)?;
    if !dir.monitor_config().exists() {
        bail!(
            "container {} was run in the foreground (`husk run` without -d): exec needs a container started with `husk run -d`",
            args.container
        );
    }
    let bytes =
        std::fs::read(dir.monitor_config()).context("reading the container's configuration")?;
    let config: MonitorConfig = serde_json::from_slice(&bytes)?;
    let mut process = exec_process(
        &config.create.spec,
        &args.command,
        args.tty,
        &args.env,
        args.workdir.as_deref(),
        args.user.as_deref(),
    )?;
    if args.tty {
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
    let signals = if args.detach {
        None
    } else {
        Some(SignalWatch::new()?)
    };
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let null = std::fs::File::open("/dev/null")?;
    let fds = if args.detach {
        vec![null.as_raw_fd(), null.as_raw_fd(), null.as_raw_fd()]
    } else {
        vec![
            stdin.as_fd().as_raw_fd(),
            stdout.as_fd().as_raw_fd(),
            stderr.as_fd().as_raw_fd(),
        ]
    };
    let request = ControlRequest::Exec {
        process: Box::new(process),
        stdin: args.interactive && !args.detach,
        console_socket: None,
        detach: args.detach,
    };
    let mut client = lifecycle::request(&root, &id, Op::Exec, &request, &fds)?;
    let process_id = match client.reply()? {
        ControlReply::Started { process, .. } => process,
        other => bail!("unexpected reply from the monitor: {other:?}"),
    };
    if args.detach {
        return Ok(0);
    }
    let _raw = if args.tty && args.interactive {
        RawModeGuard::stdin().ok().flatten()
    } else {
        None
    };
    Ok(follow::wait_forwarding(
        &root,
        &id,
        Some((process_id, client)),
        signals.as_ref(),
        args.tty,
    )?)
}

pub fn logs(store: &Path, args: LogsArgs) -> anyhow::Result<i32> {
    let root = root(store);
    let id = resolve(store, &args.container)?;
    let dir = StateDir::open(&root, &id)?;
    let path = dir.container_log();
    let mut offset = 0u64;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // The monitor's own liveness before the read: output written
        // before it ended is then read in this round.
        let alive = dir.monitor_alive();
        if let Ok(mut file) = std::fs::File::open(&path) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offset {
                // Cut back by the monitor's bound: start over at its start.
                offset = 0;
            }
            file.seek(SeekFrom::Start(offset))?;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                offset += n as u64;
            }
            out.flush()?;
        }
        if !args.follow || !alive {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn stop(store: &Path, args: StopArgs) -> anyhow::Result<i32> {
    let root = root(store);
    let mut failed = false;
    for what in &args.containers {
        let result = (|| -> anyhow::Result<()> {
            let id = resolve(store, what)?;
            let state = lifecycle::state(&root, &id)?;
            if state.status == Status::Stopped {
                return Ok(());
            }
            let pid = state.pid.unwrap_or(0);
            if state.status == Status::Paused {
                lifecycle::resume(&root, &id)?;
            }
            // A foreground run forwards SIGTERM; the husk process itself
            // ends once its container has.
            let _ = signal(&root, &id, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(args.time);
            if !monitor::wait_pid_gone(pid, deadline.saturating_duration_since(Instant::now())) {
                let _ = signal(&root, &id, libc::SIGKILL);
                if !monitor::wait_pid_gone(pid, Duration::from_secs(30)) {
                    bail!("container {what} did not stop");
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => println!("{what}"),
            Err(e) => {
                eprintln!("husk: {what}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub fn kill(store: &Path, args: KillArgs) -> anyhow::Result<i32> {
    let signal = parse_signal(&args.signal)?;
    let root = root(store);
    let mut failed = false;
    for what in &args.containers {
        let result = resolve(store, what).and_then(|id| self::signal(&root, &id, signal));
        match result {
            Ok(()) => println!("{what}"),
            Err(e) => {
                eprintln!("husk: {what}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub fn rm(store: &Path, args: RmArgs) -> anyhow::Result<i32> {
    let root = root(store);
    let mut failed = false;
    for what in &args.containers {
        let result = (|| -> anyhow::Result<()> {
            let id = resolve(store, what)?;
            let state = lifecycle::state(&root, &id)?;
            if !args.force && state.status != Status::Stopped {
                bail!(
                    "cannot remove container {what}: it is {}; stop it first or use rm -f",
                    state.status
                );
            }
            let state = lifecycle::delete(&root, &id, true)?;
            if let Some(name) = &state.name {
                names::release(&root, name, &id);
            }
            Ok(())
        })();
        match result {
            Ok(()) => println!("{what}"),
            Err(e) => {
                eprintln!("husk: {what}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub fn inspect(store: &Path, args: InspectArgs) -> anyhow::Result<i32> {
    let root = root(store);
    let mut docs = Vec::new();
    let mut failed = false;
    for what in &args.containers {
        match resolve(store, what).and_then(|id| Ok(lifecycle::state(&root, &id)?)) {
            Ok(s) => {
                let spec = StateDir::open(&root, &s.id)
                    .ok()
                    .and_then(|d| std::fs::read(d.monitor_config()).ok())
                    .and_then(|b| serde_json::from_slice::<MonitorConfig>(&b).ok())
                    .map(|c| c.create.spec);
                let process = spec.as_ref().and_then(|s| s.process().clone());
                docs.push(serde_json::json!({
                    "Id": s.id,
                    "Name": s.name.clone().unwrap_or_default(),
                    "Created": s.created,
                    "Image": s.image.clone().unwrap_or_default(),
                    "Path": s.command.first().cloned().unwrap_or_default(),
                    "Args": s.command.iter().skip(1).collect::<Vec<_>>(),
                    "State": {
                        "Status": match s.status { Status::Stopped => "exited", other => other.as_str() },
                        "Running": matches!(s.status, Status::Running | Status::Paused),
                        "Paused": s.status == Status::Paused,
                        "Pid": if s.status == Status::Stopped { 0 } else { s.pid.unwrap_or(0) },
                        "ExitCode": s.exit.map(|e| e.shell_code()).unwrap_or(0),
                    },
                    "Config": {
                        "Hostname": spec.as_ref().and_then(|s| s.hostname().clone()).unwrap_or_default(),
                        "Env": process.as_ref().and_then(|p| p.env().clone()).unwrap_or_default(),
                        "Cmd": s.command,
                        "WorkingDir": process.as_ref().map(|p| p.cwd().display().to_string()).unwrap_or_default(),
                        "User": process.as_ref().map(|p| format!("{}:{}", p.user().uid(), p.user().gid())).unwrap_or_default(),
                        "Tty": process.as_ref().and_then(|p| p.terminal()).unwrap_or(false),
                    },
                    "HostConfig": { "Runtime": s.backend, "AutoRemove": false },
                }));
            }
            Err(e) => {
                eprintln!("husk: {e:#}");
                failed = true;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&docs)?);
    Ok(if failed { 1 } else { 0 })
}

/// `husk run` flags that only make sense in the foreground are refused
/// with `-d`.
pub fn check_detached(args: &RunArgs) -> anyhow::Result<()> {
    if args.interactive {
        bail!("-i with -d is not supported yet (no attach): drop -i");
    }
    Ok(())
}
