//! The PVH start of day (xenbits.xen.org docs/misc/pvh.html): the guest
//! enters its PVH entry point in 32-bit protected mode with EBX holding the
//! address of an `hvm_start_info`, which points at the command line, the
//! memory map and the module list (our initrd). linux-loader's
//! `PvhBootConfigurator` writes the structures; this module fills them.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams, Error as ConfiguratorError};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::memory::{
    low_ram_end, CMDLINE_ADDRESS, EBDA_START, HIGH_MEMORY_START, MMIO_GAP_END, MMIO_GAP_START,
    PVH_MEMMAP_ADDRESS, PVH_MEMMAP_MAX_ENTRIES, PVH_MODLIST_ADDRESS, PVH_START_INFO_ADDRESS,
};

/// "xEn3" with the 0x80 bit set on "E": the PVH start info magic.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Version 1 of the start info adds the memory map fields.
const HVM_START_INFO_VERSION: u32 = 1;
/// e820 type for usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type for reserved ranges.
pub const E820_RESERVED: u32 = 2;

/// The guest's physical memory map in e820 terms.
pub fn memory_map(mem_mib: u64) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_: u32| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let low_end = low_ram_end(mem_mib);
    let total = mem_mib << 20;
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIGH_MEMORY_START - EBDA_START, E820_RESERVED),
        entry(HIGH_MEMORY_START, low_end - HIGH_MEMORY_START, E820_RAM),
    ];
    if total > MMIO_GAP_START {
        map.push(entry(MMIO_GAP_END, total - low_end, E820_RAM));
    }
    map
}

/// Writes the start info, memory map and (optional) initrd module entry.
/// Returns the start info address, which goes into EBX.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    mem_mib: u64,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<GuestAddress, ConfiguratorError> {
    let map = memory_map(mem_mib);
    debug_assert!(map.len() <= PVH_MEMMAP_MAX_ENTRIES);
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        cmdline_paddr: CMDLINE_ADDRESS,
        memmap_paddr: PVH_MEMMAP_ADDRESS,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let modules = initrd.map(|(addr, size)| hvm_modlist_entry {
        paddr: addr.0,
        size,
        ..Default::default()
    });
    if modules.is_some() {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_ADDRESS;
    }
    let start_addr = GuestAddress(PVH_START_INFO_ADDRESS);
    let mut params = BootParams::new(&start_info, start_addr);
    params.set_sections(&map, GuestAddress(PVH_MEMMAP_ADDRESS));
    if let Some(module) = modules {
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDRESS));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)?;
    Ok(start_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn small_vm_memory_map() {
        let map = memory_map(256);
        let triples: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.type_)).collect();
        assert_eq!(
            triples,
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x6_0400, E820_RESERVED),
                (0x10_0000, (256 << 20) - 0x10_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn big_vm_memory_map_skips_the_mmio_gap() {
        let map = memory_map(4096);
        assert_eq!(map.len(), 4);
        assert_eq!((map[2].addr + map[2].size), MMIO_GAP_START);
        assert_eq!(
            (map[3].addr, map[3].size),
            (MMIO_GAP_END, (4096u64 << 20) - MMIO_GAP_START)
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.type_ == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4096u64 << 20) - 0x6_0400);
    }

    #[test]
    fn start_info_lands_where_ebx_points() {
        let mem = create_guest_memory(64).unwrap();
        let addr = write_start_info(&mem, 64, Some((GuestAddress(0x300_0000), 12345))).unwrap();
        assert_eq!(addr, GuestAddress(PVH_START_INFO_ADDRESS));
        let info: hvm_start_info = mem.read_obj(addr).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDRESS);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 12345));
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (0x10_0000, (64 << 20) - 0x10_0000, E820_RAM)
        );
    }

    #[test]
    fn no_initrd_no_modules() {
        let mem = create_guest_memory(64).unwrap();
        let addr = write_start_info(&mem, 64, None).unwrap();
        let info: hvm_start_info = mem.read_obj(addr).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }
}
