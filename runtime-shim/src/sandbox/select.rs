//! `--backend auto|husk|qemu`: which program runs the VM, and why.

use husk_vmm::probe::{HostReport, Verdict};

use super::backend::{BackendError, VmBackend};
use super::husk_vmm::HuskVmmBackend;
use super::qemu::{Accel, QemuBackend};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// husk-vmm where `husk check` says ready, else QEMU with TCG.
    Auto,
    /// Our own VMM, husk-vmm.
    Husk,
    /// qemu-system-x86_64 -M microvm (KVM where ready, else TCG).
    Qemu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// husk-vmm, told whether the host is nested PVM (from the probe).
    HuskVmm {
        nested_pvm: bool,
    },
    Qemu(Accel),
}

/// A backend and the one-line reason it was picked.
pub struct Selected {
    pub backend: Box<dyn VmBackend>,
    pub plan: Plan,
    pub reason: String,
}

/// Picks the backend for `choice` from what `probe` finds. One probe per
/// run, also for `--backend husk`: husk-vmm is told what it found (nested
/// PVM or not) instead of probing again with a throw-away VM of its own.
pub fn select(
    choice: BackendChoice,
    probe: impl FnOnce() -> HostReport,
) -> Result<Selected, BackendError> {
    let report = probe();
    let (plan, reason) = decide(
        choice,
        report.verdict,
        report.nested_pvm,
        report.reasons.first().map(String::as_str),
    );
    Ok(Selected {
        backend: backend_for(plan)?,
        plan,
        reason,
    })
}

/// The backend of a plan decided earlier (e.g. by the command that started
/// a container's monitor): no second host probe.
pub fn backend_for(plan: Plan) -> Result<Box<dyn VmBackend>, BackendError> {
    Ok(match plan {
        Plan::HuskVmm { nested_pvm } => {
            Box::new(HuskVmmBackend::locate()?.with_nested_pvm(nested_pvm))
        }
        Plan::Qemu(accel) => Box::new(QemuBackend::new(accel)),
    })
}

impl Plan {
    /// A stable name, for state files.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::HuskVmm { nested_pvm: false } => "husk",
            Plan::HuskVmm { nested_pvm: true } => "husk-nested-pvm",
            Plan::Qemu(Accel::Kvm) => "qemu-kvm",
            Plan::Qemu(Accel::Tcg) => "qemu-tcg",
        }
    }

    pub fn parse(text: &str) -> Option<Plan> {
        match text {
            "husk" => Some(Plan::HuskVmm { nested_pvm: false }),
            "husk-nested-pvm" => Some(Plan::HuskVmm { nested_pvm: true }),
            "qemu-kvm" => Some(Plan::Qemu(Accel::Kvm)),
            "qemu-tcg" => Some(Plan::Qemu(Accel::Tcg)),
            _ => None,
        }
    }
}

/// The pure decision: a plan and why.
pub fn decide(
    choice: BackendChoice,
    verdict: Verdict,
    nested_pvm: bool,
    first_reason: Option<&str>,
) -> (Plan, String) {
    let accel = if verdict == Verdict::Ready {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    match choice {
        BackendChoice::Husk => (Plan::HuskVmm { nested_pvm }, "--backend husk".into()),
        BackendChoice::Qemu => (
            Plan::Qemu(accel),
            format!("--backend qemu, host verdict {}", verdict.as_str()),
        ),
        BackendChoice::Auto if verdict == Verdict::Ready => (
            Plan::HuskVmm { nested_pvm },
            "host verdict ready (hardware virtualization)".into(),
        ),
        BackendChoice::Auto => (
            Plan::Qemu(Accel::Tcg),
            format!(
                "host verdict {}: {}",
                verdict.as_str(),
                first_reason.unwrap_or("no usable KVM")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_verdict() {
        assert_eq!(
            decide(BackendChoice::Auto, Verdict::Ready, false, None).0,
            Plan::HuskVmm { nested_pvm: false }
        );
        let (plan, why) = decide(
            BackendChoice::Auto,
            Verdict::KvmLimited,
            true,
            Some("KVM is nested PVM"),
        );
        assert_eq!(plan, Plan::Qemu(Accel::Tcg));
        assert!(
            why.contains("kvm-limited") && why.contains("nested PVM"),
            "{why}"
        );
        assert_eq!(
            decide(BackendChoice::Auto, Verdict::Unavailable, false, None).0,
            Plan::Qemu(Accel::Tcg)
        );
    }

    #[test]
    fn explicit_choices_are_honoured() {
        assert_eq!(
            decide(BackendChoice::Husk, Verdict::KvmLimited, true, None).0,
            Plan::HuskVmm { nested_pvm: true }
        );
        assert_eq!(
            decide(BackendChoice::Qemu, Verdict::Ready, false, None).0,
            Plan::Qemu(Accel::Kvm)
        );
        assert_eq!(
            decide(BackendChoice::Qemu, Verdict::KvmLimited, true, None).0,
            Plan::Qemu(Accel::Tcg)
        );
    }

    #[test]
    fn plans_survive_their_state_file_names() {
        for plan in [
            Plan::HuskVmm { nested_pvm: false },
            Plan::HuskVmm { nested_pvm: true },
            Plan::Qemu(Accel::Kvm),
            Plan::Qemu(Accel::Tcg),
        ] {
            assert_eq!(Plan::parse(plan.as_str()), Some(plan));
        }
    }
}
