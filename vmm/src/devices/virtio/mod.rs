//! virtio over the MMIO transport: `mmio` (the register file, one per
//! device), `interrupt` (the InterruptStatus bits and the irqfd), and one
//! folder per device (`block`, `console`). Each activated device runs one
//! worker thread with its own epoll loop; vCPU threads only touch the
//! register file.
//!
//! # Wiring a device (what vmm-core does for each `--disk` / the console)
//!
//! ```ignore
//! use std::sync::{Arc, Mutex};
//! use kvm_ioctls::IoEventAddress;
//! use husk_vmm::devices::virtio::{block::Block, Interrupt, MmioTransport, QUEUE_NOTIFY_OFFSET};
//!
//! let block = Block::new(&path, read_only, serial, exit_tx.clone())?;
//! let interrupt = Arc::new(Interrupt::new()?);
//! // The guest's IRQ line for this window (the same `irq` announced with
//! // `virtio_mmio.device=4K@base:irq` on the kernel command line).
//! vm_fd.register_irqfd(interrupt.irq_evt(), irq)?;
//! let transport = MmioTransport::new("vda".into(), guest_mem.clone(), Box::new(block), interrupt)?;
//! // Optional but faster: let KVM signal QueueNotify writes itself, so a
//! // notification never exits to user space. Without this, the transport
//! // signals the same EventFds when the guest's write reaches `BusDevice::write`.
//! for (index, evt) in transport.queue_events().iter().enumerate() {
//!     vm_fd.register_ioevent(evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET), index as u32)?;
//! }
//! mmio_bus.insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
//! ```
//!
//! The console is the same with `console::Console::new(socket_path, exit_tx)`:
//! it listens on the socket right away (replacing a stale socket file,
//! refusing a live one or a non-socket), accepts one client at a time, and
//! removes the socket file when dropped.
//!
//! Lifetimes: the device worker starts when the guest sets DRIVER_OK and
//! stops on a guest reset (status 0) or when the transport is dropped, which
//! joins the thread. Host-side failures inside a worker (epoll, eventfd) are
//! sent on the `ExitSender` as `VmExitReason::DeviceError`; anything the
//! guest does wrong is logged and answered per the virtio spec, never fatal.
//!
//! Interrupts are edge-style: each signal writes the irqfd once; the guest
//! reads InterruptStatus and acknowledges through InterruptACK.

pub mod block;
pub mod console;
mod device;
#[doc(hidden)]
pub mod fuzz_support;
pub mod interrupt;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_utils;
mod worker;
#[cfg(debug_assertions)]
pub use worker::seccomp_violation_self_test;

pub use device::{ActivateError, VirtioDevice};
pub use interrupt::Interrupt;
pub use mmio::{MmioTransport, TransportError, QUEUE_NOTIFY_OFFSET};

/// Feature bit every modern device offers and every driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Copies `data.len()` bytes of a device's config space starting at
/// `offset`. Reads past the end come back as zeros (and are logged): the
/// guest chooses the offset, so it must never index out of bounds.
pub(crate) fn read_config_space(device: &str, config: &[u8], offset: u64, data: &mut [u8]) {
    let range = usize::try_from(offset)
        .ok()
        .and_then(|start| Some(start..start.checked_add(data.len())?))
        .filter(|range| range.end <= config.len());
    match range {
        Some(range) => data.copy_from_slice(&config[range]),
        None => {
            tracing::warn!(
                device,
                offset,
                len = data.len(),
                config_len = config.len(),
                "guest read outside the device config space; returning zeros"
            );
            data.fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounds_checked() {
        let config = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mut data = [0xffu8; 4];
        read_config_space("t", &config, 4, &mut data);
        assert_eq!(data, [5, 6, 7, 8]);
        read_config_space("t", &config, 6, &mut data);
        assert_eq!(data, [0; 4]);
        let mut data = [0xffu8; 2];
        read_config_space("t", &config, u64::MAX, &mut data);
        assert_eq!(data, [0; 2]);
    }
}
