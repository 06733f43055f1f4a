//! The Docker-style container commands end to end: `run -d`, `ps`, `exec`
//! (also `-it` under a pty), `logs -f`, `stop` within its timeout, `kill`,
//! `rm -f`, `inspect`, names and ID prefixes. Every command is a new `husk`
//! process, so each one sees what the earlier ones left (the restart of
//! the host tool in between).

mod run_support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use run_support::{text, RunEnv};

/// `husk --store S ARGS` (not `run`), with the kernel and agent set.
fn husk(env: &RunEnv, args: &[&str]) -> Command {
    env.husk_command(args)
}

fn out(env: &RunEnv, args: &[&str]) -> std::process::Output {
    let child = husk(env, args).spawn().expect("spawn husk");
    run_support::wait_with_timeout(child, run_support::RUN_TIMEOUT, args)
}

fn ok(env: &RunEnv, args: &[&str]) -> String {
    let o = out(env, args);
    assert!(
        o.status.success(),
        "husk {args:?}: {}\n{}\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// `husk run -d --backend B ARGS`: the new container's ID.
fn run_d(env: &RunEnv, args: &[&str]) -> String {
    let mut all = vec!["run", "-d", "--backend", env.backend.as_str()];
    all.extend_from_slice(args);
    let id = ok(env, &all).trim().to_string();
    assert_eq!(id.len(), 32, "an ID: {id:?}");
    id
}

fn inspect(env: &RunEnv, what: &str) -> serde_json::Value {
    let docs: serde_json::Value = serde_json::from_str(&ok(env, &["inspect", what])).unwrap();
    docs[0].clone()
}

fn wait_pid_gone(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags, returns a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if raw < 0 {
        return;
    }
    // SAFETY: a descriptor the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = run_support::RUN_TIMEOUT.as_millis() as i32;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    assert!(n > 0, "pid {pid} did not exit");
}

fn assert_no_containers(env: &RunEnv) {
    let listed = ok(env, &["ps", "-a", "-q"]);
    assert!(listed.trim().is_empty(), "containers left: {listed}");
    env.assert_clean();
    let procs = run_support::processes_mentioning(&env.store.root().join("containers"));
    assert!(procs.is_empty(), "monitors left: {procs:?}");
}

#[test]
fn run_d_ps_exec_logs_stop_rm() {
    let env = run_env!();
    let id = run_d(
        &env,
        &[
            "--name",
            "web",
            "busybox",
            "sh",
            "-c",
            "echo started; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
        ],
    );
    let ps = ok(&env, &["ps"]);
    assert!(ps.contains(&id[..12]) && ps.contains("web"), "{ps}");
    let line: serde_json::Value =
        serde_json::from_str(ok(&env, &["ps", "--format", "json"]).trim()).unwrap();
    assert_eq!(line["ID"], id.as_str());
    assert_eq!(line["State"], "running");

    // exec by name, by ID prefix; output and exit code.
    let o = out(
        &env,
        &[
            "exec",
            "web",
            "sh",
            "-c",
            "echo in-exec; echo to-err >&2; exit 4",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "in-exec\n");
    assert!(text(&o.stderr).contains("to-err"));
    let o = out(
        &env,
        &[
            "exec",
            "-e",
            "K=v",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            &id[..6],
            "sh",
            "-c",
            "echo $K $(pwd) $(id -u)",
        ],
    );
    assert_eq!(text(&o.stdout), "v /tmp 1000\n", "{}", text(&o.stderr));
    // User and group names resolve through the image's /etc/passwd and
    // /etc/group, as docker does.
    let o = out(
        &env,
        &[
            "exec",
            "-u",
            "user",
            "web",
            "sh",
            "-c",
            "echo $(id -u):$(id -g)",
        ],
    );
    assert_eq!(text(&o.stdout), "1000:1000\n", "{}", text(&o.stderr));
    let o = out(
        &env,
        &[
            "exec",
            "-u",
            "user:root",
            "web",
            "sh",
            "-c",
            "echo $(id -u):$(id -g)",
        ],
    );
    assert_eq!(text(&o.stdout), "1000:0\n", "{}", text(&o.stderr));
    let o = out(&env, &["exec", "-u", "nosuchuser", "web", "true"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("unable to find user nosuchuser"),
        "{}",
        text(&o.stderr)
    );

    // exec -i forwards stdin.
    let mut child = husk(&env, &["exec", "-i", "web", "cat"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped through\n")
        .unwrap();
    let o = run_support::wait_with_timeout(child, run_support::RUN_TIMEOUT, &["exec -i"]);
    assert_eq!(text(&o.stdout), "piped through\n");

    // logs -f follows until the container stops.
    let follower = husk(&env, &["logs", "-f", "web"]).spawn().unwrap();
    let logs = ok(&env, &["logs", &id]);
    assert!(logs.starts_with("started\n"), "{logs}");

    // The shell as PID 1 ignores SIGTERM: stop kills it after -t.
    let started = Instant::now();
    assert_eq!(ok(&env, &["stop", "-t", "1", "web"]).trim(), "web");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stop took {:?}",
        started.elapsed()
    );
    let followed = run_support::wait_with_timeout(follower, run_support::RUN_TIMEOUT, &["logs -f"]);
    let followed = text(&followed.stdout);
    assert!(
        followed.starts_with("started\n") && followed.contains("tick 0"),
        "{followed}"
    );

    let state = inspect(&env, "web");
    assert_eq!(state["State"]["Status"], "exited");
    assert_eq!(state["State"]["ExitCode"], 137);
    assert!(
        ok(&env, &["ps"]).lines().count() == 1,
        "stopped shown without -a"
    );
    assert!(ok(&env, &["ps", "-a"]).contains("Exited (137)"));

    let o = out(&env, &["exec", "web", "true"]);
    assert_ne!(o.status.code(), Some(0), "exec into a stopped container");
    assert!(text(&o.stderr).contains("stopped"), "{}", text(&o.stderr));
    assert_eq!(ok(&env, &["rm", "web"]).trim(), "web");
    assert_no_containers(&env);
}

#[test]
fn names_prefixes_kill_rm_f_and_run_d_rm() {
    let env = run_env!();
    let a = run_d(&env, &["--name", "one", "busybox", "sleep", "1000"]);
    let o = out(
        &env,
        &[
            "run",
            "-d",
            "--backend",
            &env.backend,
            "--name",
            "one",
            "busybox",
            "true",
        ],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("already in use"),
        "{}",
        text(&o.stderr)
    );

    // The image's layers are in use: image rm refuses and says by whom.
    let o = out(&env, &["image", "rm", "busybox:latest"]);
    assert_ne!(o.status.code(), Some(0), "image rm of an image in use");
    assert!(
        text(&o.stderr).contains("in use") && text(&o.stderr).contains(&a),
        "{}",
        text(&o.stderr)
    );

    let o = out(&env, &["rm", "one"]);
    assert_ne!(o.status.code(), Some(0), "rm of a running container");
    assert!(text(&o.stderr).contains("running"), "{}", text(&o.stderr));
    for bad in ["nosuch", &a[..3]] {
        let o = out(&env, &["inspect", bad]);
        assert_ne!(o.status.code(), Some(0));
        assert!(
            text(&o.stderr).contains("no such container"),
            "{}",
            text(&o.stderr)
        );
    }
    let o = out(&env, &["kill", "-s", "NOPE", "one"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("signal"), "{}", text(&o.stderr));

    let pid = inspect(&env, &a[..4])["State"]["Pid"].as_i64().unwrap() as i32;
    assert_eq!(ok(&env, &["kill", &a[..4]]).trim(), &a[..4]);
    wait_pid_gone(pid);
    assert_eq!(inspect(&env, "one")["State"]["ExitCode"], 137);
    ok(&env, &["rm", "one"]);

    // rm -f of a running container.
    run_d(&env, &["--name", "two", "busybox", "sleep", "1000"]);
    ok(&env, &["rm", "-f", "two"]);

    // Nothing uses the image any more.
    ok(&env, &["image", "rm", "busybox:latest"]);
    let archive = env.store.root().join("busybox-again.tar");
    let image =
        husk_e2e::fixtures::build(&husk_e2e::fixtures::busybox(Some("busybox:latest")).unwrap());
    husk_e2e::fixtures::write(&[image], husk_e2e::fixtures::Format::Docker, &archive).unwrap();
    env.store.import(&archive, &[]);

    // --rm with -d: gone once it exits.
    let b = run_d(&env, &["--rm", "busybox", "sleep", "2"]);
    let pid = inspect(&env, &b)["State"]["Pid"].as_i64().unwrap() as i32;
    wait_pid_gone(pid);
    assert_no_containers(&env);
}

#[test]
fn exec_it_under_a_pty() {
    let env = run_env!();
    run_d(&env, &["--name", "tty", "busybox", "sleep", "1000"]);
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: openpty writes two descriptors; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both were just opened for us.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = husk(&env, &["exec", "-it", "tty", "sh"]);
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let child = cmd.spawn().unwrap();
    let mut pty = std::fs::File::from(master);
    pty.write_all(b"tty -s && echo is-a-tty; echo x-$((6*7)); exit 3\n")
        .unwrap();
    let mut reader = pty.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("x-42") {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let seen = text(
        &rx.recv_timeout(run_support::RUN_TIMEOUT)
            .expect("pty output"),
    );
    assert!(
        seen.contains("is-a-tty") && seen.contains("x-42"),
        "{seen:?}"
    );
    let o = run_support::wait_with_timeout(child, run_support::RUN_TIMEOUT, &["exec -it"]);
    assert_eq!(o.status.code(), Some(3));
    ok(&env, &["rm", "-f", "tty"]);
    assert_no_containers(&env);
}

#[test]
fn foreground_runs_are_kept_unless_rm_and_share_the_names() {
    let env = run_env!();
    let o = env.run(&["--name", "fg1", "busybox", "sh", "-c", "echo hi; exit 3"]);
    run_support::assert_code(&o, 3);
    assert_eq!(text(&o.stdout), "hi\n");
    let ps = ok(&env, &["ps", "-a"]);
    assert!(ps.contains("fg1") && ps.contains("Exited (3)"), "{ps}");
    assert_eq!(inspect(&env, "fg1")["State"]["ExitCode"], 3);
    // The name is taken until the container is removed.
    let o = env.run(&["--name", "fg1", "busybox", "true"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("already in use"),
        "{}",
        text(&o.stderr)
    );
    ok(&env, &["rm", "fg1"]);
    run_support::assert_code(&env.run(&["--rm", "--name", "fg1", "busybox", "true"]), 0);
    assert!(ok(&env, &["ps", "-a", "-q"]).trim().is_empty());

    // A running foreground container is listed, and stop reaches it.
    let mut cmd = env.command(&[
        "--name",
        "fg2",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 7' TERM; echo ready; while true; do sleep 1; done",
    ]);
    let mut child = cmd.spawn().unwrap();
    // Wait for the container's first output: it is running then.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    let ps = ok(&env, &["ps"]);
    assert!(ps.contains("fg2") && ps.contains("Up"), "{ps}");
    let o = out(&env, &["exec", "fg2", "true"]);
    assert!(
        text(&o.stderr).contains("foreground"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(ok(&env, &["stop", "-t", "30", "fg2"]).trim(), "fg2");
    let o = run_support::wait_with_timeout(child, run_support::RUN_TIMEOUT, &["run fg2"]);
    assert_eq!(o.status.code(), Some(7));
    assert!(ok(&env, &["ps", "-a"]).contains("Exited (7)"));
    ok(&env, &["rm", "fg2"]);
    assert_no_containers(&env);
}

/// The busybox image's layer lock files (`locks/<chain id>.lock`).
fn layer_locks(env: &RunEnv) -> Vec<std::path::PathBuf> {
    env.store.inspect("busybox")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let chain_id = l["chain_id"].as_str().unwrap();
            env.store
                .root()
                .join("locks")
                .join(format!("{}.lock", chain_id.trim_start_matches("sha256:")))
        })
        .collect()
}

/// Whether util-linux `flock` gets the lock on `path` at once (`-x`
/// exclusive as rm/prune take it, `-s` shared as a run's lease).
fn flock_now(mode: &str, path: &std::path::Path) -> bool {
    Command::new("flock")
        .args([mode, "--nonblock"])
        .arg(path)
        .arg("true")
        .status()
        .expect("flock (util-linux)")
        .success()
}

/// A run holds a shared lock on each of its image's layers until its VM is
/// gone: for `run -d` the monitor holds it (the `husk run -d` that took it
/// has exited), for a foreground run the `husk` process; meanwhile `image
/// rm` refuses the image as in use by a running container (a foreground
/// run leaves no container record that would say so otherwise).
#[test]
fn runs_lease_their_layers_until_the_vm_is_gone() {
    let env = run_env!();
    let locks = layer_locks(&env);
    assert_eq!(locks.len(), 3);

    let id = run_d(&env, &["busybox", "sleep", "1000"]);
    for lock in &locks {
        assert!(!flock_now("-x", lock), "{} not leased", lock.display());
        assert!(flock_now("-s", lock), "a lease is shared");
    }
    // The monitor holds it, not the VM program it starts.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.store
                .root()
                .join("containers")
                .join(&id)
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let holders = |pid: i64| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .map(|p| p.display().to_string())
            .filter(|p| p.ends_with(".lock") && p.contains("/locks/"))
            .collect()
    };
    let monitor = state["pid"].as_i64().unwrap();
    let vm = state["vmm_pid"].as_i64().unwrap();
    assert_eq!(
        holders(monitor).len(),
        locks.len(),
        "{:?}",
        holders(monitor)
    );
    assert!(
        holders(vm).is_empty(),
        "the VM program holds {:?}",
        holders(vm)
    );
    ok(&env, &["rm", "-f", &id]);
    for lock in &locks {
        assert!(flock_now("-x", lock), "{} still held", lock.display());
    }

    let mut run = husk(
        &env,
        &[
            "run",
            "--rm",
            "-i",
            "--backend",
            env.backend.as_str(),
            "busybox",
            "sh",
            "-c",
            "echo up; read line; echo bye",
        ],
    );
    run.stdin(Stdio::piped());
    let mut child = run.spawn().expect("spawn husk run");
    let stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // The container's first line: it runs, so its lease is held.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"up\n") {
        match stdout.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            other => panic!("husk run ended before the container ran: {other:?}"),
        }
    }
    let o = out(&env, &["image", "rm", "busybox:latest"]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "image rm under a running container"
    );
    assert!(
        text(&o.stderr).contains("in use by a running container"),
        "{}",
        text(&o.stderr)
    );
    assert!(!flock_now("-x", &locks[0]));
    // The container reads EOF and ends; so does the run and its lease.
    drop(stdin);
    child.stdout = Some(stdout);
    let o = run_support::wait_with_timeout(child, run_support::RUN_TIMEOUT, &["run"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "bye\n");
    ok(&env, &["image", "rm", "busybox:latest"]);
    env.assert_clean();
}
