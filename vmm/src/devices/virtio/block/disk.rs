//! The backing file of a virtio-blk device and the I/O for a parsed request.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, ReadVolatile, VolatileMemoryError, VolatileSlice,
    WriteVolatile,
};

use super::request::{Request, RequestKind, SECTOR_SIZE};

/// Length of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// A raw disk image: the file, its size in sectors, and what the guest may do.
#[derive(Debug)]
pub struct Disk {
    file: File,
    capacity_sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

/// What to put in the status byte and in the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub status: u8,
    /// Bytes written into device-writable buffers, the status byte included.
    pub used_len: u32,
}

impl Completion {
    fn status_only(status: u32) -> Self {
        Self {
            status: status as u8,
            used_len: 1,
        }
    }
}

impl Disk {
    pub fn new(file: File, capacity_sectors: u64, read_only: bool, id: [u8; ID_BYTES]) -> Self {
        Self {
            file,
            capacity_sectors,
            read_only,
            id,
        }
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Runs the request and reports its completion; writes nothing to the
    /// status byte (the caller does, so that rejected chains share the path).
    pub fn execute<M: GuestMemory>(&self, request: &Request, mem: &M) -> Completion {
        let result = match request.kind {
            RequestKind::In | RequestKind::Out if !self.in_range(request) => {
                tracing::warn!(
                    sector = request.sector,
                    len = request.data_len,
                    capacity_sectors = self.capacity_sectors,
                    "virtio-blk request beyond the end of the disk"
                );
                return Completion::status_only(VIRTIO_BLK_S_IOERR);
            }
            RequestKind::In => self.read(request, mem).map(|()| request.data_len),
            RequestKind::Out if self.read_only => {
                tracing::debug!(
                    sector = request.sector,
                    "write to a read-only virtio-blk disk refused"
                );
                return Completion::status_only(VIRTIO_BLK_S_IOERR);
            }
            RequestKind::Out => self.write(request, mem).map(|()| 0),
            RequestKind::Flush if self.read_only => Ok(0),
            RequestKind::Flush => self.file.sync_data().map(|()| 0),
            RequestKind::GetId => self.write_id(request, mem),
            RequestKind::Unsupported(request_type) => {
                tracing::debug!(request_type, "unsupported virtio-blk request type");
                return Completion::status_only(VIRTIO_BLK_S_UNSUPP);
            }
        };
        match result {
            // Data lengths are bounded by MAX_SEGMENTS * MAX_SEGMENT_SIZE, far below u32::MAX.
            Ok(written) => Completion {
                status: VIRTIO_BLK_S_OK as u8,
                used_len: u32::try_from(written).unwrap_or(u32::MAX - 1) + 1,
            },
            Err(e) => {
                tracing::warn!(kind = ?request.kind, sector = request.sector, "virtio-blk I/O failed: {e}");
                Completion::status_only(VIRTIO_BLK_S_IOERR)
            }
        }
    }

    fn in_range(&self, request: &Request) -> bool {
        let sectors = request.data_len / SECTOR_SIZE;
        request
            .sector
            .checked_add(sectors)
            .is_some_and(|end| end <= self.capacity_sectors)
    }

    fn byte_offset(sector: u64) -> io::Result<u64> {
        sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "sector overflows"))
    }

    fn read<M: GuestMemory>(&self, request: &Request, mem: &M) -> io::Result<()> {
        let mut source = FileAt {
            file: &self.file,
            offset: Self::byte_offset(request.sector)?,
        };
        for segment in &request.segments {
            mem.read_exact_volatile_from(segment.addr, &mut source, segment.len as usize)
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    fn write<M: GuestMemory>(&self, request: &Request, mem: &M) -> io::Result<()> {
        let mut sink = FileAt {
            file: &self.file,
            offset: Self::byte_offset(request.sector)?,
        };
        for segment in &request.segments {
            mem.write_all_volatile_to(segment.addr, &mut sink, segment.len as usize)
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// GET_ID: the ID, NUL-padded to 20 bytes, cut to the guest's buffers.
    fn write_id<M: GuestMemory>(&self, request: &Request, mem: &M) -> io::Result<u64> {
        let mut remaining: &[u8] = &self.id;
        let mut written = 0u64;
        for segment in &request.segments {
            if remaining.is_empty() {
                break;
            }
            let n = remaining.len().min(segment.len as usize);
            mem.write_slice(&remaining[..n], segment.addr)
                .map_err(io::Error::other)?;
            remaining = &remaining[n..];
            written += n as u64;
        }
        Ok(written)
    }
}

/// Writes the status byte; the address was checked when parsing.
pub fn write_status<M: GuestMemory>(mem: &M, addr: GuestAddress, status: u8) {
    if let Err(e) = mem.write_obj(status, addr) {
        tracing::warn!(
            addr = addr.0,
            "cannot write the virtio-blk status byte: {e}"
        );
    }
}

/// A file position for pread/pwrite straight between the disk file and guest
/// memory: vm-memory's own File support uses the shared file offset, which
/// would need a seek per segment.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    fn file_offset(&self) -> Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.offset).map_err(|_| {
            VolatileMemoryError::IOError(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file offset out of range",
            ))
        })
    }
}

impl ReadVolatile for FileAt<'_> {
    /// Fills `buf` completely unless the file ends first.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.offset(done)?;
            let guard = rest.ptr_guard_mut();
            // SAFETY: the fd is valid for the lifetime of `self.file`; `guard`
            // points to `rest.len()` bytes of mapped guest memory that the
            // VolatileSlice guarantees stay valid while the guard lives.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    guard.as_ptr().cast(),
                    rest.len(),
                    self.file_offset()?,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                buf.bitmap().mark_dirty(0, buf.len());
                return Err(VolatileMemoryError::IOError(e));
            }
            if n == 0 {
                break;
            }
            let n = n as usize;
            rest.bitmap().mark_dirty(0, n);
            done += n;
            self.offset += n as u64;
        }
        Ok(done)
    }
}

impl WriteVolatile for FileAt<'_> {
    /// Writes all of `buf` (pwrite to a regular file only stops short on errors).
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.offset(done)?;
            let guard = rest.ptr_guard();
            // SAFETY: as in `read_volatile`; pwrite only reads the buffer.
            let n = unsafe {
                libc::pwrite(
                    self.file.as_raw_fd(),
                    guard.as_ptr().cast(),
                    rest.len(),
                    self.file_offset()?,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(VolatileMemoryError::IOError(e));
            }
            if n == 0 {
                break;
            }
            done += n as usize;
            self.offset += n as u64;
        }
        Ok(done)
    }
}
