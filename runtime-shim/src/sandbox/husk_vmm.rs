//! Our own VMM as a backend: spawns the `husk-vmm` binary, found through
//! `HUSK_VMM` or next to the running `husk` binary. husk tells the VMM
//! whether the host is nested PVM (from the probe it already ran), so the
//! VMM adds the kernel parameters such a host needs without probing again.

use std::path::PathBuf;
use std::process::Command;

use super::backend::{
    base_cmdline, concat_part_sizes, spawn_vm_with, write_listing, BackendError, BackendKind,
    DiskImage, PidNamespace, VmBackend, VmConfig, VmProcess,
};

pub struct HuskVmmBackend {
    program: PathBuf,
    /// What the host probe found; `None`: let the VMM probe for itself.
    nested_pvm: Option<bool>,
}

impl HuskVmmBackend {
    /// Locates the husk-vmm binary.
    pub fn locate() -> Result<Self, BackendError> {
        if let Some(path) = std::env::var_os("HUSK_VMM") {
            return Ok(HuskVmmBackend {
                program: PathBuf::from(path),
                nested_pvm: None,
            });
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("husk-vmm")))
            .filter(|p| p.is_file());
        match beside {
            Some(program) => Ok(HuskVmmBackend {
                program,
                nested_pvm: None,
            }),
            None => Err(BackendError::ProgramMissing {
                program: "husk-vmm".into(),
                hint: "set HUSK_VMM or install it next to the husk binary \
                       (`cargo build -p husk-vmm`), or use --backend qemu"
                    .into(),
            }),
        }
    }

    /// Passes the probe's finding on: the VMM then adds (or leaves out) the
    /// nested-PVM kernel parameters without a probe of its own.
    pub fn with_nested_pvm(mut self, nested_pvm: bool) -> Self {
        self.nested_pvm = Some(nested_pvm);
        self
    }

    #[cfg(test)]
    pub fn with_program(program: &std::path::Path) -> Self {
        HuskVmmBackend {
            program: program.to_path_buf(),
            nested_pvm: None,
        }
    }

    /// The command line for `config`; writes the list file of a
    /// concatenated disk.
    pub fn command(&self, config: &VmConfig) -> Result<Command, BackendError> {
        self.command_jailed(config, None)
    }

    /// The command line, with husk-vmm's jail (see [`Jail`]) if given.
    pub fn command_jailed(
        &self,
        config: &VmConfig,
        jail: Option<&Jail>,
    ) -> Result<Command, BackendError> {
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
            disk.check_serial()?;
            let mut spec = match &disk.image {
                DiskImage::File(path) => vmm_path(path)?,
                DiskImage::Concat { parts, listing } => {
                    write_listing(listing, &concat_listing(parts)?)?;
                    vmm_path(listing)?
                }
            };
            if disk.read_only {
                spec.push_str(":ro");
            }
            if matches!(disk.image, DiskImage::Concat { .. }) {
                spec.push_str(",concat");
            }
            spec.push_str(",serial=");
            spec.push_str(&disk.serial);
            cmd.arg("--disk").arg(spec);
        }
        // A pod's spare layer disks, swapped through the control socket.
        if let Some(slots) = &config.pod {
            for index in 0..slots.count as usize {
                cmd.arg("--disk-slot").arg(format!(
                    "{},serial={}",
                    super::pod::SLOT_BYTES,
                    super::pod::slot_serial(index)
                ));
            }
            cmd.arg("--control-socket").arg(&slots.control_socket);
        }
        match self.nested_pvm {
            Some(true) => {
                cmd.arg("--nested-pvm-workarounds");
            }
            Some(false) => {
                cmd.arg("--no-nested-pvm-workarounds");
            }
            None => {}
        }
        cmd.arg("--console-socket").arg(&config.console_socket);
        for (index, nic) in config.nics.iter().enumerate() {
            let fd = super::backend::NIC_FD_BASE + index as i32;
            cmd.arg("--net").arg(format!("tap-fd={fd},mac={}", nic.mac));
        }
        cmd.arg("--serial-log").arg(&config.serial_log);
        if let Some(jail) = jail {
            cmd.arg("--jail-root").arg(&jail.root);
            cmd.arg("--uid").arg(jail.uid.to_string());
            cmd.arg("--gid").arg(jail.gid.to_string());
        }
        Ok(cmd)
    }
}

