//! The child side of process creation: everything between clone and
//! execve, and the pipe protocol that reports its progress to the agent.
//!
//! The child reports on a close-on-exec "sync" pipe: one JSON line `Ready`
//! once set up, then (after the agent's start byte on the "start" pipe) the
//! pipe either closes by itself on a successful execve or carries a
//! `Failed` line naming the step.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::WaitStatus;
use nix::unistd::{
    chdir, dup2_stderr, dup2_stdin, dup2_stdout, execve, sethostname, setresgid, setresuid, setsid,
    Gid, Uid,
};
use oci_spec::runtime::{PosixRlimitType, Process, Spec};
use seccompiler::BpfProgram;
use serde::{Deserialize, Serialize};

use husk_agent::protocol::{ErrorReply, ExitStatus};

use super::capabilities::{self, CapabilityPlan};
use super::mounts;
use super::seccomp;
use super::stdio::ChildStdio;
use crate::error::StepError;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A line on the sync pipe, child → agent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildMessage {
    Ready,
    Failed(ErrorReply),
}

/// How the child gets into the container.
pub enum Entry {
    /// The init process: new namespaces (already made by clone) and the
    /// rootfs to set up.
    Init {
        rootfs: PathBuf,
        spec: Box<Spec>,
        /// Namespaces to unshare after joining the cgroup (cgroup ns).
        unshare_after_cgroup: CloneFlags,
        /// A pod member: its sandbox's namespaces to join first.
        join: Vec<(OwnedFd, CloneFlags)>,
    },
    /// An exec'd process: join the init process's namespaces.
    Join {
        namespaces: Vec<(OwnedFd, CloneFlags)>,
    },
}

pub struct ChildSetup {
    pub entry: Entry,
    pub process: Process,
    pub cgroup: PathBuf,
    pub stdio: ChildStdio,
    pub sync: OwnedFd,
    pub start: OwnedFd,
    pub seccomp: Vec<BpfProgram>,
    pub caps: CapabilityPlan,
}

/// Maps a wait status to how the process ended; `None` for stops etc.
pub fn exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::exited(code)),
        WaitStatus::Signaled(_, signal, _) => Some(ExitStatus::signaled(signal as i32)),
        _ => None,
    }
}

