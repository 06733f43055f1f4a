//! The guest's initramfs: the static agent as `/init` and the empty
//! directories it mounts onto, as a newc cpio archive (what the kernel
//! unpacks). Built once per agent binary and cached under the store.

use std::fs;
use std::io::{self, BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Bumped whenever the archive layout below changes, so cached archives
/// built by an older husk are not reused.
const LAYOUT_VERSION: &str = "husk-initramfs-v1";

/// Mount points and working directories the agent expects to exist.
const DIRECTORIES: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "mnt",
    "tmp",
    "sys/fs",
    "sys/fs/cgroup",
];

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("reading the guest agent {path}: {source}")]
    ReadAgent { path: PathBuf, source: io::Error },
    #[error("the guest agent {path} is {size} bytes, too large for a cpio entry")]
    AgentTooLarge { path: PathBuf, size: usize },
    #[error("writing the initramfs cache {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The cached initramfs for `agent`, building it first if needed.
/// Concurrent callers may both build; each writes a temporary file and
/// renames it into place, so readers only ever see a whole archive.
pub fn cached(store: &Path, agent: &Path) -> Result<PathBuf, InitramfsError> {
    let read_err = |source| InitramfsError::ReadAgent {
        path: agent.to_path_buf(),
        source,
    };
    let dir = store.join("cache").join("initramfs");
    // Hashing a multi-megabyte agent costs more than the rest of husk's
    // own start-up: the file's identity (device, inode, size, mtime)
    // remembers the hash of a binary that has not changed.
    let stamp_path = dir
        .join("by-stamp")
        .join(agent_stamp(&fs::metadata(agent).map_err(read_err)?));
    if let Ok(key) = fs::read_to_string(&stamp_path) {
        let target = dir.join(format!("{}.cpio", key.trim()));
        if key.trim().bytes().all(|b| b.is_ascii_hexdigit()) && target.is_file() {
            tracing::debug!(path = %target.display(), "initramfs cache hit");
            return Ok(target);
        }
    }
    let agent_bytes = fs::read(agent).map_err(read_err)?;
    let mut hasher = Sha256::new();
    hasher.update(LAYOUT_VERSION.as_bytes());
    hasher.update([0]);
    hasher.update(&agent_bytes);
    let key = hex::encode(hasher.finalize());
    let target = dir.join(format!("{key}.cpio"));
    if target.is_file() {
        tracing::debug!(path = %target.display(), "initramfs cache hit");
        remember_stamp(&stamp_path, &key);
        return Ok(target);
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitramfsError::Write { path, source }
    };
    fs::create_dir_all(&dir).map_err(write_err(&dir))?;
    let archive = build(&agent_bytes).map_err(|e| match e {
        BuildError::TooLarge => InitramfsError::AgentTooLarge {
            path: agent.to_path_buf(),
            size: agent_bytes.len(),
        },
        BuildError::Io(source) => InitramfsError::Write {
            path: target.clone(),
            source,
        },
    })?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(write_err(&dir))?;
    tmp.write_all(&archive).map_err(write_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(write_err(tmp.path()))?;
    tmp.persist(&target).map_err(|e| InitramfsError::Write {
        path: target.clone(),
        source: e.error,
    })?;
    tracing::info!(path = %target.display(), "built the guest initramfs");
    remember_stamp(&stamp_path, &key);
    Ok(target)
}

fn agent_stamp(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}-{}-{}-{}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

/// Best effort: a failure only means hashing again next time.
fn remember_stamp(stamp_path: &Path, key: &str) {
    let Some(dir) = stamp_path.parent() else {
        return;
    };
    let written = fs::create_dir_all(dir)
        .and_then(|_| tempfile::NamedTempFile::new_in(dir))
        .and_then(|mut tmp| {
            tmp.write_all(key.as_bytes())?;
            tmp.persist(stamp_path).map(|_| ()).map_err(|e| e.error)
        });
    if let Err(e) = written {
        tracing::debug!(error = %e, "recording the agent's hash");
    }
}

#[derive(Debug)]
enum BuildError {
    TooLarge,
    Io(io::Error),
}

/// The archive bytes for an agent binary.
fn build(agent: &[u8]) -> Result<Vec<u8>, BuildError> {
    let agent_len = u32::try_from(agent.len()).map_err(|_| BuildError::TooLarge)?;
    let mut out = BufWriter::new(Vec::with_capacity(agent.len() + 4096));
    let mut ino = 1u32;
    let mut next_ino = || {
        ino += 1;
        ino
    };
    let dir = |name: &str, ino: u32| {
        cpio::NewcBuilder::new(name)
            .ino(ino)
            .mode(S_IFDIR | 0o755)
            .nlink(2)
    };
    out = dir(".", next_ino())
        .write(out, 0)
        .finish()
        .map_err(BuildError::Io)?;
    for name in DIRECTORIES {
        out = dir(name, next_ino())
            .write(out, 0)
            .finish()
            .map_err(BuildError::Io)?;
    }
    // The kernel opens /dev/console for init's stdin/stdout/stderr before
    // anything is mounted; without the node, init starts with no stdio.
    out = cpio::NewcBuilder::new("dev/console")
        .ino(next_ino())
        .mode(S_IFCHR | 0o600)
        .rdev_major(5)
        .rdev_minor(1)
        .write(out, 0)
        .finish()
        .map_err(BuildError::Io)?;
    let mut init = cpio::NewcBuilder::new("init")
        .ino(next_ino())
        .mode(S_IFREG | 0o755)
        .write(out, agent_len);
    io::copy(&mut Cursor::new(agent), &mut init).map_err(BuildError::Io)?;
    out = init.finish().map_err(BuildError::Io)?;
    let out = cpio::newc::trailer(out).map_err(BuildError::Io)?;
    out.into_inner().map_err(|e| BuildError::Io(e.into_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries(archive: &[u8]) -> Vec<(String, u32, Vec<u8>, u32, u32)> {
        let mut found = Vec::new();
        let mut rest = Cursor::new(archive.to_vec());
        loop {
            let mut reader = cpio::NewcReader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let e = reader.entry();
            let (name, mode, major, minor) = (
                e.name().to_string(),
                e.mode(),
                e.rdev_major(),
                e.rdev_minor(),
            );
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            found.push((name, mode, data, major, minor));
            rest = reader.finish().unwrap();
        }
        found
    }

    #[test]
    fn archive_holds_init_and_mount_points() {
        let agent = b"\x7fELF pretend agent".to_vec();
        let all = entries(&build(&agent).unwrap());
        let init = all.iter().find(|e| e.0 == "init").expect("init entry");
        assert_eq!(init.1, S_IFREG | 0o755);
        assert_eq!(init.2, agent);
        for d in ["dev", "proc", "sys", "run", "mnt", "sys/fs/cgroup"] {
            let e = all
                .iter()
                .find(|e| e.0 == d)
                .unwrap_or_else(|| panic!("{d} missing"));
            assert_eq!(e.1 & 0o170000, S_IFDIR, "{d} is not a directory");
        }
        let console = all.iter().find(|e| e.0 == "dev/console").expect("console");
        assert_eq!(
            (console.1 & 0o170000, console.3, console.4),
            (S_IFCHR, 5, 1)
        );
        // Parents come before children, as the kernel's unpacker needs.
        let pos = |n: &str| all.iter().position(|e| e.0 == n).unwrap();
        assert!(pos("dev") < pos("dev/console"));
        assert!(pos("sys/fs") < pos("sys/fs/cgroup"));
    }

    #[test]
    fn cpio_tool_reads_the_archive() {
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            husk_test_skip::skip_unless_ci("no cpio tool on this host");
            return;
        };
        assert!(status.status.success());
        let archive = build(b"#!/bin/sh\n").unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" init")),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("crw-------") && l.ends_with(" dev/console")),
            "{listing}"
        );
    }

    #[test]
    fn cache_is_keyed_by_the_agent_and_reused() {
        let store = tempfile::tempdir().unwrap();
        let agent = store.path().join("agent");
        fs::write(&agent, b"one").unwrap();
        let first = cached(store.path(), &agent).unwrap();
        assert!(first.starts_with(store.path().join("cache/initramfs")));
        let stamp = fs::metadata(&first).unwrap().modified().unwrap();
        assert_eq!(cached(store.path(), &agent).unwrap(), first);
        assert_eq!(fs::metadata(&first).unwrap().modified().unwrap(), stamp);
        // A rebuilt agent (a new file, as cargo and install write it).
        let rebuilt = store.path().join("agent.new");
        fs::write(&rebuilt, b"two").unwrap();
        fs::rename(&rebuilt, &agent).unwrap();
        let second = cached(store.path(), &agent).unwrap();
        assert_ne!(first, second);
        let init = entries(&fs::read(&second).unwrap())
            .into_iter()
            .find(|e| e.0 == "init")
            .unwrap();
        assert_eq!(init.2, b"two");
        // Only whole archives in the cache directory, no temporaries.
        let files: Vec<_> = fs::read_dir(store.path().join("cache/initramfs"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .collect();
        assert_eq!(files.len(), 2);
        // A stamp pointing at an archive that is gone is not trusted.
        fs::remove_file(&second).unwrap();
        assert_eq!(cached(store.path(), &agent).unwrap(), second);
        assert!(second.is_file());
    }

    #[test]
    fn missing_agent_is_reported() {
        let store = tempfile::tempdir().unwrap();
        let err = cached(store.path(), &store.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("reading the guest agent"), "{err}");
    }
}
