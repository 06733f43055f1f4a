//! virtio-blk tests on virtio-queue's mock driver over real guest memory and
//! a real temporary disk file.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::Duration;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{parse, ParseError};
use super::worker::serve_chain;
use super::*;
use crate::devices::virtio::test_utils::wait_readable;

const MEM_SIZE: usize = 0x40_0000;
const HEADER_ADDR: u64 = 0x10_0000;
const DATA_ADDR: u64 = 0x20_0000;
const STATUS_ADDR: u64 = 0x30_0000;
const DISK_SECTORS: u64 = 64;
const W: u32 = VRING_DESC_F_WRITE;
const STATUS_SENTINEL: u8 = 0xee;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A disk whose byte `i` is `pattern(i)`.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

fn disk_file() -> (tempfile::NamedTempFile, File) {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE).map(pattern).collect();
    tmp.write_all(&bytes).unwrap();
    let file = tmp.reopen().unwrap();
    (tmp, file)
}

fn disk(read_only: bool) -> (tempfile::NamedTempFile, Disk) {
    let (tmp, file) = disk_file();
    (tmp, disk_for_test(file, read_only, "serial-123"))
}

fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
}

fn write_header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&request_type.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&header, GuestAddress(HEADER_ADDR)).unwrap();
    mem.write_obj(STATUS_SENTINEL, GuestAddress(STATUS_ADDR))
        .unwrap();
}

fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS_ADDR)).unwrap()
}

/// Builds the chain, serves it, returns the used length.
fn serve(mem: &GuestMemoryMmap, disk: &Disk, descs: &[RawDescriptor]) -> u32 {
    let vq = MockSplitQueue::new(mem, 16);
    let chain = vq.build_desc_chain(descs).unwrap();
    serve_chain(disk, chain, mem)
}

fn header() -> RawDescriptor {
    desc(HEADER_ADDR, 16, 0)
}

fn status_desc() -> RawDescriptor {
    desc(STATUS_ADDR, 1, W)
}

#[test]
fn read_copies_sectors_into_guest_buffers() {
    let mem = memory();
    let (_tmp, disk) = disk(false);
    write_header(&mem, VIRTIO_BLK_T_IN, 3);
    let used = serve(
        &mem,
        &disk,
        &[
            header(),
            desc(DATA_ADDR, 512, W),
            desc(DATA_ADDR + 0x1000, 1024, W),
            status_desc(),
        ],
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, 1536 + 1);
    let mut first = vec![0u8; 512];
    mem.read_slice(&mut first, GuestAddress(DATA_ADDR)).unwrap();
    let mut second = vec![0u8; 1024];
    mem.read_slice(&mut second, GuestAddress(DATA_ADDR + 0x1000))
        .unwrap();
    let expected: Vec<u8> = (3 * 512..3 * 512 + 1536).map(pattern).collect();
    assert_eq!(first, expected[..512]);
    assert_eq!(second, expected[512..]);
}

#[test]
fn write_lands_in_the_file() {
    let mem = memory();
    let (tmp, disk) = disk(false);
    write_header(&mem, VIRTIO_BLK_T_OUT, 5);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA_ADDR))
        .unwrap();
    mem.write_slice(&[0xcd; 512], GuestAddress(DATA_ADDR + 0x4000))
        .unwrap();
    let used = serve(
        &mem,
        &disk,
        &[
            header(),
            desc(DATA_ADDR, 512, 0),
            desc(DATA_ADDR + 0x4000, 512, 0),
            status_desc(),
        ],
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, 1);
    let mut on_disk = vec![0u8; 1024];
    tmp.as_file().read_exact_at(&mut on_disk, 5 * 512).unwrap();
    assert!(on_disk[..512].iter().all(|&b| b == 0xab));
    assert!(on_disk[512..].iter().all(|&b| b == 0xcd));
    // The neighbours are untouched.
    let mut before = [0u8; 1];
    tmp.as_file()
        .read_exact_at(&mut before, 5 * 512 - 1)
        .unwrap();
    assert_eq!(before[0], pattern(5 * 512 - 1));
}

