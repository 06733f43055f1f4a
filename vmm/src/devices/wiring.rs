//! Attaches the configured virtio devices (each `--disk`, then the console
//! socket) to the VM: one virtio-mmio window and IRQ per device, the
//! transport on the MMIO bus, its interrupt as an irqfd, its queue
//! notifications as ioeventfds. The slots returned feed the kernel
//! command line (`virtio_mmio.device=4K@0x...:IRQ`), so the order here is
//! the guest's device order: disks are vda, vdb, ... in `--disk` order.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use super::bus::{Bus, BusError};
use super::virtio::block::{Block, SlotBacking};
use super::virtio::console::Console;
use super::virtio::net::{Net, Tap};
use super::virtio::{Interrupt, MmioTransport, TransportError, VirtioDevice, QUEUE_NOTIFY_OFFSET};
use crate::config::{DiskConfig, NetConfig, VmConfig};
use crate::exit::ExitSender;
use crate::memory::{DeviceSlot, DeviceSlotAllocator, MemoryError};

#[derive(Debug, Error)]
pub enum VirtioError {
    #[error(transparent)]
    Slot(#[from] MemoryError),
    #[error("virtio {device}: {detail}")]
    Device { device: String, detail: String },
    #[error("virtio {device}: {source}")]
    Transport {
        device: String,
        source: TransportError,
    },
    #[error("virtio {device}: interrupt eventfd: {source}")]
    Interrupt {
        device: String,
        source: std::io::Error,
    },
    #[error("virtio {device}: {what}: {source}")]
    Kvm {
        device: String,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("virtio {device}: {source}")]
    Bus { device: String, source: BusError },
}

/// The attached devices; dropping this drops our references to the
/// transports (the MMIO bus holds the others).
#[derive(Default)]
pub struct VirtioDevices {
    slots: Vec<DeviceSlot>,
    /// The disk slots' swap handles, by serial (for the control socket).
    disk_slots: Vec<(String, SlotBacking)>,
}

impl VirtioDevices {
    /// The windows and IRQs in attach order, for the command line.
    pub fn slots(&self) -> &[DeviceSlot] {
        &self.slots
    }

