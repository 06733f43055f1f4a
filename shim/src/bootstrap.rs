//! The shim binary's actions, as containerd's runtime v2 calls them:
//! `start` (launch the shim daemon for a task, or find its pod's, and print
//! its address), `delete` (clean up after a dead shim) and the daemon itself
//! (serve the Task service until shut down).
//!
//! Written on the `containerd-shim` crate's pieces (flags, spawn, logger,
//! publisher, generated ttrpc service) rather than its `run()`: that one
//! speaks only the newest start protocol (a JSON or protobuf reply and the
//! task API v3), which containerd 1.6 and 1.7 (Debian 12 and 13) do not
//! understand. A plain address reply is read by every containerd, and the
//! Task service is registered under both its v2 and v3 names (the messages
//! are the same).

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim_sync::create_task;
use containerd_shim::protos::ttrpc::Server;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::{DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::{options, task};

use husk::container::monitor::pod::{cri_role, CriRole};
#[cfg(test)]
use husk::container::monitor::pod::{CRI_CONTAINER_TYPE, CRI_SANDBOX_ID};

const TASK_V3: &str = "/containerd.task.v3.Task/";
const TASK_V2: &str = "/containerd.task.v2.Task/";

/// Runs the action the command line names; the process exit code.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: {e}");
            return 1;
        }
    };
    if flags.version {
        println!("containerd-shim-husk-v2 {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let result = match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => delete(&flags),
        _ => serve(&flags),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: {e:#}");
            1
        }
    }
}

/// The shim a task belongs to: its pod's (a container of a CRI sandbox
/// joins the sandbox's shim), else its own.
pub fn grouping(id: &str, bundle: &Path) -> String {
    let Ok(text) = std::fs::read(bundle.join("config.json")) else {
        return id.to_string();
    };
    let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(&text) else {
        return id.to_string();
    };
    match cri_role(&spec) {
        CriRole::Member(sandbox) => sandbox,
        CriRole::Sandbox | CriRole::Alone => id.to_string(),
    }
}

/// `start`: run in the bundle; starts the daemon (it finds an already
/// running shim of the same group and leaves it serving) and prints the
/// address containerd dials.
fn start(flags: &Flags) -> anyhow::Result<()> {
    let bundle = std::env::current_dir().context("the bundle directory")?;
    let group = grouping(&flags.id, &bundle);
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
    write_address(&address)?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `delete`: containerd runs it in the bundle after a shim died (or to
/// clean up a task it cannot reach): stop the task's monitor and VM and
/// remove every file of it; print the DeleteResponse.
fn delete(flags: &Flags) -> anyhow::Result<()> {
    let bundle = std::env::current_dir().context("the bundle directory")?;
    let state_root = std::fs::read(bundle.join(task::STATE_ROOT_FILE))
        .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
        .unwrap_or_else(|_| PathBuf::from(options::DEFAULT_STATE_ROOT));
    let root = state_root.join(&flags.namespace);
    let pid = husk::container::state(&root, &flags.id)
        .ok()
        .and_then(|s| s.pid)
        .unwrap_or(0);
    if let Err(e) = husk::container::delete(&root, &flags.id, true) {
        eprintln!("containerd-shim-husk-v2: cleanup of {}: {e}", flags.id);
    }
    let _ = std::fs::remove_dir_all(task::own_dir(&state_root, &flags.namespace, &flags.id));
    let _ = std::fs::remove_file(bundle.join(task::STATE_ROOT_FILE));
    // A killed shim leaves its socket behind; `start` noted its address.
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let path = Path::new(socket_path(address.trim()));
        if path.starts_with(containerd_shim::SOCKET_ROOT) && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let response = DeleteResponse {
        pid: pid as u32,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    response.write_to_writer(&mut out)?;
    out.flush()?;
    Ok(())
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Binds the shim's socket; `None` if a live shim of the same group
/// already serves there (a pod's next container).
fn bind(address: &str) -> anyhow::Result<Option<UnixListener>> {
    let path = Path::new(socket_path(address));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match UnixListener::bind(path) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            // A dead shim's socket.
            std::fs::remove_file(path)?;
            Ok(Some(UnixListener::bind(path)?))
        }
        Err(e) => Err(e).with_context(|| format!("binding {}", path.display())),
    }
}

/// Tells the `start` process that the server is up: it reads our stdout
/// until it closes.
fn signal_started() {
    // SAFETY: dup2 of our own standard descriptors.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}

/// The daemon: serves the Task service until Shutdown.
fn serve(flags: &Flags) -> anyhow::Result<()> {
    if flags.socket.is_empty() {
        anyhow::bail!("no -socket given (containerd starts the daemon through `start`)");
    }
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)?;
    let Some(listener) = bind(&flags.socket)? else {
        signal_started();
        return Ok(());
    };
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set")?;
    let publisher = RemotePublisher::new(&ttrpc_address)?;
    let exit = Arc::new(ExitSignal::default());
    let service = task::TaskService::new(&flags.namespace, publisher, exit.clone());
    let mut methods = create_task(Arc::new(service.clone()));
    for (name, handler) in create_task(Arc::new(service)) {
        methods.insert(name.replace(TASK_V3, TASK_V2), handler);
    }
    let mut server = Server::new()
        .add_listener(listener.into_raw_fd())?
        .register_service(methods);
    server.start()?;
    signal_started();
    containerd_shim::info!("husk shim serving at {}", flags.socket);
    exit.wait();
    server.shutdown();
    let _ = std::fs::remove_file(socket_path(&flags.socket));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_containers_share_its_sandboxs_shim() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |kind: &str| {
            format!(
                r#"{{"ociVersion":"1.0.2","annotations":{{"{CRI_CONTAINER_TYPE}":"{kind}","{CRI_SANDBOX_ID}":"pod-1"}}}}"#
            )
        };
        std::fs::write(dir.path().join("config.json"), spec("container")).unwrap();
        assert_eq!(grouping("app", dir.path()), "pod-1");
        std::fs::write(dir.path().join("config.json"), spec("sandbox")).unwrap();
        assert_eq!(grouping("pod-1", dir.path()), "pod-1");
        std::fs::write(dir.path().join("config.json"), r#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert_eq!(grouping("alone", dir.path()), "alone");
        let role = |text: &str| cri_role(&serde_json::from_str(text).unwrap());
        assert_eq!(role(&spec("sandbox")), CriRole::Sandbox);
        assert_eq!(role(&spec("container")), CriRole::Member("pod-1".into()));
        assert_eq!(role(r#"{"ociVersion":"1.0.2"}"#), CriRole::Alone);
    }

    #[test]
    fn a_live_socket_is_left_to_its_shim_and_a_dead_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix://{}", dir.path().join("s").display());
        let first = bind(&address).unwrap().expect("free address");
        assert!(
            bind(&address).unwrap().is_none(),
            "a live shim serves there"
        );
        drop(first);
        assert!(
            bind(&address).unwrap().is_some(),
            "a dead socket is replaced"
        );
    }
}
