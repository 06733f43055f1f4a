//! The CPUID table each vCPU sees: KVM_GET_SUPPORTED_CPUID (already
//! limited to what KVM can virtualise) with per-vCPU identity and topology
//! filled in and a few features removed that a microVM guest must not use.
//!
//! Topology model: one socket, one core per vCPU, one thread per core; the
//! APIC ID is the vCPU index.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use raw_cpuid::{CpuId as RawCpuId, CpuIdResult};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CpuidError {
    #[error("KVM's CPUID table is full; cannot add topology leaf {leaf:#x}.{subleaf}")]
    TableFull { leaf: u32, subleaf: u32 },
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PERF_MONITORING: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_VMX: u32 = 1 << 5;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const EXT_ECX_SVM: u32 = 1 << 2;

/// Leaf 0xb/0x1f level types.
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

/// A raw-cpuid reader over a KVM table, so the table can be decoded with
/// raw-cpuid's typed accessors (vendor here, every field in the tests).
pub fn reader(cpuid: &CpuId) -> RawCpuId<impl Fn(u32, u32) -> CpuIdResult + Clone + '_> {
    RawCpuId::with_cpuid_fn(move |leaf, subleaf| {
        lookup(cpuid.as_slice(), leaf, subleaf)
            .map(|e| CpuIdResult {
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
            })
            .unwrap_or(CpuIdResult {
                eax: 0,
                ebx: 0,
                ecx: 0,
                edx: 0,
            })
    })
}

fn lookup(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| {
        e.function == leaf && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == subleaf)
    })
}

fn vendor(cpuid: &CpuId) -> Vendor {
    match reader(cpuid).get_vendor_info().as_ref().map(|v| v.as_str()) {
        Some("GenuineIntel") => Vendor::Intel,
        Some("AuthenticAMD") | Some("HygonGenuine") => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `count` items (ceil(log2(count))).
fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Fills `cpuid` (a copy of KVM's supported table) in for vCPU `vcpu_id`
/// of `vcpu_count`.
pub fn normalize(cpuid: &mut CpuId, vcpu_id: u8, vcpu_count: u8) -> Result<(), CpuidError> {
    let vendor = vendor(cpuid);
    let apic_id = u32::from(vcpu_id);
    let count = u32::from(vcpu_count.max(1));
    let core_bits = bits_for(count);

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, EBX[23:16] addressable logical
                // processors in the package.
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((1 << core_bits).min(255) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                // No nested virtualisation inside our guests.
                entry.ecx &= !ECX_VMX;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS if vendor == Vendor::Intel => {
                let cache_level = (entry.eax >> 5) & 0x7;
                // EAX[31:26] cores per package - 1; EAX[25:14] logical
                // processors sharing this cache - 1 (only L3 is shared).
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                entry.eax =
                    (entry.eax & 0x3fff) | ((count - 1).min(63) << 26) | (sharing.min(0xfff) << 14);
            }
            // No PMU: guests would program counters the host may not give.
            LEAF_PERF_MONITORING => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                fill_topology_level(entry, apic_id, count, core_bits)
            }
            LEAF_EXT_FEATURES => entry.ecx &= !EXT_ECX_SVM,
            LEAF_AMD_SIZE_IDS if vendor == Vendor::Amd => {
                // ECX[15:12] APIC ID bits for cores, ECX[7:0] cores - 1.
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | (count - 1);
            }
            LEAF_AMD_EXT_APIC_ID if vendor == Vendor::Amd => {
                entry.eax = apic_id;
                // EBX[15:8] threads per core - 1 = 0, EBX[7:0] core ID.
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
            }
            _ => {}
        }
    }

    // Guests that see leaf 0xb in range expect at least its SMT and core
    // levels; KVM's table may hold fewer subleaves than that.
    let max_basic_leaf = lookup(cpuid.as_slice(), 0, 0).map_or(0, |e| e.eax);
    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_V2_EXT_TOPOLOGY] {
        let present = cpuid.as_slice().iter().any(|e| e.function == leaf);
        if max_basic_leaf < leaf || !present {
            continue;
        }
        for subleaf in 0..=2 {
            if !cpuid
                .as_slice()
                .iter()
                .any(|e| e.function == leaf && e.index == subleaf)
            {
                let mut entry = kvm_cpuid_entry2 {
                    function: leaf,
                    index: subleaf,
                    flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                    ..Default::default()
                };
                fill_topology_level(&mut entry, apic_id, count, core_bits);
                cpuid
                    .push(entry)
                    .map_err(|_| CpuidError::TableFull { leaf, subleaf })?;
            }
        }
    }
    Ok(())
}

