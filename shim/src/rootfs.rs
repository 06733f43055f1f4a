//! A task's rootfs as husk gives it to a VM: containerd's rootfs mounts
//! become read-only erofs layer disks, and the writable layer lives in the
//! guest (a tmpfs overlay upper), as with `husk run`.
//!
//! With the overlayfs snapshotter containerd hands over one `overlay` mount
//! whose `lowerdir`s are committed snapshots (immutable: one erofs disk per
//! snapshot, built once and shared by every later container of that image)
//! and whose `upperdir` is the container's own active snapshot. A `bind`
//! mount (a single-layer view, the native snapshotter) or no mount at all
//! (the bundle's own `rootfs` directory) is one layer.
//!
//! The cache keeps, beside each disk, a `.source` file naming the snapshot
//! directory it was built from; [`sweep`] removes disks whose directory is
//! gone (the snapshot was removed).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use husk::cli::oci::bundle;
use husk::image::ResolvedLayer;

/// One rootfs mount of a CreateTaskRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// What a task's rootfs is made of, bottom layer first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsPlan {
    /// Immutable directories (committed snapshots): cached disks.
    pub shared: Vec<PathBuf>,
    /// The container's own writable snapshot, when it already holds files
    /// (a container created again over an old snapshot): a disk of its own,
    /// on top, removed with the task.
    pub upper: Option<PathBuf>,
}

/// Reads the mounts containerd passed (none: `bundle_rootfs`).
pub fn plan(mounts: &[RootfsMount], bundle_rootfs: &Path) -> anyhow::Result<RootfsPlan> {
    match mounts {
        [] => Ok(RootfsPlan {
            shared: vec![bundle_rootfs.to_path_buf()],
            upper: None,
        }),
        [one] => match one.kind.as_str() {
            "overlay" => overlay_plan(&one.options),
            "bind" | "rbind" => Ok(RootfsPlan {
                shared: vec![PathBuf::from(&one.source)],
                upper: None,
            }),
            other => bail!(
                "rootfs mount of type {other:?} is not supported (husk takes overlay or bind mounts)"
            ),
        },
        _ => bail!(
            "{} rootfs mounts: husk takes one (overlay or bind)",
            mounts.len()
        ),
    }
}

fn overlay_plan(options: &[String]) -> anyhow::Result<RootfsPlan> {
    let mut lower = None;
    let mut upper = None;
    for option in options {
        if let Some(v) = option.strip_prefix("lowerdir=") {
            lower = Some(v);
        } else if let Some(v) = option.strip_prefix("upperdir=") {
            upper = Some(v);
        }
    }
    let Some(lower) = lower else {
        bail!("overlay rootfs mount without lowerdir");
    };
    // overlayfs lists the TOP layer first; layers go to the guest bottom first.
    let mut shared: Vec<PathBuf> = lower
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    shared.reverse();
    let upper = upper
        .map(PathBuf::from)
        .filter(|dir| fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()));
    Ok(RootfsPlan { shared, upper })
}

/// Builds (or finds in `cache`) a disk per layer directory of `plan`;
/// the upper's disk goes to `own_dir`.
pub fn layers(
    plan: &RootfsPlan,
    cache: &Path,
    own_dir: &Path,
) -> anyhow::Result<Vec<ResolvedLayer>> {
    let mut layers = Vec::with_capacity(plan.shared.len() + 1);
    for dir in &plan.shared {
        if !dir.is_dir() {
            bail!("rootfs layer {} is not a directory", dir.display());
        }
        let disk = bundle::rootfs_disk(dir, cache)?;
        let source = source_file(&disk);
        if !source.exists() {
            fs::write(&source, dir.as_os_str().as_encoded_bytes())
                .with_context(|| format!("writing {}", source.display()))?;
        }
        layers.push(layer(dir, disk)?);
    }
    if let Some(upper) = &plan.upper {
        let disk = bundle::rootfs_disk(upper, own_dir)?;
        layers.push(layer(upper, disk)?);
    }
    Ok(layers)
}

