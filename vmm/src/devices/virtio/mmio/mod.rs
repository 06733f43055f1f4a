//! The virtio-mmio transport, version 2 ("modern", virtio 1.x section
//! 4.2.2): the 4 KiB register file a guest driver uses to discover a
//! device, negotiate features, describe its queues and notify them.
//!
//! Everything here is driven by guest writes, so every access is checked:
//! registers are 32-bit and aligned, read-only registers ignore writes,
//! queue and feature registers only accept writes in the status phase where
//! the spec allows them. A bad access is logged and ignored.

use std::io;
use std::sync::Arc;

use thiserror::Error;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::drain_eventfd;
use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio layout.
pub const MMIO_VERSION: u32 = 2;
/// VendorID we report: "HUSK" in little endian (any value is allowed).
pub const MMIO_VENDOR_ID: u32 = u32::from_le_bytes(*b"HUSK");
/// Offset of QueueNotify inside the window: where KVM ioeventfds go.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device-specific config space.
pub const CONFIG_SPACE_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("device {device}: queue {queue} has an invalid maximum size {max_size}")]
    QueueMaxSize {
        device: String,
        queue: usize,
        max_size: u16,
    },
    #[error("device {device}: cannot create a queue EventFd: {source}")]
    EventFd {
        device: String,
        #[source]
        source: io::Error,
    },
}

