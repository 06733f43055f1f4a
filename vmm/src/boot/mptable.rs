//! The Intel MultiProcessor Specification 1.4 table: how a guest without
//! ACPI (ours) learns its CPUs, the IOAPIC and how ISA IRQs reach it.
//! Without it Linux boots one CPU and routes IRQs through the legacy PIC.
//!
//! Hand-written because it is a few dozen bytes of fixed layout and no
//! maintained crate builds one. Laid out at `MPTABLE_ADDRESS` (the last KiB
//! of base memory, which Linux scans and our memory map reserves):
//! floating pointer (16 bytes), then the configuration table header
//! (44 bytes) and its entries.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::{EBDA_START, HIGH_MEMORY_START, IOAPIC_ADDRESS, IOAPIC_PINS, LAPIC_ADDRESS};

/// Where the table goes: the start of the reserved EBDA area.
pub const MPTABLE_ADDRESS: u64 = EBDA_START;

const SPEC_REVISION: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const IOAPIC_ENABLED: u8 = 1;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity/trigger "conforms to the bus" (ISA: active high, edge).
const INT_FLAGS_BUS_DEFAULT: u16 = 0;
/// Family 6 signature and FPU|APIC features: Linux only logs these.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ISA_BUS_ID: u8 = 0;
/// All local APICs.
const ALL_LAPICS: u8 = 0xff;

#[derive(Debug, Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in an MP table (at most 254)")]
    TooManyCpus(u8),
    #[error("the MP table ({0} bytes) does not fit below 1 MiB")]
    TooLarge(usize),
    #[error("writing the MP table: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Little-endian byte writer for the packed MP structures.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The whole table, floating pointer first, for a table at `base`.
