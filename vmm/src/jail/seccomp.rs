//! seccomp filters per thread kind (seccompiler), installed once boot
//! set-up is done: a guest that takes over a VMM thread through a device
//! bug can make only the syscalls that thread kind needs.
//!
//! - vCPU: KVM_RUN and the other KVM ioctls, MMIO/PIO emulation, and what
//!   a device activation does on the vCPU thread (eventfds, epoll, spawning
//!   a worker, whose filter starts as a copy of this one).
//! - device worker: epoll, eventfds, disk I/O, the console socket; no
//!   KVM ioctl, no thread creation.
//! - main: waiting for the exit reason, kicking and joining the vCPUs,
//!   tearing the devices down.
//!
//! A violation traps (SIGSYS): the handler writes which syscall to stderr
//! (the VMM log) and the process dies of SIGSYS.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which filter a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Main,
    Vcpu,
    Worker,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, seccompiler::BackendError),
    #[error("installing the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, seccompiler::Error),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// Every thread: memory, futexes, signals (the vCPU kick, the SIGSYS
/// report), time, logging, leaving.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fcntl,
    // Allowed here, answered EACCES by `DENY_OPEN`: libc opens files
    // behind our back (glibc's malloc reads /sys/devices/system/cpu/online
    // when a thread first needs an arena) and copes with a failure.
    libc::SYS_open,
    libc::SYS_openat,
];

/// Opening files fails with EACCES in every thread (the jail's root is
/// empty anyway): a second filter, stacked on each kind's own.
const DENY_OPEN: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_creat,
];

/// Device workers: their event loop, the disk, the console socket.
const WORKER: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_dup,
];

/// Starting a thread (a worker from a vCPU thread, the vCPUs from main).
const SPAWN: &[libc::c_long] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_seccomp,
];

/// The ioctls the VMM issues after set-up: KVM's (type 0xAE: KVM_RUN,
/// register reads for error reports, irqfd/ioeventfd on activation; not
/// for workers) and the fd ones: FIONBIO (std's set_nonblocking, on the
/// console's accepted client), FIONREAD (the console's bytes waiting) and
/// TCGETS (isatty); and TUNSETOFFLOAD, which virtio-net's activation (on
/// the vCPU thread) issues on its tap to match the offloads the guest acked.
const KVM_IOCTL_TYPE: u64 = 0xAE;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TCGETS: u64 = 0x5401;
const FIONREAD: u64 = 0x541B;
const FIONBIO: u64 = 0x5421;

fn ioctl_rules(kvm: bool) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let request = |op, value| SeccompCondition::new(1, SeccompCmpArgLen::Dword, op, value);
    let mut rules = Vec::new();
    if kvm {
        // _IOC type byte is bits 8..16 of the request.
        rules.push(SeccompRule::new(vec![request(
            SeccompCmpOp::MaskedEq(0xff00),
            KVM_IOCTL_TYPE << 8,
        )?])?);
        rules.push(SeccompRule::new(vec![request(
            SeccompCmpOp::Eq,
            TUNSETOFFLOAD,
        )?])?);
    }
    for fd_ioctl in [TCGETS, FIONREAD, FIONBIO] {
        rules.push(SeccompRule::new(vec![request(
            SeccompCmpOp::Eq,
            fd_ioctl,
        )?])?);
    }
    Ok(rules)
}

/// The syscalls of `kind` and their argument rules (empty = any).
pub fn rules(
    kind: ThreadKind,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules = BTreeMap::new();
    let mut allow = |numbers: &[libc::c_long]| {
        for number in numbers {
            rules.insert(*number, Vec::new());
        }
    };
    allow(COMMON);
    match kind {
        ThreadKind::Worker => allow(WORKER),
        // A worker's filter starts as a copy of its vCPU's, so the vCPU
        // filter holds the worker's syscalls too.
        ThreadKind::Vcpu => {
            allow(WORKER);
            allow(SPAWN);
        }
        ThreadKind::Main => {
            allow(SPAWN);
            allow(&[libc::SYS_poll, libc::SYS_ppoll, libc::SYS_epoll_wait]);
            // Tear-down: the console removes its socket (outside a jail;
            // inside, the path no longer resolves).
            allow(&[libc::SYS_unlink, libc::SYS_unlinkat]);
        }
    }
    rules.insert(libc::SYS_ioctl, ioctl_rules(kind != ThreadKind::Worker)?);
    Ok(rules)
}

