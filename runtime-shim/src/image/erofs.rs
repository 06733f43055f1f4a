//! Building a layer's read-only disk image with `mkfs.erofs` (erofs-utils).

use super::digest::Digest;
use super::external::{self, CommandError};
use std::path::Path;
use std::process::Command;

pub const MKFS: &str = "mkfs.erofs";

/// Options, and why:
/// - no `--all-root`/`--force-uid`: the tree's owners are the image's owners;
/// - `-x` left at its default, which keeps xattrs (the opaque markers,
///   file capabilities);
/// - `--preserve-mtime`: per-file times from the layer tar;
/// - `-U` a UUID derived from the chain ID, so the same layer gets the same
///   UUID. Only the build time in the superblock then differs between two
///   builds: `-T` would fix it but also overwrite every file's mtime;
/// - uncompressed: the disk is read by the guest on every access, and its
///   host page cache is shared by all VMs.
pub fn mkfs_command(tree: &Path, image: &Path, chain_id: &Digest) -> Command {
    let mut command = Command::new(MKFS);
    command
        .arg("--quiet")
        .arg("--preserve-mtime")
        .arg(format!("-U{}", uuid_for(chain_id)))
        .arg(image)
        .arg(tree);
    command
}

pub fn build(tree: &Path, image: &Path, chain_id: &Digest) -> Result<(), CommandError> {
    external::run(&mut mkfs_command(tree, image, chain_id)).map(|_| ())
}

/// A UUID-shaped string from the first 16 bytes of the chain ID.
fn uuid_for(chain_id: &Digest) -> String {
    let hex = chain_id.hex();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_derived_from_the_chain_id() {
        let d = Digest::of_bytes(b"x");
        let uuid = uuid_for(&d);
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid.replace('-', ""), d.hex()[..32]);
    }

    #[test]
    fn failure_reports_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        match build(&missing, &dir.path().join("img"), &Digest::of_bytes(b"x")) {
            Err(CommandError::Failed { stderr, .. }) => assert!(!stderr.is_empty()),
            Err(CommandError::Spawn { .. }) => {
                husk_test_skip::skip_unless_ci("mkfs.erofs not installed")
            }
            Ok(()) => panic!("mkfs.erofs accepted a missing directory"),
        }
    }
}
