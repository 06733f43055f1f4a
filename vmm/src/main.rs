//! `husk-vmm`: boot one microVM from the command line and exit with the
//! guest's fate: 0 when it powers off or reboots, 1 with a one-line reason
//! on stderr otherwise (triple fault, KVM internal error, failed entry,
//! device error, VMM error, bad configuration).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use husk_vmm::config::{BootSource, DiskConfig, NestedPvmWorkarounds, SerialOutput, VmConfig};
use husk_vmm::exit::VmExitReason;
use husk_vmm::vm::Vm;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "husk-vmm",
    version,
    about = "Boot a KVM microVM from an ELF vmlinux (PVH)"
)]
struct Args {
    /// Uncompressed ELF vmlinux with a PVH entry note.
    #[arg(
        long,
        required_unless_present = "raw_payload",
        conflicts_with = "raw_payload"
    )]
    kernel: Option<PathBuf>,
    /// Initramfs handed to the kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line (default: console=ttyS0 reboot=k panic=1 pci=off);
    /// virtio devices and host workarounds are appended.
    #[arg(long, default_value = "", requires = "kernel")]
    cmdline: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 256)]
    mem_mib: u64,
    /// A virtio-blk disk; repeatable, in guest order (vda, vdb, ...).
    ///
    /// PATH[:ro][,serial=ID]: a raw image file, read-only with `:ro`.
    ///
    /// LISTFILE:ro,concat[,serial=ID]: ONE read-only disk that is the
    /// concatenation of the image files LISTFILE names, one absolute path
    /// per line (blank lines ignored), at most 4096; each must be a
    /// non-zero multiple of 512 bytes. All are opened (and sized) at start,
    /// so they may be unlinked afterwards. `concat` requires `:ro`.
    ///
    /// serial=ID: what the guest reads from /sys/block/vdX/serial, 1 to 20
    /// characters from A-Z a-z 0-9 . _ - (default: the device name, vda,
    /// vdb, ...); no two disks may share one. PATH and ID cannot contain a
    /// comma.
    #[arg(long = "disk", value_name = "PATH[:ro][,serial=ID]")]
    disks: Vec<DiskConfig>,
    /// Unix socket (created, listening) bridged to the virtio console port.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Where serial output goes: a file, or `-` for stdout.
    #[arg(long, default_value = "-")]
    serial_log: SerialOutput,
    /// Never add the nested-PVM kernel parameters; the host is not probed.
    ///
    /// husk probes the host itself and always passes this flag or
    /// --nested-pvm-workarounds: with either, husk-vmm does not probe
    /// (no second /dev/kvm open, no throw-away VM). With neither, it probes
    /// before booting a kernel and adds the parameters on a nested-PVM host.
    #[arg(long, conflicts_with = "nested_pvm_workarounds")]
    no_nested_pvm_workarounds: bool,
    /// Always add the nested-PVM kernel parameters; the host is not probed.
    ///
    /// See --no-nested-pvm-workarounds.
    #[arg(long)]
    nested_pvm_workarounds: bool,
    /// Run raw 32-bit code loaded at 1 MiB instead of a kernel (VMM tests).
    #[arg(long, value_name = "PATH")]
    raw_payload: Option<PathBuf>,
    /// Log filter for stderr (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "info")]
    log_level: String,
}

impl Args {
    fn into_config(self) -> VmConfig {
        let boot = match (self.kernel, self.raw_payload) {
            (Some(vmlinux), _) => BootSource::Kernel {
                vmlinux,
                initrd: self.initrd,
                cmdline: self.cmdline,
            },
            (None, Some(path)) => BootSource::RawPayload { path },
            // clap's required_unless_present rules this out.
            (None, None) => BootSource::RawPayload {
                path: PathBuf::new(),
            },
        };
        let mut config = VmConfig::new(boot);
        config.vcpus = self.vcpus;
        config.mem_mib = self.mem_mib;
        config.disks = self.disks;
        config.console_socket = self.console_socket;
        config.serial = self.serial_log;
        // Forwarded only when stdin is a terminal (checked at run time).
        config.serial_input = true;
        config.nested_pvm_workarounds = if self.no_nested_pvm_workarounds {
            NestedPvmWorkarounds::Off
        } else if self.nested_pvm_workarounds {
            NestedPvmWorkarounds::On
        } else {
            NestedPvmWorkarounds::Auto
        };
        config
    }
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|e| {
        eprintln!(
            "husk-vmm: bad --log-level {:?} ({e}); using info",
            args.log_level
        );
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // Blocked before any thread exists so every thread inherits the mask
    // and only `forward_stop_signals` receives them.
    let stop_signals = match block_stop_signals() {
        Ok(set) => Some(set),
        Err(e) => {
            tracing::warn!("SIGINT/SIGTERM keep their default action: {e}");
            None
        }
    };

    let config = args.into_config();
    let vm = match Vm::new(&config, process_start) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("husk-vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(set) = stop_signals {
        forward_stop_signals(set, vm.exit_sender());
    }
    let reason = vm.run();
    if reason.exit_code() == 0 {
        tracing::info!("{reason}");
        ExitCode::SUCCESS
    } else {
        eprintln!("husk-vmm: {reason}");
        ExitCode::from(reason.exit_code().clamp(1, 255) as u8)
    }
}

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    let set = vmm_sys_util::signal::create_sigset(&STOP_SIGNALS)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: `set` is a valid, initialised signal set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// Turns a stop signal into an exit reason, so the VM is stopped the same
/// way as for any other reason (devices dropped, console socket removed).
fn forward_stop_signals(set: libc::sigset_t, exit: husk_vmm::exit::ExitSender) {
    let spawned = std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is initialised and `signal` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                let _ = exit.send(VmExitReason::Terminated { signal });
                return;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("stop signals not handled: {e}");
    }
}
