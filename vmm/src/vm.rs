//! One microVM: KVM VM and vCPUs, guest memory, the PIO/MMIO buses and
//! their devices, the boot image. `Vm::new` builds everything from a
//! `VmConfig` without running the guest; `Vm::run` starts one thread per
//! vCPU, waits on the main thread for the first `VmExitReason` (from a vCPU
//! or a device), then stops every vCPU and returns the reason.
//!
//! Event handling: the main thread only blocks on the exit channel.
//! Device I/O runs on the vCPU threads (register accesses) and the virtio
//! devices' own epoll workers; host stdin, when forwarded to the serial
//! port, has a small reader thread of its own.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootEntry, BootError};
use crate::config::{BootSource, ConfigError, SerialOutput, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::serial::{
    PanicWatch, SerialDevice, SerialSink, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use crate::devices::wiring::{self as virtio_wiring, VirtioDevices, VirtioError};
use crate::exit::{ExitSender, VmExitReason};
use crate::memory::{
    self, DeviceSlot, DeviceSlotAllocator, MemoryError, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS,
    SERIAL_IRQ,
};
use crate::vcpu::{kick_signal, register_kick_handler, FirstRunClock, Vcpu};
use crate::x86_64::{cpuid, lapic, msrs, regs, X86Error};

/// How long `run` waits for vCPU threads to leave KVM_RUN once stopped
/// (they normally take milliseconds). Threads still running after it are
/// left behind: `run` returns anyway, and the caller is expected to exit
/// the process, which ends them. husk-vmm's whole stop, this included,
/// is bounded by `STOP_BOUND` (2 s) in main.rs.
pub const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a vCPU thread that has not stopped is kicked again.
const VCPU_KICK_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening /dev/kvm: {0} (run `husk check` for what this host can do)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("vCPU setup: {0}")]
    X86(#[from] X86Error),
    #[error("device bus: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    #[error("serial log {path}: {source}")]
    SerialLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("registering the vCPU kick signal: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub struct Vm {
    // Field order is drop order: vCPUs and devices before the VM fd and
    // the memory they refer to.
    vcpus: Vec<VcpuFd>,
    serial: Arc<Mutex<SerialDevice>>,
    serial_input: bool,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    _virtio: VirtioDevices,
    exit_tx: ExitSender,
    exit_rx: Receiver<VmExitReason>,
    _vm_fd: VmFd,
    _mem: GuestMemoryMmap,
    _kvm: Kvm,
    /// When the process started, for the first-KVM_RUN log line.
    process_start: Instant,
    /// Set when the kernel's panic line went out on the serial port.
    guest_panicked: Arc<AtomicBool>,
}

impl Vm {
    /// Builds the VM; nothing runs until `run`.
    pub fn new(config: &VmConfig, process_start: Instant) -> Result<Vm, VmError> {
        config.validate()?;
        register_kick_handler().map_err(VmError::Signal)?;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;

        let mem = memory::create_guest_memory(config.mem_mib)?;
        register_memory(&vm_fd, &mem)?;

        setup_irqchip(&vm_fd)?;

        let (exit_tx, exit_rx) = mpsc::channel();
        let mut pio = Bus::new();
        let guest_panicked = Arc::new(AtomicBool::new(false));
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            serial_irq(&vm_fd)?,
            serial_sink(&config.serial, config.serial_log_cap, &guest_panicked)?,
        )));
        pio.insert(SERIAL_PORT_BASE, SERIAL_PORT_LEN, serial.clone())?;
        pio.insert(
            I8042_PORT_BASE,
            I8042_PORT_LEN,
            Arc::new(Mutex::new(I8042::new(exit_tx.clone()))),
        )?;

        let mut mmio = Bus::new();
        let mut slots = DeviceSlotAllocator::new();
        let virtio = virtio_wiring::attach(config, &vm_fd, &mem, &mut mmio, &mut slots, &exit_tx)?;

        let entry = load_boot_source(config, &mem, virtio.slots())?;
        regs::write_gdt(&mem)?;
        boot::mptable::write(&mem, config.vcpus).map_err(BootError::from)?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(X86Error::SupportedCpuid)?;
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            vcpus.push(create_vcpu(&vm_fd, id, config.vcpus, &supported, &entry)?);
        }

        Ok(Vm {
            vcpus,
            serial,
            serial_input: config.serial_input,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            _virtio: virtio,
            exit_tx,
            exit_rx,
            _vm_fd: vm_fd,
            _mem: mem,
            _kvm: kvm,
            process_start,
            guest_panicked,
        })
    }

    /// A sender for reasons found outside the VM (e.g. a stop signal).
    /// The disk slots' swap handles, by serial (for the control socket).
    pub fn disk_slots(&self) -> Vec<(String, crate::devices::virtio::block::SlotBacking)> {
        self._virtio.disk_slots().to_vec()
    }

    pub fn exit_sender(&self) -> ExitSender {
        self.exit_tx.clone()
    }

    /// Runs the guest until the first exit reason, then stops all vCPUs
    /// (within `VCPU_STOP_TIMEOUT`) and drops the devices.
    ///
    /// A vCPU thread that does not stop in time (the kernel keeps it, or
    /// it is blocked outside KVM_RUN, e.g. writing serial output to a full
    /// pipe) still uses the buses, devices and guest memory, so then
    /// nothing is torn down: the VM is leaked for the process exit to end.
    pub fn run(mut self) -> VmExitReason {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (index, fd) in self.vcpus.drain(..).enumerate() {
            let vcpu = Vcpu {
                id: index as u8,
                fd,
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                exit: self.exit_tx.clone(),
                stop: stop.clone(),
            };
            let clock = (index == 0).then_some(FirstRunClock {
                process_start: self.process_start,
            });
            match vcpu.spawn(clock) {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    let _ = self.exit_tx.send(VmExitReason::VmmError(format!(
                        "starting vCPU thread {index}: {e}"
                    )));
                    break;
                }
            }
        }
        if self.serial_input && std::io::stdin().is_terminal() {
            forward_stdin(self.serial.clone());
        }
        // The vCPU threads are started (each filtered as a vCPU): now this
        // thread's own filter.
        if let Err(e) = crate::jail::seccomp::apply(crate::jail::seccomp::ThreadKind::Main) {
            let _ = self.exit_tx.send(VmExitReason::VmmError(e.to_string()));
        }

        // Our own sender keeps the channel open, so this only returns with
        // a reason.
        let reason = self
            .exit_rx
            .recv()
            .unwrap_or_else(|_| VmExitReason::VmmError("exit channel closed".into()));
        let stuck = stop_vcpus(&stop, threads);
        // A panicking kernel resets itself (panic=N): not a clean end.
        let reason = if reason == VmExitReason::GuestShutdown
            && self.guest_panicked.load(Ordering::Acquire)
        {
            VmExitReason::GuestPanic
        } else {
            reason
        };
        if stuck > 0 {
            std::mem::forget(self);
        }
        reason
    }
}