fn layer(dir: &Path, disk: PathBuf) -> anyhow::Result<ResolvedLayer> {
    let size = fs::metadata(&disk)
        .with_context(|| format!("{}", disk.display()))?
        .len();
    Ok(ResolvedLayer {
        chain_id: format!("snapshot {}", dir.display()),
        diff_id: format!("snapshot {}", dir.display()),
        size,
        disk,
    })
}

fn source_file(disk: &Path) -> PathBuf {
    disk.with_extension("source")
}

/// Removes cached disks whose snapshot directory no longer exists; returns
/// how many went. A VM that still reads such a disk keeps its open file.
pub fn sweep(cache: &Path) -> usize {
    let Ok(entries) = fs::read_dir(cache) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("source") {
            continue;
        }
        let Ok(source) = fs::read(&path) else {
            continue;
        };
        let dir = PathBuf::from(String::from_utf8_lossy(&source).into_owned());
        if dir.exists() {
            continue;
        }
        let disk = path.with_extension("erofs");
        if fs::remove_file(&disk).is_ok() || !disk.exists() {
            let _ = fs::remove_file(&path);
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(options: &[&str]) -> RootfsMount {
        RootfsMount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_lowerdirs_become_layers_bottom_first_and_an_empty_upper_is_left_out() {
        let upper = tempfile::tempdir().unwrap();
        let mount = overlay(&[
            "index=off",
            "workdir=/w",
            &format!("upperdir={}", upper.path().display()),
            "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs",
        ]);
        let first = plan(&[mount], Path::new("/bundle/rootfs")).unwrap();
        assert_eq!(
            first.shared,
            vec![
                PathBuf::from("/s/1/fs"),
                PathBuf::from("/s/2/fs"),
                PathBuf::from("/s/3/fs")
            ]
        );
        assert_eq!(first.upper, None);

        fs::write(upper.path().join("f"), b"x").unwrap();
        let mount = overlay(&[
            &format!("upperdir={}", upper.path().display()),
            "lowerdir=/s/1/fs",
        ]);
        let second = plan(&[mount], Path::new("/b")).unwrap();
        assert_eq!(second.upper.as_deref(), Some(upper.path()));
    }

    #[test]
    fn bind_and_no_mount_are_one_layer_and_odd_mounts_are_refused() {
        let bind = RootfsMount {
            kind: "bind".into(),
            source: "/snap/7/fs".into(),
            options: vec!["ro".into(), "rbind".into()],
        };
        assert_eq!(
            plan(&[bind], Path::new("/b")).unwrap().shared,
            vec![PathBuf::from("/snap/7/fs")]
        );
        assert_eq!(
            plan(&[], Path::new("/b/rootfs")).unwrap().shared,
            vec![PathBuf::from("/b/rootfs")]
        );
        let tmpfs = RootfsMount {
            kind: "tmpfs".into(),
            source: "none".into(),
            options: vec![],
        };
        let e = plan(&[tmpfs], Path::new("/b")).unwrap_err().to_string();
        assert!(e.contains("tmpfs"), "{e}");
        let e = plan(&[overlay(&["upperdir=/u"])], Path::new("/b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lowerdir"), "{e}");
    }

    #[test]
    fn sweep_removes_disks_of_snapshots_that_are_gone_only() {
        let cache = tempfile::tempdir().unwrap();
        let kept_dir = tempfile::tempdir().unwrap();
        for (name, source) in [
            ("kept", kept_dir.path().to_path_buf()),
            ("gone", PathBuf::from("/nonexistent/snapshot/fs")),
        ] {
            fs::write(cache.path().join(format!("{name}.erofs")), b"disk").unwrap();
            fs::write(
                cache.path().join(format!("{name}.source")),
                source.as_os_str().as_encoded_bytes(),
            )
            .unwrap();
        }
        assert_eq!(sweep(cache.path()), 1);
        assert!(cache.path().join("kept.erofs").exists());
        assert!(!cache.path().join("gone.erofs").exists());
        assert!(!cache.path().join("gone.source").exists());
    }
}
