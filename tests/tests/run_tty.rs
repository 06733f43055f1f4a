//! `husk run -t` / `-it` under a real terminal: util-linux `script` gives
//! husk a pty as its stdin/stdout, the way a user's terminal would.

mod run_support;

use std::io::Write;
use std::process::{Command, Stdio};

use run_support::{text, wait_with_timeout, RunEnv};

fn script_available() -> bool {
    Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `script -qec "stty rows 33 cols 99; husk ... run ARGS" /dev/null`.
fn under_terminal(env: &RunEnv, args: &str) -> Command {
    let husk = env.store.husk.display();
    let line = format!(
        "stty rows 33 cols 99; {husk} --store {} run --backend {} {args}",
        env.store.root().display(),
        env.backend
    );
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("HUSK_KERNEL", &env.kernel)
        .env("HUSK_AGENT", &env.agent)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn tty_gives_the_container_a_terminal_of_the_host_size() {
    let env = run_env!();
    if !script_available() {
        husk_e2e::skip!("util-linux `script` is not installed");
    }
    let mut cmd = under_terminal(
        &env,
        "-t busybox sh -c 'stty size; test -t 0 && test -t 1 && echo both-ttys; exit 7'",
    );
    cmd.stdin(Stdio::null());
    let out = wait_with_timeout(
        cmd.spawn().expect("spawn script"),
        run_support::RUN_TIMEOUT,
        &["-t"],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout:?}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("33 99"), "{stdout:?}");
    assert!(stdout.contains("both-ttys"), "{stdout:?}");
    env.assert_clean();
}

#[test]
fn interactive_tty_takes_typed_input_and_restores_the_terminal() {
    let env = run_env!();
    if !script_available() {
        husk_e2e::skip!("util-linux `script` is not installed");
    }
    // After husk exits, the outer shell prints the terminal's mode: raw
    // mode must have been undone (icanon and echo back on).
    let mut cmd = under_terminal(&env, "-it busybox sh; echo status=$?; stty -a");
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn script");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"echo typed-$((6*7))\nexit 5\n")
        .expect("type");
    // Our end stays open until the run ends: EOF would end the session early.
    let out = wait_with_timeout(child, run_support::RUN_TIMEOUT, &["-it"]);
    drop(stdin);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("typed-42"), "{stdout:?}");
    assert!(stdout.contains("status=5"), "{stdout:?}");
    let modes = stdout.rsplit("status=5").next().unwrap_or_default();
    assert!(
        modes.contains(" icanon") && modes.contains(" echo "),
        "terminal left raw: {modes:?}"
    );
    env.assert_clean();
}
