//! A containerd of a test's own, for husk's containerd shim tests and
//! benchmark: Debian's containerd started as a child process with its own
//! root, state, sockets and namespace in a temporary directory (stopped by
//! its pid), the shim on its PATH, and the busybox fixture imported with
//! `ctr image import`; `finish` checks that nothing of it is left.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::fixtures;
use crate::procs::{processes_mentioning, wait_with_timeout};

/// A VM boot under TCG takes seconds; a loaded CI host is slower.
pub const TIMEOUT: Duration = Duration::from_secs(240);
pub const IMAGE: &str = "docker.io/library/busybox:latest";
pub const HUSK: &str = "io.containerd.husk.v2";
pub const RUNC: &str = "io.containerd.runc.v2";

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub struct Env {
    pub kernel: PathBuf,
    pub agent: PathBuf,
    pub backend: String,
    pub shim_dir: PathBuf,
}

/// What the tests need, or the reason to skip (a failure under CI=true).
pub fn env() -> Option<Env> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        crate::skip_unless_ci("the containerd tests need root".to_string());
        return None;
    }
    for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            crate::skip_unless_ci(format!(
                "{tool} is not installed (scripts/setup.sh installs containerd and runc)"
            ));
            return None;
        }
    }
    let Some(kernel) = crate::kernel() else {
        crate::skip_unless_ci("HUSK_KERNEL is not set (source target/husk.env)".to_string());
        return None;
    };
    let Some(agent) = std::env::var_os("HUSK_AGENT")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    else {
        crate::skip_unless_ci("HUSK_AGENT is not set (source target/husk.env)".to_string());
        return None;
    };
    // Tests run from target/debug; `cargo bench` from target/release, where
    // the shim may not have been built: then the debug one.
    let target = crate::target_dir();
    let shim = [target.clone(), target.with_file_name("debug")]
        .into_iter()
        .map(|dir| dir.join("containerd-shim-husk-v2"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| crate::bin("containerd-shim-husk-v2"));
    Some(Env {
        kernel,
        agent,
        backend: std::env::var("HUSK_TEST_BACKEND").unwrap_or_else(|_| "auto".into()),
        shim_dir: shim.parent().unwrap().to_path_buf(),
    })
}

/// A containerd of the test's own.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub namespace: String,
    log: PathBuf,
}

/// Where a containerd of a test keeps its root: /var/tmp (short socket
/// paths, and a real disk for the snapshotter's overlay mounts) unless that
/// is itself an overlay, as in the KVM test bed, where the snapshotter
/// cannot create whiteouts (overlayfs refuses to make 0:0 devices): /tmp.
fn scratch_dir() -> &'static str {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    // SAFETY: statfs writes only into the zeroed struct it is given.
    let on_overlay = unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        libc::statfs(c"/var/tmp".as_ptr(), &mut fs) == 0
            && fs.f_type as i64 == OVERLAYFS_SUPER_MAGIC
    };
    if on_overlay {
        "/tmp"
    } else {
        "/var/tmp"
    }
}

