//! The judgement: from observed facts to a verdict and the sentences that
//! tell a person what to do. Pure, so every kind of host can be tested.

use serde::Serialize;

use super::facts::{KvmDeviceAccess, RawProbe, EXPECTED_KVM_API_VERSION};

/// Whether this host can run husk microVMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Hardware virtualization and a complete KVM: husk-vmm runs at full speed.
    Ready,
    /// KVM answers but is a paravirtual nested hypervisor (PVM): husk falls
    /// back to QEMU's software emulation.
    KvmLimited,
    /// No usable KVM.
    Unavailable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ready => "ready",
            Verdict::KvmLimited => "kvm-limited",
            Verdict::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// KVM answers, yet it is not hardware virtualization: either the `kvm_pvm`
/// module provides it, or the CPU shows no vmx/svm flag while /dev/kvm works.
pub fn is_nested_pvm(raw: &RawProbe) -> bool {
    if raw.kvm_device != KvmDeviceAccess::Opened {
        return false;
    }
    let no_cpu_flag = raw.cpu.as_ref().is_some_and(|cpu| cpu.virt_flag.is_none());
    raw.modules.is_loaded("kvm_pvm") || no_cpu_flag
}

/// Judges the facts. Reasons are full sentences, each naming its remedy; a
/// ready host has none.
pub fn verdict(raw: &RawProbe) -> (Verdict, Vec<String>) {
    let mut reasons = Vec::new();
    match &raw.kvm_device {
        KvmDeviceAccess::Opened => {}
        KvmDeviceAccess::Missing => {
            reasons.extend(device_missing_reasons(raw));
            return (Verdict::Unavailable, reasons);
        }
        KvmDeviceAccess::PermissionDenied => {
            reasons.push(permission_reason(raw));
            return (Verdict::Unavailable, reasons);
        }
        KvmDeviceAccess::Failed { message, .. } => {
            reasons.push(format!(
                "/dev/kvm exists but opening it failed ({message}): check `dmesg` for KVM \
                 errors and reload the module (`modprobe -r {m} && modprobe {m}`).",
                m = expected_vendor_module(raw)
            ));
            return (Verdict::Unavailable, reasons);
        }
    }

    match raw.kvm_api_version {
        Some(EXPECTED_KVM_API_VERSION) => {}
        Some(other) => reasons.push(format!(
            "KVM reports API version {other} but husk needs version \
             {EXPECTED_KVM_API_VERSION}: run a mainline Linux kernel's KVM."
        )),
        None => reasons.push(
            "KVM did not report its API version: check `dmesg` for KVM errors and reload the \
             KVM modules."
                .to_owned(),
        ),
    }
    let missing: Vec<&str> = raw
        .capabilities
        .iter()
        .filter(|c| !c.present)
        .map(|c| c.name)
        .collect();
    if !missing.is_empty() {
        reasons.push(format!(
            "KVM lacks capabilities husk-vmm needs ({}): upgrade the host kernel \
             (Linux 5.4 or later provides all of them).",
            missing.join(", ")
        ));
    }
    if let Some(error) = &raw.vm_create_error {
        reasons.push(format!(
            "/dev/kvm opened but KVM could not create a VM ({error}): another hypervisor \
             (VirtualBox, VMware) may be holding VT-x/AMD-V; stop it, and check `dmesg`."
        ));
    }
    if !reasons.is_empty() {
        return (Verdict::Unavailable, reasons);
    }

    if is_nested_pvm(raw) {
        return (Verdict::KvmLimited, nested_pvm_reasons(raw));
    }
    (Verdict::Ready, reasons)
}

/// kvm_intel or kvm_amd, from the CPU flag or, lacking one, the vendor.
fn expected_vendor_module(raw: &RawProbe) -> &'static str {
    let cpu = raw.cpu.as_ref();
    if let Some(flag) = cpu.and_then(|c| c.virt_flag) {
        return flag.kvm_module();
    }
    match cpu.and_then(|c| c.vendor.as_deref()) {
        Some("AuthenticAMD") | Some("HygonGenuine") => "kvm_amd",
        _ => "kvm_intel",
    }
}

