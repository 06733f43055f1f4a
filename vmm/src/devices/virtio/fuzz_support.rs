//! For the fuzz targets (`fuzz/`) and their regression tests: guest
//! memory filled from arbitrary bytes and a split queue laid out in it, so
//! that descriptor tables, rings and buffers are all the fuzzer's.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size: small, so that the fuzzer's bytes cover much of it.
pub const MEM_SIZE: usize = 0x10000;
/// Where each queue's descriptor table, available and used rings start
/// (queue `n` at `n * QUEUE_STRIDE`).
const QUEUE_STRIDE: u64 = 0x3000;
const AVAIL_OFFSET: u64 = 0x1000;
const USED_OFFSET: u64 = 0x2000;
/// Chains served per queue at most: a fuzzed ring may list many.
pub const MAX_CHAINS: usize = 64;

/// Guest memory whose first bytes are `data` (the rest zero).
pub fn memory(data: &[u8]) -> GuestMemoryMmap {
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("fuzz guest memory");
    let len = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..len], GuestAddress(0))
        .expect("fill fuzz guest memory");
    mem
}

/// Queue `index` of `size` entries, laid out at `index * QUEUE_STRIDE`,
/// ready; its contents are whatever the memory holds there.
pub fn queue(index: u64, size: u16) -> Queue {
    let base = index * QUEUE_STRIDE;
    let mut queue = Queue::new(size).expect("fuzz queue size");
    queue.set_size(size);
    queue.set_desc_table_address(Some(base as u32), Some(0));
    queue.set_avail_ring_address(Some((base + AVAIL_OFFSET) as u32), Some(0));
    queue.set_used_ring_address(Some((base + USED_OFFSET) as u32), Some(0));
    queue.set_ready(true);
    queue
}
