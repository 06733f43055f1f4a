//! The seam between the MMIO transport and a device model: the transport
//! negotiates features and collects queue addresses, the device owns the
//! backend and, once activated, a worker thread that serves the queues.

use std::sync::Arc;

use thiserror::Error;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

/// Why a device refused to start on DRIVER_OK. The transport reports it to
/// the guest as DEVICE_NEEDS_RESET; the VM keeps running.
#[derive(Debug, Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, the transport passed {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is required but the driver did not make it ready")]
    QueueNotReady(usize),
    #[error("the device is already active")]
    AlreadyActive,
    #[error("the device backend is gone (an earlier worker failed)")]
    BackendGone,
    #[error("cannot start the device worker: {0}")]
    Worker(#[source] std::io::Error),
}

/// A virtio device model behind an [`MmioTransport`](super::MmioTransport).
pub trait VirtioDevice: Send {
    /// virtio device ID (`VIRTIO_ID_BLOCK`, `VIRTIO_ID_CONSOLE`, ...).
    fn device_type(&self) -> u32;
    /// One entry per queue: its maximum size (a power of two).
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers, VIRTIO_F_VERSION_1 included.
    fn avail_features(&self) -> u64;
    /// The features the driver accepted (a subset of `avail_features`,
    /// checked by the transport) when it sets FEATURES_OK.
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific config space (offset relative to 0x100).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space (offset relative to 0x100).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving `queues` (one per `queue_max_sizes` entry, configured
    /// by the driver) on a worker thread. `queue_events[i]` becomes readable
    /// when the guest notifies queue `i`; the worker signals used buffers
    /// through `interrupt`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
    ) -> Result<(), ActivateError>;
    /// Stops the worker (if any) and returns to the pre-activation state,
    /// keeping the backend (disk file, console socket) for the next
    /// activation.
    fn reset(&mut self);
}
