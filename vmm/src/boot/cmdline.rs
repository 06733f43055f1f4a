//! The kernel command line: the user's (or our default) base, then one
//! `virtio_mmio.device=` entry per virtio device, then the nested-PVM
//! workarounds when they apply.

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};
use vm_memory::GuestAddress;

use super::nested_pvm::NESTED_PVM_KERNEL_PARAMS;
use crate::memory::{DeviceSlot, CMDLINE_MAX_SIZE};

/// Used when the user gives no `--cmdline`: console on the 8250, reboot
/// through the i8042 (which we turn into a VM exit), reboot 1 s after a
/// panic so a dead guest ends the VM, and no PCI probing (there is none).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// Builds the full command line.
pub fn build_cmdline(
    base: &str,
    virtio_devices: &[DeviceSlot],
    nested_pvm: bool,
) -> Result<Cmdline, CmdlineError> {
    let base = if base.trim().is_empty() {
        DEFAULT_CMDLINE
    } else {
        base
    };
    let mut cmdline = Cmdline::try_from(base, CMDLINE_MAX_SIZE)?;
    for slot in virtio_devices {
        cmdline.add_virtio_mmio_device(
            slot.mmio_size,
            GuestAddress(slot.mmio_base),
            slot.irq,
            None,
        )?;
    }
    if nested_pvm {
        for param in NESTED_PVM_KERNEL_PARAMS {
            cmdline.insert_str(param)?;
        }
    }
    Ok(cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::DeviceSlotAllocator;

    fn as_string(c: &Cmdline) -> String {
        c.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn empty_base_uses_the_default() {
        let c = build_cmdline("", &[], false).unwrap();
        assert_eq!(as_string(&c), DEFAULT_CMDLINE);
    }

    #[test]
    fn virtio_devices_are_announced_in_order() {
        let mut alloc = DeviceSlotAllocator::new();
        let slots = [alloc.allocate().unwrap(), alloc.allocate().unwrap()];
        let c = build_cmdline("console=ttyS0", &slots, false).unwrap();
        assert_eq!(
            as_string(&c),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn nested_pvm_params_come_after_devices_and_before_init_args() {
        let mut alloc = DeviceSlotAllocator::new();
        let slots = [alloc.allocate().unwrap()];
        let c = build_cmdline("console=ttyS0 -- init-arg", &slots, true).unwrap();
        let s = as_string(&c);
        let expected_params = NESTED_PVM_KERNEL_PARAMS.join(" ");
        assert_eq!(
            s,
            format!(
                "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 {expected_params} -- init-arg"
            )
        );
        assert!(s.contains(" noxsave "));
        assert!(s.contains("clearcpuid=141,"));
    }

    #[test]
    fn overlong_cmdline_is_an_error_not_a_truncation() {
        let long = "x".repeat(CMDLINE_MAX_SIZE + 1);
        assert!(build_cmdline(&long, &[], false).is_err());
    }
}
