//! x86_64 vCPU state: CPUID (`cpuid`), the PVH entry registers (`regs`,
//! `gdt`), MSRs (`msrs`) and the local APIC (`lapic`).

pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod msrs;
pub mod regs;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum X86Error {
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error("CPUID: {0}")]
    Cpuid(#[from] cpuid::CpuidError),
    #[error("KVM_SET_CPUID2: {0}")]
    SetCpuid(kvm_ioctls::Error),
    #[error("writing the GDT: {0}")]
    WriteGdt(vm_memory::GuestMemoryError),
    #[error("KVM_GET_SREGS: {0}")]
    GetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_SREGS: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_REGS: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("KVM_SET_FPU: {0}")]
    SetFpu(kvm_ioctls::Error),
    #[error("building the MSR table")]
    MsrTable,
    #[error("KVM_SET_MSRS: {0}")]
    SetMsrs(kvm_ioctls::Error),
    #[error("local APIC: {0}")]
    Lapic(kvm_ioctls::Error),
}
