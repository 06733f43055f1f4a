//! The seam between the MMIO transport and a device model: the transport
//! negotiates features and collects queue addresses, the device owns the
//! backend and, once activated, a worker thread that serves the queues.

use std::sync::Arc;

use thiserror::Error;
use virtio_queue::{Queue, QueueT};
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

/// The queues and their notification EventFds that `activate` received, as
/// exactly `N` of each with every queue made ready by the driver: the checks
/// every device does before it starts its worker.
pub fn take_ready_queues<const N: usize>(
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
) -> Result<([Queue; N], [EventFd; N]), ActivateError> {
    let got = queues.len();
    let (Ok(queues), Ok(queue_events)) = (
        <[Queue; N]>::try_from(queues),
        <[EventFd; N]>::try_from(queue_events),
    ) else {
        return Err(ActivateError::QueueCount { expected: N, got });
    };
    if let Some(index) = queues.iter().position(|queue| !queue.ready()) {
        return Err(ActivateError::QueueNotReady(index));
    }
    Ok((queues, queue_events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(ready: &[bool]) -> (Vec<Queue>, Vec<EventFd>) {
        let queues = ready
            .iter()
            .map(|&r| {
                let mut queue = Queue::new(16).expect("valid queue size");
                queue.set_ready(r);
                queue
            })
            .collect();
        let events = ready
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
            .collect();
        (queues, events)
    }

    #[test]
    fn takes_exactly_n_ready_queues() {
        let (q, e) = queues(&[true, true]);
        assert!(take_ready_queues::<2>(q, e).is_ok());
    }

    #[test]
    fn wrong_count_is_refused() {
        let (q, e) = queues(&[true, true]);
        assert!(matches!(
            take_ready_queues::<1>(q, e),
            Err(ActivateError::QueueCount {
                expected: 1,
                got: 2
            })
        ));
    }

    #[test]
    fn first_queue_not_ready_is_named() {
        let (q, e) = queues(&[true, false]);
        assert!(matches!(
            take_ready_queues::<2>(q, e),
            Err(ActivateError::QueueNotReady(1))
        ));
    }
}
