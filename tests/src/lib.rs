//! Helpers shared by the end-to-end tests: locating the real binaries, the
//! guest kernel and host capabilities. Tests drive the binaries as a user
//! would; nothing here links against the crates under test.

use std::path::PathBuf;

pub mod fixtures;
pub mod testbed;

/// The cargo target profile directory holding the workspace binaries
/// (`target/debug` when run by `cargo test`): test executables live in its
/// `deps/` subdirectory.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent directory");
    deps.parent()
        .expect("deps has a parent directory")
        .to_path_buf()
}

/// Path of a workspace binary (`husk`, `husk-vmm`), built by `cargo build`.
/// Panics with a clear message if it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace` before the end-to-end tests",
        path.display()
    );
    path
}

/// The guest kernel from `guest-kernel-config/build.sh`, via HUSK_KERNEL.
pub fn kernel() -> Option<PathBuf> {
    std::env::var_os("HUSK_KERNEL")
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

/// Whether /dev/kvm can be opened read-write.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Skip the current test with a printed reason (only for missing host
/// capabilities, never to hide a failure).
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {{
        eprintln!("SKIPPED: {}", format!($($arg)*));
        return;
    }};
}

/// Skips the calling test for `reason` (a missing host capability, never to
/// hide a failure): prints `SKIPPED: <reason>` to stderr and appends
/// "<test name>: <reason>" to the file named by HUSK_SKIP_LOG, if set, so a
/// run can count its skips. Under CI=true, where set-up must have provided
/// every prerequisite, it panics with the reason instead. Use as
/// `return husk_e2e::skip(reason);`.
pub fn skip(reason: impl std::fmt::Display) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: prerequisite missing under CI=true (not skipping): {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    if let Some(log) = std::env::var_os("HUSK_SKIP_LOG") {
        use std::io::Write as _;
        let line = format!("{test}: {}\n", reason.to_string().replace('\n', " "));
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
