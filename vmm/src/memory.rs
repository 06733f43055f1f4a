//! Guest physical memory: the layout every other module agrees on, and the
//! vm-memory backing for it.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (left zero, RAM)
//! 0x0000_0500  GDT used for the 32-bit PVH entry (`x86_64::gdt`)
//! 0x0000_6000  PVH `hvm_start_info`                (`boot::pvh`)
//! 0x0000_6040  PVH module list (the initrd)
//! 0x0000_7000  PVH memory map (e820-style entries)
//! 0x0002_0000  kernel command line (COMMAND_LINE_SIZE bytes)
//! 0x0009_fc00  EBDA start: MP table (`boot::mptable`); reserved up to 1 MiB
//! 0x0010_0000  RAM continues; the vmlinux loads at its own p_paddr
//!              (16 MiB for a default x86_64 build); the initrd goes at
//!              the top of low RAM, page aligned
//! LOW_RAM_END  = min(RAM size, MMIO_GAP_START)
//! 0xc000_0000  MMIO gap start (1 GiB up to 4 GiB): no RAM here
//! 0xd000_0000  virtio-mmio windows, 4 KiB each, one per device
//! 0xfec0_0000  IOAPIC (in-kernel irqchip)
//! 0xfee0_0000  LAPIC  (in-kernel irqchip)
//! 0xfffb_c000  KVM identity-map page, 0xfffb_d000 KVM TSS (3 pages)
//! 0x1_0000_0000 RAM above the gap, when RAM is larger than 3 GiB
//! ```
//!
//! IRQs: 4 is the 8250 serial (COM1), 1 the i8042; virtio devices get 5 and
//! up (`DeviceSlotAllocator`), to the last IOAPIC pin (23). The MP table
//! (`boot::mptable`) routes ISA IRQ n to IOAPIC pin n, which is what lets
//! the guest use lines above the legacy PIC's 15.

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Start of the 32-bit MMIO gap: RAM stops here and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window (the register file fits in 4 KiB).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Highest number of virtio-mmio windows we hand out (bounded by IRQs).
pub const VIRTIO_MMIO_MAX_DEVICES: u32 = LAST_DEVICE_IRQ - FIRST_VIRTIO_IRQ + 1;

/// KVM's TSS (three pages) and identity-map page, inside the MMIO gap and
/// below the IOAPIC/LAPIC/BIOS areas so they never overlap RAM or devices.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// IOAPIC and local APIC MMIO (the in-kernel irqchip decodes them).
pub const IOAPIC_ADDRESS: u64 = 0xfec0_0000;
pub const LAPIC_ADDRESS: u64 = 0xfee0_0000;
/// Pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;

/// GDT for the 32-bit PVH entry state.
pub const GDT_ADDRESS: u64 = 0x500;
/// PVH start info (`hvm_start_info`, 56 bytes).
pub const PVH_START_INFO_ADDRESS: u64 = 0x6000;
/// PVH module list (one `hvm_modlist_entry` for the initrd).
pub const PVH_MODLIST_ADDRESS: u64 = 0x6040;
/// PVH memory map table.
pub const PVH_MEMMAP_ADDRESS: u64 = 0x7000;
/// Most memory map entries that fit between the table and the command line.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((CMDLINE_ADDRESS - PVH_MEMMAP_ADDRESS) / 24) as usize;
/// Kernel command line.
pub const CMDLINE_ADDRESS: u64 = 0x2_0000;
/// x86 Linux `COMMAND_LINE_SIZE` (the kernel truncates anything longer).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA; [EBDA_START, 1 MiB) is reported reserved.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of RAM above the legacy hole.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Where a raw (non-ELF) payload is loaded and entered.
pub const RAW_PAYLOAD_ADDRESS: u64 = HIGH_MEMORY_START;

/// Legacy IRQ lines.
pub const I8042_IRQ: u32 = 1;
pub const SERIAL_IRQ: u32 = 4;
/// Virtio devices get IRQs from here up.
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// Last IOAPIC pin (KVM's in-kernel IOAPIC has 24).
pub const LAST_DEVICE_IRQ: u32 = IOAPIC_PINS as u32 - 1;

