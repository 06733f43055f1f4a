//! A layer tar unpacked into a directory, safely, preserving what a root
//! filesystem needs (owners, modes, xattrs, symlinks, hard links, devices,
//! fifos, times) and turning whiteouts into overlayfs whiteouts.
//!
//! Every path is validated by [`path`] and every entry is created relative
//! to a directory descriptor reached by walking its parents with
//! `O_NOFOLLOW` ([`resolve`]): the kernel never follows a symlink for a
//! write. A parent that is a symlink made earlier by the same layer is
//! resolved as Docker resolves it (within the layer root, absolute targets
//! from the root), by reading the link and walking its target the same way;
//! one that leads above the layer root is refused. (`tar::Entry::unpack_in`
//! checks paths lexically, which does not stop that; it is not used.)

pub mod path;
pub mod resolve;
pub mod whiteout;
mod xattr;

use super::limits::Limits;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode,
    SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use path::PathError;
use resolve::ResolveError;
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tar::EntryType;
use whiteout::{BadWhiteout, Whiteout};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {path:?}")]
    Path { path: String, source: PathError },
    #[error("entry {path:?}")]
    Whiteout { path: String, source: BadWhiteout },
    /// A parent of the entry (after following symlinks inside the layer)
    /// is not a directory, leads above the layer root, or loops.
    #[error("entry {path:?}: its parent {reason}")]
    Parent { path: String, reason: ResolveError },
    #[error("hard link {path:?} -> {target:?}: {reason}")]
    HardLink {
        path: String,
        target: String,
        reason: String,
    },
    #[error("symlink {path:?} -> {target:?} points outside the layer")]
    SymlinkEscapes { path: String, target: String },
    #[error("entry {path:?}: unsupported tar entry type {kind:?}")]
    UnsupportedType { path: String, kind: EntryType },
    #[error("layer has more than {0} entries (limit)")]
    TooManyEntries(u64),
    #[error("entry {path:?}: layer content exceeds {limit} bytes (limit)")]
    TooLarge { path: String, limit: u64 },
    #[error("entry {path:?}: {what}")]
    BadHeader { path: String, what: String },
    #[error("entry {path:?}: extended attribute {name:?} is not allowed in a layer")]
    ForbiddenXattr { path: String, name: String },
    #[error("entry {path:?}: {op}")]
    Io {
        path: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("reading the layer tar: {0}")]
    Read(io::Error),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    pub entries: u64,
    pub file_bytes: u64,
}

/// Ownership, permissions, time and xattrs of one entry.
#[derive(Debug, Clone)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// Unpacks the tar stream into `dest` (an existing, empty directory).
/// `on_entry` is called after each entry (progress).
pub fn unpack(
    tar_stream: impl Read,
    dest: &Path,
    limits: &Limits,
    on_entry: &mut dyn FnMut(&UnpackStats),
) -> Result<UnpackStats, UnpackError> {
    let root = File::open(dest)
        .map(OwnedFd::from)
        .map_err(|source| UnpackError::Io {
            path: ".".into(),
            op: "opening the layer directory",
            source,
        })?;
    // Parents the archive does not list are 0755 root:root, as Docker makes them.
    fchmod(root.as_fd(), Mode::from_bits_truncate(0o755)).map_err(io_err(".", "chmod"))?;
    let mut unpacker = Unpacker {
        dest: dest.to_path_buf(),
        root,
        limits,
        dirs: HashMap::new(),
        cached_parent: None,
        stats: UnpackStats::default(),
    };
    let mut archive = tar::Archive::new(tar_stream);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let entry = entry.map_err(UnpackError::Read)?;
        unpacker.entry(entry)?;
        on_entry(&unpacker.stats);
    }
    unpacker.finish_directories()?;
    Ok(unpacker.stats)
}

/// For the `layer_unpack` fuzz target (`fuzz/`) and its regression test:
/// `data` as a layer tar unpacked into a fresh temporary directory with
/// small limits; errors are fine, panics and escapes are not.
#[doc(hidden)]
pub fn fuzz_unpack(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let dest = dir.path().join("layer");
    if std::fs::create_dir(&dest).is_err() {
        return;
    }
    let limits = Limits {
        max_entries_per_layer: 1000,
        max_layer_bytes: 16 << 20,
        ..Limits::default()
    };
    let _ = unpack(data, &dest, &limits, &mut |_| {});
    // Nothing may appear beside the layer directory.
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(beside, vec![OsString::from("layer")], "an entry escaped");
}

