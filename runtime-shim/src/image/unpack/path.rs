//! Validation of the paths and link targets inside a layer tar. Every path
//! is checked here before anything touches the disk; nothing relies on the
//! tar crate's own unpacking.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("absolute path")]
    Absolute,
    #[error("path contains a '..' component")]
    ParentComponent,
    #[error("path is longer than {0} bytes")]
    TooLong(usize),
    #[error("path is deeper than {0} components")]
    TooDeep(usize),
    #[error("path component longer than 255 bytes")]
    ComponentTooLong,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("link target climbs out of the layer")]
    LinkEscapes,
}

/// Splits a member path into its components. `./a//b/` gives `[a, b]`;
/// the layer root itself (`.`, `./`) gives an empty list.
pub fn components(
    raw: &[u8],
    max_bytes: usize,
    max_depth: usize,
) -> Result<Vec<OsString>, PathError> {
    if raw.len() > max_bytes {
        return Err(PathError::TooLong(max_bytes));
    }
    if raw.contains(&0) {
        return Err(PathError::Nul);
    }
    if raw.first() == Some(&b'/') {
        return Err(PathError::Absolute);
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err(PathError::ParentComponent),
            _ if part.len() > 255 => return Err(PathError::ComponentTooLong),
            _ => parts.push(OsString::from_vec(part.to_vec())),
        }
    }
    if parts.len() > max_depth {
        return Err(PathError::TooDeep(max_depth));
    }
    Ok(parts)
}

/// Whether a symlink at `link` (its components) pointing at `target` stays
/// inside the layer when resolved lexically. An absolute target is rooted at
/// the container's root (the guest resolves it there), so `/bin/busybox` is
/// fine; `../../etc` from `/a` is not.
pub fn symlink_target_ok(link: &[OsString], target: &[u8]) -> Result<(), PathError> {
    if target.contains(&0) {
        return Err(PathError::Nul);
    }
    let mut depth: usize = if target.first() == Some(&b'/') {
        0
    } else {
        link.len().saturating_sub(1)
    };
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => depth = depth.checked_sub(1).ok_or(PathError::LinkEscapes)?,
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> Result<Vec<String>, PathError> {
        components(raw.as_bytes(), 4096, 256)
            .map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn normalises_harmless_forms() {
        assert_eq!(parts("./a//b/").unwrap(), ["a", "b"]);
        assert_eq!(parts("bin/busybox").unwrap(), ["bin", "busybox"]);
        assert!(parts("./").unwrap().is_empty());
        assert!(parts(".").unwrap().is_empty());
        assert_eq!(parts("a/.../b").unwrap(), ["a", "...", "b"]);
    }

    #[test]
    fn refuses_escapes_and_absurd_paths() {
        assert_eq!(parts("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(parts("../x"), Err(PathError::ParentComponent));
        assert_eq!(parts("a/../../x"), Err(PathError::ParentComponent));
        assert_eq!(parts("a/b/.."), Err(PathError::ParentComponent));
        assert_eq!(parts(&"a/".repeat(300)), Err(PathError::TooDeep(256)));
        assert_eq!(parts(&"x".repeat(5000)), Err(PathError::TooLong(4096)));
        assert_eq!(parts(&"x".repeat(256)), Err(PathError::ComponentTooLong));
        assert_eq!(components(b"a\0b", 4096, 256), Err(PathError::Nul));
    }

    #[test]
    fn symlink_targets() {
        let link = |p: &str| components(p.as_bytes(), 4096, 256).unwrap();
        assert!(symlink_target_ok(&link("bin/sh"), b"busybox").is_ok());
        assert!(symlink_target_ok(&link("bin/sh"), b"/bin/busybox").is_ok());
        assert!(symlink_target_ok(&link("usr/lib/x"), b"../../lib/x").is_ok());
        assert_eq!(
            symlink_target_ok(&link("usr/lib/x"), b"../../../etc"),
            Err(PathError::LinkEscapes)
        );
        assert_eq!(
            symlink_target_ok(&link("a"), b"../etc/shadow"),
            Err(PathError::LinkEscapes)
        );
        assert_eq!(
            symlink_target_ok(&link("a"), b"/../etc"),
            Err(PathError::LinkEscapes)
        );
        assert!(symlink_target_ok(&link("a/b"), b"c/../../d").is_ok());
    }
}
