//! husk's containerd shim (`io.containerd.husk.v2`) end to end, under an
//! unmodified containerd (Debian's), beside containerd's own runc shim
//! (`io.containerd.runc.v2`) as the reference in the same test.
//!
//! Each test starts its own containerd as a child process (its own root,
//! state, sockets and namespace in a temporary directory; stopped by its
//! pid), with the shim on its PATH, and imports the busybox fixture with
//! `ctr image import`. Afterwards nothing of the test may be left: no
//! containerd, shim, monitor or VM process, no husk state.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_e2e::fixtures;
use husk_e2e::procs::{processes_mentioning, wait_with_timeout};

/// A VM boot under TCG takes seconds; a loaded CI host is slower.
const TIMEOUT: Duration = Duration::from_secs(240);
const IMAGE: &str = "docker.io/library/busybox:latest";
const HUSK: &str = "io.containerd.husk.v2";
const RUNC: &str = "io.containerd.runc.v2";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Env {
    kernel: PathBuf,
    agent: PathBuf,
    backend: String,
    shim_dir: PathBuf,
}

/// What the tests need, or the reason to skip (a failure under CI=true).
fn env() -> Option<Env> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        husk_e2e::skip_unless_ci("the containerd tests need root".into());
        return None;
    }
    for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            husk_e2e::skip_unless_ci(format!(
                "{tool} is not installed (scripts/setup.sh installs containerd and runc)"
            ));
            return None;
        }
    }
    let Some(kernel) = husk_e2e::kernel() else {
        husk_e2e::skip_unless_ci("HUSK_KERNEL is not set (source target/husk.env)".into());
        return None;
    };
    let Some(agent) = std::env::var_os("HUSK_AGENT")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    else {
        husk_e2e::skip_unless_ci("HUSK_AGENT is not set (source target/husk.env)".into());
        return None;
    };
    let shim = husk_e2e::bin("containerd-shim-husk-v2");
    Some(Env {
        kernel,
        agent,
        backend: std::env::var("HUSK_TEST_BACKEND").unwrap_or_else(|_| "auto".into()),
        shim_dir: shim.parent().unwrap().to_path_buf(),
    })
}

/// A containerd of the test's own.
struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    namespace: String,
    log: PathBuf,
}

