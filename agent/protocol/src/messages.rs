//! Control messages: the JSON payloads of Hello, Request, Response and Event
//! frames.
//!
//! Every enum is externally tagged with snake_case names, e.g.
//! `{"signal":{"process":1,"signal":15}}`. Unknown fields are ignored (so a
//! newer peer may add optional fields); unknown variants are errors.

use serde::{Deserialize, Serialize};

/// Identifies a process in the sandbox for stdio frames, signals and waits.
/// The host picks it (unique within the VM); it is not a Linux pid.
pub type ProcessId = u32;

/// Correlates a response with its request. The host picks it; the agent
/// echoes it.
pub type RequestId = u32;

/// First frame on the channel, sent by the agent once it is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// The agent crate version, for logs.
    pub agent_version: String,
}

/// A host → agent request. Each gets exactly one Response with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Assemble the rootfs from layer disks and create the container's init
    /// process (namespaces, cgroup, mounts, credentials), stopped before
    /// exec until `Start`. Reply: `Created`.
    CreateContainer(Box<CreateContainer>),
    /// Let the init process of `container` (`None`: the VM's first
    /// container) exec its command. Reply: `Done`, or an Error naming the
    /// exec step (e.g. the command does not exist).
    Start {
        #[serde(default)]
        container: Option<String>,
    },
    /// Run another process in a container's namespaces and cgroup.
    /// Reply: `Started`.
    Exec(Box<ExecProcess>),
    /// Send a signal to a process (to the init process: the whole container
    /// dies with it). Reply: `Done`.
    Signal { process: ProcessId, signal: i32 },
    /// Reply `Exited` once the process has exited (at once if it already
    /// has). The agent also sends an `Event::ProcessExited` either way.
    Wait { process: ProcessId },
    /// Reply: `Stats` of the container's cgroup (`None`: the first).
    Stats {
        #[serde(default)]
        container: Option<String>,
    },
    /// Apply new cgroup limits (memory, CPU, pids, ...) to the running
    /// container (`None`: the first), as `runc update` does. Reply: `Done`.
    Update {
        #[serde(default)]
        container: Option<String>,
        resources: Box<oci_spec::runtime::LinuxResources>,
    },
    /// Kill every process of a container that is not the VM's first (a
    /// pod's member), wait until they are gone, unmount its rootfs and
    /// layers and remove its cgroup: its layer disk may then be reused.
    /// Reply: `Done` once nothing of it is left.
    RemoveContainer { container: String },
    /// Close the process's stdin (after any buffered stdin data is
    /// written). Same effect as an Eof frame on its stdin stream.
    /// Reply: `Done`.
    CloseStdin { process: ProcessId },
    /// Set the window size of a process's pty. Reply: `Done`.
    ResizeTty {
        process: ProcessId,
        rows: u16,
        cols: u16,
    },
    /// Kill everything, sync, unmount and power the VM off. Reply `Done`
    /// is sent before the power-off.
    Shutdown,
}

/// Everything the agent needs to build and create the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateContainer {
    pub container_id: String,
    /// The id stdio frames, signals and waits use for the init process.
    pub init_process: ProcessId,
    /// The OCI runtime spec. `root.path` is ignored: the rootfs is the
    /// overlay of `layers` (+ the writable upper). Users are numeric.
    pub spec: oci_spec::runtime::Spec,
    /// Image layers, BOTTOM first (the order of the image manifest).
    pub layers: Vec<LayerDisk>,
    /// Writable upper layer on a disk (ext4); tmpfs when `None`.
    #[serde(default)]
    pub scratch: Option<ScratchDisk>,
    /// Connect the process's stdin to the channel (else /dev/null). With a
    /// terminal the pty is always the stdin.
    #[serde(default)]
    pub stdin: bool,
    /// The container's network; `None` (an older host): only `lo` is
    /// brought up and the image's /etc files stay as they are.
    #[serde(default)]
    pub network: Option<crate::network::NetworkConfig>,
    /// A pod's member: the id of the VM's first container (the pod's
    /// sandbox). The spec's network, IPC and UTS namespaces that carry a
    /// path (CRI puts the sandbox's there) are then the sandbox's, joined
    /// in the guest; the member gets its own mount, PID and cgroup.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// A read-only erofs layer on a virtio-blk disk, found by its serial. The
/// disk may hold the layer alone, or several layers one after the other
/// (`offset` and `length` then say where this one is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDisk {
    /// virtio-blk serial (at most 20 bytes: the virtio limit).
    pub serial: String,
    /// The layer's digest, for error messages.
    pub digest: String,
    /// Where the layer's erofs image starts on the disk, in bytes (a
    /// multiple of 512).
    #[serde(default)]
    pub offset: u64,
    /// The image's length in bytes (a multiple of 512) when the disk holds
    /// more than this layer; `None`: the whole disk is the layer.
    #[serde(default)]
    pub length: Option<u64>,
}

