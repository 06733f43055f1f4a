//! The interrupt side of a virtio-mmio device: the InterruptStatus register
//! (shared by the vCPU thread that reads/acks it and the worker that sets
//! it) and the EventFd the VMM registers as the device's irqfd.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// InterruptStatus bit: the device put buffers in a used ring.
pub const INTERRUPT_USED_BUFFER: u32 = VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the device configuration changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = VIRTIO_MMIO_INT_CONFIG;

/// InterruptStatus bits plus the irqfd that raises the guest IRQ.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irq_evt: EventFd,
}

impl Interrupt {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            irq_evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The EventFd to register with `VmFd::register_irqfd` for this device's IRQ.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }

    /// Sets the used-buffer bit and raises the IRQ.
    pub fn signal_used_buffer(&self) -> io::Result<()> {
        self.signal(INTERRUPT_USED_BUFFER)
    }

    /// Sets the config-change bit and raises the IRQ.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.signal(INTERRUPT_CONFIG_CHANGE)
    }

    fn signal(&self, bit: u32) -> io::Result<()> {
        // The bit must be visible before the guest's handler reads
        // InterruptStatus, which it does only after the IRQ fires.
        self.status.fetch_or(bit, Ordering::SeqCst);
        match self.irq_evt.write(1) {
            // A saturated counter means an interrupt is already pending.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// Current InterruptStatus value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: nothing pending any more.
    pub(crate) fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_sets_bits_and_fires_eventfd_and_ack_clears() {
        let interrupt = Interrupt::new().unwrap();
        assert!(interrupt.irq_evt().read().is_err(), "no interrupt yet");
        interrupt.signal_used_buffer().unwrap();
        interrupt.signal_config_change().unwrap();
        assert_eq!(
            interrupt.status(),
            INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE
        );
        assert_eq!(interrupt.irq_evt().read().unwrap(), 2);
        interrupt.ack(INTERRUPT_USED_BUFFER);
        assert_eq!(interrupt.status(), INTERRUPT_CONFIG_CHANGE);
        interrupt.clear();
        assert_eq!(interrupt.status(), 0);
    }
}
