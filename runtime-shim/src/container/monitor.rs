//! The per-container monitor: the process that owns a container's VM and
//! its agent connection, so that the container lives on after the command
//! that created it returns.
//!
//! Started by [`spawn`] as `<husk binary> __monitor <state dir> <log level>`,
//! detached (own session, stdout and stderr to `monitor.log`). It holds the
//! state directory's monitor lock for its whole life (its liveness), boots
//! the VM and creates the container ([`Instance`]), reports to its starter
//! over a pipe, then serves the control socket ([`super::control`]) and the
//! container's stdio until the init process exits or the container is
//! deleted. Then it writes the final state (`stopped`), powers the VM off
//! and exits.
//!
//! The VM program dies with the monitor (it is spawned with
//! PR_SET_PDEATHSIG), so killing the monitor, even with SIGKILL, leaves no
//! VM; readers then see the container as stopped (see [`super::state`]).
//! Signals sent to the monitor (it is the container's `pid`) are forwarded
//! to the container's init, as they would reach runc's container process.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_protocol::{
    CreateContainer, Event, ExecProcess, ExitStatus, Frame, ProcessId, ProtocolError, RecvWindow,
    Response, SendCredit, Stream,
};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::control::{self, ControlReply, ControlRequest, Received};
use super::instance::{Instance, StartError, INIT_PROCESS};
use super::state::{transition, Op, State, StateDir, Status};
use crate::sandbox::agent_client::{AgentError, TICK};
use crate::sandbox::backend::{DiskConfig, VmConfig};
use crate::sandbox::launch::exec_failure_code;
use crate::sandbox::rundir::RunDir;
use crate::sandbox::select::{self, Plan};
use crate::sandbox::signals::{SignalWatch, FORWARDED};

/// The argument that turns a husk binary into a monitor.
pub const MONITOR_ARG: &str = "__monitor";

/// Descriptor numbers in the monitor: the ready pipe, then the inherited
/// stdin, stdout and stderr of the container's init.
const READY_FD: RawFd = 3;
const INHERITED_FDS: [RawFd; 3] = [4, 5, 6];

/// A client has this long to send its request once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The container's log is cut back to half when it grows past this.
const MAX_CONTAINER_LOG: u64 = 16 << 20;

/// Everything the monitor needs, written by its starter to `monitor.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorConfig {
    /// [`Plan::as_str`] of the backend picked by the starter.
    pub backend: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub disks: Vec<DiskSpec>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub create: CreateContainer,
    pub stdio: InitStdio,
    /// The state to publish once created (status and pids are filled in).
    pub state: State,
    /// Remove the container (state and name) once it has stopped.
    #[serde(default)]
    pub auto_remove: bool,
}

/// A [`DiskConfig`] that can be written down.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: String,
}

