//! `husk-runc` bad input and crashes, answered clearly and with nothing
//! left behind (beside runc where the behaviour is comparable), the
//! console socket, and hooks with their stdin.

mod oci_support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use oci_support::{text, Rt};

/// Runs a command that must fail with exit code 1 and say `needle`.
fn refused(env: &oci_support::OciEnv, rt: Rt, args: &[&str], needle: &str) {
    let (status, _, err) = env.run_files(rt, args);
    assert_eq!(status.code(), Some(1), "{rt:?} {args:?}: {err}");
    if rt == Rt::Husk {
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: {err:?} does not say {needle:?}"
        );
    }
}

#[test]
fn bad_inputs_are_refused_and_leave_nothing() {
    let env = oci_env!();
    let bundle = env.bundle("box", &["sleep", "1000"], |_| {});
    let b = bundle.to_str().unwrap();
    for rt in env.runtimes() {
        refused(&env, rt, &["state", "nope"], "does not exist");
        refused(&env, rt, &["start", "nope"], "does not exist");
        refused(&env, rt, &["kill", "nope"], "does not exist");
        refused(&env, rt, &["delete", "nope"], "does not exist");

        let empty = env.dir.path().join("empty-bundle");
        std::fs::create_dir_all(&empty).unwrap();
        refused(
            &env,
            rt,
            &["create", "--bundle", empty.to_str().unwrap(), "x1"],
            "config.json",
        );
        let no_rootfs = env.bundle("norootfs", &["true"], |c| {
            c["root"]["path"] = "missing-rootfs".into();
        });
        refused(
            &env,
            rt,
            &["create", "--bundle", no_rootfs.to_str().unwrap(), "x2"],
            "rootfs",
        );
        let missing_dir = env.dir.path().join("no/such/dir/pid");
        refused(
            &env,
            rt,
            &[
                "create",
                "--bundle",
                b,
                "--pid-file",
                missing_dir.to_str().unwrap(),
                "x3",
            ],
            "does not exist",
        );
        if rt == Rt::Husk {
            let bad_version = env.bundle("v2", &["true"], |c| c["ociVersion"] = "2.0.0".into());
            refused(
                &env,
                rt,
                &["create", "--bundle", bad_version.to_str().unwrap(), "x4"],
                "ociVersion",
            );
            let malformed = env.bundle("malformed", &["true"], |c| {
                c["process"]["user"]["uid"] = "root".into();
            });
            refused(
                &env,
                rt,
                &["create", "--bundle", malformed.to_str().unwrap(), "x5"],
                "config.json",
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(env.root(rt))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{rt:?}: {leftovers:?}");

        env.create(rt, "dup", &bundle, &[]);
        refused(
            &env,
            rt,
            &["create", "--bundle", b, "dup"],
            "already exists",
        );
        refused(&env, rt, &["kill", "dup", "NOSUCHSIG"], "signal");
        env.ok(rt, &["start", "dup"]);
        refused(&env, rt, &["start", "dup"], "cannot start");
        refused(&env, rt, &["delete", "dup"], "not stopped");
        let pid = env.state(rt, "dup")["pid"].as_i64().unwrap() as i32;
        env.ok(rt, &["kill", "dup", "KILL"]);
        env.wait_pid_exit(pid);
        refused(&env, rt, &["start", "dup"], "stopped");
        env.ok(rt, &["delete", "dup"]);

        env.create(rt, "forced", &bundle, &[]);
        env.ok(rt, &["start", "forced"]);
        env.ok(rt, &["delete", "--force", "forced"]);
        refused(&env, rt, &["state", "forced"], "does not exist");
    }
    env.assert_clean();
}

#[test]
fn a_killed_vmm_or_monitor_leaves_a_stopped_container_that_delete_cleans() {
    let env = oci_env!();
    let bundle = env.bundle("crash", &["sleep", "1000"], |_| {});
    let state_file = |id: &str| env.root(Rt::Husk).join(id).join("state.json");

    // The VMM killed from outside.
    env.create(Rt::Husk, "vmmkill", &bundle, &[]);
    env.ok(Rt::Husk, &["start", "vmmkill"]);
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_file("vmmkill")).unwrap()).unwrap();
    let vmm = raw["vmm_pid"].as_i64().expect("vmm pid") as i32;
    let monitor = raw["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(vmm, libc::SIGKILL) };
    env.wait_pid_exit(monitor);
    assert_eq!(env.status(Rt::Husk, "vmmkill"), "stopped");
    env.ok(Rt::Husk, &["delete", "vmmkill"]);

    // The monitor killed with SIGKILL: its VM dies with it.
    env.create(Rt::Husk, "monkill", &bundle, &[]);
    env.ok(Rt::Husk, &["start", "monkill"]);
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_file("monkill")).unwrap()).unwrap();
    let vmm = raw["vmm_pid"].as_i64().unwrap() as i32;
    let monitor = raw["pid"].as_i64().unwrap() as i32;
    // SAFETY: as above.
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    env.wait_pid_exit(monitor);
    env.wait_pid_exit(vmm);
    assert_eq!(env.status(Rt::Husk, "monkill"), "stopped");
    let out = env.run(Rt::Husk, &["exec", "monkill", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("stopped"),
        "{}",
        text(&out.stderr)
    );
    env.ok(Rt::Husk, &["delete", "monkill"]);
    env.assert_clean();
}