#[test]
fn flush_succeeds() {
    let mem = memory();
    let (_tmp, disk) = disk(false);
    write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(serve(&mem, &disk, &[header(), status_desc()]), 1);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn get_id_returns_the_serial_padded_or_cut() {
    let mem = memory();
    let (_tmp, disk) = disk(false);
    write_header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    mem.write_slice(&[0xff; 32], GuestAddress(DATA_ADDR))
        .unwrap();
    let used = serve(
        &mem,
        &disk,
        &[header(), desc(DATA_ADDR, 20, W), status_desc()],
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, 21);
    let mut id = [0u8; 21];
    mem.read_slice(&mut id, GuestAddress(DATA_ADDR)).unwrap();
    assert_eq!(&id[..10], b"serial-123");
    assert!(id[10..20].iter().all(|&b| b == 0));
    assert_eq!(id[20], 0xff, "nothing written past the buffer");

    write_header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    mem.write_slice(&[0xff; 32], GuestAddress(DATA_ADDR))
        .unwrap();
    let used = serve(
        &mem,
        &disk,
        &[header(), desc(DATA_ADDR, 4, W), status_desc()],
    );
    assert_eq!(used, 5);
    let mut id = [0u8; 5];
    mem.read_slice(&mut id, GuestAddress(DATA_ADDR)).unwrap();
    assert_eq!(&id, b"seri\xff");
}

#[test]
fn sectors_past_the_end_fail_with_ioerr() {
    let mem = memory();
    let (tmp, disk) = disk(false);
    for (request_type, flags) in [(VIRTIO_BLK_T_IN, W), (VIRTIO_BLK_T_OUT, 0)] {
        for sector in [DISK_SECTORS - 1, DISK_SECTORS, u64::MAX, u64::MAX / 512] {
            write_header(&mem, request_type, sector);
            let used = serve(
                &mem,
                &disk,
                &[header(), desc(DATA_ADDR, 1024, flags), status_desc()],
            );
            assert_eq!(
                status(&mem),
                VIRTIO_BLK_S_IOERR as u8,
                "type {request_type} sector {sector}"
            );
            assert_eq!(used, 1);
        }
    }
    // The last sector itself is fine.
    write_header(&mem, VIRTIO_BLK_T_IN, DISK_SECTORS - 1);
    serve(
        &mem,
        &disk,
        &[header(), desc(DATA_ADDR, 512, W), status_desc()],
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    assert_eq!(
        tmp.as_file().metadata().unwrap().len(),
        DISK_SECTORS * 512,
        "file not grown"
    );
}

#[test]
fn writes_to_a_read_only_disk_fail_and_leave_the_file_alone() {
    let mem = memory();
    let (tmp, disk) = disk(true);
    write_header(&mem, VIRTIO_BLK_T_OUT, 0);
    mem.write_slice(&[0u8; 512], GuestAddress(DATA_ADDR))
        .unwrap();
    let used = serve(
        &mem,
        &disk,
        &[header(), desc(DATA_ADDR, 512, 0), status_desc()],
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(used, 1);
    let mut on_disk = vec![0u8; 512];
    tmp.as_file().read_exact_at(&mut on_disk, 0).unwrap();
    assert_eq!(on_disk, (0..512).map(pattern).collect::<Vec<_>>());
    // Reads and flushes still work.
    write_header(&mem, VIRTIO_BLK_T_IN, 0);
    serve(
        &mem,
        &disk,
        &[header(), desc(DATA_ADDR, 512, W), status_desc()],
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    serve(&mem, &disk, &[header(), status_desc()]);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mem = memory();
    let (_tmp, disk) = disk(false);
    for request_type in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_SCSI_CMD, 0xdead_beef] {
        write_header(&mem, request_type, 0);
        let used = serve(
            &mem,
            &disk,
            &[header(), desc(DATA_ADDR, 512, 0), status_desc()],
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP as u8);
        assert_eq!(used, 1);
    }
}

/// Malformed chains that still end in a writable status byte get IOERR.
#[test]
fn malformed_chains_with_a_status_byte_get_ioerr() {
    let mem = memory();
    let (tmp, disk) = disk(false);
    let cases: Vec<(&str, u32, Vec<RawDescriptor>, ParseError)> = vec![
        (
            "short header",
            VIRTIO_BLK_T_IN,
            vec![
                desc(HEADER_ADDR, 8, 0),
                desc(DATA_ADDR, 512, W),
                status_desc(),
            ],
            ParseError::HeaderTooShort(8),
        ),
        (
            "writable header",
            VIRTIO_BLK_T_IN,
            vec![
                desc(HEADER_ADDR, 16, W),
                desc(DATA_ADDR, 512, W),
                status_desc(),
            ],
            ParseError::HeaderWritable,
        ),
        (
            "read with device-readable data",
            VIRTIO_BLK_T_IN,
            vec![header(), desc(DATA_ADDR, 512, 0), status_desc()],
            ParseError::WrongDirection { index: 0 },
        ),
        (
            "write with device-writable data",
            VIRTIO_BLK_T_OUT,
            vec![
                header(),
                desc(DATA_ADDR, 512, 0),
                desc(DATA_ADDR, 512, W),
                status_desc(),
            ],
            ParseError::WrongDirection { index: 1 },
        ),
        (
            "data outside guest memory",
            VIRTIO_BLK_T_OUT,
            vec![header(), desc(MEM_SIZE as u64 - 256, 512, 0), status_desc()],
            ParseError::OutsideGuestMemory {
                addr: MEM_SIZE as u64 - 256,
                len: 512,
            },
        ),
        (
            "data length not a multiple of 512",
            VIRTIO_BLK_T_IN,
            vec![header(), desc(DATA_ADDR, 100, W), status_desc()],
            ParseError::UnalignedDataLength(100),
        ),
        (
            "segment larger than size_max",
            VIRTIO_BLK_T_IN,
            vec![header(), desc(DATA_ADDR, 2 << 20, W), status_desc()],
            ParseError::SegmentTooLarge {
                index: 0,
                len: 2 << 20,
            },
        ),
    ];
    for (name, request_type, descs, expected) in cases {
        write_header(&mem, request_type, 0);
        let vq = MockSplitQueue::new(&mem, 16);
        let rejected = parse(vq.build_desc_chain(&descs).unwrap(), &mem).unwrap_err();
        assert_eq!(rejected.error, expected, "{name}");
        assert_eq!(
            rejected.status_addr,
            Some(GuestAddress(STATUS_ADDR)),
            "{name}"
        );
        write_header(&mem, request_type, 0);
        let used = serve(&mem, &disk, &descs);
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8, "{name}");
        assert_eq!(used, 1, "{name}");
    }
    // Nothing reached the file.
    let mut on_disk = vec![0u8; 1024];
    tmp.as_file().read_exact_at(&mut on_disk, 0).unwrap();
    assert_eq!(on_disk, (0..1024).map(pattern).collect::<Vec<_>>());
}

/// Without a writable status byte there is nothing to report to: the chain
/// is returned with used length 0 and no guest memory is written.
#[test]
fn chains_without_a_status_byte_are_returned_untouched() {
    let mem = memory();
    let (_tmp, disk) = disk(false);
    let cases: Vec<(&str, Vec<RawDescriptor>, ParseError)> = vec![
        (
            "read-only status",
            vec![header(), desc(DATA_ADDR, 512, W), desc(STATUS_ADDR, 1, 0)],
            ParseError::MissingStatus,
        ),
        ("header only", vec![header()], ParseError::MissingStatus),
        (
            "zero-length status",
            vec![header(), desc(STATUS_ADDR, 0, W)],
            ParseError::MissingStatus,
        ),
        (
            "status outside guest memory",
            vec![header(), desc(MEM_SIZE as u64, 1, W)],
            ParseError::MissingStatus,
        ),
    ];
    for (name, descs, expected) in cases {
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        mem.write_slice(&[0x5a; 512], GuestAddress(DATA_ADDR))
            .unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let rejected = parse(vq.build_desc_chain(&descs).unwrap(), &mem).unwrap_err();
        assert_eq!(
            rejected,
            request::Rejected {
                error: expected,
                status_addr: None
            },
            "{name}"
        );
        assert_eq!(serve(&mem, &disk, &descs), 0, "{name}");
        assert_eq!(status(&mem), STATUS_SENTINEL, "{name}");
        let mut data = [0u8; 512];
        mem.read_slice(&mut data, GuestAddress(DATA_ADDR)).unwrap();
        assert!(data.iter().all(|&b| b == 0x5a), "{name}: data untouched");
    }
}

/// Pops the chain the mock wrote at descriptor index 0 through a real Queue.
fn pop_first(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> u32 {
    let (_tmp, disk) = disk(false);
    let mut queue: Queue = vq.create_queue().unwrap();
    let chain = queue.iter(mem).unwrap().next().unwrap();
    serve_chain(&disk, chain, mem)
}

#[test]
fn looping_chain_is_rejected_without_a_status_write() {
    let mem = memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 0);
    let vq = MockSplitQueue::new(&mem, 16);
    let next = VRING_DESC_F_NEXT as u16;
    // 0 → 1 → 2 → 1 → 2 ...: the status descriptor points back.
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(HEADER_ADDR, 16, next, 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA_ADDR, 512, next | W as u16, 2)),
        RawDescriptor::from(SplitDescriptor::new(STATUS_ADDR, 1, next | W as u16, 1)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    assert_eq!(pop_first(&mem, &vq), 0);
    assert_eq!(status(&mem), STATUS_SENTINEL);
}

#[test]
fn chain_pointing_outside_the_table_is_rejected() {
    let mem = memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 0);
    let vq = MockSplitQueue::new(&mem, 16);
    let descs = [RawDescriptor::from(SplitDescriptor::new(
        HEADER_ADDR,
        16,
        VRING_DESC_F_NEXT as u16,
        200,
    ))];
    vq.add_desc_chains(&descs, 0).unwrap();
    assert_eq!(pop_first(&mem, &vq), 0);
    assert_eq!(status(&mem), STATUS_SENTINEL);
}

#[test]
fn too_many_descriptors_via_an_indirect_table_are_rejected() {
    let mem = memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 0);
    // We never offer INDIRECT_DESC, but a hostile guest can still use it to
    // build a chain far longer than the queue.
    let table = GuestAddress(0x38_0000);
    let count: u16 = 400;
    for i in 0..count {
        let (addr, len, flags) = match i {
            0 => (HEADER_ADDR, 16, VRING_DESC_F_NEXT as u16),
            i if i == count - 1 => (STATUS_ADDR, 1, W as u16),
            _ => (DATA_ADDR, 512, (VRING_DESC_F_NEXT | W) as u16),
        };
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i + 1));
        mem.write_obj(d, table.unchecked_add(u64::from(i) * 16))
            .unwrap();
    }
    let vq = MockSplitQueue::new(&mem, 16);
    let head = RawDescriptor::from(SplitDescriptor::new(
        table.0,
        u32::from(count) * 16,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    vq.add_desc_chains(&[head], 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let chain = queue.iter(&mem).unwrap().next().unwrap();
    let rejected = parse(chain, &mem).unwrap_err();
    assert_eq!(rejected.error, ParseError::TooManyDescriptors);
    assert_eq!(pop_first(&mem, &vq), 0);
    assert_eq!(status(&mem), STATUS_SENTINEL);
}

#[test]
fn request_in_an_indirect_table_is_served() {
    let mem = memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 2);
    let table = GuestAddress(0x38_0000);
    let descs = [
        (HEADER_ADDR, 16, VRING_DESC_F_NEXT),
        (DATA_ADDR, 512, VRING_DESC_F_NEXT | W),
        (STATUS_ADDR, 1, W),
    ];
    for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, i as u16 + 1));
        mem.write_obj(d, table.unchecked_add(i as u64 * 16))
            .unwrap();
    }
    let vq = MockSplitQueue::new(&mem, 16);
    let head = RawDescriptor::from(SplitDescriptor::new(
        table.0,
        48,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    vq.add_desc_chains(&[head], 0).unwrap();
    assert_eq!(pop_first(&mem, &vq), 513);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    let mut data = vec![0u8; 512];
    mem.read_slice(&mut data, GuestAddress(DATA_ADDR)).unwrap();
    assert_eq!(data, (1024..1536).map(pattern).collect::<Vec<_>>());
}

#[test]
fn new_rounds_the_size_down_and_fills_config_space() {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(&vec![0u8; 10 * 512 + 100]).unwrap();
    let (exit, _rx) = mpsc::channel();
    let block = Block::new(tmp.path(), true, "disk0".into(), exit).unwrap();
    assert_eq!(block.capacity_sectors(), 10);
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 10);
    let mut seg_max = [0u8; 4];
    block.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), 254);
    assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_ne!(block.avail_features() & VIRTIO_F_VERSION_1, 0);
}