/// One virtio-mmio window and the device behind it.
pub struct MmioTransport {
    name: String,
    mem: GuestMemoryMmap,
    device: Box<dyn VirtioDevice + Send>,
    interrupt: Arc<Interrupt>,
    /// The driver's view of the queues (sizes, addresses, ready). The device
    /// gets copies on activation.
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    pub fn new(
        name: String,
        mem: GuestMemoryMmap,
        device: Box<dyn VirtioDevice + Send>,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, TransportError> {
        let mut queues = Vec::new();
        let mut queue_events = Vec::new();
        for (queue, &max_size) in device.queue_max_sizes().iter().enumerate() {
            let q = Queue::new(max_size).map_err(|_| TransportError::QueueMaxSize {
                device: name.clone(),
                queue,
                max_size,
            })?;
            queues.push(q);
            let evt = EventFd::new(EFD_NONBLOCK).map_err(|source| TransportError::EventFd {
                device: name.clone(),
                source,
            })?;
            queue_events.push(evt);
        }
        Ok(Self {
            name,
            mem,
            device,
            interrupt,
            queues,
            queue_events,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// One EventFd per queue, signalled on a QueueNotify write with that
    /// queue's index. Register them as KVM ioeventfds on
    /// `base + QUEUE_NOTIFY_OFFSET` with datamatch = the index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The interrupt this transport raises (for the irqfd registration).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device status register (tests and diagnostics).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device accepted DRIVER_OK and runs its worker.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn has_status(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// Queue registers are writable between FEATURES_OK and DRIVER_OK.
    fn update_selected_queue(&mut self, register: &str, update: impl FnOnce(&mut Queue) -> bool) {
        if !self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
            || self.has_status(VIRTIO_CONFIG_S_DRIVER_OK)
            || self.has_status(VIRTIO_CONFIG_S_FAILED)
        {
            tracing::warn!(
                device = %self.name,
                register,
                status = self.status,
                "queue register written outside queue setup; ignored"
            );
            return;
        }
        let index = self.queue_select;
        let Some(queue) = self.queues.get_mut(index as usize) else {
            tracing::warn!(device = %self.name, register, queue = index, "write to a queue that does not exist; ignored");
            return;
        };
        if !update(queue) {
            tracing::warn!(device = %self.name, register, queue = index, "invalid queue register value; ignored");
        }
    }

    fn device_features_page(&self) -> u32 {
        let features = self.device.avail_features();
        match self.device_features_select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.has_status(VIRTIO_CONFIG_S_DRIVER) || self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
        {
            tracing::warn!(device = %self.name, status = self.status, "DriverFeatures written outside feature negotiation; ignored");
            return;
        }
        let value = u64::from(value);
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            page => {
                if value != 0 {
                    tracing::warn!(device = %self.name, page, "driver accepted features in a page the device never offered; ignored");
                }
            }
        }
    }

    fn notify_queue(&self, index: u32) {
        let Some(evt) = self.queue_events.get(index as usize) else {
            tracing::warn!(device = %self.name, queue = index, "notification for a queue that does not exist; ignored");
            return;
        };
        if let Err(e) = evt.write(1) {
            if e.kind() != io::ErrorKind::WouldBlock {
                tracing::error!(device = %self.name, queue = index, "cannot signal the queue EventFd: {e}");
            }
        }
    }

    /// The Status register: 0 resets, otherwise the driver may only add bits,
    /// in the order ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK (or FAILED
    /// at any time).
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            tracing::warn!(device = %self.name, old, new = value, "driver cleared status bits without a reset; ignored");
            return;
        }
        let known = VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK
            | VIRTIO_CONFIG_S_FAILED;
        // NEEDS_RESET is set by the device only; the driver echoes it back.
        let added = value & !old & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if added & !known != 0 {
            tracing::warn!(device = %self.name, value, "driver set unknown status bits; ignored");
            return;
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            tracing::warn!(device = %self.name, "guest driver gave up on the device (FAILED)");
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        let requires = [
            (VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_ACKNOWLEDGE),
            (VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER),
            (VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK),
        ];
        for (bit, prerequisite) in requires {
            if value & bit != 0 && value & prerequisite == 0 {
                tracing::warn!(device = %self.name, old, new = value, "status bits out of order; ignored");
                return;
            }
        }

        let mut new_status = value;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.accept_features() {
            // The driver re-reads Status, sees FEATURES_OK missing and gives up.
            new_status &= !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
            self.status = new_status;
            return;
        }
        self.status = new_status;
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn accept_features(&mut self) -> bool {
        let offered = self.device.avail_features();
        let accepted = self.driver_features;
        if accepted & !offered != 0 {
            tracing::warn!(device = %self.name, offered, accepted, "driver accepted features the device did not offer; refusing FEATURES_OK");
            return false;
        }
        if accepted & VIRTIO_F_VERSION_1 == 0 {
            tracing::warn!(device = %self.name, accepted, "driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported); refusing FEATURES_OK");
            return false;
        }
        self.device.ack_features(accepted);
        true
    }

    fn activate(&mut self) {
        if let Err(reason) = self.try_activate() {
            tracing::error!(device = %self.name, "cannot activate the device: {reason}");
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
            if let Err(e) = self.interrupt.signal_config_change() {
                tracing::error!(device = %self.name, "cannot raise the config-change interrupt: {e}");
            }
        }
    }

    fn try_activate(&mut self) -> Result<(), String> {
        if self.activated {
            return Err("already active".into());
        }
        if !self.queues.iter().any(|q| q.ready()) {
            return Err("no queue is ready".into());
        }
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(format!(
                    "queue {index} does not fit in guest memory (size {}, desc {:#x}, avail {:#x}, used {:#x})",
                    queue.size(),
                    queue.desc_table(),
                    queue.avail_ring(),
                    queue.used_ring()
                ));
            }
            queue.set_event_idx(event_idx);
            let copy = Queue::try_from(queue.state())
                .map_err(|e| format!("queue {index} state is inconsistent: {e:?}"))?;
            queues.push(copy);
        }
        let queue_events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| format!("cannot clone queue EventFds: {e}"))?;
        self.device
            .activate(
                self.mem.clone(),
                self.interrupt.clone(),
                queues,
                queue_events,
            )
            .map_err(|e| e.to_string())?;
        self.activated = true;
        tracing::debug!(device = %self.name, features = self.driver_features, "device activated");
        Ok(())
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for queue in &mut self.queues {
            queue.reset();
        }
        for evt in &self.queue_events {
            if let Err(e) = drain_eventfd(evt) {
                tracing::warn!(device = %self.name, "cannot drain a queue EventFd on reset: {e}");
            }
        }
        self.interrupt.clear();
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.status = 0;
        tracing::debug!(device = %self.name, "device reset");
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}

fn set_low(current: u64, low: u32) -> u64 {
    (current & !0xffff_ffff) | u64::from(low)
}

fn set_high(current: u64, high: u32) -> u64 {
    (current & 0xffff_ffff) | (u64::from(high) << 32)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::warn!(device = %self.name, offset, len = data.len(), "register read must be 32-bit and aligned; returning zeros");
            data.fill(0);
            return;
        }
        let value = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => self.device_features_page(),
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: length all-ones means "absent".
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::warn!(device = %self.name, offset, "read of a write-only or unknown register; returning zero");
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let value = match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset.is_multiple_of(4) => u32::from_le_bytes(bytes),
            _ => {
                tracing::warn!(device = %self.name, offset, len = data.len(), "register write must be 32-bit and aligned; ignored");
                return;
            }
        };
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM => self.update_selected_queue("QueueNum", |q| {
                let valid = u16::try_from(value)
                    .ok()
                    .filter(|&size| size.is_power_of_two() && size <= q.max_size());
                valid.is_some_and(|size| q.try_set_size(size).is_ok())
            }),
            VIRTIO_MMIO_QUEUE_READY => self.update_selected_queue("QueueReady", |q| match value {
                0 | 1 => {
                    q.set_ready(value == 1);
                    true
                }
                _ => false,
            }),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.update_selected_queue("QueueDescLow", |q| {
                q.try_set_desc_table_address(GuestAddress(set_low(q.desc_table(), value)))
                    .is_ok()
            }),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.update_selected_queue("QueueDescHigh", |q| {
                q.try_set_desc_table_address(GuestAddress(set_high(q.desc_table(), value)))
                    .is_ok()
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.update_selected_queue("QueueDriverLow", |q| {
                q.try_set_avail_ring_address(GuestAddress(set_low(q.avail_ring(), value)))
                    .is_ok()
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.update_selected_queue("QueueDriverHigh", |q| {
                q.try_set_avail_ring_address(GuestAddress(set_high(q.avail_ring(), value)))
                    .is_ok()
            }),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.update_selected_queue("QueueDeviceLow", |q| {
                q.try_set_used_ring_address(GuestAddress(set_low(q.used_ring(), value)))
                    .is_ok()
            }),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.update_selected_queue("QueueDeviceHigh", |q| {
                q.try_set_used_ring_address(GuestAddress(set_high(q.used_ring(), value)))
                    .is_ok()
            }),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify_queue(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => {
                tracing::warn!(device = %self.name, offset, value, "write to a read-only or unknown register; ignored")
            }
        }
    }
}

/// Fuzz entry (see `fuzz/`): register reads and writes from `data`, in
/// 7-byte steps (kind, 16-bit offset, 32-bit value; the kind's low bit
/// picks write or read, the next two the access width 1/2/4/8), on a
/// transport whose device has two queues and accepts any activation.
#[doc(hidden)]
pub fn fuzz_registers(data: &[u8]) {
    struct Dummy {
        config: [u8; 8],
    }
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            3
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn ack_features(&mut self, _features: u64) {}
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::read_config_space("fuzz", &self.config, offset, data);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _interrupt: Arc<Interrupt>,
            _queues: Vec<Queue>,
            _queue_events: Vec<EventFd>,
        ) -> Result<(), super::ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
    }
    let Ok(interrupt) = Interrupt::new() else {
        return;
    };
    let Ok(mut transport) = MmioTransport::new(
        "fuzz".into(),
        super::fuzz_support::memory(&[]),
        Box::new(Dummy { config: [7; 8] }),
        Arc::new(interrupt),
    ) else {
        return;
    };
    for step in data.chunks_exact(7) {
        let width = [1usize, 2, 4, 8][usize::from((step[0] >> 1) & 3)];
        let offset = u64::from(u16::from_le_bytes([step[1], step[2]]) & 0x1ff);
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&step[3..7]);
        if step[0] & 1 == 1 {
            transport.write(offset, &value[..width]);
        } else {
            transport.read(offset, &mut value[..width]);
        }
    }
}

#[cfg(test)]
mod tests;
