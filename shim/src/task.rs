//! containerd's Task service on husk's container lifecycle
//! ([`husk::container`]): each task is a husk container with its own
//! monitor and microVM; its `pid` is the monitor's, as with `husk-runc`.
//!
//! Tasks and their exec'd processes are kept in memory; what must survive
//! the shim (so that `containerd-shim-husk-v2 delete` can clean up after a
//! crash) is in the lifecycle's state directory.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use anyhow::{bail, Context};
use containerd_shim::api;
use containerd_shim::event::Event;
use containerd_shim::protos::cgroups_v2::metrics as cg2;
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context as TtrpcCallContext;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::convert_to_any;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use husk::container::control::{ControlClient, ControlReply, ControlRequest};
use husk::container::instance::INIT_PROCESS;
use husk::container::monitor::{pod, InitStdio, MonitorConfig};
use husk::container::state::{now_rfc3339, Op, State, StateDir, Status};
use husk::container::{self as lifecycle};
use husk::sandbox::launch::vm_memory_mib;
use husk::sandbox::{assets, initramfs, layers, select};
use husk_protocol::ProcessId;

use crate::options::{Settings, ShimOptions};
use crate::rootfs::{self, RootfsMount};
use crate::stdio::{self, ConsoleSocket, StdinHold, StdioPaths};

/// The file in a task's bundle that names its state root, for `delete`.
pub const STATE_ROOT_FILE: &str = "husk-state-root";

/// When a process ended, once it has.
#[derive(Default)]
struct Exit {
    ended: Mutex<Option<(u32, SystemTime)>>,
    changed: Condvar,
}

impl Exit {
    fn set(&self, code: u32) {
        let mut ended = self.ended.lock().unwrap();
        if ended.is_none() {
            *ended = Some((code, SystemTime::now()));
        }
        self.changed.notify_all();
    }

    fn get(&self) -> Option<(u32, SystemTime)> {
        *self.ended.lock().unwrap()
    }

    fn wait(&self) -> (u32, SystemTime) {
        let mut ended = self.ended.lock().unwrap();
        loop {
            if let Some(e) = *ended {
                return e;
            }
            ended = self.changed.wait(ended).unwrap();
        }
    }
}

fn timestamp(at: SystemTime) -> Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// A terminal master we keep for resizes, and the copier that drains it.
#[derive(Default)]
struct Terminal {
    master: Option<OwnedFd>,
    copier: Option<JoinHandle<()>>,
}

