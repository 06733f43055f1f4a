//! Our own VMM as a backend: spawns the `husk-vmm` binary, found through
//! `HUSK_VMM` or next to the running `husk` binary. The VMM adds the
//! kernel parameters a nested-PVM host needs itself.

use std::path::PathBuf;
use std::process::Command;

use super::backend::{
    base_cmdline, spawn_vm, BackendError, BackendKind, VmBackend, VmConfig, VmProcess,
};

pub struct HuskVmmBackend {
    program: PathBuf,
}

impl HuskVmmBackend {
    /// Locates the husk-vmm binary.
    pub fn locate() -> Result<Self, BackendError> {
        if let Some(path) = std::env::var_os("HUSK_VMM") {
            return Ok(HuskVmmBackend {
                program: PathBuf::from(path),
            });
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("husk-vmm")))
            .filter(|p| p.is_file());
        match beside {
            Some(program) => Ok(HuskVmmBackend { program }),
            None => Err(BackendError::ProgramMissing {
                program: "husk-vmm".into(),
                hint: "set HUSK_VMM or install it next to the husk binary \
                       (`cargo build -p husk-vmm`), or use --backend qemu"
                    .into(),
            }),
        }
    }

    #[cfg(test)]
    pub fn with_program(program: &std::path::Path) -> Self {
        HuskVmmBackend {
            program: program.to_path_buf(),
        }
    }

    pub fn command(&self, config: &VmConfig) -> Command {
        let mut cmd = Command::new(&self.program);
        let mut cmdline = base_cmdline();
        // husk-vmm ends the VM on the i8042 reset line.
        cmdline.push("reboot=k".into());
        cmdline.extend(config.cmdline_extra.iter().cloned());
        cmd.arg("--kernel").arg(&config.kernel);
        cmd.arg("--initrd").arg(&config.initramfs);
        cmd.arg("--cmdline").arg(cmdline.join(" "));
        cmd.arg("--vcpus").arg(config.vcpus.to_string());
        cmd.arg("--mem-mib").arg(config.memory_mib.to_string());
        for disk in &config.disks {
            // husk-vmm names disks by --disk order (see fixed_disk_serial).
            let mut spec = disk.path.clone().into_os_string();
            if disk.read_only {
                spec.push(":ro");
            }
            cmd.arg("--disk").arg(spec);
        }
        cmd.arg("--console-socket").arg(&config.console_socket);
        cmd.arg("--serial-log").arg(&config.serial_log);
        cmd
    }
}

impl VmBackend for HuskVmmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::HuskVmm
    }

    /// husk-vmm gives each disk its guest name (vda, vdb, ...) as serial.
    fn fixed_disk_serial(&self, index: usize) -> Option<String> {
        Some(husk_vmm::devices::wiring::disk_name(index))
    }

    fn start(&self, config: &VmConfig) -> Result<VmProcess, BackendError> {
        spawn_vm(self.kind(), self.command(config), config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::backend::DiskConfig;

    #[test]
    fn command_line_follows_the_vmm_flags() {
        let config = VmConfig {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            disks: vec![
                DiskConfig {
                    path: "/l0".into(),
                    read_only: true,
                    serial: "husk-l0".into(),
                },
                DiskConfig {
                    path: "/s".into(),
                    read_only: false,
                    serial: "husk-scratch".into(),
                },
            ],
            console_socket: "/r/c.sock".into(),
            serial_log: "/r/serial.log".into(),
            vmm_log: "/r/vmm.log".into(),
            vcpus: 1,
            memory_mib: 300,
            cmdline_extra: vec!["x=y".into()],
        };
        let cmd =
            HuskVmmBackend::with_program(std::path::Path::new("/bin/husk-vmm")).command(&config);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with("--kernel /k --initrd /i --cmdline console=ttyS0 "),
            "{joined}"
        );
        assert!(args.iter().any(|a| a.ends_with(" x=y")), "{joined}");
        assert!(joined.contains("--vcpus 1 --mem-mib 300 --disk /l0:ro --disk /s --console-socket /r/c.sock --serial-log /r/serial.log"), "{joined}");
    }
}
