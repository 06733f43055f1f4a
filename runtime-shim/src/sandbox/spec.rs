//! The OCI runtime spec for a `husk run` container: the image config
//! (Entrypoint, Cmd, Env, WorkingDir, User) merged with the run flags the way
//! `docker run` merges them, plus Docker's defaults for everything a user
//! does not choose (namespaces, mounts, capabilities, masked paths, limits).
//!
//! The agent is the consumer: it ignores `root.path` (the rootfs is the
//! overlay of the layer disks) and needs numeric users.

use std::collections::HashSet;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    get_default_mounts, BoxBuilder, Capability, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// Used when neither the image nor `-e` sets PATH (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default pids limit is none; a VM has a small, fixed memory, so
/// a fork bomb is stopped by the cgroup before it exhausts the guest kernel.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// The CFS period `--cpus` is expressed in (Docker's).
const CPU_PERIOD_USEC: u64 = 100_000;

/// Docker's default capability set.
const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// runc's / Docker's default masked paths: kernel interfaces a container
/// has no business reading.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command: the image has no Entrypoint or Cmd, give one after the image name")]
    NoCommand,
    #[error("working directory {0:?} is not an absolute path")]
    RelativeWorkdir(String),
    #[error("user {0:?}: expected USER[:GROUP], each a name or a number")]
    UserName(String),
    #[error("bad environment variable {0:?}: the name is empty or holds '=' or NUL")]
    BadEnv(String),
    #[error("bad hostname {0:?}: 1 to 63 letters, digits, '-' and '.'")]
    BadHostname(String),
    #[error("--cpus {0} is not a positive number")]
    BadCpus(f64),
    #[error("seccomp profile {0}")]
    Seccomp(String),
    #[error("building the runtime spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// The `husk run` flags that shape the container.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Command after the image name (replaces the image's Cmd).
    pub command: Vec<String>,
    /// `-e K=V` (or `-e K`, taking the value from husk's environment).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: String,
    pub terminal: bool,
    /// Rows and columns of the host terminal, for `terminal`.
    pub console_size: Option<(u16, u16)>,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// `--group-add`: supplementary group IDs.
    pub group_add: Vec<u32>,
    /// `--security-opt seccomp=...`.
    pub seccomp: SeccompChoice,
}

/// The seccomp profile of a `husk run` container.
#[derive(Clone, Debug, Default)]
pub enum SeccompChoice {
    /// [`DEFAULT_SECCOMP_PROFILE`].
    #[default]
    Default,
    /// `seccomp=unconfined`: no filter.
    Unconfined,
    /// `seccomp=FILE`: an OCI `linux.seccomp` object.
    Profile(Box<LinuxSeccomp>),
}

/// husk's default seccomp profile, an OCI `linux.seccomp` object: the
/// equivalent of Docker's default for Docker's default capabilities. EPERM
/// for everything not listed; allowed are the syscalls ordinary programs
/// use, but not those that need a capability the container lacks or reach
/// kernel state no namespace isolates (modules, kexec, mounts and
/// namespaces, the clock, keyrings, bpf, perf, io_uring, NUMA policy),
/// `clone` only without namespace flags, `personality` only for its common
/// values, and `clone3` fails with ENOSYS so libc falls back to `clone`.
pub const DEFAULT_SECCOMP_PROFILE: &str = include_str!("seccomp_default.json");

impl SeccompChoice {
    /// Parses the value of `--security-opt seccomp=VALUE`.
    pub fn parse(value: &str) -> Result<Self, SpecError> {
        if value == "unconfined" {
            return Ok(Self::Unconfined);
        }
        let text = std::fs::read_to_string(value)
            .map_err(|err| SpecError::Seccomp(format!("reading {value}: {err}")))?;
        let profile = serde_json::from_str(&text)
            .map_err(|err| SpecError::Seccomp(format!("{value}: {err}")))?;
        Ok(Self::Profile(Box::new(profile)))
    }

    fn profile(&self) -> Result<Option<LinuxSeccomp>, SpecError> {
        match self {
            Self::Default => serde_json::from_str(DEFAULT_SECCOMP_PROFILE)
                .map(Some)
                .map_err(|err| SpecError::Seccomp(format!("the default profile: {err}"))),
            Self::Unconfined => Ok(None),
            Self::Profile(profile) => Ok(Some((**profile).clone())),
        }
    }
}

