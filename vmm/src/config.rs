//! What to run: the validated description of one microVM. `main.rs` turns
//! command-line flags into a `VmConfig`; library users (tests, the runtime)
//! build one directly. `validate` is the single place that checks it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use crate::memory::{MAX_MEM_MIB, MIN_MEM_MIB, VIRTIO_MMIO_MAX_DEVICES};

/// Most vCPUs we start: APIC IDs stay below 255 (xAPIC, no x2APIC routing
/// tables needed) with plenty of margin for a microVM.
pub const MAX_VCPUS: u8 = 64;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--disk-slot {spec:?}: {reason}")]
    InvalidSlotSpec { spec: String, reason: String },
    #[error(
        "disk slots are swapped through the control socket: --disk-slot needs --control-socket"
    )]
    SlotsWithoutControlSocket,
    #[error("kernel {path}: {source}")]
    KernelUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {0}: not an ELF vmlinux (husk-vmm boots the uncompressed vmlinux with its PVH entry, not a bzImage)")]
    KernelNotElf(PathBuf),
    #[error("kernel {0}: not a 64-bit little-endian x86_64 ELF")]
    KernelWrongArch(PathBuf),
    #[error("{what} {path}: {source}")]
    FileUnreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {0} is not a regular file", what = .1)]
    NotAFile(PathBuf, &'static str),
    #[error("vCPU count {0} is outside 1..={MAX_VCPUS}")]
    InvalidVcpus(u8),
    #[error("memory {0} MiB is outside {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB")]
    InvalidMemory(u64),
    #[error("too many virtio devices: {0} requested, at most {VIRTIO_MMIO_MAX_DEVICES}")]
    TooManyDevices(usize),
    #[error("disk spec {spec:?}: {reason} (expected PATH[:ro][,serial=ID] or LISTFILE:ro,concat[,serial=ID])")]
    InvalidDiskSpec { spec: String, reason: String },
    #[error("disk serial {serial:?} {reason}: a serial is 1 to {MAX_DISK_SERIAL_LEN} characters from A-Z a-z 0-9 . _ -")]
    InvalidDiskSerial { serial: String, reason: String },
    #[error("disk serial {0:?} is given to more than one disk")]
    DuplicateDiskSerial(String),
    #[error("concatenated disk {0}: must be read-only (LISTFILE:ro,concat)")]
    ConcatNotReadOnly(PathBuf),
    #[error("console socket directory {0} does not exist")]
    ConsoleSocketDir(PathBuf),
    #[error("net spec {spec:?}: {reason} (expected tap-fd=N,mac=XX:XX:XX:XX:XX:XX)")]
    InvalidNetSpec { spec: String, reason: String },
    #[error("net tap-fd={0}: not an open file descriptor of this process")]
    NetFdNotOpen(i32),
    #[error("net tap-fd={0} is given to more than one NIC")]
    DuplicateNetFd(i32),
}

/// A virtio-net NIC over a tap the parent opened with IFF_VNET_HDR and left
/// open (not close-on-exec) as `tap_fd`; husk-vmm takes it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap_fd: i32,
    pub mac: [u8; 6],
}

/// A read-only disk slot (`--disk-slot SIZE,serial=ID`): a disk of fixed
/// capacity, zeros until images are attached through the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSlotConfig {
    /// Capacity in bytes, a non-zero multiple of 512.
    pub capacity: u64,
    pub serial: String,
}

impl FromStr for DiskSlotConfig {
    type Err = ConfigError;