pub fn build(base: u64, cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Writer::default();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries
            .u8(ENTRY_PROCESSOR)
            .u8(cpu)
            .u8(LAPIC_VERSION)
            .u8(flags)
            .u32(CPU_SIGNATURE)
            .u32(CPU_FEATURES)
            .u32(0)
            .u32(0);
        count += 1;
    }
    entries.u8(ENTRY_BUS).u8(ISA_BUS_ID).bytes(b"ISA   ");
    entries
        .u8(ENTRY_IOAPIC)
        .u8(ioapic_id)
        .u8(IOAPIC_VERSION)
        .u8(IOAPIC_ENABLED)
        .u32(IOAPIC_ADDRESS as u32);
    count += 2;
    // ISA IRQ n → IOAPIC pin n, every one of them a normal interrupt,
    // IRQ 0 included: KVM's default GSI routing sends the in-kernel PIT
    // (GSI 0) to IOAPIC pin 0. The legacy PIC reaches the CPUs through
    // LINT0 (ExtINT, below), not through an IOAPIC pin. A table whose pin 0
    // is ExtINT only leaves Linux without an IOAPIC pin for the timer, and
    // on real KVM `setup_IO_APIC` then dereferences the missing pin's chip
    // data and panics (nested PVM hid this).
    for pin in 0..IOAPIC_PINS {
        entries
            .u8(ENTRY_IO_INTERRUPT)
            .u8(INT_TYPE_INT)
            .u16(INT_FLAGS_BUS_DEFAULT)
            .u8(ISA_BUS_ID)
            .u8(pin)
            .u8(ioapic_id)
            .u8(pin);
        count += 1;
    }
    // LINT0 = ExtINT, LINT1 = NMI on every CPU (matches `x86_64::lapic`).
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries
            .u8(ENTRY_LOCAL_INTERRUPT)
            .u8(kind)
            .u16(INT_FLAGS_BUS_DEFAULT)
            .u8(ISA_BUS_ID)
            .u8(0)
            .u8(ALL_LAPICS)
            .u8(lint);
        count += 1;
    }

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_len = HEADER_LEN + entries.0.len();
    let mut header = Writer::default();
    header
        .bytes(b"PCMP")
        .u16(table_len as u16)
        .u8(SPEC_REVISION)
        .u8(0) // checksum, below
        .bytes(b"HUSK    ")
        .bytes(b"husk-vmm    ")
        .u32(0) // OEM table pointer
        .u16(0) // OEM table size
        .u16(count)
        .u32(LAPIC_ADDRESS as u32)
        .u16(0) // extended table length
        .u8(0) // extended table checksum
        .u8(0);
    let mut table = header.0;
    table.extend_from_slice(&entries.0);
    table[7] = checksum(&table);

    let mut floating = Writer::default();
    floating
        .bytes(b"_MP_")
        .u32((base + FLOATING_LEN as u64) as u32)
        .u8(1) // length in 16-byte units
        .u8(SPEC_REVISION)
        .u8(0) // checksum, below
        .bytes(&[0; 5]); // feature bytes: a configuration table follows, no IMCR
    let mut out = floating.0;
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    if base + out.len() as u64 > HIGH_MEMORY_START {
        return Err(MptableError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Writes the table for `cpus` vCPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let table = build(MPTABLE_ADDRESS, cpus)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_ADDRESS))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_points_at_a_valid_table() {
        let t = build(MPTABLE_ADDRESS, 2).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
        let physptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(physptr, MPTABLE_ADDRESS + 16);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0, "configuration table checksum");
    }

    #[test]
    fn entries_describe_cpus_ioapic_and_irqs() {
        let cpus = 3;
        let t = build(MPTABLE_ADDRESS, cpus).unwrap();
        let table = &t[16..];
        let count = u16::from_le_bytes([table[34], table[35]]) as usize;
        assert_eq!(count, 3 + 1 + 1 + IOAPIC_PINS as usize + 2);
        let lapic = u32::from_le_bytes(table[36..40].try_into().unwrap());
        assert_eq!(lapic as u64, LAPIC_ADDRESS);

        // Walk the entries as Linux does.
        let mut at = 44;
        let mut cpu_ids = Vec::new();
        let mut bsp = Vec::new();
        let mut irq_pins = Vec::new();
        let mut ioapic = None;
        for _ in 0..count {
            match table[at] {
                ENTRY_PROCESSOR => {
                    cpu_ids.push(table[at + 1]);
                    if table[at + 3] & CPU_BOOTSTRAP != 0 {
                        bsp.push(table[at + 1]);
                    }
                    at += 20;
                }
                ENTRY_IOAPIC => {
                    ioapic = Some((
                        table[at + 1],
                        u32::from_le_bytes(table[at + 4..at + 8].try_into().unwrap()),
                    ));
                    at += 8;
                }
                ENTRY_IO_INTERRUPT => {
                    assert_eq!(table[at + 5], table[at + 7], "ISA IRQ n goes to pin n");
                    assert_eq!(
                        table[at + 1],
                        INT_TYPE_INT,
                        "IRQ {} must be a normal interrupt (the timer needs pin 0)",
                        table[at + 5]
                    );
                    irq_pins.push(table[at + 7]);
                    at += 8;
                }
                ENTRY_BUS | ENTRY_LOCAL_INTERRUPT => at += 8,
                other => panic!("unexpected entry type {other}"),
            }
        }
        assert_eq!(at, table.len());
        assert_eq!(cpu_ids, vec![0, 1, 2]);
        assert_eq!(bsp, vec![0]);
        assert_eq!(ioapic, Some((cpus, IOAPIC_ADDRESS as u32)));
        assert_eq!(irq_pins, (0..IOAPIC_PINS).collect::<Vec<_>>());
    }

    #[test]
    fn cpu_count_is_bounded() {
        assert!(matches!(
            build(MPTABLE_ADDRESS, 0),
            Err(MptableError::TooManyCpus(0))
        ));
        assert!(build(MPTABLE_ADDRESS, 255).is_err());
        assert!(build(MPTABLE_ADDRESS, 64).is_ok());
    }
}
