//! One measured VM: spawn the VMM under the interposer, wait for its first
//! KVM_RUN, let it run for a fixed settle time, sample its memory, kill it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use thiserror::Error;

use crate::memory::{self, MemoryError, MemorySample};
use crate::stamp::{parse_stamp_log, StampError, StampLog};
use crate::vmms::{command, GuestSpec, RunPaths, Vmm};

/// Environment variable naming the interposer's record file.
pub const STAMP_FILE_ENV: &str = "HUSK_BENCH_STAMP_FILE";

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{vmm} exited ({status}) before {stage}; its output:\n{output}")]
    Exited {
        vmm: &'static str,
        status: std::process::ExitStatus,
        stage: &'static str,
        output: String,
    },
    #[error("{vmm} made no KVM_RUN within {0:?}; its output:\n{output}", .timeout)]
    Timeout {
        vmm: &'static str,
        timeout: Duration,
        output: String,
    },
    #[error("{vmm} registered no guest memory with KVM")]
    NoGuestMemory { vmm: &'static str },
    #[error("interposer records: {0}")]
    Stamp(#[from] StampError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

#[derive(Clone, Debug)]
pub struct RunSettings {
    /// The LD_PRELOAD interposer (built by build.rs).
    pub interposer: PathBuf,
    /// How long after the first KVM_RUN memory is sampled.
    pub settle: Duration,
    /// Longest wait for the first KVM_RUN.
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    /// From just before spawn to the first KVM_RUN, both on CLOCK_MONOTONIC.
    pub start_to_first_run: Duration,
    pub memory: MemorySample,
}

/// CLOCK_MONOTONIC in nanoseconds, the clock the interposer stamps with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Kills the VMM however the measurement ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

fn read_stamp(path: &Path) -> Result<StampLog, RunError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_stamp_log(&text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StampLog::default()),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

/// The last lines of the VMM's stdout+stderr, for error messages.
fn output_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn sleep_until(deadline_ns: u64) {
    let now = monotonic_ns();
    if deadline_ns > now {
        std::thread::sleep(Duration::from_nanos(deadline_ns - now));
    }
}

/// Measures one start of `vmm` in a fresh directory under `work_dir`.
pub fn measure(
    vmm: Vmm,
    program: &Path,
    guest: &GuestSpec,
    settings: &RunSettings,
    work_dir: &Path,
) -> Result<Measurement, RunError> {
    let dir = tempfile::tempdir_in(work_dir).map_err(io_err("create run directory"))?;
    let paths = RunPaths::in_dir(dir.path());
    let stamp_path = dir.path().join("stamp");
    let output_path = dir.path().join("output");
    let output = File::create(&output_path).map_err(io_err("create output file"))?;
    let output_err = output.try_clone().map_err(io_err("dup output file"))?;

    let mut cmd = command(vmm, program, guest, &paths);
    cmd.env("LD_PRELOAD", &settings.interposer)
        .env(STAMP_FILE_ENV, &stamp_path)
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(output_err);

    let spawned_ns = monotonic_ns();
    let child = cmd
        .spawn()
        .map_err(io_err(format!("start {}", program.display())))?;
    let mut child = KillOnDrop(child);
    let pid = child.0.id();

    let exited = |child: &mut KillOnDrop, stage| -> Result<(), RunError> {
        match child.0.try_wait() {
            Ok(Some(status)) => Err(RunError::Exited {
                vmm: vmm.name(),
                status,
                stage,
                output: output_tail(&output_path),
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(io_err("wait for the VMM")(e)),
        }
    };

    let first_run_ns = loop {
        if let Some(ns) = read_stamp(&stamp_path)?.first_kvm_run_ns {
            break ns;
        }
        exited(&mut child, "its first KVM_RUN")?;
        if monotonic_ns().saturating_sub(spawned_ns) > settings.timeout.as_nanos() as u64 {
            return Err(RunError::Timeout {
                vmm: vmm.name(),
                timeout: settings.timeout,
                output: output_tail(&output_path),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    };

    sleep_until(first_run_ns + settings.settle.as_nanos() as u64);
    exited(&mut child, "its memory was sampled")?;
    let ranges = read_stamp(&stamp_path)?.guest_host_ranges();
    if ranges.is_empty() {
        return Err(RunError::NoGuestMemory { vmm: vmm.name() });
    }
    let memory = memory::sample(pid, &ranges)?;
    drop(child);

    Ok(Measurement {
        start_to_first_run: Duration::from_nanos(first_run_ns.saturating_sub(spawned_ns)),
        memory,
    })
}
