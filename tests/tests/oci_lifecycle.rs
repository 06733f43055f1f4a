//! `husk-runc` end to end, side by side with Debian's runc on the same
//! busybox-static bundle: the lifecycle, `run` exit codes, `exec`, `list`,
//! `ps`, `--pid-file`, pause/resume. Each husk container boots a VM (QEMU
//! TCG here: seconds each).

mod oci_support;

use oci_support::text;

#[test]
fn lifecycle_create_start_kill_delete_matches_runc() {
    let env = oci_env!();
    let bundle = env.bundle("sleeper", &["sleep", "1000"], |_| {});
    for rt in env.runtimes() {
        let id = "life1";
        env.create(rt, id, &bundle, &[]);
        let state = env.state(rt, id);
        assert_eq!(state["status"], "created", "{rt:?}: {state}");
        assert_eq!(state["id"], id);
        assert_eq!(
            state["ociVersion"].as_str().map(|v| v.starts_with("1.")),
            Some(true)
        );
        assert_eq!(
            state["bundle"].as_str(),
            Some(bundle.to_str().unwrap()),
            "{rt:?}"
        );
        let pid = state["pid"].as_i64().unwrap_or(0) as i32;
        assert!(pid > 0, "{rt:?}: pid {pid}");

        env.ok(rt, &["start", id]);
        assert_eq!(env.status(rt, id), "running", "{rt:?}");

        env.ok(rt, &["kill", id, "KILL"]);
        env.wait_pid_exit(pid);
        assert_eq!(env.status(rt, id), "stopped", "{rt:?}");

        env.ok(rt, &["delete", id]);
        let out = env.run(rt, &["state", id]);
        assert_eq!(out.status.code(), Some(1), "{rt:?}: state after delete");
    }
    env.assert_clean();
}

#[test]
fn run_exit_codes_match_runc() {
    let env = oci_env!();
    let cases: &[(&str, i32)] = &[("exit 0", 0), ("exit 3", 3)];
    for (i, (script, code)) in cases.iter().enumerate() {
        let bundle = env.bundle(&format!("exit{i}"), &["sh", "-c", script], |_| {});
        for rt in env.runtimes() {
            let id = format!("run{i}");
            let out = env.run(rt, &["run", "--bundle", bundle.to_str().unwrap(), &id]);
            assert_eq!(
                out.status.code(),
                Some(*code),
                "{rt:?} {script}: {}",
                text(&out.stderr)
            );
        }
    }
    // Killed from outside: 128 + the signal.
    let bundle = env.bundle("victim", &["sleep", "1000"], |_| {});
    for rt in env.runtimes() {
        let mut run = env.command(rt, &["run", "--bundle", bundle.to_str().unwrap(), "victim"]);
        let child = run.spawn().expect("spawn run");
        env.wait_for_status(rt, "victim", "running");
        env.ok(rt, &["kill", "victim", "KILL"]);
        let out = oci_support::wait_with_timeout(child, oci_support::TIMEOUT, &["run", "victim"]);
        assert_eq!(out.status.code(), Some(137), "{rt:?}");
    }
    // Output of a foreground run is the container's.
    let bundle = env.bundle("hello", &["sh", "-c", "echo hello; echo oops >&2"], |_| {});
    for rt in env.runtimes() {
        let out = env.run(rt, &["run", "--bundle", bundle.to_str().unwrap(), "hello"]);
        assert_eq!(out.status.code(), Some(0), "{rt:?}");
        assert_eq!(text(&out.stdout), "hello\n", "{rt:?}");
        assert!(text(&out.stderr).contains("oops"), "{rt:?}");
    }
    env.assert_clean();
}

#[test]
fn exec_output_exit_code_list_ps_and_pid_file() {
    let env = oci_env!();
    let bundle = env.bundle("execbox", &["sleep", "1000"], |_| {});
    for rt in env.runtimes() {
        let id = "exec1";
        let pid_file = env.dir.path().join(format!("{rt:?}.pid"));
        env.create(rt, id, &bundle, &["--pid-file", pid_file.to_str().unwrap()]);
        let state = env.state(rt, id);
        let pid: i64 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid");
        assert_eq!(Some(pid), state["pid"].as_i64(), "{rt:?}");
        env.ok(rt, &["start", id]);

        let out = env.run(
            rt,
            &["exec", id, "sh", "-c", "echo out; echo err >&2; exit 5"],
        );
        assert_eq!(out.status.code(), Some(5), "{rt:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "out\n", "{rt:?}");
        assert!(text(&out.stderr).contains("err"), "{rt:?}");

        let out = env.run(
            rt,
            &[
                "exec",
                "--env",
                "GREETING=hi",
                "--cwd",
                "/tmp",
                id,
                "sh",
                "-c",
                "echo $GREETING $(pwd)",
            ],
        );
        assert_eq!(
            text(&out.stdout),
            "hi /tmp\n",
            "{rt:?}: {}",
            text(&out.stderr)
        );

        let ids = env.ok(rt, &["list", "-q"]);
        assert_eq!(ids.lines().collect::<Vec<_>>(), vec![id], "{rt:?}");
        let list: serde_json::Value =
            serde_json::from_str(&env.ok(rt, &["list", "--format", "json"])).unwrap();
        assert_eq!(list[0]["id"], id, "{rt:?}");
        assert_eq!(list[0]["status"], "running", "{rt:?}");
        let table = env.ok(rt, &["list"]);
        assert!(table.starts_with("ID"), "{rt:?}: {table}");
        assert!(table.contains("running"), "{rt:?}: {table}");

        let pids: Vec<i64> =
            serde_json::from_str(&env.ok(rt, &["ps", "--format", "json", id])).unwrap();
        assert!(pids.contains(&pid), "{rt:?}: {pids:?} lacks {pid}");

        env.ok(rt, &["pause", id]);
        assert_eq!(env.status(rt, id), "paused", "{rt:?}");
        let out = env.run(rt, &["exec", id, "true"]);
        assert!(
            !out.status.success(),
            "{rt:?}: exec into a paused container"
        );
        env.ok(rt, &["resume", id]);
        assert_eq!(env.status(rt, id), "running", "{rt:?}");

        env.ok(rt, &["kill", id, "9"]);
        env.wait_pid_exit(pid as i32);
        let out = env.run(rt, &["exec", id, "true"]);
        assert!(
            !out.status.success(),
            "{rt:?}: exec into a stopped container"
        );
        env.ok(rt, &["delete", id]);
    }
    env.assert_clean();
}