    /// The disk slots' swap handles, by serial.
    pub fn disk_slots(&self) -> &[(String, SlotBacking)] {
        &self.disk_slots
    }
}

/// Builds and attaches every virtio device in `config`.
pub fn attach(
    config: &VmConfig,
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    slots: &mut DeviceSlotAllocator,
    exit: &ExitSender,
) -> Result<VirtioDevices, VirtioError> {
    let mut attached = VirtioDevices::default();
    for (index, disk) in config.disks.iter().enumerate() {
        let name = disk_name(index);
        let device = make_block(disk, &name, exit)?;
        attached
            .slots
            .push(attach_one(name, device, vm_fd, mem, mmio, slots)?);
    }
    for (index, slot) in config.disk_slots.iter().enumerate() {
        let name = disk_name(config.disks.len() + index);
        let (device, handle) = Block::slot(slot.capacity, slot.serial.clone(), exit.clone())
            .map_err(|e| VirtioError::Device {
                device: name.clone(),
                detail: e.to_string(),
            })?;
        attached.disk_slots.push((slot.serial.clone(), handle));
        attached
            .slots
            .push(attach_one(name, Box::new(device), vm_fd, mem, mmio, slots)?);
    }
    if let Some(socket) = &config.console_socket {
        let name = "console".to_string();
        let device = make_console(socket, &name, exit)?;
        attached
            .slots
            .push(attach_one(name, device, vm_fd, mem, mmio, slots)?);
    }
    for (index, net) in config.nets.iter().enumerate() {
        let name = format!("net{index}");
        let device = make_net(net, &name, exit)?;
        attached
            .slots
            .push(attach_one(name, device, vm_fd, mem, mmio, slots)?);
    }
    Ok(attached)
}

/// A virtio-blk device over the disk's raw file, or over the component
/// images its list names (`concat`). Its serial (GET_ID, what the guest
/// reads from /sys/block/vdX/serial) is `serial=` or else the guest name.
fn make_block(
    disk: &DiskConfig,
    name: &str,
    exit: &ExitSender,
) -> Result<BoxedDevice, VirtioError> {
    let serial = disk.serial.clone().unwrap_or_else(|| name.to_string());
    let block = if disk.concat {
        Block::concat(&disk.path, serial, exit.clone())
    } else {
        Block::new(&disk.path, disk.read_only, serial, exit.clone())
    }
    .map_err(|e| VirtioError::Device {
        device: name.into(),
        detail: e.to_string(),
    })?;
    Ok(Box::new(block))
}

/// A virtio console whose port is bridged to a listening Unix socket.
fn make_console(socket: &Path, name: &str, exit: &ExitSender) -> Result<BoxedDevice, VirtioError> {
    let console = Console::new(socket, exit.clone()).map_err(|e| VirtioError::Device {
        device: name.into(),
        detail: e.to_string(),
    })?;
    Ok(Box::new(console))
}

/// A virtio-net NIC over the tap fd the parent passed (taken over here).
fn make_net(net: &NetConfig, name: &str, exit: &ExitSender) -> Result<BoxedDevice, VirtioError> {
    // SAFETY: `validate` checked the fd is open and named by one NIC only,
    // and nothing else in this process uses it: it is ours from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(net.tap_fd) };
    let tap = Tap::open(fd).map_err(|e| VirtioError::Device {
        device: name.into(),
        detail: format!("tap-fd={}: {e}", net.tap_fd),
    })?;
    Ok(Box::new(Net::new(name.into(), tap, net.mac, exit.clone())))
}

type BoxedDevice = Box<dyn VirtioDevice + Send>;

/// The guest's name for the `index`th disk: vda, vdb, ..., vdz, vdaa.
pub fn disk_name(index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index;
    loop {
        suffix.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    suffix.reverse();
    format!("vd{}", String::from_utf8_lossy(&suffix))
}

fn attach_one(
    name: String,
    device: Box<dyn VirtioDevice + Send>,
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    slots: &mut DeviceSlotAllocator,
) -> Result<DeviceSlot, VirtioError> {
    let slot = slots.allocate()?;
    let kvm = |what: &'static str| {
        let device = name.clone();
        move |source| VirtioError::Kvm {
            device,
            what,
            source,
        }
    };
    let interrupt = Arc::new(Interrupt::new().map_err(|source| VirtioError::Interrupt {
        device: name.clone(),
        source,
    })?);
    vm_fd
        .register_irqfd(interrupt.irq_evt(), slot.irq)
        .map_err(kvm("KVM_IRQFD"))?;
    let transport =
        MmioTransport::new(name.clone(), mem.clone(), device, interrupt).map_err(|source| {
            VirtioError::Transport {
                device: name.clone(),
                source,
            }
        })?;
    // KVM signals queue notifications itself: no exit to user space.
    let notify = IoEventAddress::Mmio(slot.mmio_base + QUEUE_NOTIFY_OFFSET);
    for (queue, evt) in transport.queue_events().iter().enumerate() {
        vm_fd
            .register_ioevent(evt, &notify, queue as u32)
            .map_err(kvm("KVM_IOEVENTFD"))?;
    }
    mmio.insert(
        slot.mmio_base,
        slot.mmio_size,
        Arc::new(Mutex::new(transport)),
    )
    .map_err(|source| VirtioError::Bus {
        device: name.clone(),
        source,
    })?;
    tracing::debug!(device = %name, base = format_args!("{:#x}", slot.mmio_base), irq = slot.irq, "virtio device attached");
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_follow_the_guest_driver() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(1), "vdb");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
        assert_eq!(disk_name(27), "vdab");
    }
}
