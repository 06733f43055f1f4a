//! PID 1 duties: the guest's base mounts and powering off.

use std::fs;
use std::os::fd::IntoRawFd;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg};
use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot};

use crate::error::StepError;

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), StepError> {
    fs::create_dir_all(target).map_err(|err| StepError::new(format!("create {target}"), err))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|err| StepError::new(format!("mount {fstype} on {target}"), err))
}

/// pivot_root(2) refuses to move away from the initramfs root (it has no
/// parent mount), so containers could not pivot. Like switch_root, move a
/// fresh tmpfs over / and chroot into it: then the current root is an
/// ordinary mount.
fn leave_initramfs() -> Result<(), StepError> {
    let new_root = "/husk-root";
    mount_fs(
        "tmpfs",
        new_root,
        "tmpfs",
        MsFlags::empty(),
        Some("mode=0755"),
    )?;
    chdir(new_root).map_err(|err| StepError::new("chdir new root", err))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|err| StepError::new("move new root", err))?;
    chroot(".").map_err(|err| StepError::new("chroot new root", err))?;
    chdir("/").map_err(|err| StepError::new("chdir /", err))
}

/// If the kernel found no /dev/console in the initramfs, fds 0-2 are
/// closed and the first files we open would take their numbers (and logs
/// would go to the host channel). Point them at the console instead.
fn ensure_std_fds() {
    for fd in 0..=2 {
        if fcntl(unsafe_borrow(fd), FcntlArg::F_GETFD).is_err() {
            if let Ok(console) = fs::File::options()
                .read(true)
                .write(true)
                .open("/dev/console")
            {
                let raw = console.into_raw_fd();
                if raw != fd {
                    // SAFETY: dup2 onto a closed descriptor number.
                    unsafe {
                        libc::dup2(raw, fd);
                        libc::close(raw);
                    }
                }
            }
        }
    }
}

fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for F_GETFD, which fails cleanly (EBADF) on a closed fd.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Mounts what the agent and containers need. Runs first thing as PID 1.
pub fn setup() -> Result<(), StepError> {
    leave_initramfs()?;
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    ensure_std_fds();
    mount_fs("proc", "/proc", "proc", nosuid_nodev_noexec, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None)?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    mount_fs(
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid_nodev_noexec,
        None,
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    Ok(())
}

/// Kills every other process, flushes and resets the VM (the host runs it
/// with reboot=k / -no-reboot, so the reset ends it).
pub fn power_off() -> ! {
    // Outside a VM (a test on a host) this must never kill(-1) or reboot.
    if std::process::id() != 1 {
        std::process::exit(1);
    }
    // From PID 1, kill(-1) reaches every process but ourselves.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-1),
        nix::sys::signal::Signal::SIGKILL,
    );
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot only returns on failure (not PID 1 / no CAP_SYS_BOOT).
    std::process::exit(1)
}
