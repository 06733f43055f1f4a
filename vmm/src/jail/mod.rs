//! The VMM's jail, entered after boot set-up (every file, socket and KVM
//! fd is open, guest memory is loaded) and before the first KVM_RUN:
//!
//! - its own mount, IPC, UTS and network namespaces (not PID: see
//!   `enter_namespaces`), pivoted into an empty per-VM directory (`--jail-root`):
//!   nothing of the host's filesystem is reachable by path;
//! - no_new_privs, every capability dropped (bounding set included), and
//!   an unprivileged uid/gid (`--uid`/`--gid`);
//! - seccomp filters per thread kind (see [`seccomp`]).
//!
//! A per-VM cgroup is husk's business (it knows the limits); see README.

pub mod seccomp;

use std::path::{Path, PathBuf};

use nix_like::*;

/// Thin wrappers over the libc calls the jail makes, each returning the
/// OS error (nix is not a dependency of the VMM; libc is).
mod nix_like {
    use std::ffi::CString;
    use std::io;
    use std::path::Path;

    pub fn check(rc: libc::c_int) -> io::Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn cpath(path: &Path) -> io::Result<CString> {
        use std::os::unix::ffi::OsStrExt;
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
    }
}

#[derive(Debug, Default, Clone)]
pub struct JailConfig {
    /// An empty directory to become the VMM's root; `None`: no namespaces.
    pub root: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Install the seccomp filters.
    pub seccomp: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("jail root {0} must be an empty directory")]
    RootNotEmpty(PathBuf),
    #[error("jail: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("jail: the parent died while privileges were dropped")]
    Orphaned,
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Os { what, source }
}

/// Enters the jail (see the module doc). The calling thread and the threads
/// it starts afterwards are jailed; threads started before keep the old
/// root (husk-vmm's signal thread, whose code only waits for signals).
pub fn enter(config: &JailConfig) -> Result<(), JailError> {
    if config.seccomp {
        seccomp::prepare()?;
    }
    if let Some(root) = &config.root {
        enter_namespaces(root)?;
    }
    // SAFETY: plain prctl calls on our own process.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(os("no_new_privs"))?;
    drop_privileges(config.uid, config.gid)
}

fn enter_namespaces(root: &Path) -> Result<(), JailError> {
    let empty = std::fs::read_dir(root)
        .map_err(os("read the jail root"))?
        .next()
        .is_none();
    if !empty {
        return Err(JailError::RootNotEmpty(root.to_owned()));
    }
    // No CLONE_NEWPID: it would only place future children (husk-vmm has
    // none), and afterwards the kernel refuses to create threads
    // (EINVAL), which the vCPUs need.
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // SAFETY: unshare has no memory-safety preconditions.
    check(unsafe { libc::unshare(flags) }).map_err(os("unshare namespaces"))?;
    let c_root = cpath(root).map_err(os("jail root path"))?;
    let none = std::ptr::null();
    // SAFETY: valid NUL-terminated paths or NULL where mount(2) allows it.
    unsafe {
        // Nothing we do may propagate back to the host's mounts.
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))
        .map_err(os("make mounts private"))?;
        // pivot_root needs the new root to be a mount point.
        check(libc::mount(
            c_root.as_ptr(),
            c_root.as_ptr(),
            none,
            libc::MS_BIND,
            std::ptr::null(),
        ))
        .map_err(os("bind the jail root"))?;
        check(libc::chdir(c_root.as_ptr())).map_err(os("chdir to the jail root"))?;
        // The old root stacked under the new one, then detached.
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)
            .map_err(os("pivot_root"))?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH)).map_err(os("detach the old root"))?;
        check(libc::chdir(c"/".as_ptr())).map_err(os("chdir /"))?;
        // Read-only and without devices or set-uid files: it is empty anyway.
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NODEV
                | libc::MS_NOSUID
                | libc::MS_NOEXEC,
            std::ptr::null(),
        ))
        .map_err(os("remount the jail root read-only"))?;
    }
    Ok(())
}

/// Bounding set first (needs CAP_SETPCAP), then the ids, then whatever is
/// left in the other sets. The parent-death signal is cleared by an id
/// change: it is set again, and a parent that died meanwhile ends us.
fn drop_privileges(uid: Option<u32>, gid: Option<u32>) -> Result<(), JailError> {
    let mut death_signal: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int.
    unsafe {
        libc::prctl(
            libc::PR_GET_PDEATHSIG,
            &mut death_signal as *mut libc::c_int,
        )
    };
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };

    let caps_error = |what| {
        move |err: caps::errors::CapsError| JailError::Os {
            what,
            source: std::io::Error::other(err.to_string()),
        }
    };
    // Without CAP_SETPCAP (started unprivileged) the bounding set cannot
    // shrink, and holds nothing usable anyway.
    if caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP)
        .map_err(caps_error("read capabilities"))?
    {
        caps::clear(None, caps::CapSet::Bounding)
            .map_err(caps_error("drop the bounding capabilities"))?;
    }
    // SAFETY: plain id-changing syscalls with valid arguments.
    unsafe {
        if let Some(gid) = gid {
            check(libc::setgroups(0, std::ptr::null())).map_err(os("setgroups"))?;
            check(libc::setresgid(gid, gid, gid)).map_err(os("setresgid"))?;
        }
        if let Some(uid) = uid {
            check(libc::setresuid(uid, uid, uid)).map_err(os("setresuid"))?;
        }
    }
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(caps_error("clear capabilities"))?;
    }
    if death_signal != 0 {
        // SAFETY: as above.
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != parent {
                return Err(JailError::Orphaned);
            }
        }
    }
    Ok(())
}