impl From<&DiskConfig> for DiskSpec {
    fn from(d: &DiskConfig) -> Self {
        DiskSpec {
            path: d.path.clone(),
            read_only: d.read_only,
            serial: d.serial.clone(),
        }
    }
}

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
enum Ready {
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
    let config_path = dir.monitor_config();
    let bytes = serde_json::to_vec_pretty(config).map_err(|e| MonitorError::Config {
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
        [0, 1, 2]
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
    // dup2) on descriptors that are open in the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
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

/// A close-on-exec copy of `fd` numbered 10 or above (clear of the
/// numbers the monitor's descriptors are moved to).
fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Runs the monitor if the process was started as one (`argv[1]` is
/// [`MONITOR_ARG`]); returns its exit code. Binaries call this first.
pub fn dispatch() -> Option<i32> {
    let args: Vec<String> = std::env::args().collect();
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
    match serve(dir, &mut ready, report) {
        Ok(()) => 0,
        Err(message) => {
            tracing::error!("{message}");
            1
        }
    }
}

/// Output of one process to the host.
struct Sink {
    target: Option<File>,
    window: RecvWindow,
    /// Bytes written to a log target, for its bound.
    logged: Option<(PathBuf, u64)>,
}

impl Sink {
    fn new(target: Option<File>) -> Self {
        Sink {
            target,
            window: RecvWindow::new(),
            logged: None,
        }
    }

    fn write(&mut self, data: &[u8]) {
        let Some(file) = &mut self.target else {
            return;
        };
        if let Err(e) = write_all(file.as_fd(), data) {
            tracing::info!(error = %e, "container output no longer taken; discarding it");
            self.target = None;
            return;
        }
        if let Some((path, written)) = &mut self.logged {
            *written += data.len() as u64;
            if *written > MAX_CONTAINER_LOG {
                *written = trim_log(path, MAX_CONTAINER_LOG / 2);
            }
        }
    }
}

/// Keeps the last `keep` bytes of a log (in place); returns its new size.
fn trim_log(path: &Path, keep: u64) -> u64 {
    let Ok(data) = fs::read(path) else { return 0 };
    let start = data.len().saturating_sub(keep as usize);
    let tail = &data[start..];
    // The file is open in append mode by the sink, so rewriting it in place
    // keeps later writes at its (new) end.
    if fs::write(path, tail).is_err() {
        return data.len() as u64;
    }
    tail.len() as u64
}

/// One process of the container, host side.
struct Proc {
    stdin: Option<OwnedFd>,
    stdin_credit: SendCredit,
    stdout: Sink,
    stderr: Sink,
}

struct Monitor {
    dir: StateDir,
    state: State,
    inst: Instance,
    procs: HashMap<ProcessId, Proc>,
    exited: HashMap<ProcessId, ExitStatus>,
    waiters: Vec<(ProcessId, UnixStream)>,
    next_process: ProcessId,
    /// Set when the container is done (init exited, VM gone, deleted).
    finished: bool,
    /// Keeps pty masters of exec'd terminals whose owner has not taken them.
    ptys: Vec<OwnedFd>,
    auto_remove: bool,
}

fn serve(dir: &Path, ready: &mut File, report: impl Fn(&mut File, Ready)) -> Result<(), String> {
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("bad state directory")?
        .to_string();
    let root = dir.parent().ok_or("bad state directory")?;
    let sd = StateDir::open(root, &id).map_err(|e| e.to_string())?;
    let fail = |ready: &mut File, message: String| {
        report(
            ready,
            Ready::Error {
                message: message.clone(),
            },
        );
        message
    };
    let Some(_lock) = sd.take_monitor_lock().map_err(|e| e.to_string())? else {
        return Err(fail(
            ready,
            "another monitor runs for this container".into(),
        ));
    };
    let signals = SignalWatch::new().map_err(|e| fail(ready, e.to_string()))?;
    let config: MonitorConfig = fs::read(sd.monitor_config())
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| fail(ready, format!("reading the monitor's configuration: {e}")))?;
    let plan = Plan::parse(&config.backend)
        .ok_or_else(|| fail(ready, format!("unknown backend {:?}", config.backend)))?;
    let backend = select::backend_for(plan).map_err(|e| fail(ready, e.to_string()))?;

    let _ = fs::remove_file(sd.socket());
    let listener = UnixListener::bind(sd.socket())
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|e| fail(ready, format!("binding {}: {e}", sd.socket().display())))?;

    let rundir = RunDir::create(sd.path(), "vm").map_err(|e| fail(ready, e.to_string()))?;
    let vm_config = VmConfig {
        kernel: config.kernel.clone(),
        initramfs: config.initramfs.clone(),
        disks: config
            .disks
            .iter()
            .map(|d| DiskConfig {
                path: d.path.clone(),
                read_only: d.read_only,
                serial: d.serial.clone(),
            })
            .collect(),
        console_socket: rundir.console_socket(),
        serial_log: rundir.serial_log(),
        vmm_log: rundir.vmm_log(),
        vcpus: config.vcpus.max(1),
        memory_mib: config.memory_mib,
        cmdline_extra: Vec::new(),
    };
    let started = Instant::now();
    let mut inst = Instance::boot(
        id.clone(),
        backend.as_ref(),
        &vm_config,
        rundir,
        Some(&signals),
    )
    .map_err(|e| fail(ready, e.to_string()))?;
    tracing::info!(elapsed = ?started.elapsed(), "agent ready");

    let mut ptys = Vec::new();
    let init = match &config.stdio {
        InitStdio::Inherited => {
            // SAFETY: our starter put these three descriptors there for us.
            let [i, o, e] = INHERITED_FDS.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            Proc {
                stdin: config.create.stdin.then_some(i),
                stdin_credit: SendCredit::new(),
                stdout: Sink::new(Some(File::from(o))),
                stderr: Sink::new(Some(File::from(e))),
            }
        }
        InitStdio::ConsoleSocket(socket) => {
            let (proc_, master) = pty_proc(socket).map_err(|e| fail(ready, e))?;
            ptys.push(master);
            proc_
        }
        InitStdio::Log => {
            let path = sd.container_log();
            let out = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|f| f.try_clone().map(|g| (f, g)))
                .map_err(|e| fail(ready, format!("{}: {e}", path.display())))?;
            let (out, err) = out;
            let mut stdout = Sink::new(Some(out));
            stdout.logged = Some((path.clone(), 0));
            let mut stderr = Sink::new(Some(err));
            stderr.logged = Some((path.clone(), 0));
            Proc {
                stdin: None,
                stdin_credit: SendCredit::new(),
                stdout,
                stderr,
            }
        }
    };
    inst.create(config.create.clone(), Some(&signals))
        .map_err(|e| fail(ready, e.to_string()))?;
    let mut state = config.state.clone();
    state.status = Status::Created;
    state.pid = Some(std::process::id() as i32);
    state.vmm_pid = Some(inst.vm.pid() as i32);
    state.backend = inst.vm.kind().to_string();
    sd.save(&state).map_err(|e| fail(ready, e.to_string()))?;
    report(
        ready,
        Ready::Ok {
            pid: std::process::id() as i32,
            vmm_pid: inst.vm.pid() as i32,
        },
    );
    // EOF for our starter: it returns now.
    drop(std::mem::replace(ready, File::from(dev_null())));

    let mut monitor = Monitor {
        dir: sd,
        state,
        inst,
        procs: HashMap::from([(INIT_PROCESS, init)]),
        exited: HashMap::new(),
        waiters: Vec::new(),
        next_process: INIT_PROCESS + 1,
        finished: false,
        ptys,
        auto_remove: config.auto_remove,
    };
    let result = monitor.run(&listener, &signals);
    if let Err(e) = &result {
        tracing::warn!(error = %e, "the container's VM ended");
    }
    monitor.finish(listener);
    Ok(())
}

fn dev_null() -> OwnedFd {
    File::open("/dev/null")
        .map(OwnedFd::from)
        .unwrap_or_else(|_| dup_high(0).expect("a descriptor"))
}

/// A host pty pair for a container terminal: the master goes to the
/// console socket, the (raw) slave carries the process's stdio.
fn pty_proc(socket: &Path) -> Result<(Proc, OwnedFd), String> {
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("opening a pty: {e}"))?;
    // The guest's pty does the line discipline; the host pair only carries
    // bytes.
    if let Ok(mut attrs) = nix::sys::termios::tcgetattr(&pty.slave) {
        nix::sys::termios::cfmakeraw(&mut attrs);
        let _ =
            nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &attrs);
    }
    let name = fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/dev/pts".into());
    send_console(socket, pty.master.as_fd(), &name).map_err(|e| {
        format!(
            "sending the terminal to the console socket {}: {e}",
            socket.display()
        )
    })?;
    let slave_in = pty
        .slave
        .try_clone()
        .map_err(|e| format!("duplicating the pty: {e}"))?;
    Ok((
        Proc {
            stdin: Some(slave_in),
            stdin_credit: SendCredit::new(),
            stdout: Sink::new(Some(File::from(pty.slave))),
            stderr: Sink::new(None),
        },
        pty.master,
    ))
}