/// Finds `program` like execvp would, but in the container's PATH (from
/// its env), not the agent's.
pub fn find_executable(
    program: &str,
    env: &[String],
    is_executable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find_map(|entry| entry.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
        && fs::metadata(path).is_ok_and(|meta| meta.is_file())
}

fn send(sync: &OwnedFd, message: &ChildMessage) {
    let Ok(mut line) = serde_json::to_vec(message) else {
        return;
    };
    line.push(b'\n');
    let mut rest = line.as_slice();
    while !rest.is_empty() {
        match nix::unistd::write(sync, rest) {
            Ok(written) => rest = &rest[written..],
            Err(Errno::EINTR) => {}
            // The agent is gone: nobody to tell.
            Err(_) => return,
        }
    }
}

/// The child's entry point: set up, report, wait for start, exec. Returns
/// (the child's exit code) only on failure.
pub fn run(setup: ChildSetup) -> isize {
    let Ok(sync) = setup.sync.try_clone() else {
        return 126;
    };
    match setup_and_exec(setup) {
        Ok(never) => match never {},
        Err(err) => {
            send(&sync, &ChildMessage::Failed(err.into()));
            127
        }
    }
}

enum Never {}

fn step<T>(what: impl Into<String>, result: nix::Result<T>) -> Result<T, StepError> {
    result.map_err(|err| StepError::new(what, err.desc()))
}

fn rlimit_resource(typ: PosixRlimitType) -> Option<Resource> {
    Some(match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

fn cstring(what: &str, value: impl Into<Vec<u8>>) -> Result<CString, StepError> {
    CString::new(value).map_err(|_| StepError::new(what, "contains a NUL byte"))
}

fn setup_and_exec(setup: ChildSetup) -> Result<Never, StepError> {
    let ChildSetup {
        entry,
        process,
        cgroup,
        stdio,
        sync,
        start,
        seccomp: filters,
        caps,
    } = setup;

    // The cgroup first, so everything the process does is accounted.
    fs::write(cgroup.join("cgroup.procs"), "0")
        .map_err(|err| StepError::new(format!("join cgroup {}", cgroup.display()), err))?;

    let terminal = stdio.console.is_some();
    step("setsid", setsid())?;
    step("stdin", dup2_stdin(&stdio.stdin))?;
    step("stdout", dup2_stdout(&stdio.stdout))?;
    step("stderr", dup2_stderr(&stdio.stderr))?;
    if terminal {
        // SAFETY: TIOCSCTTY takes an int argument; fd 0 is the pty slave.
        let result = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        step("set controlling terminal", Errno::result(result))?;
    }

    match entry {
        Entry::Init {
            rootfs,
            spec,
            unshare_after_cgroup,
            join,
        } => {
            for (fd, kind) in &join {
                step(
                    format!("join the sandbox's namespace {kind:?}"),
                    setns(fd.as_fd(), *kind),
                )?;
            }
            if !unshare_after_cgroup.is_empty() {
                step("unshare cgroup namespace", unshare(unshare_after_cgroup))?;
            }
            // A shared UTS namespace keeps the sandbox's hostname.
            let shared_uts = join
                .iter()
                .any(|(_, kind)| *kind == CloneFlags::CLONE_NEWUTS);
            if let (Some(hostname), false) = (spec.hostname(), shared_uts) {
                step("sethostname", sethostname(hostname))?;
            }
            mounts::prepare_rootfs(&rootfs, &spec, stdio.console.as_deref())?;
            mounts::pivot(&rootfs)?;
            if let Some(linux) = spec.linux() {
                for (key, value) in linux.sysctl().iter().flatten() {
                    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
                    if key.contains("..") || key.contains('/') {
                        return Err(StepError::new(format!("sysctl {key}"), "bad key"));
                    }
                    fs::write(&path, value)
                        .map_err(|err| StepError::new(format!("sysctl {key}"), err))?;
                }
                mounts::mask_paths(linux.masked_paths().as_deref().unwrap_or_default())?;
                mounts::readonly_paths(linux.readonly_paths().as_deref().unwrap_or_default())?;
            }
            if spec.root().as_ref().and_then(|root| root.readonly()) == Some(true) {
                mounts::remount_readonly("/", "make rootfs read-only")?;
            }
        }
        Entry::Join { namespaces } => {
            // The mount namespace last: the others are opened by fd already.
            for (fd, kind) in &namespaces {
                step(format!("join namespace {kind:?}"), setns(fd.as_fd(), *kind))?;
            }
        }
    }

    for rlimit in process.rlimits().iter().flatten() {
        let resource = rlimit_resource(rlimit.typ()).ok_or_else(|| {
            StepError::new("rlimits", format!("unsupported rlimit {:?}", rlimit.typ()))
        })?;
        step(
            format!("setrlimit {:?}", rlimit.typ()),
            setrlimit(resource, rlimit.soft(), rlimit.hard()),
        )?;
    }

    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, which
    // the user switch may drop: install it now (the profile must then allow
    // the few syscalls left until execve, as OCI profiles do).
    if !no_new_privs {
        seccomp::install(&filters).map_err(|err| StepError::new("seccomp", err))?;
    }

    let user = process.user();
    if let Some(mask) = user.umask() {
        umask(Mode::from_bits_truncate(mask as libc::mode_t));
    }
    capabilities::drop_bounding(&caps).map_err(|err| StepError::new("capabilities", err))?;
    step("keep capabilities", nix::sys::prctl::set_keepcaps(true))?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|gid| Gid::from_raw(*gid))
        .collect();
    step("setgroups", nix::unistd::setgroups(&groups))?;
    let gid = Gid::from_raw(user.gid());
    let uid = Uid::from_raw(user.uid());
    step(format!("setgid {gid}"), setresgid(gid, gid, gid))?;
    step(format!("setuid {uid}"), setresuid(uid, uid, uid))?;
    step("keep capabilities", nix::sys::prctl::set_keepcaps(false))?;
    capabilities::apply(&caps).map_err(|err| StepError::new("capabilities", err))?;

    let cwd = process.cwd();
    step(format!("chdir {}", cwd.display()), chdir(cwd.as_path()))?;

    let args = process.args().clone().unwrap_or_default();
    let program = args
        .first()
        .ok_or_else(|| StepError::new("exec", "process.args is empty"))?;
    let env = process.env().clone().unwrap_or_default();
    let path = find_executable(program, &env, is_executable).ok_or_else(|| {
        StepError::new(
            format!("exec {program}"),
            "executable file not found in $PATH",
        )
    })?;
    let c_path = cstring("exec path", path.as_os_str().as_bytes())?;
    let c_args = args
        .iter()
        .map(|arg| cstring("process.args", arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let c_env = env
        .iter()
        .map(|var| cstring("process.env", var.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;

    send(&sync, &ChildMessage::Ready);
    let mut byte = [0u8; 1];
    match fs::File::from(start).read(&mut byte) {
        Ok(1) => {}
        // The agent closed the pipe without starting us: just go.
        _ => std::process::exit(0),
    }

    if no_new_privs {
        step("no_new_privs", nix::sys::prctl::set_no_new_privs())?;
        seccomp::install(&filters).map_err(|err| StepError::new("seccomp", err))?;
    }
    // The agent blocks SIGCHLD and Rust ignores SIGPIPE; neither may leak
    // into the container.
    step(
        "signal mask",
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None),
    )?;
    // SAFETY: restoring the default disposition installs no handler.
    step("reset SIGPIPE", unsafe {
        signal(Signal::SIGPIPE, SigHandler::SigDfl)
    })?;

    let err = match execve(&c_path, &c_args, &c_env) {
        Err(err) => err,
        Ok(never) => match never {},
    };
    Err(StepError::new(
        format!("exec {}", path.display()),
        err.desc(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;

    #[test]
    fn wait_statuses_map_to_exit_statuses() {
        let pid = Pid::from_raw(5);
        assert_eq!(
            exit_status(WaitStatus::Exited(pid, 3)),
            Some(ExitStatus::exited(3))
        );
        let killed = exit_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)).unwrap();
        assert_eq!(killed, ExitStatus::signaled(9));
        assert_eq!(killed.shell_code(), 137);
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }

    #[test]
    fn executables_are_found_in_the_container_path() {
        let env = vec!["HOME=/root".to_owned(), "PATH=/opt/bin:/bin".to_owned()];
        let exists = |path: &Path| path == Path::new("/bin/sh");
        assert_eq!(
            find_executable("sh", &env, exists),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_executable("nope", &env, exists), None);
        // A path is used as given, whether or not it exists.
        assert_eq!(
            find_executable("./run", &env, exists),
            Some(PathBuf::from("./run"))
        );
        // No PATH in the env: the default one.
        let default = |path: &Path| path == Path::new("/usr/bin/env");
        assert_eq!(
            find_executable("env", &[], default),
            Some(PathBuf::from("/usr/bin/env"))
        );
    }
}