/// The runtime spec for one container of `image` run with `opts`.
pub fn build(image: &ImageConfiguration, opts: &RunOptions) -> Result<Spec, SpecError> {
    let config = image.config().as_ref();
    let entrypoint = config
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    let image_cmd = config.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let mut args = entrypoint;
    args.extend(if opts.command.is_empty() {
        image_cmd
    } else {
        opts.command.clone()
    });
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }

    let cwd = opts
        .workdir
        .clone()
        .or_else(|| config.and_then(|c| c.working_dir().clone()))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeWorkdir(cwd));
    }

    let user_text = opts
        .user
        .clone()
        .or_else(|| config.and_then(|c| c.user().clone()))
        .unwrap_or_default();
    // A name is resolved in the guest against the image's /etc/passwd and
    // /etc/group (it travels as `user.username`); numbers are used as given.
    let (uid, gid, username) = match parse_user(&user_text) {
        Ok((uid, gid)) => (uid, gid, None),
        Err(SpecError::UserName(_)) => {
            validate_user_name(&user_text)?;
            (0, 0, Some(user_text.clone()))
        }
        Err(e) => return Err(e),
    };

    validate_hostname(&opts.hostname)?;
    let image_env = config.and_then(|c| c.env().clone()).unwrap_or_default();
    let env = merge_env(&image_env, &opts.env, &opts.hostname, uid, opts.terminal)?;

    let capabilities: oci_spec::runtime::Capabilities =
        DEFAULT_CAPABILITIES.iter().copied().collect();
    let mut process = ProcessBuilder::default()
        .terminal(opts.terminal)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user({
            let mut user = UserBuilder::default().uid(uid).gid(gid);
            if let Some(name) = &username {
                user = user.username(name.clone());
            }
            if !opts.group_add.is_empty() {
                user = user.additional_gids(opts.group_add.clone());
            }
            user.build()?
        })
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                // Docker leaves inheritable and ambient empty (CVE-2022-24769).
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()?,
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(1024u64)
            .hard(524_288u64)
            .build()?])
        // Docker's default: setuid binaries in the image keep working.
        .no_new_privileges(false)
        .build()?;
    if let (true, Some((rows, cols))) = (opts.terminal, opts.console_size) {
        let size = BoxBuilder::default().height(rows).width(cols).build()?;
        process.set_console_size(Some(size));
    }

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;

    let mut resources = LinuxResourcesBuilder::default().pids(
        LinuxPidsBuilder::default()
            .limit(opts.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT))
            .build()?,
    );
    if let Some(bytes) = opts.memory_bytes {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        // Swap equal to the limit means no swap on top (Docker's meaning of -1
        // is unlimited; the guest has no swap device anyway).
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    if let Some(cpus) = opts.cpus {
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(SpecError::BadCpus(cpus));
        }
        let quota = (cpus * CPU_PERIOD_USEC as f64).round().max(1000.0) as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_USEC)
                .build()?,
        );
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .build()?;
    linux.set_seccomp(opts.seccomp.profile()?);

    Ok(SpecBuilder::default()
        .version("1.0.2")
        .hostname(opts.hostname.clone())
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        )
        .process(process)
        .mounts(get_default_mounts())
        .linux(linux)
        .build()?)
}

/// `UID[:GID]`, numeric; `root` and `""` mean 0. A UID alone runs with GID 0,
/// as Docker does for a user not in the image's /etc/passwd.
pub fn parse_user(text: &str) -> Result<(u32, u32), SpecError> {
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let id = |part: &str| -> Result<u32, SpecError> {
        match part {
            "" | "root" => Ok(0),
            digits => digits
                .parse()
                .map_err(|_| SpecError::UserName(text.to_string())),
        }
    };
    let uid = id(user)?;
    let gid = match group {
        Some(g) => id(g)?,
        None => 0,
    };
    Ok((uid, gid))
}

/// `USER[:GROUP]` with names: the characters a passwd or group file can
/// hold in a name field.
pub fn validate_user_name(text: &str) -> Result<(), SpecError> {
    let ok = !text.is_empty()
        && text.split(':').count() <= 2
        && text.split(':').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-$".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(SpecError::UserName(text.to_string()))
    }
}