/// Sends `master` over the Unix socket at `path` with SCM_RIGHTS, its name
/// as the payload (what runc's console-socket receivers expect).
pub fn send_console(path: &Path, master: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let stream = UnixStream::connect(path)?;
    let iov = [io::IoSlice::new(name.as_bytes())];
    let fds = [master.as_raw_fd()];
    nix::sys::socket::sendmsg::<nix::sys::socket::UnixAddr>(
        stream.as_raw_fd(),
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

impl Monitor {
    fn save(&self) {
        if let Err(e) = self.dir.save(&self.state) {
            tracing::warn!(error = %e, "saving the container's state");
        }
    }

    /// The event loop: agent frames, control requests, stdin and signals.
    fn run(&mut self, listener: &UnixListener, signals: &SignalWatch) -> Result<(), AgentError> {
        let mut buf = vec![0u8; husk_protocol::MAX_DATA_CHUNK];
        while !self.finished {
            self.handle_frames()?;
            if self.finished {
                break;
            }
            let mut agent_events = PollFlags::POLLIN;
            if self.inst.client.wants_write() {
                agent_events |= PollFlags::POLLOUT;
            }
            let stdin_ids: Vec<ProcessId> = self
                .procs
                .iter()
                .filter(|(_, p)| p.stdin.is_some() && p.stdin_credit.available() > 0)
                .map(|(id, _)| *id)
                .collect();
            let (agent_ready, listener_ready, signal_ready, stdin_ready) = {
                let mut fds = vec![
                    PollFd::new(self.inst.client.fd(), agent_events),
                    PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(signals.fd(), PollFlags::POLLIN),
                ];
                for id in &stdin_ids {
                    if let Some(fd) = self.procs.get(id).and_then(|p| p.stdin.as_ref()) {
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    }
                }
                match nix::poll::poll(
                    &mut fds,
                    PollTimeout::try_from(TICK).unwrap_or(PollTimeout::ZERO),
                ) {
                    Ok(_) | Err(nix::Error::EINTR) => {}
                    Err(e) => return Err(io::Error::from(e).into()),
                }
                let ready = |f: &PollFd| {
                    f.revents().is_some_and(|r| {
                        r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                    })
                };
                let stdin_ready: Vec<ProcessId> = stdin_ids
                    .iter()
                    .zip(fds.iter().skip(3))
                    .filter(|(_, f)| ready(f))
                    .map(|(id, _)| *id)
                    .collect();
                (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]), stdin_ready)
            };
            let _ = agent_ready;
            for id in stdin_ready {
                self.pump_stdin(id, &mut buf)?;
            }
            if signal_ready {
                while let Some(sig) = signals.next() {
                    self.forward_own_signal(sig);
                }
            }
            if listener_ready {
                while let Ok((stream, _)) = listener.accept() {
                    match control::receive(stream, REQUEST_TIMEOUT) {
                        Ok(received) => self.handle_request(received),
                        Err(e) => tracing::debug!(error = %e, "bad control request"),
                    }
                    if self.finished {
                        break;
                    }
                }
            }
            self.inst.client.flush()?;
            self.inst.client.read_available()?;
            if self.inst.client.has_frames() {
                continue;
            }
            if self.inst.client.is_closed() || !self.inst.vm.is_running() {
                return Err(AgentError::VmEnded {
                    what: "the container to exit",
                    detail: self.inst.vm.describe_end(),
                });
            }
        }
        Ok(())
    }

    fn handle_frames(&mut self) -> Result<(), AgentError> {
        while let Some(frame) = self.inst.client.next_frame() {
            match frame {
                Frame::Data {
                    process,
                    stream,
                    data,
                } => {
                    let Some(proc_) = self.procs.get_mut(&process) else {
                        continue;
                    };
                    let sink = match stream {
                        Stream::Stdout => &mut proc_.stdout,
                        Stream::Stderr => &mut proc_.stderr,
                        Stream::Stdin => {
                            return Err(ProtocolError::Malformed("stdin data from the agent").into())
                        }
                    };
                    sink.window.on_data(process, stream, data.len())?;
                    sink.write(&data);
                    if let Some(bytes) = sink.window.on_consumed(data.len()) {
                        self.inst.client.queue(&Frame::Credit {
                            process,
                            stream,
                            bytes,
                        })?;
                    }
                }
                Frame::Credit {
                    process,
                    stream: Stream::Stdin,
                    bytes,
                } => {
                    if let Some(p) = self.procs.get_mut(&process) {
                        p.stdin_credit.grant(bytes)?;
                    }
                }
                Frame::Event(Event::ProcessExited { process, status }) => {
                    self.process_exited(process, status);
                }
                Frame::Response {
                    id,
                    response: Response::Error(err),
                } => tracing::warn!(request = id, "agent: {err}"),
                other => tracing::trace!(?other, "frame"),
            }
        }
        Ok(())
    }

    fn process_exited(&mut self, process: ProcessId, status: ExitStatus) {
        tracing::info!(process, ?status, "process exited");
        self.procs.remove(&process);
        self.exited.insert(process, status);
        let reply = ControlReply::Exited { status };
        self.waiters.retain(|(p, stream)| {
            if *p == process {
                control::answer(stream, &reply);
                false
            } else {
                true
            }
        });
        if process == INIT_PROCESS {
            self.state.exit = Some(status);
            self.finished = true;
        }
    }

    fn pump_stdin(&mut self, id: ProcessId, buf: &mut [u8]) -> Result<(), AgentError> {
        let Some(p) = self.procs.get_mut(&id) else {
            return Ok(());
        };
        let Some(fd) = &p.stdin else { return Ok(()) };
        let want = p.stdin_credit.allowance(buf.len());
        match nix::unistd::read(fd, &mut buf[..want]) {
            Ok(0) | Err(nix::Error::EIO) => {
                p.stdin = None;
                self.inst.client.queue(&Frame::Eof {
                    process: id,
                    stream: Stream::Stdin,
                })?;
            }
            Ok(n) => {
                p.stdin_credit.consume(n);
                self.inst.client.queue(&Frame::Data {
                    process: id,
                    stream: Stream::Stdin,
                    data: buf[..n].to_vec(),
                })?;
            }
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(e) => {
                tracing::debug!(error = %e, "reading a process's stdin; closing it");
                p.stdin = None;
                self.inst.client.queue(&Frame::Eof {
                    process: id,
                    stream: Stream::Stdin,
                })?;
            }
        }
        Ok(())
    }

    /// A signal sent to the monitor goes to the container's init.
    fn forward_own_signal(&mut self, sig: Signal) {
        if !FORWARDED.contains(&sig) {
            return;
        }
        if transition(self.state.status, Op::Signal).is_err() {
            return;
        }
        tracing::info!(signal = %sig, "forwarding to the container");
        if let Err(e) = self.inst.signal_nowait(INIT_PROCESS, sig as i32) {
            tracing::warn!(error = %e, "forwarding a signal");
        }
    }

    fn handle_request(&mut self, received: Received) {
        let Received {
            request,
            fds,
            stream,
        } = received;
        tracing::debug!(?request, "control request");
        match self.serve_request(request, fds, &stream) {
            Ok(Some(reply)) => control::answer(&stream, &reply),
            Ok(None) => {}
            Err(message) => control::answer(&stream, &ControlReply::Error { message }),
        }
    }

    /// Serves one request; `Ok(None)` when the reply was already sent (or
    /// the stream kept for a later one).
    fn serve_request(
        &mut self,
        request: ControlRequest,
        fds: Vec<OwnedFd>,
        stream: &UnixStream,
    ) -> Result<Option<ControlReply>, String> {
        let status = self.state.status;
        let check = |op| transition(status, op).map_err(|e| e.to_string());
        match request {
            ControlRequest::Start => {
                let next = check(Op::Start)?;
                match self.inst.start(None) {
                    Ok(()) => {
                        self.state.status = next;
                        self.save();
                        Ok(Some(ControlReply::Ok))
                    }
                    Err(StartError::Exec(error)) => {
                        let code = exec_failure_code(&error);
                        self.state.exit = Some(ExitStatus::exited(code));
                        self.finished = true;
                        Err(format!("cannot start the container: {error}"))
                    }
                    Err(StartError::Other(e)) => {
                        self.finished = true;
                        Err(format!("cannot start the container: {e}"))
                    }
                }
            }
            ControlRequest::Exec {
                process,
                stdin,
                console_socket,
                detach,
            } => {
                check(Op::Exec)?;
                let id = self.next_process;
                self.next_process += 1;
                let proc_ = match &console_socket {
                    Some(socket) if process.terminal().unwrap_or(false) => {
                        let (p, master) = pty_proc(socket)?;
                        self.ptys.push(master);
                        p
                    }
                    _ => {
                        let mut it = fds.into_iter();
                        let (i, o, e) = (it.next(), it.next(), it.next());
                        if o.is_none() {
                            return Err("exec needs stdin, stdout and stderr descriptors".into());
                        }
                        Proc {
                            stdin: if stdin { i } else { None },
                            stdin_credit: SendCredit::new(),
                            stdout: Sink::new(o.map(File::from)),
                            stderr: Sink::new(e.map(File::from)),
                        }
                    }
                };
                let forward_stdin = proc_.stdin.is_some();
                self.procs.insert(id, proc_);
                let exec = ExecProcess {
                    process: id,
                    spec: *process,
                    stdin: forward_stdin,
                };
                match self.inst.exec(exec) {
                    Ok(pid) => {
                        control::answer(stream, &ControlReply::Started { process: id, pid });
                        if !detach {
                            if let Some(status) = self.exited.get(&id) {
                                return Ok(Some(ControlReply::Exited { status: *status }));
                            }
                            if let Ok(kept) = stream.try_clone() {
                                self.waiters.push((id, kept));
                            }
                        }
                        Ok(None)
                    }
                    Err(e) => {
                        self.procs.remove(&id);
                        Err(e.to_string())
                    }
                }
            }
            ControlRequest::Signal {
                process,
                signal,
                all: _,
            } => {
                check(Op::Signal)?;
                let target = process.unwrap_or(INIT_PROCESS);
                let result = if status == Status::Paused {
                    self.inst.signal_nowait(target, signal)
                } else {
                    self.inst.signal(target, signal)
                };
                result.map_err(|e| e.to_string())?;
                Ok(Some(ControlReply::Ok))
            }
            ControlRequest::Resize {
                process,
                rows,
                cols,
            } => {
                self.inst
                    .client
                    .send_request(husk_protocol::Request::ResizeTty {
                        process,
                        rows,
                        cols,
                    })
                    .map_err(|e| e.to_string())?;
                Ok(Some(ControlReply::Ok))
            }
            ControlRequest::Wait { process } => {
                let process = process.unwrap_or(INIT_PROCESS);
                if let Some(status) = self.exited.get(&process) {
                    return Ok(Some(ControlReply::Exited { status: *status }));
                }
                if !self.procs.contains_key(&process) {
                    return Err(format!("no process {process} in the container"));
                }
                if let Ok(kept) = stream.try_clone() {
                    self.waiters.push((process, kept));
                }
                Ok(None)
            }
            ControlRequest::Stats => {
                check(Op::Stats)?;
                let stats = self.inst.stats().map_err(|e| e.to_string())?;
                Ok(Some(ControlReply::Stats(stats)))
            }
            ControlRequest::Pause => {
                let next = check(Op::Pause)?;
                self.inst
                    .freeze(true)
                    .map_err(|e| format!("freezing the VM: {e}"))?;
                self.state.status = next;
                self.save();
                Ok(Some(ControlReply::Ok))
            }
            ControlRequest::Resume => {
                let next = check(Op::Resume)?;
                self.inst
                    .freeze(false)
                    .map_err(|e| format!("thawing the VM: {e}"))?;
                self.state.status = next;
                self.save();
                Ok(Some(ControlReply::Ok))
            }
            ControlRequest::Delete { force } => {
                check(if force { Op::ForceDelete } else { Op::Delete })?;
                self.finished = true;
                if self.state.exit.is_none() {
                    self.state.exit = Some(ExitStatus::signaled(libc::SIGKILL));
                }
                Ok(Some(ControlReply::Ok))
            }
        }
    }

    /// The container is done: final state, waiters answered, VM off.
    fn finish(mut self, listener: UnixListener) {
        // The final state first: a client whose connection is refused or
        // reset from here on reads it from state.json.
        let init_status = self
            .state
            .exit
            .unwrap_or(ExitStatus::signaled(libc::SIGKILL));
        self.state.exit = Some(init_status);
        self.state.status = Status::Stopped;
        self.save();
        drop(listener);
        let _ = fs::remove_file(self.dir.socket());
        for (process, stream) in self.waiters.drain(..) {
            let status = if process == INIT_PROCESS {
                init_status
            } else {
                self.exited
                    .get(&process)
                    .copied()
                    .unwrap_or(ExitStatus::signaled(libc::SIGKILL))
            };
            control::answer(&stream, &ControlReply::Exited { status });
        }
        // Whatever output is still queued goes to its readers first.
        let _ = self.handle_frames();
        self.procs.clear();
        self.ptys.clear();
        let Monitor {
            dir,
            state,
            inst,
            auto_remove,
            ..
        } = self;
        inst.shutdown();
        if auto_remove {
            if let (Some(name), Some(root)) = (&state.name, dir.path().parent()) {
                super::names::release(root, name, &dir.id);
            }
            if let Err(e) = dir.remove() {
                tracing::warn!(error = %e, "removing the container");
            }
        }
        tracing::info!("monitor done");
    }
}

/// Writes all of `data` to a blocking or non-blocking fd.
fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = nix::poll::poll(
                    &mut fds,
                    PollTimeout::try_from(TICK).unwrap_or(PollTimeout::ZERO),
                );
            }
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
    Ok(())
}

/// Waits up to `timeout` for process `pid` (not our child) to end; true if
/// it has.
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if raw < 0 {
        return io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
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
            Err(_) => return false,
        }
    }
}