/// Where and as whom husk-vmm runs once set up: pivoted into an empty
/// directory of the VM's run directory, as the `husk` user that set-up
/// creates (else `nobody`), with no capabilities, no_new_privs and its
/// seccomp filters (always on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// The unprivileged user for VM programs: `husk`, else `nobody`.
pub fn vm_user() -> (u32, u32) {
    match nix::unistd::User::from_name("husk") {
        Ok(Some(user)) => (user.uid.as_raw(), user.gid.as_raw()),
        _ => (65534, 65534),
    }
}

impl Jail {
    /// The jail for `config`, its directory created; `None` when husk is
    /// not root (namespaces and the id change need privileges that an
    /// unprivileged husk does not have to give away).
    /// `HUSK_VMM_JAIL=off` leaves the jail out (debugging, and measuring
    /// what it costs); husk-vmm's seccomp filters stay on regardless.
    pub fn prepare(config: &VmConfig) -> Result<Option<Jail>, BackendError> {
        if !nix::unistd::geteuid().is_root()
            || std::env::var("HUSK_VMM_JAIL").as_deref() == Ok("off")
        {
            return Ok(None);
        }
        let run_dir = config
            .console_socket
            .parent()
            .ok_or_else(|| BackendError::Config("the console socket has no directory".into()))?;
        let root = run_dir.join("jail");
        match std::fs::create_dir(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(BackendError::Config(format!(
                    "creating the VMM jail {}: {e}",
                    root.display()
                )))
            }
        }
        let (uid, gid) = vm_user();
        Ok(Some(Jail { root, uid, gid }))
    }
}

/// The list file of a concatenated disk as husk-vmm reads it (one path a
/// line), its parts checked first so that a bad one is named before boot.
pub fn concat_listing(parts: &[PathBuf]) -> Result<String, BackendError> {
    concat_part_sizes(parts)?;
    let mut text = String::new();
    for part in parts {
        text.push_str(&vmm_path(part)?);
        text.push('\n');
    }
    Ok(text)
}

/// A path as husk-vmm's `--disk` syntax and list files take it: `:` and `,`
/// separate options there and a newline separates list entries, so a path
/// holding one is refused.
fn vmm_path(path: &std::path::Path) -> Result<String, BackendError> {
    let text = path
        .to_str()
        .ok_or_else(|| BackendError::Config(format!("path is not UTF-8: {}", path.display())))?;
    if text.contains([':', ',', '\n']) {
        return Err(BackendError::Config(format!(
            "husk-vmm cannot take a disk path with ':', ',' or a newline: {text:?}"
        )));
    }
    Ok(text.to_string())
}

