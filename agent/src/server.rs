//! The request loop: one thread, poll(2) over the host channel, SIGCHLD
//! (signalfd) and every process's stdio; requests answered in order,
//! stdio pumped within the flow-control credit of each stream.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{read, write, Pid};

use husk_agent::protocol::{
    CreateContainer, Event, ExitStatus, Frame, Hello, ProcessId, ProtocolError, RecvWindow, Reply,
    Request, RequestId, Response, SendCredit, Stream, MAX_DATA_CHUNK, PROTOCOL_VERSION,
};

use crate::channel::Channel;
use crate::container::{process::exit_status, stdio::resize, stdio::ParentStdio, Container};
use crate::error::StepError;
use crate::oom::OomWatch;
use crate::pod::Containers;

/// After a process exits, how long its output pipes may stay open and idle
/// before the exit is reported anyway (a background child may hold them).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long a removed pod member's processes may take to die.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the loop ended.
pub enum Outcome {
    /// The host asked for shutdown (already answered).
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("host channel: {0}")]
    Channel(#[from] ProtocolError),
    #[error("{0}")]
    Os(#[from] Errno),
}

struct StdinSink {
    fd: OwnedFd,
    pending: VecDeque<u8>,
    window: RecvWindow,
    /// Close once `pending` is written (host sent Eof / CloseStdin).
    closing: bool,
}

struct OutputSource {
    stream: Stream,
    fd: OwnedFd,
    credit: SendCredit,
}

struct ProcessEntry {
    /// The container it runs in.
    container: String,
    pid: Pid,
    stdin: Option<StdinSink>,
    outputs: Vec<OutputSource>,
    pty_master: Option<OwnedFd>,
    exit: Option<(ExitStatus, Instant)>,
    /// When output last moved: read from its pipe, or waiting in it for
    /// the host's credit (the host's reader is slow, the pipe not idle).
    output_moved: Instant,
    reported: bool,
}

impl ProcessEntry {
    fn new(container: &str, pid: Pid, stdio: ParentStdio) -> Self {
        let mut outputs = vec![OutputSource {
            stream: Stream::Stdout,
            fd: stdio.stdout,
            credit: SendCredit::new(),
        }];
        if let Some(stderr) = stdio.stderr {
            outputs.push(OutputSource {
                stream: Stream::Stderr,
                fd: stderr,
                credit: SendCredit::new(),
            });
        }
        Self {
            container: container.to_owned(),
            pid,
            stdin: stdio.stdin.map(|fd| StdinSink {
                fd,
                pending: VecDeque::new(),
                window: RecvWindow::new(),
                closing: false,
            }),
            outputs,
            pty_master: stdio.pty_master,
            exit: None,
            output_moved: Instant::now(),
            reported: false,
        }
    }
}

/// What a poll slot watches.
#[derive(Clone, Copy)]
enum Watch {
    Channel,
    Children,
    Output(ProcessId, usize),
    Stdin(ProcessId),
    /// The OOM watch at this index of `Server::ooms`.
    Oom(usize),
}

pub struct Server {
    channel: Channel,
    sigchld: SignalFd,
    /// One container, or a pod's sandbox and its members.
    containers: Containers<Container>,
    /// OOM kills in each container's cgroup (by container id), reported as
    /// events.
    ooms: Vec<(String, OomWatch)>,
    processes: HashMap<ProcessId, ProcessEntry>,
    waits: Vec<(RequestId, ProcessId)>,
}

fn error_response(err: StepError) -> Response {
    Response::Error(err.into())
}

impl Server {
    pub fn new(channel: Channel) -> Result<Self, ServerError> {
        // SIGCHLD through a signalfd, so reaping is one more poll slot.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()?;
        let sigchld = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Self {
            channel,
            sigchld,
            containers: Containers::default(),
            ooms: Vec::new(),
            processes: HashMap::new(),
            waits: Vec::new(),
        })
    }

    pub fn hello(&mut self) -> Result<(), ServerError> {
        self.channel.send(&Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))?;
        Ok(())
    }

    /// Tells the host why the agent gives up (best effort).
    pub fn report_fatal(&mut self, message: String) {
        let _ = self.channel.send(&Frame::Event(Event::Fatal { message }));
    }

    pub fn run(&mut self) -> Result<Outcome, ServerError> {
        loop {
            let ready = self.wait_ready()?;
            for (watch, _events) in ready {
                match watch {
                    Watch::Channel => {
                        for frame in self.channel.receive()? {
                            if let Some(outcome) = self.handle_frame(frame)? {
                                return Ok(outcome);
                            }
                        }
                    }
                    Watch::Children => self.reap()?,
                    Watch::Output(process, index) => self.pump_output(process, index)?,
                    Watch::Stdin(process) => self.pump_stdin(process)?,
                    Watch::Oom(index) => self.report_oom(index)?,
                }
            }
            self.report_exits()?;
        }
    }

    fn wait_ready(&self) -> Result<Vec<(Watch, PollFlags)>, ServerError> {
        let mut watches = vec![Watch::Channel, Watch::Children];
        let mut fds = vec![
            PollFd::new(self.channel.fd(), PollFlags::POLLIN),
            PollFd::new(self.sigchld.as_fd(), PollFlags::POLLIN),
        ];
        for (index, (_, oom)) in self.ooms.iter().enumerate() {
            watches.push(Watch::Oom(index));
            fds.push(PollFd::new(oom.fd(), PollFlags::POLLIN));
        }
        let mut draining = false;
        for (id, entry) in &self.processes {
            for (index, output) in entry.outputs.iter().enumerate() {
                // No credit: leave the data in the pipe, the writer blocks.
                if output.credit.available() > 0 {
                    watches.push(Watch::Output(*id, index));
                    fds.push(PollFd::new(output.fd.as_fd(), PollFlags::POLLIN));
                }
            }
            if let Some(stdin) = &entry.stdin {
                if !stdin.pending.is_empty() || stdin.closing {
                    watches.push(Watch::Stdin(*id));
                    fds.push(PollFd::new(stdin.fd.as_fd(), PollFlags::POLLOUT));
                }
            }
            draining |= entry.exit.is_some() && !entry.reported;
        }
        let timeout = if draining {
            PollTimeout::from(100u8)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        }
        Ok(watches
            .into_iter()
            .zip(fds.iter())
            .filter_map(|(watch, fd)| {
                let events = fd.revents().unwrap_or(PollFlags::empty());
                (!events.is_empty()).then_some((watch, events))
            })
            .collect())
    }

    fn respond(&mut self, id: RequestId, response: Response) -> Result<(), ServerError> {
        self.channel.send(&Frame::Response { id, response })?;
        Ok(())
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<Option<Outcome>, ServerError> {
        match frame {
            Frame::Request { id, request } => return self.handle_request(id, request),
            Frame::Data {
                process,
                stream: Stream::Stdin,
                data,
            } => {
                let Some(stdin) = self
                    .processes
                    .get_mut(&process)
                    .and_then(|entry| entry.stdin.as_mut())
                else {
                    tracing::debug!(process, "stdin data for a process without stdin dropped");
                    return Ok(None);
                };
                stdin.window.on_data(process, Stream::Stdin, data.len())?;
                stdin.pending.extend(data);
            }
            Frame::Credit {
                process,
                stream,
                bytes,
            } => {
                if let Some(output) = self
                    .processes
                    .get_mut(&process)
                    .and_then(|entry| entry.outputs.iter_mut().find(|o| o.stream == stream))
                {
                    output.credit.grant(bytes)?;
                }
            }
            Frame::Eof {
                process,
                stream: Stream::Stdin,
            } => self.close_stdin(process),
            other => {
                tracing::warn!(
                    kind = other.kind().name(),
                    "unexpected frame from host ignored"
                );
            }
        }
        Ok(None)
    }

    fn close_stdin(&mut self, process: ProcessId) {
        if let Some(stdin) = self
            .processes
            .get_mut(&process)
            .and_then(|entry| entry.stdin.as_mut())
        {
            stdin.closing = true;
        }
    }

    fn handle_request(
        &mut self,
        id: RequestId,
        request: Request,
    ) -> Result<Option<Outcome>, ServerError> {
        let response = match request {
            Request::CreateContainer(create) => self.create(&create),
            Request::Start { container } => {
                match self
                    .containers
                    .get_mut(container.as_deref(), "start")
                    .and_then(Container::start)
                {
                    Ok(()) => Response::Ok(Reply::Done),
                    Err(err) => error_response(err),
                }
            }
            Request::Exec(exec) => match self.containers.get(exec.container.as_deref(), "exec") {
                _ if self.processes.contains_key(&exec.process) => {
                    error_response(StepError::new("exec", "process id already in use"))
                }
                Ok(container) => match container.exec(&exec) {
                    Ok((pid, stdio)) => {
                        let entry = ProcessEntry::new(&container.id, pid, stdio);
                        self.processes.insert(exec.process, entry);
                        Response::Ok(Reply::Started { pid: pid.as_raw() })
                    }
                    Err(err) => error_response(err),
                },
                Err(err) => error_response(err),
            },
            Request::Signal { process, signal } => match self.processes.get(&process) {
                Some(entry) if entry.exit.is_none() => {
                    match Signal::try_from(signal).and_then(|sig| kill(entry.pid, sig)) {
                        Ok(()) => Response::Ok(Reply::Done),
                        Err(err) => error_response(StepError::new(format!("signal {signal}"), err)),
                    }
                }
                Some(_) => error_response(StepError::new("signal", "the process has exited")),
                None => error_response(StepError::new("signal", format!("no process {process}"))),
            },
            Request::Wait { process } => match self.processes.get(&process) {
                Some(entry) => match (entry.reported, entry.exit) {
                    (true, Some((status, _))) => Response::Ok(Reply::Exited(status)),
                    _ => {
                        self.waits.push((id, process));
                        return Ok(None);
                    }
                },
                None => error_response(StepError::new("wait", format!("no process {process}"))),
            },
            Request::Stats { container } => {
                match self.containers.get(container.as_deref(), "stats") {
                    Ok(container) => Response::Ok(Reply::Stats(container.stats())),
                    Err(err) => error_response(err),
                }
            }
            Request::Update {
                container,
                resources,
            } => match self.containers.get(container.as_deref(), "update") {
                Ok(container) => match container.update(&resources) {
                    Ok(()) => Response::Ok(Reply::Done),
                    Err(err) => error_response(StepError::new("update cgroup limits", err)),
                },
                Err(err) => error_response(err),
            },
            Request::RemoveContainer { container } => match self.remove(&container) {
                Ok(()) => Response::Ok(Reply::Done),
                Err(err) => error_response(err),
            },
            Request::CloseStdin { process } => {
                self.close_stdin(process);
                Response::Ok(Reply::Done)
            }
            Request::ResizeTty {
                process,
                rows,
                cols,
            } => match self
                .processes
                .get(&process)
                .and_then(|entry| entry.pty_master.as_ref())
            {
                Some(master) => match resize(master.as_fd(), rows, cols) {
                    Ok(()) => Response::Ok(Reply::Done),
                    Err(err) => error_response(StepError::new("resize tty", err)),
                },
                None => error_response(StepError::new("resize tty", "the process has no tty")),
            },
            Request::Shutdown => {
                self.respond(id, Response::Ok(Reply::Done))?;
                self.shutdown();
                return Ok(Some(Outcome::Shutdown));
            }
        };
        self.respond(id, response)?;
        Ok(None)
    }

    fn create(&mut self, create: &CreateContainer) -> Response {
        if let Err(err) = self
            .containers
            .check_create(&create.container_id, create.sandbox.as_deref())
        {
            return error_response(err);
        }
        // A member joins its sandbox's namespaces through the sandbox's
        // init process (alive while the sandbox is).
        let sandbox_init = match create.sandbox.as_deref() {
            Some(sandbox) => match self.containers.get(Some(sandbox), "create") {
                Ok(sandbox) => Some(sandbox.init_pid),
                Err(err) => return error_response(err),
            },
            None => None,
        };
        let Entry::Vacant(slot) = self.processes.entry(create.init_process) else {
            return error_response(StepError::new("create", "process id already in use"));
        };
        match Container::create(create, sandbox_init) {
            Ok((container, stdio)) => {
                let pid = container.init_pid;
                tracing::info!(container = %container.id, %pid, "created");
                slot.insert(ProcessEntry::new(&container.id, pid, stdio));
                if let Some(watch) = OomWatch::new(container.cgroup()) {
                    self.ooms.push((container.id.clone(), watch));
                }
                self.containers.insert(container.id.clone(), container);
                Response::Ok(Reply::Created { pid: pid.as_raw() })
            }
            Err(err) => {
                tracing::warn!(%err, "create failed");
                error_response(err)
            }
        }
    }

    fn reap(&mut self) -> Result<(), ServerError> {
        // Drain the signalfd; the waitpid loop below finds every child.
        while let Ok(Some(_)) = self.sigchld.read_signal() {}
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
                Ok(status) => {
                    let (Some(pid), Some(exit)) = (status.pid(), exit_status(status)) else {
                        continue;
                    };
                    if let Some(entry) = self.processes.values_mut().find(|e| e.pid == pid) {
                        tracing::info!(%pid, code = exit.shell_code(), "process exited");
                        entry.exit = Some((exit, Instant::now()));
                    }
                }
                Err(Errno::EINTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    fn pump_output(&mut self, process: ProcessId, index: usize) -> Result<(), ServerError> {
        let Some(entry) = self.processes.get_mut(&process) else {
            return Ok(());
        };
        let Some(output) = entry.outputs.get_mut(index) else {
            return Ok(());
        };
        let mut buf = vec![0u8; output.credit.allowance(MAX_DATA_CHUNK)];
        let frame = match read(&output.fd, &mut buf) {
            Ok(0) | Err(Errno::EIO) => {
                // EIO: the pty's last slave closed (its EOF).
                let stream = output.stream;
                entry.outputs.remove(index);
                Frame::Eof { process, stream }
            }
            Ok(read) => {
                entry.output_moved = Instant::now();
                output.credit.consume(read);
                buf.truncate(read);
                Frame::Data {
                    process,
                    stream: output.stream,
                    data: buf,
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        self.channel.send(&frame)?;
        Ok(())
    }

    fn pump_stdin(&mut self, process: ProcessId) -> Result<(), ServerError> {
        let Some(entry) = self.processes.get_mut(&process) else {
            return Ok(());
        };
        let Some(stdin) = entry.stdin.as_mut() else {
            return Ok(());
        };
        let mut grant = None;
        if !stdin.pending.is_empty() {
            let (front, _) = stdin.pending.as_slices();
            match write(&stdin.fd, front) {
                Ok(written) => {
                    stdin.pending.drain(..written);
                    grant = stdin.window.on_consumed(written);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                // The reader is gone: drop what is left and stop.
                Err(Errno::EPIPE) => {
                    stdin.pending.clear();
                    stdin.closing = true;
                }
                Err(err) => return Err(err.into()),
            }
        }
        if stdin.pending.is_empty() && stdin.closing {
            entry.stdin = None;
        }
        if let Some(bytes) = grant {
            self.channel.send(&Frame::Credit {
                process,
                stream: Stream::Stdin,
                bytes,
            })?;
        }
        Ok(())
    }

    /// Reports exits whose output has drained (or whose grace ran out).
    /// Tells the host of new OOM kills in container `index` of the watches.
    fn report_oom(&mut self, index: usize) -> Result<(), ServerError> {
        let Some((id, watch)) = self.ooms.get_mut(index) else {
            return Ok(());
        };
        if let Some(kills) = watch.check() {
            let container = Some(id.clone());
            self.channel
                .send(&Frame::Event(Event::OomKilled { kills, container }))?;
        }
        Ok(())
    }

    /// Removes a pod member: SIGKILL to its processes (its init's death
    /// ends its PID namespace), reaped within a deadline, then its mounts
    /// and cgroup go. Its exits are reported as usual first.
    fn remove(&mut self, id: &str) -> Result<(), StepError> {
        self.containers.check_member(id)?;
        let pids: Vec<Pid> = self
            .processes
            .values()
            .filter(|entry| entry.container == id && entry.exit.is_none())
            .map(|entry| entry.pid)
            .collect();
        for pid in &pids {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        let cgroup = self
            .containers
            .get(Some(id), "remove container")?
            .cgroup()
            .to_owned();
        // Everything in its cgroup (also processes that left the PID
        // namespace's tree) must be gone before its mounts can go.
        let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        loop {
            self.reap()
                .map_err(|err| StepError::new("remove container", err))?;
            let alive = self
                .processes
                .values()
                .any(|entry| entry.container == id && entry.exit.is_none());
            let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            if !alive && procs.trim().is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StepError::new(
                    "remove container",
                    format!(
                        "its processes did not end within {}s",
                        REMOVE_TIMEOUT.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The host gets every exit before the reply (its output may be cut).
        for entry in self.processes.values_mut() {
            if entry.container == id && entry.exit.is_some() {
                entry.outputs.clear();
            }
        }
        self.report_exits()
            .map_err(|err| StepError::new("remove container", err))?;
        self.processes.retain(|_, entry| entry.container != id);
        self.waits
            .retain(|(_, process)| self.processes.contains_key(process));
        self.ooms.retain(|(owner, _)| owner != id);
        let container = self.containers.remove_member(id)?;
        container.unmount();
        tracing::info!(container = %id, "removed");
        Ok(())
    }

    fn report_exits(&mut self) -> Result<(), ServerError> {
        let now = Instant::now();
        let mut done = Vec::new();
        for (id, entry) in &mut self.processes {
            let Some((status, exited_at)) = entry.exit else {
                continue;
            };
            if entry.reported {
                continue;
            }
            // Output the host has not yet given credit for is still moving:
            // the grace is for pipes a background child holds open idle,
            // not for a slow reader on the host.
            if entry.outputs.iter().any(|o| o.credit.available() == 0) {
                entry.output_moved = now;
            }
            let quiet_since = exited_at.max(entry.output_moved);
            if !entry.outputs.is_empty() && now.duration_since(quiet_since) < OUTPUT_GRACE {
                continue;
            }
            entry.reported = true;
            entry.stdin = None;
            done.push((*id, status, std::mem::take(&mut entry.outputs)));
        }
        if !done.is_empty() {
            for index in 0..self.ooms.len() {
                self.report_oom(index)?;
            }
        }
        for (process, status, leftover) in done {
            // Outputs still open after the grace: end them for the host.
            for output in leftover {
                self.channel.send(&Frame::Eof {
                    process,
                    stream: output.stream,
                })?;
            }
            self.channel
                .send(&Frame::Event(Event::ProcessExited { process, status }))?;
            let (ready, waiting): (Vec<_>, Vec<_>) =
                self.waits.drain(..).partition(|(_, p)| *p == process);
            self.waits = waiting;
            for (request, _) in ready {
                self.respond(request, Response::Ok(Reply::Exited(status)))?;
            }
        }
        Ok(())
    }

    /// Kills every process and unmounts the container.
    pub fn shutdown(&mut self) {
        if std::process::id() == 1 {
            // PID 1 of the VM: kill(-1) reaches every other process.
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        } else {
            // Not PID 1 (a test on a host): kill(-1) would hit the host.
            for entry in self.processes.values().filter(|e| e.exit.is_none()) {
                let _ = kill(entry.pid, Signal::SIGKILL);
            }
        }
        // Reap until no children remain, so mounts are no longer busy.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Err(Errno::ECHILD) => break,
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                _ => continue,
            }
        }
        nix::unistd::sync();
        for container in self.containers.values() {
            container.unmount();
        }
    }
}
