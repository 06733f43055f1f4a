//! The flat GDT the PVH entry state refers to. Hand-written because it is
//! four 8-byte descriptors and no rust-vmm crate exports one.
//!
//! The kernel's PVH entry loads its own GDT straight away, but the spec
//! requires segment state consistent with a real table, and an exception
//! before that point needs a valid TR to report a triple fault cleanly.

use kvm_bindings::kvm_segment;

/// Descriptor flags (access byte in bits 0..8, flags nibble in 12..16).
const CODE32_FLAGS: u16 = 0xc09b; // G, D, P, S, exec/read, accessed
const DATA32_FLAGS: u16 = 0xc093; // G, D, P, S, read/write, accessed
const TSS32_FLAGS: u16 = 0x008b; // P, 32-bit busy TSS

pub const CODE_SELECTOR: u16 = 1 << 3;
pub const DATA_SELECTOR: u16 = 2 << 3;
pub const TSS_SELECTOR: u16 = 3 << 3;

/// The table: null, flat code, flat data, TSS (base 0, 104 bytes).
pub const GDT: [u64; 4] = [
    0,
    gdt_entry(CODE32_FLAGS, 0, 0xf_ffff),
    gdt_entry(DATA32_FLAGS, 0, 0xf_ffff),
    gdt_entry(TSS32_FLAGS, 0, 0x67),
];

/// Encodes a segment descriptor.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The KVM segment register value matching descriptor `entry` loaded
/// with `selector`.
pub fn kvm_segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let granular = (entry >> 55) & 1;
    let raw_limit = (((entry >> 32) & 0xf_0000) | (entry & 0xffff)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With G set the limit counts 4 KiB pages; KVM wants bytes.
        limit: if granular == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_like_the_manual() {
        assert_eq!(GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(GDT[3], 0x0000_8b00_0000_0067);
        assert_eq!(
            gdt_entry(0x8093, 0x1234_5678, 0xa_bcde),
            0x128a_9334_5678_bcde
        );
    }

    #[test]
    fn segments_decode_flat() {
        let cs = kvm_segment_from_gdt(GDT[1], CODE_SELECTOR);
        assert_eq!(
            (cs.base, cs.limit, cs.type_, cs.db, cs.g, cs.s, cs.present),
            (0, 0xffff_ffff, 0xb, 1, 1, 1, 1)
        );
        assert_eq!(cs.l, 0, "PVH enters in 32-bit mode");
        let ds = kvm_segment_from_gdt(GDT[2], DATA_SELECTOR);
        assert_eq!((ds.type_, ds.limit, ds.unusable), (0x3, 0xffff_ffff, 0));
        let tr = kvm_segment_from_gdt(GDT[3], TSS_SELECTOR);
        assert_eq!((tr.type_, tr.limit, tr.s, tr.g), (0xb, 0x67, 0, 0));
        let null = kvm_segment_from_gdt(GDT[0], 0);
        assert_eq!(null.unusable, 1);
    }
}
