//! How every husk test skips, in one place so that a run can count its
//! skips and CI cannot pass by skipping.
//!
//! A test may skip only where the host lacks a capability. [`skip`] prints
//! `SKIPPED: <reason>` and appends "<test>: <reason>" to the file named by
//! `HUSK_SKIP_LOG` (scripts/test.sh prints their count and reasons at the
//! end). [`skip_unless_ci`] is for prerequisites that set-up is meant to
//! provide (root, mkfs.erofs, cpio, the kernel, the agent, QEMU, the test
//! bed): under `CI=true` it panics instead of skipping.

use std::io::Write as _;

/// Records a skip for `reason` (a capability this host lacks, which set-up
/// cannot provide, such as a usable /dev/kvm). The caller returns.
pub fn skip(reason: impl std::fmt::Display) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    let reason = reason.to_string().replace('\n', " ");
    eprintln!("SKIPPED: {reason}");
    if let Some(log) = std::env::var_os("HUSK_SKIP_LOG") {
        let line = format!("{test}: {reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "cannot append to HUSK_SKIP_LOG {}: {e}",
                log.to_string_lossy()
            );
        }
    }
}

/// Skips for a missing prerequisite that set-up provides; under `CI=true`
/// that is a failure, so this panics with the reason. The caller returns.
pub fn skip_unless_ci(reason: impl std::fmt::Display) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_owned();
        panic!("{test}: prerequisite missing under CI=true (not skipping): {reason}");
    }
    skip(reason);
}