/// One level of leaf 0xb / 0x1f: level 0 is SMT (one thread), level 1 is
/// the core level holding all vCPUs, anything above is invalid.
fn fill_topology_level(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_bits: u32) {
    let level = entry.index;
    let (shift, logical, level_type) = match level {
        0 => (0, 1, LEVEL_TYPE_SMT),
        1 => (core_bits, count, LEVEL_TYPE_CORE),
        _ => (0, 0, LEVEL_TYPE_INVALID),
    };
    entry.eax = shift;
    entry.ebx = logical;
    entry.ecx = (level_type << 8) | (level & 0xff);
    entry.edx = apic_id;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        let flags = if matches!(function, 0x4 | 0xb | 0x1f) {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        };
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// A synthetic Intel table shaped like KVM's answer: max leaf 0xb with
    /// only subleaf 0 of leaf 0xb, a PMU leaf, VMX advertised.
    fn intel_table() -> CpuId {
        // "GenuineIntel" = EBX "Genu", EDX "ineI", ECX "ntel".
        let entries = [
            entry(0, 0, [0xb, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(1, 0, [0x000906ea, 0x0000_0800, ECX_VMX | 1, 1 << 0]),
            // L1d (level 1, type 1) and L3 (level 3, type 3) cache leaves.
            entry(4, 0, [(1 << 5) | 1, 0, 0, 0]),
            entry(4, 1, [(3 << 5) | 3, 0, 0, 0]),
            entry(0xa, 0, [0x0704_3004, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, EXT_ECX_SVM | 1, 0]),
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn hypervisor_bit_set_and_nested_virt_hidden() {
        let mut cpuid = intel_table();
        normalize(&mut cpuid, 0, 1).unwrap();
        let raw = reader(&cpuid);
        let features = raw.get_feature_info().unwrap();
        assert!(features.has_hypervisor());
        assert!(!features.has_vmx());
        assert!(features.has_sse3(), "unrelated bits must survive");
        assert!(!features.has_htt());
        let ext = raw
            .get_extended_processor_and_feature_identifiers()
            .unwrap();
        assert!(!ext.has_svm());
        assert!(ext.has_lahf_sahf(), "unrelated bits must survive");
    }

    #[test]
    fn apic_id_and_logical_count_per_vcpu() {
        for (id, count, expected_max) in [(0u8, 1u8, 1u8), (2, 3, 4), (5, 8, 8)] {
            let mut cpuid = intel_table();
            normalize(&mut cpuid, id, count).unwrap();
            let features = reader(&cpuid).get_feature_info().unwrap();
            assert_eq!(features.initial_local_apic_id(), id);
            assert_eq!(features.max_logical_processor_ids(), expected_max);
            assert_eq!(features.has_htt(), count > 1);
            // The CLFLUSH line size in EBX[15:8] is untouched.
            assert_eq!(features.cflush_cache_line_size(), 8);
        }
    }

    #[test]
    fn topology_leaf_describes_one_thread_per_core() {
        let mut cpuid = intel_table();
        normalize(&mut cpuid, 3, 4).unwrap();
        let levels: Vec<_> = reader(&cpuid)
            .get_extended_topology_info()
            .unwrap()
            .collect();
        assert_eq!(
            levels.len(),
            2,
            "SMT and core levels, then the invalid terminator"
        );
        assert_eq!(levels[0].level_type(), raw_cpuid::TopologyType::SMT);
        assert_eq!(
            (
                levels[0].processors(),
                levels[0].shift_right_for_next_apic_id()
            ),
            (1, 0)
        );
        assert_eq!(levels[1].level_type(), raw_cpuid::TopologyType::Core);
        assert_eq!(
            (
                levels[1].processors(),
                levels[1].shift_right_for_next_apic_id()
            ),
            (4, 2)
        );
        assert!(levels.iter().all(|l| l.x2apic_id() == 3));
    }

    #[test]
    fn cache_leaf_shares_only_l3() {
        let mut cpuid = intel_table();
        normalize(&mut cpuid, 0, 4).unwrap();
        let caches: Vec<_> = reader(&cpuid).get_cache_parameters().unwrap().collect();
        assert_eq!(caches.len(), 2);
        assert_eq!(caches[0].max_cores_for_package(), 4);
        assert_eq!(caches[0].max_cores_for_cache(), 1);
        assert_eq!(caches[1].level(), 3);
        assert_eq!(caches[1].max_cores_for_cache(), 4);
    }

    #[test]
    fn pmu_is_hidden() {
        let mut cpuid = intel_table();
        normalize(&mut cpuid, 0, 1).unwrap();
        let pmu = lookup(cpuid.as_slice(), 0xa, 0).unwrap();
        assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
    }

    #[test]
    fn amd_extended_apic_id() {
        // "AuthenticAMD" = EBX "Auth", EDX "enti", ECX "cAMD".
        let entries = [
            entry(0, 0, [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(1, 0, [0, 0x0000_0800, 0, 0]),
            entry(0x8000_0000, 0, [0x8000_001e, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7007, 0]),
            entry(0x8000_001e, 0, [9, 0x0100, 0, 0]),
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        normalize(&mut cpuid, 2, 3).unwrap();
        let size = lookup(cpuid.as_slice(), 0x8000_0008, 0).unwrap();
        assert_eq!(size.ecx & 0xff, 2, "NC = cores - 1");
        assert_eq!((size.ecx >> 12) & 0xf, 2, "APIC ID core bits");
        assert_eq!(size.ecx & 0x0f00, 0x7007 & 0x0f00, "other bits kept");
        let ext = lookup(cpuid.as_slice(), 0x8000_001e, 0).unwrap();
        assert_eq!((ext.eax, ext.ebx), (2, 2));
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(bits_for), [0, 1, 2, 2, 3, 3, 4]);
    }
}
