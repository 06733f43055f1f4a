//! The monitor's life once started: boot and create, report to the
//! starter, then the event loop (agent frames, control requests, stdin,
//! signals) until the container is done.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Instant;

use husk_protocol::{
    Event, ExecProcess, ExitStatus, Frame, ProcessId, ProtocolError, Response, Stream,
};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::console::pty_proc;
use super::output::{Proc, Sink};
use super::pod::{self, pod_socket, PodRelay};
use super::PodRole;
use super::{
    dup_high, InitStdio, MonitorConfig, Ready, INHERITED_FDS, OUTPUT_PATIENCE, REQUEST_TIMEOUT,
};
use crate::container::control::{self, ControlReply, ControlRequest, Received};
use crate::container::instance::{Instance, StartError, INIT_PROCESS};
use crate::container::state::{transition, Op, State, StateDir, Status};
use crate::sandbox::agent_client::AgentClient;
use crate::sandbox::agent_client::{AgentError, TICK};
use crate::sandbox::backend::{DiskImage, VmConfig, VmProcess};
use crate::sandbox::launch::exec_failure_code;
use crate::sandbox::pod::PodSlots;
use crate::sandbox::rundir::RunDir;
use crate::sandbox::select::{self, Plan};
use crate::sandbox::signals::{SignalWatch, FORWARDED};

struct Monitor {
    dir: StateDir,
    state: State,
    inst: Instance,
    procs: HashMap<ProcessId, Proc>,
    exited: HashMap<ProcessId, ExitStatus>,
    waiters: Vec<(ProcessId, UnixStream)>,
    /// Connections that asked for the container's events (OOM kills).
    subscribers: Vec<UnixStream>,
    next_process: ProcessId,
    /// Set when the container is done (init exited, VM gone, deleted).
    finished: bool,
    /// Keeps pty masters of exec'd terminals whose owner has not taken them.
    ptys: Vec<OwnedFd>,
    auto_remove: bool,
    /// A pod's sandbox: the relay to its members.
    pod: Option<PodRelay>,
}

pub(super) fn serve(
    dir: &Path,
    ready: &mut File,
    report: impl Fn(&mut File, Ready),
) -> Result<(), String> {
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
    // The image's layers stay leased until this monitor exits.
    let _lease = super::adopt_lease(&config.lease_fds);
    // From here on every way out releases the container's network.
    let _network = crate::network::ReleaseGuard(config.network.clone());
    if let Some(network) = &config.network {
        network.adopt(std::process::id());
    }
    let plan = Plan::parse(&config.backend)
        .ok_or_else(|| fail(ready, format!("unknown backend {:?}", config.backend)))?;
    let backend = select::backend_for(plan).map_err(|e| fail(ready, e.to_string()))?;

    let _ = fs::remove_file(sd.socket());
    let _ = fs::create_dir_all(sd.sockets_dir());
    let listener = UnixListener::bind(sd.socket())
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|e| fail(ready, format!("binding {}: {e}", sd.socket().display())))?;

    let rundir = RunDir::create(&sd.sockets_dir(), "vm").map_err(|e| fail(ready, e.to_string()))?;
    let mut vm_config = VmConfig {
        kernel: config.kernel.clone(),
        initramfs: config.initramfs.clone(),
        disks: config
            .disks
            .iter()
            .map(|d| d.in_dir(rundir.path()))
            .collect(),
        console_socket: rundir.console_socket(),
        serial_log: rundir.serial_log(),
        vmm_log: rundir.vmm_log(),
        vcpus: config.vcpus.max(1),
        memory_mib: config.memory_mib,
        cmdline_extra: Vec::new(),
        nics: config.nics.clone(),
        pod: None,
        cgroup: Some(id.clone()),
        cpus: config.cpus,
    };
    if let Some(PodRole::Sandbox { slots }) = &config.pod {
        let slots = PodSlots::in_dir(rundir.path(), *slots);
        slots
            .create_empty()
            .map_err(|e| fail(ready, e.to_string()))?;
        vm_config.pod = Some(slots);
    }
    let mut create = config.create.clone();
    let started = Instant::now();
    let mut inst = match &config.pod {
        Some(PodRole::Member {
            sandbox_root,
            sandbox_id,
        }) => join_pod(
            &id,
            sandbox_root,
            sandbox_id,
            &config,
            backend.kind(),
            &mut create,
            rundir,
            &signals,
        ),
        _ => Instance::boot(
            id.clone(),
            backend.as_ref(),
            &vm_config,
            rundir,
            Some(&signals),
        )
        .map_err(|e| e.to_string()),
    }
    .map_err(|e| fail(ready, e))?;
    tracing::info!(elapsed = ?started.elapsed(), vm_to_hello_ms = inst.boot_time.as_millis() as u64, "agent ready");
    // A pod's sandbox takes its members in from here on.
    let relay = match vm_config.pod.clone() {
        Some(slots) => {
            let count = slots.count as usize;
            let relay = crate::sandbox::pod::connect(inst.vm.kind(), slots)
                .map_err(|e| e.to_string())
                .and_then(|switch| {
                    PodRelay::new(
                        &id,
                        &inst.agent_version,
                        pod_socket(&sd.sockets_dir()),
                        switch,
                        count,
                    )
                    .map_err(|e| format!("the pod socket: {e}"))
                })
                .map_err(|e| fail(ready, format!("setting up the pod's VM: {e}")))?;
            Some(relay)
        }
        None => None,
    };

    let mut ptys = Vec::new();
    let init = match &config.stdio {
        InitStdio::Inherited => {
            // SAFETY: our starter put these three descriptors there for us.
            let [i, o, e] = INHERITED_FDS.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            Proc::new(
                config.create.stdin.then_some(i),
                Sink::new(Some(File::from(o))),
                Sink::new(Some(File::from(e))),
            )
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
            Proc::new(None, stdout, stderr)
        }
    };
    inst.create(create, Some(&signals))
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
        subscribers: Vec::new(),
        next_process: INIT_PROCESS + 1,
        finished: false,
        ptys,
        auto_remove: config.auto_remove,
        pod: relay,
    };
    let result = monitor.run(&listener, &signals);
    if let Err(e) = &result {
        tracing::warn!(error = %e, "the container's VM ended");
        monitor.state.ended_by = Some(e.to_string());
    }
    monitor.finish(listener);
    Ok(())
}