/// Sets the stop flag, kicks every vCPU thread until it has left KVM_RUN
/// and joins it, for at most `VCPU_STOP_TIMEOUT`. Returns how many threads
/// are still running.
///
/// The kick works wherever the thread is: in guest mode (a spinning guest),
/// blocked in the kernel (an in-kernel-irqchip HLT, a secondary vCPU
/// waiting for an INIT/SIPI that never comes), or in user space about to
/// enter KVM_RUN (the handler sets `immediate_exit`). See `vcpu`.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) -> usize {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    let mut pending = threads;
    loop {
        let (done, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|h| h.is_finished());
        for handle in done {
            let _ = handle.join();
        }
        pending = rest;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        for handle in &pending {
            // Fails only if the thread has just ended.
            let _ = handle.kill(kick_signal());
        }
        std::thread::sleep(VCPU_KICK_INTERVAL);
    }
    if !pending.is_empty() {
        tracing::warn!(
            count = pending.len(),
            "vCPU threads did not stop within {} ms; leaving them to the process exit",
            VCPU_STOP_TIMEOUT.as_millis()
        );
    }
    pending.len()
}

/// The in-kernel LAPIC/IOAPIC/PIC and PIT, and the pages KVM needs for
/// them; the TSS and identity map must be placed before vCPUs exist.
fn setup_irqchip(vm_fd: &VmFd) -> Result<(), VmError> {
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm_fd
        .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// Loads the kernel (with its command line and initrd) or the raw payload.
fn load_boot_source(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    virtio_slots: &[DeviceSlot],
) -> Result<BootEntry, VmError> {
    let entry = match &config.boot {
        BootSource::Kernel {
            vmlinux,
            initrd,
            cmdline,
        } => {
            let nested = config.nested_pvm_workarounds.resolve(probe_for_nested_pvm);
            if nested && config.vcpus > 1 {
                tracing::warn!(
                    vcpus = config.vcpus,
                    "nested PVM cannot start secondary vCPUs; the guest will use one"
                );
            }
            let cmdline = boot::cmdline::build_cmdline(cmdline, virtio_slots, nested)
                .map_err(BootError::from)?;
            if let Ok(text) = cmdline.as_cstring() {
                tracing::info!(cmdline = %text.to_string_lossy(), "kernel command line");
            }
            boot::load_kernel(mem, config.mem_mib, vmlinux, initrd.as_deref(), &cmdline)?
        }
        BootSource::RawPayload { path } => boot::load_raw_payload(mem, path)?,
    };
    Ok(entry)
}

fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| VmError::Io {
                what: "guest memory host address",
                source: std::io::ErrorKind::InvalidData.into(),
            })?;
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping belongs to `mem`, which the Vm keeps alive
        // (and drops after the VM fd) for as long as the guest can use it.
        unsafe { vm_fd.set_user_memory_region(region_desc) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn serial_irq(vm_fd: &VmFd) -> Result<EventFd, VmError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmError::Io {
        what: "serial irq eventfd",
        source,
    })?;
    vm_fd
        .register_irqfd(&evt, SERIAL_IRQ)
        .map_err(kvm_err("KVM_IRQFD (serial)"))?;
    Ok(evt)
}