/// Receives one descriptor sent with SCM_RIGHTS on `stream`.
fn receive_fd(stream: &std::os::unix::net::UnixStream) -> OwnedFd {
    let mut data = [0u8; 256];
    let mut cmsg = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.len();
    // SAFETY: msg points at live buffers for the call's duration.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel filled a cmsghdr into cmsg (checked non-null).
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        assert!(!header.is_null(), "no descriptor received");
        assert_eq!((*header).cmsg_type, libc::SCM_RIGHTS);
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header) as *const i32);
        OwnedFd::from_raw_fd(fd)
    }
}

#[test]
fn console_socket_gets_the_terminal() {
    let env = oci_env!();
    let bundle = env.bundle("tty", &["sh"], |c| c["process"]["terminal"] = true.into());
    for rt in env.runtimes() {
        let socket = env.dir.path().join(format!("console-{rt:?}.sock"));
        let listener = UnixListener::bind(&socket).unwrap();
        let id = "tty1";
        let (tx, rx) = std::sync::mpsc::channel();
        let accepter = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            tx.send(receive_fd(&stream)).unwrap();
        });
        env.create(
            rt,
            id,
            &bundle,
            &["--console-socket", socket.to_str().unwrap()],
        );
        accepter.join().unwrap();
        let master = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        env.ok(rt, &["start", id]);
        let mut pty = std::fs::File::from(master);
        pty.write_all(b"echo tty-$((6*7))\n").unwrap();
        // Read until the command's output (not its echo) appears.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut reader = pty.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains("tty-42") {
                    break;
                }
            }
            let _ = done_tx.send(seen);
        });
        let seen = done_rx
            .recv_timeout(oci_support::TIMEOUT)
            .expect("terminal output");
        let seen = text(&seen);
        assert!(
            seen.contains("echo tty-$((6*7))"),
            "{rt:?}: no echo in {seen:?}"
        );
        assert!(seen.contains("tty-42"), "{rt:?}: {seen:?}");

        // exec --tty --detach sends its own terminal to a console socket.
        let socket = env.dir.path().join(format!("exec-console-{rt:?}.sock"));
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let accepter = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            tx.send(receive_fd(&stream)).unwrap();
        });
        let (status, _, err) = env.run_files(
            rt,
            &[
                "exec",
                "--tty",
                "--detach",
                "--console-socket",
                socket.to_str().unwrap(),
                id,
                "sh",
                "-c",
                "echo exec-tty-$((6*7)); [ -t 0 ] && [ -t 1 ] && echo on-a-tty; sleep 1000",
            ],
        );
        assert!(status.success(), "{rt:?}: exec --tty: {err}");
        accepter.join().unwrap();
        let mut exec_pty = std::fs::File::from(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = exec_pty.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains("on-a-tty") {
                    break;
                }
            }
            let _ = done_tx.send(seen);
        });
        let seen = text(
            &done_rx
                .recv_timeout(oci_support::TIMEOUT)
                .expect("exec terminal output"),
        );
        assert!(
            seen.contains("exec-tty-42") && seen.contains("on-a-tty"),
            "{rt:?}: {seen:?}"
        );
        env.ok(rt, &["delete", "--force", id]);
    }
    env.assert_clean();
}

#[test]
fn hooks_run_with_the_state_on_stdin() {
    let env = oci_env!();
    let out = env.dir.path().join("hooks");
    std::fs::create_dir_all(&out).unwrap();
    let hook = |name: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}-$RT", out.display())],
            "env": [format!("RT=RTNAME")],
        })
    };
    for rt in env.runtimes() {
        let rt_name = format!("{rt:?}");
        let bundle = env.bundle(&format!("hooked-{rt_name}"), &["true"], |c| {
            let mut hooks = serde_json::json!({
                "createRuntime": [hook("createRuntime")],
                "poststart": [hook("poststart")],
                "poststop": [hook("poststop")],
            });
            let text = hooks.to_string().replace("RTNAME", &rt_name);
            hooks = serde_json::from_str(&text).unwrap();
            c["hooks"] = hooks;
        });
        let id = "hooked";
        let out_run = env.run(rt, &["run", "--bundle", bundle.to_str().unwrap(), id]);
        assert_eq!(
            out_run.status.code(),
            Some(0),
            "{rt:?}: {}",
            text(&out_run.stderr)
        );
        for name in ["createRuntime", "poststart", "poststop"] {
            let path = out.join(format!("{name}-{rt_name}"));
            let got = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{rt:?}: {name} hook output {}: {e}", path.display()));
            let state: serde_json::Value = serde_json::from_str(&got)
                .unwrap_or_else(|e| panic!("{rt:?}: {name} stdin {got:?}: {e}"));
            assert_eq!(state["id"], id, "{rt:?} {name}");
            assert!(state["ociVersion"].is_string(), "{rt:?} {name}");
            assert!(
                state["bundle"]
                    .as_str()
                    .is_some_and(|b| b.ends_with(&format!("hooked-{rt_name}"))),
                "{rt:?} {name}: {state}"
            );
        }
    }

    // A failing createRuntime hook fails create and leaves nothing.
    let bundle = env.bundle("badhook", &["true"], |c| {
        c["hooks"] = serde_json::json!({
            "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 7"]}],
        });
    });
    for rt in env.runtimes() {
        let (status, _, err) =
            env.run_files(rt, &["create", "--bundle", bundle.to_str().unwrap(), "bad"]);
        assert!(
            !status.success(),
            "{rt:?}: create with a failing hook succeeded"
        );
        if rt == Rt::Husk {
            assert!(err.contains("createRuntime"), "{err}");
        }
        let _ = env.run(rt, &["delete", "--force", "bad"]);
        let out = env.run(rt, &["state", "bad"]);
        assert!(
            !out.status.success(),
            "{rt:?}: a failed create left its state"
        );
    }
    env.assert_clean();
}

