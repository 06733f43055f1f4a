//! The container's mount namespace: spec mounts, devices, pivot_root,
//! masked and read-only paths. Runs in the child, in its new mount
//! namespace, before the user switch.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};
use oci_spec::runtime::{Mount, Spec};

use crate::error::StepError;

/// Device nodes every container gets, bound from the agent's devtmpfs.
const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Symlink loops and absurd chains end resolution.
const MAX_SYMLINKS: usize = 40;

/// Mount options split into flags, propagation flags and fs data.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// MS_PRIVATE/MS_SHARED/...: a separate mount(2) call after mounting.
    pub propagation: MsFlags,
    pub data: Vec<String>,
}

pub fn parse_options(options: &[String]) -> MountOptions {
    let mut parsed = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for option in options {
        let (set, clear, propagation) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            // Hints for other runtimes that change nothing here.
            "tmpcopyup" | "defaults" => continue,
            data => {
                parsed.data.push(data.to_owned());
                continue;
            }
        };
        parsed.flags.insert(set);
        parsed.flags.remove(clear);
        parsed.propagation.insert(propagation);
    }
    parsed
}

/// Resolves `path` (absolute, as seen inside the container) to a host path
/// under `root`, following symlinks as the container would see them, so a
/// symlink in the image cannot point a mount outside the rootfs. Missing
/// trailing components are kept as they are (they will be created).
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, StepError> {
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(component) = pending.pop() {
        if component == Path::new("..") {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&component);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(StepError::new(
                        format!("resolve {}", path.display()),
                        "too many levels of symbolic links",
                    ));
                }
                let target = fs::read_link(&full)
                    .map_err(|err| StepError::new(format!("resolve {}", path.display()), err))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for part in target.components().rev() {
                    match part {
                        Component::Normal(name) => pending.push(PathBuf::from(name)),
                        Component::ParentDir => pending.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn create_mount_point(target: &Path, source_is_file: bool) -> Result<(), StepError> {
    let step = || format!("create mount point {}", target.display());
    if source_is_file {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|err| StepError::new(step(), err))?;
        }
        if !target.exists() {
            fs::write(target, b"").map_err(|err| StepError::new(step(), err))?;
        }
        Ok(())
    } else {
        fs::create_dir_all(target).map_err(|err| StepError::new(step(), err))
    }
}

fn mount_one(rootfs: &Path, spec_mount: &Mount) -> Result<(), StepError> {
    let destination = spec_mount.destination();
    let step = format!("mount {}", destination.display());
    let target = resolve_in_root(rootfs, destination)?;
    let options = parse_options(spec_mount.options().as_deref().unwrap_or_default());
    let fstype = match spec_mount.typ().as_deref() {
        // cgroup v1 does not exist in the guest: give the v2 hierarchy.
        Some("cgroup") => Some("cgroup2"),
        other => other,
    };
    let source = spec_mount.source().clone();
    let is_bind = options.flags.contains(MsFlags::MS_BIND) || fstype == Some("bind");
    let source_is_file = is_bind
        && source
            .as_deref()
            .and_then(|source| fs::metadata(source).ok())
            .is_some_and(|meta| !meta.is_dir());
    create_mount_point(&target, source_is_file)?;

    let data = options.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if is_bind {
        let source = source.ok_or_else(|| StepError::new(&step, "bind mount without source"))?;
        let bind_flags = options.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
        mount(
            Some(&source),
            &target,
            None::<&str>,
            bind_flags | MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|err| StepError::new(&step, err))?;
        // Bind mounts ignore other flags until remounted.
        let rest = options.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(|err| StepError::new(format!("remount {}", destination.display()), err))?;
        }
    } else {
        let source = source.unwrap_or_else(|| PathBuf::from(fstype.unwrap_or("none")));
        let mut flags = options.flags;
        // Device nodes reach /dev as bind mounts of their own (see
        // devices.rs): a node container root makes there must not open.
        if target == rootfs.join("dev") {
            flags |= MsFlags::MS_NODEV;
        }
        mount(Some(&source), &target, fstype, flags, data)
            .map_err(|err| StepError::new(&step, err))?;
    }
    if !options.propagation.is_empty() {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            options.propagation,
            None::<&str>,
        )
        .map_err(|err| StepError::new(format!("propagation of {}", destination.display()), err))?;
    }
    Ok(())
}

