//! virtio-blk over a raw disk image, or over read-only images presented
//! back to back as one disk (`concat`): one request queue,
//! IN/OUT/FLUSH/GET_ID, the read-only flag honoured. `request` checks what
//! the guest sends, `disk` does the I/O, `concat` opens and lays out the
//! component images, `worker` runs the queue on its own thread.
//!
//! Features offered: VERSION_1, FLUSH, SEG_MAX, SIZE_MAX, INDIRECT_DESC (so
//! that a request takes one ring slot and Linux fills the ring with
//! requests), and RO for a read-only disk. Not offered: EVENT_IDX (we
//! interrupt after every batch), multiqueue, discard.

mod concat;
mod disk;
mod request;
mod slot;
mod worker;

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use concat::ConcatImage;
pub use concat::{ConcatError, MAX_COMPONENTS};
pub use disk::ID_BYTES;
pub use request::SECTOR_SIZE;
pub use slot::{SlotBacking, SlotError};

use self::disk::{Backing, Disk};
use self::request::{MAX_SEGMENTS, MAX_SEGMENT_SIZE};

/// Fuzz entry (see `fuzz/`): serves every request chain that a guest
/// memory made of `data` puts on the request queue, against a 64 KiB
/// in-memory disk (read-only when the first byte is odd).
#[doc(hidden)]
pub fn fuzz_requests(data: &[u8]) {
    use virtio_queue::QueueT;
    let mem = super::fuzz_support::memory(data);
    let mut queue = super::fuzz_support::queue(0, 16);
    // SAFETY: memfd_create with a valid name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"husk-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return;
    }
    // SAFETY: a new fd that nothing else owns.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    if file.set_len(64 * 1024).is_err() {
        return;
    }
    let read_only = data.first().is_some_and(|byte| byte & 1 == 1);
    let disk = Disk::new(Backing::File(file), 128, read_only, [0; ID_BYTES]);
    for _ in 0..super::fuzz_support::MAX_CHAINS {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        let len = worker::serve_chain(&disk, chain, &mem);
        if queue.add_used(&mem, head, len).is_err() {
            break;
        }
    }
}
use self::worker::BlockWorker;
use super::device::take_ready_queues;
use super::worker::Worker;
use super::{read_config_space, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::exit::ExitSender;

/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

#[derive(Debug, Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot find the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk serial {serial:?} is invalid: {reason}")]
    InvalidSerial {
        serial: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Concat(#[from] ConcatError),
}

/// A virtio-blk device. Create it with [`Block::new`] and hand it to an
/// [`MmioTransport`](super::MmioTransport).
pub struct Block {
    label: String,
    capacity_sectors: u64,
    read_only: bool,
    config: Vec<u8>,
    avail_features: u64,
    acked_features: u64,
    /// Owned here while inactive, by the worker while active.
    disk: Option<Disk>,
    worker: Option<Worker<Disk>>,
    exit: ExitSender,
}

impl Block {
    /// Opens `path` as a raw disk. `serial` (at most 20 bytes, no NUL) is
    /// what the guest reads from /sys/block/vdX/serial. A size that is not a
    /// multiple of 512 is rounded down (the tail is unreachable).
    pub fn new(
        path: impl AsRef<Path>,
        read_only: bool,
        serial: String,
        exit: ExitSender,
    ) -> Result<Self, BlockError> {
        let path = path.as_ref();
        let id = device_id(&serial)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        // Seeking to the end also works for block devices, whose metadata
        // length is 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_owned(),
                source,
            })?;
        if size % SECTOR_SIZE != 0 {
            tracing::warn!(
                path = %path.display(),
                size,
                "disk image size is not a multiple of {SECTOR_SIZE} bytes; the last {} bytes are not visible to the guest",
                size % SECTOR_SIZE
            );
        }
        let capacity_sectors = size / SECTOR_SIZE;
        let label = format!("virtio-blk {serial}");
        tracing::debug!(device = %label, path = %path.display(), capacity_sectors, read_only, "disk opened");
        Ok(Self::from_disk(
            label,
            Disk::new(Backing::File(file), capacity_sectors, read_only, id),
            exit,
        ))
    }

    /// A read-only disk that is the concatenation of the image files named
    /// in `list` (one absolute path per line, blank lines ignored), each a
    /// non-zero multiple of 512 bytes. Every component is opened now.
    pub fn concat(
        list: impl AsRef<Path>,
        serial: String,
        exit: ExitSender,
    ) -> Result<Self, BlockError> {
        let list = list.as_ref();
        let id = device_id(&serial)?;
        let image = ConcatImage::open(list)?;
        let capacity_sectors = image.size() / SECTOR_SIZE;
        let label = format!("virtio-blk {serial}");
        tracing::info!(
            device = %label,
            list = %list.display(),
            components = image.components().len(),
            capacity_sectors,
            "concatenated read-only disk opened"
        );
        for (index, c) in image.components().iter().enumerate() {
            tracing::debug!(device = %label, index, path = %c.path.display(), start_sector = c.start / SECTOR_SIZE, sectors = c.len / SECTOR_SIZE, "component");
        }
        Ok(Self::from_disk(
            label,
            Disk::new(Backing::Concat(image), capacity_sectors, true, id),
            exit,
        ))
    }

    /// An empty read-only slot of `capacity` bytes (a multiple of 512)
    /// whose contents are swapped through the returned handle.
    pub fn slot(
        capacity: u64,
        serial: String,
        exit: ExitSender,
    ) -> Result<(Self, SlotBacking), BlockError> {
        let id = device_id(&serial)?;
        let backing = SlotBacking::new(capacity - capacity % SECTOR_SIZE);
        let label = format!("virtio-blk {serial}");
        tracing::info!(device = %label, capacity, "empty disk slot");
        let disk = Disk::new(
            Backing::Slot(backing.clone()),
            capacity / SECTOR_SIZE,
            true,
            id,
        );
        Ok((Self::from_disk(label, disk, exit), backing))
    }

    fn from_disk(label: String, disk: Disk, exit: ExitSender) -> Self {
        let capacity_sectors = disk.capacity_sectors();
        let read_only = disk.is_read_only();
        let mut avail_features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC;
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        Self {
            label,
            capacity_sectors,
            read_only,
            config: config_space(capacity_sectors),
            avail_features,
            acked_features: 0,
            disk: Some(disk),
            worker: None,
            exit,
        }
    }

    /// Disk size in 512-byte sectors, as the guest sees it.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.reset();
    }
}

