//! Docker/OCI whiteout files in a layer tar, and what they become on disk.
//! The guest stacks layer disks with overlayfs, so a deleted file becomes an
//! overlayfs whiteout (a 0/0 character device of the same name) and an opaque
//! directory gets the `trusted.overlay.opaque=y` xattr.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

pub const PREFIX: &[u8] = b".wh.";
pub const OPAQUE: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`).
const META_PREFIX: &[u8] = b".wh..wh.";
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout {
    /// The parent directory hides everything below it in lower layers.
    Opaque,
    /// The named sibling is deleted.
    Remove(OsString),
    /// AUFS metadata: carries nothing for overlayfs.
    Ignore,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("whiteout {0:?} names no file")]
pub struct BadWhiteout(pub String);

/// `None` if `name` is an ordinary file name.
pub fn classify(name: &OsStr) -> Option<Result<Whiteout, BadWhiteout>> {
    let bytes = name.as_bytes();
    if !bytes.starts_with(PREFIX) {
        return None;
    }
    if bytes == OPAQUE {
        return Some(Ok(Whiteout::Opaque));
    }
    if bytes.starts_with(META_PREFIX) {
        return Some(Ok(Whiteout::Ignore));
    }
    let target = &bytes[PREFIX.len()..];
    if target.is_empty() || target == b"." || target == b".." {
        return Some(Err(BadWhiteout(name.to_string_lossy().into_owned())));
    }
    Some(Ok(Whiteout::Remove(
        OsStr::from_bytes(target).to_os_string(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str) -> Option<Result<Whiteout, BadWhiteout>> {
        classify(OsStr::new(name))
    }

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(c("file"), None);
        assert_eq!(c(".whatever"), None);
        assert_eq!(c(".wh..wh..opq"), Some(Ok(Whiteout::Opaque)));
        assert_eq!(c(".wh.gone"), Some(Ok(Whiteout::Remove("gone".into()))));
        assert_eq!(c(".wh..wh.plnk"), Some(Ok(Whiteout::Ignore)));
        assert!(matches!(c(".wh."), Some(Err(_))));
        assert!(matches!(c(".wh.."), Some(Err(_))));
    }
}