    /// `SIZE,serial=ID`; SIZE in bytes or with a K, M, G or T suffix.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ConfigError::InvalidSlotSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = spec.split(',');
        let size = parts.next().unwrap_or_default();
        let (digits, unit) = match size.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((at, _)) => size.split_at(at),
            None => (size, ""),
        };
        let shift = match unit {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(invalid("SIZE is bytes, or a number with K, M, G or T")),
        };
        let capacity = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1u64 << shift))
            .filter(|n| *n > 0 && n % 512 == 0 && *n <= i64::MAX as u64)
            .ok_or_else(|| invalid("SIZE must be a non-zero multiple of 512 bytes"))?;
        let mut serial = None;
        for option in parts {
            match option.split_once('=') {
                Some(("serial", value)) if serial.is_none() => {
                    validate_disk_serial(value)?;
                    serial = Some(value.to_string());
                }
                _ => return Err(invalid(&format!("unknown or repeated option {option:?}"))),
            }
        }
        Ok(DiskSlotConfig {
            capacity,
            serial: serial.ok_or_else(|| invalid("serial= is missing"))?,
        })
    }
}

impl FromStr for NetConfig {
    type Err = ConfigError;

    /// `tap-fd=N,mac=XX:XX:XX:XX:XX:XX`, in any order.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ConfigError::InvalidNetSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (mut tap_fd, mut mac) = (None, None);
        for option in spec.split(',') {
            match option.split_once('=') {
                Some(("tap-fd", value)) if tap_fd.is_none() => {
                    let fd: i32 = value
                        .parse()
                        .map_err(|_| invalid("tap-fd is not a number"))?;
                    // 0-2 are stdio, never a tap handed over.
                    if fd < 3 {
                        return Err(invalid("tap-fd must be 3 or more"));
                    }
                    tap_fd = Some(fd);
                }
                Some(("mac", value)) if mac.is_none() => {
                    let parsed =
                        parse_mac(value).ok_or_else(|| invalid("mac is not XX:XX:XX:XX:XX:XX"))?;
                    if parsed[0] & 1 != 0 {
                        return Err(invalid("mac is a multicast address"));
                    }
                    mac = Some(parsed);
                }
                _ => return Err(invalid(&format!("unknown or repeated option {option:?}"))),
            }
        }
        Ok(NetConfig {
            tap_fd: tap_fd.ok_or_else(|| invalid("tap-fd= is missing"))?,
            mac: mac.ok_or_else(|| invalid("mac= is missing"))?,
        })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Longest disk serial: the virtio-blk GET_ID answer is 20 bytes.
pub const MAX_DISK_SERIAL_LEN: usize = 20;

/// A virtio-blk disk: a raw host file, or (`concat`) read-only image
/// files presented back to back as one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image; with `concat`, the list file naming the components.
    pub path: PathBuf,
    pub read_only: bool,
    /// What the guest reads from /sys/block/vdX/serial (virtio-blk
    /// GET_ID); `None` gives the guest's device name (vda, vdb, ...).
    pub serial: Option<String>,
    /// `path` is a text file naming component images, one absolute path
    /// per line (blank lines ignored); the disk is their concatenation.
    /// Each component is a non-zero multiple of 512 bytes; always read-only.
    pub concat: bool,
}

