//! The one wrapper through which the benchmark runs helper commands: a
//! failure carries the command line and its stderr.

use std::process::{Command, Stdio};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExternalError {
    #[error("cannot start {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` to completion and returns its stdout.
pub fn stdout_of(mut cmd: Command) -> Result<String, ExternalError> {
    let command = describe(&cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ExternalError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(ExternalError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_is_returned() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello"]);
        assert_eq!(stdout_of(cmd).unwrap(), "hello\n");
    }

    #[test]
    fn failure_carries_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo broken >&2; exit 3"]);
        let err = stdout_of(cmd).unwrap_err().to_string();
        assert!(err.contains("broken"), "{err}");
        assert!(err.contains("sh -c"), "{err}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = stdout_of(Command::new("/nonexistent/husk-bench-tool")).unwrap_err();
        assert!(matches!(err, ExternalError::Spawn { .. }));
    }
}
