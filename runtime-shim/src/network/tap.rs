//! Taps: created persistent by name (`ip tuntap`), attached to the bridge
//! (or, for a CNI namespace, redirected to its interface), and opened by
//! whoever starts the VM program, which inherits the fd.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use serde::{Deserialize, Serialize};

/// Every tap husk makes starts with this (and fits IFNAMSIZ with 6 more).
pub const TAP_PREFIX: &str = "husk-tap-";

/// One NIC of a VM: the tap it is backed by and the MAC the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    pub tap: String,
    pub mac: String,
    /// The network namespace the tap lives in (a CNI namespace); `None`:
    /// the VM program's own.
    #[serde(default)]
    pub netns: Option<std::path::PathBuf>,
}

/// The tap name for a container: the prefix and the ID's first 6 characters.
pub fn tap_name(id: &str) -> String {
    let short: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(6)
        .collect();
    format!("{TAP_PREFIX}{short}")
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens the existing tap `name` with IFF_VNET_HDR (close-on-exec; the
/// spawner hands it down explicitly), inside `netns` when given.
pub fn open(name: &str, netns: Option<&Path>) -> io::Result<OwnedFd> {
    let Some(netns) = netns else {
        return open_here(name);
    };
    let netns = File::open(netns)?;
    let name = name.to_owned();
    // setns moves only the calling thread: do it on a thread of its own.
    std::thread::spawn(move || {
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        open_here(&name)
    })
    .join()
    .map_err(|_| io::Error::other("tap opener thread panicked"))?
}

fn open_here(name: &str) -> io::Result<OwnedFd> {
    if name.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "tap name too long",
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut ifreq = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    ifreq.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and updates) a struct ifreq, which IfReq
    // lays out; the fd is open.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifreq) };
    if ret < 0 {
        return Err(io::Error::other(format!(
            "attach to tap {name}: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz_and_are_recognisable() {
        let name = tap_name("0123456789abcdef");
        assert_eq!(name, "husk-tap-012345");
        assert!(name.len() < 16);
    }
}
