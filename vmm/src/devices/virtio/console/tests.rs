//! virtio-console tests: a real worker thread, real guest memory driven by
//! a test driver, and real Unix socket clients.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::interrupt::INTERRUPT_USED_BUFFER;
use crate::devices::virtio::test_utils::{wait_readable, TestQueue};
use crate::exit::VmExitReason;

const MEM_SIZE: usize = 0x200_0000;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const RX_BUFFERS: u64 = 0x10_0000;
const TX_BUFFERS: u64 = 0x80_0000;
const SLOT: u64 = 0x1000;
const TIMEOUT: Duration = Duration::from_secs(20);

struct Harness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    console: Console,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    rx: TestQueue,
    tx: TestQueue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    exit_rx: Receiver<VmExitReason>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let (exit, exit_rx) = mpsc::channel();
        let console = Console::new(&path, exit).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut harness = Self {
            _dir: dir,
            path,
            console,
            rx: TestQueue::new(&mem, RX_RING, QUEUE_SIZE),
            tx: TestQueue::new(&mem, TX_RING, QUEUE_SIZE),
            mem,
            interrupt: Arc::new(Interrupt::new().unwrap()),
            rx_evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            tx_evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            exit_rx,
        };
        harness.activate();
        harness
    }

    fn activate(&mut self) {
        self.console
            .activate(
                self.mem.clone(),
                self.interrupt.clone(),
                vec![self.rx.device_queue(), self.tx.device_queue()],
                vec![
                    self.rx_evt.try_clone().unwrap(),
                    self.tx_evt.try_clone().unwrap(),
                ],
            )
            .unwrap();
    }

    fn connect(&self) -> UnixStream {
        let client = UnixStream::connect(&self.path).unwrap();
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        client
    }

    /// The guest transmits `data` in one buffer at tx slot `slot`.
    fn send(&mut self, slot: u64, data: &[u8]) -> u16 {
        let addr = TX_BUFFERS + slot * SLOT;
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        let head = self
            .tx
            .add_chain(&[(addr, data.len() as u32, false)])
            .unwrap();
        self.tx_evt.write(1).unwrap();
        head
    }

    /// The guest posts a receive buffer of `len` bytes at rx slot `slot`.
    fn post_rx(&mut self, slot: u64, len: u32) -> u16 {
        let addr = RX_BUFFERS + slot * SLOT;
        let head = self.rx.add_chain(&[(addr, len, true)]).unwrap();
        self.rx_evt.write(1).unwrap();
        head
    }

    fn wait_interrupt(&self) {
        assert!(
            wait_readable(self.interrupt.irq_evt(), TIMEOUT),
            "no interrupt"
        );
        self.interrupt.irq_evt().read().unwrap();
        assert_ne!(self.interrupt.status() & INTERRUPT_USED_BUFFER, 0);
        self.interrupt.ack(INTERRUPT_USED_BUFFER);
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

    fn assert_no_device_error(&self) {
        assert!(self.exit_rx.try_recv().is_err(), "device error reported");
    }
}

fn read_exactly(client: &mut UnixStream, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    client.read_exact(&mut data).unwrap();
    data
}

#[test]
fn guest_output_reaches_the_connected_client_and_raises_an_interrupt() {
    let mut h = Harness::new();
    let mut client = h.connect();
    let head = h.send(0, b"hello from the guest");
    assert_eq!(read_exactly(&mut client, 20), b"hello from the guest");
    h.wait_interrupt();
    assert_eq!(h.tx.pop_used(), Some((head, 0)));
    h.assert_no_device_error();
}

#[test]
fn client_input_lands_in_a_receive_buffer() {
    let mut h = Harness::new();
    let head = h.post_rx(0, 64);
    let mut client = h.connect();
    client.write_all(b"ping").unwrap();
    h.wait_interrupt();
    assert_eq!(h.rx.pop_used(), Some((head, 4)));
    assert_eq!(h.rx_bytes(0, 4), b"ping");
    h.assert_no_device_error();
}