fn validate_hostname(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadHostname(name.to_string()))
    }
}

/// Image env, then `-e` overrides by name; PATH, HOSTNAME, HOME and TERM
/// (with a terminal) added the way Docker adds them when absent.
fn merge_env(
    image: &[String],
    flags: &[String],
    hostname: &str,
    uid: u32,
    terminal: bool,
) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: String| {
        if let Some(slot) = env.iter_mut().find(|(n, _)| n == name) {
            slot.1 = value;
        } else {
            env.push((name.to_string(), value));
        }
    };
    for entry in image {
        // Image env entries without '=' carry no value: skip them.
        if let Some((name, value)) = entry.split_once('=') {
            set(name, value.to_string());
        }
    }
    for entry in flags {
        let (name, value) = match entry.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (entry.clone(), std::env::var(entry).ok()),
        };
        if name.is_empty()
            || name.contains('\0')
            || value.as_deref().is_some_and(|v| v.contains('\0'))
        {
            return Err(SpecError::BadEnv(entry.clone()));
        }
        // `-e NAME` for a NAME husk does not have is dropped, as in Docker.
        if let Some(value) = value {
            set(&name, value);
        }
    }
    let mut names: HashSet<String> = env.iter().map(|(n, _)| n.clone()).collect();
    let mut defaults = vec![
        ("PATH", DEFAULT_PATH.trim_start_matches("PATH=").to_string()),
        ("HOSTNAME", hostname.to_string()),
        (
            "HOME",
            if uid == 0 {
                "/root".to_string()
            } else {
                "/".to_string()
            },
        ),
    ];
    if terminal {
        defaults.push(("TERM", "xterm".to_string()));
    }
    let mut out: Vec<String> = Vec::new();
    for (name, value) in defaults {
        if names.insert(name.to_string()) {
            out.push(format!("{name}={value}"));
        }
    }
    out.extend(env.into_iter().map(|(n, v)| format!("{n}={v}")));
    Ok(out)
}

