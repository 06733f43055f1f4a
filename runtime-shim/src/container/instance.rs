//! The lifecycle core: one container in one running VM, phase by phase
//! (boot, create, start, exec, signal, stats, shutdown). The one-shot
//! `husk run` drives it in the foreground ([`crate::sandbox::launch`]); a
//! container's monitor drives it for containers that outlive the command
//! ([`super::monitor`]). Which phase may follow which is decided by
//! [`super::state::transition`].
//!
//! Cleanup is by ownership: fields drop in declaration order, so the agent
//! connection goes first, then the VM (its handle kills the process), then
//! the run directory with its socket and logs.

use std::time::Duration;

use husk_protocol::{
    ContainerStats, CreateContainer, ErrorReply, ExecProcess, ProcessId, Reply, Request,
};

use crate::sandbox::agent_client::{AgentClient, AgentError};
use crate::sandbox::backend::{VmBackend, VmConfig, VmProcess};
use crate::sandbox::launch::LaunchError;
use crate::sandbox::rundir::RunDir;
use crate::sandbox::signals::SignalWatch;

/// The container's init process id on the channel.
pub const INIT_PROCESS: ProcessId = 1;

/// QEMU inside the KVM test bed (all of it emulated) was seen to take
/// over 10 s to create its socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Software emulation on a loaded two-core host boots slowly; a real KVM
/// host boots in well under a second.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Generous: under nested emulation (the KVM test bed on a loaded host) a
/// create has been seen to take over a minute.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);
const START_TIMEOUT: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// `start` failed: the command could not be executed (the agent's error),
/// or something else went wrong.
#[derive(Debug)]
pub enum StartError {
    Exec(ErrorReply),
    Other(LaunchError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Exec(e) => write!(f, "cannot run the container's command: {e}"),
            StartError::Other(e) => e.fmt(f),
        }
    }
}

/// A booted VM with its agent connected.
pub struct Instance {
    pub id: String,
    pub agent_version: String,
    pub client: AgentClient,
    pub vm: VmProcess,
    /// From the VM program's start to the agent's Hello: boot time as the
    /// user sees it (the backend benchmark reads it from the log).
    pub boot_time: Duration,
    rundir: RunDir,
}

impl Instance {
    /// Starts the VM of `config` and waits for its agent's Hello.
    pub fn boot(
        id: String,
        backend: &dyn VmBackend,
        config: &VmConfig,
        rundir: RunDir,
        signals: Option<&SignalWatch>,
    ) -> Result<Self, LaunchError> {
        let vm_started = std::time::Instant::now();
        let mut vm = backend.start(config)?;
        tracing::info!(pid = vm.pid(), backend = %vm.kind(), id = %id, memory_mib = config.memory_mib, "VM started");
        let mut client =
            AgentClient::connect(&config.console_socket, &mut vm, signals, CONNECT_TIMEOUT)?;
        let hello = client.handshake(&mut vm, signals, boot_timeout())?;
        Ok(Instance {
            id,
            agent_version: hello.agent_version,
            client,
            vm,
            boot_time: vm_started.elapsed(),
            rundir,
        })
    }

    /// A pod member's instance: `client` reaches the pod's agent through
    /// the sandbox's monitor, `vm` stands for the pod's VM.
    pub fn joined(
        id: String,
        mut client: AgentClient,
        mut vm: VmProcess,
        rundir: RunDir,
        signals: Option<&SignalWatch>,
    ) -> Result<Self, LaunchError> {
        let started = std::time::Instant::now();
        let hello = client.handshake(&mut vm, signals, CONNECT_TIMEOUT)?;
        Ok(Instance {
            id,
            agent_version: hello.agent_version,
            client,
            vm,
            boot_time: started.elapsed(),
            rundir,
        })
    }

    pub fn rundir(&self) -> &RunDir {
        &self.rundir
    }