#[test]
fn new_rejects_bad_serials_and_missing_files() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (exit, _rx) = mpsc::channel();
    let err = Block::new(tmp.path(), false, "x".repeat(21), exit.clone())
        .err()
        .unwrap();
    assert!(matches!(err, BlockError::InvalidSerial { .. }), "{err}");
    let err = Block::new(tmp.path(), false, "a\0b".into(), exit.clone())
        .err()
        .unwrap();
    assert!(matches!(err, BlockError::InvalidSerial { .. }), "{err}");
    assert!(Block::new(tmp.path(), false, "x".repeat(20), exit.clone()).is_ok());
    let err = Block::new("/nonexistent/disk.img", false, "d".into(), exit)
        .err()
        .unwrap();
    assert!(matches!(err, BlockError::Open { .. }), "{err}");
}

/// The worker thread end to end: notify, request served, used ring
/// updated, interrupt raised; reset hands the disk back for a second round.
#[test]
fn worker_serves_notified_requests_and_survives_reset() {
    let mem = memory();
    let (tmp, _) = disk_file();
    let (exit, exit_rx) = mpsc::channel();
    let mut block = Block::new(tmp.path(), false, "vda".into(), exit).unwrap();
    let interrupt = Arc::new(Interrupt::new().unwrap());

    for round in 0..2u8 {
        let vq = MockSplitQueue::new(&mem, 16);
        let queue: Queue = vq.create_queue().unwrap();
        let notify = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        block
            .activate(
                mem.clone(),
                interrupt.clone(),
                vec![queue],
                vec![notify.try_clone().unwrap()],
            )
            .unwrap();
        assert!(matches!(
            block.activate(mem.clone(), interrupt.clone(), vec![], vec![]),
            Err(ActivateError::AlreadyActive)
        ));

        write_header(&mem, VIRTIO_BLK_T_OUT, u64::from(round));
        mem.write_slice(&[round + 1; 512], GuestAddress(DATA_ADDR))
            .unwrap();
        vq.add_desc_chains(
            &linked(&[header(), desc(DATA_ADDR, 512, 0), status_desc()]),
            0,
        )
        .unwrap();
        notify.write(1).unwrap();

        assert!(
            wait_readable(interrupt.irq_evt(), Duration::from_secs(5)),
            "interrupt raised"
        );
        interrupt.irq_evt().read().unwrap();
        assert_ne!(
            interrupt.status() & crate::devices::virtio::interrupt::INTERRUPT_USED_BUFFER,
            0
        );
        interrupt.ack(u32::MAX);
        assert_eq!(vq.used().idx().load(), 1);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!((used.id(), used.len()), (0, 1));
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
        let mut on_disk = [0u8; 512];
        tmp.as_file()
            .read_exact_at(&mut on_disk, u64::from(round) * 512)
            .unwrap();
        assert!(on_disk.iter().all(|&b| b == round + 1), "round {round}");

        block.reset();
    }
    drop(block);
    assert!(exit_rx.try_recv().is_err(), "no device error reported");
}

