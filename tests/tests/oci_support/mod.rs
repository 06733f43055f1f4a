//! Shared set-up of the `husk-runc` end-to-end tests: a busybox-static
//! bundle, a state root and a store in temp dirs, `husk-runc` (and Debian's
//! `runc` beside it) with hard timeouts, waiting on a container's pid
//! (pidfd, no sleeps), and the "nothing left behind" checks.
//!
//! A missing prerequisite that set-up provides (root, kernel, agent, QEMU,
//! busybox-static, runc) skips the test with `SKIPPED: reason`, except with
//! `CI=true`, where it fails it.

#![allow(dead_code)] // each test binary uses a different subset

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A VM boot under TCG takes seconds; a loaded CI host is slower.
pub const TIMEOUT: Duration = Duration::from_secs(240);

/// Which runtime a command goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rt {
    Husk,
    Runc,
}

pub struct OciEnv {
    pub dir: tempfile::TempDir,
    pub husk_runc: PathBuf,
    pub kernel: PathBuf,
    pub agent: PathBuf,
    pub backend: String,
    /// Whether Debian's runc is there to compare with.
    pub runc: bool,
}

fn missing(reason: String) -> Result<OciEnv, String> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and a prerequisite is missing: {reason}");
    }
    Err(reason)
}

/// The environment, or why this host cannot run the tests.
pub fn setup() -> Result<OciEnv, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return missing("the OCI runtime tests need root".into());
    }
    let Some(kernel) = husk_e2e::kernel() else {
        return missing(
            "HUSK_KERNEL is not set to a guest kernel (scripts/setup.sh writes target/husk.env)"
                .into(),
        );
    };
    let Some(agent) = std::env::var_os("HUSK_AGENT")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    else {
        return missing(
            "HUSK_AGENT is not set to the static guest agent (scripts/setup.sh builds it)".into(),
        );
    };
    let backend = std::env::var("HUSK_TEST_BACKEND").unwrap_or_else(|_| "qemu".into());
    if backend != "husk"
        && Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_err()
    {
        return missing(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        );
    }
    if Command::new("mkfs.erofs").arg("--help").output().is_err() {
        return missing("mkfs.erofs is not installed (apt-get install erofs-utils)".into());
    }
    if !Path::new("/bin/busybox").is_file() {
        return missing("/bin/busybox is not installed (apt-get install busybox-static)".into());
    }
    let runc = Command::new("runc").arg("--version").output().is_ok();
    if !runc && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and runc is missing (scripts/setup.sh installs it)");
    }
    let env = OciEnv {
        dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        husk_runc: husk_e2e::bin("husk-runc"),
        kernel,
        agent,
        backend,
        runc,
    };
    std::fs::create_dir(env.dir.path().join("store")).map_err(|e| e.to_string())?;
    Ok(env)
}

/// Skips the calling test (with the reason) when the host cannot run VMs.
#[macro_export]
macro_rules! oci_env {
    () => {
        match oci_support::setup() {
            Ok(env) => env,
            Err(reason) => husk_e2e::skip!("{reason}"),
        }
    };
}

impl OciEnv {
    pub fn root(&self, rt: Rt) -> PathBuf {
        self.dir.path().join(match rt {
            Rt::Husk => "husk-root",
            Rt::Runc => "runc-root",
        })
    }

    /// The runtimes to compare: husk, and runc where installed.
    pub fn runtimes(&self) -> Vec<Rt> {
        if self.runc {
            vec![Rt::Husk, Rt::Runc]
        } else {
            eprintln!("runc not installed: husk alone");
            vec![Rt::Husk]
        }
    }