fn io_err<'a>(path: &'a str, op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |errno| UnpackError::Io {
        path: path.to_string(),
        op,
        source: errno.into(),
    }
}

/// An entry's parent directory, and its path from the layer root with any
/// symlinks on the way resolved (the entry lands there).
struct Parent {
    fd: OwnedFd,
    parts: Vec<OsString>,
}

impl Parent {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

struct Unpacker<'l> {
    dest: PathBuf,
    root: OwnedFd,
    limits: &'l Limits,
    /// Directory metadata is applied at the end, deepest first: creating
    /// children would otherwise change their mtimes, and a read-only mode
    /// would be in the way.
    dirs: HashMap<Vec<OsString>, Meta>,
    /// The last parent walked to (the archive's path, and where it led);
    /// tar streams list siblings together.
    cached_parent: Option<(Vec<OsString>, Rc<Parent>)>,
    stats: UnpackStats,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries_per_layer {
            return Err(UnpackError::TooManyEntries(
                self.limits.max_entries_per_layer,
            ));
        }
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let parts = path::components(
            &raw_path,
            self.limits.max_path_bytes,
            self.limits.max_path_depth,
        )
        .map_err(|source| UnpackError::Path {
            path: shown.clone(),
            source,
        })?;
        let meta = self.read_meta(&mut entry, &shown)?;
        let Some((name, parent_parts)) = parts.split_last().map(|(n, p)| (n.as_os_str(), p)) else {
            // The layer root itself ("./").
            if !kind.is_dir() {
                return Err(UnpackError::BadHeader {
                    path: shown,
                    what: "the layer root is not a directory".into(),
                });
            }
            self.dirs.insert(Vec::new(), meta);
            return Ok(());
        };
        if let Some(whiteout) = whiteout::classify(name) {
            let whiteout = whiteout.map_err(|source| UnpackError::Whiteout {
                path: shown.clone(),
                source,
            })?;
            return self.whiteout(parent_parts, whiteout, &shown);
        }
        let parent = self.parent(parent_parts, &shown)?;
        // From here on, the entry's path is where it lands.
        let parent_parts = parent.parts.as_slice();
        let parts: Vec<OsString> = parent_parts
            .iter()
            .cloned()
            .chain(std::iter::once(name.to_os_string()))
            .collect();
        match kind {
            EntryType::Directory => {
                self.clear(&parent.fd, parent_parts, name, true, &shown)?;
                match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err(&shown, "mkdir")(e)),
                }
                self.dirs.insert(parts.clone(), meta);
            }
            EntryType::Regular | EntryType::Continuous => {
                self.regular_file(&mut entry, &parent.fd, parent_parts, name, &meta, &shown)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| UnpackError::BadHeader {
                        path: shown.clone(),
                        what: "symlink without a target".into(),
                    })?;
                if path::symlink_target_ok(&parts, &target).is_err() || target.is_empty() {
                    return Err(UnpackError::SymlinkEscapes {
                        path: shown,
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                }
                self.clear(&parent.fd, parent_parts, name, false, &shown)?;
                symlinkat(OsStr::from_bytes(&target), parent.as_fd(), name)
                    .map_err(io_err(&shown, "symlink"))?;
                self.apply_to_entry(&parent.fd, name, &meta, false, &shown)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| UnpackError::BadHeader {
                        path: shown.clone(),
                        what: "hard link without a target".into(),
                    })?;
                self.hard_link(&parts, &parent.fd, name, &target, &shown)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                        let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                        let file_type = if kind == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (file_type, makedev(u64::from(major), u64::from(minor)))
                    }
                };
                self.clear(&parent.fd, parent_parts, name, false, &shown)?;
                mknodat(
                    parent.as_fd(),
                    name,
                    file_type,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(io_err(&shown, "mknod"))?;
                self.apply_to_entry(&parent.fd, name, &meta, true, &shown)?;
            }
            other => {
                return Err(UnpackError::UnsupportedType {
                    path: shown,
                    kind: other,
                })
            }
        }
        Ok(())
    }

    fn regular_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &OwnedFd,
        parent_parts: &[OsString],
        name: &OsStr,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let size = entry.size();
        let limit = self.limits.max_layer_bytes;
        if size > limit.saturating_sub(self.stats.file_bytes) {
            return Err(UnpackError::TooLarge {
                path: shown.to_string(),
                limit,
            });
        }
        self.clear(parent, parent_parts, name, false, shown)?;
        let fd = openat(
            parent.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_err(shown, "create"))?;
        let mut file = File::from(fd);
        let copied =
            io::copy(&mut (&mut *entry).take(size), &mut file).map_err(UnpackError::Read)?;
        if copied != size {
            return Err(UnpackError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry {shown:?} is truncated ({copied} of {size} bytes)"),
            )));
        }
        self.stats.file_bytes += size;
        apply_to_fd(file.as_fd(), meta, shown)
    }

    fn hard_link(
        &mut self,
        parts: &[OsString],
        parent: &OwnedFd,
        name: &OsStr,
        target: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let target_shown = String::from_utf8_lossy(target).into_owned();
        let refuse = |reason: String| UnpackError::HardLink {
            path: shown.to_string(),
            target: target_shown.clone(),
            reason,
        };
        let target_parts = path::components(
            target,
            self.limits.max_path_bytes,
            self.limits.max_path_depth,
        )
        .map_err(|e| refuse(e.to_string()))?;
        let Some((target_name, target_parent_parts)) = target_parts.split_last() else {
            return Err(refuse("links to the layer root".into()));
        };
        if target_parts == parts {
            return Err(refuse("links to itself".into()));
        }
        if whiteout::classify(target_name).is_some() {
            return Err(refuse("links to a whiteout".into()));
        }
        // The target's parents are resolved as the entry's are.
        let target_parent = resolve::walk(
            &self.root,
            target_parent_parts,
            false,
            self.limits.max_path_depth,
        )
        .map_err(|e| match e {
            ResolveError::Missing { .. } => refuse("target is not in the layer".into()),
            other => refuse(format!("target's parent {other}")),
        })?;
        if target_parent.parts == parts[..parts.len() - 1] && target_name == &parts[parts.len() - 1]
        {
            return Err(refuse("links to itself".into()));
        }
        let target_parent = target_parent.dir;
        match fstatat(
            target_parent.as_fd(),
            target_name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(stat)
                if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR =>
            {
                return Err(refuse("target is a directory".into()));
            }
            Ok(_) => {}
            Err(_) => return Err(refuse("target is not in the layer".into())),
        }
        let parent_parts = &parts[..parts.len() - 1];
        self.clear(parent, parent_parts, name, false, shown)?;
        linkat(
            target_parent.as_fd(),
            target_name.as_os_str(),
            parent.as_fd(),
            name,
            AtFlags::empty(),
        )
        .map_err(io_err(shown, "link"))
    }

    fn whiteout(
        &mut self,
        parent_parts: &[OsString],
        whiteout: Whiteout,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let parent = self.parent(parent_parts, shown)?;
        let parent_parts = parent.parts.as_slice();
        match whiteout {
            Whiteout::Opaque => {
                let name =
                    CString::new(whiteout::OPAQUE_XATTR).map_err(|_| UnpackError::BadHeader {
                        path: shown.to_string(),
                        what: "xattr name".into(),
                    })?;
                xattr::set_on_fd(parent.as_fd(), &name, b"y").map_err(|source| UnpackError::Io {
                    path: shown.to_string(),
                    op: "marking opaque",
                    source,
                })
            }
            Whiteout::Remove(target) => {
                self.clear(&parent.fd, parent_parts, &target, false, shown)?;
                mknodat(
                    parent.as_fd(),
                    target.as_os_str(),
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    makedev(0, 0),
                )
                .map_err(io_err(shown, "creating the whiteout device"))?;
                fchownat(
                    parent.as_fd(),
                    target.as_os_str(),
                    Some(Uid::from_raw(0)),
                    Some(Gid::from_raw(0)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(io_err(shown, "chown"))
            }
            Whiteout::Ignore => Ok(()),
        }
    }

    /// The directory holding `parts`' last component, creating missing
    /// directories; symlinks on the way are resolved inside the layer root
    /// ([`resolve::walk`]), never followed by the kernel.
    fn parent(&mut self, parts: &[OsString], shown: &str) -> Result<Rc<Parent>, UnpackError> {
        if let Some((cached, parent)) = &self.cached_parent {
            if cached.as_slice() == parts {
                return Ok(Rc::clone(parent));
            }
        }
        let resolved = resolve::walk(&self.root, parts, true, self.limits.max_path_depth).map_err(
            |reason| UnpackError::Parent {
                path: shown.to_string(),
                reason,
            },
        )?;
        let parent = Rc::new(Parent {
            fd: resolved.dir,
            parts: resolved.parts,
        });
        self.cached_parent = Some((parts.to_vec(), Rc::clone(&parent)));
        Ok(parent)
    }

    /// An existing directory, reached without following symlinks.
    fn existing_dir(&self, parts: &[OsString]) -> Option<OwnedFd> {
        let mut dir = self.root.try_clone().ok()?;
        for part in parts {
            dir = open_dir_nofollow(&dir, part).ok()?;
        }
        Some(dir)
    }

    /// Makes room for a new entry `name`: a later tar entry replaces an
    /// earlier one, except that a directory over a directory merges.
    fn clear(
        &mut self,
        parent: &OwnedFd,
        parent_parts: &[OsString],
        name: &OsStr,
        new_is_dir: bool,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let stat = match fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(io_err(shown, "stat")(e)),
        };
        let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if is_dir && new_is_dir {
            return Ok(());
        }
        // Whatever is removed may be (an ancestor of) the cached parent.
        self.cached_parent = None;
        if is_dir {
            // The parents were just walked with O_NOFOLLOW, so this path has
            // no symlink in it; remove_dir_all does not follow symlinks inside.
            let mut path = self.dest.clone();
            path.extend(parent_parts);
            path.push(name);
            std::fs::remove_dir_all(&path).map_err(|source| UnpackError::Io {
                path: shown.to_string(),
                op: "replacing a directory",
                source,
            })
        } else {
            unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                .map_err(io_err(shown, "replacing an entry"))
        }
    }

    /// Owner, mode, xattrs and time of a non-regular, non-directory entry.
    fn apply_to_entry(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
        shown: &str,
    ) -> Result<(), UnpackError> {
        fchownat(
            parent.as_fd(),
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(shown, "chown"))?;
        if chmod {
            fchmodat(
                parent.as_fd(),
                name,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::NoFollowSymlink,
            )
            .or_else(|e| match e {
                // Older kernels lack AT_SYMLINK_NOFOLLOW for chmod; the
                // entry is a device or fifo we just made, never a symlink.
                Errno::EOPNOTSUPP | Errno::EINVAL => fchmodat(
                    parent.as_fd(),
                    name,
                    Mode::from_bits_truncate(meta.mode),
                    FchmodatFlags::FollowSymlink,
                ),
                other => Err(other),
            })
            .map_err(io_err(shown, "chmod"))?;
        }
        for (key, value) in &meta.xattrs {
            xattr::set_on_entry(parent.as_fd(), name, key, value).map_err(|source| {
                UnpackError::Io {
                    path: shown.to_string(),
                    op: "setting an xattr",
                    source,
                }
            })?;
        }
        utimensat(
            parent.as_fd(),
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_err(shown, "setting times"))
    }

    /// Applies directory metadata deepest first, once all children exist.
    fn finish_directories(&mut self) -> Result<(), UnpackError> {
        let mut dirs: Vec<(Vec<OsString>, Meta)> = self.dirs.drain().collect();
        dirs.sort_by_key(|entry| std::cmp::Reverse(entry.0.len()));
        for (parts, meta) in dirs {
            // A directory replaced by a later non-directory entry is gone.
            let Some(dir) = self.existing_dir(&parts) else {
                continue;
            };
            apply_to_fd(dir.as_fd(), &meta, &join(&parts))?;
        }
        Ok(())
    }

    fn read_meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Meta, UnpackError> {
        let bad = |what: String| UnpackError::BadHeader {
            path: shown.to_string(),
            what,
        };
        let header = entry.header();
        let old = header.as_old();
        let mut uid =
            numeric_field(&old.uid, header.uid()).map_err(|e| bad(format!("uid: {e}")))?;
        let mut gid =
            numeric_field(&old.gid, header.gid()).map_err(|e| bad(format!("gid: {e}")))?;
        let mode = numeric_field(&old.mode, header.mode().map(u64::from))
            .map_err(|e| bad(format!("mode: {e}")))? as u32
            & 0o7777;
        let mut mtime = TimeSpec::new(header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64, 0);
        let mut xattrs = Vec::new();
        let pax: Vec<(String, Vec<u8>)> = match entry.pax_extensions().map_err(UnpackError::Read)? {
            Some(extensions) => extensions
                .map(|ext| {
                    let ext = ext.map_err(UnpackError::Read)?;
                    let key = ext
                        .key()
                        .map_err(|_| bad("non-UTF-8 PAX key".into()))?
                        .to_string();
                    Ok((key, ext.value_bytes().to_vec()))
                })
                .collect::<Result<_, UnpackError>>()?,
            None => Vec::new(),
        };
        for (key, value) in pax {
            let text = || String::from_utf8_lossy(&value).into_owned();
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if !xattr_allowed(name) {
                    return Err(UnpackError::ForbiddenXattr {
                        path: shown.to_string(),
                        name: name.to_string(),
                    });
                }
                if xattrs.len() >= self.limits.max_xattrs_per_entry
                    || value.len() > self.limits.max_xattr_value_bytes
                {
                    return Err(bad("too many or too large extended attributes".into()));
                }
                let name = CString::new(name).map_err(|_| bad("xattr name with NUL".into()))?;
                xattrs.push((name, value));
                continue;
            }
            match key.as_str() {
                "uid" => {
                    uid = text()
                        .parse()
                        .map_err(|_| bad(format!("PAX uid {:?}", text())))?
                }
                "gid" => {
                    gid = text()
                        .parse()
                        .map_err(|_| bad(format!("PAX gid {:?}", text())))?
                }
                "mtime" => {
                    mtime = parse_pax_time(&text())
                        .ok_or_else(|| bad(format!("PAX mtime {:?}", text())))?
                }
                _ => {}
            }
        }
        let uid = u32::try_from(uid).map_err(|_| bad(format!("uid {uid} out of range")))?;
        let gid = u32::try_from(gid).map_err(|_| bad(format!("gid {gid} out of range")))?;
        Ok(Meta {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }
}

/// Chown first: it clears setuid bits and file capabilities, which the
/// chmod and xattrs after it then restore.
fn apply_to_fd(
    fd: std::os::fd::BorrowedFd<'_>,
    meta: &Meta,
    shown: &str,
) -> Result<(), UnpackError> {
    fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(io_err(shown, "chown"))?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(io_err(shown, "chmod"))?;
    for (key, value) in &meta.xattrs {
        xattr::set_on_fd(fd, key, value).map_err(|source| UnpackError::Io {
            path: shown.to_string(),
            op: "setting an xattr",
            source,
        })?;
    }
    futimens(fd, &meta.mtime, &meta.mtime).map_err(io_err(shown, "setting times"))
}

/// A numeric header field; an empty one (all NUL or spaces) reads as 0, as
/// Go's archive/tar (Docker) and GNU tar read it.
fn numeric_field(raw: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

/// user.*, security.* (file capabilities, SELinux labels) and POSIX ACLs.
/// trusted.* is refused: trusted.overlay.* would let a layer forge overlayfs
/// metadata (redirects, opaque markers) behind the whiteout rules.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.")
        || name.starts_with("security.")
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
}

fn parse_pax_time(text: &str) -> Option<TimeSpec> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(TimeSpec::new(secs, if secs < 0 { 0 } else { nanos }))
}

fn open_dir_nofollow(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    openat(
        dir.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn join(parts: &[OsString]) -> String {
    let joined: Vec<_> = parts.iter().map(|p| p.to_string_lossy()).collect();
    joined.join("/")
}

#[cfg(test)]
mod tests;