fn device_missing_reasons(raw: &RawProbe) -> Vec<String> {
    let cpu = raw.cpu.as_ref();
    let in_vm = cpu.is_some_and(|c| c.hypervisor);
    match cpu.and_then(|c| c.virt_flag) {
        Some(flag) if raw.modules.is_loaded(flag.kvm_module()) => vec![format!(
            "{} is loaded but /dev/kvm does not exist: create the node \
             (`mknod /dev/kvm c 10 232`, group kvm, mode 0660) or check that udev is running.",
            flag.kvm_module()
        )],
        Some(flag) => vec![format!(
            "The CPU supports {} but KVM is not loaded, so /dev/kvm does not exist: load it \
             with `modprobe {}` (list it in /etc/modules-load.d/ to keep it after a reboot); \
             if modprobe reports it disabled by the BIOS, enable {} in the firmware setup.",
            flag.marketing_name(),
            flag.kvm_module(),
            flag.marketing_name()
        )],
        None if in_vm => vec![format!(
            "This host is a virtual machine whose CPU shows neither vmx nor svm, and /dev/kvm \
             does not exist: enable nested virtualization on the outer hypervisor (e.g. \
             `options {m} nested=1` on the outer host and a CPU model that passes vmx/svm \
             through), then `modprobe {m}` here.",
            m = expected_vendor_module(raw)
        )],
        None if cpu.is_none() => vec![
            "/proc/cpuinfo could not be read and /dev/kvm does not exist: mount /proc, and load \
             kvm_intel or kvm_amd (`modprobe kvm_intel`)."
                .to_owned(),
        ],
        None => vec![format!(
            "The CPU shows neither vmx nor svm and /dev/kvm does not exist: enable VT-x/AMD-V \
             (\"Intel Virtualization Technology\" or \"SVM Mode\") in the firmware setup, then \
             `modprobe {}`.",
            expected_vendor_module(raw)
        )],
    }
}

fn permission_reason(raw: &RawProbe) -> String {
    let ownership = match &raw.kvm_node {
        Some(node) => {
            let group = node
                .group_name
                .clone()
                .unwrap_or_else(|| node.gid.to_string());
            format!(" (mode {:04o}, group {group})", node.mode & 0o7777)
        }
        None => String::new(),
    };
    let group = raw
        .kvm_node
        .as_ref()
        .and_then(|n| n.group_name.clone())
        .filter(|g| g != "root")
        .unwrap_or_else(|| "kvm".to_owned());
    format!(
        "/dev/kvm exists but this user cannot open it read-write{ownership}: add the user to \
         the {group} group (`usermod -aG {group} $USER`, then log in again; make sure the \
         node is group {group} with mode 0660) or grant access with \
         `setfacl -m u:$USER:rw /dev/kvm`."
    )
}

