//! `RawProbe`: the facts observed on a host, and the one place that reads
//! them from the system. Everything that judges the facts is pure and lives in
//! `verdict`, so it can be tested on recorded or invented hosts.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

use super::cpuinfo::{parse_cpuinfo, CpuInfo};

/// The KVM API version every supported kernel reports (stable since 2.6.22).
pub const EXPECTED_KVM_API_VERSION: i32 = 12;

/// KVM capabilities husk-vmm relies on, with the name shown to users.
pub const REQUIRED_CAPABILITIES: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
];

/// The KVM modules whose presence tells which hypervisor backs /dev/kvm.
pub const KVM_MODULES: &[&str] = &["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"];

/// The outcome of opening /dev/kvm read-write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmDeviceAccess {
    Opened,
    /// ENOENT: no KVM module is loaded, or no device node was created.
    Missing,
    /// EACCES/EPERM: the node exists but this user may not open it.
    PermissionDenied,
    /// Anything else (e.g. ENXIO when the module failed to initialise).
    Failed {
        errno: i32,
        message: String,
    },
}

impl KvmDeviceAccess {
    fn from_errno(errno: i32) -> Self {
        match errno {
            libc::ENOENT => KvmDeviceAccess::Missing,
            libc::EACCES | libc::EPERM => KvmDeviceAccess::PermissionDenied,
            other => KvmDeviceAccess::Failed {
                errno: other,
                message: io::Error::from_raw_os_error(other).to_string(),
            },
        }
    }
}

/// Ownership of the /dev/kvm node, for the permission remedy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Name of `gid` from /etc/group, when it is listed there.
    pub group_name: Option<String>,
}

/// One required capability and whether KVM reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityCheck {
    pub name: &'static str,
    pub present: bool,
}

/// Loaded KVM modules and the parameters that matter to the verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvmModules {
    /// Names from `KVM_MODULES` found under /sys/module.
    pub loaded: Vec<String>,
    /// `kvm_intel`/`kvm_amd` `nested` parameter: this host may run its own
    /// hardware-virtualized guests' hypervisors.
    pub nested: Option<bool>,
    /// `kvm_pvm` `pvm_native`: PVM runs unmodified guests by emulation.
    pub pvm_native: Option<bool>,
}

impl KvmModules {
    pub fn is_loaded(&self, name: &str) -> bool {
        self.loaded.iter().any(|m| m == name)
    }
}

/// Everything observed about the host, before any judgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawProbe {
    /// Parsed /proc/cpuinfo; None when it could not be read.
    pub cpu: Option<CpuInfo>,
    pub kvm_device: KvmDeviceAccess,
    /// Ownership of /dev/kvm when the node exists.
    pub kvm_node: Option<DeviceNode>,
    /// KVM_GET_API_VERSION, when /dev/kvm opened.
    pub kvm_api_version: Option<i32>,
    /// The `REQUIRED_CAPABILITIES`, checked when /dev/kvm opened.
    pub capabilities: Vec<CapabilityCheck>,
    /// Why KVM_CREATE_VM failed, when /dev/kvm opened but a VM could not be made.
    pub vm_create_error: Option<String>,
    pub modules: KvmModules,
}

impl RawProbe {
    /// Observes this host: reads /proc/cpuinfo and /sys/module, opens
    /// /dev/kvm and asks it for its version, capabilities and a VM.
    pub fn collect() -> Self {
        let cpu = match fs::read_to_string("/proc/cpuinfo") {
            Ok(text) => Some(parse_cpuinfo(&text)),
            Err(e) => {
                tracing::warn!("cannot read /proc/cpuinfo: {e}");
                None
            }
        };
        let kvm_node = read_device_node(Path::new("/dev/kvm"), Path::new("/etc/group"));
        let modules = read_modules(Path::new("/sys/module"));
        let mut raw = RawProbe {
            cpu,
            kvm_device: KvmDeviceAccess::Missing,
            kvm_node,
            kvm_api_version: None,
            capabilities: Vec::new(),
            vm_create_error: None,
            modules,
        };
        match Kvm::new() {
            Ok(kvm) => {
                raw.kvm_device = KvmDeviceAccess::Opened;
                raw.kvm_api_version = Some(kvm.get_api_version());
                raw.capabilities = REQUIRED_CAPABILITIES
                    .iter()
                    .map(|(cap, name)| CapabilityCheck {
                        name,
                        present: kvm.check_extension(*cap),
                    })
                    .collect();
                // Creating a VM catches a module that loaded but cannot run
                // guests (e.g. VT-x held by another hypervisor: EBUSY).
                if let Err(e) = kvm.create_vm() {
                    raw.vm_create_error = Some(e.to_string());
                }
            }
            Err(e) => raw.kvm_device = KvmDeviceAccess::from_errno(e.errno()),
        }
        raw
    }
}

