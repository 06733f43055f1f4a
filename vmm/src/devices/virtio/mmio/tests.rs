//! Register-level tests of the transport with a recording fake device.

use super::*;
use std::sync::Mutex;

const QUEUE_MAX: u16 = 16;

/// (size, ready, desc, avail, used) of one queue handed to the device.
type QueueSummary = (u16, bool, u64, u64, u64);

#[derive(Default)]
struct Recorded {
    acked_features: Option<u64>,
    activations: Vec<Vec<QueueSummary>>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
}

struct FakeDevice {
    recorded: Arc<Mutex<Recorded>>,
    fail_activation: bool,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 0b101
    }
    fn ack_features(&mut self, features: u64) {
        self.recorded.lock().unwrap().acked_features = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_space("fake", &[0xa0, 0xa1, 0xa2, 0xa3], offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.recorded
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
    ) -> Result<(), super::super::ActivateError> {
        assert_eq!(queue_events.len(), queues.len());
        if self.fail_activation {
            return Err(super::super::ActivateError::QueueNotReady(1));
        }
        let summary = queues
            .iter()
            .map(|q| {
                (
                    q.size(),
                    q.ready(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring(),
                )
            })
            .collect();
        self.recorded.lock().unwrap().activations.push(summary);
        Ok(())
    }
    fn reset(&mut self) {
        self.recorded.lock().unwrap().resets += 1;
    }
}

fn transport_with(fail_activation: bool) -> (MmioTransport, Arc<Mutex<Recorded>>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let device = FakeDevice {
        recorded: recorded.clone(),
        fail_activation,
    };
    let interrupt = Arc::new(Interrupt::new().unwrap());
    let transport = MmioTransport::new("fake0".into(), mem, Box::new(device), interrupt).unwrap();
    (transport, recorded)
}

fn read32(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut data = [0xeeu8; 4];
    t.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

fn write32(t: &mut MmioTransport, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

/// The Linux driver's sequence up to FEATURES_OK.
fn negotiate(t: &mut MmioTransport, features: u64) {
    write32(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write32(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    write32(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
    write32(t, VIRTIO_MMIO_QUEUE_SEL, index);
    assert_eq!(read32(t, VIRTIO_MMIO_QUEUE_READY), 0);
    write32(t, VIRTIO_MMIO_QUEUE_NUM, size);
    let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
    write32(t, VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
    write32(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
    write32(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
    write32(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
    write32(t, VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
    write32(t, VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
    write32(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

const ALL_OK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK;

#[test]
fn identification_registers() {
    let (mut t, _) = transport_with(false);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX),
        u32::from(QUEUE_MAX)
    );
    write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX),
        0,
        "queue 2 does not exist"
    );
    assert_eq!(read32(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
}

#[test]
fn feature_pages_follow_the_select_register() {
    let (mut t, _) = transport_with(false);
    write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0b101);
    write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
        1,
        "VERSION_1 is bit 32"
    );
    write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
}

#[test]
fn handshake_activates_with_the_configured_queues() {
    let (mut t, recorded) = transport_with(false);
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b100);
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
        VIRTIO_CONFIG_S_FEATURES_OK
    );
    assert_eq!(
        recorded.lock().unwrap().acked_features,
        Some(VIRTIO_F_VERSION_1 | 0b100)
    );
    setup_queue(&mut t, 0, 8, 0x1_0000);
    setup_queue(&mut t, 1, 16, 0x2_0000);
    write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    write32(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
    assert!(t.is_activated());
    assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), ALL_OK);
    let recorded = recorded.lock().unwrap();
    assert_eq!(
        recorded.activations,
        vec![vec![
            (8, true, 0x1_0000, 0x1_1000, 0x1_2000),
            (16, true, 0x2_0000, 0x2_1000, 0x2_2000)
        ]]
    );
}

#[test]
fn features_ok_needs_version_1_and_offered_features_only() {
    let (mut t, recorded) = transport_with(false);
    negotiate(&mut t, 0b1);
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_STATUS),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
    write32(&mut t, VIRTIO_MMIO_STATUS, 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b10);
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    assert_eq!(recorded.lock().unwrap().acked_features, None);
}

#[test]
fn status_bits_must_come_in_order() {
    let (mut t, recorded) = transport_with(false);
    write32(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), 0);
    write32(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write32(
        &mut t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_STATUS),
        VIRTIO_CONFIG_S_ACKNOWLEDGE
    );
    assert!(recorded.lock().unwrap().activations.is_empty());
    // FAILED is accepted at any point.
    write32(
        &mut t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FAILED,
    );
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_STATUS),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FAILED
    );
}

#[test]
fn queue_registers_reject_bad_values_and_wrong_phase() {
    let (mut t, _) = transport_with(false);
    // Before FEATURES_OK queue writes are ignored.
    write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 3);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 32);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 0);
    write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008);
    write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 2);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 9);
    write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    let q = &t.queues[0];
    assert_eq!(
        q.size(),
        QUEUE_MAX,
        "non-power-of-two, too big and zero sizes are ignored"
    );
    assert_eq!(
        q.desc_table() % 16,
        0,
        "misaligned descriptor table ignored"
    );
}

