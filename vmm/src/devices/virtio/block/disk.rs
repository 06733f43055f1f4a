//! The backing of a virtio-blk device and the I/O for a parsed request.
//! Two backings: one raw image file (read and written in place with
//! pread/pwrite), and read-only component images back to back
//! (`concat`), read with pread on each component a request touches.

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

use super::concat::ConcatImage;
use super::request::{Request, RequestKind, SECTOR_SIZE};
use super::slot::SlotBacking;

/// Length of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Where a disk's bytes live.
#[derive(Debug)]
pub enum Backing {
    /// One raw image file.
    File(File),
    /// Read-only images back to back; never written.
    Concat(ConcatImage),
    /// A read-only slot whose images are swapped at run time, zeros past
    /// them (see `slot`).
    Slot(SlotBacking),
}

/// A disk: its backing, its size in sectors, and what the guest may do.
#[derive(Debug)]
pub struct Disk {
    backing: Backing,
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
    /// A concatenated backing is always read-only, whatever `read_only` says.
    pub fn new(
        backing: Backing,
        capacity_sectors: u64,
        read_only: bool,
        id: [u8; ID_BYTES],
    ) -> Self {
        let read_only = read_only || matches!(backing, Backing::Concat(_) | Backing::Slot(_));
        Self {
            backing,
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
            RequestKind::Flush => self.flush().map(|()| 0),
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

    /// Fills the request's segments in order from the disk, starting at
    /// its sector. The range was checked against the capacity; a backing
    /// file that shrank since it was opened makes this a short read, an error.
    fn read<M: GuestMemory>(&self, request: &Request, mem: &M) -> io::Result<()> {
        let offset = Self::byte_offset(request.sector)?;
        match &self.backing {
            Backing::File(file) => read_segments(request, mem, &mut FileAt { file, offset }),
            Backing::Concat(image) => read_segments(request, mem, &mut ConcatAt { image, offset }),
            Backing::Slot(slot) => {
                // Held for the whole request: a swap waits for it.
                let image = slot.lock();
                read_segments(
                    request,
                    mem,
                    &mut ZeroPadded {
                        image: image.as_ref(),
                        offset,
                    },
                )
            }
        }
    }

    fn write<M: GuestMemory>(&self, request: &Request, mem: &M) -> io::Result<()> {
        let file = match &self.backing {
            Backing::File(file) => file,
            // `execute` refuses writes to read-only disks before this.
            Backing::Concat(_) | Backing::Slot(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "a concatenated disk is read-only",
                ))
            }
        };
        let mut sink = FileAt {
            file,
            offset: Self::byte_offset(request.sector)?,
        };
        for segment in &request.segments {
            mem.write_all_volatile_to(segment.addr, &mut sink, segment.len as usize)
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        match &self.backing {
            Backing::File(file) => file.sync_data(),
            Backing::Concat(_) | Backing::Slot(_) => Ok(()),
        }
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

/// Reads every segment of `request` from `source`, which advances.
fn read_segments<M: GuestMemory, R: ReadVolatile>(
    request: &Request,
    mem: &M,
    source: &mut R,
) -> io::Result<()> {
    for segment in &request.segments {
        mem.read_exact_volatile_from(segment.addr, source, segment.len as usize)
            .map_err(io::Error::other)?;
    }
    Ok(())
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

/// A position in a concatenated disk: reads go to each component in turn,
/// never past a component's recorded end.
struct ConcatAt<'a> {
    image: &'a ConcatImage,
    offset: u64,
}

/// A slot's contents from a disk offset: its image (if any), then zeros
/// (the request was checked against the slot's capacity).
struct ZeroPadded<'a> {
    image: Option<&'a ConcatImage>,
    offset: u64,
}

impl ReadVolatile for ZeroPadded<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let image_end = self.image.map_or(0, ConcatImage::size);
        let mut done = 0;
        if let (Some(image), true) = (self.image, self.offset < image_end) {
            let room = image_end - self.offset;
            let want = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
            let mut part = buf.subslice(0, want)?;
            let n = ConcatAt {
                image,
                offset: self.offset,
            }
            .read_volatile(&mut part)?;
            done += n;
            self.offset += n as u64;
            if n < want {
                // A component shrank: a short read, an error for the caller.
                return Ok(done);
            }
        }
        const ZEROS: [u8; 4096] = [0; 4096];
        while done < buf.len() {
            let n = (buf.len() - done).min(ZEROS.len());
            buf.subslice(done, n)?.copy_from(&ZEROS[..n]);
            done += n;
            self.offset += n as u64;
        }
        Ok(done)
    }
}

impl ReadVolatile for ConcatAt<'_> {
    /// Fills `buf` completely unless the disk ends, or a component file
    /// ends before its recorded size (it shrank), first.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let Some((component, local)) = self.image.locate(self.offset) else {
                break;
            };
            let room = component.len - local;
            let want = usize::try_from(room).map_or(buf.len() - done, |r| r.min(buf.len() - done));
            let mut part = buf.subslice(done, want)?;
            let n = FileAt {
                file: &component.file,
                offset: local,
            }
            .read_volatile(&mut part)?;
            done += n;
            self.offset += n as u64;
            if n < want {
                break;
            }
        }
        Ok(done)
    }
}
