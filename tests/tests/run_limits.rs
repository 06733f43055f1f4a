//! `husk run` resource limits and signals, end to end in a microVM.

mod run_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use run_support::{assert_code, text};

/// The container's own process (PID 1) is killed by the OOM killer when it
/// holds more than `--memory`: status 128+SIGKILL. (`tail` of an endless
/// line keeps all of it in memory.) This is also the "killed by a signal"
/// case: a PID-namespace init ignores signals it sends itself (`kill -9 $$`
/// does nothing to PID 1, as under Docker), but not the OOM killer.
#[test]
fn memory_limit_kills_what_allocates_past_it() {
    let env = run_env!();
    let out = env.run(&["--memory", "32M", "busybox", "tail", "/dev/zero"]);
    assert_code(&out, 137);
    // A child that allocates too much dies; the container goes on.
    let out = env.run(&[
        "--memory",
        "32M",
        "busybox",
        "sh",
        "-c",
        "head -c 104857600 /dev/zero | tail; echo tail=$?; head -c 8388608 /dev/zero | tail | wc -c",
    ]);
    assert_code(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "tail=137\n8388608\n",
        "stderr: {}",
        text(&out.stderr)
    );
    env.assert_clean();
}

/// `--cpus 2` gives the VM two vCPUs, both brought up by the guest kernel
/// (on husk-vmm this needs a working MP table and SMP start-up; only
/// nested-PVM hosts are limited to one).
#[test]
fn cpus_gives_the_vm_that_many_online_cpus() {
    let env = run_env!();
    let out = env.run(&[
        "--cpus",
        "2",
        "busybox",
        "sh",
        "-c",
        "nproc; grep -c ^processor /proc/cpuinfo",
    ]);
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "2\n2\n", "stderr: {}", text(&out.stderr));
    env.assert_clean();
}

#[test]
fn pids_limit_stops_forks() {
    let env = run_env!();
    let script = "for i in $(seq 20); do sleep 5 & done; echo forked";
    let out = env.run(&["--pids-limit", "10", "busybox", "sh", "-c", script]);
    assert_ne!(out.status.code(), Some(0), "stdout: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("can't fork"),
        "stderr: {}",
        text(&out.stderr)
    );
    // The same script fits under the default limit.
    let out = env.run(&["busybox", "sh", "-c", script]);
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "forked\n");
    env.assert_clean();
}

#[test]
fn sigterm_is_forwarded_to_the_container() {
    let env = run_env!();
    let mut cmd = env.command(&[
        "busybox",
        "sh",
        "-c",
        "trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 1; done",
    ]);
    cmd.stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn husk");
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("stdout");
    // Wait for "ready" so the trap is installed, then signal husk.
    let mut seen = Vec::new();
    let deadline = Instant::now() + run_support::RUN_TIMEOUT;
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        assert!(Instant::now() < deadline, "container never said ready");
        let n = std::io::Read::read(&mut stdout, &mut buf).expect("read stdout");
        assert!(n > 0, "husk closed stdout before ready");
        seen.extend_from_slice(&buf[..n]);
    }
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let started = Instant::now();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).expect("read stdout");
    let status = child.wait().expect("wait husk");
    assert!(started.elapsed() < Duration::from_secs(60));
    seen.extend_from_slice(&rest);
    assert_eq!(status.code(), Some(3), "stdout: {}", text(&seen));
    assert!(text(&seen).contains("got TERM"), "stdout: {}", text(&seen));
    env.assert_clean();
}