#[test]
fn features_spec_and_events() {
    let env = oci_env!();
    let features: serde_json::Value =
        serde_json::from_str(&env.ok(Rt::Husk, &["features"])).expect("features JSON");
    assert!(features["ociVersionMax"]
        .as_str()
        .is_some_and(|v| v.starts_with("1.")));
    assert!(features["hooks"].as_array().is_some_and(|h| h.len() == 6));
    assert!(features["annotations"]["io.husk.ignored"]
        .as_str()
        .is_some_and(|t| t.contains("--systemd-cgroup")));
    // spec refuses to overwrite, like runc.
    let bundle = env.bundle("specced", &["sleep", "1000"], |_| {});
    for rt in env.runtimes() {
        let out = env.run(rt, &["spec", "--bundle", bundle.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{rt:?}");
    }
    env.create(Rt::Husk, "ev", &bundle, &[]);
    env.ok(Rt::Husk, &["start", "ev"]);
    let line = env.ok(Rt::Husk, &["events", "--stats", "ev"]);
    let event: serde_json::Value = serde_json::from_str(line.trim()).expect("event JSON");
    assert_eq!(event["type"], "stats");
    assert_eq!(event["id"], "ev");
    assert!(event["data"].is_object(), "{event}");
    env.ok(Rt::Husk, &["delete", "--force", "ev"]);
    env.assert_clean();
}

#[test]
fn two_creates_racing_on_one_id_leave_one_container() {
    let env = oci_env!();
    let bundle = env.bundle("race", &["sleep", "1000"], |_| {});
    let b = bundle.to_str().unwrap();
    let spawn = |tag: &str| {
        let mut cmd = env.command(Rt::Husk, &["create", "--bundle", b, "racer"]);
        cmd.stderr(std::fs::File::create(env.dir.path().join(format!("race-{tag}.err"))).unwrap());
        cmd.spawn().unwrap()
    };
    let (one, two) = (spawn("a"), spawn("b"));
    let results: Vec<_> = [one, two]
        .into_iter()
        .map(|c| oci_support::wait_with_timeout(c, oci_support::TIMEOUT, &["create racer"]))
        .collect();
    let won = results.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won,
        1,
        "exactly one create wins: {:?}",
        results.iter().map(|o| o.status).collect::<Vec<_>>()
    );
    let errors = ["a", "b"]
        .map(|t| {
            std::fs::read_to_string(env.dir.path().join(format!("race-{t}.err")))
                .unwrap_or_default()
        })
        .join("\n");
    assert!(errors.contains("already exists"), "{errors}");
    assert_eq!(env.status(Rt::Husk, "racer"), "created");
    env.ok(Rt::Husk, &["delete", "racer"]);
    env.assert_clean();
}

#[test]
fn long_roots_and_64_character_ids_work() {
    let env = oci_env!();
    // Like containerd's `--root /run/containerd/runc/<namespace>` with a
    // 64-hex container ID: too long for socket paths in the state dir.
    let root = env
        .dir
        .path()
        .join("run-containerd-runc")
        .join("k8s.io-namespace-x".repeat(2));
    let id = "0123456789abcdef".repeat(4);
    let bundle = env.bundle("longroot", &["sleep", "1000"], |_| {});
    let husk = |args: &[&str]| env.command_in(Rt::Husk, &root, args);
    let status = husk(&["create", "--bundle", bundle.to_str().unwrap(), &id])
        .status()
        .unwrap();
    assert!(status.success(), "create under a long root");
    assert!(husk(&["start", &id]).status().unwrap().success());
    let out = husk(&["exec", &id, "echo", "long-ok"])
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "long-ok\n");
    assert!(husk(&["delete", "--force", &id])
        .status()
        .unwrap()
        .success());
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let sockets: Vec<_> = std::fs::read_dir("/run/husk-sockets")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        oci_support::processes_mentioning(&root).is_empty(),
        "processes left"
    );
    for dir in sockets {
        assert!(
            oci_support::processes_mentioning(&dir).is_empty(),
            "processes left using {}",
            dir.display()
        );
    }
}
