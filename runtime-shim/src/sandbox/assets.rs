//! Where the guest kernel and the guest agent come from: a flag, then an
//! environment variable, then where `scripts/install.sh` puts them beside
//! the running binary (`<prefix>/bin/husk` → `<prefix>/lib/husk/`), then
//! `/usr/lib/husk/`. A missing one is an error that says how to build it.

use std::path::{Path, PathBuf};

pub const DEFAULT_KERNEL: &str = "/usr/lib/husk/vmlinux";
pub const DEFAULT_AGENT: &str = "/usr/lib/husk/husk-agent";

/// File names in an install's `lib/husk/`.
const KERNEL_FILE: &str = "vmlinux";
const AGENT_FILE: &str = "husk-agent";

const KERNEL_HINT: &str = "build it with `guest-kernel-config/build.sh` (it prints the vmlinux \
    path as its last line), then pass --kernel PATH or set HUSK_KERNEL";
const AGENT_HINT: &str =
    "build the static agent with `RUSTFLAGS=\"-C target-feature=+crt-static\" \
    cargo build -p husk-agent --release --target x86_64-unknown-linux-gnu` and set \
    HUSK_AGENT=target/x86_64-unknown-linux-gnu/release/husk-agent (scripts/setup.sh does both)";

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("guest kernel {path} (from {source_name}) not found: {hint}")]
    Kernel {
        path: PathBuf,
        source_name: &'static str,
        hint: &'static str,
    },
    #[error("guest agent {path} (from {source_name}) not found: {hint}")]
    Agent {
        path: PathBuf,
        source_name: &'static str,
        hint: &'static str,
    },
}

/// The guest kernel: `--kernel`, else `HUSK_KERNEL`, else the default.
pub fn kernel(flag: Option<&Path>) -> Result<PathBuf, AssetError> {
    let (path, source_name) = pick(flag, "HUSK_KERNEL", KERNEL_FILE, DEFAULT_KERNEL, "--kernel");
    if path.is_file() {
        Ok(path)
    } else {
        Err(AssetError::Kernel {
            path,
            source_name,
            hint: KERNEL_HINT,
        })
    }
}

/// The static guest agent: `HUSK_AGENT`, else the default.
pub fn agent() -> Result<PathBuf, AssetError> {
    let (path, source_name) = pick(None, "HUSK_AGENT", AGENT_FILE, DEFAULT_AGENT, "");
    if path.is_file() {
        Ok(path)
    } else {
        Err(AssetError::Agent {
            path,
            source_name,
            hint: AGENT_HINT,
        })
    }
}

/// Where the kernel would be taken from, and on whose word (for `husk check`).
pub fn kernel_location(flag: Option<&Path>) -> (PathBuf, &'static str) {
    pick(flag, "HUSK_KERNEL", KERNEL_FILE, DEFAULT_KERNEL, "--kernel")
}

/// Where the agent would be taken from, and on whose word.
pub fn agent_location() -> (PathBuf, &'static str) {
    pick(None, "HUSK_AGENT", AGENT_FILE, DEFAULT_AGENT, "")
}

/// `<dir of the running binary>/../lib/husk`, where an install keeps the
/// guest kernel and agent.
pub fn install_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let exe = exe.canonicalize().unwrap_or(exe);
    Some(exe.parent()?.parent()?.join("lib/husk"))
}

fn pick(
    flag: Option<&Path>,
    env: &'static str,
    file: &str,
    default: &str,
    flag_name: &'static str,
) -> (PathBuf, &'static str) {
    if let Some(path) = flag {
        return (path.to_path_buf(), flag_name);
    }
    if let Some(value) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        return (PathBuf::from(value), env);
    }
    if let Some(installed) = install_dir().map(|d| d.join(file)).filter(|p| p.is_file()) {
        return (installed, "the install beside husk");
    }
    (PathBuf::from(default), "the default location")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_and_missing_file_says_how_to_build() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinux");
        std::fs::write(&k, b"x").unwrap();
        assert_eq!(kernel(Some(&k)).unwrap(), k);
        let err = kernel(Some(&dir.path().join("nope")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("from --kernel"), "{err}");
        assert!(err.contains("guest-kernel-config/build.sh"), "{err}");
    }
}