/// Smallest and largest guest RAM we accept (MiB).
pub const MIN_MEM_MIB: u64 = 64;
/// 1 TiB: far beyond a microVM, but keeps every size computation in range.
pub const MAX_MEM_MIB: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("guest memory size {0} MiB is outside {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB")]
    InvalidSize(u64),
    #[error("cannot map guest memory: {0}")]
    Mmap(#[from] vm_memory::mmap::FromRangesError),
    #[error("no free virtio-mmio window/IRQ left (at most {VIRTIO_MMIO_MAX_DEVICES} devices)")]
    OutOfDeviceSlots,
}

/// The RAM ranges (start, length) for `mem_mib` MiB of guest RAM: below the
/// MMIO gap, and the rest above 4 GiB.
pub fn ram_ranges(mem_mib: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_mib) {
        return Err(MemoryError::InvalidSize(mem_mib));
    }
    let total = mem_mib << 20;
    let low = total.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if total > low {
        ranges.push((GuestAddress(MMIO_GAP_END), (total - low) as usize));
    }
    Ok(ranges)
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_mib: u64) -> u64 {
    (mem_mib << 20).min(MMIO_GAP_START)
}

/// Allocates guest RAM for `mem_mib` MiB.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    Ok(GuestMemoryMmap::from_ranges(&ram_ranges(mem_mib)?)?)
}

/// A virtio-mmio window and the IRQ line that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSlot {
    pub mmio_base: u64,
    pub mmio_size: u64,
    pub irq: u32,
}

/// Hands out virtio-mmio windows and IRQs in order, so that the command
/// line, the MMIO bus and the irqfds all agree.
#[derive(Debug, Default)]
pub struct DeviceSlotAllocator {
    next: u32,
}

impl DeviceSlotAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn allocate(&mut self) -> Result<DeviceSlot, MemoryError> {
        if self.next >= VIRTIO_MMIO_MAX_DEVICES {
            return Err(MemoryError::OutOfDeviceSlots);
        }
        let slot = DeviceSlot {
            mmio_base: VIRTIO_MMIO_BASE + u64::from(self.next) * VIRTIO_MMIO_SIZE,
            mmio_size: VIRTIO_MMIO_SIZE,
            irq: FIRST_VIRTIO_IRQ + self.next,
        };
        self.next += 1;
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn small_ram_is_one_range_below_the_gap() {
        let ranges = ram_ranges(256).unwrap();
        assert_eq!(ranges, vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(low_ram_end(256), 256 << 20);
    }

    #[test]
    fn large_ram_splits_around_the_mmio_gap() {
        let ranges = ram_ranges(4096).unwrap();
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (
                    GuestAddress(MMIO_GAP_END),
                    (4096usize << 20) - MMIO_GAP_START as usize
                )
            ]
        );
        assert_eq!(low_ram_end(4096), MMIO_GAP_START);
    }

    #[test]
    fn silly_sizes_are_refused() {
        assert!(matches!(ram_ranges(0), Err(MemoryError::InvalidSize(0))));
        assert!(ram_ranges(MAX_MEM_MIB + 1).is_err());
    }

    #[test]
    fn guest_memory_has_the_requested_size() {
        let mem = create_guest_memory(64).unwrap();
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
    }

    #[test]
    fn slots_are_consecutive_and_bounded() {
        let mut alloc = DeviceSlotAllocator::new();
        let first = alloc.allocate().unwrap();
        let second = alloc.allocate().unwrap();
        assert_eq!(
            first,
            DeviceSlot {
                mmio_base: 0xd000_0000,
                mmio_size: 0x1000,
                irq: 5
            }
        );
        assert_eq!(
            second,
            DeviceSlot {
                mmio_base: 0xd000_1000,
                mmio_size: 0x1000,
                irq: 6
            }
        );
        for _ in 2..VIRTIO_MMIO_MAX_DEVICES {
            let slot = alloc.allocate().unwrap();
            assert!(slot.irq <= LAST_DEVICE_IRQ);
            assert!(slot.mmio_base + slot.mmio_size <= 0xfec0_0000);
        }
        assert!(matches!(
            alloc.allocate(),
            Err(MemoryError::OutOfDeviceSlots)
        ));
    }
}