impl Containerd {
    pub fn start(env: &Env) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("husk-ctrd-")
            .tempdir_in(scratch_dir())
            .unwrap();
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "debug"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        std::fs::write(
            d.join("husk.toml"),
            format!(
                "backend = \"{}\"\nkernel = \"{}\"\nstore = \"{}\"\nstate_root = \"{}\"\n",
                env.backend,
                env.kernel.display(),
                d.join("store").display(),
                d.join("husk-state").display()
            ),
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            env.shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = d.join("containerd.log");
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("HUSK_AGENT", &env.agent)
            .env("HUSK_KERNEL", &env.kernel)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start containerd");
        // Wait for containerd to say it is serving, copying its log.
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if line.contains("containerd successfully booted") {
                    let _ = ready_tx.send(());
                }
            }
        });
        // Unique: runc keeps its state under /run/containerd/runc/<namespace>,
        // shared by every containerd on the host.
        let namespace = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "husk-test".into());
        let mut me = Containerd {
            dir,
            child: Some(child),
            namespace,
            log,
        };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let log = std::fs::read_to_string(&me.log).unwrap_or_default();
            me.stop();
            panic!("containerd did not start:\n{log}");
        }
        let archive = me.dir.path().join("busybox.tar");
        let spec = fixtures::busybox(Some("busybox:latest")).unwrap();
        fixtures::write(&[fixtures::build(&spec)], fixtures::Format::Oci, &archive).unwrap();
        me.ok(&["image", "import", archive.to_str().unwrap()]);
        me
    }

    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        let child = self.ctr_command(args).spawn().expect("spawn ctr");
        wait_with_timeout(child, TIMEOUT, args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?}: {}\nstdout: {}\nstderr: {}\ncontainerd log tail:\n{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr),
            self.log_tail()
        );
        text(&o.stdout)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `ctr run` arguments for a runtime (husk gets the test's options).
    pub fn run_args<'a>(&'a self, runtime: &'a str, config: &'a str) -> Vec<&'a str> {
        let mut args = vec!["run", "--runtime", runtime];
        if runtime == HUSK {
            args.extend(["--runtime-config-path", config]);
        }
        args
    }

    pub fn husk_config(&self) -> String {
        self.dir.path().join("husk.toml").display().to_string()
    }

    /// The status column of `ctr task ls` for `id` (None: no such task).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ok(&["task", "ls"]);
        out.lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&id))
            .and_then(|cols| cols.get(2).map(|s| s.to_string()))
    }

    /// Waits until `ctr task ls` shows `want` for `id`. containerd
    /// publishes the state through its API only; polling it is the
    /// event we can observe from outside.
    pub fn wait_status(&self, id: &str, want: &str) {
        self.wait_status_in(id, &[Some(want)]);
    }

    /// Waits until `ctr task ls` shows one of `wanted` for `id` (None: the
    /// task is gone).
    pub fn wait_status_in(&self, id: &str, wanted: &[Option<&str>]) {
        let want = format!("{wanted:?}");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let status = self.task_status(id);
            if wanted.contains(&status.as_deref()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not become {want} (last: {status:?})\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until containerd's log has a line containing `text` (a shim's
    /// log lines reach it through a FIFO, a little after the fact).
    pub fn wait_log_line(&self, text: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains(text)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "containerd's log has no line with {text:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let _ = self.ctr(&["task", "rm", "-f", id]);
        let _ = self.ctr(&["container", "rm", id]);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops containerd and checks that nothing of the test is left.
    pub fn finish(mut self) {
        let leftovers_ctr = self.ctr(&["container", "ls", "-q"]);
        let containers = text(&leftovers_ctr.stdout);
        self.stop();
        let dir = self.dir.path().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut left = processes_mentioning(&dir);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            left = processes_mentioning(&dir);
        }
        for (pid, _) in &left {
            // SAFETY: kill on a pid we found; cleanup after a failure.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        assert!(left.is_empty(), "processes left behind: {left:?}");
        assert!(
            containers.trim().is_empty(),
            "containers left in containerd: {containers}"
        );
        let husk_state = dir.join("husk-state");
        let states: Vec<_> = walk(&husk_state);
        assert!(states.is_empty(), "husk state left behind: {states:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(dir.to_str().unwrap()) || only_snapshotter_mounts(&mounts, &dir),
            "mounts left behind under {}",
            dir.display()
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        for (pid, _) in processes_mentioning(self.dir.path()) {
            // SAFETY: kill on a pid we found; cleanup after a failure.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path())
            .stderr(Stdio::null())
            .status();
    }
}

fn only_snapshotter_mounts(mounts: &str, dir: &Path) -> bool {
    // containerd itself leaves nothing mounted once its tasks are gone.
    !mounts.lines().any(|l| l.contains(dir.to_str().unwrap()))
}

/// Files (not directories) under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

impl Containerd {
    /// Sends the task's shim an Update with a new memory limit, over the
    /// shim's ttrpc socket as containerd does (`ctr` 1.6 has no `task
    /// update`; containerd 1.6 speaks the task API v2).
    pub fn update_memory(&self, id: &str, limit: i64) -> Result<(), String> {
        use containerd_shim_protos::api::UpdateTaskRequest;
        use containerd_shim_protos::protobuf::well_known_types::any::Any;
        use containerd_shim_protos::protobuf::{Message, MessageField};
        use containerd_shim_protos::ttrpc;

        let address_file = self
            .dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
            .join("address");
        let address = std::fs::read_to_string(&address_file)
            .map_err(|e| format!("{}: {e}", address_file.display()))?;
        let client = ttrpc::Client::connect(address.trim()).map_err(|e| e.to_string())?;
        let resources = serde_json::json!({ "memory": { "limit": limit } });
        let request = UpdateTaskRequest {
            id: id.to_string(),
            resources: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources).unwrap(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let call = ttrpc::Request {
            service: "containerd.task.v2.Task".into(),
            method: "Update".into(),
            payload: request.write_to_bytes().map_err(|e| e.to_string())?,
            timeout_nano: TIMEOUT.as_nanos() as i64,
            ..Default::default()
        };
        let response = client.request(call).map_err(|e| e.to_string())?;
        match response.status.as_ref() {
            Some(status) if status.code.value() != 0 => Err(status.message.clone()),
            _ => Ok(()),
        }
    }
}