#[test]
fn client_input_waits_for_receive_buffers() {
    let mut h = Harness::new();
    let mut client = h.connect();
    client.write_all(b"0123456789").unwrap();
    thread::sleep(Duration::from_millis(100));
    // A 4-byte buffer takes 4 bytes; the rest waits in the socket.
    let first = h.post_rx(0, 4);
    assert_eq!(h.wait_used(true), (first, 4));
    assert_eq!(h.rx_bytes(0, 4), b"0123");
    let second = h.post_rx(1, 64);
    assert_eq!(h.wait_used(true), (second, 6));
    assert_eq!(h.rx_bytes(1, 6), b"456789");
}

#[test]
fn output_without_a_client_is_kept_for_the_next_one() {
    let mut h = Harness::new();
    let head = h.send(0, b"early output");
    assert_eq!(h.wait_used(false), (head, 0), "taken into the port buffer");
    let mut client = h.connect();
    assert_eq!(read_exactly(&mut client, 12), b"early output");
}

#[test]
fn without_a_client_the_guest_is_held_back_not_dropped() {
    let mut h = Harness::new();
    let chunk = 4096usize;
    let chains = TX_BUFFER_LIMIT / chunk + 16;
    let data: Vec<u8> = (0..chains * chunk).map(|i| (i % 253) as u8).collect();
    for (slot, piece) in data.chunks(chunk).enumerate() {
        h.send(slot as u64, piece);
    }
    thread::sleep(Duration::from_millis(300));
    let mut consumed = 0;
    while h.tx.pop_used().is_some() {
        consumed += 1;
    }
    assert!(
        consumed <= TX_BUFFER_LIMIT / chunk + 1,
        "{consumed} of {chains} buffers taken with nobody reading"
    );
    let mut client = h.connect();
    assert_eq!(read_exactly(&mut client, data.len()), data);
    while consumed < chains {
        h.wait_used(false);
        consumed += 1;
    }
    h.assert_no_device_error();
}

#[test]
fn a_new_client_is_accepted_after_the_previous_one_leaves() {
    let mut h = Harness::new();
    let mut first = h.connect();
    h.send(0, b"one");
    assert_eq!(read_exactly(&mut first, 3), b"one");
    drop(first);
    h.wait_used(false);
    h.send(1, b"two");
    let mut second = h.connect();
    assert_eq!(read_exactly(&mut second, 3), b"two");
    let head = h.post_rx(0, 16);
    second.write_all(b"back").unwrap();
    assert_eq!(h.wait_used(true), (head, 4));
    assert_eq!(h.rx_bytes(0, 4), b"back");
    h.assert_no_device_error();
}

#[test]
fn reset_keeps_the_client_and_the_buffered_output() {
    let mut h = Harness::new();
    let mut client = h.connect();
    h.send(0, b"before");
    assert_eq!(read_exactly(&mut client, 6), b"before");
    h.console.reset();
    h.rx = TestQueue::new(&h.mem, RX_RING, QUEUE_SIZE);
    h.tx = TestQueue::new(&h.mem, TX_RING, QUEUE_SIZE);
    h.activate();
    h.send(0, b"after");
    assert_eq!(read_exactly(&mut client, 5), b"after");
}

