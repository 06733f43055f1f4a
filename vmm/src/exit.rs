//! Why a VM stopped. vCPU threads and device workers send one of these to
//! the VMM's main thread, which stops the VM and turns it into the process
//! exit status. A channel rather than shared flags so that the first reason
//! wins and nobody has to poll.

use std::fmt;

/// The reason the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExitReason {
    /// The guest powered off or asked for a reset (i8042 / reboot): a clean end.
    GuestShutdown,
    /// The guest kernel panicked (its panic message went out on the serial
    /// port), then reset itself: a failure even though the reset is clean.
    GuestPanic,
    /// The vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u32 },
    /// KVM could not run or emulate guest code (KVM_EXIT_INTERNAL_ERROR).
    InternalError { vcpu: u32, detail: String },
    /// VM entry failed (KVM_EXIT_FAIL_ENTRY).
    FailEntry { vcpu: u32, hardware_reason: u64 },
    /// A device backend failed in a way the guest cannot recover from.
    DeviceError { device: String, detail: String },
    /// The VMM was asked to stop (SIGINT, SIGTERM, SIGHUP).
    Terminated { signal: i32 },
    /// The VMM itself failed (an ioctl, a thread, a host resource).
    VmmError(String),
}

impl VmExitReason {
    /// Process exit status for this reason: 0 only for a clean guest shutdown.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExitReason::GuestShutdown => 0,
            // The shell convention for "ended by signal N".
            VmExitReason::Terminated { signal } => 128 + signal,
            _ => 1,
        }
    }
}

impl fmt::Display for VmExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExitReason::GuestShutdown => write!(f, "guest shut down"),
            VmExitReason::GuestPanic => {
                write!(
                    f,
                    "guest kernel panicked (the panic message is in the serial log)"
                )
            }
            VmExitReason::TripleFault { vcpu } => {
                write!(f, "vCPU {vcpu}: triple fault (guest reset by CPU shutdown)")
            }
            VmExitReason::InternalError { vcpu, detail } => {
                write!(
                    f,
                    "vCPU {vcpu}: KVM internal error (KVM could not emulate guest code): {detail}"
                )
            }
            VmExitReason::FailEntry {
                vcpu,
                hardware_reason,
            } => {
                write!(
                    f,
                    "vCPU {vcpu}: VM entry failed, hardware reason {hardware_reason:#x}"
                )
            }
            VmExitReason::DeviceError { device, detail } => write!(f, "device {device}: {detail}"),
            VmExitReason::Terminated { signal } => write!(f, "stopped by signal {signal}"),
            VmExitReason::VmmError(detail) => write!(f, "VMM error: {detail}"),
        }
    }
}

/// Where vCPU threads and device workers report that the VM must stop.
pub type ExitSender = std::sync::mpsc::Sender<VmExitReason>;