impl DiskConfig {
    /// A raw image with the default serial.
    pub fn raw(path: impl Into<PathBuf>, read_only: bool) -> Self {
        DiskConfig {
            path: path.into(),
            read_only,
            serial: None,
            concat: false,
        }
    }
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    /// `PATH[:ro|:rw][,OPTION]...` with the options `serial=ID` and
    /// `concat` (which needs `:ro`). Options start at the first comma, so
    /// PATH cannot contain one; only a trailing `:ro`/`:rw` before it is a
    /// flag, so paths containing colons elsewhere still work.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ConfigError::InvalidDiskSpec {
            spec: spec.to_string(),
            reason,
        };
        let (head, options) = match spec.split_once(',') {
            Some((head, options)) => (head, Some(options)),
            None => (spec, None),
        };
        let (path, read_only, rw_given) = match head.strip_suffix(":ro") {
            Some(path) => (path, true, false),
            None => match head.strip_suffix(":rw") {
                Some(path) => (path, false, true),
                None => (head, false, false),
            },
        };
        if path.is_empty() {
            return Err(invalid("the path is empty".into()));
        }
        let mut disk = DiskConfig::raw(path, read_only);
        for option in options.into_iter().flat_map(|o| o.split(',')) {
            match option.split_once('=') {
                Some(("serial", id)) => {
                    if disk.serial.is_some() {
                        return Err(invalid("serial= is given twice".into()));
                    }
                    validate_disk_serial(id)?;
                    disk.serial = Some(id.to_string());
                }
                None if option == "concat" => {
                    if disk.concat {
                        return Err(invalid("concat is given twice".into()));
                    }
                    disk.concat = true;
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown option {option:?}: the options are serial=ID and concat, \
                         and neither PATH nor ID may contain a comma"
                    )))
                }
            }
        }
        if disk.concat && !read_only {
            let reason = if rw_given {
                "concat disks are read-only; :rw is refused"
            } else {
                "concat disks are read-only: write LISTFILE:ro,concat"
            };
            return Err(invalid(reason.into()));
        }
        Ok(disk)
    }
}

/// Checks a disk serial: 1 to 20 bytes from `[A-Za-z0-9._-]`, so that it
/// fits the GET_ID answer, reads back unchanged from sysfs and needs no
/// quoting anywhere.
pub fn validate_disk_serial(serial: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidDiskSerial {
        serial: serial.to_string(),
        reason,
    };
    if serial.is_empty() {
        return Err(invalid("is empty".into()));
    }
    if serial.len() > MAX_DISK_SERIAL_LEN {
        return Err(invalid(format!(
            "is {} bytes, longer than {MAX_DISK_SERIAL_LEN}",
            serial.len()
        )));
    }
    if let Some(c) = serial
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        let reason = match c {
            '\0' => "contains a NUL byte".to_string(),
            ',' => "contains a comma".to_string(),
            c => format!("contains {c:?}"),
        };
        return Err(invalid(reason));
    }
    Ok(())
}

/// Where the 8250 serial output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialOutput {
    #[default]
    Stdout,
    File(PathBuf),
    /// Discarded (library users that only care about the exit).
    None,
}

impl FromStr for SerialOutput {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "-" {
            SerialOutput::Stdout
        } else {
            SerialOutput::File(PathBuf::from(s))
        })
    }
}

/// What the vCPU starts executing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// An ELF vmlinux entered through its PVH note.
    Kernel {
        vmlinux: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Raw 32-bit machine code loaded at `memory::RAW_PAYLOAD_ADDRESS` and
    /// entered there in the PVH register state (flat 32-bit protected mode,
    /// paging off). For tests of the VMM itself, not for guests.
    RawPayload { path: PathBuf },
}

/// Whether to add the kernel parameters that work around nested PVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NestedPvmWorkarounds {
    /// Add them when the host probe reports nested PVM.
    #[default]
    Auto,
    /// Never add them, and do not probe the host.
    Off,
    /// Always add them, and do not probe the host (husk has probed already,
    /// or the probe misjudges this host).
    On,
}