/// The agent channel must survive bulk traffic both ways at once: 4 MiB
/// each way in odd-sized pieces, compared byte for byte.
#[test]
fn bulk_transfer_both_ways_is_lossless() {
    const TOTAL: usize = 4 << 20;
    let mut h = Harness::new();
    let to_host: Vec<u8> = (0..TOTAL).map(|i| (i * 7 % 251) as u8).collect();
    let to_guest: Vec<u8> = (0..TOTAL).map(|i| (i * 13 % 241) as u8).collect();

    let client = h.connect();
    let mut writer = client.try_clone().unwrap();
    let expected_to_guest = to_guest.clone();
    let writer_thread = thread::spawn(move || {
        let mut sent = 0;
        let mut piece = 1;
        while sent < expected_to_guest.len() {
            let end = (sent + piece).min(expected_to_guest.len());
            writer.write_all(&expected_to_guest[sent..end]).unwrap();
            sent = end;
            piece = piece * 3 % 9001 + 1;
        }
    });
    let mut reader = client;
    let reader_thread = thread::spawn(move || {
        let mut received = vec![0u8; TOTAL];
        reader.read_exact(&mut received).unwrap();
        received
    });

    // The guest side: keep the transmit queue full of odd-sized pieces and
    // the receive queue full of 4 KiB buffers, recycling as they come back.
    let slots = u64::from(QUEUE_SIZE);
    let mut tx_free: Vec<u64> = (0..slots).collect();
    let mut rx_free: Vec<u64> = (0..slots).collect();
    let mut tx_slot_of = std::collections::HashMap::new();
    let mut rx_slot_of = std::collections::HashMap::new();
    let (mut sent, mut piece, mut tx_outstanding) = (0usize, 1usize, 0usize);
    let mut received = Vec::with_capacity(TOTAL);
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent < TOTAL || tx_outstanding > 0 || received.len() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "stalled: sent {sent}, received {}",
            received.len()
        );
        let mut busy = false;
        while sent < TOTAL {
            let Some(&slot) = tx_free.last() else { break };
            let end = (sent + piece).min(TOTAL);
            let head = h.send(slot, &to_host[sent..end]);
            tx_free.pop();
            tx_slot_of.insert(head, slot);
            tx_outstanding += 1;
            sent = end;
            piece = piece * 5 % 4096 + 1;
            busy = true;
        }
        while let Some(slot) = rx_free.pop() {
            let head = h.post_rx(slot, SLOT as u32);
            rx_slot_of.insert(head, slot);
            busy = true;
        }
        while let Some((head, len)) = h.tx.pop_used() {
            assert_eq!(len, 0);
            tx_free.push(tx_slot_of.remove(&head).unwrap());
            tx_outstanding -= 1;
            busy = true;
        }
        while let Some((head, len)) = h.rx.pop_used() {
            let slot = rx_slot_of.remove(&head).unwrap();
            received.extend(h.rx_bytes(slot, len));
            rx_free.push(slot);
            busy = true;
        }
        if !busy && wait_readable(h.interrupt.irq_evt(), Duration::from_millis(20)) {
            let _ = h.interrupt.irq_evt().read();
            h.interrupt.ack(u32::MAX);
        }
    }
    writer_thread.join().unwrap();
    let host_received = reader_thread.join().unwrap();
    assert!(host_received == to_host, "guest → host stream corrupted");
    assert!(received == to_guest, "host → guest stream corrupted");
    h.assert_no_device_error();
}

#[test]
fn malformed_buffers_are_returned_without_killing_the_device() {
    let mut h = Harness::new();
    let mut client = h.connect();
    // A receive buffer the device may not write, and one outside memory.
    let readonly = h.rx.add_chain(&[(RX_BUFFERS, 64, false)]).unwrap();
    let outside = h.rx.add_chain(&[(MEM_SIZE as u64, 64, true)]).unwrap();
    h.rx_evt.write(1).unwrap();
    client.write_all(b"data").unwrap();
    assert_eq!(h.wait_used(true), (readonly, 0));
    assert_eq!(h.wait_used(true), (outside, 0));
    // A transmit buffer outside guest memory is skipped; good data follows.
    let bad = h.tx.add_chain(&[(MEM_SIZE as u64 - 2, 64, false)]).unwrap();
    h.tx_evt.write(1).unwrap();
    assert_eq!(h.wait_used(false), (bad, 0));
    h.send(0, b"still alive");
    assert_eq!(read_exactly(&mut client, 11), b"still alive");
    let good = h.post_rx(1, 64);
    assert_eq!(h.wait_used(true), (good, 4));
    assert_eq!(h.rx_bytes(1, 4), b"data");
    h.assert_no_device_error();
}

#[test]
fn socket_file_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let (exit, _rx) = mpsc::channel();

    std::fs::write(&path, b"not a socket").unwrap();
    let err = Console::new(&path, exit.clone()).err().unwrap();
    assert!(matches!(err, ConsoleError::NotASocket { .. }), "{err}");
    std::fs::remove_file(&path).unwrap();

    let live = UnixListener::bind(&path).unwrap();
    let err = Console::new(&path, exit.clone()).err().unwrap();
    assert!(matches!(err, ConsoleError::InUse { .. }), "{err}");
    drop(live);

    // The dead listener left its socket file behind: it is replaced.
    assert!(path.exists());
    let console = Console::new(&path, exit).unwrap();
    assert!(UnixStream::connect(&path).is_ok());
    drop(console);
    assert!(!path.exists(), "socket removed on drop");
}