fn read_device_node(node: &Path, group_file: &Path) -> Option<DeviceNode> {
    let meta = fs::metadata(node).ok()?;
    let group_name = fs::read_to_string(group_file)
        .ok()
        .and_then(|text| group_name(&text, meta.gid()));
    Some(DeviceNode {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        group_name,
    })
}

/// Looks up a group name in /etc/group text. Read directly rather than
/// through NSS: the probe wants the local `kvm` group, not a directory service.
pub fn group_name(etc_group: &str, gid: u32) -> Option<String> {
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.trim().parse().ok()?;
        (id == gid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// Reads the loaded KVM modules and their parameters under `sys_module`
/// (normally /sys/module; built-in modules with parameters appear there too).
pub fn read_modules(sys_module: &Path) -> KvmModules {
    let loaded: Vec<String> = KVM_MODULES
        .iter()
        .filter(|m| sys_module.join(m).is_dir())
        .map(|m| (*m).to_owned())
        .collect();
    let param = |module: &str, name: &str| {
        fs::read_to_string(sys_module.join(module).join("parameters").join(name))
            .ok()
            .and_then(|v| parse_bool_param(&v))
    };
    let nested = param("kvm_intel", "nested").or_else(|| param("kvm_amd", "nested"));
    let pvm_native = param("kvm_pvm", "pvm_native");
    KvmModules {
        loaded,
        nested,
        pvm_native,
    }
}

/// Module parameters print booleans as Y/N, integers as 1/0.
pub fn parse_bool_param(value: &str) -> Option<bool> {
    match value.trim() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_kinds_are_told_apart() {
        assert_eq!(
            KvmDeviceAccess::from_errno(libc::ENOENT),
            KvmDeviceAccess::Missing
        );
        assert_eq!(
            KvmDeviceAccess::from_errno(libc::EACCES),
            KvmDeviceAccess::PermissionDenied
        );
        assert_eq!(
            KvmDeviceAccess::from_errno(libc::EPERM),
            KvmDeviceAccess::PermissionDenied
        );
        match KvmDeviceAccess::from_errno(libc::ENXIO) {
            KvmDeviceAccess::Failed { errno, message } => {
                assert_eq!(errno, libc::ENXIO);
                assert!(!message.is_empty());
            }
            other => panic!("ENXIO classified as {other:?}"),
        }
    }

    #[test]
    fn group_lookup_reads_etc_group_lines() {
        let text = "root:x:0:\nbad line\nkvm:x:993:alice,bob\nnumber:x:notanumber:\n";
        assert_eq!(group_name(text, 993).as_deref(), Some("kvm"));
        assert_eq!(group_name(text, 0).as_deref(), Some("root"));
        assert_eq!(group_name(text, 5), None);
    }

    #[test]
    fn module_parameters_parse_as_booleans() {
        assert_eq!(parse_bool_param("Y\n"), Some(true));
        assert_eq!(parse_bool_param("1"), Some(true));
        assert_eq!(parse_bool_param("N\n"), Some(false));
        assert_eq!(parse_bool_param("0"), Some(false));
        assert_eq!(parse_bool_param("maybe"), None);
    }

    #[test]
    fn modules_and_parameters_are_read_from_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let params = dir.path().join("kvm_pvm/parameters");
        fs::create_dir_all(&params).unwrap();
        fs::write(params.join("pvm_native"), "Y\n").unwrap();
        fs::create_dir_all(dir.path().join("kvm/parameters")).unwrap();
        fs::create_dir_all(dir.path().join("unrelated")).unwrap();
        let modules = read_modules(dir.path());
        assert_eq!(modules.loaded, vec!["kvm".to_owned(), "kvm_pvm".to_owned()]);
        assert_eq!(modules.pvm_native, Some(true));
        assert_eq!(modules.nested, None);

        let intel = dir.path().join("kvm_intel/parameters");
        fs::create_dir_all(&intel).unwrap();
        fs::write(intel.join("nested"), "N\n").unwrap();
        let modules = read_modules(dir.path());
        assert!(modules.is_loaded("kvm_intel"));
        assert_eq!(modules.nested, Some(false));
    }
}
