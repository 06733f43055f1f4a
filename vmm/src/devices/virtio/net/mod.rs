//! virtio-net with one queue pair (receiveq 0, transmitq 1, no control
//! queue) over a tap the host opened: see `tap` for the backend and its
//! offloads, `worker` for the data path. The config space gives the MAC
//! and a link that is always up.

mod tap;
mod worker;

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use tap::{Tap, OFFLOAD_FEATURES, VNET_HDR_LEN};
pub use worker::MAX_FRAME;

use self::worker::NetWorker;
use super::device::take_ready_queues;
use super::worker::Worker;
use super::{read_config_space, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::exit::ExitSender;

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// `struct virtio_net_config` up to `status`: mac[6], status (le16).
const CONFIG_SIZE: usize = 8;

/// A virtio-net device; hand it to an [`MmioTransport`](super::MmioTransport).
pub struct Net {
    label: String,
    acked_features: u64,
    config: [u8; CONFIG_SIZE],
    /// Owned here while inactive, by the worker while active.
    tap: Option<Tap>,
    worker: Option<Worker<Tap>>,
    exit: ExitSender,
}

impl Net {
    pub fn new(label: String, tap: Tap, mac: [u8; 6], exit: ExitSender) -> Self {
        let mut config = [0u8; CONFIG_SIZE];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Self {
            label,
            acked_features: 0,
            config,
            tap: Some(tap),
            worker: None,
            exit,
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.reset();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        let offloads = self.tap.as_ref().map_or(0, |tap| tap.offloads);
        VIRTIO_F_VERSION_1 | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS) | offloads
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.label, &self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR (legacy
        // drivers), which we do not offer.
        tracing::warn!(device = %self.label, offset, len = data.len(), "guest wrote the virtio-net config; ignored");
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
        let ([rx_queue, tx_queue], [rx_evt, tx_evt]) =
            take_ready_queues::<2>(queues, queue_events)?;
        let tap = self.tap.take().ok_or(ActivateError::BackendGone)?;
        if let Err(e) = tap.set_guest_offloads(self.acked_features) {
            // Without it the tap might hand the guest frames it refused.
            self.tap = Some(tap);
            return Err(ActivateError::Worker(e));
        }
        let worker = NetWorker::new(
            self.label.clone(),
            tap,
            rx_queue,
            tx_queue,
            rx_evt,
            tx_evt,
            mem,
            interrupt,
            self.exit.clone(),
        );
        let worker = Worker::spawn(self.label.clone(), move |stop_evt| worker.run(stop_evt))
            .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(tap) => self.tap = Some(tap),
                None => {
                    tracing::error!(device = %self.label, "virtio-net worker panicked; the tap is gone")
                }
            }
        }
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests;
