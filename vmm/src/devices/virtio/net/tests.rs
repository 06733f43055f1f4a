//! virtio-net tests: a real worker thread over guest memory driven by a
//! test driver, with a datagram socket pair standing in for the tap (one
//! datagram = one frame, vnet header included, as on a tap).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::test_utils::{wait_readable, Buffer, TestQueue};
use crate::exit::VmExitReason;

const MEM_SIZE: usize = 0x100_0000;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const RX_BUFFERS: u64 = 0x10_0000;
const TX_BUFFERS: u64 = 0x80_0000;
const SLOT: u64 = 0x1_0000;
const TIMEOUT: Duration = Duration::from_secs(20);
const MAC: [u8; 6] = [0x02, 0x48, 0x55, 0x53, 0x4b, 0x01];

struct Harness {
    net: Net,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    rx: TestQueue,
    tx: TestQueue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    /// The host side of the "tap".
    peer: UnixDatagram,
    exit_rx: Receiver<VmExitReason>,
}

/// A frame as the tap carries it: a zero vnet header, then `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(payload);
    frame
}

impl Harness {
    fn new() -> Self {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let tap = Tap::from_datagram_fd(OwnedFd::from(ours)).unwrap();
        let (exit, exit_rx) = mpsc::channel();
        let mut net = Net::new("virtio-net-test".into(), tap, MAC, exit);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let rx = TestQueue::new(&mem, RX_RING, QUEUE_SIZE);
        let tx = TestQueue::new(&mem, TX_RING, QUEUE_SIZE);
        let interrupt = Arc::new(Interrupt::new().unwrap());
        let rx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let tx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        net.ack_features(net.avail_features());
        net.activate(
            mem.clone(),
            interrupt.clone(),
            vec![rx.device_queue(), tx.device_queue()],
            vec![rx_evt.try_clone().unwrap(), tx_evt.try_clone().unwrap()],
        )
        .unwrap();
        Self {
            net,
            mem,
            interrupt,
            rx,
            tx,
            rx_evt,
            tx_evt,
            peer,
            exit_rx,
        }
    }

    /// The guest transmits a chain of `buffers`.
    fn send_chain(&mut self, buffers: &[Buffer]) -> u16 {
        let head = self.tx.add_chain(buffers).unwrap();
        self.tx_evt.write(1).unwrap();
        head
    }

    /// The guest transmits `data` as header + payload in two buffers.
    fn send(&mut self, slot: u64, data: &[u8]) -> u16 {
        let addr = TX_BUFFERS + slot * SLOT;
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        let header = VNET_HDR_LEN as u32;
        self.send_chain(&[
            (addr, header, false),
            (addr + u64::from(header), data.len() as u32 - header, false),
        ])
    }

    fn post_rx_chain(&mut self, buffers: &[Buffer]) -> u16 {
        let head = self.rx.add_chain(buffers).unwrap();
        self.rx_evt.write(1).unwrap();
        head
    }

    fn post_rx(&mut self, slot: u64, len: u32) -> u16 {
        self.post_rx_chain(&[(RX_BUFFERS + slot * SLOT, len, true)])
    }

    fn wait_used(&mut self, rx: bool) -> (u16, u32) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let queue = if rx { &mut self.rx } else { &mut self.tx };
            if let Some(used) = queue.pop_used() {
                return used;
            }
            assert!(Instant::now() < deadline, "no used buffer");
            if wait_readable(self.interrupt.irq_evt(), Duration::from_millis(50)) {
                let _ = self.interrupt.irq_evt().read();
                self.interrupt.ack(u32::MAX);
            }
        }
    }

    fn rx_bytes(&self, slot: u64, len: u32) -> Vec<u8> {
        let mut data = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(RX_BUFFERS + slot * SLOT))
            .unwrap();
        data
    }

    /// The next frame the device wrote to the tap.
    fn tap_frame(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME];
        match self.peer.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(_) => None,
        }
    }

    fn assert_no_device_error(&self) {
        assert!(self.exit_rx.try_recv().is_err(), "device error reported");
    }
}

