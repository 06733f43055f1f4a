//! Read-only loop devices over a byte range of a block device.
//!
//! The host hands an image's layers to the VM as ONE virtio-blk disk that
//! concatenates their erofs images (one virtio-mmio device per layer would
//! run out of device slots at a handful of layers); each layer is then a
//! loop device over its range of that disk, and erofs mounts the loop
//! device. The loop devices are made with `LOOP_AUTOCLEAR`, so unmounting
//! the layer frees its loop device too.
//!
//! Hand-written because the loop ioctls are three calls on fixed C
//! structures, and the crates that wrap them (loopdev) need bindgen and
//! libclang at build time, which the static agent build should not.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `<linux/loop.h>`: LO_NAME_SIZE, LO_KEY_SIZE and the flags used here.
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Read the disk without a second page cache in the loop device (the
/// kernel falls back to buffered I/O by itself where direct I/O cannot be
/// used).
const LO_FLAGS_DIRECT_IO: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);

/// The size of a block device in bytes, from `/sys/class/block/NAME/size`
/// (512-byte sectors whatever the device's block size).
pub fn block_device_size(sys_class_block: &Path, name: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(sys_class_block.join(name).join("size"))?;
    let sectors: u64 = text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable size {:?}", text.trim()),
        )
    })?;
    sectors
        .checked_mul(512)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "size overflows"))
}

/// Checks that `[offset, offset + length)` is a non-empty, 512-aligned
/// range inside a device of `device_size` bytes.
pub fn check_range(offset: u64, length: u64, device_size: u64) -> Result<(), String> {
    if length == 0 {
        return Err("empty range".into());
    }
    if !offset.is_multiple_of(512) || !length.is_multiple_of(512) {
        return Err(format!(
            "range {offset}+{length} is not aligned to 512-byte sectors"
        ));
    }
    match offset.checked_add(length) {
        Some(end) if end <= device_size => Ok(()),
        _ => Err(format!(
            "range {offset}+{length} lies beyond the end of the disk ({device_size} bytes)"
        )),
    }
}

/// A loop device made by [`attach_read_only`], held open.
pub struct LoopDevice {
    pub path: PathBuf,
    /// Autoclear detaches the device at its last close: keep this open
    /// until something else (the mount) holds the device.
    _open: File,
}

/// Attaches a new read-only loop device over `length` bytes of `device`
/// from `offset` (`/dev/loopN`). The loop device goes away by itself once
/// nothing holds it open or mounted, so mount it before dropping the
/// returned handle.
pub fn attach_read_only(device: &Path, offset: u64, length: u64) -> io::Result<LoopDevice> {
    let backing = File::open(device)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another attach may take the same free number first: then
    // LOOP_CONFIGURE says EBUSY and we ask for the next free one.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }.map_err(io::Error::from)?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let loop_file = OpenOptions::new().read(true).open(&path)?;
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: offset,
                lo_sizelimit: length,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
                lo_file_name: [0; LO_NAME_SIZE],
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `config` is a valid LoopConfig that outlives the call; the
        // kernel only reads it.
        match unsafe { loop_configure(loop_file.as_raw_fd(), &config) } {
            Ok(_) => {
                return Ok(LoopDevice {
                    path,
                    _open: loop_file,
                })
            }
            Err(nix::errno::Errno::EBUSY) => continue,
            Err(errno) => return Err(io::Error::from(errno)),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "no free loop device after 16 tries",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_the_kernel_layout() {
        // <linux/loop.h>: struct loop_info64 is 232 bytes, loop_config 304.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(check_range(0, 4096, 4096).is_ok());
        assert!(check_range(4096, 4096, 8192).is_ok());
        assert!(check_range(4096, 4096, 8191).is_err());
        assert!(check_range(0, 0, 4096).is_err());
        assert!(check_range(100, 512, 4096).is_err());
        assert!(check_range(0, 100, 4096).is_err());
        assert!(check_range(u64::MAX - 511, 1024, u64::MAX).is_err());
    }

    #[test]
    fn device_size_comes_from_sysfs_sectors() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir(sys.path().join("vda")).unwrap();
        std::fs::write(sys.path().join("vda/size"), "16\n").unwrap();
        assert_eq!(block_device_size(sys.path(), "vda").unwrap(), 8192);
        std::fs::write(sys.path().join("vda/size"), "x").unwrap();
        assert!(block_device_size(sys.path(), "vda").is_err());
    }
}