impl Containerd {
    fn start(env: &Env) -> Containerd {
        // Under /var/tmp, not /tmp: short socket paths, and a real disk for
        // the snapshotter's overlay mounts.
        let dir = tempfile::Builder::new()
            .prefix("husk-ctrd-")
            .tempdir_in("/var/tmp")
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
        let mut me = Containerd {
            dir,
            child: Some(child),
            namespace: "husk-test".into(),
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

    fn ctr_command(&self, args: &[&str]) -> Command {
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

    fn ctr(&self, args: &[&str]) -> Output {
        let child = self.ctr_command(args).spawn().expect("spawn ctr");
        wait_with_timeout(child, TIMEOUT, args)
    }

    fn ok(&self, args: &[&str]) -> String {
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

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `ctr run` arguments for a runtime (husk gets the test's options).
    fn run_args<'a>(&'a self, runtime: &'a str, config: &'a str) -> Vec<&'a str> {
        let mut args = vec!["run", "--runtime", runtime];
        if runtime == HUSK {
            args.extend(["--runtime-config-path", config]);
        }
        args
    }

    fn husk_config(&self) -> String {
        self.dir.path().join("husk.toml").display().to_string()
    }

    /// The status column of `ctr task ls` for `id` (None: no such task).
    fn task_status(&self, id: &str) -> Option<String> {
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
    fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let status = self.task_status(id);
            if status.as_deref() == Some(want) {
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

    fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let _ = self.ctr(&["task", "rm", "-f", id]);
        let _ = self.ctr(&["container", "rm", id]);
    }

    fn stop(&mut self) {
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
    fn finish(mut self) {
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
fn walk(dir: &Path) -> Vec<PathBuf> {
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

#[test]
fn run_rm_prints_output_and_exit_codes_propagate_like_runc() {
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    for (runtime, id) in [(RUNC, "runc-out"), (HUSK, "husk-out")] {
        let mut args = ctrd.run_args(runtime, &config);
        args.extend([
            "--rm",
            IMAGE,
            id,
            "sh",
            "-c",
            "echo hello from $(cat /etc/release 2>/dev/null || echo busybox); echo err >&2; exit 3",
        ]);
        let o = ctrd.ctr(&args);
        assert_eq!(
            o.status.code(),
            Some(3),
            "{runtime}: {}\n{}\n{}",
            text(&o.stdout),
            text(&o.stderr),
            ctrd.log_tail()
        );
        assert!(
            text(&o.stdout).starts_with("hello from"),
            "{runtime}: {}",
            text(&o.stdout)
        );
        assert!(
            text(&o.stderr).contains("err"),
            "{runtime}: {}",
            text(&o.stderr)
        );
        let mut ok_args = ctrd.run_args(runtime, &config);
        let ok_id = format!("{id}-0");
        ok_args.extend(["--rm", IMAGE, &ok_id, "true"]);
        assert_eq!(ctrd.ctr(&ok_args).status.code(), Some(0), "{runtime}");
    }
    ctrd.finish();
}

#[test]
fn a_detached_task_execs_pauses_reports_metrics_and_stops_when_killed() {
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    for (runtime, id) in [(RUNC, "runc-d"), (HUSK, "husk-d")] {
        let mut args = ctrd.run_args(runtime, &config);
        args.extend(["-d", IMAGE, id, "sleep", "1000"]);
        ctrd.ok(&args);
        ctrd.wait_status(id, "RUNNING");

        let o = ctrd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo in $HOSTNAME; exit 4",
        ]);
        assert_eq!(o.status.code(), Some(4), "{runtime}: {}", text(&o.stderr));
        assert!(
            text(&o.stdout).starts_with("in "),
            "{runtime}: {}",
            text(&o.stdout)
        );

        let ps = ctrd.ok(&["task", "ps", id]);
        assert!(ps.lines().count() >= 2, "{runtime}: task ps: {ps}");

        let metrics = ctrd.ok(&["task", "metrics", id]);
        assert!(
            metrics.contains("memory.usage") || metrics.contains("memory.usage_in_bytes"),
            "{runtime}: metrics: {metrics}"
        );

        ctrd.ok(&["task", "pause", id]);
        ctrd.wait_status(id, "PAUSED");
        ctrd.ok(&["task", "resume", id]);
        ctrd.wait_status(id, "RUNNING");

        ctrd.ok(&["task", "kill", "-s", "SIGKILL", id]);
        ctrd.wait_status(id, "STOPPED");
        ctrd.ok(&["task", "rm", id]);
        ctrd.ok(&["container", "rm", id]);
    }
    ctrd.finish();
}

#[test]
fn sixty_four_mib_of_output_arrive_whole() {
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    for (runtime, id) in [(RUNC, "runc-big"), (HUSK, "husk-big")] {
        let mut args = ctrd.run_args(runtime, &config);
        args.extend(["--rm", IMAGE, id, "head", "-c", "67108864", "/dev/zero"]);
        let mut child = ctrd.ctr_command(&args).spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let counter = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            let mut nonzero = 0u64;
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return (total, nonzero),
                    Ok(n) => {
                        total += n as u64;
                        nonzero += buf[..n].iter().filter(|b| **b != 0).count() as u64;
                    }
                }
            }
        });
        let o = wait_with_timeout(child, TIMEOUT, &args);
        let (total, nonzero) = counter.join().unwrap();
        assert!(o.status.success(), "{runtime}: {}", text(&o.stderr));
        assert_eq!((total, nonzero), (64 << 20, 0), "{runtime}");
    }
    ctrd.finish();
}

/// The VMM of a husk task (its pid from the lifecycle's state.json).
fn vmm_pid(ctrd: &Containerd, id: &str) -> i32 {
    let state = ctrd
        .dir
        .path()
        .join("husk-state")
        .join(&ctrd.namespace)
        .join(id)
        .join("state.json");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state.json")).unwrap();
    doc["vmm_pid"].as_i64().expect("vmm_pid") as i32
}

#[test]
fn killing_the_vmm_ends_the_task_with_an_error_and_containerd_stays_healthy() {
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    let mut args = ctrd.run_args(HUSK, &config);
    args.extend(["-d", IMAGE, "vmm-dies", "sleep", "1000"]);
    ctrd.ok(&args);
    ctrd.wait_status("vmm-dies", "RUNNING");
    let vmm = vmm_pid(&ctrd, "vmm-dies");
    // SAFETY: kill on the pid the task's state names.
    assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);
    ctrd.wait_status("vmm-dies", "STOPPED");
    // The exit status is an error (`ctr task rm` prints it? `ls` does not):
    // `ctr task delete` returns it.
    let o = ctrd.ctr(&["task", "rm", "vmm-dies"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    ctrd.ok(&["container", "rm", "vmm-dies"]);
    // containerd still serves: another task runs.
    let mut args = ctrd.run_args(HUSK, &config);
    args.extend(["--rm", IMAGE, "after", "echo", "alive"]);
    assert_eq!(ctrd.ok(&args).trim(), "alive");
    ctrd.finish();
}

fn shim_pids(ctrd: &Containerd) -> Vec<i32> {
    processes_mentioning(ctrd.dir.path())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-husk-v2") && !cmd.contains("__monitor"))
        .map(|(pid, _)| pid as i32)
        .collect()
}

#[test]
fn killing_the_shim_leaves_nothing_after_containerds_cleanup() {
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    let mut args = ctrd.run_args(HUSK, &config);
    args.extend(["-d", IMAGE, "orphan", "sleep", "1000"]);
    ctrd.ok(&args);
    ctrd.wait_status("orphan", "RUNNING");
    let shims = shim_pids(&ctrd);
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    // SAFETY: kill on the shim's pid.
    assert_eq!(unsafe { libc::kill(shims[0], libc::SIGKILL) }, 0);
    // containerd notices the shim's death and runs `shim delete`.
    ctrd.wait_status("orphan", "STOPPED");
    let _ = ctrd.ctr(&["task", "rm", "orphan"]);
    ctrd.ok(&["container", "rm", "orphan"]);
    let husk_left = walk(&ctrd.dir.path().join("husk-state"));
    assert!(husk_left.is_empty(), "{husk_left:?}");
    ctrd.finish();
}

/// A pty pair: (master, slave) for `ctr run -t`, which needs a terminal.
fn pty() -> (OwnedFd, OwnedFd) {
    let mut master = 0;
    let mut slave = 0;
    // SAFETY: openpty fills two descriptors.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both were just opened for us.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn a_tty_run_sees_a_terminal_like_runc() {
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    for (runtime, id) in [(RUNC, "runc-tty"), (HUSK, "husk-tty")] {
        let (master, slave) = pty();
        let mut args = ctrd.run_args(runtime, &config);
        args.extend([
            "--rm",
            "-t",
            IMAGE,
            id,
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo TERMINAL-OK; stty size",
        ]);
        let mut cmd = ctrd.ctr_command(&args);
        let slave_raw = slave.as_raw_fd();
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::piped());
        // SAFETY: setsid + TIOCSCTTY in the child make the pty its terminal.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::setsid();
                libc::ioctl(slave_raw, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(slave);
        let mut master = std::fs::File::from(master);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            // EIO once ctr (the last slave holder) has exited.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        let o = wait_with_timeout(child, TIMEOUT, &args);
        let screen = text(&reader.join().unwrap());
        assert!(
            o.status.success(),
            "{runtime}: {}\n{screen}",
            text(&o.stderr)
        );
        assert!(screen.contains("TERMINAL-OK"), "{runtime}: {screen:?}");
    }
    ctrd.finish();
}