/// A container that ignores SIGINT (as a PID-namespace init without a
/// handler does too): forwarded Ctrl-Cs do nothing to it, and the third
/// one gives up on the container: status 130, VM gone.
#[test]
fn repeated_ctrl_c_abandons_a_container_that_ignores_it() {
    let env = run_env!();
    let mut cmd = env.command(&[
        "busybox",
        "sh",
        "-c",
        "trap '' INT; echo ready; while true; do sleep 1; done",
    ]);
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn husk");
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut stdout, &mut buf).expect("read stdout");
    assert!(text(&buf[..n]).contains("ready"));
    let started = Instant::now();
    for _ in 0..3 {
        unsafe { libc::kill(pid, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = run_support::wait_with_timeout(child, Duration::from_secs(30), &["ctrl-c"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_code(&out, 130);
    assert!(
        text(&out.stderr).contains("repeated SIGINT"),
        "{}",
        text(&out.stderr)
    );
    env.assert_clean();
}

/// Ctrl-C while the VM boots stops the run cleanly.
#[test]
fn ctrl_c_during_boot_stops_cleanly() {
    let env = run_env!();
    let child = env
        .command(&["busybox", "true"])
        .spawn()
        .expect("spawn husk");
    // The run directory appears just before the VM starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(env.run_dir()).map_or(true, |mut d| d.next().is_none()) {
        assert!(Instant::now() < deadline, "no run directory appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = run_support::wait_with_timeout(child, Duration::from_secs(30), &["ctrl-c boot"]);
    // A very fast host may have finished already.
    if out.status.code() != Some(0) {
        assert_code(&out, 130);
        assert!(
            text(&out.stderr).contains("interrupted by SIGINT"),
            "{}",
            text(&out.stderr)
        );
    }
    env.assert_clean();
}

/// Whether `/sys/fs/cgroup` is a cgroup v2 mount (the KVM test bed mounts
/// one; this development host's is a cgroup v1 tmpfs).
fn cgroup2_mounted() -> bool {
    let path = std::ffi::CString::new("/sys/fs/cgroup").unwrap();
    // SAFETY: a NUL-terminated path and a zeroed statfs to fill.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::statfs(path.as_ptr(), &mut fs) } == 0;
    ok && fs.f_type == libc::CGROUP2_SUPER_MAGIC
}

/// The VM process (husk-vmm or QEMU) of a detached container sits in a
/// cgroup v2 of its own, `husk/<id>`, whose limits follow `--memory` and
/// `--cpus`, and which is gone once the container is removed. Where there
/// is no cgroup v2 hierarchy, `husk check` says so, and the test skips.
#[test]
fn the_vm_process_runs_in_a_cgroup_of_its_own() {
    let probe = husk_e2e::fixtures::TestStore::new();
    let check = std::process::Command::new(&probe.husk)
        .args(["check", "--json"])
        .output()
        .expect("husk check");
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).expect("check JSON");
    let available = report["vm_cgroup"]["available"].as_bool();
    let reason = report["vm_cgroup"]["reason"].as_str().unwrap_or("");
    if !cgroup2_mounted() {
        assert_eq!(available, Some(false), "{}", report["vm_cgroup"]);
        assert!(
            !reason.is_empty(),
            "no reason given: {}",
            report["vm_cgroup"]
        );
        let check = std::process::Command::new(&probe.husk)
            .arg("check")
            .output()
            .expect("husk check");
        let line = text(&check.stdout)
            .lines()
            .find(|l| l.trim_start().starts_with("per-VM cgroup"))
            .map(str::to_string)
            .unwrap_or_default();
        assert!(
            line.trim_start().starts_with("per-VM cgroup        no: ") && line.len() > 30,
            "husk check: {line:?}"
        );
        husk_e2e::skip_host!("no cgroup v2 hierarchy at /sys/fs/cgroup: {reason}");
    }
    assert_eq!(available, Some(true), "{}", report["vm_cgroup"]);
    let env = run_env!();
    let husk = |args: &[&str]| {
        let out = run_support::wait_with_timeout(
            env.husk_command(args).spawn().expect("spawn husk"),
            run_support::RUN_TIMEOUT,
            args,
        );
        assert_code(&out, 0);
        text(&out.stdout)
    };
    let id = husk(&[
        "run",
        "-d",
        "--backend",
        &env.backend,
        "--cpus",
        "1.5",
        "--memory",
        "64M",
        "busybox",
        "sleep",
        "600",
    ])
    .trim()
    .to_string();
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.store
                .root()
                .join("containers")
                .join(&id)
                .join("state.json"),
        )
        .expect("state.json"),
    )
    .unwrap();
    let vmm_pid = state["vmm_pid"].as_i64().expect("the VM's pid");
    let membership = std::fs::read_to_string(format!("/proc/{vmm_pid}/cgroup")).unwrap();
    assert_eq!(membership, format!("0::/husk/{id}\n"));
    let dir = std::path::Path::new("/sys/fs/cgroup/husk").join(&id);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .to_string()
    };
    // Guest RAM: 64 MiB + 128 MiB of headroom for the guest kernel and
    // agent; then the VM program's own overhead (SECURITY.md).
    let overhead = if env.backend == "husk" { 128 } else { 512 };
    assert_eq!(
        read("memory.max"),
        ((64 + 128 + overhead) << 20).to_string()
    );
    assert_eq!(read("cpu.max"), "150000 100000");
    // --cpus 1.5 gives two vCPUs.
    assert_eq!(read("pids.max"), "130");
    if dir.join("memory.swap.max").exists() {
        assert_eq!(read("memory.swap.max"), "0");
    }
    assert!(read("cgroup.procs")
        .lines()
        .any(|p| p == vmm_pid.to_string()));

    husk(&["rm", "-f", &id]);
    assert!(!dir.exists(), "{} is left after rm", dir.display());
    env.assert_clean();
}
