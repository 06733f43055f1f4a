//! Layer disks → read-only erofs mounts → overlay rootfs.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use husk_agent::protocol::{LayerDisk, ScratchDisk};

use crate::error::StepError;
use crate::loopdev;

/// Where layer mount points go: short, so that 125 of them fit in overlay's
/// one-page option string.
const SHORT_LAYERS_ROOT: &str = "/run/l";

/// A fresh `/run/l/<n>` for one container's layers.
fn short_layers_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Path::new(SHORT_LAYERS_ROOT).join(n.to_string())
}

/// Linux limits mount data to one page (including the NUL).
const MAX_MOUNT_DATA: usize = 4095;

/// virtio-blk disks by serial: serial → device name ("vdb").
pub fn discover_disks(sys_block: &Path) -> io::Result<HashMap<String, String>> {
    let mut disks = HashMap::new();
    for entry in fs::read_dir(sys_block)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        // Disks without a serial simply are not layer disks.
        let Ok(serial) = fs::read_to_string(entry.path().join("serial")) else {
            continue;
        };
        let serial = serial.trim_end_matches(['\n', '\0']).trim().to_owned();
        if !serial.is_empty() {
            disks.insert(serial, name);
        }
    }
    Ok(disks)
}

/// Escapes a path for overlay's lowerdir/upperdir option values: overlay
/// splits options at ',' and layers at ':', with '\' escaping both.
pub fn escape_overlay_path(path: &Path) -> String {
    let mut out = String::new();
    for ch in path.to_string_lossy().chars() {
        if matches!(ch, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Builds the overlay mount data. `lowers` are BOTTOM first (image order);
/// overlay wants the top layer leftmost.
pub fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, StepError> {
    if lowers.is_empty() {
        return Err(StepError::new("overlay rootfs", "the image has no layers"));
    }
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| escape_overlay_path(p))
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        escape_overlay_path(upper),
        escape_overlay_path(work)
    );
    if data.len() > MAX_MOUNT_DATA {
        return Err(StepError::new(
            "overlay rootfs",
            format!(
                "{} layers make overlay options of {} bytes (limit {MAX_MOUNT_DATA})",
                lowers.len(),
                data.len()
            ),
        ));
    }
    Ok(data)
}

/// The assembled rootfs and everything mounted for it (for unmounting).
#[derive(Debug)]
pub struct Rootfs {
    pub path: PathBuf,
    /// Mount points, in mount order.
    pub mounts: Vec<PathBuf>,
}

fn mkdir(path: &Path, step: &str) -> Result<(), StepError> {
    fs::create_dir_all(path).map_err(|err| StepError::new(step, err))
}

fn device_for(
    disks: &HashMap<String, String>,
    serial: &str,
    what: &str,
) -> Result<PathBuf, StepError> {
    disks
        .get(serial)
        .map(|name| Path::new("/dev").join(name))
        .ok_or_else(|| {
            StepError::new(
                format!("find {what} disk"),
                format!("no virtio disk with serial {serial:?}"),
            )
        })
}

impl Rootfs {
    /// Unmounts everything, top first (best effort: logs failures).
    pub fn unmount(&self) {
        unmount_all(&self.mounts);
    }
}

fn unmount_all(mounts: &[PathBuf]) {
    for mount in mounts.iter().rev() {
        if let Err(err) = umount2(mount.as_path(), MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %mount.display(), %err, "unmount failed");
        }
    }
}

/// Mounts the layers and the upper, stacks them at `base/rootfs`. On
/// failure, whatever was mounted is unmounted again.
pub fn assemble(
    base: &Path,
    layers: &[LayerDisk],
    scratch: Option<&ScratchDisk>,
) -> Result<Rootfs, StepError> {
    let mut mounts = Vec::new();
    match assemble_into(base, layers, scratch, &mut mounts) {
        Ok(path) => Ok(Rootfs { path, mounts }),
        Err(err) => {
            unmount_all(&mounts);
            Err(err)
        }
    }
}

