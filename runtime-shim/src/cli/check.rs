//! `husk check`: probe the host and say whether it can run husk microVMs,
//! why not, and what to do. The probe itself lives in `husk_vmm::probe`.

use std::fmt::Write as _;

use husk_vmm::probe::{self, HostReport, Verdict, REQUIRED_CAPABILITIES};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let report = probe::probe_host();
    let assets = assets_found();
    let vm_cgroup = crate::sandbox::vm_cgroup::availability();
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(object) = value.as_object_mut() {
            let found = assets
                .iter()
                .map(|(name, path, from, present)| {
                    (
                        name.to_string(),
                        serde_json::json!({"path": path, "from": from, "present": present}),
                    )
                })
                .collect::<serde_json::Map<_, _>>();
            object.insert("assets".into(), found.into());
            object.insert("vm_cgroup".into(), serde_json::to_value(&vm_cgroup)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render_text(&report));
        println!();
        // Not part of the verdict: runs go on without it (SECURITY.md).
        println!("  {:<20} {}", "per-VM cgroup", vm_cgroup.describe());
        for (name, path, from, present) in &assets {
            let state = if *present { "found" } else { "MISSING" };
            println!("  {name:<20} {} ({state}; from {from})", path.display());
        }
    }
    Ok(exit_code(report.verdict))
}

/// The guest kernel, agent and VMM program husk would use, and why there.
fn assets_found() -> Vec<(&'static str, std::path::PathBuf, &'static str, bool)> {
    use crate::sandbox::assets;
    let (kernel, kernel_from) = assets::kernel_location(None);
    let (agent, agent_from) = assets::agent_location();
    let (vmm, vmm_from) = match std::env::var_os("HUSK_VMM").filter(|v| !v.is_empty()) {
        Some(path) => (std::path::PathBuf::from(path), "HUSK_VMM"),
        None => (
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("husk-vmm")))
                .unwrap_or_default(),
            "beside husk",
        ),
    };
    [
        ("guest kernel", kernel, kernel_from),
        ("guest agent", agent, agent_from),
        ("husk-vmm", vmm, vmm_from),
    ]
    .into_iter()
    .map(|(name, path, from)| {
        let present = path.is_file();
        (name, path, from, present)
    })
    .collect()
}

/// 0 when husk can run containers here (at full speed or under QEMU TCG).
pub fn exit_code(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Ready | Verdict::KvmLimited => 0,
        Verdict::Unavailable => 1,
    }
}

fn headline(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Ready => {
            "hardware virtualization and KVM are complete: husk runs containers in \
             husk-vmm microVMs at full speed"
        }
        Verdict::KvmLimited => {
            "KVM answers but is a paravirtual nested hypervisor: husk runs containers \
             under QEMU TCG (software emulation), more slowly"
        }
        Verdict::Unavailable => "no usable KVM on this host: husk cannot run microVMs here",
    }
}

