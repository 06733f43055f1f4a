//! vCPU threads: one per vCPU, each looping on KVM_RUN and routing exits
//! to the PIO/MMIO buses. A terminal exit sends its `VmExitReason` on the
//! exit channel and ends the thread, so a vCPU never spins on a dead guest.
//!
//! Stopping from another thread: set the shared stop flag, then send the
//! kick signal (`kick_signal()`, a real-time signal). Its handler sets
//! `kvm_run.immediate_exit` for the vCPU of the thread it lands on, so a
//! kick that arrives just before KVM_RUN still makes KVM_RUN return EINTR
//! at once instead of running the guest; the loop then sees the flag.
//! A pending signal also ends KVM_RUN wherever the vCPU is inside it: in
//! guest mode (a guest that never exits), blocked in an in-kernel-irqchip
//! HLT (even with interrupts off), or waiting for an INIT/SIPI as a
//! secondary vCPU the guest never started. `vm::stop_vcpus` repeats the
//! kick until the thread has ended, for at most `vm::VCPU_STOP_TIMEOUT`;
//! only a thread blocked outside KVM_RUN (e.g. in a write to a full pipe)
//! outlives that, and the process exit ends it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::devices::bus::Bus;
use crate::exit::{ExitSender, VmExitReason};

/// KVM_SYSTEM_EVENT types (include/uapi/linux/kvm.h).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;
/// KVM_INTERNAL_ERROR_* suberrors.
const INTERNAL_ERROR_NAMES: [&str; 5] = [
    "unknown",
    "emulation failure",
    "exception during event delivery",
    "event delivery failure",
    "unexpected exit reason",
];
/// This many unexpected exits in a row means the guest makes no progress.
const MAX_CONSECUTIVE_UNHANDLED_EXITS: u32 = 10_000;

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

thread_local! {
    /// This thread's vCPU `kvm_run` page, for the kick handler.
    static KVM_RUN_PAGE: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_num: c_int, _info: *mut siginfo_t, _ctx: *mut c_void) {
    // Only a volatile store to memory this thread owns: async-signal-safe.
    let page = KVM_RUN_PAGE.with(|p| p.get());
    if !page.is_null() {
        // SAFETY: the pointer is this thread's mapped kvm_run page, set by
        // `run_loop` and cleared before the VcpuFd (and its mapping) goes.
        unsafe { std::ptr::addr_of_mut!((*page).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler once per process.
pub fn register_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static REGISTERED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| register_signal_handler(kick_signal(), handle_kick).map_err(|e| e.errno()))
        .map_err(vmm_sys_util::errno::Error::new)
}

/// Reported once, by vCPU 0: when the guest first ran, for the benchmark.
pub struct FirstRunClock {
    pub process_start: Instant,
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: ExitSender,
    pub stop: Arc<AtomicBool>,
}

enum Step {
    Continue,
    Unhandled,
    Stop(VmExitReason),
}

impl Vcpu {
    /// Starts the vCPU thread.
    pub fn spawn(self, clock: Option<FirstRunClock>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run_loop(clock))
    }

    fn run_loop(mut self, clock: Option<FirstRunClock>) {
        // Before the first KVM_RUN: from here the guest can reach this thread.
        if let Err(e) = crate::jail::seccomp::apply(crate::jail::seccomp::ThreadKind::Vcpu) {
            let _ = self.exit.send(VmExitReason::VmmError(e.to_string()));
            return;
        }
        let page: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PAGE.with(|p| p.set(page));
        if let Some(clock) = clock {
            tracing::info!(
                "first KVM_RUN after {} ms",
                clock.process_start.elapsed().as_millis()
            );
        }
        let reason = self.run_until_exit();
        KVM_RUN_PAGE.with(|p| p.set(std::ptr::null_mut()));
        if let Some(reason) = reason {
            tracing::debug!(vcpu = self.id, %reason, "vCPU stopped");
            // The receiver is gone only if the VM already stopped.
            let _ = self.exit.send(reason);
        }
    }

    /// Runs until a terminal exit (Some) or a stop request (None).
    fn run_until_exit(&mut self) -> Option<VmExitReason> {
        let mut unhandled_in_a_row = 0u32;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            match self.step() {
                Step::Continue => unhandled_in_a_row = 0,
                Step::Unhandled => {
                    unhandled_in_a_row += 1;
                    if unhandled_in_a_row >= MAX_CONSECUTIVE_UNHANDLED_EXITS {
                        return Some(VmExitReason::VmmError(format!(
                            "vCPU {}: {unhandled_in_a_row} unhandled exits in a row; the guest makes no progress",
                            self.id
                        )));
                    }
                }
                Step::Stop(reason) => return Some(reason),
            }
        }
    }

    fn step(&mut self) -> Step {
        let vcpu = u32::from(self.id);
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Step::Continue;
            }
            Err(e) => {
                return Step::Stop(VmExitReason::VmmError(format!("vCPU {vcpu}: KVM_RUN: {e}")))
            }
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                if !self.pio.read(u64::from(port), data) {
                    tracing::trace!(port = format_args!("{port:#x}"), "read from unmapped port");
                    data.fill(0xff);
                }
                Step::Continue
            }
            VcpuExit::IoOut(port, data) => {
                if !self.pio.write(u64::from(port), data) {
                    tracing::trace!(port = format_args!("{port:#x}"), "write to unmapped port");
                }
                Step::Continue
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.mmio.read(addr, data) {
                    tracing::debug!(addr = format_args!("{addr:#x}"), "read from unmapped MMIO");
                    data.fill(0xff);
                }
                Step::Continue
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !self.mmio.write(addr, data) {
                    tracing::debug!(addr = format_args!("{addr:#x}"), "write to unmapped MMIO");
                }
                Step::Continue
            }
            VcpuExit::Intr => Step::Continue,
            // With the in-kernel irqchip HLT only exits when the guest can
            // never wake again (interrupts off): treat it as the end.
            VcpuExit::Hlt => Step::Stop(VmExitReason::GuestShutdown),
            VcpuExit::Shutdown => Step::Stop(VmExitReason::TripleFault { vcpu }),
            VcpuExit::FailEntry(hardware_reason, _cpu) => Step::Stop(VmExitReason::FailEntry {
                vcpu,
                hardware_reason,
            }),
            VcpuExit::SystemEvent(kind, data) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => {
                    Step::Stop(VmExitReason::GuestShutdown)
                }
                KVM_SYSTEM_EVENT_CRASH => Step::Stop(VmExitReason::InternalError {
                    vcpu,
                    detail: format!("guest reported a crash (system event data {data:x?})"),
                }),
                other => {
                    tracing::warn!(vcpu, kind = other, "unknown system event");
                    Step::Unhandled
                }
            },
            VcpuExit::InternalError => Step::Stop(VmExitReason::InternalError {
                vcpu,
                detail: self.internal_error_detail(),
            }),
            other => {
                tracing::warn!(vcpu, exit = ?other, "unhandled vCPU exit");
                Step::Unhandled
            }
        }
    }

    /// The suberror, its data words and the guest RIP of an internal error.
    fn internal_error_detail(&mut self) -> String {
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of
        // the exit union is the one KVM filled in.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let name = INTERNAL_ERROR_NAMES
            .get(internal.suberror as usize)
            .copied()
            .unwrap_or("unknown");
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let rip = self
            .fd
            .get_regs()
            .map(|r| format!("{:#x}", r.rip))
            .unwrap_or_else(|_| "unknown".into());
        format!(
            "suberror {} ({name}), rip {rip}, data {:x?}",
            internal.suberror,
            &internal.data[..ndata]
        )
    }
}
