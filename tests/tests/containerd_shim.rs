//! husk's containerd shim (`io.containerd.husk.v2`) end to end, under an
//! unmodified containerd (Debian's), beside containerd's own runc shim
//! (`io.containerd.runc.v2`) as the reference in the same test.
//!
//! Each test starts its own containerd (husk_e2e::containerd) and imports
//! the busybox fixture. Afterwards nothing of the test may be left: no
//! containerd, shim, monitor or VM process, no husk state, no mount.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;

use husk_e2e::containerd::{env, text, walk, Containerd, HUSK, IMAGE, RUNC, TIMEOUT};
use husk_e2e::procs::{processes_mentioning, wait_with_timeout};

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
        let o = ctrd.ctr(&ok_args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{runtime}: {}\n{}",
            text(&o.stderr),
            ctrd.log_tail()
        );
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

/// What a `ctr run --rm … head -c 64MiB /dev/zero` delivered: bytes, bytes
/// that were not zero.
fn sixty_four_mib_run(ctrd: &Containerd, runtime: &str, config: &str, id: &str) -> (u64, u64) {
    let mut args = ctrd.run_args(runtime, config);
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
    assert!(
        o.status.success(),
        "{runtime}: {:?} after {total} bytes; stderr: {}\ncontainerd log tail:\n{}",
        o.status,
        text(&o.stderr),
        ctrd.log_tail()
    );
    (total, nonzero)
}

#[test]
fn sixty_four_mib_of_output_arrive_whole() {
    const WHOLE: (u64, u64) = (64 << 20, 0);
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    // The reference: containerd's runc shim now and then loses the last
    // piece of a large output at exit (CI saw 4096 bytes short; docker's
    // users see the same race, docker/cli#4338). Its job here is to show
    // that containerd and ctr deliver 64 MiB whole, so it gets three tries;
    // husk gets one.
    let mut reference = Vec::new();
    for attempt in 1..=3 {
        let got = sixty_four_mib_run(&ctrd, RUNC, &config, &format!("runc-big-{attempt}"));
        reference.push(got);
        if got == WHOLE {
            break;
        }
        eprintln!("{RUNC} (the reference) delivered {got:?} of {WHOLE:?} on try {attempt}");
    }
    assert_eq!(
        reference.last(),
        Some(&WHOLE),
        "{RUNC}: every try: {reference:?}"
    );
    let husk = sixty_four_mib_run(&ctrd, HUSK, &config, "husk-big");
    assert_eq!(husk, WHOLE, "{HUSK}");
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
    // containerd's log says why.
    let line = ctrd.wait_log_line("task vmm-dies: the VM ended");
    assert!(line.contains("level=warn"), "{line}");
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
    let address = std::fs::read_to_string(
        ctrd.dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(&ctrd.namespace)
            .join("orphan/address"),
    )
    .expect("the shim's address");
    let socket = std::path::PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists(), "{}", socket.display());
    // SAFETY: kill on the shim's pid.
    assert_eq!(unsafe { libc::kill(shims[0], libc::SIGKILL) }, 0);
    // containerd notices the shim's death, runs `shim delete` and drops
    // the task (or shows it stopped).
    ctrd.wait_status_in("orphan", &[None, Some("STOPPED")]);
    let _ = ctrd.ctr(&["task", "rm", "orphan"]);
    ctrd.ok(&["container", "rm", "orphan"]);
    // containerd drops the task from its list before its `shim delete`
    // has finished: wait for the cleanup to show (monitor, VM and state
    // gone), within a bound.
    let state = ctrd.dir.path().join("husk-state");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let husk_left = walk(&state);
        let running: Vec<_> = processes_mentioning(&state);
        if husk_left.is_empty() && running.is_empty() && !socket.exists() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left after containerd's cleanup: {husk_left:?} {running:?}, socket {} {}",
            socket.display(),
            socket.exists()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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
        // The Command keeps its copies of the slave: drop them all, so that
        // the master reads EOF (EIO) once ctr exits.
        drop(cmd);
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

