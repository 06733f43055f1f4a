//! The one way the image store runs an external program: capture its
//! output and, on failure, report its exit status and stderr.

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {program} (is it installed? scripts/setup.sh installs it)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

pub fn run(command: &mut Command) -> Result<Output, CommandError> {
    let program = command.get_program().to_string_lossy().into_owned();
    tracing::debug!(?command, "running");
    let output = command.output().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(CommandError::Failed {
            program,
            status: output.status,
            stderr,
        });
    }
    Ok(output)
}