#[test]
fn config_space_gives_the_mac_and_link_up() {
    let h = Harness::new();
    let mut config = [0u8; 8];
    h.net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1);
    let features = h.net.avail_features();
    assert_ne!(features & (1 << VIRTIO_NET_F_MAC), 0);
    // A backend without offloads offers none.
    assert_eq!(features & (1 << VIRTIO_NET_F_GUEST_CSUM), 0);
    // Reads past the end come back as zeros, not a panic.
    let mut past = [0xffu8; 4];
    h.net.read_config(6, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn a_transmitted_chain_is_one_frame_on_the_tap() {
    let mut h = Harness::new();
    let data = frame(b"an ethernet frame from the guest");
    let head = h.send(0, &data);
    assert_eq!(h.tap_frame().as_deref(), Some(&data[..]));
    assert_eq!(h.wait_used(false), (head, 0));
    h.assert_no_device_error();
}

#[test]
fn a_tap_frame_lands_in_a_receive_buffer_with_num_buffers_one() {
    let mut h = Harness::new();
    let head = h.post_rx(0, 2048);
    let data = frame(b"an ethernet frame for the guest");
    h.peer.send(&data).unwrap();
    let (used_head, len) = h.wait_used(true);
    assert_eq!((used_head, len as usize), (head, data.len()));
    let got = h.rx_bytes(0, len);
    assert_eq!(&got[VNET_HDR_LEN..], &data[VNET_HDR_LEN..]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
    h.assert_no_device_error();
}

#[test]
fn frames_wait_in_the_tap_until_the_guest_posts_buffers() {
    let mut h = Harness::new();
    for i in 0..3u8 {
        h.peer.send(&frame(&[i; 60])).unwrap();
    }
    for slot in 0..3u64 {
        let head = h.post_rx(slot, 2048);
        assert_eq!(h.wait_used(true), (head, (VNET_HDR_LEN + 60) as u32));
        assert_eq!(h.rx_bytes(slot, 13)[12], slot as u8, "in order");
    }
}

#[test]
fn a_frame_spans_a_chain_of_small_receive_buffers() {
    let mut h = Harness::new();
    let base = RX_BUFFERS;
    let head = h.post_rx_chain(&[
        (base, 8, true),
        (base + 0x100, 8, true),
        (base + 0x200, 64, true),
    ]);
    let data = frame(b"0123456789abcdefghij");
    h.peer.send(&data).unwrap();
    assert_eq!(h.wait_used(true), (head, data.len() as u32));
    let mut second = [0u8; 8];
    h.mem
        .read_slice(&mut second, GuestAddress(base + 0x100))
        .unwrap();
    assert_eq!(&second[4..], b"0123");
}

#[test]
fn malformed_transmit_chains_cost_only_their_frame() {
    let mut h = Harness::new();
    let addr = TX_BUFFERS;
    // Device-writable buffer in a transmit chain.
    let writable = h.send_chain(&[(addr, 64, true)]);
    assert_eq!(h.wait_used(false), (writable, 0));
    // A buffer outside guest memory.
    let outside = h.send_chain(&[(addr, 12, false), (MEM_SIZE as u64 - 8, 64, false)]);
    assert_eq!(h.wait_used(false), (outside, 0));
    // Shorter than the vnet header.
    let short = h.send_chain(&[(addr, 4, false)]);
    assert_eq!(h.wait_used(false), (short, 0));
    // Larger than any frame (the buffers are in memory, just too many).
    let big: Vec<Buffer> = (0..3).map(|i| (addr + i * 0x8000, 0x8000, false)).collect();
    let huge = h.send_chain(&big);
    assert_eq!(h.wait_used(false), (huge, 0));
    assert_eq!(h.tap_frame(), None, "no malformed frame reached the tap");
    // The device still works.
    let data = frame(b"still alive");
    let head = h.send(1, &data);
    assert_eq!(h.tap_frame().as_deref(), Some(&data[..]));
    assert_eq!(h.wait_used(false), (head, 0));
    h.assert_no_device_error();
}

#[test]
fn malformed_receive_chains_are_returned_and_the_frame_waits() {
    let mut h = Harness::new();
    let data = frame(b"for a good buffer");
    h.peer.send(&data).unwrap();
    // Device-readable buffer in a receive chain, then one outside memory.
    let readable = h.post_rx_chain(&[(RX_BUFFERS, 2048, false)]);
    assert_eq!(h.wait_used(true), (readable, 0));
    let outside = h.post_rx_chain(&[(MEM_SIZE as u64 - 16, 2048, true)]);
    assert_eq!(h.wait_used(true), (outside, 0));
    let good = h.post_rx(1, 2048);
    assert_eq!(h.wait_used(true), (good, data.len() as u32));
    assert_eq!(
        &h.rx_bytes(1, data.len() as u32)[12..],
        b"for a good buffer"
    );
    h.assert_no_device_error();
}

#[test]
fn a_frame_too_large_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let mut h = Harness::new();
    h.peer.send(&frame(&[7u8; 1000])).unwrap();
    let head = h.post_rx(0, 100);
    let small = frame(b"fits");
    // The big frame is dropped; the same buffer takes the next frame.
    h.peer.send(&small).unwrap();
    assert_eq!(h.wait_used(true), (head, small.len() as u32));
    assert_eq!(&h.rx_bytes(0, small.len() as u32)[12..], b"fits");
}

#[test]
fn reset_and_reactivate_keep_the_tap() {
    let mut h = Harness::new();
    h.net.reset();
    let rx = TestQueue::new(&h.mem, RX_RING, QUEUE_SIZE);
    let tx = TestQueue::new(&h.mem, TX_RING, QUEUE_SIZE);
    h.rx = rx;
    h.tx = tx;
    h.net
        .activate(
            h.mem.clone(),
            h.interrupt.clone(),
            vec![h.rx.device_queue(), h.tx.device_queue()],
            vec![h.rx_evt.try_clone().unwrap(), h.tx_evt.try_clone().unwrap()],
        )
        .unwrap();
    let data = frame(b"after reset");
    let head = h.send(0, &data);
    assert_eq!(h.tap_frame().as_deref(), Some(&data[..]));
    assert_eq!(h.wait_used(false), (head, 0));
}

/// Opens a tap named `name` with `flags` (in the calling thread's netns).
fn open_tap(name: &str, flags: libc::c_short) -> OwnedFd {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut ifreq = [0u8; 40];
    ifreq[..name.len()].copy_from_slice(name.as_bytes());
    ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF with a 40-byte struct ifreq.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), 0x4004_54ca, ifreq.as_mut_ptr()) };
    assert_eq!(ret, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    OwnedFd::from(file)
}

#[test]
fn a_real_tap_needs_vnet_hdr_and_offers_its_offloads() {
    if !std::path::Path::new("/dev/net/tun").exists() || unsafe { libc::geteuid() } != 0 {
        husk_test_skip::skip_unless_ci("needs root and /dev/net/tun");
        return;
    }
    // In a network namespace of this thread's own: the host sees no tap.
    std::thread::spawn(|| {
        nix_unshare_net();
        let with_hdr = Tap::open(open_tap("hk0", 0x0002 | 0x1000 | 0x4000)).unwrap();
        assert_eq!(
            with_hdr.offloads, OFFLOAD_FEATURES,
            "a Linux tap does csum and TSO"
        );
        let err = Tap::open(open_tap("hk1", 0x0002 | 0x1000)).err().unwrap();
        assert!(err.to_string().contains("IFF_VNET_HDR"), "{err}");
        let (socket, _) = UnixDatagram::pair().unwrap();
        assert!(
            Tap::open(OwnedFd::from(socket)).is_err(),
            "a socket is not a tap"
        );
    })
    .join()
    .unwrap();
}

fn nix_unshare_net() {
    // SAFETY: unshare(2) with CLONE_NEWNET affects only this thread.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
}
