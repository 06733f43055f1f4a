//! `containerd-shim-husk-v2`: containerd's runtime v2 shim for husk
//! (`ctr run --runtime io.containerd.husk.v2 ...`). Each task runs in its
//! own KVM microVM through husk's container lifecycle; see README.md.

mod options;
mod rootfs;
mod stdio;
mod task;

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, StartOpts};

/// The runtime name containerd knows the shim by.
const RUNTIME_ID: &str = "io.containerd.husk.v2";

/// The CRI annotations that group a pod's containers into one shim.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

struct HuskShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

/// The shim a task belongs to: its pod's (a container of a CRI sandbox
/// joins the sandbox's shim), else its own.
fn grouping(id: &str, bundle: &std::path::Path) -> String {
    let spec = bundle.join("config.json");
    let Ok(text) = std::fs::read(&spec) else {
        return id.to_string();
    };
    let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(&text) else {
        return id.to_string();
    };
    let annotations = spec.annotations().clone().unwrap_or_default();
    match (
        annotations.get(CRI_CONTAINER_TYPE).map(String::as_str),
        annotations.get(CRI_SANDBOX_ID),
    ) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.clone(),
        _ => id.to_string(),
    }
}

impl containerd_shim::Shim for HuskShim {
    type T = task::TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HuskShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let group = grouping(&opts.id, &bundle);
        let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        Ok(address)
    }

    /// containerd runs `delete` in the bundle after a shim died (or to
    /// clean up a task it cannot reach): stop the task's monitor and VM and
    /// remove every file of it.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let state_root = std::fs::read(bundle.join(task::STATE_ROOT_FILE))
            .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
            .unwrap_or_else(|_| PathBuf::from(options::DEFAULT_STATE_ROOT));
        let root = state_root.join(&self.namespace);
        let pid = husk::container::state(&root, &self.id)
            .ok()
            .and_then(|s| s.pid)
            .unwrap_or(0);
        if let Err(e) = husk::container::delete(&root, &self.id, true) {
            containerd_shim::debug!("cleanup of {}: {e}", self.id);
        }
        let _ = std::fs::remove_dir_all(task::own_dir(&state_root, &self.namespace, &self.id));
        let _ = std::fs::remove_file(bundle.join(task::STATE_ROOT_FILE));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(DeleteResponse {
            pid: pid as u32,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(
                containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                    ..Default::default()
                },
            ),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        task::TaskService::new(&self.namespace, publisher, self.exit.clone())
    }
}

fn main() {
    // The same binary serves as each container's monitor (husk's
    // lifecycle starts monitors as `<current exe> __monitor ...`).
    if let Some(code) = husk::container::monitor::dispatch() {
        std::process::exit(code);
    }
    containerd_shim::run::<HuskShim>(
        RUNTIME_ID,
        Some(Config {
            // Monitors are reaped by their own waiter threads, and commands
            // the shim runs (mkfs.erofs) by std: a reaper reaping every child
            // would steal their exit statuses.
            no_reaper: true,
            no_sub_reaper: true,
            ..Default::default()
        }),
    );
}
