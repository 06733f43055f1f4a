//! Helpers shared by the end-to-end tests: locating the real binaries, the
//! guest kernel and host capabilities. Tests drive the binaries as a user
//! would; nothing here links against the crates under test.

use std::path::PathBuf;

pub mod containerd;
pub mod fixtures;
pub mod procs;
pub mod registry;
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

/// Skips the calling test (prints the reason, counts it in HUSK_SKIP_LOG)
/// for a missing prerequisite that set-up provides: under CI=true that is a
/// failure instead (see husk-test-skip).
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {{
        $crate::skip_unless_ci(format!($($arg)*));
        return;
    }};
}

/// For a capability the host lacks and set-up cannot provide (a usable
/// /dev/kvm): counted, never a failure.
#[macro_export]
macro_rules! skip_host {
    ($($arg:tt)*) => {{
        $crate::skip(format!($($arg)*));
        return;
    }};
}

pub use husk_test_skip::{skip, skip_unless_ci};