/// The 20-byte GET_ID answer: the serial, NUL-padded.
fn device_id(serial: &str) -> Result<[u8; ID_BYTES], BlockError> {
    let invalid = |reason| BlockError::InvalidSerial {
        serial: serial.to_owned(),
        reason,
    };
    if serial.len() > ID_BYTES {
        return Err(invalid("longer than 20 bytes"));
    }
    if serial.bytes().any(|b| b == 0) {
        return Err(invalid("contains a NUL byte"));
    }
    let mut id = [0u8; ID_BYTES];
    id[..serial.len()].copy_from_slice(serial.as_bytes());
    Ok(id)
}

/// `struct virtio_blk_config` with the fields our features announce.
fn config_space(capacity_sectors: u64) -> Vec<u8> {
    let mut config = vec![0u8; size_of::<virtio_blk_config>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        config[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(
        offset_of!(virtio_blk_config, capacity),
        &capacity_sectors.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, size_max),
        &MAX_SEGMENT_SIZE.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, seg_max),
        &(MAX_SEGMENTS as u32).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_SIZE as u32).to_le_bytes(),
    );
    config
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.label, &self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with CONFIG_WCE, which we do
        // not offer.
        tracing::warn!(device = %self.label, offset, len = data.len(), "guest wrote the read-only virtio-blk config; ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ([queue], [queue_evt]) = take_ready_queues::<1>(queues, queue_events)?;
        let disk = self.disk.take().ok_or(ActivateError::BackendGone)?;
        let worker = BlockWorker {
            label: self.label.clone(),
            disk,
            queue,
            queue_evt,
            mem,
            interrupt,
            exit: self.exit.clone(),
        };
        let worker = Worker::spawn(self.label.clone(), move |stop_evt| worker.run(stop_evt))
            .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(disk) => self.disk = Some(disk),
                None => {
                    tracing::error!(device = %self.label, "virtio-blk worker panicked; the disk is gone")
                }
            }
        }
        self.acked_features = 0;
    }
}

/// Opens a disk file for tests without going through a path.
#[cfg(test)]
fn disk_for_test(file: std::fs::File, read_only: bool, serial: &str) -> Disk {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Disk::new(
        Backing::File(file),
        size / SECTOR_SIZE,
        read_only,
        device_id(serial).unwrap(),
    )
}

/// Opens a concatenated disk for tests.
#[cfg(test)]
fn concat_disk_for_test(list: &Path, serial: &str) -> Result<Disk, ConcatError> {
    let image = ConcatImage::open(list)?;
    let sectors = image.size() / SECTOR_SIZE;
    Ok(Disk::new(
        Backing::Concat(image),
        sectors,
        true,
        device_id(serial).unwrap(),
    ))
}

#[cfg(test)]
mod tests;