fn serial_sink(
    output: &SerialOutput,
    cap: u64,
    panicked: &Arc<AtomicBool>,
) -> Result<SerialSink, VmError> {
    let sink: SerialSink = match output {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::None => Box::new(std::io::sink()),
        // A file fills up from the guest's output alone: capped.
        SerialOutput::File(path) => Box::new(crate::logcap::CappedWriter::new(
            File::create(path).map_err(|source| VmError::SerialLog {
                path: path.clone(),
                source,
            })?,
            cap,
            "serial log",
        )),
    };
    Ok(Box::new(PanicWatch::new(sink, panicked.clone())))
}

/// The VMM's own host probe, for `NestedPvmWorkarounds::Auto` only (see
/// `NestedPvmWorkarounds::resolve`): it opens /dev/kvm again and creates a
/// throw-away VM, which husk avoids by passing its own answer.
fn probe_for_nested_pvm() -> bool {
    tracing::debug!("probing the host for nested PVM");
    let nested = crate::probe::probe_host().nested_pvm;
    if nested {
        tracing::info!(
            "host KVM is nested PVM: adding the kernel parameters that hide what it cannot emulate"
        );
    }
    nested
}

fn create_vcpu(
    vm_fd: &VmFd,
    id: u8,
    count: u8,
    supported: &kvm_bindings::CpuId,
    entry: &BootEntry,
) -> Result<VcpuFd, VmError> {
    let fd = vm_fd
        .create_vcpu(u64::from(id))
        .map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let mut table = supported.clone();
    cpuid::normalize(&mut table, id, count).map_err(X86Error::from)?;
    fd.set_cpuid2(&table).map_err(X86Error::SetCpuid)?;
    msrs::setup_msrs(&fd)?;
    regs::setup_fpu(&fd)?;
    lapic::setup_lapic(&fd)?;
    // Only the boot vCPU starts at the entry point; the others wait for
    // the guest's INIT/SIPI in the in-kernel LAPIC.
    if id == 0 {
        regs::setup_boot_regs(&fd, entry)?;
    }
    Ok(fd)
}

/// Copies host stdin to the serial port until EOF. The thread ends at EOF
/// or with the process; it holds only the serial device.
fn forward_stdin(serial: Arc<Mutex<SerialDevice>>) {
    let spawned = std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            // Reads stdin, writes the UART: a worker's needs.
            if crate::jail::seccomp::apply(crate::jail::seccomp::ThreadKind::Worker).is_err() {
                return;
            }
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .enqueue_input(pending);
                    pending = &pending[taken..];
                    if taken == 0 {
                        // FIFO full: the guest has not read yet.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("serial input disabled: {e}");
    }
}