fn default_devices(rootfs: &Path) -> Result<(), StepError> {
    let dev = rootfs.join("dev");
    fs::create_dir_all(&dev).map_err(|err| StepError::new("create /dev", err))?;
    for name in DEFAULT_DEVICES {
        let target = dev.join(name);
        if target.exists() {
            continue;
        }
        let step = format!("bind /dev/{name}");
        fs::write(&target, b"").map_err(|err| StepError::new(&step, err))?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|err| StepError::new(&step, err))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = dev.join(link);
        if fs::symlink_metadata(&path).is_err() {
            symlink(target, &path)
                .map_err(|err| StepError::new(format!("link /dev/{link}"), err))?;
        }
    }
    Ok(())
}

/// Mounts everything the spec asks for under `rootfs`, in order, plus the
/// default devices. `console` is the pty slave to bind at /dev/console.
pub fn prepare_rootfs(rootfs: &Path, spec: &Spec, console: Option<&Path>) -> Result<(), StepError> {
    // Nothing we do here may propagate back into the agent's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|err| StepError::new("make mounts private", err))?;
    // pivot_root needs the new root to be a mount point of this namespace.
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|err| StepError::new("bind rootfs", err))?;
    for spec_mount in spec.mounts().iter().flatten() {
        mount_one(rootfs, spec_mount)?;
    }
    default_devices(rootfs)?;
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.devices().clone())
        .unwrap_or_default();
    let staging = rootfs.parent().unwrap_or(rootfs).join("devices");
    super::devices::create_nodes(rootfs, &staging, &devices)?;
    if let Some(console) = console {
        let target = rootfs.join("dev/console");
        create_mount_point(&target, true)?;
        mount(
            Some(console),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|err| StepError::new("bind /dev/console", err))?;
    }
    Ok(())
}

/// Makes `rootfs` the root and detaches the old one.
pub fn pivot(rootfs: &Path) -> Result<(), StepError> {
    chdir(rootfs).map_err(|err| StepError::new("pivot_root", err))?;
    // Stacking the old root on the new one avoids needing a put_old dir.
    pivot_root(".", ".").map_err(|err| StepError::new("pivot_root", err))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|err| StepError::new("detach old root", err))?;
    chdir("/").map_err(|err| StepError::new("chdir /", err))
}

/// Hides masked paths (after pivot): directories under an empty read-only
/// tmpfs, files under /dev/null. Missing paths are fine.
pub fn mask_paths(paths: &[String]) -> Result<(), StepError> {
    for path in paths {
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        let step = || format!("mask {path}");
        if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|err| StepError::new(step(), err))?;
        } else {
            mount(
                Some("/dev/null"),
                path.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|err| StepError::new(step(), err))?;
        }
    }
    Ok(())
}

/// Remounts paths (after pivot) read-only. Missing paths are fine.
pub fn readonly_paths(paths: &[String]) -> Result<(), StepError> {
    for path in paths {
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        remount_readonly(path, &format!("make {path} read-only"))?;
    }
    Ok(())
}

pub fn remount_readonly(path: &str, step: &str) -> Result<(), StepError> {
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|err| StepError::new(step, err))?;
    // A bind remount sets the mount's flags to exactly those given: keep
    // the ones it has (nodev on the rootfs above all).
    let kept = preserved_flags(path).map_err(|err| StepError::new(step, err))?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | kept,
        None::<&str>,
    )
    .map_err(|err| StepError::new(step, err))
}

/// The per-mount flags of the mount at `path` that a remount must repeat.
fn preserved_flags(path: &str) -> nix::Result<MsFlags> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let flags = statvfs(path)?.flags();
    let mut kept = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if flags.contains(fs_flag) {
            kept |= ms_flag;
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(options: &[&str]) -> Vec<String> {
        options.iter().map(|option| option.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let parsed = parse_options(&strings(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
            "ro",
        ]));
        assert_eq!(
            parsed.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_RDONLY
        );
        assert_eq!(parsed.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(parsed.data, vec!["mode=755", "size=65536k"]);
    }

    #[test]
    fn later_options_override_earlier_ones() {
        assert_eq!(
            parse_options(&strings(&["ro", "rw"])).flags,
            MsFlags::empty()
        );
        assert_eq!(
            parse_options(&strings(&["rbind", "nodev"])).flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NODEV
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/lib/x")).unwrap(),
            root.join("usr/lib/x")
        );
        // ".." cannot climb above the root.
        assert_eq!(
            resolve_in_root(root, Path::new("/usr/escape/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/../../proc")).unwrap(),
            root.join("proc")
        );
        assert!(resolve_in_root(root, Path::new("/loop/x")).is_err());
    }
}
