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
    HuskVmm,
    Qemu(Accel),
}

/// A backend and the one-line reason it was picked.
pub struct Selected {
    pub backend: Box<dyn VmBackend>,
    pub plan: Plan,
    pub reason: String,
}

/// Picks the backend for `choice`; `probe` is only called when the host
/// verdict matters.
pub fn select(
    choice: BackendChoice,
    probe: impl FnOnce() -> HostReport,
) -> Result<Selected, BackendError> {
    let (plan, reason) = match choice {
        BackendChoice::Husk => decide(choice, Verdict::Ready, None),
        _ => {
            let report = probe();
            decide(
                choice,
                report.verdict,
                report.reasons.first().map(String::as_str),
            )
        }
    };
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
        Plan::HuskVmm => Box::new(HuskVmmBackend::locate()?),
        Plan::Qemu(accel) => Box::new(QemuBackend::new(accel)),
    })
}

impl Plan {
    /// A stable name, for state files.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::HuskVmm => "husk",
            Plan::Qemu(Accel::Kvm) => "qemu-kvm",
            Plan::Qemu(Accel::Tcg) => "qemu-tcg",
        }
    }

    pub fn parse(text: &str) -> Option<Plan> {
        match text {
            "husk" => Some(Plan::HuskVmm),
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
    first_reason: Option<&str>,
) -> (Plan, String) {
    let accel = if verdict == Verdict::Ready {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    match choice {
        BackendChoice::Husk => (Plan::HuskVmm, "--backend husk".into()),
        BackendChoice::Qemu => (
            Plan::Qemu(accel),
            format!("--backend qemu, host verdict {}", verdict.as_str()),
        ),
        BackendChoice::Auto if verdict == Verdict::Ready => (
            Plan::HuskVmm,
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
            decide(BackendChoice::Auto, Verdict::Ready, None).0,
            Plan::HuskVmm
        );
        let (plan, why) = decide(
            BackendChoice::Auto,
            Verdict::KvmLimited,
            Some("KVM is nested PVM"),
        );
        assert_eq!(plan, Plan::Qemu(Accel::Tcg));
        assert!(
            why.contains("kvm-limited") && why.contains("nested PVM"),
            "{why}"
        );
        assert_eq!(
            decide(BackendChoice::Auto, Verdict::Unavailable, None).0,
            Plan::Qemu(Accel::Tcg)
        );
    }

    #[test]
    fn explicit_choices_are_honoured() {
        assert_eq!(
            decide(BackendChoice::Husk, Verdict::Unavailable, None).0,
            Plan::HuskVmm
        );
        assert_eq!(
            decide(BackendChoice::Qemu, Verdict::Ready, None).0,
            Plan::Qemu(Accel::Kvm)
        );
        assert_eq!(
            decide(BackendChoice::Qemu, Verdict::KvmLimited, None).0,
            Plan::Qemu(Accel::Tcg)
        );
    }
}
