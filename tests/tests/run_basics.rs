//! `husk run` end to end (a real guest kernel and agent in a microVM):
//! exit codes, stdio, environment, identity, PID 1 and layer isolation.
//! Each run boots a VM; under QEMU TCG that is a few seconds.

mod run_support;

use run_support::{assert_code, text};

#[test]
fn exit_codes_pass_through() {
    let env = run_env!();
    for code in [0, 1, 42] {
        let out = env.run(&["--rm", "busybox", "sh", "-c", &format!("exit {code}")]);
        assert_code(&out, code);
        env.assert_clean();
    }
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    let env = run_env!();
    let out = env.run(&[
        "busybox",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; echo more-out",
    ]);
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "to-out\nmore-out\n");
    let err = text(&out.stderr);
    assert!(err.lines().any(|l| l == "to-err"), "stderr: {err}");
    assert!(!err.contains("to-out"), "stdout leaked into stderr: {err}");
    env.assert_clean();
}

#[test]
fn stdin_is_piped_through_with_i_and_closed_without() {
    let env = run_env!();
    // Larger than one flow-control window (256 KiB) in each direction.
    let input: Vec<u8> = (0..600_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = env.run_with_input(
        &["-i", "busybox", "sh", "-c", "cat; echo END"],
        Some(&input),
    );
    assert_code(&out, 0);
    let mut expected = input.clone();
    expected.extend_from_slice(b"END\n");
    assert!(
        out.stdout == expected,
        "echoed {} bytes, expected {}",
        out.stdout.len(),
        expected.len()
    );

    // Without -i the container's stdin is empty (it does not wait for ours).
    let out = env.run_with_input(&["busybox", "sh", "-c", "wc -c"], Some(b"ignored"));
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout).trim(), "0");
    env.assert_clean();
}

#[test]
fn env_workdir_user_and_hostname_are_applied() {
    let env = run_env!();
    let out = env.run(&[
        "-e",
        "GREETING=hello world",
        "-w",
        "/opt/data",
        "-u",
        "1000:1000",
        "--group-add",
        "10",
        "--group-add",
        "20",
        "--hostname",
        "box1",
        "busybox",
        "sh",
        "-c",
        "echo \"$GREETING\"; pwd; id -u; id -g; id -G; hostname; echo \"$PATH\"",
    ]);
    assert_code(&out, 0);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "hello world",
            "/opt/data",
            "1000",
            "1000",
            "1000 10 20",
            "box1",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ],
        "stderr: {}",
        text(&out.stderr)
    );
    env.assert_clean();
}

#[test]
fn the_command_is_pid_1() {
    let env = run_env!();
    let out = env.run(&[
        "busybox",
        "sh",
        "-c",
        "echo $$; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert_code(&out, 0);
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("1"), "{stdout}");
    assert!(
        lines.next().is_some_and(|l| l.starts_with("sh -c")),
        "{stdout}"
    );
}

#[test]
fn writes_stay_in_their_run_and_deletions_of_lower_files_hold() {
    let env = run_env!();
    let disks_before = layer_disk_hashes(&env);
    let out = env.run(&[
        "busybox",
        "sh",
        "-c",
        "echo data > /written && rm /etc/motd && rm -r /opt/data && \
         test ! -e /etc/motd && test ! -e /opt/data/new && test ! -e /var/lib/todelete && \
         cat /written && ls /opt",
    ]);
    assert_code(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "data\ndev\n",
        "stderr: {}",
        text(&out.stderr)
    );

    let out = env.run(&[
        "busybox",
        "sh",
        "-c",
        "test ! -e /written && cat /etc/motd /opt/data/new && ls /opt/data",
    ]);
    assert_code(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "Welcome to a husk microVM.\nnew in layer 3\nnew\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(layer_disk_hashes(&env), disks_before, "layer disks changed");
    env.assert_clean();
}

/// sha256 of every layer disk in the store (they are shared and read-only).
fn layer_disk_hashes(env: &run_support::RunEnv) -> Vec<(String, String)> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    let mut pending = vec![env.store.root().to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "erofs") {
                let hash = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
                out.push((path.display().to_string(), hash));
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no layer disks found in the store");
    out
}

/// `husk run busybox yes | head -1`: when the reader of husk's stdout goes
/// away, the run ends (status 141, as SIGPIPE would) instead of running on.
#[test]
fn closed_stdout_ends_the_run() {
    let env = run_env!();
    let mut child = env
        .command(&["busybox", "yes"])
        .spawn()
        .expect("spawn husk");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 2];
    std::io::Read::read_exact(&mut stdout, &mut buf).expect("first line");
    assert_eq!(&buf, b"y\n");
    drop(stdout);
    let closed = std::time::Instant::now();
    let out = run_support::wait_with_timeout(child, std::time::Duration::from_secs(30), &["yes"]);
    assert!(closed.elapsed() < std::time::Duration::from_secs(15));
    assert_code(&out, 141);
    env.assert_clean();
}
