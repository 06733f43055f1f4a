//! Following a process of a running container from the command that
//! started it: its exit status, with the command's own signals forwarded
//! to it (and its window size, for a terminal).
//!
//! A detached exec gets a waiter: a small detached process that follows
//! the exec'd process the same way and exits with its status, so that the
//! pid written by `exec --detach --pid-file` stands for that process (who
//! waits on it learns its exit; who signals it signals the process).

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::control::{ControlClient, ControlError, ControlReply, ControlRequest};
use super::instance::INIT_PROCESS;
use super::state::{StateDir, Status};
use super::ContainerError;
use crate::sandbox::signals::SignalWatch;
use crate::sandbox::terminal;

/// Waits for the init (or `process`) to exit, forwarding our signals to it;
/// its shell exit code.
pub fn wait_forwarding(
    root: &Path,
    id: &str,
    process: Option<(u32, ControlClient)>,
    signals: Option<&SignalWatch>,
    terminal: bool,
) -> Result<i32, ContainerError> {
    let dir = StateDir::open(root, id)?;
    let (target, mut client) = match process {
        Some((p, c)) => (p, c),
        None => {
            let state = dir.load()?;
            if state.status == Status::Stopped {
                return Ok(state.exit.map(|s| s.shell_code()).unwrap_or(137));
            }
            match ControlClient::send(&dir.socket(), &ControlRequest::Wait { process: None }, &[]) {
                Ok(c) => (INIT_PROCESS, c),
                Err(_) => return Ok(super::final_exit(&dir)?.shell_code()),
            }
        }
    };
    loop {
        let (conn_ready, sig_ready) = {
            let mut fds = vec![PollFd::new(client.stream().as_fd(), PollFlags::POLLIN)];
            if let Some(s) = signals {
                fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(ControlError::Io(e.into()).into()),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if sig_ready {
            if let Some(watch) = signals {
                while let Some(sig) = watch.next() {
                    let request = if sig == Signal::SIGWINCH {
                        if !terminal {
                            continue;
                        }
                        let Some((rows, cols)) = terminal::host_window_size() else {
                            continue;
                        };
                        ControlRequest::Resize {
                            process: target,
                            rows,
                            cols,
                        }
                    } else {
                        ControlRequest::Signal {
                            process: Some(target),
                            signal: sig as i32,
                            all: false,
                        }
                    };
                    if let Ok(mut c) = ControlClient::send(&dir.socket(), &request, &[]) {
                        let _ = c.reply();
                    }
                }
            }
        }
        if conn_ready {
            match client.reply() {
                Ok(ControlReply::Exited { status }) => return Ok(status.shell_code()),
                Ok(_) => continue,
                // The monitor ended without answering us.
                Err(ControlError::Closed | ControlError::Io(_)) if target == INIT_PROCESS => {
                    return Ok(super::final_exit(&dir)?.shell_code());
                }
                Err(ControlError::Closed | ControlError::Io(_)) => return Ok(137),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The argument that turns a husk binary into an exec's waiter.
pub const EXEC_WAITER_ARG: &str = "__exec-wait";

/// Starts the waiter of process `process` of the container in `dir`
/// (detached: own session, stdio closed); its pid.
pub fn spawn_exec_waiter(dir: &StateDir, process: u32) -> std::io::Result<i32> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg(EXEC_WAITER_ARG)
        .arg(dir.path())
        .arg(process.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command.spawn()?.id() as i32)
}

/// The waiter: follows `process`, forwarding the signals it gets; exits
/// with the process's shell status (128+N for a signal).
pub fn exec_waiter_main(dir: &Path, process: u32) -> i32 {
    let Some((root, id)) = dir.parent().zip(dir.file_name().and_then(|n| n.to_str())) else {
        return 125;
    };
    let Ok(signals) = SignalWatch::new() else {
        return 125;
    };
    let Ok(state_dir) = StateDir::open(root, id) else {
        return 125;
    };
    let client = match ControlClient::send(
        &state_dir.socket(),
        &ControlRequest::Wait {
            process: Some(process),
        },
        &[],
    ) {
        Ok(client) => client,
        Err(_) => return 137,
    };
    wait_forwarding(root, id, Some((process, client)), Some(&signals), false).unwrap_or(137)
}