/// Sets NEXT and the next index on all but the last descriptor.
fn linked(descs: &[RawDescriptor]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let mut flags = d.flags();
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            RawDescriptor::from(SplitDescriptor::new(
                d.addr().0,
                d.len(),
                flags,
                i as u16 + 1,
            ))
        })
        .collect()
}

/// The whole path a guest driver takes: registers through the MMIO
/// transport, a request published in guest memory, QueueNotify, interrupt,
/// InterruptStatus/ACK, and a second request after a driver reset.
#[test]
fn through_the_mmio_transport() {
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::test_utils::TestQueue;
    use crate::devices::virtio::MmioTransport;
    use virtio_bindings::virtio_config::*;
    use virtio_bindings::virtio_mmio::*;

    fn write32(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }
    fn read32(t: &mut MmioTransport, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        t.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    let mem = memory();
    let (tmp, _) = disk_file();
    let (exit, exit_rx) = mpsc::channel();
    let block = Block::new(tmp.path(), false, "vdz".into(), exit).unwrap();
    let interrupt = Arc::new(Interrupt::new().unwrap());
    let mut t = MmioTransport::new(
        "vdz".into(),
        mem.clone(),
        Box::new(block),
        interrupt.clone(),
    )
    .unwrap();
    assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BLOCK);
    let mut capacity = [0u8; 8];
    t.read(0x100, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);

    for round in 0..2u8 {
        let mut queue = TestQueue::new(&mem, 0x8_0000, 64);
        write32(&mut t, VIRTIO_MMIO_STATUS, 0);
        write32(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write32(
            &mut t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES);
        write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, high);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, low);
        let features_ok =
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        write32(&mut t, VIRTIO_MMIO_STATUS, features_ok);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), features_ok);

        let q = queue.device_queue();
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX),
            u32::from(QUEUE_SIZE)
        );
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 64);
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc_table() as u32);
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        write32(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_ring() as u32);
        write32(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        write32(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, q.used_ring() as u32);
        write32(&mut t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        write32(
            &mut t,
            VIRTIO_MMIO_STATUS,
            features_ok | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert!(t.is_activated(), "round {round}");

        write_header(&mem, VIRTIO_BLK_T_IN, u64::from(round) + 7);
        let head = queue
            .add_chain(&[
                (HEADER_ADDR, 16, false),
                (DATA_ADDR, 512, true),
                (STATUS_ADDR, 1, true),
            ])
            .unwrap();
        write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(wait_readable(interrupt.irq_evt(), Duration::from_secs(5)));
        interrupt.irq_evt().read().unwrap();
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(queue.pop_used(), Some((head, 513)));
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
        let mut data = vec![0u8; 512];
        mem.read_slice(&mut data, GuestAddress(DATA_ADDR)).unwrap();
        let start = (u64::from(round) + 7) * 512;
        assert_eq!(data, (start..start + 512).map(pattern).collect::<Vec<_>>());
    }
    drop(t);
    assert!(exit_rx.try_recv().is_err());
}

// ---- concatenated read-only disks ----

/// Component files with distinct contents, their list file, and the bytes
/// the disk must show (their concatenation, built with std).
struct Layers {
    dir: tempfile::TempDir,
    list: std::path::PathBuf,
    paths: Vec<std::path::PathBuf>,
    expected: Vec<u8>,
}

/// Component `i` of `sectors[i]` sectors; byte `j` of it is `(i * 37 + j * 7) % 253`.
fn layers(sectors: &[u64]) -> Layers {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut expected = Vec::new();
    for (i, &n) in sectors.iter().enumerate() {
        let bytes: Vec<u8> = (0..n * SECTOR_SIZE)
            .map(|j| ((i as u64 * 37 + j * 7) % 253) as u8)
            .collect();
        let path = dir.path().join(format!("layer{i}.erofs"));
        std::fs::write(&path, &bytes).unwrap();
        expected.extend_from_slice(&bytes);
        paths.push(path);
    }
    let list = dir.path().join("layers.list");
    let text: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    std::fs::write(&list, text).unwrap();
    Layers {
        dir,
        list,
        paths,
        expected,
    }
}

/// The sizes used below: boundaries at sectors 1, 4, 5, 13, 15.
const LAYER_SECTORS: [u64; 5] = [1, 3, 1, 8, 2];

fn read_sectors(mem: &GuestMemoryMmap, disk: &Disk, sector: u64, segments: &[u32]) -> Vec<u8> {
    write_header(mem, VIRTIO_BLK_T_IN, sector);
    let mut descs = vec![header()];
    let mut addr = DATA_ADDR;
    for &len in segments {
        descs.push(desc(addr, len, W));
        addr += u64::from(len).next_multiple_of(0x1000);
    }
    descs.push(status_desc());
    let total: u32 = segments.iter().sum();
    let used = serve(mem, disk, &descs);
    assert_eq!(
        status(mem),
        VIRTIO_BLK_S_OK as u8,
        "read at sector {sector}"
    );
    assert_eq!(used, total + 1);
    let mut data = Vec::new();
    let mut addr = DATA_ADDR;
    for &len in segments {
        let mut part = vec![0u8; len as usize];
        mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
        data.extend_from_slice(&part);
        addr += u64::from(len).next_multiple_of(0x1000);
    }
    data
}

#[test]
fn concat_disk_reads_equal_the_concatenation_at_and_across_boundaries() {
    let mem = memory();
    let l = layers(&LAYER_SECTORS);
    let disk = concat_disk_for_test(&l.list, "image-1").unwrap();
    let total: u64 = LAYER_SECTORS.iter().sum();
    assert_eq!(disk.capacity_sectors(), total);
    assert!(disk.is_read_only());
    assert_eq!(l.expected.len() as u64, total * SECTOR_SIZE);

    // Every start sector and every length that still fits: each boundary
    // is crossed from every side, by one segment.
    for start in 0..total {
        for count in 1..=(total - start).min(6) {
            let data = read_sectors(&mem, &disk, start, &[(count * SECTOR_SIZE) as u32]);
            let from = (start * SECTOR_SIZE) as usize;
            assert_eq!(
                data,
                l.expected[from..from + data.len()],
                "sectors {start}..{}",
                start + count
            );
        }
    }
    // The whole disk in one request, with segments that do not line up
    // with the components.
    let data = read_sectors(&mem, &disk, 0, &[1024, 512, 2048, 512, 3584]);
    assert_eq!(data, l.expected);
}

#[test]
fn concat_disk_reads_past_the_end_fail_with_ioerr() {
    let mem = memory();
    let l = layers(&LAYER_SECTORS);
    let disk = concat_disk_for_test(&l.list, "image-1").unwrap();
    let total: u64 = LAYER_SECTORS.iter().sum();
    for (sector, len) in [
        (total - 1, 1024),
        (total, 512),
        (u64::MAX, 512),
        (0, 8192 + 512),
    ] {
        write_header(&mem, VIRTIO_BLK_T_IN, sector);
        let used = serve(
            &mem,
            &disk,
            &[header(), desc(DATA_ADDR, len, W), status_desc()],
        );
        assert_eq!(
            status(&mem),
            VIRTIO_BLK_S_IOERR as u8,
            "sector {sector} len {len}"
        );
        assert_eq!(used, 1);
    }
    // The last sector itself reads fine.
    let data = read_sectors(&mem, &disk, total - 1, &[512]);
    assert_eq!(data, l.expected[l.expected.len() - 512..]);
}

#[test]
fn concat_disk_refuses_writes_and_answers_get_id_and_flush() {
    let mem = memory();
    let l = layers(&LAYER_SECTORS);
    let disk = concat_disk_for_test(&l.list, "img.layers_01").unwrap();

    for sector in [0, 3, 4] {
        write_header(&mem, VIRTIO_BLK_T_OUT, sector);
        mem.write_slice(&[0xab; 1024], GuestAddress(DATA_ADDR))
            .unwrap();
        let used = serve(
            &mem,
            &disk,
            &[header(), desc(DATA_ADDR, 1024, 0), status_desc()],
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(used, 1);
    }
    let on_disk: Vec<u8> = l
        .paths
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(on_disk, l.expected, "no component changed");

    write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    serve(&mem, &disk, &[header(), status_desc()]);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);

    write_header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    mem.write_slice(&[0xff; 32], GuestAddress(DATA_ADDR))
        .unwrap();
    let used = serve(
        &mem,
        &disk,
        &[header(), desc(DATA_ADDR, 20, W), status_desc()],
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    assert_eq!(used, 21);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA_ADDR)).unwrap();
    assert_eq!(&id[..13], b"img.layers_01");
    assert!(id[13..].iter().all(|&b| b == 0));
}

