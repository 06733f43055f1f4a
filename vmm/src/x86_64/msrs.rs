//! Model-specific registers every vCPU starts with.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use super::X86Error;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE.FAST_STRING: what firmware leaves set.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: all RAM is cacheable without
/// the guest having to program variable ranges.
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRBACK: u64 = 6;

/// The boot MSR values: syscall MSRs cleared, TSC at 0, fast strings,
/// MTRRs enabled with write-back default.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), X86Error> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| X86Error::MsrTable)?;
    let written = vcpu.set_msrs(&msrs).map_err(X86Error::SetMsrs)?;
    // KVM stops at the first MSR it refuses; the rest keep reset values,
    // which a guest copes with, so this is a warning, not an error.
    if written < entries.len() {
        tracing::warn!(
            msr = format_args!("{:#x}", entries[written].index),
            "KVM refused an MSR; it keeps its reset value"
        );
        for entry in &entries[written + 1..] {
            if let Ok(one) = Msrs::from_entries(std::slice::from_ref(entry)) {
                let _ = vcpu.set_msrs(&one);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_mtrrs_write_back() {
        let entries = boot_msr_entries();
        let mtrr = entries
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data, 0x806);
        let misc = entries
            .iter()
            .find(|e| e.index == MSR_IA32_MISC_ENABLE)
            .unwrap();
        assert_eq!(misc.data, 1);
        assert!(Msrs::from_entries(&entries).is_ok());
    }
}
