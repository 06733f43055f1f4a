//! Helpers shared by the virtio device tests.

use std::os::fd::AsRawFd;
use std::time::Duration;

/// Waits until `fd` is readable; false on timeout.
pub(crate) fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, and its count.
    let ready = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
    ready == 1 && pollfd.revents & libc::POLLIN != 0
}

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// A minimal split-queue *driver* for tests that run a device worker over
/// many buffers: unlike virtio-queue's mock it recycles descriptors and
/// wraps around the rings, so a transfer can be longer than the queue.
pub(crate) struct TestQueue {
    mem: GuestMemoryMmap,
    size: u16,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    avail_idx: u16,
    used_seen: u16,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
}

/// One buffer of a chain: address, length, device-writable.
pub(crate) type Buffer = (u64, u32, bool);

impl TestQueue {
    /// Lays the rings out from `base` (needs `size * 16 + 0x2000` bytes).
    pub(crate) fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc_table = GuestAddress(base);
        let avail_ring = desc_table.unchecked_add(u64::from(size) * 16);
        let used_ring = GuestAddress((avail_ring.0 + 6 + 2 * u64::from(size) + 3) & !3);
        let zeros = vec![0u8; size as usize * 16 + 0x2000];
        mem.write_slice(&zeros, desc_table).unwrap();
        Self {
            mem: mem.clone(),
            size,
            desc_table,
            avail_ring,
            used_ring,
            avail_idx: 0,
            used_seen: 0,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
        }
    }

    /// The device's view, as the transport would hand it over.
    pub(crate) fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(
            Some(self.desc_table.0 as u32),
            Some((self.desc_table.0 >> 32) as u32),
        );
        q.set_avail_ring_address(
            Some(self.avail_ring.0 as u32),
            Some((self.avail_ring.0 >> 32) as u32),
        );
        q.set_used_ring_address(
            Some(self.used_ring.0 as u32),
            Some((self.used_ring.0 >> 32) as u32),
        );
        q.set_ready(true);
        q
    }

    /// Publishes a chain; `None` when the table is full.
    pub(crate) fn add_chain(&mut self, buffers: &[Buffer]) -> Option<u16> {
        if buffers.is_empty() || self.free.len() < buffers.len() {
            return None;
        }
        let indices: Vec<u16> = (0..buffers.len())
            .map(|_| self.free.pop().unwrap())
            .collect();
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = indices.get(i + 1).copied().unwrap_or(0);
            if i + 1 < buffers.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            let at = self.desc_table.unchecked_add(u64::from(indices[i]) * 16);
            self.mem.write_obj(desc, at).unwrap();
        }
        let head = indices[0];
        let slot = self
            .avail_ring
            .unchecked_add(4 + 2 * u64::from(self.avail_idx % self.size));
        self.mem.write_obj(head, slot).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(
                self.avail_idx,
                self.avail_ring.unchecked_add(2),
                Ordering::Release,
            )
            .unwrap();
        self.chains.insert(head, indices);
        Some(head)
    }

    /// The next used element (head, len), freeing its descriptors.
    pub(crate) fn pop_used(&mut self) -> Option<(u16, u32)> {
        let used_idx: u16 = self
            .mem
            .load(self.used_ring.unchecked_add(2), Ordering::Acquire)
            .unwrap();
        if used_idx == self.used_seen {
            return None;
        }
        let elem = self
            .used_ring
            .unchecked_add(4 + 8 * u64::from(self.used_seen % self.size));
        let id: u32 = self.mem.read_obj(elem).unwrap();
        let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        let head = u16::try_from(id).unwrap();
        let indices = self
            .chains
            .remove(&head)
            .expect("device returned an unknown head");
        self.free.extend(indices);
        Some((head, len))
    }
}