/// Components are opened once, at start: unlinking them later changes
/// nothing, and a component that shrinks fails the reads that reach its
/// lost tail instead of returning short data.
#[test]
fn concat_components_are_held_open_and_a_shrunk_one_fails_cleanly() {
    let mem = memory();
    let l = layers(&LAYER_SECTORS);
    let disk = concat_disk_for_test(&l.list, "image-1").unwrap();
    for path in &l.paths {
        std::fs::remove_file(path).unwrap();
    }
    std::fs::remove_file(&l.list).unwrap();
    let data = read_sectors(&mem, &disk, 0, &[4096, 3584]);
    assert_eq!(data, l.expected);

    let l = layers(&LAYER_SECTORS);
    let disk = concat_disk_for_test(&l.list, "image-1").unwrap();
    // Component 3 (sectors 5..13) loses its last 4 sectors, 9..13.
    let shrunk = std::fs::OpenOptions::new()
        .write(true)
        .open(&l.paths[3])
        .unwrap();
    shrunk.set_len(4 * SECTOR_SIZE).unwrap();
    for (sector, len) in [(9, 512), (12, 512), (8, 1024), (12, 1024)] {
        write_header(&mem, VIRTIO_BLK_T_IN, sector);
        serve(
            &mem,
            &disk,
            &[header(), desc(DATA_ADDR, len, W), status_desc()],
        );
        assert_eq!(
            status(&mem),
            VIRTIO_BLK_S_IOERR as u8,
            "sector {sector} len {len}"
        );
    }
    let data = read_sectors(&mem, &disk, 4, &[2560]);
    assert_eq!(
        data,
        l.expected[4 * 512..9 * 512],
        "the kept part still reads"
    );
    let data = read_sectors(&mem, &disk, 13, &[1024]);
    assert_eq!(data, l.expected[13 * 512..], "later components still read");
}