#[test]
fn queue_outside_guest_memory_fails_activation_with_needs_reset() {
    let (mut t, recorded) = transport_with(false);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 16, 0xff_f000);
    t.interrupt().ack(u32::MAX);
    write32(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
    assert!(!t.is_activated());
    assert_ne!(
        read32(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        crate::devices::virtio::interrupt::INTERRUPT_CONFIG_CHANGE
    );
    assert!(recorded.lock().unwrap().activations.is_empty());
}

#[test]
fn device_refusal_sets_needs_reset() {
    let (mut t, _) = transport_with(true);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 16, 0x1_0000);
    write32(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
    assert!(!t.is_activated());
    assert_ne!(
        read32(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
}

#[test]
fn no_ready_queue_fails_activation() {
    let (mut t, recorded) = transport_with(false);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    write32(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
    assert!(!t.is_activated());
    assert!(recorded.lock().unwrap().activations.is_empty());
}

#[test]
fn reset_stops_the_device_and_clears_state() {
    let (mut t, recorded) = transport_with(false);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 8, 0x1_0000);
    write32(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
    assert!(t.is_activated());
    t.interrupt().signal_used_buffer().unwrap();
    write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    write32(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_activated());
    assert_eq!(recorded.lock().unwrap().resets, 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert!(
        t.queue_events()[0].read().is_err(),
        "stale notification drained"
    );
    // The device can be brought up again.
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 1, 4, 0x3_0000);
    write32(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
    assert!(t.is_activated());
    assert_eq!(recorded.lock().unwrap().activations.len(), 2);
}

#[test]
fn queue_notify_signals_that_queue_only() {
    let (mut t, _) = transport_with(false);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 5);
    assert!(t.queue_events()[0].read().is_err());
    assert_eq!(t.queue_events()[1].read().unwrap(), 1);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _) = transport_with(false);
    t.interrupt().signal_used_buffer().unwrap();
    t.interrupt().signal_config_change().unwrap();
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
}

#[test]
fn bad_accesses_are_ignored() {
    let (mut t, _) = transport_with(false);
    // Narrow and unaligned register reads return zeros.
    let mut narrow = [0xffu8; 2];
    t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut narrow);
    assert_eq!(narrow, [0, 0]);
    let mut unaligned = [0xffu8; 4];
    t.read(2, &mut unaligned);
    assert_eq!(unaligned, [0; 4]);
    // Writes to read-only registers and odd-sized writes change nothing.
    write32(&mut t, VIRTIO_MMIO_MAGIC_VALUE, 0);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX, 1);
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), 0);
    // Reading a write-only register and an unknown offset gives zero.
    assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY), 0);
    assert_eq!(read32(&mut t, 0xf0), 0);
    // Driver features before DRIVER are ignored.
    write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(t.driver_features, 0);
}

#[test]
fn config_space_goes_to_the_device_bounds_checked() {
    let (mut t, recorded) = transport_with(false);
    let mut data = [0u8; 2];
    t.read(CONFIG_SPACE_OFFSET + 2, &mut data);
    assert_eq!(data, [0xa2, 0xa3]);
    let mut data = [0xffu8; 4];
    t.read(CONFIG_SPACE_OFFSET + 0xe00, &mut data);
    assert_eq!(data, [0; 4]);
    t.write(CONFIG_SPACE_OFFSET + 1, &[9]);
    assert_eq!(recorded.lock().unwrap().config_writes, vec![(1, vec![9])]);
}
