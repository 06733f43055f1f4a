//! Register state at the PVH entry point: 32-bit protected mode, paging
//! off, flat segments, EBX = start info (xenbits docs/misc/pvh.html).

use kvm_bindings::{kvm_fpu, kvm_regs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{kvm_segment_from_gdt, CODE_SELECTOR, DATA_SELECTOR, GDT, TSS_SELECTOR};
use super::X86Error;
use crate::boot::BootEntry;
use crate::memory::GDT_ADDRESS;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;
/// x87 control word after FINIT; MXCSR at reset.
const FPU_FCW: u16 = 0x37f;
const FPU_MXCSR: u32 = 0x1f80;

/// Writes the GDT the boot segment registers refer to.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), X86Error> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDRESS + (i * 8) as u64))
            .map_err(X86Error::WriteGdt)?;
    }
    Ok(())
}

/// The general-purpose registers at the entry point.
pub fn boot_regs(boot: &BootEntry) -> kvm_regs {
    kvm_regs {
        rip: boot.entry.0,
        rbx: boot.start_info.0,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// Sets the boot vCPU's registers for the PVH entry.
pub fn setup_boot_regs(vcpu: &VcpuFd, boot: &BootEntry) -> Result<(), X86Error> {
    let mut sregs = vcpu.get_sregs().map_err(X86Error::GetSregs)?;
    let code = kvm_segment_from_gdt(GDT[1], CODE_SELECTOR);
    let data = kvm_segment_from_gdt(GDT[2], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(GDT[3], TSS_SELECTOR);
    sregs.gdt.base = GDT_ADDRESS;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    // No IDT: any exception before the kernel installs one is a triple
    // fault, which we report.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(X86Error::SetSregs)?;
    vcpu.set_regs(&boot_regs(boot)).map_err(X86Error::SetRegs)
}

/// A clean x87/SSE state for every vCPU.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), X86Error> {
    let fpu = kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(X86Error::SetFpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn entry_registers_follow_pvh() {
        let regs = boot_regs(&BootEntry {
            entry: GuestAddress(0x100_0000),
            start_info: GuestAddress(0x6000),
        });
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0000, 0x6000, 2));
    }

    #[test]
    fn gdt_is_written_at_its_address() {
        let mem = create_guest_memory(64).unwrap();
        write_gdt(&mem).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(GDT_ADDRESS + 8)).unwrap();
        assert_eq!(code, GDT[1]);
    }
}
