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
    #[error("disk spec {0:?}: expected PATH or PATH:ro")]
    InvalidDiskSpec(String),
    #[error("console socket directory {0} does not exist")]
    ConsoleSocketDir(PathBuf),
}

/// A virtio-blk disk backed by a raw host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    /// `PATH`, `PATH:ro` or `PATH:rw`: only a trailing `:ro`/`:rw` is a
    /// flag, so paths containing colons elsewhere still work.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (path, read_only) = match spec.strip_suffix(":ro") {
            Some(path) => (path, true),
            None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
        };
        if path.is_empty() {
            return Err(ConfigError::InvalidDiskSpec(spec.to_string()));
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
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
    Off,
    /// Always add them (tests, or hosts the probe misjudges).
    On,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub boot: BootSource,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub disks: Vec<DiskConfig>,
    pub console_socket: Option<PathBuf>,
    pub serial: SerialOutput,
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
            console_socket: None,
            serial: SerialOutput::Stdout,
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
        let devices = self.disks.len() + usize::from(self.console_socket.is_some());
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
        for disk in &self.disks {
            check_regular_file(&disk.path, "disk")?;
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
    fn disk_specs_parse() {
        assert_eq!(
            "a.img".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert_eq!(
            "/x/b.img:ro".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "/x/b.img".into(),
                read_only: true
            }
        );
        assert_eq!(
            "c:rw".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "c".into(),
                read_only: false
            }
        );
        assert!(":ro".parse::<DiskConfig>().is_err());
        assert!("".parse::<DiskConfig>().is_err());
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
        cfg.disks.push(DiskConfig {
            path: "/nonexistent/disk.img".into(),
            read_only: true,
        });
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
        cfg.disks = vec![
            DiskConfig {
                path: k.path().into(),
                read_only: false
            };
            20
        ];
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::TooManyDevices(20))
        ));
    }
}