/// Docker's size syntax: a number with an optional b, k, m or g suffix
/// (powers of 1024; `256M`, `1g`, `512m`, `1048576`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    // "256mb" means the same as "256m".
    let unit_end = match lower.strip_suffix('b') {
        Some(rest) if rest.ends_with(['k', 'm', 'g']) => rest,
        _ => lower.as_str(),
    };
    let (digits, shift) = match unit_end.as_bytes().last() {
        Some(b'k') => (&unit_end[..unit_end.len() - 1], 10),
        Some(b'm') => (&unit_end[..unit_end.len() - 1], 20),
        Some(b'g') => (&unit_end[..unit_end.len() - 1], 30),
        Some(b'b') => (&unit_end[..unit_end.len() - 1], 0),
        _ => (unit_end, 0),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 256M, 1g, 1048576)"))?;
    number
        .checked_mul(1u64 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is zero or too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

    fn image(
        entrypoint: &[&str],
        cmd: &[&str],
        env: &[&str],
        workdir: &str,
        user: &str,
    ) -> ImageConfiguration {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut config = ConfigBuilder::default().env(strings(env)).cmd(strings(cmd));
        if !entrypoint.is_empty() {
            config = config.entrypoint(strings(entrypoint));
        }
        if !workdir.is_empty() {
            config = config.working_dir(workdir.to_string());
        }
        if !user.is_empty() {
            config = config.user(user.to_string());
        }
        ImageConfigurationBuilder::default()
            .config(config.build().unwrap())
            .build()
            .unwrap()
    }

    fn opts() -> RunOptions {
        RunOptions {
            hostname: "abc123".into(),
            ..Default::default()
        }
    }

    fn env_of(spec: &Spec) -> Vec<String> {
        spec.process().as_ref().unwrap().env().clone().unwrap()
    }

    #[test]
    fn image_cmd_is_used_when_no_command_given() {
        let spec = build(&image(&[], &["sh"], &[], "", ""), &opts()).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().args().clone().unwrap(),
            vec!["sh"]
        );
    }

    #[test]
    fn command_replaces_cmd_but_keeps_entrypoint() {
        let o = RunOptions {
            command: vec!["-c".into(), "true".into()],
            ..opts()
        };
        let spec = build(&image(&["/bin/sh"], &["-l"], &[], "", ""), &o).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().args().clone().unwrap(),
            vec!["/bin/sh", "-c", "true"]
        );
    }

    #[test]
    fn no_command_at_all_is_an_error() {
        assert!(matches!(
            build(&image(&[], &[], &[], "", ""), &opts()),
            Err(SpecError::NoCommand)
        ));
    }

    #[test]
    fn env_flags_override_image_env_and_defaults_fill_in() {
        let o = RunOptions {
            command: vec!["env".into()],
            env: vec!["FOO=flag".into(), "NEW=1".into(), "EMPTY=".into()],
            ..opts()
        };
        let env = env_of(&build(&image(&[], &[], &["FOO=image", "KEEP=yes"], "", ""), &o).unwrap());
        assert!(env.contains(&"FOO=flag".to_string()), "{env:?}");
        assert!(!env.contains(&"FOO=image".to_string()), "{env:?}");
        assert!(env.contains(&"KEEP=yes".to_string()));
        assert!(env.contains(&"NEW=1".to_string()));
        assert!(env.contains(&"EMPTY=".to_string()));
        assert!(env.contains(&DEFAULT_PATH.to_string()));
        assert!(env.contains(&"HOSTNAME=abc123".to_string()));
        assert!(env.contains(&"HOME=/root".to_string()));
        assert!(
            !env.iter().any(|e| e.starts_with("TERM=")),
            "no TERM without -t"
        );
    }

    #[test]
    fn image_path_wins_over_the_default() {
        let env =
            env_of(&build(&image(&[], &["sh"], &["PATH=/opt/bin"], "", ""), &opts()).unwrap());
        assert_eq!(
            env.iter()
                .filter(|e| e.starts_with("PATH="))
                .collect::<Vec<_>>(),
            vec!["PATH=/opt/bin"]
        );
    }

    #[test]
    fn env_flag_without_value_takes_the_host_value_or_is_dropped() {
        let o = RunOptions {
            env: vec!["HUSK_SPEC_TEST_SURELY_UNSET".into()],
            ..opts()
        };
        let env = env_of(&build(&image(&[], &["sh"], &[], "", ""), &o).unwrap());
        assert!(!env
            .iter()
            .any(|e| e.starts_with("HUSK_SPEC_TEST_SURELY_UNSET")));
        let bad = RunOptions {
            env: vec!["=x".into()],
            ..opts()
        };
        assert!(matches!(
            build(&image(&[], &["sh"], &[], "", ""), &bad),
            Err(SpecError::BadEnv(_))
        ));
    }

    #[test]
    fn workdir_flag_beats_image_and_must_be_absolute() {
        let img = image(&[], &["sh"], &[], "/srv", "");
        assert_eq!(
            build(&img, &opts())
                .unwrap()
                .process()
                .as_ref()
                .unwrap()
                .cwd(),
            &std::path::PathBuf::from("/srv")
        );
        let o = RunOptions {
            workdir: Some("/tmp".into()),
            ..opts()
        };
        assert_eq!(
            build(&img, &o).unwrap().process().as_ref().unwrap().cwd(),
            &std::path::PathBuf::from("/tmp")
        );
        let rel = RunOptions {
            workdir: Some("tmp".into()),
            ..opts()
        };
        assert!(matches!(
            build(&img, &rel),
            Err(SpecError::RelativeWorkdir(_))
        ));
        let none = image(&[], &["sh"], &[], "", "");
        assert_eq!(
            build(&none, &opts())
                .unwrap()
                .process()
                .as_ref()
                .unwrap()
                .cwd(),
            &std::path::PathBuf::from("/")
        );
    }

    #[test]
    fn users_are_numeric() {
        assert_eq!(parse_user("").unwrap(), (0, 0));
        assert_eq!(parse_user("root").unwrap(), (0, 0));
        assert_eq!(parse_user("1000").unwrap(), (1000, 0));
        assert_eq!(parse_user("1000:1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:root").unwrap(), (1000, 0));
        assert!(matches!(parse_user("nobody"), Err(SpecError::UserName(_))));
        assert!(matches!(
            parse_user("1000:staff"),
            Err(SpecError::UserName(_))
        ));
        let o = RunOptions {
            user: Some("1000:1001".into()),
            group_add: vec![10, 20],
            ..opts()
        };
        let spec = build(&image(&[], &["id"], &[], "", "0"), &o).unwrap();
        let user = spec.process().as_ref().unwrap().user();
        assert_eq!((user.uid(), user.gid()), (1000, 1001));
        assert_eq!(user.additional_gids().as_deref(), Some(&[10, 20][..]));
        assert!(env_of(&spec).contains(&"HOME=/".to_string()));
    }

    #[test]
    fn defaults_match_docker() {
        let spec = build(&image(&[], &["sh"], &[], "", ""), &opts()).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("abc123"));
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        for t in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Network,
        ] {
            assert!(ns.contains(&t), "{t:?} missing");
        }
        let masked = linux.masked_paths().as_ref().unwrap();
        assert!(masked.contains(&"/proc/kcore".to_string()));
        assert!(linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".to_string()));
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let bounding = caps.bounding().clone().unwrap();
        assert_eq!(bounding.len(), 14);
        assert!(bounding.contains(&Capability::Chown));
        assert!(!bounding.contains(&Capability::SysAdmin));
        assert!(caps.inheritable().clone().unwrap().is_empty());
        let mounts: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().clone())
            .collect();
        for m in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
        ] {
            assert!(mounts.contains(&m.into()), "{m} missing");
        }
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.pids().unwrap().limit(), DEFAULT_PIDS_LIMIT);
        assert!(res.memory().is_none());
        assert!(res.cpu().is_none());
        assert!(!spec.process().as_ref().unwrap().terminal().unwrap());
    }

    #[test]
    fn seccomp_is_the_default_profile_unless_overridden() {
        let image = image(&[], &["sh"], &[], "", "");
        let spec = build(&image, &opts()).unwrap();
        let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(
            profile.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        assert!(profile.syscalls().as_ref().unwrap().len() > 2);
        let unconfined = RunOptions {
            seccomp: SeccompChoice::parse("unconfined").unwrap(),
            ..opts()
        };
        let spec = build(&image, &unconfined).unwrap();
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(&file, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        let custom = RunOptions {
            seccomp: SeccompChoice::parse(file.to_str().unwrap()).unwrap(),
            ..opts()
        };
        let spec = build(&image, &custom).unwrap();
        let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(
            profile.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
        );
        std::fs::write(&file, "{not json").unwrap();
        assert!(matches!(
            SeccompChoice::parse(file.to_str().unwrap()),
            Err(SpecError::Seccomp(_))
        ));
        assert!(SeccompChoice::parse("/no/such/profile.json").is_err());
    }

    #[test]
    fn limits_and_terminal() {
        let o = RunOptions {
            memory_bytes: Some(32 << 20),
            cpus: Some(1.5),
            pids_limit: Some(20),
            terminal: true,
            console_size: Some((40, 120)),
            ..opts()
        };
        let spec = build(&image(&[], &["sh"], &[], "", ""), &o).unwrap();
        let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(32 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(150_000));
        assert_eq!(res.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(res.pids().unwrap().limit(), 20);
        let process = spec.process().as_ref().unwrap();
        assert!(process.terminal().unwrap());
        let size = process.console_size().unwrap();
        assert_eq!((size.height(), size.width()), (40, 120));
        assert!(env_of(&spec).contains(&"TERM=xterm".to_string()));
        let bad = RunOptions {
            cpus: Some(0.0),
            ..opts()
        };
        assert!(matches!(
            build(&image(&[], &["sh"], &[], "", ""), &bad),
            Err(SpecError::BadCpus(_))
        ));
    }

    #[test]
    fn hostname_is_checked() {
        for bad in ["", "a b", "x;y", &"a".repeat(64)] {
            let o = RunOptions {
                hostname: bad.to_string(),
                ..opts()
            };
            assert!(
                matches!(
                    build(&image(&[], &["sh"], &[], "", ""), &o),
                    Err(SpecError::BadHostname(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn spec_survives_json_round_trip() {
        let spec = build(&image(&[], &["sh"], &[], "", ""), &opts()).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("256mb").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("100b").unwrap(), 100);
        for bad in ["", "M", "12x", "-5m", "0", "99999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
