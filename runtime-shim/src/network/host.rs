//! Host commands: iproute2 (`ip`, `tc`) and `nft`, the tools every Debian
//! host has for this (scripts/setup.sh installs them), run with their
//! output captured so a failure names the command and what it said.

use std::io::Write;
use std::process::{Command, Stdio};

use super::NetworkError;

/// Runs `program args`; its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetworkError> {
    run_with_input(program, args, None)
}

/// As [`run`], with `input` on stdin (`nft -f -`).
pub fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, NetworkError> {
    let shown = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Command {
            command: shown(),
            message: if e.kind() == std::io::ErrorKind::NotFound {
                format!("{program} is not installed (Debian: iproute2, nftables)")
            } else {
                e.to_string()
            },
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| NetworkError::Command {
                command: shown(),
                message: e.to_string(),
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| NetworkError::Command {
            command: shown(),
            message: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(NetworkError::Command {
            command: shown(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String, NetworkError> {
    run("ip", args)
}

/// Whether a link of that name exists (in this network namespace).
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
        || ip(&["link", "show", "dev", name]).is_ok()
}

/// Sets a sysctl under /proc/sys (of this network namespace).
pub fn sysctl(key: &str, value: &str) -> Result<(), NetworkError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| NetworkError::Command {
        command: format!("sysctl {key}={value}"),
        message: e.to_string(),
    })
}
