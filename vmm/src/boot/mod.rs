//! Putting the guest's first instructions in memory: the ELF vmlinux via
//! linux-loader and its PVH entry note (`pvh`), the command line
//! (`cmdline`), the initrd (`initrd`), the nested-PVM workarounds
//! (`nested_pvm`); or, for tests of the VMM itself, a raw payload.
//!
//! Only PVH is supported: our guest kernel is built with CONFIG_PVH, and
//! PVH needs no real-mode setup code nor a zero page.

pub mod cmdline;
pub mod initrd;
pub mod mptable;
pub mod nested_pvm;
pub mod pvh;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::memory::{low_ram_end, CMDLINE_ADDRESS, HIGH_MEMORY_START, RAW_PAYLOAD_ADDRESS};

#[derive(Debug, Error)]
pub enum BootError {
    #[error("{what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading kernel {path}: {source}")]
    LoadKernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {0} has no PVH entry note: build it with CONFIG_PVH=y (guest-kernel-config/build.sh does)")]
    NoPvhEntry(PathBuf),
    #[error("kernel {path} ends at {kernel_end:#x}, beyond low RAM ({low_ram_end:#x}): give the VM more memory")]
    KernelTooLarge {
        path: PathBuf,
        kernel_end: u64,
        low_ram_end: u64,
    },
    #[error("initrd {path}: {source}")]
    InitrdPlacement {
        path: PathBuf,
        source: initrd::InitrdError,
    },
    #[error("writing initrd {path} to guest memory: {source}")]
    InitrdCopy {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("writing the command line: {0}")]
    CmdlineCopy(linux_loader::loader::Error),
    #[error("writing the PVH start info: {0}")]
    StartInfo(#[from] linux_loader::configurator::Error),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error("raw payload {path} ({size} bytes) does not fit in guest RAM")]
    PayloadTooLarge { path: PathBuf, size: u64 },
    #[error("writing raw payload {path}: {source}")]
    PayloadCopy {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the boot vCPU starts and what it finds in EBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// 32-bit physical entry point (paging off).
    pub entry: GuestAddress,
    /// PVH start info address (0 for a raw payload).
    pub start_info: GuestAddress,
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Loads a PVH vmlinux, its command line and optional initrd.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_mib: u64,
    vmlinux: &Path,
    initrd_path: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<BootEntry, BootError> {
    let mut kernel = open("kernel", vmlinux)?;
    let loaded = Elf::load(
        mem,
        None,
        &mut kernel,
        Some(GuestAddress(HIGH_MEMORY_START)),
    )
    .map_err(|source| BootError::LoadKernel {
        path: vmlinux.to_path_buf(),
        source,
    })?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr,
        _ => return Err(BootError::NoPvhEntry(vmlinux.to_path_buf())),
    };
    let low_end = low_ram_end(mem_mib);
    if loaded.kernel_end > low_end {
        return Err(BootError::KernelTooLarge {
            path: vmlinux.to_path_buf(),
            kernel_end: loaded.kernel_end,
            low_ram_end: low_end,
        });
    }
    tracing::debug!(
        entry = format_args!("{:#x}", entry.0),
        kernel_end = format_args!("{:#x}", loaded.kernel_end),
        "kernel loaded"
    );

    load_cmdline(mem, GuestAddress(CMDLINE_ADDRESS), cmdline).map_err(BootError::CmdlineCopy)?;

    let initrd = match initrd_path {
        Some(path) => Some(load_initrd(mem, path, loaded.kernel_end, low_end)?),
        None => None,
    };
    let start_info = pvh::write_start_info(mem, mem_mib, initrd)?;
    Ok(BootEntry { entry, start_info })
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    low_end: u64,
) -> Result<(GuestAddress, u64), BootError> {
    let mut file = open("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let addr = initrd::initrd_address(size, kernel_end, low_end).map_err(|source| {
        BootError::InitrdPlacement {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdPlacement {
        path: path.to_path_buf(),
        source: initrd::InitrdError::TooLarge {
            size,
            kernel_end,
            low_ram_end: low_end,
        },
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| BootError::InitrdCopy {
            path: path.to_path_buf(),
            source,
        })?;
    tracing::debug!(addr = format_args!("{addr:#x}"), size, "initrd loaded");
    Ok((GuestAddress(addr), size))
}

/// Loads raw machine code at `RAW_PAYLOAD_ADDRESS`; it is entered there in
/// the same 32-bit state as a PVH kernel, with EBX = 0.
pub fn load_raw_payload(mem: &GuestMemoryMmap, path: &Path) -> Result<BootEntry, BootError> {
    let code = std::fs::read(path).map_err(|source| BootError::Open {
        what: "raw payload",
        path: path.to_path_buf(),
        source,
    })?;
    let size = code.len() as u64;
    let entry = GuestAddress(RAW_PAYLOAD_ADDRESS);
    if mem.checked_offset(entry, code.len().max(1)).is_none() {
        return Err(BootError::PayloadTooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    mem.write_slice(&code, entry)
        .map_err(|source| BootError::PayloadCopy {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(BootEntry {
        entry,
        start_info: GuestAddress(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::Write;

    #[test]
    fn raw_payload_is_copied_to_its_address() {
        let mem = create_guest_memory(64).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0xf4, 0xeb, 0xfd]).unwrap();
        let entry = load_raw_payload(&mem, f.path()).unwrap();
        assert_eq!(entry.entry, GuestAddress(RAW_PAYLOAD_ADDRESS));
        let mut buf = [0u8; 3];
        mem.read_slice(&mut buf, entry.entry).unwrap();
        assert_eq!(buf, [0xf4, 0xeb, 0xfd]);
    }

    #[test]
    fn non_elf_kernel_fails_to_load() {
        let mem = create_guest_memory(64).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 256]).unwrap();
        let cmdline = Cmdline::try_from("console=ttyS0", 64).unwrap();
        let err = load_kernel(&mem, 64, f.path(), None, &cmdline).unwrap_err();
        assert!(matches!(err, BootError::LoadKernel { .. }), "{err}");
    }
}