/// The memory limit a task's processes run under: husk's from inside the
/// guest (cgroup v2), runc's from the host cgroup of its init (cgroup v1
/// here, which the container does not see).
fn memory_limit(ctrd: &Containerd, runtime: &str, id: &str, exec_id: &str) -> String {
    if runtime == HUSK {
        return ctrd
            .ok(&[
                "task",
                "exec",
                "--exec-id",
                exec_id,
                id,
                "sh",
                "-c",
                // The process's own cgroup (no cgroup namespace in ctr's spec).
                "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max",
            ])
            .trim()
            .to_string();
    }
    let tasks = ctrd.ok(&["task", "ls"]);
    let pid = tasks
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("the task's pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // cgroup v1 here, cgroup v2 in the KVM test bed.
    let v1 = cgroups.lines().find_map(|l| {
        l.split_once(":memory:")
            .map(|(_, p)| format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes"))
    });
    let v2 = || {
        cgroups.lines().find_map(|l| {
            l.strip_prefix("0::")
                .map(|p| format!("/sys/fs/cgroup{p}/memory.max"))
        })
    };
    let file = v1.or_else(v2).expect("a memory cgroup");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn update_sets_the_memory_limit_of_a_running_task_like_runc() {
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    // 50 MiB: a page multiple, so cgroup v1 keeps it exactly.
    let limit = "52428800";
    for (runtime, id) in [(RUNC, "runc-upd"), (HUSK, "husk-upd")] {
        let mut args = ctrd.run_args(runtime, &config);
        // ctr's default spec mounts no cgroup filesystem.
        args.extend([
            "--mount",
            "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro",
            "-d",
            IMAGE,
            id,
            "sleep",
            "1000",
        ]);
        ctrd.ok(&args);
        ctrd.wait_status(id, "RUNNING");
        let before = memory_limit(&ctrd, runtime, id, "r1");
        assert_ne!(before, limit, "{runtime}");
        ctrd.update_memory(id, limit.parse().unwrap())
            .unwrap_or_else(|e| panic!("{runtime}: update: {e}"));
        assert_eq!(memory_limit(&ctrd, runtime, id, "r2"), limit, "{runtime}");
        ctrd.remove(id);
    }
    ctrd.finish();
}

#[test]
fn an_oom_kill_in_the_container_is_reported_as_a_task_oom_event_like_runc() {
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    // `ctr events` prints every event containerd publishes, one per line.
    let mut events = ctrd.ctr_command(&["events"]).spawn().unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    for (runtime, id) in [(RUNC, "runc-oom"), (HUSK, "husk-oom")] {
        let mut args = ctrd.run_args(runtime, &config);
        // `tail` of an endless stream without newlines buffers all of it.
        args.extend([
            "--rm",
            "--memory-limit",
            "33554432",
            IMAGE,
            id,
            "tail",
            "/dev/zero",
        ]);
        let o = ctrd.ctr(&args);
        assert_eq!(o.status.code(), Some(137), "{runtime}: {}", text(&o.stderr));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("/tasks/oom") && line.contains(id) {
                        break;
                    }
                    seen.push(line);
                }
                Err(_) => panic!("{runtime}: no /tasks/oom event for {id}; events: {seen:#?}"),
            }
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    ctrd.finish();
}

/// The CRI annotations that make a task part of pod `pod` (its sandbox,
/// or one of its containers), and the namespaces CRI gives a container:
/// its sandbox's IPC and UTS by path (any path: in a pod's VM they are
/// the guest sandbox's). Not the network: a path there names a CNI
/// namespace, which the sandbox's VM would join.
fn pod_args<'a>(sandbox: bool, pod: &'a str, annotation: &'a mut String) -> Vec<&'a str> {
    *annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    let mut args = vec![
        "--annotation",
        if sandbox {
            "io.kubernetes.cri.container-type=sandbox"
        } else {
            "io.kubernetes.cri.container-type=container"
        },
        "--annotation",
        annotation.as_str(),
    ];
    if !sandbox {
        args.extend([
            "--with-ns",
            "ipc:/proc/1/ns/ipc",
            "--with-ns",
            "uts:/proc/1/ns/uts",
        ]);
    }
    args
}

/// The VM programs (QEMU or husk-vmm) started for this containerd.
fn vm_programs(ctrd: &Containerd) -> Vec<(u32, String)> {
    processes_mentioning(ctrd.dir.path())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("qemu-system") || cmd.contains("husk-vmm"))
        .collect()
}

/// Runs `script` in task `id` until it prints `want` (the sandbox's
/// command sets things up after its task is reported running).
fn exec_until(ctrd: &Containerd, id: &str, script: &str, want: &str) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    for attempt in 0.. {
        let exec_id = format!("wait{attempt}");
        let o = ctrd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            id,
            "sh",
            "-c",
            script,
        ]);
        if text(&o.stdout).trim() == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id}: {script:?} never printed {want:?} (last: {:?} {:?})",
            text(&o.stdout),
            text(&o.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_pods_containers_share_one_vm_and_see_each_other_only_through_what_they_share() {
    let Some(env) = env() else { return };
    let ctrd = Containerd::start(&env);
    let config = ctrd.husk_config();
    let (mut a1, mut a2, mut a3) = (String::new(), String::new(), String::new());

    // The sandbox names the pod's hostname (its UTS namespace is the pod's)
    // and writes a file in its own rootfs.
    let mut args = ctrd.run_args(HUSK, &config);
    args.extend(pod_args(true, "pod1", &mut a1));
    args.extend(["--cap-add", "CAP_SYS_ADMIN", "-d", IMAGE, "pod1"]);
    args.extend([
        "sh",
        "-c",
        "hostname pod-one && echo s > /sandbox-only && exec sleep 1000",
    ]);
    ctrd.ok(&args);
    ctrd.wait_status("pod1", "RUNNING");
    exec_until(
        &ctrd,
        "pod1",
        "test -e /sandbox-only && hostname",
        "pod-one",
    );
    let vms = vm_programs(&ctrd);
    assert_eq!(vms.len(), 1, "{vms:?}");

    let mut args = ctrd.run_args(HUSK, &config);
    args.extend(pod_args(false, "pod1", &mut a2));
    args.extend(["-d", IMAGE, "app1", "sh", "-c"]);
    args.push("echo m > /member-only && exec sleep 1000");
    ctrd.ok(&args);
    ctrd.wait_status("app1", "RUNNING");

    // Still one VM program; both tasks name it.
    assert_eq!(vm_programs(&ctrd), vms, "the member got a VM of its own");
    let vm_pid = vms[0].0.to_string();
    for id in ["pod1", "app1"] {
        let ps = ctrd.ok(&["task", "ps", id]);
        assert!(
            ps.contains(&vm_pid),
            "{id}: task ps {ps} lacks the VM {vm_pid}"
        );
    }

    // Each sees its own files only; the UTS namespace is shared.
    exec_until(&ctrd, "app1", "test -e /member-only && echo ok", "ok");
    let member_view = ctrd.ok(&[
        "task",
        "exec",
        "--exec-id",
        "look",
        "app1",
        "sh",
        "-c",
        "hostname; test -e /sandbox-only && echo sandbox-file-visible || echo isolated",
    ]);
    assert_eq!(member_view.trim(), "pod-one\nisolated", "{member_view}");
    let sandbox_view = ctrd.ok(&[
        "task",
        "exec",
        "--exec-id",
        "look",
        "pod1",
        "sh",
        "-c",
        "test -e /member-only && echo member-file-visible || echo isolated",
    ]);
    assert_eq!(sandbox_view.trim(), "isolated");
    // Its own PID namespace: the member's init is its PID 1.
    let pid1 = ctrd.ok(&[
        "task",
        "exec",
        "--exec-id",
        "pid1",
        "app1",
        "sh",
        "-c",
        "cat /proc/1/cmdline",
    ]);
    assert!(pid1.contains("sleep"), "{pid1}");

    // Removing the member leaves the pod running; its slot takes the next
    // member, which sees a fresh rootfs of its own.
    ctrd.ok(&["task", "kill", "-s", "SIGKILL", "app1"]);
    ctrd.wait_status("app1", "STOPPED");
    ctrd.ok(&["task", "rm", "app1"]);
    ctrd.ok(&["container", "rm", "app1"]);
    assert_eq!(ctrd.task_status("pod1").as_deref(), Some("RUNNING"));
    let mut args = ctrd.run_args(HUSK, &config);
    args.extend(pod_args(false, "pod1", &mut a3));
    args.extend(["--rm", IMAGE, "app2", "sh", "-c"]);
    args.push("hostname; test -e /member-only && echo stale || echo fresh");
    let out = ctrd.ok(&args);
    assert_eq!(out.trim(), "pod-one\nfresh", "{out}");
    assert_eq!(vm_programs(&ctrd), vms, "the pod's VM changed");

    // The sandbox's end is the VM's: a member still running ends with it.
    let mut a4 = String::new();
    let mut args = ctrd.run_args(HUSK, &config);
    args.extend(pod_args(false, "pod1", &mut a4));
    args.extend(["-d", IMAGE, "app3", "sleep", "1000"]);
    ctrd.ok(&args);
    ctrd.wait_status("app3", "RUNNING");
    ctrd.ok(&["task", "kill", "-s", "SIGKILL", "pod1"]);
    ctrd.wait_status("pod1", "STOPPED");
    ctrd.ok(&["task", "rm", "pod1"]);
    ctrd.ok(&["container", "rm", "pod1"]);
    ctrd.wait_status("app3", "STOPPED");
    ctrd.ok(&["task", "rm", "app3"]);
    ctrd.ok(&["container", "rm", "app3"]);
    assert!(vm_programs(&ctrd).is_empty());
    let sockets: Vec<_> = walk(std::path::Path::new("/run/husk-sockets"))
        .into_iter()
        .filter(|p| p.ends_with("pod.sock"))
        .collect();
    assert!(sockets.is_empty(), "pod sockets left: {sockets:?}");
    ctrd.finish();
}