    /// A busybox-static bundle running `args`, made with `husk-runc spec`
    /// and edited like a user would.
    pub fn bundle(
        &self,
        name: &str,
        args: &[&str],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> PathBuf {
        let dir = self.dir.path().join("bundles").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin).expect("bundle dirs");
        for d in ["proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(dir.join("rootfs").join(d)).expect("rootfs dirs");
        }
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
        for applet in [
            "sh", "echo", "cat", "sleep", "true", "false", "id", "hostname", "ls", "env", "kill",
            "wc",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
        let out = Command::new(&self.husk_runc)
            .args(["spec", "--bundle"])
            .arg(&dir)
            .output()
            .expect("husk-runc spec");
        assert!(
            out.status.success(),
            "spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("JSON");
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
        edit(&mut config);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).expect("write config");
        dir
    }

    /// `<runtime> --root R ARGS` with husk's environment, stdio null.
    pub fn command(&self, rt: Rt, args: &[&str]) -> Command {
        self.command_in(rt, &self.root(rt), args)
    }

    /// As [`Self::command`] with another state root.
    pub fn command_in(&self, rt: Rt, root: &Path, args: &[&str]) -> Command {
        let mut cmd = match rt {
            Rt::Husk => {
                let mut c = Command::new(&self.husk_runc);
                c.env("HUSK_KERNEL", &self.kernel)
                    .env("HUSK_AGENT", &self.agent)
                    .env("HUSK_STORE", self.dir.path().join("store"))
                    .env("HUSK_BACKEND", &self.backend);
                c
            }
            Rt::Runc => Command::new("runc"),
        };
        cmd.arg("--root")
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Runs a command whose output is captured (not for `create` / `run
    /// -d`: the container keeps its stdio open).
    pub fn run(&self, rt: Rt, args: &[&str]) -> Output {
        let mut cmd = self.command(rt, args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        wait_with_timeout(cmd.spawn().expect("spawn runtime"), TIMEOUT, args)
    }

    /// Runs a command whose stdout and stderr go to files (for commands
    /// that hand their stdio to a container); returns (status, out, err).
    pub fn run_files(&self, rt: Rt, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        let out_path = self.dir.path().join("out.txt");
        let err_path = self.dir.path().join("err.txt");
        let mut cmd = self.command(rt, args);
        cmd.stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        let output = wait_with_timeout(cmd.spawn().expect("spawn runtime"), TIMEOUT, args);
        (
            output.status,
            std::fs::read_to_string(out_path).unwrap_or_default(),
            std::fs::read_to_string(err_path).unwrap_or_default(),
        )
    }

    /// Requires success.
    pub fn ok(&self, rt: Rt, args: &[&str]) -> String {
        let out = self.run(rt, args);
        assert!(
            out.status.success(),
            "{rt:?} {args:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn create(&self, rt: Rt, id: &str, bundle: &Path, extra: &[&str]) {
        let mut args = vec!["create", "--bundle", bundle.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(id);
        let (status, _, err) = self.run_files(rt, &args);
        assert!(
            status.success(),
            "{rt:?} create {id} failed: {status}\n{err}"
        );
    }

    /// The state JSON of a container.
    pub fn state(&self, rt: Rt, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(rt, &["state", id])).expect("state JSON")
    }

    pub fn status(&self, rt: Rt, id: &str) -> String {
        self.state(rt, id)["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits (bounded) until `state` reports `status`: the container's
    /// status changes are events only the runtime can tell.
    pub fn wait_for_status(&self, rt: Rt, id: &str, status: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.run(rt, &["state", id]);
            let now = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["status"].as_str().map(String::from));
            if now.as_deref() == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{rt:?} {id} not {status} within {TIMEOUT:?} (last: {now:?})"
            );
        }
    }

    /// Waits until the container's pid has exited (runc: the init; husk:
    /// its monitor, which exits with the init).
    pub fn wait_pid_exit(&self, pid: i32) {
        assert!(
            wait_pid_gone(pid, TIMEOUT),
            "pid {pid} still alive after {TIMEOUT:?}"
        );
    }

    /// Nothing of husk's containers is left: no state directory, no
    /// process naming the state root (monitors, VMs).
    pub fn assert_clean(&self) {
        let root = self.root(Rt::Husk);
        let left: Vec<_> = std::fs::read_dir(&root)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in the state root: {left:?}");
        let procs = processes_mentioning(&root);
        assert!(procs.is_empty(), "processes left behind: {procs:?}");
    }
}

impl Drop for OciEnv {
    /// A failed test still takes its containers down.
    fn drop(&mut self) {
        for rt in [Rt::Husk, Rt::Runc] {
            if rt == Rt::Runc && !self.runc {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(self.root(rt)) else {
                continue;
            };
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                let _ = self.command(rt, &["delete", "--force", &id]).status();
            }
        }
    }
}

/// Waits up to `timeout` for `pid` (any process) to end.
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags, returns a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if raw < 0 {
        return true; // ESRCH: already gone
    }
    // SAFETY: a descriptor the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    n > 0
}

pub use husk_e2e::procs::{processes_mentioning, text, wait_with_timeout};