/// The compiled filter of `kind`.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |err| SeccompError::Build(kind, err);
    let filter = SeccompFilter::new(
        rules(kind).map_err(build)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// The filter that makes opening files fail with EACCES.
pub fn deny_open_program() -> Result<BpfProgram, SeccompError> {
    let build = |err| SeccompError::Build(ThreadKind::Main, err);
    let rules = DENY_OPEN
        .iter()
        .map(|number| (*number, Vec::new()))
        .collect::<BTreeMap<_, _>>();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// The filters, compiled once when the jail is entered; threads started
/// afterwards (vCPUs, workers) install theirs from here. Unset (tests, a
/// VMM run without the jail): [`apply`] does nothing.
static FILTERS: OnceLock<[BpfProgram; 4]> = OnceLock::new();

/// Compiles the three filters and installs the SIGSYS reporter; from now
/// on [`apply`] filters the calling thread.
pub fn prepare() -> Result<(), SeccompError> {
    install_sigsys_handler()?;
    let filters = [
        program(ThreadKind::Main)?,
        program(ThreadKind::Vcpu)?,
        program(ThreadKind::Worker)?,
        deny_open_program()?,
    ];
    let _ = FILTERS.set(filters);
    Ok(())
}

/// Filters the calling thread as `kind` (if [`prepare`] ran). Also sets
/// no_new_privs, which a filter without CAP_SYS_ADMIN requires.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    let program = match kind {
        ThreadKind::Main => &filters[0],
        ThreadKind::Vcpu => &filters[1],
        ThreadKind::Worker => &filters[2],
    };
    THREAD_KIND.with(|cell| cell.set(kind_name(kind)));
    // The open filter first: installing a filter takes prctl and seccomp,
    // which the kind's own (a worker's) may not allow.
    seccompiler::apply_filter(&filters[3]).map_err(|err| SeccompError::Install(kind, err))?;
    seccompiler::apply_filter(program).map_err(|err| SeccompError::Install(kind, err))
}

fn kind_name(kind: ThreadKind) -> &'static [u8] {
    match kind {
        ThreadKind::Main => b"the main",
        ThreadKind::Vcpu => b"a vCPU",
        ThreadKind::Worker => b"a device worker",
    }
}

thread_local! {
    /// The filtered thread's kind, for the violation report (a const
    /// thread-local: reading it in a signal handler allocates nothing).
    static THREAD_KIND: std::cell::Cell<&'static [u8]> = const { std::cell::Cell::new(b"an unfiltered") };
}

/// Whether filters are in force for new threads.
pub fn enabled() -> bool {
    FILTERS.get().is_some()
}

/// Writes "husk-vmm: seccomp violation: syscall N in KIND thread" and ends
/// the process with SIGSYS. Only async-signal-safe calls (no allocation).
extern "C" fn report_violation(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; `si_syscall`
    // is the int at offset 24 of the SIGSYS layout (after si_signo,
    // si_errno, si_code and the 8-byte call address).
    let number = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() };
    let mut line = [0u8; 128];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        for &byte in bytes {
            if len < line.len() {
                line[len] = byte;
                len += 1;
            }
        }
    };
    push(b"husk-vmm: seccomp violation: syscall ");
    let mut digits = [0u8; 12];
    let mut value = number.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    push(&digits[at..]);
    // Only calls every filter allows from here on (no prctl for the
    // thread's name: a second violation would kill without a word).
    push(b" in ");
    push(THREAD_KIND.with(|cell| cell.get()));
    push(b" thread; the VMM stops\n");
    // SAFETY: write, signal and raise are async-signal-safe. SIGSYS is
    // blocked while this handler runs: the raised one is delivered, with
    // the default action (terminate), as the handler returns.
    unsafe {
        libc::write(2, line.as_ptr().cast(), len);
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::raise(libc::SIGSYS);
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = report_violation as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_and_workers_get_no_ioctl_or_clone() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Worker] {
            assert!(!program(kind).unwrap().is_empty());
        }
        let worker = rules(ThreadKind::Worker).unwrap();
        // Only the three fd ioctls, no KVM one.
        assert_eq!(worker[&libc::SYS_ioctl].len(), 3);
        // KVM's, TUNSETOFFLOAD (virtio-net activation) and the fd ones.
        assert_eq!(rules(ThreadKind::Vcpu).unwrap()[&libc::SYS_ioctl].len(), 5);
        for forbidden in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_execve,
            libc::SYS_socket,
        ] {
            assert!(!worker.contains_key(&forbidden), "{forbidden}");
        }
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        assert!(
            !vcpu[&libc::SYS_ioctl].is_empty(),
            "ioctl has argument rules"
        );
        for number in worker.keys() {
            assert!(
                vcpu.contains_key(number),
                "a worker inherits its vCPU's filter: {number}"
            );
        }
        for forbidden in [libc::SYS_execve, libc::SYS_socket, libc::SYS_bind] {
            assert!(!vcpu.contains_key(&forbidden), "{forbidden}");
        }
        assert!(!deny_open_program().unwrap().is_empty());
    }

    /// In a forked child under a worker's filters: opening a file fails
    /// with EACCES (not a kill), and a forbidden syscall kills with SIGSYS.
    #[test]
    fn opening_fails_with_eacces_and_socket_kills() {
        let worker = program(ThreadKind::Worker).unwrap();
        let deny = deny_open_program().unwrap();
        // SAFETY: the child makes only raw syscalls until _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if seccompiler::apply_filter(&deny).is_err()
                    || seccompiler::apply_filter(&worker).is_err()
                {
                    libc::_exit(90);
                }
                let fd = libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/".as_ptr(), 0);
                if fd >= 0 || *libc::__errno_location() != libc::EACCES {
                    libc::_exit(91);
                }
                libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::_exit(92);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        // Exit 90/91 would mean the filters did not install or open was
        // not refused with EACCES; 92 that socket(2) ran.
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "status {status:#x} (exit {})",
            libc::WEXITSTATUS(status)
        );
    }
}