/// A pod member's instance: a slot of the sandbox's VM for its layers, a
/// relayed channel to the pod's agent. `create` is made the member's
/// (its layers on the slot, the sandbox to join).
#[allow(clippy::too_many_arguments)]
fn join_pod(
    id: &str,
    sandbox_root: &Path,
    sandbox_id: &str,
    config: &MonitorConfig,
    kind: crate::sandbox::backend::BackendKind,
    create: &mut husk_protocol::CreateContainer,
    rundir: RunDir,
    signals: &SignalWatch,
) -> Result<Instance, String> {
    let sandbox = StateDir::open(sandbox_root, sandbox_id)
        .map_err(|e| format!("the pod's sandbox {sandbox_id}: {e}"))?;
    let sandbox_state = sandbox
        .load()
        .map_err(|e| format!("the pod's sandbox {sandbox_id}: {e}"))?;
    if !matches!(sandbox_state.status, Status::Created | Status::Running) {
        return Err(format!(
            "the pod's sandbox {sandbox_id} is {}",
            sandbox_state.status.as_str()
        ));
    }
    let vmm_pid = sandbox_state
        .vmm_pid
        .ok_or_else(|| format!("the pod's sandbox {sandbox_id} has no VM"))?;
    let parts = match config.disks.first().map(|d| &d.image) {
        Some(DiskImage::Concat { parts, .. }) if config.disks.len() == 1 => parts.clone(),
        // A bundle's rootfs image: one part.
        Some(DiskImage::File(path)) if config.disks.len() == 1 => vec![path.clone()],
        _ => return Err("a pod member's layers must be one disk".into()),
    };
    // On the slot the layers are followed by zeros: each is a range.
    if let [part] = parts.as_slice() {
        let size = std::fs::metadata(part)
            .map_err(|e| format!("{}: {e}", part.display()))?
            .len();
        for layer in &mut create.layers {
            layer.length.get_or_insert(size);
        }
    }
    let (stream, serial) =
        pod::join(&pod_socket(&sandbox.sockets_dir()), id, &parts).map_err(|e| e.to_string())?;
    for layer in &mut create.layers {
        layer.serial = serial.clone();
    }
    create.sandbox = Some(sandbox_id.to_owned());
    create.network = None;
    let client = AgentClient::over(stream).map_err(|e| e.to_string())?;
    let vm = VmProcess::joined(kind, vmm_pid as u32, rundir.serial_log(), rundir.vmm_log());
    tracing::info!(sandbox = sandbox_id, %serial, "joined the pod's VM");
    Instance::joined(id.to_owned(), client, vm, rundir, Some(signals)).map_err(|e| e.to_string())
}

/// Sends the agent the credit a sink freed, if any.
fn grant(
    client: &mut AgentClient,
    process: ProcessId,
    stream: Stream,
    credit: Option<u32>,
) -> Result<(), AgentError> {
    match credit {
        Some(bytes) => client.queue(&Frame::Credit {
            process,
            stream,
            bytes,
        }),
        None => Ok(()),
    }
}