fn nested_pvm_reasons(raw: &RawProbe) -> Vec<String> {
    let source = if raw.modules.is_loaded("kvm_pvm") {
        let native = match raw.modules.pvm_native {
            Some(true) => ", pvm_native=Y",
            Some(false) => ", pvm_native=N",
            None => "",
        };
        format!(
            "KVM here is provided by kvm_pvm{native}, a paravirtual nested hypervisor, not by \
             VT-x/AMD-V."
        )
    } else {
        "The CPU shows neither vmx nor svm yet /dev/kvm answers: KVM here is a paravirtual or \
         emulating nested hypervisor, not VT-x/AMD-V."
            .to_owned()
    };
    vec![
        source,
        "Under it Linux guests boot only slowly (about a minute, with CPU features hidden) and \
         guest userspace cannot run, so husk runs containers with the QEMU TCG (software \
         emulation) backend instead of husk-vmm: install qemu-system-x86 if it is missing."
            .to_owned(),
        "For full speed, run husk on a host with VT-x/AMD-V: bare metal with virtualization \
         enabled in the firmware, or a VM whose hypervisor has nested virtualization enabled \
         (`kvm_intel nested=1` or `kvm_amd nested=1` on the outer host) and passes vmx/svm to \
         this VM's CPU."
            .to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::cpuinfo::{parse_cpuinfo, CpuInfo};
    use crate::probe::facts::{CapabilityCheck, DeviceNode, KvmModules, REQUIRED_CAPABILITIES};

    fn cpu(fixture: &str) -> Option<CpuInfo> {
        Some(parse_cpuinfo(fixture))
    }
    const INTEL_VMX: &str = include_str!("fixtures/cpuinfo-intel-vmx.txt");
    const AMD_SVM: &str = include_str!("fixtures/cpuinfo-amd-svm.txt");
    const THIS_HOST_PVM: &str = include_str!("fixtures/cpuinfo-intel-pvm-guest.txt");
    const NO_FLAGS_VM: &str = include_str!("fixtures/cpuinfo-no-virt.txt");

    fn all_caps() -> Vec<CapabilityCheck> {
        REQUIRED_CAPABILITIES
            .iter()
            .map(|(_, name)| CapabilityCheck {
                name,
                present: true,
            })
            .collect()
    }

    fn modules(names: &[&str]) -> KvmModules {
        KvmModules {
            loaded: names.iter().map(|s| (*s).to_owned()).collect(),
            ..KvmModules::default()
        }
    }

    /// A bare-metal Intel host where everything works.
    fn ready_intel() -> RawProbe {
        RawProbe {
            cpu: cpu(INTEL_VMX),
            kvm_device: KvmDeviceAccess::Opened,
            kvm_node: Some(DeviceNode {
                mode: 0o20660,
                uid: 0,
                gid: 993,
                group_name: Some("kvm".into()),
            }),
            kvm_api_version: Some(12),
            capabilities: all_caps(),
            vm_create_error: None,
            modules: modules(&["kvm", "kvm_intel"]),
        }
    }

    fn no_device(mut raw: RawProbe) -> RawProbe {
        raw.kvm_device = KvmDeviceAccess::Missing;
        raw.kvm_node = None;
        raw.kvm_api_version = None;
        raw.capabilities = Vec::new();
        raw
    }

    fn joined(reasons: &[String]) -> String {
        reasons.join("\n")
    }

    #[test]
    fn ready_host() {
        let raw = ready_intel();
        assert!(!is_nested_pvm(&raw));
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Ready);
        assert!(reasons.is_empty(), "{reasons:?}");
    }

    #[test]
    fn ready_amd_host() {
        let mut raw = ready_intel();
        raw.cpu = cpu(AMD_SVM);
        raw.modules = modules(&["kvm", "kvm_amd"]);
        assert_eq!(verdict(&raw).0, Verdict::Ready);
    }

    #[test]
    fn vmx_without_kvm_loaded_says_modprobe() {
        let raw = no_device(RawProbe {
            modules: KvmModules::default(),
            ..ready_intel()
        });
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        let text = joined(&reasons);
        assert!(text.contains("modprobe kvm_intel"), "{text}");
        assert!(text.contains("VT-x"), "{text}");
    }

    #[test]
    fn svm_without_kvm_loaded_names_kvm_amd() {
        let raw = no_device(RawProbe {
            cpu: cpu(AMD_SVM),
            modules: KvmModules::default(),
            ..ready_intel()
        });
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        assert!(joined(&reasons).contains("modprobe kvm_amd"));
        assert!(joined(&reasons).contains("AMD-V"));
    }

    #[test]
    fn module_loaded_but_node_missing_says_mknod() {
        let raw = no_device(ready_intel());
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        assert!(joined(&reasons).contains("mknod /dev/kvm c 10 232"));
    }

    #[test]
    fn vm_without_flags_or_kvm_says_enable_nested() {
        let raw = no_device(RawProbe {
            cpu: cpu(NO_FLAGS_VM),
            modules: KvmModules::default(),
            ..ready_intel()
        });
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        let text = joined(&reasons);
        assert!(text.contains("nested=1"), "{text}");
        assert!(
            text.contains("kvm_amd"),
            "AMD vendor should name kvm_amd: {text}"
        );
    }

    #[test]
    fn bare_metal_without_flags_says_enable_in_firmware() {
        let mut info = parse_cpuinfo(INTEL_VMX);
        info.virt_flag = None;
        let raw = no_device(RawProbe {
            cpu: Some(info),
            modules: KvmModules::default(),
            ..ready_intel()
        });
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        assert!(joined(&reasons).contains("firmware setup"));
        assert!(!is_nested_pvm(&raw));
    }

    #[test]
    fn kvm_without_permission_says_group_or_acl() {
        let mut raw = ready_intel();
        raw.kvm_device = KvmDeviceAccess::PermissionDenied;
        raw.kvm_api_version = None;
        raw.capabilities = Vec::new();
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        let text = joined(&reasons);
        assert!(text.contains("usermod -aG kvm"), "{text}");
        assert!(text.contains("setfacl -m u:$USER:rw /dev/kvm"), "{text}");
        assert!(text.contains("mode 0660"), "{text}");
        assert!(
            !is_nested_pvm(&raw),
            "an unopenable device is not nested PVM"
        );
    }

    #[test]
    fn root_owned_node_still_suggests_the_kvm_group() {
        let mut raw = ready_intel();
        raw.kvm_device = KvmDeviceAccess::PermissionDenied;
        raw.kvm_node = Some(DeviceNode {
            mode: 0o20600,
            uid: 0,
            gid: 0,
            group_name: Some("root".into()),
        });
        let text = joined(&verdict(&raw).1);
        assert!(text.contains("mode 0600, group root"), "{text}");
        assert!(text.contains("usermod -aG kvm"), "{text}");
    }

    #[test]
    fn other_open_errors_are_reported_with_their_message() {
        let mut raw = ready_intel();
        raw.kvm_device = KvmDeviceAccess::Failed {
            errno: libc::ENXIO,
            message: "No such device or address".into(),
        };
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        assert!(joined(&reasons).contains("No such device or address"));
        assert!(joined(&reasons).contains("modprobe -r kvm_intel"));
    }

    #[test]
    fn this_hosts_nested_pvm_is_kvm_limited() {
        let raw = RawProbe {
            cpu: cpu(THIS_HOST_PVM),
            modules: KvmModules {
                loaded: vec!["kvm".into(), "kvm_pvm".into()],
                nested: None,
                pvm_native: Some(true),
            },
            ..ready_intel()
        };
        assert!(is_nested_pvm(&raw));
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::KvmLimited);
        let text = joined(&reasons);
        assert!(text.contains("kvm_pvm, pvm_native=Y"), "{text}");
        assert!(text.contains("guest userspace cannot run"), "{text}");
        assert!(text.contains("QEMU TCG"), "{text}");
        assert!(text.contains("nested=1"), "{text}");
    }

    #[test]
    fn kvm_without_cpu_flag_is_nested_even_without_the_pvm_module() {
        let raw = RawProbe {
            cpu: cpu(NO_FLAGS_VM),
            modules: modules(&["kvm"]),
            ..ready_intel()
        };
        assert!(is_nested_pvm(&raw));
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::KvmLimited);
        assert!(joined(&reasons).contains("neither vmx nor svm yet /dev/kvm answers"));
    }

    #[test]
    fn wrong_api_version_is_unavailable() {
        let mut raw = ready_intel();
        raw.kvm_api_version = Some(11);
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        assert!(joined(&reasons).contains("API version 11"));
    }

    #[test]
    fn missing_capabilities_are_named() {
        let mut raw = ready_intel();
        for cap in raw.capabilities.iter_mut() {
            if cap.name == "KVM_CAP_IMMEDIATE_EXIT" || cap.name == "KVM_CAP_IRQFD" {
                cap.present = false;
            }
        }
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        let text = joined(&reasons);
        assert!(
            text.contains("KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_IRQFD"),
            "{text}"
        );
        assert!(text.contains("upgrade the host kernel"), "{text}");
    }

    #[test]
    fn broken_kvm_under_pvm_is_unavailable_not_limited() {
        let raw = RawProbe {
            cpu: cpu(THIS_HOST_PVM),
            modules: modules(&["kvm", "kvm_pvm"]),
            kvm_api_version: Some(13),
            ..ready_intel()
        };
        assert_eq!(verdict(&raw).0, Verdict::Unavailable);
    }

    #[test]
    fn vm_creation_failure_is_unavailable() {
        let mut raw = ready_intel();
        raw.vm_create_error = Some("Device or resource busy (os error 16)".into());
        let (v, reasons) = verdict(&raw);
        assert_eq!(v, Verdict::Unavailable);
        assert!(joined(&reasons).contains("another hypervisor"));
    }

    #[test]
    fn every_reason_is_a_sentence_with_a_remedy() {
        let hosts = [
            no_device(ready_intel()),
            RawProbe {
                kvm_device: KvmDeviceAccess::PermissionDenied,
                ..ready_intel()
            },
            RawProbe {
                cpu: cpu(THIS_HOST_PVM),
                modules: modules(&["kvm", "kvm_pvm"]),
                ..ready_intel()
            },
        ];
        for raw in hosts {
            let (_, reasons) = verdict(&raw);
            assert!(!reasons.is_empty());
            for r in reasons {
                assert!(r.ends_with('.'), "not a sentence: {r}");
                assert!(r.contains(':') || r.contains(", "), "no remedy clause: {r}");
            }
        }
    }

    #[test]
    fn verdict_serialises_as_the_documented_strings() {
        assert_eq!(serde_json::to_string(&Verdict::Ready).unwrap(), "\"ready\"");
        assert_eq!(
            serde_json::to_string(&Verdict::KvmLimited).unwrap(),
            "\"kvm-limited\""
        );
        assert_eq!(
            serde_json::to_string(&Verdict::Unavailable).unwrap(),
            "\"unavailable\""
        );
    }
}
