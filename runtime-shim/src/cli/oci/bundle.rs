//! An OCI bundle: `config.json` checked field by field, and the rootfs
//! directory as a read-only erofs disk for the guest (cached by the
//! directory's identity and mtime, rebuilt when it changed). The writable
//! layer lives in the guest (a tmpfs overlay upper), as with images: writes
//! by the container never reach the rootfs directory on the host.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use oci_spec::runtime::Spec;

use crate::image::digest::Digest;
use crate::image::erofs;

/// The OCI runtime-spec major version husk speaks.
const SUPPORTED_MAJOR: &str = "1";

#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

/// Reads and checks `<dir>/config.json`.
pub fn load(dir: &Path) -> anyhow::Result<Bundle> {
    let dir =
        fs::canonicalize(dir).with_context(|| format!("bundle directory {}", dir.display()))?;
    let config = dir.join("config.json");
    let text = match fs::read_to_string(&config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("bundle {} has no config.json", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", config.display())),
    };
    // serde's message names the field ("missing field `ociVersion`", "unknown
    // variant ..."); the line and column point at it.
    let spec: Spec =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    let version = spec.version();
    let major = version.split('.').next().unwrap_or("");
    if major != SUPPORTED_MAJOR {
        bail!(
            "{}: ociVersion {version:?} is not supported (husk speaks {SUPPORTED_MAJOR}.x)",
            config.display()
        );
    }
    let Some(root) = spec.root() else {
        bail!("{}: root: missing (the rootfs directory)", config.display());
    };
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    if !rootfs.is_dir() {
        bail!(
            "{}: root.path: rootfs {} does not exist or is not a directory",
            config.display(),
            rootfs.display()
        );
    }
    let Some(process) = spec.process() else {
        bail!("{}: process: missing", config.display());
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!(
            "{}: process.args: empty (no command to run)",
            config.display()
        );
    }
    if !process.cwd().is_absolute() {
        bail!(
            "{}: process.cwd: {} is not an absolute path",
            config.display(),
            process.cwd().display()
        );
    }
    Ok(Bundle { dir, spec, rootfs })
}

/// The rootfs as an erofs disk in `cache`, built unless a disk of the same
/// directory (device, inode) with the same mtime and ctime is there.
pub fn rootfs_disk(rootfs: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    let meta = fs::metadata(rootfs).with_context(|| format!("rootfs {}", rootfs.display()))?;
    let key = format!(
        "{}:{}:{}:{}.{}:{}.{}",
        rootfs.display(),
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    let digest = Digest::of_bytes(key.as_bytes());
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let disk = cache.join(format!("{}.erofs", &digest.hex()[..32]));
    if disk.is_file() {
        tracing::debug!(disk = %disk.display(), "rootfs disk cached");
        return Ok(disk);
    }
    let tmp = cache.join(format!(
        ".{}.{}.tmp",
        &digest.hex()[..32],
        std::process::id()
    ));
    let built = erofs::build(rootfs, &tmp, &digest);
    if let Err(e) = built {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("building a disk of rootfs {}", rootfs.display()));
    }
    fs::rename(&tmp, &disk).with_context(|| format!("storing {}", disk.display()))?;
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("rootfs")).unwrap();
        fs::write(dir.path().join("config.json"), config).unwrap();
        dir
    }

    const GOOD: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#;

    #[test]
    fn a_good_bundle_loads() {
        let dir = bundle_with(GOOD);
        let b = load(dir.path()).unwrap();
        assert!(b.rootfs.ends_with("rootfs"));
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("has no config.json"), "{e}");

        let dir = bundle_with(&GOOD.replace("1.0.2", "2.0.0"));
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ociVersion"), "{e}");

        let dir = bundle_with(&GOOD.replace("\"rootfs\"", "\"nope\""));
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("root.path"), "{e}");

        let dir = bundle_with(&GOOD.replace("[\"sh\"]", "[]"));
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("process.args"), "{e}");

        let dir = bundle_with(r#"{"root":{"path":"rootfs"}}"#);
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ociVersion"), "{e}");

        let dir = bundle_with(&GOOD.replace("\"uid\":0", "\"uid\":\"zero\""));
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
