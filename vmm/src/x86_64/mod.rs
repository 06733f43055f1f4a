//! x86_64 CPU state: CPUID, long-mode registers, page tables, GDT, MSRs.
