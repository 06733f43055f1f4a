//! The tap backend: a tap file descriptor the host opened (with
//! IFF_VNET_HDR) and passed to husk-vmm. Frames on it carry the 12-byte
//! `virtio_net_hdr_v1` in front, exactly what the guest puts in front of
//! its buffers, so the worker copies headers through unchanged and the
//! tap's kernel does checksums and segmentation the guest left undone.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};

/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers. With VIRTIO_F_VERSION_1 it is always 12 bytes.
pub const VNET_HDR_LEN: usize = 12;

// From <linux/if_tun.h>: not in libc.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// The offload features the device offers when the tap can do them: the
/// guest may leave checksums and TSO to the host (CSUM, HOST_TSO*), and
/// accept unchecksummed and TSO frames from it (GUEST_*).
pub const OFFLOAD_FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6);

/// The frame fd and what it can do. Tests use a datagram socket pair in
/// its place (one read or write = one frame, like a tap).
pub struct Tap {
    pub(super) fd: OwnedFd,
    /// The offload feature bits this backend supports (0 for a socket).
    pub(super) offloads: u64,
    is_tap: bool,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ioctl_int(fd: &OwnedFd, request: libc::c_ulong, value: libc::c_uint) -> io::Result<()> {
    // SAFETY: these tun ioctls take an int by value; the fd is open.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, value as libc::c_ulong) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Takes over a tap fd: checks it is a tap with IFF_VNET_HDR, sets the
    /// header size and non-blocking mode, and probes the offloads.
    pub fn open(fd: OwnedFd) -> io::Result<Self> {
        let mut ifreq = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF fills a struct ifreq, which IfReq lays out
        // (40 bytes on x86_64).
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut ifreq) };
        if ret < 0 {
            return Err(io::Error::other(format!(
                "not a tap device: {}",
                io::Error::last_os_error()
            )));
        }
        if ifreq.flags & IFF_TAP == 0 || ifreq.flags & IFF_VNET_HDR == 0 {
            return Err(io::Error::other(
                "the tap must be opened with IFF_TAP | IFF_VNET_HDR",
            ));
        }
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        set_nonblocking(&fd)?;
        let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        let offloads = if ioctl_int(&fd, TUNSETOFFLOAD, all).is_ok() {
            OFFLOAD_FEATURES
        } else {
            0
        };
        // Nothing the guest has not accepted may reach it: off until
        // activation sets what it acked.
        let _ = ioctl_int(&fd, TUNSETOFFLOAD, 0);
        Ok(Self {
            fd,
            offloads,
            is_tap: true,
        })
    }

    /// A datagram fd standing in for a tap, without offloads (tests).
    pub fn from_datagram_fd(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        Ok(Self {
            fd,
            offloads: 0,
            is_tap: false,
        })
    }

    /// Tells the tap which offloaded frames the guest accepts (its acked
    /// GUEST_* features), so it never hands the guest one it cannot take.
    pub(super) fn set_guest_offloads(&self, acked: u64) -> io::Result<()> {
        if !self.is_tap {
            return Ok(());
        }
        let mut flags = 0;
        if acked & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0 {
            flags |= TUN_F_CSUM;
            if acked & (1 << VIRTIO_NET_F_GUEST_TSO4) != 0 {
                flags |= TUN_F_TSO4;
            }
            if acked & (1 << VIRTIO_NET_F_GUEST_TSO6) != 0 {
                flags |= TUN_F_TSO6;
            }
        }
        ioctl_int(&self.fd, TUNSETOFFLOAD, flags)
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an open fd.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