impl NestedPvmWorkarounds {
    /// Whether the parameters go on the command line. `probe` (which opens
    /// /dev/kvm and creates a throw-away VM) runs only for `Auto`: husk
    /// passes `On` or `Off` from its own probe, so the host is not probed
    /// twice.
    pub fn resolve(self, probe: impl FnOnce() -> bool) -> bool {
        match self {
            NestedPvmWorkarounds::On => true,
            NestedPvmWorkarounds::Off => false,
            NestedPvmWorkarounds::Auto => probe(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub boot: BootSource,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub disks: Vec<DiskConfig>,
    /// Read-only disk slots, attached after the disks (see `block::slot`).
    pub disk_slots: Vec<DiskSlotConfig>,
    /// Where the VMM takes requests while it runs (swapping disk slots).
    pub control_socket: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// virtio-net NICs, attached after the console.
    pub nets: Vec<NetConfig>,
    pub serial: SerialOutput,
    /// The most a serial log file may hold (the guest controls what it
    /// gets); see `logcap`.
    pub serial_log_cap: u64,
    /// Forward host stdin to the serial port (only sensible when it is a tty).
    pub serial_input: bool,
    pub nested_pvm_workarounds: NestedPvmWorkarounds,
}

impl VmConfig {
    /// Defaults for everything but what to boot.
    pub fn new(boot: BootSource) -> Self {
        VmConfig {
            boot,
            vcpus: 1,
            mem_mib: 256,
            disks: Vec::new(),
            disk_slots: Vec::new(),
            control_socket: None,
            console_socket: None,
            nets: Vec::new(),
            serial: SerialOutput::Stdout,
            serial_log_cap: crate::logcap::DEFAULT_LOG_CAP,
            serial_input: false,
            nested_pvm_workarounds: NestedPvmWorkarounds::Auto,
        }
    }

    /// Checks everything that can be checked before touching KVM, with an
    /// error that names the offending input.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::InvalidVcpus(self.vcpus));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::InvalidMemory(self.mem_mib));
        }
        let devices = self.disks.len()
            + self.disk_slots.len()
            + usize::from(self.console_socket.is_some())
            + self.nets.len();
        if !self.disk_slots.is_empty() && self.control_socket.is_none() {
            return Err(ConfigError::SlotsWithoutControlSocket);
        }
        if devices > VIRTIO_MMIO_MAX_DEVICES as usize {
            return Err(ConfigError::TooManyDevices(devices));
        }
        match &self.boot {
            BootSource::Kernel {
                vmlinux, initrd, ..
            } => {
                check_vmlinux(vmlinux)?;
                if let Some(initrd) = initrd {
                    check_regular_file(initrd, "initrd")?;
                }
            }
            BootSource::RawPayload { path } => check_regular_file(path, "raw payload")?,
        }
        let mut serials = std::collections::HashSet::new();
        for (index, disk) in self.disks.iter().enumerate() {
            if let Some(serial) = &disk.serial {
                validate_disk_serial(serial)?;
            }
            let serial = disk
                .serial
                .clone()
                .unwrap_or_else(|| crate::devices::wiring::disk_name(index));
            if !serials.insert(serial.clone()) {
                return Err(ConfigError::DuplicateDiskSerial(serial));
            }
            if disk.concat {
                if !disk.read_only {
                    return Err(ConfigError::ConcatNotReadOnly(disk.path.clone()));
                }
                check_regular_file(&disk.path, "disk list")?;
            } else {
                check_regular_file(&disk.path, "disk")?;
            }
        }
        for slot in &self.disk_slots {
            validate_disk_serial(&slot.serial)?;
            if !serials.insert(slot.serial.clone()) {
                return Err(ConfigError::DuplicateDiskSerial(slot.serial.clone()));
            }
        }
        let mut fds = std::collections::HashSet::new();
        for net in &self.nets {
            if !fds.insert(net.tap_fd) {
                return Err(ConfigError::DuplicateNetFd(net.tap_fd));
            }
            // SAFETY: F_GETFD only asks whether the fd is open.
            if unsafe { libc::fcntl(net.tap_fd, libc::F_GETFD) } < 0 {
                return Err(ConfigError::NetFdNotOpen(net.tap_fd));
            }
        }
        if let Some(socket) = &self.console_socket {
            let dir = socket
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                return Err(ConfigError::ConsoleSocketDir(dir.to_path_buf()));
            }
        }
        Ok(())
    }
}

fn check_regular_file(path: &Path, what: &'static str) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::FileUnreadable {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile(path.to_path_buf(), what));
    }
    Ok(())
}