#[test]
fn concat_lists_with_blank_lines_are_accepted() {
    let mem = memory();
    let l = layers(&[2, 1]);
    let text = format!("\n{}\n  \n\n{}", l.paths[0].display(), l.paths[1].display());
    std::fs::write(&l.list, text).unwrap();
    let disk = concat_disk_for_test(&l.list, "x").unwrap();
    assert_eq!(disk.capacity_sectors(), 3);
    assert_eq!(read_sectors(&mem, &disk, 0, &[1536]), l.expected);
}

#[test]
fn bad_concat_lists_are_refused_naming_the_culprit() {
    let l = layers(&[1, 2]);
    let dir = l.dir.path();
    let list = |text: String| {
        let path = dir.join("bad.list");
        std::fs::write(&path, text).unwrap();
        path
    };
    let open = |path: &std::path::Path| concat_disk_for_test(path, "x").err().unwrap();

    // Sizes that are not a non-zero multiple of 512, named.
    let odd = dir.join("odd.erofs");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let empty = dir.join("empty.erofs");
    std::fs::write(&empty, b"").unwrap();
    for (bad, size) in [(&odd, 1000), (&empty, 0)] {
        let err = open(&list(format!(
            "{}\n{}\n",
            l.paths[0].display(),
            bad.display()
        )));
        assert!(matches!(err, ConcatError::BadSize { line: 2, .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&bad.display().to_string()), "{message}");
        assert!(
            message.contains(&format!("is {size} bytes, not a non-zero multiple of 512")),
            "{message}"
        );
    }

    // No components at all.
    for text in ["", "\n\n  \n"] {
        let err = open(&list(text.into()));
        assert!(matches!(err, ConcatError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("names no image files"), "{err}");
    }

    // A missing component, named with its line.
    let missing = dir.join("gone.erofs");
    let err = open(&list(format!(
        "{}\n\n{}\n",
        l.paths[0].display(),
        missing.display()
    )));
    assert!(matches!(err, ConcatError::Open { line: 3, .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("No such file"), "{message}");

    // A relative path, a directory, a missing list.
    let err = open(&list("layer0.erofs\n".into()));
    assert!(
        matches!(err, ConcatError::RelativePath { line: 1, .. }),
        "{err}"
    );
    let err = open(&list(format!("{}\n", dir.display())));
    assert!(matches!(err, ConcatError::NotAFile { .. }), "{err}");
    let err = open(&dir.join("no.list"));
    assert!(matches!(err, ConcatError::ListUnreadable { .. }), "{err}");
    assert!(err.to_string().contains("no.list"), "{err}");

    // Too many components: refused before opening any of them.
    let text = format!("{}\n", missing.display()).repeat(MAX_COMPONENTS + 1);
    let err = open(&list(text));
    assert!(
        matches!(err, ConcatError::TooManyComponents { .. }),
        "{err}"
    );
}

#[test]
fn concat_block_device_is_read_only_with_the_summed_capacity() {
    let l = layers(&LAYER_SECTORS);
    let (exit, _rx) = mpsc::channel();
    let block = Block::concat(&l.list, "image-1".into(), exit.clone()).unwrap();
    assert_eq!(block.capacity_sectors(), LAYER_SECTORS.iter().sum::<u64>());
    assert!(block.is_read_only());
    assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 15);

    let err = Block::concat(&l.list, "x".repeat(21), exit.clone())
        .err()
        .unwrap();
    assert!(matches!(err, BlockError::InvalidSerial { .. }), "{err}");
    let err = Block::concat(l.dir.path().join("none"), "x".into(), exit)
        .err()
        .unwrap();
    assert!(matches!(err, BlockError::Concat(_)), "{err}");
}

/// A slot disk of `sectors` sectors and the handle that swaps it.
fn slot_disk(sectors: u64) -> (Disk, SlotBacking) {
    let backing = SlotBacking::new(sectors * SECTOR_SIZE);
    let disk = Disk::new(
        disk::Backing::Slot(backing.clone()),
        sectors,
        false,
        device_id("husk-pod-1").unwrap(),
    );
    (disk, backing)
}

fn open_all(paths: &[std::path::PathBuf]) -> ConcatImage {
    ConcatImage::from_files(paths.iter().map(|p| File::open(p).unwrap()).collect()).unwrap()
}

#[test]
fn a_slot_reads_zeros_then_its_images_then_zeros_again() {
    let mem = memory();
    let (disk, slot) = slot_disk(32);
    assert!(
        disk.is_read_only(),
        "a slot is read-only whatever it was made with"
    );
    assert_eq!(disk.capacity_sectors(), 32);
    assert_eq!(read_sectors(&mem, &disk, 0, &[4096]), vec![0u8; 4096]);

    let l = layers(&LAYER_SECTORS);
    slot.attach(open_all(&l.paths)).unwrap();
    let total: u64 = LAYER_SECTORS.iter().sum();
    // The images, then zeros up to the capacity, in one request across
    // the image's end and in segments that do not line up with it.
    let data = read_sectors(&mem, &disk, 0, &[1024, 512, 2048, 512, 3584, 8704]);
    assert_eq!(data.len() as u64, 32 * SECTOR_SIZE);
    assert_eq!(data[..l.expected.len()], l.expected[..]);
    assert!(data[l.expected.len()..].iter().all(|b| *b == 0));
    let tail = read_sectors(&mem, &disk, total - 1, &[1024]);
    assert_eq!(tail[..512], l.expected[l.expected.len() - 512..]);
    assert_eq!(tail[512..], [0u8; 512]);
    // The capacity holds whatever the image: past it is an error.
    write_header(&mem, VIRTIO_BLK_T_IN, 32);
    serve(
        &mem,
        &disk,
        &[header(), desc(DATA_ADDR, 512, W), status_desc()],
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
    // Writes are refused.
    write_header(&mem, VIRTIO_BLK_T_OUT, 0);
    serve(
        &mem,
        &disk,
        &[header(), desc(DATA_ADDR, 512, 0), status_desc()],
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);

    // Another member's images replace them; emptied, the slot reads zeros.
    let other = layers(&[2]);
    slot.attach(open_all(&other.paths)).unwrap();
    assert_eq!(read_sectors(&mem, &disk, 0, &[1024]), other.expected);
    slot.detach();
    assert_eq!(read_sectors(&mem, &disk, 0, &[1024]), vec![0u8; 1024]);
}

#[test]
fn a_slot_device_has_a_fixed_capacity_and_refuses_images_that_do_not_fit() {
    let (exit, _rx) = mpsc::channel();
    let (block, slot) = Block::slot(8 * SECTOR_SIZE, "husk-pod-2".into(), exit.clone()).unwrap();
    assert_eq!(block.capacity_sectors(), 8);
    assert!(block.is_read_only());
    let l = layers(&[9]);
    assert!(matches!(
        slot.attach(open_all(&l.paths)),
        Err(SlotError::TooLarge { .. })
    ));
    assert!(Block::slot(512, "far-too-long-a-serial-for-virtio".into(), exit).is_err());
}