fn assemble_into(
    base: &Path,
    layers: &[LayerDisk],
    scratch: Option<&ScratchDisk>,
    mounts: &mut Vec<PathBuf>,
) -> Result<PathBuf, StepError> {
    let disks = discover_disks(Path::new("/sys/block"))
        .map_err(|err| StepError::new("list disks in /sys/block", err))?;
    // Overlay's options must fit in one page: with up to 125 layers their
    // mount points need short paths, so they go under /run/l/<n>/<index>
    // rather than under the container's own directory.
    let layers_dir = short_layers_dir();
    // A pod's layer-disk slot may have held another container's layers
    // before: drop whatever the guest cached of it (nothing else holds it
    // open now: the last member's mounts are gone) before reading it anew.
    let mut flushed = std::collections::HashSet::new();
    for layer in layers {
        if flushed.insert(layer.serial.as_str()) {
            let disk = device_for(&disks, &layer.serial, &format!("layer {}", layer.digest))?;
            flush_buffers(&disk).map_err(|err| {
                StepError::new(format!("flush the cache of {}", disk.display()), err)
            })?;
        }
    }
    let mut lowers = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let disk = device_for(&disks, &layer.serial, &format!("layer {}", layer.digest))?;
        let disk_name = disk.file_name().unwrap_or_default().to_string_lossy();
        let step = match layer.length {
            None => format!("mount layer {disk_name} ({})", layer.digest),
            Some(length) => format!(
                "mount layer {disk_name}@{}+{length} ({})",
                layer.offset, layer.digest
            ),
        };
        // Held until the layer is mounted (see loopdev::LoopDevice).
        let mut loop_device = None;
        let device = match layer.length {
            None => disk.clone(),
            Some(length) => {
                let size = loopdev::block_device_size(Path::new("/sys/class/block"), &disk_name)
                    .map_err(|err| StepError::new(&step, format!("size of {disk_name}: {err}")))?;
                loopdev::check_range(layer.offset, length, size)
                    .map_err(|err| StepError::new(&step, err))?;
                let attached = loopdev::attach_read_only(&disk, layer.offset, length)
                    .map_err(|err| StepError::new(&step, format!("loop device: {err}")))?;
                let path = attached.path.clone();
                loop_device = Some(attached);
                path
            }
        };
        let target = layers_dir.join(index.to_string());
        mkdir(&target, &step)?;
        mount(
            Some(&device),
            &target,
            Some("erofs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None::<&str>,
        )
        .map_err(|err| StepError::new(&step, err))?;
        drop(loop_device);
        mounts.push(target.clone());
        lowers.push(target);
    }

    let scratch_dir = base.join("scratch");
    mkdir(&scratch_dir, "create scratch dir")?;
    match scratch {
        Some(disk) => {
            let device = device_for(&disks, &disk.serial, "scratch")?;
            mount(
                Some(&device),
                &scratch_dir,
                Some("ext4"),
                MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
                None::<&str>,
            )
            .map_err(|err| {
                StepError::new(format!("mount scratch disk {}", device.display()), err)
            })?;
        }
        None => {
            mount(
                Some("tmpfs"),
                &scratch_dir,
                Some("tmpfs"),
                MsFlags::MS_NODEV,
                Some("mode=0755"),
            )
            .map_err(|err| StepError::new("mount tmpfs upper layer", err))?;
        }
    }
    mounts.push(scratch_dir.clone());
    let upper = scratch_dir.join("upper");
    let work = scratch_dir.join("work");
    mkdir(&upper, "create overlay upper dir")?;
    mkdir(&work, "create overlay work dir")?;

    let rootfs = base.join("rootfs");
    mkdir(&rootfs, "create rootfs dir")?;
    let options = overlay_options(&lowers, &upper, &work)?;
    // nodev: container root may mknod (CAP_MKNOD), but a node it makes in
    // the rootfs must not open; its devices are bind mounts (devices.rs).
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|err| StepError::new("mount overlay rootfs", err))?;
    mounts.push(rootfs.clone());
    Ok(rootfs)
}

/// BLKFLSBUF (`_IO(0x12, 97)`): write back and drop a block device's
/// cached pages.
const BLKFLSBUF: libc::c_ulong = 0x1261;

fn flush_buffers(disk: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(disk)?;
    // SAFETY: BLKFLSBUF takes no argument; the descriptor is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF as _, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lists_the_top_layer_first() {
        let lowers = vec![
            PathBuf::from("/l/0"),
            PathBuf::from("/l/1"),
            PathBuf::from("/l/2"),
        ];
        let data = overlay_options(&lowers, Path::new("/s/upper"), Path::new("/s/work")).unwrap();
        assert_eq!(
            data,
            "lowerdir=/l/2:/l/1:/l/0,upperdir=/s/upper,workdir=/s/work"
        );
    }

    #[test]
    fn overlay_paths_are_escaped() {
        assert_eq!(
            escape_overlay_path(Path::new("/a:b,c\\d")),
            "/a\\:b\\,c\\\\d"
        );
        let data =
            overlay_options(&[PathBuf::from("/x:y")], Path::new("/u,1"), Path::new("/w")).unwrap();
        assert_eq!(data, "lowerdir=/x\\:y,upperdir=/u\\,1,workdir=/w");
    }

    #[test]
    fn overlay_rejects_no_layers_and_too_many() {
        assert!(overlay_options(&[], Path::new("/u"), Path::new("/w")).is_err());
        // 125 layers (the most an image may have) fit with short paths.
        let most: Vec<PathBuf> = (0..125)
            .map(|i| short_layers_dir().join(i.to_string()))
            .collect();
        let data = overlay_options(
            &most,
            Path::new("/run/husk/containers/0123456789abcdef0123456789abcdef/scratch/upper"),
            Path::new("/run/husk/containers/0123456789abcdef0123456789abcdef/scratch/work"),
        )
        .unwrap();
        assert!(data.len() < 4095, "{}", data.len());
        let many: Vec<PathBuf> = (0..500)
            .map(|i| PathBuf::from(format!("/run/husk/containers/c/layers/{i}")))
            .collect();
        let err = overlay_options(&many, Path::new("/u"), Path::new("/w")).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn disks_are_found_by_serial_in_a_fake_sys_block() {
        let sys = tempfile::tempdir().unwrap();
        for (name, serial) in [
            ("vda", Some("husk-l0\n")),
            ("vdb", Some("husk-l1")),
            ("vdc", None),
        ] {
            let dir = sys.path().join(name);
            fs::create_dir(&dir).unwrap();
            if let Some(serial) = serial {
                fs::write(dir.join("serial"), serial).unwrap();
            }
        }
        fs::create_dir(sys.path().join("loop0")).unwrap();
        fs::write(sys.path().join("loop0/serial"), "husk-l9").unwrap();
        let disks = discover_disks(sys.path()).unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks["husk-l0"], "vda");
        assert_eq!(disks["husk-l1"], "vdb");
    }
}
