//! Turning a virtio-blk descriptor chain into a checked request, apart from
//! doing the I/O so that every rule below is unit-testable.
//!
//! Layout we accept (what Linux and every mainstream driver send):
//! 1. a device-readable header descriptor: `le32 type, le32 reserved, le64 sector`;
//! 2. zero or more data descriptors: device-writable for IN and GET_ID,
//!    device-readable for OUT;
//! 3. a device-writable status descriptor; the status is its last byte.
//!
//! Every address and length comes from the guest: each descriptor is checked
//! against guest memory, the number of descriptors is bounded, and a chain
//! that does not end (a loop, or one longer than the queue) is rejected.

use thiserror::Error;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// The fixed unit of `sector` and `capacity`, whatever the disk's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_SIZE: u32 = 16;
/// Data descriptors per request we advertise (`seg_max`) and accept.
pub const MAX_SEGMENTS: usize = 254;
/// Largest data descriptor we advertise (`size_max`) and accept.
pub const MAX_SEGMENT_SIZE: u32 = 1 << 20;
/// Header + data + status.
const MAX_DESCRIPTORS: usize = MAX_SEGMENTS + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read sectors into guest memory.
    In,
    /// Write guest memory to sectors.
    Out,
    /// Make written data durable.
    Flush,
    /// Return the device ID string.
    GetId,
    /// A type we do not implement: answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
}

impl RequestKind {
    fn from_type(request_type: u32) -> Self {
        match request_type {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }

    /// Whether the data descriptors must be device-writable.
    fn data_is_written_by_device(self) -> Option<bool> {
        match self {
            Self::In | Self::GetId => Some(true),
            Self::Out => Some(false),
            Self::Flush | Self::Unsupported(_) => None,
        }
    }
}

/// One guest buffer, already checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    pub segments: Vec<Segment>,
    /// Sum of the segment lengths.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("empty descriptor chain")]
    EmptyChain,
    #[error("descriptor chain does not terminate (a loop, a chain longer than the queue, or an unreadable descriptor)")]
    UnterminatedChain,
    #[error("more than {MAX_DESCRIPTORS} descriptors in one request")]
    TooManyDescriptors,
    #[error("no device-writable status descriptor at the end of the chain")]
    MissingStatus,
    #[error("the header descriptor is device-writable")]
    HeaderWritable,
    #[error("the header descriptor is {0} bytes, shorter than {HEADER_SIZE}")]
    HeaderTooShort(u32),
    #[error("descriptor at {addr:#x} (+{len}) is outside guest memory")]
    OutsideGuestMemory { addr: u64, len: u32 },
    #[error("data descriptor {index} has the wrong direction for this request")]
    WrongDirection { index: usize },
    #[error("data descriptor {index} is {len} bytes, more than size_max {MAX_SEGMENT_SIZE}")]
    SegmentTooLarge { index: usize, len: u32 },
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    UnalignedDataLength(u64),
}

/// A chain we refuse. `status_addr` is set when the chain still ends in a
/// writable status byte, so the guest can be told with VIRTIO_BLK_S_IOERR.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub error: ParseError,
    pub status_addr: Option<GuestAddress>,
}

fn in_guest_memory<M: GuestMemory>(mem: &M, desc: &Descriptor, access: Permissions) -> bool {
    usize::try_from(desc.len()).is_ok_and(|len| mem.check_range(desc.addr(), len, access))
}

fn outside(desc: &Descriptor) -> ParseError {
    ParseError::OutsideGuestMemory {
        addr: desc.addr().raw_value(),
        len: desc.len(),
    }
}

/// Finds the status byte: the last byte of the last descriptor, which must be
/// device-writable and inside guest memory.
fn status_address<M: GuestMemory>(mem: &M, last: &Descriptor) -> Option<GuestAddress> {
    if !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    mem.check_range(addr, 1, Permissions::Write).then_some(addr)
}

/// Checks a descriptor chain and describes the request it carries.
pub fn parse<M, I>(descriptors: I, mem: &M) -> Result<Request, Rejected>
where
    M: GuestMemory,
    I: IntoIterator<Item = Descriptor>,
{
    let mut chain: Vec<Descriptor> = Vec::new();
    let mut too_many = false;
    for desc in descriptors {
        if chain.len() == MAX_DESCRIPTORS {
            too_many = true;
            break;
        }
        chain.push(desc);
    }
    let reject = |error, status_addr| Err(Rejected { error, status_addr });

    let Some(last) = chain.last() else {
        return reject(ParseError::EmptyChain, None);
    };
    // virtio-queue stops iterating after queue-size descriptors or at an
    // unreadable one; either way the last one we saw still points onwards.
    // No trustworthy end means no trustworthy status byte either.
    if too_many {
        return reject(ParseError::TooManyDescriptors, None);
    }
    if last.has_next() {
        return reject(ParseError::UnterminatedChain, None);
    }
    if chain.len() < 2 {
        return reject(ParseError::MissingStatus, None);
    }
    let Some(status_addr) = status_address(mem, last) else {
        return reject(ParseError::MissingStatus, None);
    };
    let status = Some(status_addr);

    let header = chain[0];
    if header.is_write_only() {
        return reject(ParseError::HeaderWritable, status);
    }
    if header.len() < HEADER_SIZE {
        return reject(ParseError::HeaderTooShort(header.len()), status);
    }
    let mut raw = [0u8; HEADER_SIZE as usize];
    if mem.read_slice(&mut raw, header.addr()).is_err() {
        return reject(outside(&header), status);
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = raw;
    let kind = RequestKind::from_type(u32::from_le_bytes([t0, t1, t2, t3]));
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);

    let data = &chain[1..chain.len() - 1];
    let mut segments = Vec::with_capacity(data.len());
    let mut data_len = 0u64;
    if let Some(device_writes) = kind.data_is_written_by_device() {
        for (index, desc) in data.iter().enumerate() {
            if desc.is_write_only() != device_writes {
                return reject(ParseError::WrongDirection { index }, status);
            }
            if desc.len() > MAX_SEGMENT_SIZE {
                return reject(
                    ParseError::SegmentTooLarge {
                        index,
                        len: desc.len(),
                    },
                    status,
                );
            }
            let access = if device_writes {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !in_guest_memory(mem, desc, access) {
                return reject(outside(desc), status);
            }
            data_len += u64::from(desc.len());
            segments.push(Segment {
                addr: desc.addr(),
                len: desc.len(),
            });
        }
    }
    if matches!(kind, RequestKind::In | RequestKind::Out) && !data_len.is_multiple_of(SECTOR_SIZE) {
        return reject(ParseError::UnalignedDataLength(data_len), status);
    }
    Ok(Request {
        kind,
        sector,
        segments,
        data_len,
        status_addr,
    })
}
