//! `husk run` failures: each is a clear error with a non-zero status, never
//! a hang, and leaves no VM process, socket or run directory behind.

mod run_support;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use run_support::{assert_code, processes_mentioning, text};

#[test]
fn missing_kernel_says_how_to_build_one() {
    let env = run_env!();
    let out = env.run(&["--kernel", "/nonexistent/vmlinux", "busybox", "true"]);
    assert_code(&out, 125);
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/vmlinux") && err.contains("guest-kernel-config/build.sh"),
        "{err}"
    );
    env.assert_clean();
}

#[test]
fn command_that_does_not_exist_is_127() {
    let env = run_env!();
    let out = env.run(&["busybox", "/no/such/command", "arg"]);
    assert_code(&out, 127);
    let err = text(&out.stderr);
    assert!(
        err.contains("/no/such/command") && err.contains("No such file"),
        "{err}"
    );
    env.assert_clean();
}

fn layer_disks(env: &run_support::RunEnv) -> Vec<std::path::PathBuf> {
    let layerdb = env.store.root().join("layerdb").join("sha256");
    let mut disks: Vec<_> = std::fs::read_dir(&layerdb)
        .expect("layerdb")
        .flatten()
        .map(|e| e.path().join("layer.erofs"))
        .filter(|p| p.is_file())
        .collect();
    disks.sort();
    assert_eq!(disks.len(), 3, "busybox has three layers");
    disks
}

#[test]
fn missing_layer_disk_is_reported_before_boot() {
    let env = run_env!();
    let disk = layer_disks(&env).remove(0);
    std::fs::remove_file(&disk).unwrap();
    let started = Instant::now();
    let out = env.run(&["busybox", "true"]);
    assert_code(&out, 125);
    let err = text(&out.stderr);
    assert!(err.contains("import the image again"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no VM should have been started"
    );
    env.assert_clean();
}

#[test]
fn corrupt_layer_disk_is_a_clear_error() {
    let env = run_env!();
    for disk in layer_disks(&env) {
        // Same size, no erofs superblock: the guest cannot mount it.
        let len = std::fs::metadata(&disk).unwrap().len() as usize;
        std::fs::write(&disk, vec![0x5a; len]).unwrap();
    }
    let out = env.run(&["busybox", "true"]);
    assert_code(&out, 125);
    let err = text(&out.stderr);
    assert!(err.contains("creating the container failed"), "{err}");
    assert!(err.contains("layer") || err.contains("mount"), "{err}");
    env.assert_clean();
}

#[test]
fn guest_dying_mid_run_is_an_error_not_a_hang() {
    let env = run_env!();
    let mut cmd = env.command(&["busybox", "sh", "-c", "echo started; sleep 60"]);
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn husk");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 64];
    let n = stdout.read(&mut buf).expect("read stdout");
    assert!(
        text(&buf[..n]).contains("started"),
        "got {:?}",
        text(&buf[..n])
    );

    // The VM process is the one naming this store's socket.
    let vms: Vec<_> = processes_mentioning(env.store.root())
        .into_iter()
        .filter(|(pid, _)| *pid != child.id())
        .collect();
    assert_eq!(vms.len(), 1, "expected one VM process: {vms:?}");
    unsafe { libc::kill(vms[0].0 as i32, libc::SIGKILL) };

    let killed = Instant::now();
    let out = run_support::wait_with_timeout(child, Duration::from_secs(30), &["guest dies"]);
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "husk took {:?} to notice",
        killed.elapsed()
    );
    assert_code(&out, 125);
    let err = text(&out.stderr);
    assert!(err.contains("the VM ended"), "{err}");
    env.assert_clean();
}

/// husk killed outright (SIGKILL) cannot clean up: its VM dies with it, and
/// the next run removes the orphaned run directory.
#[test]
fn husk_killed_outright_leaves_nothing_after_the_next_run() {
    let env = run_env!();
    let mut cmd = env.command(&["busybox", "sh", "-c", "echo started; sleep 60"]);
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn husk");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 64];
    let n = stdout.read(&mut buf).expect("read stdout");
    if !text(&buf[..n]).contains("started") {
        // husk ended (or wrote something else) before the container did:
        // its stderr says why.
        let _ = child.kill();
        let out = child.wait_with_output().expect("reap husk");
        panic!(
            "no 'started' from the container (stdout {:?}); husk's stderr:\n{}",
            text(&buf[..n]),
            text(&out.stderr)
        );
    }
    child.kill().expect("SIGKILL husk");
    child.wait().expect("reap husk");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(env.store.root()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the VM outlived husk: {:?}",
            processes_mentioning(env.store.root())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let leftovers = std::fs::read_dir(env.run_dir()).unwrap().count();
    assert_eq!(
        leftovers, 1,
        "the killed run's directory is there until the next run"
    );
    let out = env.run(&["busybox", "true"]);
    assert_code(&out, 0);
    env.assert_clean();
}
