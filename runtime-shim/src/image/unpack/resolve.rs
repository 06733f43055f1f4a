//! Resolving an entry's parent directories inside the layer root, as Docker
//! does (it unpacks in a chroot of the layer directory): a symlink made
//! earlier by the same layer is followed, an absolute target from the layer
//! root, a relative one from the directory holding the link. Nothing is
//! ever opened through a symlink by the kernel: every component is opened
//! with `O_NOFOLLOW`, and a symlink met on the way is read (`readlinkat`)
//! and its target walked the same way, so a `..` that would climb above the
//! layer root is refused rather than followed, and the walk cannot leave
//! the directory it started from.
//!
//! With no symlink on the way this is the plain `O_NOFOLLOW` walk, one
//! `openat` per component.

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Symlinks followed for one path at most, as Linux's own limit (40).
pub const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// A `..` (in a symlink's target) above the layer root; `link` is the
    /// last symlink followed before it.
    #[error("leads outside the layer (through the symlink {link:?})")]
    Escapes { link: String },
    #[error("passes through more than {MAX_LINKS} symlinks (a symlink loop?)")]
    Loop,
    /// A component is neither a directory nor a symlink to one.
    #[error("{through:?} is not a directory")]
    NotADirectory { through: String },
    #[error("{through:?} does not exist")]
    Missing { through: String },
    #[error("resolves deeper than {0} components")]
    TooDeep(usize),
    #[error("{through:?}: {op}: {errno}")]
    Io {
        op: &'static str,
        through: String,
        errno: Errno,
    },
}

/// Where a walk ended: the directory and its path from the layer root,
/// symlink-free (each component a real directory).
pub struct Resolved {
    pub dir: OwnedFd,
    pub parts: Vec<OsString>,
}

/// Walks `parts` from `root` (the layer directory), following symlinks
/// inside it. Missing directories are made (0755, as Docker makes parents
/// the archive does not list) when `create`, else reported. `max_depth`
/// bounds the resolved path as it bounds the archive's own.
pub fn walk(
    root: &OwnedFd,
    parts: &[OsString],
    create: bool,
    max_depth: usize,
) -> Result<Resolved, ResolveError> {
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|e| ResolveError::Io {
            op: "dup",
            through: String::new(),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })
    };
    let mut pending: VecDeque<OsString> = parts.iter().cloned().collect();
    // Open directories from the root down to the current one's parent, so
    // that `..` steps back without reopening anything.
    let mut ancestors: Vec<OwnedFd> = Vec::new();
    let mut dir = dup(root)?;
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    let mut last_link = String::new();
    while let Some(part) = pending.pop_front() {
        match part.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                let Some(parent) = ancestors.pop() else {
                    return Err(ResolveError::Escapes { link: last_link });
                };
                dir = parent;
                resolved.pop();
                continue;
            }
            _ => {}
        }
        match open_dir_nofollow(&dir, &part) {
            Ok(next) => {
                ancestors.push(std::mem::replace(&mut dir, next));
                resolved.push(part);
            }
            Err(Errno::ENOENT) if create => {
                match mkdirat(
                    dir.as_fd(),
                    part.as_os_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => {
                        return Err(ResolveError::Io {
                            op: "mkdir",
                            through: shown(&resolved, &part),
                            errno,
                        })
                    }
                }
                let next = open_dir_nofollow(&dir, &part).map_err(|errno| ResolveError::Io {
                    op: "open",
                    through: shown(&resolved, &part),
                    errno,
                })?;
                // The umask must not narrow it.
                fchmod(next.as_fd(), Mode::from_bits_truncate(0o755)).map_err(|errno| {
                    ResolveError::Io {
                        op: "chmod",
                        through: shown(&resolved, &part),
                        errno,
                    }
                })?;
                ancestors.push(std::mem::replace(&mut dir, next));
                resolved.push(part);
            }
            Err(Errno::ENOENT) => {
                return Err(ResolveError::Missing {
                    through: shown(&resolved, &part),
                })
            }
            // O_NOFOLLOW on a symlink gives ELOOP, O_DIRECTORY on anything
            // else ENOTDIR: only a symlink is read and followed.
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let target = match readlinkat(dir.as_fd(), part.as_os_str()) {
                    Ok(target) => target.into_vec(),
                    Err(Errno::EINVAL) => {
                        return Err(ResolveError::NotADirectory {
                            through: shown(&resolved, &part),
                        })
                    }
                    Err(errno) => {
                        return Err(ResolveError::Io {
                            op: "readlink",
                            through: shown(&resolved, &part),
                            errno,
                        })
                    }
                };
                links += 1;
                if links > MAX_LINKS {
                    return Err(ResolveError::Loop);
                }
                last_link = shown(&resolved, &part);
                if target.first() == Some(&b'/') {
                    // Absolute: from the layer root, as inside the container.
                    ancestors.clear();
                    dir = dup(root)?;
                    resolved.clear();
                }
                // The target's components come before what was left.
                for component in target.split(|b| *b == b'/').rev() {
                    if !component.is_empty() {
                        pending.push_front(OsStr::from_bytes(component).to_os_string());
                    }
                }
            }
            Err(errno) => {
                return Err(ResolveError::Io {
                    op: "open",
                    through: shown(&resolved, &part),
                    errno,
                })
            }
        }
        if resolved.len() > max_depth {
            return Err(ResolveError::TooDeep(max_depth));
        }
    }
    Ok(Resolved {
        dir,
        parts: resolved,
    })
}