/// The human report: a headline, the facts, then the reasons.
pub fn render_text(report: &HostReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "husk check: {} ({})\n",
        report.verdict,
        headline(report.verdict)
    );

    let mut fact = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<20} {value}");
    };
    let cpu = match (&report.cpu_vendor, &report.cpu_model) {
        (Some(v), Some(m)) => format!("{m} ({v})"),
        (Some(v), None) => v.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => "unknown (/proc/cpuinfo unreadable)".to_owned(),
    };
    let in_vm = if report.running_in_vm {
        ", itself a virtual machine"
    } else {
        ""
    };
    fact("CPU", format!("{cpu}{in_vm}"));
    fact(
        "virtualization flag",
        match report.cpu_virt_flag {
            Some(flag) => format!("{} ({})", flag.as_str(), flag.marketing_name()),
            None => "none (neither vmx nor svm in /proc/cpuinfo)".to_owned(),
        },
    );
    fact(
        "/dev/kvm",
        match &report.kvm_device_error {
            None => "opened read-write".to_owned(),
            Some(e) => format!("not usable: {e}"),
        },
    );
    fact(
        "KVM API version",
        report
            .kvm_api_version
            .map_or_else(|| "unknown".to_owned(), |v| v.to_string()),
    );
    let mut modules = if report.kvm_modules.is_empty() {
        "none loaded".to_owned()
    } else {
        report.kvm_modules.join(", ")
    };
    if let Some(nested) = report.kvm_nested_param {
        let _ = write!(modules, " (nested={})", if nested { "Y" } else { "N" });
    }
    if let Some(native) = report.pvm_native {
        let _ = write!(modules, " (pvm_native={})", if native { "Y" } else { "N" });
    }
    fact("KVM modules", modules);
    fact(
        "KVM capabilities",
        if !report.kvm_device {
            "not checked (/dev/kvm did not open)".to_owned()
        } else if report.missing_capabilities.is_empty() {
            format!("all {} required present", REQUIRED_CAPABILITIES.len())
        } else {
            format!("missing {}", report.missing_capabilities.join(", "))
        },
    );
    if let Some(e) = &report.vm_create_error {
        fact("VM creation", format!("failed: {e}"));
    }
    fact(
        "nested PVM",
        if report.nested_pvm { "yes" } else { "no" }.to_owned(),
    );

    out.push('\n');
    if report.reasons.is_empty() {
        out.push_str("Nothing to fix.\n");
    } else {
        out.push_str("Why, and what to do:\n");
        for reason in &report.reasons {
            let _ = writeln!(out, "  - {reason}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_vmm::probe::{parse_cpuinfo, CapabilityCheck, KvmDeviceAccess, KvmModules, RawProbe};

    fn pvm_host() -> RawProbe {
        RawProbe {
            cpu: Some(parse_cpuinfo(
                "vendor_id\t: GenuineIntel\nmodel name\t: Test CPU\nflags\t\t: fpu hypervisor\n",
            )),
            kvm_device: KvmDeviceAccess::Opened,
            kvm_node: None,
            kvm_api_version: Some(12),
            capabilities: REQUIRED_CAPABILITIES
                .iter()
                .map(|(_, name)| CapabilityCheck {
                    name,
                    present: true,
                })
                .collect(),
            vm_create_error: None,
            modules: KvmModules {
                loaded: vec!["kvm".into(), "kvm_pvm".into()],
                nested: None,
                pvm_native: Some(true),
            },
        }
    }

    #[test]
    fn exit_codes_follow_the_verdict() {
        assert_eq!(exit_code(Verdict::Ready), 0);
        assert_eq!(exit_code(Verdict::KvmLimited), 0);
        assert_eq!(exit_code(Verdict::Unavailable), 1);
    }

    #[test]
    fn text_report_has_headline_facts_and_reasons() {
        let report = HostReport::from_raw(&pvm_host());
        let text = render_text(&report);
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("husk check: kvm-limited ("), "{first}");
        assert!(text.contains("Test CPU (GenuineIntel), itself a virtual machine"));
        assert!(text.contains("none (neither vmx nor svm"));
        assert!(text.contains("opened read-write"));
        assert!(text.contains("kvm, kvm_pvm (pvm_native=Y)"));
        assert!(text.contains(&format!(
            "all {} required present",
            REQUIRED_CAPABILITIES.len()
        )));
        assert!(text.contains("nested PVM           yes"));
        for reason in &report.reasons {
            assert!(text.contains(&format!("  - {reason}")));
        }
    }

    #[test]
    fn text_report_for_a_denied_device() {
        let mut raw = pvm_host();
        raw.kvm_device = KvmDeviceAccess::PermissionDenied;
        raw.kvm_api_version = None;
        raw.capabilities.clear();
        let text = render_text(&HostReport::from_raw(&raw));
        assert!(text.starts_with("husk check: unavailable ("));
        assert!(text.contains("not usable: permission denied"));
        assert!(text.contains("not checked (/dev/kvm did not open)"));
        assert!(text.contains("usermod -aG kvm"));
    }
}
