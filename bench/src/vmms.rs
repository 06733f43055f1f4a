//! The two VMMs under test and the one guest they both run: same kernel,
//! command line, memory, vCPUs, two virtio-blk disks named by serial as
//! `husk run` names them (a scratch disk, and the read-only layers disk:
//! layer files concatenated, through husk-vmm's list file or QEMU's VMDK
//! descriptor, both written by husk's own code), a virtio-console port on a
//! Unix socket and the serial port to a file.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    HuskVmm,
    Qemu,
}

impl Vmm {
    pub fn name(self) -> &'static str {
        match self {
            Vmm::HuskVmm => "husk-vmm",
            Vmm::Qemu => "qemu microvm",
        }
    }
}

/// Kernel parameters every benchmark guest gets. `panic=0` keeps a guest that
/// finds no root file system halted instead of rebooting, so on a fast host
/// the VMM is still alive when its memory is sampled.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=0";

#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub kernel: PathBuf,
    /// The full command line, nested-PVM parameters included when needed.
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    /// Attached read-write (serial `husk-scratch`).
    pub disk_rw: PathBuf,
    /// The layers disk as husk-vmm gets it: a list file of layer images
    /// (see [`write_layer_listings`]), serial `husk-layers`.
    pub layers_list: PathBuf,
    /// The same layers as QEMU gets them: a VMDK descriptor.
    pub layers_vmdk: PathBuf,
}

/// Writes the layers disk's two descriptions for `layers` into `dir` with
/// husk's own code, as `husk run` does: returns (husk-vmm list, VMDK).
pub fn write_layer_listings(layers: &[PathBuf], dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let list = dir.join("layers.list");
    let vmdk = dir.join("layers.vmdk");
    std::fs::write(&list, husk::sandbox::husk_vmm::concat_listing(layers)?)?;
    std::fs::write(&vmdk, husk::sandbox::qemu::vmdk_descriptor(layers)?)?;
    Ok((list, vmdk))
}

/// Per-run paths: each run gets a fresh socket and serial log.
#[derive(Clone, Debug)]
pub struct RunPaths {
    pub console_socket: PathBuf,
    pub serial_log: PathBuf,
}

impl RunPaths {
    pub fn in_dir(dir: &Path) -> Self {
        RunPaths {
            console_socket: dir.join("console.sock"),
            serial_log: dir.join("serial.log"),
        }
    }
}

/// The command line that starts `vmm` (binary `program`) on `guest`.
pub fn command(vmm: Vmm, program: &Path, guest: &GuestSpec, paths: &RunPaths) -> Command {
    let mut cmd = Command::new(program);
    match vmm {
        Vmm::HuskVmm => {
            // The command line already holds any nested-PVM parameters, as
            // QEMU's does: husk-vmm must not add them a second time.
            cmd.arg("--kernel")
                .arg(&guest.kernel)
                .args(["--cmdline", &guest.cmdline])
                .arg("--no-nested-pvm-workarounds")
                .args(["--vcpus", &guest.vcpus.to_string()])
                .args(["--mem-mib", &guest.mem_mib.to_string()])
                .arg("--disk")
                .arg(format!("{},serial=husk-scratch", guest.disk_rw.display()))
                .arg("--disk")
                .arg(format!(
                    "{}:ro,concat,serial=husk-layers",
                    guest.layers_list.display()
                ))
                .arg("--console-socket")
                .arg(&paths.console_socket)
                .arg("--serial-log")
                .arg(&paths.serial_log);
        }
        Vmm::Qemu => {
            // microvm without ACPI, option ROMs or a display: the closest
            // QEMU gets to husk-vmm's device set.
            cmd.args(["-M", "microvm,acpi=off,x-option-roms=off"])
                .args(["-accel", "kvm", "-cpu", "host"])
                .args(["-smp", &guest.vcpus.to_string()])
                .args(["-m", &format!("{}M", guest.mem_mib)])
                .args(["-nodefaults", "-no-user-config", "-display", "none"])
                .arg("-serial")
                .arg(format!("file:{}", paths.serial_log.display()))
                .arg("-kernel")
                .arg(&guest.kernel)
                .args(["-append", &guest.cmdline])
                .arg("-drive")
                .arg(format!(
                    "id=d0,file={},format=raw,if=none",
                    guest.disk_rw.display()
                ))
                .args(["-device", "virtio-blk-device,drive=d0,serial=husk-scratch"])
                .arg("-drive")
                .arg(format!(
                    "id=d1,file={},format=vmdk,if=none,readonly=on",
                    guest.layers_vmdk.display()
                ))
                .args(["-device", "virtio-blk-device,drive=d1,serial=husk-layers"])
                .arg("-chardev")
                .arg(format!(
                    "socket,id=c0,path={},server=on,wait=off",
                    paths.console_socket.display()
                ))
                .args(["-device", "virtio-serial-device"])
                .args(["-device", "virtconsole,chardev=c0"]);
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> GuestSpec {
        GuestSpec {
            kernel: "/k/vmlinux".into(),
            cmdline: "console=ttyS0 panic=0".into(),
            mem_mib: 256,
            vcpus: 1,
            disk_rw: "/d/rw.img".into(),
            layers_list: "/d/layers.list".into(),
            layers_vmdk: "/d/layers.vmdk".into(),
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn both_vmms_get_the_same_guest() {
        let paths = RunPaths::in_dir(Path::new("/run"));
        let husk = args(&command(
            Vmm::HuskVmm,
            Path::new("husk-vmm"),
            &guest(),
            &paths,
        ));
        let qemu = args(&command(Vmm::Qemu, Path::new("qemu"), &guest(), &paths));
        for (list, mem) in [(&husk, "256"), (&qemu, "256M")] {
            assert!(list.contains(&"/k/vmlinux".to_owned()), "{list:?}");
            assert!(
                list.contains(&"console=ttyS0 panic=0".to_owned()),
                "{list:?}"
            );
            assert!(list.contains(&mem.to_owned()), "{list:?}");
            assert!(list.iter().any(|a| a.contains("/d/rw.img")), "{list:?}");
            assert!(
                list.iter().any(|a| a.contains("/run/console.sock")),
                "{list:?}"
            );
            assert!(
                list.iter().any(|a| a.contains("/run/serial.log")),
                "{list:?}"
            );
        }
        assert!(husk.contains(&"/d/layers.list:ro,concat,serial=husk-layers".to_owned()));
        assert!(husk.contains(&"/d/rw.img,serial=husk-scratch".to_owned()));
        assert!(husk.contains(&"--no-nested-pvm-workarounds".to_owned()));
        assert!(qemu
            .iter()
            .any(|a| a.ends_with("layers.vmdk,format=vmdk,if=none,readonly=on")));
        assert!(qemu
            .iter()
            .any(|a| a == "virtio-blk-device,drive=d1,serial=husk-layers"));
        assert_eq!(
            qemu.iter()
                .filter(|a| a.starts_with("virtio-blk-device"))
                .count(),
            2
        );
    }
}
