//! What this host can do for husk: hardware virtualization flags, /dev/kvm,
//! the KVM API version and capabilities, and whether KVM is a paravirtual
//! nested hypervisor (PVM). Used by the VMM (to adapt the guest command line)
//! and by `husk check`.
//!
//! `facts` observes (the only I/O), `verdict` judges (pure), and
//! `HostReport` is what both print and serialise.

mod cpuinfo;
mod facts;
mod verdict;

use serde::Serialize;

pub use cpuinfo::{parse_cpuinfo, CpuInfo, VirtFlag};
pub use facts::{
    CapabilityCheck, DeviceNode, KvmDeviceAccess, KvmModules, RawProbe, EXPECTED_KVM_API_VERSION,
    KVM_MODULES, REQUIRED_CAPABILITIES,
};
pub use verdict::{is_nested_pvm, verdict, Verdict};

/// The probe's findings, in the shape `husk check --json` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostReport {
    /// "vmx", "svm" or null, from /proc/cpuinfo.
    pub cpu_virt_flag: Option<VirtFlag>,
    /// /dev/kvm could be opened read-write.
    pub kvm_device: bool,
    /// Why /dev/kvm could not be opened: "missing", "permission denied" or
    /// the OS error; null when it opened.
    pub kvm_device_error: Option<String>,
    /// KVM_GET_API_VERSION (12 on every supported kernel).
    pub kvm_api_version: Option<i32>,
    /// Required capabilities KVM does not report (empty when /dev/kvm did not open).
    pub missing_capabilities: Vec<String>,
    /// KVM answers but comes from a paravirtual nested hypervisor (kvm_pvm).
    pub nested_pvm: bool,
    pub verdict: Verdict,
    /// Sentences, each with a remedy; empty when ready.
    pub reasons: Vec<String>,
    /// `vendor_id` from /proc/cpuinfo.
    pub cpu_vendor: Option<String>,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// The CPU's `hypervisor` flag: this host is itself a VM.
    pub running_in_vm: bool,
    /// Loaded modules among kvm, kvm_intel, kvm_amd, kvm_pvm.
    pub kvm_modules: Vec<String>,
    /// kvm_intel/kvm_amd `nested` parameter, when the module is loaded.
    pub kvm_nested_param: Option<bool>,
    /// kvm_pvm `pvm_native` parameter, when the module is loaded.
    pub pvm_native: Option<bool>,
    /// KVM_CREATE_VM failed with this error (only tried once /dev/kvm opened).
    pub vm_create_error: Option<String>,
}

impl HostReport {
    /// Builds the report from observed facts (pure).
    pub fn from_raw(raw: &RawProbe) -> Self {
        let (verdict, reasons) = verdict(raw);
        let cpu = raw.cpu.as_ref();
        let kvm_device_error = match &raw.kvm_device {
            KvmDeviceAccess::Opened => None,
            KvmDeviceAccess::Missing => Some("missing".to_owned()),
            KvmDeviceAccess::PermissionDenied => Some("permission denied".to_owned()),
            KvmDeviceAccess::Failed { message, .. } => Some(message.clone()),
        };
        HostReport {
            cpu_virt_flag: cpu.and_then(|c| c.virt_flag),
            kvm_device: raw.kvm_device == KvmDeviceAccess::Opened,
            kvm_device_error,
            kvm_api_version: raw.kvm_api_version,
            missing_capabilities: raw
                .capabilities
                .iter()
                .filter(|c| !c.present)
                .map(|c| c.name.to_owned())
                .collect(),
            nested_pvm: is_nested_pvm(raw),
            verdict,
            reasons,
            cpu_vendor: cpu.and_then(|c| c.vendor.clone()),
            cpu_model: cpu.and_then(|c| c.model_name.clone()),
            running_in_vm: cpu.is_some_and(|c| c.hypervisor),
            kvm_modules: raw.modules.loaded.clone(),
            kvm_nested_param: raw.modules.nested,
            pvm_native: raw.modules.pvm_native,
            vm_create_error: raw.vm_create_error.clone(),
        }
    }
}

/// Probes this host (reads /proc, /sys, opens /dev/kvm and creates a
/// throw-away VM) and judges it.
pub fn probe_host() -> HostReport {
    HostReport::from_raw(&RawProbe::collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_carries_the_raw_facts_and_the_verdict() {
        let raw = RawProbe {
            cpu: Some(parse_cpuinfo(include_str!(
                "probe/fixtures/cpuinfo-intel-pvm-guest.txt"
            ))),
            kvm_device: KvmDeviceAccess::Opened,
            kvm_node: None,
            kvm_api_version: Some(12),
            capabilities: vec![
                CapabilityCheck {
                    name: "KVM_CAP_IRQCHIP",
                    present: true,
                },
                CapabilityCheck {
                    name: "KVM_CAP_PIT2",
                    present: false,
                },
            ],
            vm_create_error: None,
            modules: KvmModules {
                loaded: vec!["kvm".into(), "kvm_pvm".into()],
                nested: None,
                pvm_native: Some(true),
            },
        };
        let report = HostReport::from_raw(&raw);
        assert_eq!(report.cpu_virt_flag, None);
        assert!(report.kvm_device);
        assert_eq!(report.kvm_device_error, None);
        assert_eq!(report.missing_capabilities, vec!["KVM_CAP_PIT2".to_owned()]);
        assert!(report.nested_pvm);
        // A missing capability outranks nested PVM.
        assert_eq!(report.verdict, Verdict::Unavailable);
        assert!(report.running_in_vm);
        assert_eq!(report.pvm_native, Some(true));

        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "cpu_virt_flag",
            "kvm_device",
            "kvm_api_version",
            "missing_capabilities",
            "nested_pvm",
            "verdict",
            "reasons",
        ] {
            assert!(json.get(field).is_some(), "JSON lacks {field}: {json}");
        }
        assert_eq!(json["cpu_virt_flag"], serde_json::Value::Null);
        assert_eq!(json["verdict"], "unavailable");
    }

    #[test]
    fn denied_device_reports_its_error_kind() {
        let raw = RawProbe {
            cpu: Some(parse_cpuinfo(include_str!(
                "probe/fixtures/cpuinfo-intel-vmx.txt"
            ))),
            kvm_device: KvmDeviceAccess::PermissionDenied,
            kvm_node: None,
            kvm_api_version: None,
            capabilities: Vec::new(),
            vm_create_error: None,
            modules: KvmModules::default(),
        };
        let report = HostReport::from_raw(&raw);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["cpu_virt_flag"], "vmx");
        assert_eq!(json["kvm_device"], false);
        assert_eq!(json["kvm_device_error"], "permission denied");
        assert_eq!(json["kvm_api_version"], serde_json::Value::Null);
        assert_eq!(json["nested_pvm"], false);
        assert_eq!(json["verdict"], "unavailable");
    }
}
