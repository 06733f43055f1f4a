//! QEMU backend: `qemu-system-x86_64 -M microvm`, the same virtio-mmio
//! devices our VMM offers (virtio-blk per disk, a virtio console on a Unix
//! socket), with KVM where the host is ready and TCG elsewhere.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use super::backend::{
    base_cmdline, concat_part_sizes, spawn_vm, write_listing, BackendError, BackendKind, DiskImage,
    VmBackend, VmConfig, VmProcess,
};
use super::logcap;

pub struct QemuBackend {
    program: PathBuf,
    accel: Accel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl QemuBackend {
    /// `qemu-system-x86_64` from PATH, or the program named by `HUSK_QEMU`.
    pub fn new(accel: Accel) -> Self {
        let program = std::env::var_os("HUSK_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        QemuBackend { program, accel }
    }

    /// The full command line for `config`.
    pub fn command(&self, config: &VmConfig) -> Result<Command, BackendError> {
        self.build(config, &qemu_path(&config.serial_log)?)
    }

    /// The command line with the serial port written to `serial`.
    fn build(&self, config: &VmConfig, serial: &str) -> Result<Command, BackendError> {
        let mut cmd = Command::new(&self.program);
        // microvm with ACPI off: QEMU then describes each virtio-mmio device
        // to the kernel by appending `virtio_mmio.device=` words to the
        // command line (auto-kernel-cmdline, on by default), so the kernel
        // needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES.
        cmd.args(["-M", "microvm,acpi=off,auto-kernel-cmdline=on"]);
        cmd.args([
            "-accel",
            if self.accel == Accel::Kvm {
                "kvm"
            } else {
                "tcg"
            },
        ]);
        if self.accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        }
        cmd.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        // QEMU's own seccomp filter: no obsolete syscalls, no set*id, no
        // spawning programs, no scheduler or affinity changes.
        cmd.args([
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
        cmd.arg("-serial").arg(format!("file:{serial}"));
        cmd.arg("-kernel").arg(&config.kernel);
        cmd.arg("-initrd").arg(&config.initramfs);
        let mut cmdline = base_cmdline();
        // microvm has no keyboard controller to reset through: a triple
        // fault resets at once, and -no-reboot turns the reset into an exit.
        cmdline.push("reboot=t".into());
        cmdline.extend(config.cmdline_extra.iter().cloned());
        cmd.arg("-append").arg(cmdline.join(" "));
        cmd.arg("-m").arg(config.memory_mib.to_string());
        cmd.arg("-smp").arg(config.vcpus.to_string());
        // wait=on: QEMU waits for husk to connect before it runs the guest,
        // because console output sent while no client is connected is
        // dropped (and with it the agent's Hello).
        cmd.arg("-chardev").arg(format!(
            "socket,id=agent,path={},server=on,wait=on",
            qemu_path(&config.console_socket)?
        ));
        // A named serial port, not a virtconsole: QEMU drops what a console
        // port's guest writes while the socket is full (consoles are never
        // throttled), which tears the agent's frames apart under load; a
        // serial port stalls the guest's writes instead. The agent finds
        // the port by its name (/dev/vportNpM).
        cmd.args([
            "-device",
            "virtio-serial-device",
            "-device",
            "virtserialport,chardev=agent,name=org.husk.agent",
        ]);
        for (index, disk) in config.disks.iter().enumerate() {
            disk.check_serial()?;
            let id = format!("disk{index}");
            let mut drive = match &disk.image {
                DiskImage::File(path) => {
                    format!("file={},if=none,id={id},format=raw", qemu_path(path)?)
                }
                DiskImage::Concat { parts, listing } => {
                    if !disk.read_only {
                        return Err(BackendError::Config(
                            "a concatenated disk must be read-only".into(),
                        ));
                    }
                    write_listing(listing, &vmdk_descriptor(parts)?)?;
                    format!("file={},if=none,id={id},format=vmdk", qemu_path(listing)?)
                }
            };
            if disk.read_only {
                drive.push_str(",readonly=on");
            }
            cmd.arg("-drive").arg(drive);
            cmd.arg("-device").arg(format!(
                "virtio-blk-device,drive={id},serial={}",
                disk.serial
            ));
        }
        // A pod's spare layer disks, swapped through QMP (see `pod`).
        if let Some(slots) = &config.pod {
            cmd.args(super::pod::qemu_args(slots)?);
        }
        // The tap is opened by husk (with IFF_VNET_HDR) and inherited.
        for (index, nic) in config.nics.iter().enumerate() {
            let fd = super::backend::NIC_FD_BASE + index as i32;
            cmd.arg("-netdev")
                .arg(format!("tap,id=net{index},fd={fd},vhost=off"));
            cmd.arg("-device").arg(format!(
                "virtio-net-device,netdev=net{index},mac={}",
                nic.mac
            ));
        }
        Ok(cmd)
    }
}

impl VmBackend for QemuBackend {
    fn kind(&self) -> BackendKind {
        match self.accel {
            Accel::Kvm => BackendKind::QemuKvm,
            Accel::Tcg => BackendKind::QemuTcg,
        }
    }

    fn start(&self, config: &VmConfig) -> Result<VmProcess, BackendError> {
        // QEMU writes its serial log without a limit: it writes into a
        // pipe instead, which husk copies to the log under the cap. QEMU
        // opens the pipe by its /proc path (its `file` backend takes no fd).
        let (serial, copy) = logcap::capped_pipe(&config.serial_log, logcap::LOG_CAP, "serial log")
            .map_err(|source| BackendError::Log {
                path: config.serial_log.clone(),
                source,
            })?;
        let fd = serial.as_raw_fd();
        let mut cmd = self.build(config, &format!("/proc/self/fd/{fd}"))?;
        // SAFETY: fcntl is async-signal-safe; it makes the pipe's write end
        // (same number in the child) survive exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut vm = spawn_vm(self.kind(), cmd, config)?;
        // The child has its copy; ours closes here, so EOF comes with QEMU's end.
        drop(serial);
        vm.keep_log(copy);
        Ok(vm)
    }
}

/// A VMDK descriptor whose flat extents are `parts`, in order: QEMU's own
/// way to present several raw files as one disk (it has no plain
/// concatenation driver). Extents are counted in 512-byte sectors. The
/// access word is RW because QEMU's reader takes no other for flat extents;
/// the drive itself is opened read-only.
pub fn vmdk_descriptor(parts: &[std::path::PathBuf]) -> Result<String, BackendError> {
    let sizes = concat_part_sizes(parts)?;
    let mut text = String::from(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\n",
    );
    for (part, size) in parts.iter().zip(sizes) {
        let path = qemu_path(part)?;
        if path.contains(['"', '\n']) {
            return Err(BackendError::Config(format!(
                "QEMU cannot take a disk part path with a quote or newline: {path:?}"
            )));
        }
        text.push_str(&format!("RW {} FLAT \"{path}\" 0\n", size / 512));
    }
    Ok(text)
}

/// A path as a QEMU option value. QEMU splits option strings at commas, so a
/// path holding one would change the option's meaning: refuse it.
fn qemu_path(path: &std::path::Path) -> Result<String, BackendError> {
    let text = path
        .to_str()
        .ok_or_else(|| BackendError::Config(format!("path is not UTF-8: {}", path.display())))?;
    if text.contains(',') {
        return Err(BackendError::Config(format!(
            "QEMU cannot take a path with a comma: {text}"
        )));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::backend::DiskConfig;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            initramfs: "/c/init.cpio".into(),
            disks: vec![
                DiskConfig {
                    image: DiskImage::File("/s/l0.erofs".into()),
                    read_only: true,
                    serial: "layer0".into(),
                },
                DiskConfig {
                    image: DiskImage::File("/s/scratch".into()),
                    read_only: false,
                    serial: "scratch".into(),
                },
            ],
            console_socket: "/r/console.sock".into(),
            serial_log: "/r/serial.log".into(),
            vmm_log: "/r/vmm.log".into(),
            vcpus: 2,
            memory_mib: 320,
            cmdline_extra: vec!["husk.debug=1".into()],
            nics: Vec::new(),
            pod: None,
            cgroup: None,
            cpus: None,
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn nics_become_tap_netdevs_on_the_inherited_fds() {
        let mut config = config();
        config.nics = vec![crate::network::NicConfig {
            tap: "husk-tap-abc".into(),
            mac: "02:68:0a:58:00:02".into(),
            netns: None,
        }];
        let cmd = QemuBackend {
            program: "qemu".into(),
            accel: Accel::Tcg,
        }
        .command(&config)
        .unwrap();
        let a = args(&cmd).join(" ");
        assert!(
            a.contains("-netdev tap,id=net0,fd=100,vhost=off -device virtio-net-device,netdev=net0,mac=02:68:0a:58:00:02"),
            "{a}"
        );
    }

    #[test]
    fn tcg_command_line_has_the_devices() {
        let cmd = QemuBackend {
            program: "qemu".into(),
            accel: Accel::Tcg,
        }
        .command(&config())
        .unwrap();
        let a = args(&cmd).join(" ");
        assert!(
            a.contains("-M microvm,acpi=off,auto-kernel-cmdline=on"),
            "{a}"
        );
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(!a.contains("-cpu host"), "{a}");
        assert!(a.contains("-serial file:/r/serial.log"), "{a}");
        assert!(
            a.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "{a}"
        );
        assert!(a.contains("-m 320 -smp 2"), "{a}");
        assert!(
            a.contains("socket,id=agent,path=/r/console.sock,server=on,wait=on"),
            "{a}"
        );
        assert!(
            a.contains("file=/s/l0.erofs,if=none,id=disk0,format=raw,readonly=on"),
            "{a}"
        );
        assert!(
            a.contains("virtio-blk-device,drive=disk0,serial=layer0"),
            "{a}"
        );
        assert!(
            a.contains("file=/s/scratch,if=none,id=disk1,format=raw -device"),
            "{a}"
        );
        let append = args(&cmd)
            .iter()
            .skip_while(|x| *x != "-append")
            .nth(1)
            .cloned()
            .unwrap();
        assert!(append.starts_with("console=ttyS0 "), "{append}");
        assert!(append.ends_with("husk.debug=1"), "{append}");
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let a = args(
            &QemuBackend {
                program: "qemu".into(),
                accel: Accel::Kvm,
            }
            .command(&config())
            .unwrap(),
        );
        assert!(a.join(" ").contains("-accel kvm -cpu host"));
    }

    #[test]
    fn comma_in_a_path_is_refused() {
        let mut c = config();
        c.disks[0].image = DiskImage::File("/s/a,b".into());
        let err = QemuBackend::new(Accel::Tcg).command(&c).unwrap_err();
        assert!(err.to_string().contains("comma"), "{err}");
    }

    #[test]
    fn concatenated_layers_become_one_vmdk_drive() {
        let dir = tempfile::tempdir().unwrap();
        let parts = vec![dir.path().join("a.erofs"), dir.path().join("b.erofs")];
        std::fs::write(&parts[0], [0u8; 4096]).unwrap();
        std::fs::write(&parts[1], [0u8; 1536]).unwrap();
        let listing = dir.path().join("layers.vmdk");
        let mut c = config();
        c.disks = vec![DiskConfig {
            image: DiskImage::Concat {
                parts: parts.clone(),
                listing: listing.clone(),
            },
            read_only: true,
            serial: "husk-layers".into(),
        }];
        let a = args(&QemuBackend::new(Accel::Tcg).command(&c).unwrap()).join(" ");
        assert!(
            a.contains(&format!(
                "file={},if=none,id=disk0,format=vmdk,readonly=on -device virtio-blk-device,drive=disk0,serial=husk-layers",
                listing.display()
            )),
            "{a}"
        );
        let text = std::fs::read_to_string(&listing).unwrap();
        let extents: Vec<&str> = text.lines().filter(|l| l.starts_with("RW ")).collect();
        assert_eq!(
            extents,
            vec![
                format!("RW 8 FLAT \"{}\" 0", parts[0].display()),
                format!("RW 3 FLAT \"{}\" 0", parts[1].display()),
            ]
        );
        c.disks[0].read_only = false;
        assert!(QemuBackend::new(Accel::Tcg).command(&c).is_err());
    }

    #[test]
    fn odd_serial_is_refused() {
        let mut c = config();
        c.disks[0].serial = "a,b".into();
        assert!(QemuBackend::new(Accel::Tcg).command(&c).is_err());
    }
}