impl VmBackend for HuskVmmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::HuskVmm
    }

    fn start(&self, config: &VmConfig) -> Result<VmProcess, BackendError> {
        let jail = Jail::prepare(config)?;
        // Jailed (root): PID 1 of a PID namespace of its own as well.
        let pid_namespace = if jail.is_some() {
            PidNamespace::Own
        } else {
            PidNamespace::Host
        };
        spawn_vm_with(
            self.kind(),
            self.command_jailed(config, jail.as_ref())?,
            config,
            pid_namespace,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::backend::DiskConfig;

    fn config(dir: &std::path::Path) -> VmConfig {
        VmConfig {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            disks: vec![
                DiskConfig {
                    image: DiskImage::Concat {
                        parts: vec![dir.join("l0.erofs"), dir.join("l1.erofs")],
                        listing: dir.join("layers.list"),
                    },
                    read_only: true,
                    serial: "husk-layers".into(),
                },
                DiskConfig {
                    image: DiskImage::File("/s".into()),
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
    fn nics_become_net_flags_on_the_inherited_fds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("l0.erofs"), [0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("l1.erofs"), [0u8; 1024]).unwrap();
        let mut config = config(dir.path());
        config.nics = vec![crate::network::NicConfig {
            tap: "husk-tap-abc".into(),
            mac: "02:68:0a:58:00:02".into(),
            netns: None,
        }];
        let cmd = HuskVmmBackend::with_program(std::path::Path::new("/bin/husk-vmm"))
            .command(&config)
            .unwrap();
        let joined = args(&cmd).join(" ");
        assert!(
            joined.contains("--net tap-fd=100,mac=02:68:0a:58:00:02"),
            "{joined}"
        );
    }

    #[test]
    fn a_pod_vm_gets_disk_slots_and_a_control_socket() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("l0.erofs"), [0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("l1.erofs"), [0u8; 1024]).unwrap();
        let mut c = config(dir.path());
        c.pod = Some(crate::sandbox::pod::PodSlots::in_dir(
            std::path::Path::new("/r"),
            2,
        ));
        let cmd = HuskVmmBackend::with_program(std::path::Path::new("/bin/husk-vmm"))
            .with_nested_pvm(false)
            .command(&c)
            .unwrap();
        let args = args(&cmd);
        let line = args.join(" ");
        assert!(line.contains("--disk-slot 17179869184,serial=husk-pod-1 --disk-slot 17179869184,serial=husk-pod-2 --control-socket /r/ctl.sock"), "{line}");
    }

    #[test]
    fn command_line_follows_the_vmm_flags() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("l0.erofs"), [0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("l1.erofs"), [0u8; 1024]).unwrap();
        let cmd = HuskVmmBackend::with_program(std::path::Path::new("/bin/husk-vmm"))
            .with_nested_pvm(false)
            .command(&config(dir.path()))
            .unwrap();
        let args = args(&cmd);
        let joined = args.join(" ");
        assert!(
            joined.starts_with("--kernel /k --initrd /i --cmdline console=ttyS0 "),
            "{joined}"
        );
        assert!(args.iter().any(|a| a.ends_with(" x=y")), "{joined}");
        let listing = dir.path().join("layers.list");
        assert!(joined.contains(&format!(
            "--vcpus 1 --mem-mib 300 --disk {}:ro,concat,serial=husk-layers --disk /s,serial=husk-scratch --no-nested-pvm-workarounds --console-socket /r/c.sock --serial-log /r/serial.log",
            listing.display()
        )), "{joined}");
        assert_eq!(
            std::fs::read_to_string(&listing).unwrap(),
            format!(
                "{}\n{}\n",
                dir.path().join("l0.erofs").display(),
                dir.path().join("l1.erofs").display()
            )
        );
    }

    #[test]
    fn the_jail_is_passed_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.disks.clear();
        let jail = Jail {
            root: "/r/jail".into(),
            uid: 998,
            gid: 997,
        };
        let vmm = HuskVmmBackend::with_program(std::path::Path::new("/bin/husk-vmm"));
        let joined = args(&vmm.command_jailed(&c, Some(&jail)).unwrap()).join(" ");
        assert!(
            joined.ends_with("--jail-root /r/jail --uid 998 --gid 997"),
            "{joined}"
        );
        assert!(!args(&vmm.command(&c).unwrap())
            .join(" ")
            .contains("--jail-root"));
        // As root, the jail is an empty directory beside the socket.
        c.console_socket = dir.path().join("c.sock");
        if nix::unistd::geteuid().is_root() {
            let jail = Jail::prepare(&c).unwrap().unwrap();
            assert_eq!(jail.root, dir.path().join("jail"));
            assert!(std::fs::read_dir(&jail.root).unwrap().next().is_none());
            assert_eq!((jail.uid, jail.gid), vm_user());
        }
    }

    #[test]
    fn probe_finding_is_passed_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.disks.clear();
        let vmm = || HuskVmmBackend::with_program(std::path::Path::new("/bin/husk-vmm"));
        let with = args(&vmm().with_nested_pvm(true).command(&c).unwrap());
        assert!(with.contains(&"--nested-pvm-workarounds".to_string()));
        let unknown = args(&vmm().command(&c).unwrap()).join(" ");
        assert!(!unknown.contains("nested-pvm"), "{unknown}");
    }

    #[test]
    fn bad_parts_and_paths_are_refused_before_boot() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("l0.erofs"), [0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("l1.erofs"), [0u8; 1000]).unwrap();
        let vmm = HuskVmmBackend::with_program(std::path::Path::new("/bin/husk-vmm"));
        let err = vmm.command(&config(dir.path())).unwrap_err().to_string();
        assert!(err.contains("l1.erofs") && err.contains("512"), "{err}");
        let mut c = config(dir.path());
        c.disks[1].image = DiskImage::File("/s:x".into());
        c.disks.remove(0);
        assert!(vmm.command(&c).is_err());
        let mut c = config(dir.path());
        c.disks.remove(0);
        c.disks[0].serial = "far-too-long-a-serial-for-virtio".into();
        assert!(vmm.command(&c).is_err());
    }
}