    /// Creates the container: rootfs, namespaces, init stopped before exec.
    /// Returns the init's guest pid.
    pub fn create(
        &mut self,
        create: CreateContainer,
        signals: Option<&SignalWatch>,
    ) -> Result<i32, LaunchError> {
        match self.client.call(
            &mut self.vm,
            signals,
            Request::CreateContainer(Box::new(create)),
            CREATE_TIMEOUT,
        ) {
            Ok(Reply::Created { pid }) => {
                tracing::debug!(guest_pid = pid, "container created");
                Ok(pid)
            }
            Ok(other) => Err(unexpected("create", other)),
            Err(AgentError::Agent(err)) => Err(LaunchError::Create(err)),
            Err(e) => Err(e.into()),
        }
    }

    /// Lets the init process exec its command.
    pub fn start(&mut self, signals: Option<&SignalWatch>) -> Result<(), StartError> {
        match self.client.call(
            &mut self.vm,
            signals,
            Request::Start { container: None },
            START_TIMEOUT,
        ) {
            Ok(_) => Ok(()),
            Err(AgentError::Agent(error)) => Err(StartError::Exec(error)),
            Err(e) => Err(StartError::Other(e.into())),
        }
    }

    /// Starts another process in the container; returns its guest pid.
    pub fn exec(&mut self, exec: ExecProcess) -> Result<i32, AgentError> {
        match self.client.call(
            &mut self.vm,
            None,
            Request::Exec(Box::new(exec)),
            CALL_TIMEOUT,
        )? {
            Reply::Started { pid } => Ok(pid),
            other => Err(AgentError::UnexpectedReply {
                request: "exec",
                reply: format!("{other:?}"),
            }),
        }
    }

    /// Signals a process and waits for the agent's answer.
    pub fn signal(&mut self, process: ProcessId, signal: i32) -> Result<(), AgentError> {
        self.client.call(
            &mut self.vm,
            None,
            Request::Signal { process, signal },
            CALL_TIMEOUT,
        )?;
        Ok(())
    }

    /// Signals a process without waiting (the guest may be paused).
    pub fn signal_nowait(&mut self, process: ProcessId, signal: i32) -> Result<(), AgentError> {
        self.client
            .send_request(Request::Signal { process, signal })?;
        self.client.flush()
    }

    pub fn stats(&mut self) -> Result<ContainerStats, AgentError> {
        match self.client.call(
            &mut self.vm,
            None,
            Request::Stats { container: None },
            CALL_TIMEOUT,
        )? {
            Reply::Stats(stats) => Ok(stats),
            other => Err(AgentError::UnexpectedReply {
                request: "stats",
                reply: format!("{other:?}"),
            }),
        }
    }

    /// New cgroup limits for the running container.
    pub fn update(
        &mut self,
        resources: oci_spec::runtime::LinuxResources,
    ) -> Result<(), AgentError> {
        self.client.call(
            &mut self.vm,
            None,
            Request::Update {
                container: None,
                resources: Box::new(resources),
            },
            CALL_TIMEOUT,
        )?;
        Ok(())
    }

    /// Freezes or thaws the VM's vCPUs (the whole VM program stops).
    pub fn freeze(&mut self, frozen: bool) -> Result<(), nix::Error> {
        let signal = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.vm.pid() as i32), signal)
    }

    /// Powers the VM off (killing it if it does not go) and removes its run
    /// directory.
    pub fn shutdown(mut self) {
        // A frozen VM cannot power off.
        let _ = self.freeze(false);
        self.client.shutdown(&mut self.vm, SHUTDOWN_TIMEOUT);
    }
}

fn unexpected(request: &'static str, reply: Reply) -> LaunchError {
    AgentError::UnexpectedReply {
        request,
        reply: format!("{reply:?}"),
    }
    .into()
}

/// `HUSK_BOOT_TIMEOUT` (seconds) or the default.
fn boot_timeout() -> Duration {
    std::env::var("HUSK_BOOT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_BOOT_TIMEOUT)
}
