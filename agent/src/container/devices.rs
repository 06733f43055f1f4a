//! Which devices a container may create and open.
//!
//! Container root keeps CAP_MKNOD (Docker's default), so without a policy it
//! could `mknod` the virtio console that carries the agent channel, or the
//! serial port, and garble or forge what the host reads. Two guards:
//! - a cgroup v2 device program (eBPF, `BPF_PROG_TYPE_CGROUP_DEVICE`) on the
//!   container's cgroup: only the default set, the spec's `linux.devices`
//!   and what `linux.resources.devices` allows may be created or opened;
//! - `nodev` on the rootfs and on `/dev`: the allowed nodes are bind mounts
//!   (from the agent's devtmpfs, or from a private staging tmpfs for
//!   `linux.devices`), which keep their own, device-enabled mount.
//!
//! The program is assembled with rbpf's instruction builder and loaded with
//! bpf(2) directly: libc has no `bpf_attr`, and the two commands we need
//! take a handful of fields (the kernel zero-fills the rest).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{Linux, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};
use rbpf::insn_builder::{Arch, BpfCode, Cond, Instruction, IntoBytes, MemSize, Source};

use super::mounts::resolve_in_root;
use crate::error::StepError;

/// Access bits of `bpf_cgroup_dev_ctx.access_type` (upper 16 bits).
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// Device types of `bpf_cgroup_dev_ctx.access_type` (lower 16 bits).
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;

/// Linux device numbers: 12-bit majors, 20-bit minors. Bounding them keeps
/// every value a positive 32-bit BPF immediate.
const MAX_MAJOR: i64 = 0xfff;
const MAX_MINOR: i64 = 0xf_ffff;

/// Character devices every container may use (runc's and Docker's set):
/// null, zero, full, random, urandom, tty, console, ptmx, the pts slaves.
const DEFAULT_CHAR_DEVICES: &[(u32, Option<u32>)] = &[
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(1)),
    (5, Some(2)),
    (136, None),
];

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("linux.resources.devices: access {0:?} must be letters of \"rwm\"")]
    Access(String),
    #[error("linux.resources.devices: type {0:?} is not a, b or c")]
    CgroupType(String),
    #[error("{field}: device number {value} out of range")]
    Number { field: &'static str, value: i64 },
    #[error("load the device program: {source}{log}")]
    Load {
        source: io::Error,
        /// The verifier's explanation, if it gave one.
        log: String,
    },
    #[error("attach the device program to {cgroup}: {source}")]
    Attach { cgroup: String, source: io::Error },
}

/// Which devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    All,
    Block,
    Char,
}

/// One device cgroup rule; `None` numbers are wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// ACC_* bits.
    pub access: u32,
}

fn parse_access(text: Option<&str>) -> Result<u32, DeviceError> {
    // Absent means all, as in runc.
    let Some(text) = text.filter(|text| !text.is_empty()) else {
        return Ok(ACC_ALL);
    };
    text.chars().try_fold(0, |bits, ch| match ch {
        'r' => Ok(bits | ACC_READ),
        'w' => Ok(bits | ACC_WRITE),
        'm' => Ok(bits | ACC_MKNOD),
        _ => Err(DeviceError::Access(text.to_owned())),
    })
}

fn number(field: &'static str, value: Option<i64>, max: i64) -> Result<Option<u32>, DeviceError> {
    match value {
        // Negative numbers are wildcards in some specs (-1).
        None => Ok(None),
        Some(value) if value < 0 => Ok(None),
        Some(value) if value <= max => Ok(Some(value as u32)),
        Some(value) => Err(DeviceError::Number { field, value }),
    }
}

fn cgroup_rule(rule: &LinuxDeviceCgroup) -> Result<Rule, DeviceError> {
    let kind = match rule.typ() {
        None | Some(LinuxDeviceType::A) => Kind::All,
        Some(LinuxDeviceType::B) => Kind::Block,
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Kind::Char,
        Some(other) => return Err(DeviceError::CgroupType(other.as_str().to_owned())),
    };
    Ok(Rule {
        allow: rule.allow(),
        kind,
        major: number("linux.resources.devices major", rule.major(), MAX_MAJOR)?,
        minor: number("linux.resources.devices minor", rule.minor(), MAX_MINOR)?,
        access: parse_access(rule.access().as_deref())?,
    })
}

