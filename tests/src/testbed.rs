//! The KVM test bed (`tests/kvm-testbed/testbed.sh`): runs a command inside
//! a QEMU TCG virtual machine ("L1") whose /dev/kvm is a real KVM on
//! emulated AMD SVM, chrooted into this host's root (shared read-only), so
//! the workspace's binaries run there unchanged on real KVM semantics.
//!
//! Build what the command needs before calling [`run`]: L1 reads `target/`
//! over 9p, and a concurrent rebuild races with it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `testbed.sh run` exit status when the command outlived `--timeout`.
pub const EXIT_TIMEOUT: i32 = 124;
/// `testbed.sh run` exit status when the bed itself failed (L1 did not boot,
/// a module did not load, no /dev/kvm, bad arguments).
pub const EXIT_BED_FAILED: i32 = 125;

/// Time `testbed.sh run` may take beyond its own `--timeout` (its preparing
/// step, cleaning up) before this harness kills its process group.
const SCRIPT_SLACK: Duration = Duration::from_secs(300);
/// How long the script gets to clean up after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(20);

/// Path of `testbed.sh` in this checkout.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kvm-testbed")
        .join("testbed.sh")
}

/// Why the test bed cannot run on this host, or None when it can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "the KVM test bed needs root (QEMU shares the host's root into its VM)".into(),
        );
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Some(
            "qemu-system-x86_64 is not installed (tests/kvm-testbed/testbed.sh prepare installs it)"
                .into(),
        );
    }
    None
}

/// How to run a command in the bed.
#[derive(Clone, Debug)]
pub struct Options {
    /// Hard limit on the whole run, L1's boot included (`--timeout`).
    pub timeout: Duration,
    /// L1's vCPUs (`--smp`).
    pub smp: u32,
    /// L1's memory in MiB (`--mem`).
    pub mem_mib: u32,
    /// Variables passed into L1 beyond PATH, HOME, CI, RUST_BACKTRACE and
    /// HUSK_* (`--env`).
    pub env: Vec<String>,
    /// Directory to run in (default: this process's); it must not be under
    /// /tmp, /run or /dev/shm, which L1 covers with fresh tmpfs.
    pub cwd: Option<PathBuf>,
    /// Extra environment for the `testbed.sh` process itself (not passed
    /// into L1 unless also named in `env`).
    pub script_env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(1800),
            smp: 2,
            mem_mib: 4096,
            env: Vec::new(),
            cwd: None,
            script_env: Vec::new(),
        }
    }
}

/// How a run in the bed ended (from `testbed.sh`'s HUSK_TESTBED_RESULT, so
/// a command's own 124 or 125 is not mistaken for the bed's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran and exited with this status (128+N: killed by signal N).
    Exited(i32),
    /// The run hit its `--timeout`; QEMU was killed.
    TimedOut,
    /// The bed could not run the command: the reason.
    BedFailed(String),
    /// `testbed.sh` was stopped by this signal.
    Interrupted(String),
}

/// What a run in the bed gave back.
#[derive(Debug)]
pub struct BedOutput {
    pub outcome: Outcome,
    /// The status of `testbed.sh run`: the command's own, or
    /// [`EXIT_TIMEOUT`] / [`EXIT_BED_FAILED`].
    pub status: ExitStatus,
    /// The command's stdout.
    pub stdout: Vec<u8>,
    /// The command's stderr, mixed with L1's console and the bed's
    /// `testbed:` messages.
    pub stderr: Vec<u8>,
}

impl BedOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Builds (or finds cached) the bed's L1 kernel and initramfs
/// (`testbed.sh prepare`) and returns their directory.
pub fn prepare() -> Result<PathBuf, String> {
    let out = Command::new(script())
        .arg("prepare")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "testbed.sh prepare failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .ok_or_else(|| format!("testbed.sh prepare printed no directory: {stdout}"))
}

/// Runs `cmd` in the bed and returns its status and output. Errors only
/// when the script could not be started or had to be killed by this
/// harness (it outlived its own timeout by [`SCRIPT_SLACK`]); the bed's own
/// failures come back as [`EXIT_BED_FAILED`].
pub fn run<S: AsRef<std::ffi::OsStr>>(opts: &Options, cmd: &[S]) -> Result<BedOutput, String> {
    let mut command = Command::new(script());
    command
        .arg("run")
        .arg("--timeout")
        .arg(opts.timeout.as_secs().max(1).to_string())
        .arg("--smp")
        .arg(opts.smp.to_string())
        .arg("--mem")
        .arg(opts.mem_mib.to_string());
    for name in &opts.env {
        command.arg("--env").arg(name);
    }
    command.arg("--").args(cmd);
    let result_dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let result_file = result_dir.path().join("result");
    command.env("HUSK_TESTBED_RESULT", &result_file);
    if let Some(dir) = &opts.cwd {
        command.current_dir(dir);
    }
    command
        .envs(opts.script_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: QEMU stays in it, so killing the group
        // leaves nothing behind even if the script cannot clean up.
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", script().display()))?;
    let pgid = child.id() as libc::pid_t;
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());

    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(opts.timeout + SCRIPT_SLACK) {
        Ok(status) => status.map_err(|e| format!("waiting for testbed.sh: {e}"))?,
        Err(_) => {
            // SAFETY: signalling a process group we created; no memory involved.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            if rx.recv_timeout(TERM_GRACE).is_err() {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = rx.recv();
            }
            let _ = waiter.join();
            let err = stderr.join().unwrap_or_default();
            return Err(format!(
                "testbed.sh run {:?} did not end {SCRIPT_SLACK:?} after its {:?} timeout; killed. stderr:\n{}",
                cmd.iter().map(|a| a.as_ref().to_owned()).collect::<Vec<_>>(),
                opts.timeout,
                String::from_utf8_lossy(&err)
            ));
        }
    };
    let _ = waiter.join();
    let outcome = match std::fs::read_to_string(&result_file) {
        Ok(line) => parse_outcome(line.trim_end()),
        Err(e) => Outcome::BedFailed(format!(
            "testbed.sh ended ({status}) without writing its result ({e})"
        )),
    };
    Ok(BedOutput {
        outcome,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn parse_outcome(line: &str) -> Outcome {
    let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
    match kind {
        "exit" => match rest.parse() {
            Ok(code) => Outcome::Exited(code),
            Err(_) => Outcome::BedFailed(format!("unreadable result: {line}")),
        },
        "timeout" => Outcome::TimedOut,
        "interrupted" => Outcome::Interrupted(rest.to_owned()),
        "bed-failed" => Outcome::BedFailed(rest.to_owned()),
        "crashed" | "stalled" => Outcome::BedFailed(line.to_owned()),
        _ => Outcome::BedFailed(format!("unreadable result: {line}")),
    }
}

fn read_all(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parse() {
        assert_eq!(parse_outcome("exit 0"), Outcome::Exited(0));
        assert_eq!(parse_outcome("exit 125"), Outcome::Exited(125));
        assert_eq!(parse_outcome("timeout"), Outcome::TimedOut);
        assert_eq!(
            parse_outcome("bed-failed L1 could not run the command: insmod kvm_amd failed"),
            Outcome::BedFailed("L1 could not run the command: insmod kvm_amd failed".into())
        );
        assert_eq!(
            parse_outcome("interrupted SIGTERM"),
            Outcome::Interrupted("SIGTERM".into())
        );
        assert!(matches!(parse_outcome("exit x"), Outcome::BedFailed(_)));
        assert!(matches!(parse_outcome(""), Outcome::BedFailed(_)));
    }
}