fn open_dir_nofollow(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    openat(
        dir.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// `a/b/part`, for messages.
fn shown(resolved: &[OsString], part: &OsStr) -> String {
    let mut all: Vec<_> = resolved.iter().map(|p| p.to_string_lossy()).collect();
    all.push(part.to_string_lossy());
    all.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    fn parts(path: &str) -> Vec<OsString> {
        path.split('/').map(OsString::from).collect()
    }

    fn root_fd(dir: &Path) -> OwnedFd {
        fs::File::open(dir).unwrap().into()
    }

    fn walked(dir: &Path, path: &str, create: bool) -> Result<String, ResolveError> {
        walk(&root_fd(dir), &parts(path), create, 64).map(|r| {
            r.parts
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    #[test]
    fn follows_links_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/usr/lib", root.join("abs")).unwrap();
        symlink("../lib", root.join("usr/up")).unwrap();
        assert_eq!(walked(root, "lib", false).unwrap(), "usr/lib");
        assert_eq!(walked(root, "abs", false).unwrap(), "usr/lib");
        // A link in a link's target: usr/up -> ../lib -> usr/lib.
        assert_eq!(walked(root, "usr/up", false).unwrap(), "usr/lib");
        // Missing directories past a link are made where the link leads.
        assert_eq!(walked(root, "abs/x/y", true).unwrap(), "usr/lib/x/y");
        assert!(root.join("usr/lib/x/y").is_dir());
        assert_eq!(
            walked(root, "lib/nope", false),
            Err(ResolveError::Missing {
                through: "usr/lib/nope".into()
            })
        );
    }

    #[test]
    fn refuses_escapes_loops_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layer");
        fs::create_dir_all(root.join("d")).unwrap();
        symlink("..", root.join("d/up")).unwrap();
        symlink("d/up/..", root.join("esc")).unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();
        symlink("file", root.join("tofile")).unwrap();
        assert_eq!(walked(&root, "d/up", false).unwrap(), "");
        assert_eq!(
            walked(&root, "esc/x", true),
            Err(ResolveError::Escapes {
                link: "d/up".into()
            })
        );
        assert_eq!(walked(&root, "a/x", true), Err(ResolveError::Loop));
        assert_eq!(
            walked(&root, "tofile/x", true),
            Err(ResolveError::NotADirectory {
                through: "file".into()
            })
        );
        // Nothing was made beside the layer.
        let beside: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(beside.len(), 1);
    }
}
