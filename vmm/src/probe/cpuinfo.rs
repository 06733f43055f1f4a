//! Parsing of `/proc/cpuinfo`: only the facts the probe needs (vendor, model
//! and the hardware-virtualization flags).

use serde::Serialize;

/// The CPU flag that announces hardware virtualization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtFlag {
    /// Intel VT-x.
    Vmx,
    /// AMD-V.
    Svm,
}

impl VirtFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            VirtFlag::Vmx => "vmx",
            VirtFlag::Svm => "svm",
        }
    }

    /// The KVM module that drives this flag.
    pub fn kvm_module(self) -> &'static str {
        match self {
            VirtFlag::Vmx => "kvm_intel",
            VirtFlag::Svm => "kvm_amd",
        }
    }

    /// The name a firmware setup screen uses for it.
    pub fn marketing_name(self) -> &'static str {
        match self {
            VirtFlag::Vmx => "VT-x",
            VirtFlag::Svm => "AMD-V",
        }
    }
}

/// What `/proc/cpuinfo` says about the first CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// `vendor_id`, e.g. "GenuineIntel" or "AuthenticAMD".
    pub vendor: Option<String>,
    /// `model name`.
    pub model_name: Option<String>,
    /// `vmx` or `svm` when the flag is listed.
    pub virt_flag: Option<VirtFlag>,
    /// The `hypervisor` flag: this host is itself a virtual machine.
    pub hypervisor: bool,
}

/// Parses the text of `/proc/cpuinfo`. Only the first processor block is
/// read: every core of a host carries the same virtualization flags.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut seen_flags = false;
    for line in text.lines() {
        // A blank line ends a processor block; stop once the first one had flags.
        if line.trim().is_empty() {
            if seen_flags {
                break;
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "vendor_id" if info.vendor.is_none() => info.vendor = Some(value.to_owned()),
            "model name" if info.model_name.is_none() => info.model_name = Some(value.to_owned()),
            "flags" if !seen_flags => {
                seen_flags = true;
                for flag in value.split_whitespace() {
                    match flag {
                        "vmx" => info.virt_flag = Some(VirtFlag::Vmx),
                        "svm" => info.virt_flag = Some(VirtFlag::Svm),
                        "hypervisor" => info.hypervisor = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL_VMX: &str = include_str!("fixtures/cpuinfo-intel-vmx.txt");
    const AMD_SVM: &str = include_str!("fixtures/cpuinfo-amd-svm.txt");
    const THIS_HOST_PVM: &str = include_str!("fixtures/cpuinfo-intel-pvm-guest.txt");
    const NO_FLAGS: &str = include_str!("fixtures/cpuinfo-no-virt.txt");

    #[test]
    fn intel_bare_metal_has_vmx() {
        let info = parse_cpuinfo(INTEL_VMX);
        assert_eq!(info.virt_flag, Some(VirtFlag::Vmx));
        assert_eq!(info.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(
            info.model_name.as_deref(),
            Some("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz")
        );
        assert!(!info.hypervisor);
    }

    #[test]
    fn amd_has_svm() {
        let info = parse_cpuinfo(AMD_SVM);
        assert_eq!(info.virt_flag, Some(VirtFlag::Svm));
        assert_eq!(info.vendor.as_deref(), Some("AuthenticAMD"));
        assert!(!info.hypervisor);
    }

    #[test]
    fn pvm_guest_has_no_flag_but_is_a_vm() {
        let info = parse_cpuinfo(THIS_HOST_PVM);
        assert_eq!(info.virt_flag, None);
        assert!(info.hypervisor);
        assert_eq!(info.vendor.as_deref(), Some("GenuineIntel"));
    }

    #[test]
    fn cloud_vm_without_nested_has_no_flag() {
        let info = parse_cpuinfo(NO_FLAGS);
        assert_eq!(info.virt_flag, None);
        assert!(info.hypervisor);
        assert_eq!(info.vendor.as_deref(), Some("AuthenticAMD"));
    }

    #[test]
    fn flag_names_are_whole_words() {
        // "vmx" inside another flag name, or in the model name, is not the flag.
        let text =
            "vendor_id\t: GenuineIntel\nmodel name\t: vmx svm\nflags\t\t: fpu vmxx xsvm vnmi\n";
        let info = parse_cpuinfo(text);
        assert_eq!(info.virt_flag, None);
    }

    #[test]
    fn empty_or_garbage_text_gives_no_facts() {
        assert_eq!(parse_cpuinfo(""), CpuInfo::default());
        assert_eq!(
            parse_cpuinfo("\0\0 no colon here\n:::\n"),
            CpuInfo::default()
        );
    }

    #[test]
    fn only_first_processor_block_counts() {
        let text = "processor\t: 0\nflags\t\t: fpu\n\nprocessor\t: 1\nflags\t\t: fpu vmx\n";
        assert_eq!(parse_cpuinfo(text).virt_flag, None);
    }
}