impl Terminal {
    /// Waits until the terminal's output reached containerd.
    fn drain(&mut self) {
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExecPhase {
    Created,
    Running,
    Stopped,
}

struct ExecEntry {
    spec: oci_spec::runtime::Process,
    stdio: StdioPaths,
    phase: Mutex<ExecPhase>,
    /// husk's id of the process in the VM, and its guest pid.
    process: Mutex<Option<(ProcessId, u32)>>,
    stdin_hold: Mutex<StdinHold>,
    terminal: Mutex<Terminal>,
    exit: Exit,
}

struct TaskEntry {
    id: String,
    bundle: PathBuf,
    /// The lifecycle's state root (this namespace's).
    root: PathBuf,
    /// Per-task files of the shim: console sockets, an upper-layer disk.
    own_dir: PathBuf,
    pid: u32,
    stdio: StdioPaths,
    stdin_hold: StdinHold,
    terminal: Mutex<Terminal>,
    exit: Exit,
    execs: Mutex<HashMap<String, Arc<ExecEntry>>>,
    exec_seq: Mutex<u32>,
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    tasks: Mutex<HashMap<String, Arc<TaskEntry>>>,
    exit: Arc<ExitSignal>,
}

#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

fn ttrpc_err(
    code: containerd_shim::protos::ttrpc::Code,
    msg: impl Into<String>,
) -> containerd_shim::protos::ttrpc::Error {
    containerd_shim::protos::ttrpc::Error::RpcStatus(containerd_shim::protos::ttrpc::get_status(
        code,
        msg.into(),
    ))
}

fn not_found(what: impl std::fmt::Display) -> containerd_shim::protos::ttrpc::Error {
    ttrpc_err(
        containerd_shim::protos::ttrpc::Code::NOT_FOUND,
        format!("{what}: not found"),
    )
}

fn failed(e: anyhow::Error) -> containerd_shim::protos::ttrpc::Error {
    containerd_shim::warn!("{e:#}");
    ttrpc_err(
        containerd_shim::protos::ttrpc::Code::UNKNOWN,
        format!("{e:#}"),
    )
}

fn precondition(msg: impl Into<String>) -> containerd_shim::protos::ttrpc::Error {
    ttrpc_err(
        containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION,
        msg,
    )
}

impl TaskService {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                publisher,
                tasks: Mutex::new(HashMap::new()),
                exit,
            }),
        }
    }

    fn publish(&self, topic: &str, event: Box<dyn Event>) {
        if let Err(e) = self.inner.publisher.publish(
            TtrpcCallContext::default(),
            topic,
            &self.inner.namespace,
            event,
        ) {
            containerd_shim::warn!("publishing {topic}: {e}");
        }
    }

    fn task(&self, id: &str) -> TtrpcResult<Arc<TaskEntry>> {
        self.inner
            .tasks
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("task {id}")))
    }

    fn exec_of(task: &TaskEntry, exec_id: &str) -> TtrpcResult<Arc<ExecEntry>> {
        task.execs
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| not_found(format!("exec {exec_id} of task {}", task.id)))
    }

    fn create_task(&self, req: &api::CreateTaskRequest) -> anyhow::Result<Arc<TaskEntry>> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            bail!("checkpoint/restore is not supported by husk");
        }
        let options = ShimOptions::from_any(req.options.as_ref())?;
        let settings = options.settings(|k| std::env::var(k).ok())?;
        let root = settings.namespace_root(&self.inner.namespace);
        let bundle_dir = PathBuf::from(&req.bundle);
        let bundle = husk::cli::oci::bundle::load(&bundle_dir)?;
        fs::write(
            bundle.dir.join(STATE_ROOT_FILE),
            settings.state_root.as_os_str().as_encoded_bytes(),
        )
        .context("writing the bundle's state-root note")?;
        let own_dir = own_dir(&settings.state_root, &self.inner.namespace, &req.id);
        let _ = fs::remove_dir_all(&own_dir);
        fs::create_dir_all(&own_dir).with_context(|| format!("creating {}", own_dir.display()))?;
        let result = self.create_in(req, &settings, &root, &bundle, &own_dir);
        if result.is_err() {
            let _ = fs::remove_dir_all(&own_dir);
        }
        result
    }

    fn create_in(
        &self,
        req: &api::CreateTaskRequest,
        settings: &Settings,
        root: &Path,
        bundle: &husk::cli::oci::bundle::Bundle,
        own_dir: &Path,
    ) -> anyhow::Result<Arc<TaskEntry>> {
        let mounts: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let cache = settings.snapshot_cache();
        rootfs::sweep(&cache);
        let plan = rootfs::plan(&mounts, &bundle.rootfs)?;
        let layer_list = rootfs::layers(&plan, &cache, own_dir)?;
        let (disk, layer_disks) = layers::pack(&format!("task {}", req.id), &layer_list)?;

        let kernel = assets::kernel(settings.kernel.as_deref())?;
        let agent = assets::agent()?;
        let selected = select::select(settings.backend, husk_vmm::probe::probe_host)?;
        let initramfs = initramfs::cached(&settings.store, &agent)?;
        let process = bundle.spec.process().clone().unwrap_or_default();
        let terminal = req.terminal || process.terminal().unwrap_or(false);
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal,
        };
        let memory_limit = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
            .map(|l| l as u64);
        let memory_mib = match (memory_limit, settings.memory_mib) {
            (Some(limit), _) => vm_memory_mib(Some(limit)),
            (None, Some(mib)) => mib,
            (None, None) => vm_memory_mib(None),
        };

        let console = if terminal {
            Some(ConsoleSocket::listen(&own_dir.join("console.sock"))?)
        } else {
            None
        };
        let pipes = if terminal {
            None
        } else {
            Some(stdio::open_pipes(&paths)?)
        };
        let state = State {
            id: req.id.clone(),
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
            owner: "containerd".into(),
            ended_by: None,
        };
        let pod = pod::pod_role(root, &bundle.spec);
        // The pod's network namespace (CNI): the VM joins it with tc, as
        // Kata's tcfilter model; the monitor releases it when it ends. A
        // member of a pod's VM is in its sandbox's network already.
        let network = pod::spec_network(&bundle.spec, &req.id, pod.as_ref())?;
        let mut network_guard = husk::network::ReleaseGuard(network.release.clone());
        let config = MonitorConfig {
            backend: selected.plan.as_str().to_string(),
            kernel,
            initramfs,
            disks: vec![disk],
            vcpus: settings.vcpus,
            memory_mib,
            cpus: husk::sandbox::vm_cgroup::cpus_of_spec(&bundle.spec),
            create: husk_protocol::CreateContainer {
                container_id: req.id.clone(),
                init_process: INIT_PROCESS,
                spec: network.spec.clone(),
                layers: layer_disks,
                scratch: None,
                stdin: terminal || pipes.as_ref().is_some_and(|p| p.has_stdin),
                network: network.agent.clone(),
                sandbox: None,
            },
            stdio: match &console {
                Some(c) => InitStdio::ConsoleSocket(c.path.clone()),
                None => InitStdio::Inherited,
            },
            state,
            auto_remove: false,
            nics: network.nics.clone(),
            network: network.release.clone(),
            pod,
            lease: None,
            lease_fds: Vec::new(),
        };
        let fds: [RawFd; 3] = match &pipes {
            Some(p) => [
                p.fds[0].as_raw_fd(),
                p.fds[1].as_raw_fd(),
                p.fds[2].as_raw_fd(),
            ],
            // Not used with a console socket; any open descriptor will do.
            None => [0, 1, 2],
        };
        let created = lifecycle::create_with_stdio(root, &config, log_level(), fds);
        let (mut child, state) = match created {
            Ok(c) => c,
            Err(e) => {
                if let Some(c) = console {
                    c.abandon();
                }
                return Err(e.into());
            }
        };
        network_guard.0 = None;
        // The monitor is our child: reap it whenever it ends.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let mut term = Terminal::default();
        let stdin_hold = match (console, pipes) {
            (Some(console), _) => {
                let master = console.master()?;
                let (copier, hold) = stdio::copy_terminal(master.try_clone()?, &paths)?;
                term.master = Some(master);
                term.copier = Some(copier);
                hold
            }
            // Our copies of the FIFO ends close here; the monitor has its own.
            (None, Some(pipes)) => pipes.stdin_hold,
            (None, None) => StdinHold::default(),
        };
        let pid = state.pid.unwrap_or(0) as u32;
        Ok(Arc::new(TaskEntry {
            id: req.id.clone(),
            bundle: bundle.dir.clone(),
            root: root.to_path_buf(),
            own_dir: own_dir.to_path_buf(),
            pid,
            stdio: paths,
            stdin_hold,
            terminal: Mutex::new(term),
            exit: Exit::default(),
            execs: Mutex::new(HashMap::new()),
            exec_seq: Mutex::new(0),
        }))
    }

    /// Waits for the init's exit in the background, then tells containerd.
    fn watch_init(&self, task: Arc<TaskEntry>) {
        let service = self.clone();
        std::thread::spawn(move || {
            let code = match lifecycle::wait(&task.root, &task.id) {
                Ok(status) => status.shell_code() as u32,
                Err(e) => {
                    containerd_shim::warn!("waiting for task {}: {e}", task.id);
                    255
                }
            };
            // A VM that ended under the task: why, in containerd's log.
            if let Ok(State {
                ended_by: Some(reason),
                ..
            }) = lifecycle::state(&task.root, &task.id)
            {
                containerd_shim::warn!("task {}: {reason}", task.id);
            }
            // Output first: a terminal's copier ends when the pty closes.
            task.terminal.lock().unwrap().drain();
            // Execs die with the VM.
            for exec in task.execs.lock().unwrap().values() {
                if *exec.phase.lock().unwrap() == ExecPhase::Running {
                    exec.exit.set(137);
                }
            }
            task.exit.set(code);
            let (status, at) = task.exit.wait();
            service.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(ev::TaskExit {
                    container_id: task.id.clone(),
                    id: task.id.clone(),
                    pid: task.pid,
                    exit_status: status,
                    exited_at: MessageField::some(timestamp(at)),
                    ..Default::default()
                }),
            );
        });
    }

    /// Relays the container's OOM kills to containerd as TaskOOM events.
    fn watch_oom(&self, task: &TaskEntry) -> anyhow::Result<()> {
        let dir = StateDir::open(&task.root, &task.id)?;
        let mut client = ControlClient::send(&dir.socket(), &ControlRequest::Events, &[])?;
        let service = self.clone();
        let id = task.id.clone();
        std::thread::spawn(move || {
            // Ends when the monitor closes the connection (the task ended).
            while let Ok(reply) = client.reply() {
                if let ControlReply::Oom { kills } = reply {
                    containerd_shim::info!("task {id}: OOM kill ({kills} so far)");
                    service.publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(ev::TaskOOM {
                            container_id: id.clone(),
                            ..Default::default()
                        }),
                    );
                }
            }
        });
        Ok(())
    }

    fn start_exec(&self, task: &Arc<TaskEntry>, exec_id: &str) -> anyhow::Result<u32> {
        let exec = Self::exec_of(task, exec_id).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        {
            let phase = exec.phase.lock().unwrap();
            if *phase != ExecPhase::Created {
                bail!("exec {exec_id} was already started");
            }
        }
        let seq = {
            let mut seq = task.exec_seq.lock().unwrap();
            *seq += 1;
            *seq
        };
        let console = if exec.stdio.terminal {
            Some(ConsoleSocket::listen(
                &task.own_dir.join(format!("exec-{seq}.sock")),
            )?)
        } else {
            None
        };
        let pipes = if exec.stdio.terminal {
            None
        } else {
            Some(stdio::open_pipes(&exec.stdio)?)
        };
        let request = ControlRequest::Exec {
            process: Box::new(exec.spec.clone()),
            stdin: exec.stdio.terminal || pipes.as_ref().is_some_and(|p| p.has_stdin),
            console_socket: console.as_ref().map(|c| c.path.clone()),
            detach: false,
        };
        let fds: Vec<RawFd> = pipes
            .as_ref()
            .map(|p| p.fds.iter().map(|f| f.as_raw_fd()).collect())
            .unwrap_or_default();
        let sent = lifecycle::request(&task.root, &task.id, Op::Exec, &request, &fds)
            .map_err(anyhow::Error::from)
            .and_then(|mut client| match client.reply()? {
                ControlReply::Started { process, pid } => Ok((client, process, pid)),
                other => bail!("unexpected reply to exec: {other:?}"),
            });
        let (client, process, guest_pid) = match sent {
            Ok(s) => s,
            Err(e) => {
                if let Some(c) = console {
                    c.abandon();
                }
                return Err(e);
            }
        };
        let guest_pid = guest_pid.max(1) as u32;
        *exec.process.lock().unwrap() = Some((process, guest_pid));
        if let Some(console) = console {
            let master = console.master()?;
            let (copier, hold) = stdio::copy_terminal(master.try_clone()?, &exec.stdio)?;
            let mut term = exec.terminal.lock().unwrap();
            term.master = Some(master);
            term.copier = Some(copier);
            *exec.stdin_hold.lock().unwrap() = hold;
        } else if let Some(pipes) = pipes {
            *exec.stdin_hold.lock().unwrap() = pipes.stdin_hold;
        }
        *exec.phase.lock().unwrap() = ExecPhase::Running;
        self.watch_exec(task.clone(), exec_id.to_string(), exec, client);
        Ok(guest_pid)
    }

    fn watch_exec(
        &self,
        task: Arc<TaskEntry>,
        exec_id: String,
        exec: Arc<ExecEntry>,
        mut client: ControlClient,
    ) {
        let service = self.clone();
        std::thread::spawn(move || {
            let code = loop {
                match client.reply() {
                    Ok(ControlReply::Exited { status }) => break status.shell_code() as u32,
                    Ok(_) => continue,
                    // The monitor (and the VM) ended: the process with it.
                    Err(_) => break 137,
                }
            };
            exec.terminal.lock().unwrap().drain();
            *exec.phase.lock().unwrap() = ExecPhase::Stopped;
            exec.exit.set(code);
            let (status, at) = exec.exit.wait();
            let pid = exec.process.lock().unwrap().map(|p| p.1).unwrap_or(0);
            service.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(ev::TaskExit {
                    container_id: task.id.clone(),
                    id: exec_id,
                    pid,
                    exit_status: status,
                    exited_at: MessageField::some(timestamp(at)),
                    ..Default::default()
                }),
            );
        });
    }

    fn delete_task(&self, task: &Arc<TaskEntry>) -> anyhow::Result<api::DeleteResponse> {
        // The init's exit may be known here before the monitor has written
        // its final state (it still powers the VM off).
        if task.exit.get().is_none() {
            let state = lifecycle::state(&task.root, &task.id)?;
            match state.status {
                Status::Stopped | Status::Created | Status::Creating => {}
                other => bail!(
                    "task {} is {}: kill it before deleting",
                    task.id,
                    other.as_str()
                ),
            }
        }
        lifecycle::delete(&task.root, &task.id, true)?;
        if task.exit.get().is_none() {
            // Deleted before it ran: as runc reports a never-started init.
            task.exit.set(137);
        }
        let (status, at) = task.exit.wait();
        task.terminal.lock().unwrap().drain();
        task.stdin_hold.close();
        let _ = fs::remove_dir_all(&task.own_dir);
        let _ = fs::remove_file(task.bundle.join(STATE_ROOT_FILE));
        self.inner.tasks.lock().unwrap().remove(&task.id);
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(ev::TaskDelete {
                container_id: task.id.clone(),
                id: task.id.clone(),
                pid: task.pid,
                exit_status: status,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: task.pid,
            exit_status: status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    fn signal_exec(task: &TaskEntry, exec: &ExecEntry, signal: u32) -> anyhow::Result<()> {
        let Some((process, _)) = *exec.process.lock().unwrap() else {
            bail!("exec was not started");
        };
        if *exec.phase.lock().unwrap() == ExecPhase::Stopped {
            bail!("process already finished");
        }
        let dir = StateDir::open(&task.root, &task.id)?;
        ControlClient::send(
            &dir.socket(),
            &ControlRequest::Signal {
                process: Some(process),
                signal: signal as i32,
                all: false,
            },
            &[],
        )?
        .reply()?;
        Ok(())
    }

    fn resize(
        task: &TaskEntry,
        process: ProcessId,
        term: &Terminal,
        rows: u16,
        cols: u16,
    ) -> anyhow::Result<()> {
        if let Some(master) = &term.master {
            stdio::resize(master, rows, cols);
        }
        let dir = StateDir::open(&task.root, &task.id)?;
        ControlClient::send(
            &dir.socket(),
            &ControlRequest::Resize {
                process,
                rows,
                cols,
            },
            &[],
        )?
        .reply()?;
        Ok(())
    }
}

/// The shim's own files for a task (not in the lifecycle's state root,
/// whose entries are all containers).
pub fn own_dir(state_root: &Path, namespace: &str, id: &str) -> PathBuf {
    state_root.join(format!("{namespace}.shim")).join(id)
}

fn log_level() -> &'static str {
    "info"
}

fn status_of(state: &State) -> api::Status {
    match state.status {
        Status::Creating | Status::Created => api::Status::CREATED,
        Status::Running => api::Status::RUNNING,
        Status::Paused => api::Status::PAUSED,
        Status::Stopped => api::Status::STOPPED,
        #[allow(unreachable_patterns)]
        _ => api::Status::UNKNOWN,
    }
}

fn metrics(stats: &husk_protocol::ContainerStats) -> cg2::Metrics {
    let mut m = cg2::Metrics::new();
    let mut pids = cg2::PidsStat::new();
    pids.current = stats.pids_current.unwrap_or(0);
    m.pids = MessageField::some(pids);
    let mut cpu = cg2::CPUStat::new();
    cpu.usage_usec = stats.cpu_usage_usec.unwrap_or(0);
    m.cpu = MessageField::some(cpu);
    let mut memory = cg2::MemoryStat::new();
    memory.usage = stats.memory_current_bytes.unwrap_or(0);
    memory.max_usage = stats.memory_peak_bytes.unwrap_or(0);
    m.memory = MessageField::some(memory);
    m
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.inner.tasks.lock().unwrap().contains_key(&req.id) {
            return Err(ttrpc_err(
                containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS,
                format!("task {} already exists", req.id),
            ));
        }
        let task = self.create_task(&req).map_err(failed)?;
        self.inner
            .tasks
            .lock()
            .unwrap()
            .insert(task.id.clone(), task.clone());
        self.watch_init(task.clone());
        if let Err(e) = self.watch_oom(&task) {
            containerd_shim::warn!("task {}: OOM events will not be reported: {e:#}", task.id);
        }
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(ev::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: task.pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid: task.pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let task = self.task(&req.id)?;
        if req.exec_id.is_empty() {
            lifecycle::start(&task.root, &task.id).map_err(|e| failed(e.into()))?;
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(ev::TaskStart {
                    container_id: task.id.clone(),
                    pid: task.pid,
                    ..Default::default()
                }),
            );
            return Ok(api::StartResponse {
                pid: task.pid,
                ..Default::default()
            });
        }
        let pid = self.start_exec(&task, &req.exec_id).map_err(failed)?;
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(ev::TaskExecStarted {
                container_id: task.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let task = self.task(&req.id)?;
        if req.exec_id.is_empty() {
            return self.delete_task(&task).map_err(failed);
        }
        let exec = Self::exec_of(&task, &req.exec_id)?;
        if *exec.phase.lock().unwrap() == ExecPhase::Running {
            return Err(precondition(format!(
                "exec {} is running: kill it before deleting",
                req.exec_id
            )));
        }
        task.execs.lock().unwrap().remove(&req.exec_id);
        let (status, at) = exec.exit.get().unwrap_or((0, SystemTime::now()));
        let pid = exec.process.lock().unwrap().map(|p| p.1).unwrap_or(0);
        Ok(api::DeleteResponse {
            pid,
            exit_status: status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let task = self.task(&req.id)?;
        // Host processes: the monitor (the task's pid) and its VM.
        let state = lifecycle::state(&task.root, &task.id).map_err(|e| failed(e.into()))?;
        let mut processes = Vec::new();
        for pid in [state.pid, state.vmm_pid].into_iter().flatten() {
            processes.push(ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            });
        }
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        lifecycle::pause(&task.root, &task.id).map_err(|e| failed(e.into()))?;
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(ev::TaskPaused {
                container_id: task.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        lifecycle::resume(&task.root, &task.id).map_err(|e| failed(e.into()))?;
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(ev::TaskResumed {
                container_id: task.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        if req.exec_id.is_empty() {
            if task.exit.get().is_some() {
                return Err(not_found(format!(
                    "process of task {} (already finished)",
                    req.id
                )));
            }
            lifecycle::kill(&task.root, &task.id, req.signal as i32, req.all)
                .map_err(|e| failed(e.into()))?;
            return Ok(api::Empty::new());
        }
        let exec = Self::exec_of(&task, &req.exec_id)?;
        Self::signal_exec(&task, &exec, req.signal).map_err(failed)?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        if task.exit.get().is_some() {
            return Err(precondition(format!("task {} has stopped", req.id)));
        }
        let spec: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| failed(anyhow::anyhow!("the exec's process spec: {e}")))?;
        let terminal = req.terminal || spec.terminal().unwrap_or(false);
        let entry = Arc::new(ExecEntry {
            spec,
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal,
            },
            phase: Mutex::new(ExecPhase::Created),
            process: Mutex::new(None),
            stdin_hold: Mutex::new(StdinHold::default()),
            terminal: Mutex::new(Terminal::default()),
            exit: Exit::default(),
        });
        {
            let mut execs = task.execs.lock().unwrap();
            if execs.contains_key(&req.exec_id) {
                return Err(ttrpc_err(
                    containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            execs.insert(req.exec_id.clone(), entry);
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(ev::TaskExecAdded {
                container_id: task.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        let rows = req.height.min(u16::MAX as u32) as u16;
        let cols = req.width.min(u16::MAX as u32) as u16;
        if req.exec_id.is_empty() {
            let term = task.terminal.lock().unwrap();
            Self::resize(&task, INIT_PROCESS, &term, rows, cols).map_err(failed)?;
        } else {
            let exec = Self::exec_of(&task, &req.exec_id)?;
            let Some((process, _)) = *exec.process.lock().unwrap() else {
                return Err(precondition("exec not started"));
            };
            let term = exec.terminal.lock().unwrap();
            Self::resize(&task, process, &term, rows, cols).map_err(failed)?;
        }
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        if req.exec_id.is_empty() {
            task.stdin_hold.close();
        } else {
            Self::exec_of(&task, &req.exec_id)?
                .stdin_hold
                .lock()
                .unwrap()
                .close();
        }
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let task = self.task(&req.id)?;
        let (status, at) = if req.exec_id.is_empty() {
            task.exit.wait()
        } else {
            Self::exec_of(&task, &req.exec_id)?.exit.wait()
        };
        Ok(api::WaitResponse {
            exit_status: status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let task = self.task(&req.id)?;
        let stats = lifecycle::stats(&task.root, &task.id).map_err(|e| failed(e.into()))?;
        let any = convert_to_any(Box::new(metrics(&stats))).map_err(|e| failed(e.into()))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let task = self.task(&req.id)?;
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            bundle: task.bundle.display().to_string(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        let (stdio, exit) = if req.exec_id.is_empty() {
            let status = match task.exit.get() {
                Some(_) => api::Status::STOPPED,
                None => lifecycle::state(&task.root, &task.id)
                    .map(|s| status_of(&s))
                    .unwrap_or(api::Status::STOPPED),
            };
            resp.pid = task.pid;
            resp.set_status(status);
            (task.stdio.clone(), task.exit.get())
        } else {
            let exec = Self::exec_of(&task, &req.exec_id)?;
            resp.pid = exec.process.lock().unwrap().map(|p| p.1).unwrap_or(0);
            resp.set_status(match *exec.phase.lock().unwrap() {
                ExecPhase::Created => api::Status::CREATED,
                ExecPhase::Running => api::Status::RUNNING,
                ExecPhase::Stopped => api::Status::STOPPED,
            });
            (exec.stdio.clone(), exec.exit.get())
        };
        resp.stdin = stdio.stdin;
        resp.stdout = stdio.stdout;
        resp.stderr = stdio.stderr;
        resp.terminal = stdio.terminal;
        if let Some((status, at)) = exit {
            resp.exit_status = status;
            resp.exited_at = MessageField::some(timestamp(at));
        }
        Ok(resp)
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        // containerd sends the OCI LinuxResources as JSON in the Any.
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&req.resources.value)
                .map_err(|e| failed(anyhow::anyhow!("the update's resources: {e}")))?;
        lifecycle::update(&task.root, &task.id, resources).map_err(|e| failed(e.into()))?;
        Ok(api::Empty::new())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .inner
            .tasks
            .lock()
            .unwrap()
            .get(&req.id)
            .map(|t| t.pid)
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.inner.tasks.lock().unwrap().is_empty() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
