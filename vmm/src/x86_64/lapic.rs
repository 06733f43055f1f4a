//! Local APIC wiring: LINT0 delivers the legacy PIC's interrupts (ExtINT)
//! and LINT1 NMIs, as on a PC, so the guest gets the timer and device IRQs
//! through the in-kernel PIC before it switches to the IOAPIC.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use super::X86Error;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

/// Sets the delivery mode (bits 8..11) of an LVT entry, keeping the rest.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

pub fn configure_lints(lapic: &mut kvm_lapic_state) {
    let lint0 = get_reg(lapic, APIC_LVT_LINT0);
    set_reg(
        lapic,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = get_reg(lapic, APIC_LVT_LINT1);
    set_reg(
        lapic,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
}

pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), X86Error> {
    let mut lapic = vcpu.get_lapic().map_err(X86Error::Lapic)?;
    configure_lints(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(X86Error::Lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lints_get_extint_and_nmi_keeping_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        // Masked (bit 16) with a vector: both must survive.
        set_reg(&mut lapic, APIC_LVT_LINT0, 0x1_0020);
        set_reg(&mut lapic, APIC_LVT_LINT1, 0x1_0700);
        configure_lints(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT_LINT0), 0x1_0720);
        assert_eq!(get_reg(&lapic, APIC_LVT_LINT1), 0x1_0400);
    }
}