/// The rules for a container, in order; the last matching rule decides:
/// deny everything, then the spec's `linux.resources.devices`, then the
/// default set and the spec's `linux.devices` (which the spec's rules
/// cannot take away, as with runc).
pub fn rules(linux: &Linux) -> Result<Vec<Rule>, DeviceError> {
    let mut rules = vec![Rule {
        allow: false,
        kind: Kind::All,
        major: None,
        minor: None,
        access: ACC_ALL,
    }];
    let spec_rules = linux
        .resources()
        .as_ref()
        .and_then(|resources| resources.devices().clone())
        .unwrap_or_default();
    for rule in &spec_rules {
        rules.push(cgroup_rule(rule)?);
    }
    for (major, minor) in DEFAULT_CHAR_DEVICES {
        rules.push(Rule {
            allow: true,
            kind: Kind::Char,
            major: Some(*major),
            minor: *minor,
            access: ACC_ALL,
        });
    }
    for device in linux.devices().iter().flatten() {
        let kind = match device.typ() {
            LinuxDeviceType::B => Kind::Block,
            LinuxDeviceType::C | LinuxDeviceType::U => Kind::Char,
            // A FIFO is no device: the cgroup does not see it.
            LinuxDeviceType::P => continue,
            LinuxDeviceType::A => {
                return Err(DeviceError::CgroupType(format!(
                    "a (linux.devices {})",
                    device.path().display()
                )))
            }
        };
        rules.push(Rule {
            allow: true,
            kind,
            major: number("linux.devices major", Some(device.major()), MAX_MAJOR)?,
            minor: number("linux.devices minor", Some(device.minor()), MAX_MINOR)?,
            access: ACC_ALL,
        });
    }
    Ok(rules)
}

// Registers of the program: r1 = ctx (struct bpf_cgroup_dev_ctx: u32
// access_type = access << 16 | type, u32 major, u32 minor), then the
// fields unpacked into r2..r5; r0 is scratch and the verdict (1 = allow).
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;

/// The checks of a rule, each a jump to the next rule on mismatch.
enum Check {
    Type(u32),
    /// The requested access must be a subset of these bits (3 insns).
    Access(u32),
    Major(u32),
    Minor(u32),
}

impl Check {
    fn len(&self) -> usize {
        match self {
            Check::Access(_) => 3,
            _ => 1,
        }
    }
}

fn checks(rule: &Rule) -> Vec<Check> {
    let mut checks = Vec::new();
    match rule.kind {
        Kind::All => {}
        Kind::Block => checks.push(Check::Type(DEV_BLOCK)),
        Kind::Char => checks.push(Check::Type(DEV_CHAR)),
    }
    if rule.access & ACC_ALL != ACC_ALL {
        checks.push(Check::Access(rule.access));
    }
    if let Some(major) = rule.major {
        checks.push(Check::Major(major));
    }
    if let Some(minor) = rule.minor {
        checks.push(Check::Minor(minor));
    }
    checks
}

/// Assembles the device program for `rules` (last match wins): the rules
/// are emitted last first, each returning its verdict on a match. Rules
/// after an unconditional one are left out, as the verifier refuses
/// unreachable instructions.
pub fn program(rules: &[Rule]) -> Vec<u8> {
    let mut code = BpfCode::new();
    code.load_x(MemSize::Word)
        .set_dst(R_TYPE)
        .set_src(1)
        .set_off(0)
        .push();
    code.bit_and(Source::Imm, Arch::X32)
        .set_dst(R_TYPE)
        .set_imm(0xffff)
        .push();
    code.load_x(MemSize::Word)
        .set_dst(R_ACCESS)
        .set_src(1)
        .set_off(0)
        .push();
    code.right_shift(Source::Imm, Arch::X32)
        .set_dst(R_ACCESS)
        .set_imm(16)
        .push();
    code.load_x(MemSize::Word)
        .set_dst(R_MAJOR)
        .set_src(1)
        .set_off(4)
        .push();
    code.load_x(MemSize::Word)
        .set_dst(R_MINOR)
        .set_src(1)
        .set_off(8)
        .push();
    let mut covered = false;
    for rule in rules.iter().rev() {
        let checks = checks(rule);
        // Checks, then "r0 = verdict; exit".
        let block_len: usize = checks.iter().map(Check::len).sum::<usize>() + 2;
        let mut at = 0;
        // Offset from the jump at `at` to the first insn after the block.
        let to_next = |at: usize| (block_len - at - 1) as i16;
        for check in &checks {
            match check {
                Check::Type(value) | Check::Major(value) | Check::Minor(value) => {
                    let register = match check {
                        Check::Type(_) => R_TYPE,
                        Check::Major(_) => R_MAJOR,
                        _ => R_MINOR,
                    };
                    code.jump_conditional(Cond::NotEquals, Source::Imm)
                        .set_dst(register)
                        .set_imm(*value as i32)
                        .set_off(to_next(at))
                        .push();
                }
                Check::Access(bits) => {
                    code.mov(Source::Reg, Arch::X32)
                        .set_dst(0)
                        .set_src(R_ACCESS)
                        .push();
                    code.bit_and(Source::Imm, Arch::X32)
                        .set_dst(0)
                        .set_imm(*bits as i32)
                        .push();
                    code.jump_conditional(Cond::NotEquals, Source::Reg)
                        .set_dst(0)
                        .set_src(R_ACCESS)
                        .set_off(to_next(at + 2))
                        .push();
                }
            }
            at += check.len();
        }
        code.mov(Source::Imm, Arch::X32)
            .set_dst(0)
            .set_imm(i32::from(rule.allow))
            .push();
        code.exit().push();
        if checks.is_empty() {
            covered = true;
            break;
        }
    }
    if !covered {
        code.mov(Source::Imm, Arch::X32)
            .set_dst(0)
            .set_imm(0)
            .push();
        code.exit().push();
    }
    (&code).into_bytes().to_vec()
}