/// A writable ext4 disk for the overlay upper and work dirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScratchDisk {
    pub serial: String,
}

/// A process to start in a running container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecProcess {
    /// The container to run it in (`None`: the VM's first).
    #[serde(default)]
    pub container: Option<String>,
    pub process: ProcessId,
    /// args, env, cwd, user, terminal, capabilities, rlimits, no_new_privs.
    pub spec: oci_spec::runtime::Process,
    #[serde(default)]
    pub stdin: bool,
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(ErrorReply),
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Done,
    /// The container's init process exists (guest pid, for logs).
    Created {
        pid: i32,
    },
    /// An exec'd process runs (guest pid, for logs).
    Started {
        pid: i32,
    },
    Exited(ExitStatus),
    Stats(ContainerStats),
}

/// A failure, naming the step that failed so the user sees where, e.g.
/// step "mount layer vdb (sha256:ab..)", message "Invalid argument".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub step: String,
    pub message: String,
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

/// Unsolicited agent → host notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Sent once per process, after its stdout/stderr reached EOF (or a
    /// short grace period passed), so output precedes the exit.
    ProcessExited {
        process: ProcessId,
        status: ExitStatus,
    },
    /// The container's cgroup counted new OOM kills: `kills` in all so far
    /// (memory.events `oom_kill`). Sent before the exit of a process the
    /// OOM killer ended.
    OomKilled {
        kills: u64,
        /// Whose cgroup (`None`: the VM's first container).
        #[serde(default)]
        container: Option<String>,
    },
    /// The agent hit an error it cannot serve past (e.g. a garbled
    /// channel); it powers the VM off right after sending this.
    Fatal { message: String },
}

/// How a process ended: exactly one of `code` and `signal` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn exited(code: i32) -> Self {
        Self {
            code: Some(code),
            signal: None,
        }
    }

    pub fn signaled(signal: i32) -> Self {
        Self {
            code: None,
            signal: Some(signal),
        }
    }

    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code & 0xff,
            (None, Some(signal)) => 128 + (signal & 0x7f),
            // Malformed (both unset): report a generic failure, not success.
            (None, None) => 255,
        }
    }
}

/// Cgroup v2 figures of the container; `None` where the file is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub memory_current_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub cpu_usage_usec: Option<u64>,
    pub pids_current: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_code_maps_signals_to_128_plus_n() {
        assert_eq!(ExitStatus::exited(0).shell_code(), 0);
        assert_eq!(ExitStatus::exited(42).shell_code(), 42);
        assert_eq!(ExitStatus::signaled(9).shell_code(), 137);
        assert_eq!(ExitStatus::signaled(15).shell_code(), 143);
        let neither = ExitStatus {
            code: None,
            signal: None,
        };
        assert_eq!(neither.shell_code(), 255);
    }

    #[test]
    fn request_json_shape_is_snake_case_tagged() {
        let json = serde_json::to_string(&Request::Signal {
            process: 1,
            signal: 15,
        })
        .unwrap();
        assert_eq!(json, r#"{"signal":{"process":1,"signal":15}}"#);
        assert_eq!(
            serde_json::to_string(&Request::Start { container: None }).unwrap(),
            r#"{"start":{"container":null}}"#
        );
        let remove = Request::RemoveContainer {
            container: "app".into(),
        };
        assert_eq!(
            serde_json::to_string(&remove).unwrap(),
            r#"{"remove_container":{"container":"app"}}"#
        );
    }

    #[test]
    fn container_ids_default_to_the_first_container() {
        let req: Request = serde_json::from_str(r#"{"stats":{}}"#).unwrap();
        assert_eq!(req, Request::Stats { container: None });
        let req: Request = serde_json::from_str(r#"{"start":{"container":"member-1"}}"#).unwrap();
        assert_eq!(
            req,
            Request::Start {
                container: Some("member-1".into())
            }
        );
        let event: Event = serde_json::from_str(r#"{"oom_killed":{"kills":2}}"#).unwrap();
        assert_eq!(
            event,
            Event::OomKilled {
                kills: 2,
                container: None
            }
        );
    }

    #[test]
    fn unknown_fields_are_ignored_but_unknown_variants_rejected() {
        let req: Request =
            serde_json::from_str(r#"{"wait":{"process":3,"future_field":true}}"#).unwrap();
        assert_eq!(req, Request::Wait { process: 3 });
        assert!(serde_json::from_str::<Request>(r#"{"format_disk":{}}"#).is_err());
    }
}