/// The ELF header checks that give a useful message before linux-loader
/// gives a terse one: magic, 64-bit, little-endian, EM_X86_64.
fn check_vmlinux(path: &Path) -> Result<(), ConfigError> {
    const EM_X86_64: u16 = 62;
    let unreadable = |source| ConfigError::KernelUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut header = [0u8; 20];
    let mut file = File::open(path).map_err(unreadable)?;
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err(ConfigError::NotAFile(path.to_path_buf(), "kernel"));
    }
    if file.read_exact(&mut header).is_err() || &header[..4] != b"\x7fELF" {
        return Err(ConfigError::KernelNotElf(path.to_path_buf()));
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    // EI_CLASS = 2 (64-bit), EI_DATA = 1 (little-endian).
    if header[4] != 2 || header[5] != 1 || machine != EM_X86_64 {
        return Err(ConfigError::KernelWrongArch(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_slots_need_the_control_socket_and_unique_serials() {
        let payload = tempfile::NamedTempFile::new().unwrap();
        let mut config = VmConfig::new(BootSource::RawPayload {
            path: payload.path().to_path_buf(),
        });
        config.disk_slots = vec!["1M,serial=husk-pod-1".parse().unwrap()];
        assert!(matches!(
            config.validate(),
            Err(ConfigError::SlotsWithoutControlSocket)
        ));
        config.control_socket = Some("/r/vmm.sock".into());
        config.validate().unwrap();
        config
            .disk_slots
            .push("2M,serial=husk-pod-1".parse().unwrap());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::DuplicateDiskSerial(_))
        ));
    }
    use std::io::Write;

    fn elf_header(class: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = 1;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn kernel_config(path: &Path) -> VmConfig {
        VmConfig::new(BootSource::Kernel {
            vmlinux: path.to_path_buf(),
            initrd: None,
            cmdline: String::new(),
        })
    }

    #[test]
    fn net_specs_parse_and_bad_ones_are_named() {
        let net: NetConfig = "tap-fd=7,mac=02:00:0a:58:00:02".parse().unwrap();
        assert_eq!(net.tap_fd, 7);
        assert_eq!(net.mac, [2, 0, 0x0a, 0x58, 0, 2]);
        let net: NetConfig = "mac=02:00:0a:58:00:03,tap-fd=9".parse().unwrap();
        assert_eq!(net.tap_fd, 9);
        for bad in [
            "tap-fd=7",
            "mac=02:00:0a:58:00:02",
            "tap-fd=x,mac=02:00:0a:58:00:02",
            "tap-fd=1,mac=02:00:0a:58:00:02",
            "tap-fd=7,mac=03:00:0a:58:00:02",
            "tap-fd=7,mac=02:00:0a:58:00",
            "tap-fd=7,tap-fd=8,mac=02:00:0a:58:00:02",
            "tap-fd=7,mac=02:00:0a:58:00:02,vhost=on",
        ] {
            let err = bad.parse::<NetConfig>().unwrap_err().to_string();
            assert!(err.contains("net spec"), "{bad}: {err}");
        }
    }

    #[test]
    fn disk_specs_parse() {
        assert_eq!(
            "a.img".parse::<DiskConfig>().unwrap(),
            DiskConfig::raw("a.img", false)
        );
        assert_eq!(
            "/x/b.img:ro".parse::<DiskConfig>().unwrap(),
            DiskConfig::raw("/x/b.img", true)
        );
        assert_eq!(
            "c:rw".parse::<DiskConfig>().unwrap(),
            DiskConfig::raw("c", false)
        );
        assert_eq!(
            "/a:b/c.img".parse::<DiskConfig>().unwrap(),
            DiskConfig::raw("/a:b/c.img", false),
            "colons inside the path are kept"
        );
        assert!(":ro".parse::<DiskConfig>().is_err());
        assert!("".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn disk_specs_with_serial_and_concat_parse() {
        let serial = |s: &str| Some(s.to_string());
        assert_eq!(
            "/d/data.img,serial=data-1".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                serial: serial("data-1"),
                ..DiskConfig::raw("/d/data.img", false)
            }
        );
        assert_eq!(
            "/d/layer.erofs:ro,serial=L_0.v2"
                .parse::<DiskConfig>()
                .unwrap(),
            DiskConfig {
                serial: serial("L_0.v2"),
                ..DiskConfig::raw("/d/layer.erofs", true)
            }
        );
        assert_eq!(
            "/d/scratch:rw,serial=s".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                serial: serial("s"),
                ..DiskConfig::raw("/d/scratch", false)
            }
        );
        let twenty = "A".repeat(MAX_DISK_SERIAL_LEN);
        assert_eq!(
            format!("x,serial={twenty}")
                .parse::<DiskConfig>()
                .unwrap()
                .serial,
            Some(twenty)
        );
        let concat = DiskConfig {
            concat: true,
            ..DiskConfig::raw("/run/img.layers", true)
        };
        assert_eq!(
            "/run/img.layers:ro,concat".parse::<DiskConfig>().unwrap(),
            concat
        );
        let with_serial = DiskConfig {
            serial: serial("image-1"),
            ..concat.clone()
        };
        assert_eq!(
            "/run/img.layers:ro,concat,serial=image-1"
                .parse::<DiskConfig>()
                .unwrap(),
            with_serial
        );
        assert_eq!(
            "/run/img.layers:ro,serial=image-1,concat"
                .parse::<DiskConfig>()
                .unwrap(),
            with_serial,
            "options in any order"
        );
    }

    /// Every bad spec is refused with a message that says what is wrong.
    #[test]
    fn bad_disk_specs_are_refused_clearly() {
        let cases = [
            ("a.img,serial=", "is empty"),
            (
                "a.img,serial=abcdefghijklmnopqrstu",
                "21 bytes, longer than 20",
            ),
            ("a.img,serial=a b", "contains ' '"),
            ("a.img,serial=a/b", "contains '/'"),
            ("a.img,serial=caf\u{e9}", "contains '\u{e9}'"),
            ("a.img,serial=a\0b", "contains a NUL byte"),
            ("a.img,serial=a,b", "unknown option \"b\""),
            ("a.img,serial=a,serial=b", "serial= is given twice"),
            ("a.img,bogus", "unknown option \"bogus\""),
            ("a.img,ro", "unknown option \"ro\""),
            ("a.img:ro,", "unknown option \"\""),
            (
                "l.list,concat",
                "concat disks are read-only: write LISTFILE:ro,concat",
            ),
            (
                "l.list:rw,concat",
                "concat disks are read-only; :rw is refused",
            ),
            ("l.list:ro,concat,concat", "concat is given twice"),
            (",serial=x", "the path is empty"),
            (":ro,concat", "the path is empty"),
        ];
        for (spec, expected) in cases {
            let err = spec.parse::<DiskConfig>().unwrap_err();
            let message = err.to_string();
            assert!(message.contains(expected), "{spec:?}: {message}");
        }
        let err = "a.img,serial=a\0b".parse::<DiskConfig>().unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidDiskSerial { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("a serial is 1 to 20 characters from A-Z a-z 0-9 . _ -"),
            "{err}"
        );
    }

    #[test]
    fn serial_validation_accepts_exactly_the_charset() {
        validate_disk_serial("AZaz09._-").unwrap();
        validate_disk_serial(&"x".repeat(20)).unwrap();
        assert!(validate_disk_serial(&"x".repeat(21)).is_err());
        assert!(validate_disk_serial("").is_err());
        for bad in [",", "\0", " ", "+", ":", "=", "\n", "\u{7f}", "\u{e9}"] {
            assert!(validate_disk_serial(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn disks_are_validated_with_their_serials_and_kind() {
        let k = file_with(&elf_header(2, 62));
        let img = file_with(&[0u8; 512]);
        let mut cfg = kernel_config(k.path());
        cfg.disks = vec![
            DiskConfig::raw(img.path(), false),
            DiskConfig {
                serial: Some("data".into()),
                ..DiskConfig::raw(img.path(), true)
            },
        ];
        cfg.validate().unwrap();

        // The first disk's default serial is vda.
        cfg.disks[1].serial = Some("vda".into());
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::DuplicateDiskSerial(s)) if s == "vda"
        ));
        cfg.disks[1].serial = Some("bad serial".into());
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::InvalidDiskSerial { .. })
        ));

        cfg.disks[1] = DiskConfig {
            concat: true,
            ..DiskConfig::raw(img.path(), false)
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::ConcatNotReadOnly(_))
        ));
        cfg.disks[1].read_only = true;
        cfg.validate().unwrap();
        cfg.disks[1].path = "/nonexistent/layers.list".into();
        let err = cfg.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("disk list /nonexistent/layers.list"),
            "{err}"
        );
    }

    #[test]
    fn nested_pvm_flags_decide_without_probing() {
        let never = || -> bool { panic!("the host must not be probed") };
        assert!(NestedPvmWorkarounds::On.resolve(never));
        assert!(!NestedPvmWorkarounds::Off.resolve(never));
        let mut probed = 0;
        let answer = NestedPvmWorkarounds::Auto.resolve(|| {
            probed += 1;
            true
        });
        assert!(answer);
        assert_eq!(probed, 1, "Auto probes once");
    }

    #[test]
    fn serial_output_dash_is_stdout() {
        assert_eq!("-".parse::<SerialOutput>().unwrap(), SerialOutput::Stdout);
        assert_eq!(
            "log".parse::<SerialOutput>().unwrap(),
            SerialOutput::File("log".into())
        );
    }

    #[test]
    fn x86_64_elf_kernel_is_accepted() {
        let k = file_with(&elf_header(2, 62));
        kernel_config(k.path()).validate().unwrap();
    }

    #[test]
    fn bzimage_and_wrong_arch_are_refused_clearly() {
        let bz = file_with(b"MZ\x00\x00not an elf at all, a bzImage maybe");
        let err = kernel_config(bz.path()).validate().unwrap_err();
        assert!(matches!(err, ConfigError::KernelNotElf(_)), "{err}");
        assert!(err.to_string().contains("not an ELF vmlinux"));

        let arm = file_with(&elf_header(2, 183));
        assert!(matches!(
            kernel_config(arm.path()).validate(),
            Err(ConfigError::KernelWrongArch(_))
        ));
        let elf32 = file_with(&elf_header(1, 62));
        assert!(matches!(
            kernel_config(elf32.path()).validate(),
            Err(ConfigError::KernelWrongArch(_))
        ));
    }

    #[test]
    fn missing_files_name_the_path() {
        let err = kernel_config(Path::new("/nonexistent/vmlinux"))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");

        let k = file_with(&elf_header(2, 62));
        let mut cfg = kernel_config(k.path());
        cfg.disks
            .push(DiskConfig::raw("/nonexistent/disk.img", true));
        let err = cfg.validate().unwrap_err();
        assert!(
            err.to_string().starts_with("disk /nonexistent/disk.img"),
            "{err}"
        );
    }

    #[test]
    fn sizes_are_checked() {
        let k = file_with(&elf_header(2, 62));
        let mut cfg = kernel_config(k.path());
        cfg.vcpus = 0;
        assert!(matches!(cfg.validate(), Err(ConfigError::InvalidVcpus(0))));
        cfg.vcpus = MAX_VCPUS + 1;
        assert!(cfg.validate().is_err());
        cfg.vcpus = 2;
        cfg.mem_mib = 8;
        assert!(matches!(cfg.validate(), Err(ConfigError::InvalidMemory(8))));
        cfg.mem_mib = 512;
        cfg.disks = vec![DiskConfig::raw(k.path(), false); 20];
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::TooManyDevices(20))
        ));
    }
}
