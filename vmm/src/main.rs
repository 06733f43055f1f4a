//! `husk-vmm`: boot one microVM from the command line and exit with the
//! guest's fate: 0 when it powers off or reboots, 128+N when stopped by
//! signal N (SIGINT, SIGTERM, SIGHUP), 1 with a one-line reason on stderr
//! otherwise (triple fault, KVM internal error, failed entry, device error,
//! VMM error, bad configuration).
//!
//! Stop signals: the process is gone at most [`STOP_BOUND`] (2 s) after
//! the first one, whatever the guest does. The VM is stopped the usual way
//! (every vCPU kicked out of KVM_RUN, `vm::VCPU_STOP_TIMEOUT`, then devices
//! dropped); if that has not ended the process by the deadline, the signal
//! thread ends it with `_exit(128+N)`, skipping what is left of the clean-up.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use husk_vmm::config::{BootSource, DiskConfig, NestedPvmWorkarounds, SerialOutput, VmConfig};
use husk_vmm::exit::{ExitSender, VmExitReason};
use husk_vmm::logcap::CappedWriter;
use husk_vmm::vm::Vm;
use tracing_subscriber::EnvFilter;

/// How long after the first stop signal (SIGINT, SIGTERM, SIGHUP) the
/// process may still exist; past it the signal thread exits at once.
const STOP_BOUND: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "husk-vmm",
    version,
    about = "Boot a KVM microVM from an ELF vmlinux (PVH)",
    after_help = "Exit status: 0 when the guest powers off or reboots; 128+N when stopped by \
signal N (SIGINT, SIGTERM, SIGHUP); 1 otherwise, with the reason on stderr.\n\n\
On SIGINT, SIGTERM or SIGHUP the VM is stopped (every vCPU kicked out of KVM_RUN, \
devices closed) and husk-vmm exits within 2 s, whatever the guest is doing (spinning, \
halted with interrupts off, secondary vCPUs never started); a stop that takes longer \
is cut short with the same exit status."
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
    /// A read-only disk slot of SIZE bytes (a multiple of 512; K, M, G, T
    /// suffixes), attached after the --disk disks: zeros until the control
    /// socket attaches images to it (they are read one after the other,
    /// then zeros up to SIZE, which never changes). Repeatable.
    #[arg(long = "disk-slot", value_name = "SIZE,serial=ID")]
    disk_slots: Vec<husk_vmm::config::DiskSlotConfig>,
    /// Unix socket (created, listening) for requests while the VM runs:
    /// attach images to a disk slot (their descriptors passed with
    /// SCM_RIGHTS: the jailed VMM opens no file) or empty it. See
    /// `husk_vmm::control`.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Unix socket (created, listening) bridged to the virtio console port.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// A virtio-net NIC over a tap that the caller opened with
    /// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR and passed as fd N (not
    /// close-on-exec); repeatable. Offloads are offered only where the tap
    /// accepts them.
    #[arg(long = "net", value_name = "tap-fd=N,mac=XX:XX:XX:XX:XX:XX")]
    nets: Vec<husk_vmm::config::NetConfig>,
    /// Where serial output goes: a file, or `-` for stdout.
    #[arg(long, default_value = "-")]
    serial_log: SerialOutput,
    /// The most the --serial-log file keeps (bytes); then one note, and the
    /// rest of the guest's output is dropped.
    #[arg(long, default_value_t = husk_vmm::logcap::DEFAULT_LOG_CAP)]
    serial_log_max: u64,
    /// The most husk-vmm writes to stderr (bytes); then one note, and
    /// nothing more. Repeated warnings are rate-limited as well.
    #[arg(long, default_value_t = husk_vmm::logcap::DEFAULT_LOG_CAP)]
    log_max: u64,
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
    /// Jail: an empty directory that becomes the VMM's root, in its own
    /// mount, IPC, UTS, network and PID namespaces, once everything is
    /// open (before the first KVM_RUN).
    #[arg(long, value_name = "DIR")]
    jail_root: Option<PathBuf>,
    /// Jail: the user id to run as once set up (all capabilities are
    /// dropped in any case).
    #[arg(long)]
    uid: Option<u32>,
    /// Jail: the group id to run as once set up.
    #[arg(long)]
    gid: Option<u32>,
    /// Run without the per-thread seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Debug builds: make a device worker thread break its seccomp filter
    /// (the process must die of SIGSYS).
    #[cfg(debug_assertions)]
    #[arg(long, hide = true)]
    debug_seccomp_violation: bool,
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
        config.disk_slots = self.disk_slots;
        config.control_socket = self.control_socket;
        config.console_socket = self.console_socket;
        config.nets = self.nets;
        config.serial = self.serial_log;
        config.serial_log_cap = self.serial_log_max;
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
    // Blocked first, before any thread exists, so every thread inherits
    // the mask and only the stop-signal thread receives them.
    let blocked = block_stop_signals();
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|e| {
        eprintln!(
            "husk-vmm: bad --log-level {:?} ({e}); using info",
            args.log_level
        );
        EnvFilter::new("info")
    });
    {
        use tracing_subscriber::filter::FilterExt;
        use tracing_subscriber::layer::{Layer, SubscriberExt};
        use tracing_subscriber::util::SubscriberInitExt;
        let _ = VMM_LOG.set(Mutex::new(CappedWriter::new(
            std::io::stderr(),
            args.log_max,
            "VMM log",
        )));
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(|| LogWriter)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter.and(husk_vmm::logcap::rate_limit_filter())),
            )
            .init();
    }

    // Running before the VM is built, so that the bound holds from the
    // signal on even while the VM is being set up.
    let stop_signals = match blocked.and_then(StopSignals::start) {
        Ok(stop) => Some(stop),
        Err(e) => {
            tracing::warn!("SIGINT/SIGTERM/SIGHUP keep their default action: {e}");
            unblock_stop_signals();
            None
        }
    };
    raise_open_file_limit();

    let jail = husk_vmm::jail::JailConfig {
        root: args.jail_root.clone(),
        uid: args.uid,
        gid: args.gid,
        seccomp: !args.no_seccomp,
    };
    #[cfg(debug_assertions)]
    let violate = args.debug_seccomp_violation;
    let config = args.into_config();
    // Bound now: its path is the host's, out of reach once jailed.
    let control = match config
        .control_socket
        .as_deref()
        .map(husk_vmm::control::bind)
    {
        Some(Ok(listener)) => Some(listener),
        Some(Err(e)) => {
            eprintln!("husk-vmm: control socket: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let vm = match Vm::new(&config, process_start) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("husk-vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Boot set-up is done: everything the VM needs is open.
    if let Err(e) = husk_vmm::jail::enter(&jail) {
        eprintln!("husk-vmm: {e}");
        return ExitCode::FAILURE;
    }
    #[cfg(debug_assertions)]
    if violate {
        if let Err(e) = husk_vmm::devices::virtio::seccomp_violation_self_test() {
            eprintln!("husk-vmm: {e}");
        }
    }
    if let Some(listener) = control {
        // Its thread installs the device workers' filter itself.
        if let Err(e) = husk_vmm::control::spawn(listener, vm.disk_slots()) {
            eprintln!("husk-vmm: control socket: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(stop) = &stop_signals {
        stop.attach(vm.exit_sender());
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

/// stderr through the --log-max cap (the guest can provoke warnings).
static VMM_LOG: std::sync::OnceLock<Mutex<CappedWriter<std::io::Stderr>>> =
    std::sync::OnceLock::new();

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match VMM_LOG.get().map(Mutex::lock) {
            Some(Ok(mut log)) => log.write(buf),
            _ => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn stop_sigset() -> std::io::Result<libc::sigset_t> {
    vmm_sys_util::signal::create_sigset(&STOP_SIGNALS)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    let set = stop_sigset()?;
    // SAFETY: `set` is a valid, initialised signal set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// Gives the stop signals their default action back (nobody would wait
/// for them); threads started later inherit the unblocked mask.
fn unblock_stop_signals() {
    if let Ok(set) = stop_sigset() {
        // SAFETY: `set` is a valid, initialised signal set.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// What the stop-signal thread shares with `main`.
#[derive(Default)]
struct StopState {
    /// Where to send the stop, once the VM exists.
    exit: Option<ExitSender>,
    /// The first stop signal, once one came.
    signal: Option<libc::c_int>,
}

/// The thread that waits for a stop signal, turns it into an exit reason
/// (so the VM is stopped the same way as for any other reason: vCPUs
/// kicked, devices dropped, console socket removed), and ends the process
/// itself if that has not happened `STOP_BOUND` after the signal.
struct StopSignals {
    state: Arc<Mutex<StopState>>,
}

impl StopSignals {
    fn start(set: libc::sigset_t) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(StopState::default()));
        let shared = state.clone();
        std::thread::Builder::new()
            .name("stop-signals".into())
            .spawn(move || {
                let signal = wait_for_stop_signal(&set);
                let deadline = Instant::now() + STOP_BOUND;
                forward_stop(&shared, signal);
                // Nothing here may log or print through std: the thread
                // that is stuck may be one holding the stderr lock.
                sleep_until(deadline);
                hard_exit(signal)
            })?;
        Ok(StopSignals { state })
    }

    /// Hands over the VM's exit channel; forwards a signal that came while
    /// the VM was being built.
    fn attach(&self, exit: ExitSender) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(signal) = state.signal {
            let _ = exit.send(VmExitReason::Terminated { signal });
        }
        state.exit = Some(exit);
    }
}

fn wait_for_stop_signal(set: &libc::sigset_t) -> libc::c_int {
    loop {
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` is initialised and `signal` is a valid out pointer.
        if unsafe { libc::sigwait(set, &mut signal) } == 0 {
            return signal;
        }
    }
}

/// Records the signal and sends it to the VM if there is one yet.
fn forward_stop(state: &Mutex<StopState>, signal: libc::c_int) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.signal = Some(signal);
    if let Some(exit) = &state.exit {
        // The receiver is gone only when the VM is already stopping.
        let _ = exit.send(VmExitReason::Terminated { signal });
    }
}

fn sleep_until(deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left);
    }
}

/// Ends the process now with 128+`signal`. The one-line reason goes to
/// stderr only if that cannot block (a full pipe may be what holds the
/// stuck thread); std's exit clean-up is skipped for the same reason.
fn hard_exit(signal: libc::c_int) -> ! {
    let message = format!(
        "husk-vmm: stopped by signal {signal}; exiting without finishing the clean-up (the VM did not stop within {} s)\n",
        STOP_BOUND.as_secs()
    );
    let mut stderr = libc::pollfd {
        fd: libc::STDERR_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    let writable =
        unsafe { libc::poll(&mut stderr, 1, 0) } == 1 && stderr.revents & libc::POLLOUT != 0;
    if writable {
        // SAFETY: writes `message.len()` bytes from a live buffer to fd 2;
        // the message is shorter than PIPE_BUF, so a pipe with room takes
        // it without blocking.
        unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
    }
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(128 + signal) }
}

/// A concatenated disk keeps every component file open (up to 4096 per
/// disk), beyond the usual soft limit of 1024: use the hard limit.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                tracing::debug!("cannot raise the open file limit to {}", limit.rlim_max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_vmm::config::NestedPvmWorkarounds;

    fn parse(extra: &[&str]) -> VmConfig {
        let mut argv = vec!["husk-vmm", "--raw-payload", "/p"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap().into_config()
    }

    #[test]
    fn nested_pvm_flags_map_to_on_off_and_default_to_auto() {
        use NestedPvmWorkarounds::*;
        assert_eq!(parse(&[]).nested_pvm_workarounds, Auto);
        assert_eq!(
            parse(&["--nested-pvm-workarounds"]).nested_pvm_workarounds,
            On
        );
        assert_eq!(
            parse(&["--no-nested-pvm-workarounds"]).nested_pvm_workarounds,
            Off
        );
        // Neither flag given means Auto: the only setting that probes.
        let never = || -> bool { panic!("probed despite the flag") };
        assert!(parse(&["--nested-pvm-workarounds"])
            .nested_pvm_workarounds
            .resolve(never));
        assert!(!parse(&["--no-nested-pvm-workarounds"])
            .nested_pvm_workarounds
            .resolve(never));
        assert!(Args::try_parse_from([
            "husk-vmm",
            "--raw-payload",
            "/p",
            "--nested-pvm-workarounds",
            "--no-nested-pvm-workarounds"
        ])
        .is_err());
    }

    #[test]
    fn disk_flags_parse_into_the_config() {
        let config = parse(&[
            "--disk",
            "/a.img",
            "--disk",
            "/l.list:ro,concat,serial=image-1",
        ]);
        assert_eq!(config.disks[0], DiskConfig::raw("/a.img", false));
        assert_eq!(
            config.disks[1],
            DiskConfig {
                serial: Some("image-1".into()),
                concat: true,
                ..DiskConfig::raw("/l.list", true)
            }
        );
        let err = Args::try_parse_from(["husk-vmm", "--raw-payload", "/p", "--disk", "/l,concat"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("concat disks are read-only"), "{err}");
    }

    #[test]
    fn disk_slots_and_the_control_socket_parse_into_the_config() {
        let config = parse(&[
            "--disk-slot",
            "16G,serial=husk-pod-1",
            "--disk-slot",
            "1048576,serial=husk-pod-2",
            "--control-socket",
            "/r/vmm.sock",
        ]);
        assert_eq!(config.disk_slots.len(), 2);
        assert_eq!(config.disk_slots[0].capacity, 16 << 30);
        assert_eq!(config.disk_slots[0].serial, "husk-pod-1");
        assert_eq!(config.disk_slots[1].capacity, 1 << 20);
        assert_eq!(
            config.control_socket.as_deref(),
            Some(std::path::Path::new("/r/vmm.sock"))
        );
        for bad in [
            "16G",
            "100,serial=x",
            "0,serial=x",
            "1Q,serial=x",
            "1G,serial=a,b",
            "1G,serial=a b",
        ] {
            assert!(
                Args::try_parse_from(["husk-vmm", "--raw-payload", "/p", "--disk-slot", bad])
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_signal_before_the_vm_exists_is_forwarded_on_attach() {
        let state = Mutex::new(StopState::default());
        forward_stop(&state, libc::SIGTERM);
        let stop = StopSignals {
            state: Arc::new(state),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        stop.attach(tx);
        assert_eq!(
            rx.try_recv().unwrap(),
            VmExitReason::Terminated {
                signal: libc::SIGTERM
            }
        );

        let stop = StopSignals {
            state: Arc::new(Mutex::new(StopState::default())),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        stop.attach(tx);
        assert!(rx.try_recv().is_err(), "nothing to forward yet");
        forward_stop(&stop.state, libc::SIGINT);
        assert_eq!(
            rx.try_recv().unwrap(),
            VmExitReason::Terminated {
                signal: libc::SIGINT
            }
        );
    }
}
