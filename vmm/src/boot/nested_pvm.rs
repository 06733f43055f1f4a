//! The one place that knows which kernel parameters a guest needs on a
//! nested-PVM host (KVM from the paravirtual `kvm_pvm` module; see
//! ../shared/notes/platform-kvm.md).
//!
//! PVM runs the guest kernel by emulating its kernel-mode code, and its
//! emulator stops with KVM_EXIT_INTERNAL_ERROR on some instructions. The
//! guest sees the host's CPUID whatever KVM_SET_CPUID2 says, so hiding the
//! features in CPUID does not help: the guest kernel itself has to be told
//! not to use them.

/// Kernel parameters appended on a nested-PVM host, each with why.
pub const NESTED_PVM_KERNEL_PARAMS: &[&str] = &[
    // xsave/xrstor fail to emulate: keep the kernel on fxsave.
    "noxsave",
    // Feature numbers (word*32+bit, arch/x86/include/asm/cpufeatures.h of
    // the 6.1 guest kernel) for: cx16 (141), pcid (145), movbe (150),
    // popcnt (151), xsave (154), rdrand (158), fsgsbase (288), hle (292),
    // smep (295), erms (297), invpcid (298), rtm (299), rdseed (306),
    // smap (308), clflushopt (311), clwb (312), xsaveopt/xsavec/xsaves
    // (320, 321, 323), umip (514), pku (515), ospke (516), waitpkg (517),
    // la57 (528), rdpid (534), movdir64b (540), fsrm (580), serialize (590).
    // Each either fails to emulate (cmpxchg16b was the first seen) or
    // enables a code path that does.
    "clearcpuid=141,145,150,151,154,158,288,292,295,297,298,299,306,308,311,312,320,321,323,514,515,516,517,528,534,540,580,590",
    // Our guest kernel's patch (guest-kernel-config/patches/
    // 0001-x86-alternatives-noint3selftest.patch) makes the int3 self-test
    // in alternative_instructions() skippable: PVM cannot emulate the
    // kernel-mode int3 it executes.
    INT3_SELFTEST_SKIP_PARAM,
    // Without it the TSC watchdog marks the clock unstable soon after boot;
    // the kernel thread that then exits runs `fwait`, which PVM cannot
    // emulate (crashed 4 runs of 4, guest-kernel-config/README.md).
    "tsc=nowatchdog",
    // Secondary vCPU bring-up (INIT/SIPI into the real-mode trampoline)
    // never completes under PVM: the boot hangs at "Booting SMP
    // configuration" (QEMU microvm -smp 2 hangs the same way). Extra vCPUs
    // stay parked in the in-kernel LAPIC.
    "maxcpus=1",
];

/// The parameter our guest kernel patch reads to skip the int3 self-test.
pub const INT3_SELFTEST_SKIP_PARAM: &str = "noint3selftest";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_have_no_spaces_and_hide_xsave() {
        for p in NESTED_PVM_KERNEL_PARAMS {
            assert!(!p.contains(' '), "{p}");
        }
        assert!(NESTED_PVM_KERNEL_PARAMS.contains(&"noxsave"));
        assert!(NESTED_PVM_KERNEL_PARAMS.contains(&"tsc=nowatchdog"));
        let clear = NESTED_PVM_KERNEL_PARAMS
            .iter()
            .find(|p| p.starts_with("clearcpuid="))
            .unwrap();
        // cx16 (word 4 bit 13) must be hidden: it was the first emulation failure.
        assert!(clear.split(['=', ',']).any(|n| n == "141"));
    }
}