// bpf(2) commands, program and attach types (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C, align(8))]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The fields of `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C, align(8))]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly laid out prefix of bpf_attr; the
    // kernel reads (and for PROG_LOAD's log, writes through the pointers we
    // set, which outlive the call) no more than `size_of::<T>()` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads `program` and attaches it to the cgroup directory `cgroup`. The
/// attachment outlives the fds: it lasts as long as the cgroup.
pub fn attach(cgroup: &Path, program: &[u8]) -> Result<(), DeviceError> {
    let license = CString::new("Apache-2.0").unwrap_or_default();
    let mut log = vec![0u8; 64 * 1024];
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: (program.len() / 8) as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    load.prog_name[..10].copy_from_slice(b"husk_devcg");
    let prog_fd = bpf(BPF_PROG_LOAD, &mut load).map_err(|source| {
        let end = log.iter().position(|byte| *byte == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: String = text.lines().rev().take(4).collect::<Vec<_>>().join(" | ");
        DeviceError::Load {
            source,
            log: if tail.is_empty() {
                String::new()
            } else {
                format!(" (verifier: {tail})")
            },
        }
    })?;
    // SAFETY: PROG_LOAD returned a new fd that nothing else owns.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(prog_fd as i32) };
    let attach_err = |source| DeviceError::Attach {
        cgroup: cgroup.display().to_string(),
        source,
    };
    let dir = fs::File::open(cgroup).map_err(attach_err)?;
    let mut attach = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        // Exclusive: nothing below the container's cgroup may add its own.
        attach_flags: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(attach_err)?;
    Ok(())
}

/// Creates the spec's `linux.devices` in the container's /dev (child side,
/// in its mount namespace, before pivot). Each node is made on a private
/// tmpfs under `staging` (a mount that allows devices) and bound to its
/// path, so the rest of /dev can stay `nodev`.
pub fn create_nodes(
    rootfs: &Path,
    staging: &Path,
    devices: &[LinuxDevice],
) -> Result<(), StepError> {
    if devices.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(staging).map_err(|err| StepError::new("device staging dir", err))?;
    mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|err| StepError::new("device staging tmpfs", err))?;
    for (index, device) in devices.iter().enumerate() {
        let path = device.path();
        let step = format!("linux.devices {}", path.display());
        if !path.is_absolute() {
            return Err(StepError::new(step, "the path is not absolute"));
        }
        let kind = match device.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => return Err(StepError::new(step, "type a is not a node type")),
        };
        let major = number("linux.devices major", Some(device.major()), MAX_MAJOR)
            .map_err(|err| StepError::new(&step, err))?
            .unwrap_or(0);
        let minor = number("linux.devices minor", Some(device.minor()), MAX_MINOR)
            .map_err(|err| StepError::new(&step, err))?
            .unwrap_or(0);
        let node = staging.join(index.to_string());
        mknod(
            &node,
            kind,
            Mode::empty(),
            makedev(u64::from(major), u64::from(minor)),
        )
        .map_err(|err| StepError::new(format!("{step}: mknod"), err))?;
        let mode = device.file_mode().unwrap_or(0o666) & 0o7777;
        fs::set_permissions(&node, fs::Permissions::from_mode(mode))
            .map_err(|err| StepError::new(format!("{step}: chmod"), err))?;
        chown(&node, device.uid(), device.gid())
            .map_err(|err| StepError::new(format!("{step}: chown"), err))?;
        let target = resolve_in_root(rootfs, path)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|err| StepError::new(&step, err))?;
        }
        if fs::symlink_metadata(&target).is_err() {
            fs::write(&target, b"").map_err(|err| StepError::new(&step, err))?;
        }
        mount(
            Some(&node),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|err| StepError::new(format!("{step}: bind"), err))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(json: &str) -> Linux {
        serde_json::from_str(json).unwrap()
    }

    /// Runs the program in rbpf's interpreter on a bpf_cgroup_dev_ctx.
    fn verdict(program: &[u8], kind: u32, access: u32, major: u32, minor: u32) -> bool {
        let mut ctx = Vec::new();
        ctx.extend_from_slice(&((access << 16) | kind).to_le_bytes());
        ctx.extend_from_slice(&major.to_le_bytes());
        ctx.extend_from_slice(&minor.to_le_bytes());
        let vm = rbpf::EbpfVmRaw::new(Some(program)).unwrap();
        match vm.execute_program(&mut ctx).unwrap() {
            0 => false,
            1 => true,
            other => panic!("verdict {other}"),
        }
    }

    const RW: u32 = ACC_READ | ACC_WRITE;

    #[test]
    fn default_policy_allows_the_standard_set_only() {
        let program = program(&rules(&linux("{}")).unwrap());
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert!(
                verdict(&program, DEV_CHAR, RW, major, minor),
                "{major}:{minor}"
            );
        }
        assert!(verdict(&program, DEV_CHAR, RW, 136, 7), "pts");
        // The virtio console (hvc, major from /proc/devices, often 229),
        // the serial port ttyS0 and /dev/mem are out of reach, to open or
        // to create.
        assert!(!verdict(&program, DEV_CHAR, RW, 229, 0));
        assert!(!verdict(&program, DEV_CHAR, ACC_MKNOD, 229, 0));
        assert!(!verdict(&program, DEV_CHAR, ACC_READ, 4, 64));
        assert!(!verdict(&program, DEV_CHAR, RW, 1, 1));
        // Same numbers as null, but a block device.
        assert!(!verdict(&program, DEV_BLOCK, RW, 1, 3));
        assert!(!verdict(&program, DEV_BLOCK, ACC_READ, 254, 0));
    }

    #[test]
    fn spec_devices_and_rules_are_honoured_last_match_wins() {
        let linux = linux(
            r#"{"devices":[{"path":"/dev/kmsg","type":"c","major":1,"minor":11}],
                "resources":{"devices":[
                  {"allow":false,"access":"rwm"},
                  {"allow":true,"type":"b","major":254,"access":"r"},
                  {"allow":true,"type":"c","major":10,"minor":200,"access":"rwm"},
                  {"allow":false,"type":"c","major":10,"minor":200,"access":"w"}
                ]}}"#,
        );
        let program = program(&rules(&linux).unwrap());
        assert!(verdict(&program, DEV_CHAR, RW, 1, 11), "linux.devices");
        assert!(verdict(&program, DEV_BLOCK, ACC_READ, 254, 3));
        // "r" does not cover a write, nor mknod.
        assert!(!verdict(&program, DEV_BLOCK, ACC_WRITE, 254, 3));
        assert!(!verdict(&program, DEV_BLOCK, ACC_MKNOD, 254, 3));
        // The later deny of "w" wins over the earlier allow for writes.
        assert!(verdict(&program, DEV_CHAR, ACC_READ, 10, 200));
        assert!(!verdict(&program, DEV_CHAR, ACC_WRITE, 10, 200));
        assert!(!verdict(&program, DEV_CHAR, RW, 229, 0));
    }

    #[test]
    fn an_allow_all_rule_ends_the_program() {
        let linux = linux(r#"{"resources":{"devices":[{"allow":true,"access":"rwm"}]}}"#);
        let rules = rules(&linux).unwrap();
        let program = program(&rules);
        assert!(verdict(&program, DEV_CHAR, RW, 229, 0));
        assert!(verdict(&program, DEV_BLOCK, ACC_MKNOD, 8, 0));
        // Everything before the allow-all (the deny-all) is left out.
        let full = program.len();
        let without_first = self::program(&rules[1..]);
        assert_eq!(full, without_first.len());
    }

    #[test]
    fn bad_rules_are_errors_naming_the_field() {
        let bad_access = linux(r#"{"resources":{"devices":[{"allow":true,"access":"rx"}]}}"#);
        assert!(matches!(rules(&bad_access), Err(DeviceError::Access(_))));
        let bad_type = linux(r#"{"resources":{"devices":[{"allow":true,"type":"p"}]}}"#);
        assert!(matches!(rules(&bad_type), Err(DeviceError::CgroupType(_))));
        let big = linux(r#"{"devices":[{"path":"/dev/x","type":"c","major":4096,"minor":0}]}"#);
        let err = rules(&big).unwrap_err();
        assert!(err.to_string().contains("linux.devices major"), "{err}");
    }
}
