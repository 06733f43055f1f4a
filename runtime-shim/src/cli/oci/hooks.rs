//! OCI hooks, run on the host with the container's state on stdin, each
//! within its timeout.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use oci_spec::runtime::Hook;

/// Runs `hooks` in order; the first failure is the error (the caller
/// decides whether it fails the step).
pub fn run(kind: &str, hooks: &[Hook], state_json: &[u8]) -> anyhow::Result<()> {
    for (index, hook) in hooks.iter().enumerate() {
        run_one(hook, state_json)
            .with_context(|| format!("{kind} hook #{index} ({})", hook.path().display()))?;
    }
    Ok(())
}

fn run_one(hook: &Hook, state_json: &[u8]) -> anyhow::Result<()> {
    let mut command = Command::new(hook.path());
    // args[0] is the hook's argv[0], as in execv.
    if let Some(args) = hook.args() {
        if let Some(first) = args.first() {
            std::os::unix::process::CommandExt::arg0(&mut command, first);
        }
        command.args(args.iter().skip(1));
    }
    if let Some(env) = hook.env() {
        command.env_clear();
        for pair in env {
            if let Some((k, v)) = pair.split_once('=') {
                command.env(k, v);
            }
        }
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("cannot start it")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state_json);
    }
    let timeout = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {}s", timeout.unwrap_or_default().as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        bail!("failed ({status}): {}", stderr.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    #[test]
    fn hooks_get_the_state_and_fail_on_error_or_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let ok = HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".to_string(),
                "-c".to_string(),
                format!("cat > {}", out.display()),
            ])
            .build()
            .unwrap();
        run("prestart", &[ok], b"{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"x\"}");

        let failing = HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".into(),
                "-c".into(),
                "echo nope >&2; exit 3".into(),
            ])
            .build()
            .unwrap();
        let e = format!("{:#}", run("poststop", &[failing], b"{}").unwrap_err());
        assert!(e.contains("poststop hook #0") && e.contains("nope"), "{e}");

        let slow = HookBuilder::default()
            .path("/bin/sleep")
            .args(vec!["sleep".into(), "30".into()])
            .timeout(1i64)
            .build()
            .unwrap();
        let started = Instant::now();
        let e = format!("{:#}", run("createRuntime", &[slow], b"{}").unwrap_err());
        assert!(e.contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