fn dev_null() -> OwnedFd {
    File::open("/dev/null")
        .map(OwnedFd::from)
        .unwrap_or_else(|_| dup_high(0).expect("a descriptor"))
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
                // Output waiting for its reader: passed on below.
                for p in self.procs.values() {
                    for fd in [p.stdout.blocked_on(), p.stderr.blocked_on()]
                        .into_iter()
                        .flatten()
                    {
                        fds.push(PollFd::new(fd, PollFlags::POLLOUT));
                    }
                }
                // A pod's members: served below whatever woke us.
                for (fd, output) in self.pod.iter().flat_map(PodRelay::poll_fds) {
                    let mut events = PollFlags::POLLIN;
                    if output {
                        events |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(fd, events));
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
            self.pass_on_output()?;
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
            if let Some(relay) = self.pod.as_mut() {
                relay.service(&mut self.inst.client)?;
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
            // A pod member's frames go to its monitor.
            let frame = match self.pod.as_mut() {
                Some(relay) => match relay.route(frame) {
                    Some(frame) => frame,
                    None => continue,
                },
                None => frame,
            };
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
                    let credit = sink.take(&data);
                    grant(&mut self.inst.client, process, stream, credit)?;
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
                    match self.procs.get_mut(&process) {
                        Some(p) if !p.output_drained() => p.exited_before_output = Some(status),
                        _ => self.process_exited(process, status),
                    }
                }
                Frame::Event(Event::OomKilled { kills, .. }) => {
                    tracing::warn!(kills, "the container's cgroup had an OOM kill");
                    let reply = ControlReply::Oom { kills };
                    self.subscribers
                        .retain(|stream| control::try_answer(stream, &reply));
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

    /// Passes on output that waited for its reader, grants the credit that
    /// frees, and reports the exits that waited for their output.
    fn pass_on_output(&mut self) -> Result<(), AgentError> {
        let mut exits = Vec::new();
        for (&process, p) in self.procs.iter_mut() {
            for (stream, sink) in [
                (Stream::Stdout, &mut p.stdout),
                (Stream::Stderr, &mut p.stderr),
            ] {
                let credit = sink.pass_on_waiting();
                grant(&mut self.inst.client, process, stream, credit)?;
            }
            if let Some(status) = p.exited_before_output.filter(|_| p.output_drained()) {
                exits.push((process, status));
            }
        }
        for (process, status) in exits {
            self.process_exited(process, status);
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
                        Proc::new(
                            if stdin { i } else { None },
                            Sink::new(o.map(File::from)),
                            Sink::new(e.map(File::from)),
                        )
                    }
                };
                let forward_stdin = proc_.stdin.is_some();
                self.procs.insert(id, proc_);
                let exec = ExecProcess {
                    container: None,
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
            ControlRequest::Events => {
                if let Ok(kept) = stream.try_clone() {
                    self.subscribers.push(kept);
                }
                Ok(None)
            }
            ControlRequest::Update { resources } => {
                check(Op::Update)?;
                self.inst
                    .update(*resources)
                    .map_err(|e| format!("updating the container's limits: {e}"))?;
                Ok(Some(ControlReply::Ok))
            }
            ControlRequest::Pause => {
                let next = check(Op::Pause)?;
                if self.pod.is_some() || self.inst.vm.is_joined() {
                    return Err("pausing a container of a pod that shares one VM is not supported (the VM is the pod's)".into());
                }
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
        // What the agent still sent, and the exits that waited for their
        // output: known from here on.
        let _ = self.handle_frames();
        for (&process, p) in &self.procs {
            if let Some(status) = p.exited_before_output {
                self.exited.insert(process, status);
                if process == INIT_PROCESS && self.state.exit.is_none() {
                    self.state.exit = Some(status);
                }
            }
        }
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
        // Output before exits, as everywhere: a reader that takes nothing
        // for OUTPUT_PATIENCE loses the rest rather than holding the VM.
        for p in self.procs.values_mut() {
            p.stdout.drain(OUTPUT_PATIENCE);
            p.stderr.drain(OUTPUT_PATIENCE);
        }
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
        self.procs.clear();
        self.ptys.clear();
        let Monitor {
            dir,
            state,
            inst,
            auto_remove,
            pod,
            ..
        } = self;
        // The members' channels close with it; their monitors end.
        drop(pod);
        inst.shutdown();
        if auto_remove {
            if let (Some(name), Some(root)) = (&state.name, dir.path().parent()) {
                crate::container::names::release(root, name, &dir.id);
            }
            if let Err(e) = dir.remove() {
                tracing::warn!(error = %e, "removing the container");
            }
        }
        tracing::info!("monitor done");
    }
}
