//! OCI seccomp profile → BPF programs (seccompiler).
//!
//! seccompiler filters have one match action each, so a profile becomes a
//! stack of filters: first the main one (default action on mismatch, allow
//! on match), then one per other action (allow on mismatch). The kernel runs
//! every filter and keeps the most restrictive result, so every syscall a
//! rule names is let through by the main filter (under the rule's own
//! conditions): otherwise a rule less strict than the default (`LOG`, or
//! `ERRNO` under a `KILL` default) would lose to the default for its own
//! syscall. A profile means "the rule's action for the syscalls it names,
//! the default for the rest", and that is what this gives.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::syscall_table::syscall_number;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unsupported seccomp action {0:?}")]
    UnsupportedAction(LinuxSeccompAction),
    #[error("seccomp notify (listenerPath) is not supported")]
    ListenerUnsupported,
    #[error("seccomp argument index {0} out of range (0..6)")]
    ArgIndex(usize),
    #[error("seccomp MASKED_EQ on {syscall} needs valueTwo")]
    MaskedEqWithoutValue { syscall: String },
    #[error("seccomp filter: {0}")]
    Compile(#[from] seccompiler::BackendError),
}

const EPERM: u32 = libc::EPERM as u32;

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(EPERM)),
        other @ LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction(other))
        }
    })
}

/// Syscall rules of one action: per syscall number, the OR of rules
/// (empty = unconditional).
type RuleSet = BTreeMap<i64, Vec<SeccompRule>>;

fn add_rule(rules: &mut RuleSet, number: i64, rule: Option<SeccompRule>) {
    match rule {
        // An unconditional match absorbs any conditional ones.
        None => {
            rules.insert(number, Vec::new());
        }
        Some(rule) => match rules.get_mut(&number) {
            // Already unconditional: the condition adds nothing.
            Some(existing) if existing.is_empty() => {}
            Some(existing) => existing.push(rule),
            None => {
                rules.insert(number, vec![rule]);
            }
        },
    }
}

/// Compiles the profile into BPF programs, to be installed in order.
/// Syscall names this architecture does not have are skipped (profiles
/// list names for many kernels and architectures).
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    if profile.listener_path().is_some() {
        return Err(SeccompError::ListenerUnsupported);
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut main_rules = RuleSet::new();
    // Other actions, in first-seen order (Vec: SeccompAction is not Ord).
    let mut other: Vec<(SeccompAction, RuleSet)> = Vec::new();

    for syscall in profile.syscalls().iter().flatten() {
        let act = action(syscall.action(), syscall.errno_ret())?;
        if act == default {
            continue;
        }
        let conditions = syscall
            .args()
            .iter()
            .flatten()
            .map(|arg| condition(arg, syscall.names().first()))
            .collect::<Result<Vec<_>, _>>()?;
        let rule = if conditions.is_empty() {
            None
        } else {
            Some(SeccompRule::new(conditions)?)
        };
        let mut rules = if act == SeccompAction::Allow {
            None
        } else if let Some(index) = other.iter().position(|(known, _)| *known == act) {
            Some(&mut other[index].1)
        } else {
            other.push((act.clone(), RuleSet::new()));
            let last = other.len() - 1;
            Some(&mut other[last].1)
        };
        for name in syscall.names() {
            match syscall_number(name) {
                Some(number) => {
                    // The main filter lets it through; its action's filter
                    // (if not plain allow) then decides.
                    add_rule(&mut main_rules, number, rule.clone());
                    if let Some(rules) = rules.as_mut() {
                        add_rule(rules, number, rule.clone());
                    }
                }
                None => tracing::debug!(syscall = %name, "seccomp: unknown syscall skipped"),
            }
        }
    }

    other.retain(|(_, rules)| !rules.is_empty());
    // Each filter after the first is installed with seccomp(2): a filter
    // that stops seccomp(2) itself goes last, so the others still install.
    if let Some(number) = syscall_number("seccomp") {
        other.sort_by_key(|(_, rules)| rules.contains_key(&number));
    }
    let arch = TargetArch::x86_64;
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        // The filters after this one are installed with seccomp(2), so this
        // one must let that call through. Filters only ever restrict, so
        // the container gains nothing it could abuse.
        if !other.is_empty() {
            if let Some(number) = syscall_number("seccomp") {
                main_rules.insert(number, Vec::new());
            }
        }
        let filter = SeccompFilter::new(main_rules, default, SeccompAction::Allow, arch)?;
        programs.push(BpfProgram::try_from(filter)?);
    }
    for (act, rules) in other {
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, act, arch)?;
        programs.push(BpfProgram::try_from(filter)?);
    }
    Ok(programs)
}

fn condition(
    arg: &oci_spec::runtime::LinuxSeccompArg,
    syscall: Option<&String>,
) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|index| *index < 6)
        .ok_or(SeccompError::ArgIndex(arg.index()))?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // libseccomp: `value` is the mask, `valueTwo` the expected result.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two()
                .ok_or_else(|| SeccompError::MaskedEqWithoutValue {
                    syscall: syscall.cloned().unwrap_or_default(),
                })?,
        ),
    };
    Ok(SeccompCondition::new(
        index,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?)
}

/// Installs the programs in order (the calling thread, inherited on exec).
///
/// Not seccompiler's `apply_filter`: it always sets no_new_privs, and the
/// spec decides that (`process.noNewPrivileges`); without it the caller
/// needs CAP_SYS_ADMIN, which the container setup still has at this point.
pub fn install(programs: &[BpfProgram]) -> std::io::Result<()> {
    for program in programs {
        let len = u16::try_from(program.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seccomp program too long")
        })?;
        let prog = libc::sock_fprog {
            len,
            // seccompiler's sock_filter is repr(C) with the kernel's layout,
            // the same as libc's.
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at a live, correctly sized program; the
        // kernel copies it during the call and keeps no pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn allowlist_profile_compiles_to_main_plus_per_action_filters() {
        let programs = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO",
                "syscalls":[
                  {"names":["read","write","no_such_syscall"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                   "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                  {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                  {"names":["mount"],"action":"SCMP_ACT_ERRNO"}
                ]}"#,
        ))
        .unwrap();
        // Main filter + the ENOSYS filter; the EPERM rule equals the default.
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|program| !program.is_empty()));
    }

    fn matches_syscall(program: &BpfProgram, number: i64) -> bool {
        // BPF_JMP | BPF_JEQ | BPF_K against the syscall number.
        program
            .iter()
            .any(|insn| insn.code == 0x15 && i64::from(insn.k) == number)
    }

    #[test]
    fn main_filter_lets_later_filters_install_only_when_there_are_any() {
        let seccomp_nr = syscall_number("seccomp").unwrap();
        let stacked = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                 {"names":["read"],"action":"SCMP_ACT_ALLOW"},
                 {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        ))
        .unwrap();
        assert!(matches_syscall(&stacked[0], seccomp_nr));
        assert!(matches_syscall(
            &stacked[1],
            syscall_number("clone3").unwrap()
        ));
        let single = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                 {"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        assert_eq!(single.len(), 1);
        assert!(!matches_syscall(&single[0], seccomp_nr));
        assert!(matches_syscall(&single[0], 0));
    }

    #[test]
    fn denylist_profile_has_no_main_filter() {
        let programs = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["kexec_load"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        ))
        .unwrap();
        assert_eq!(programs.len(), 1);
    }

    #[test]
    fn masked_eq_and_bad_args_are_checked() {
        let ok = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["clone"],
               "action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,
               "valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        assert!(compile(&ok).is_ok());
        let no_value_two = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["clone"],
               "action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,
               "op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        assert!(matches!(
            compile(&no_value_two),
            Err(SeccompError::MaskedEqWithoutValue { .. })
        ));
        let bad_index = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],
               "action":"SCMP_ACT_ALLOW","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(matches!(
            compile(&bad_index),
            Err(SeccompError::ArgIndex(6))
        ));
    }

    #[test]
    fn notify_is_reported_as_unsupported() {
        let notify = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
               "action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(matches!(
            compile(&notify),
            Err(SeccompError::UnsupportedAction(_))
        ));
    }

    /// How a forked child that installs `profile` and makes three raw
    /// syscalls ends: each call's result (errno, or 0 for success) or the
    /// signal that killed it. This checks behaviour, as the kernel applies
    /// the stacked filters, not the shape of the programs.
    fn run_under(profile_json: &str, calls: [libc::c_long; 3]) -> Result<[i32; 3], i32> {
        let programs = compile(&profile(profile_json)).unwrap();
        let mut pipe = [0i32; 2];
        // SAFETY: plain pipe creation into a local array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes raw syscalls (no allocation, no
        // locks) until _exit, so forking a threaded test runner is safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install(&programs).is_err() {
                    libc::_exit(99);
                }
                let mut results = [0i32; 3];
                for (slot, number) in results.iter_mut().zip(calls) {
                    if libc::syscall(number) < 0 {
                        *slot = *libc::__errno_location();
                    }
                }
                libc::write(pipe[1], results.as_ptr().cast(), 12);
                libc::_exit(0);
            }
        }
        unsafe { libc::close(pipe[1]) };
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut results = [0i32; 3];
        let read = unsafe { libc::read(pipe[0], results.as_mut_ptr().cast(), 12) };
        unsafe { libc::close(pipe[0]) };
        if libc::WIFSIGNALED(status) {
            return Err(libc::WTERMSIG(status));
        }
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child could not install");
        assert_eq!(read, 12);
        Ok(results)
    }

    #[test]
    fn allowed_errno_and_less_strict_rules_behave_as_the_profile_says() {
        // Default EPERM; getppid allowed, getpgrp under LOG (less strict
        // than the default: it must succeed), getuid not named (EPERM).
        let results = run_under(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                 {"names":["exit_group","exit","write"],"action":"SCMP_ACT_ALLOW"},
                 {"names":["getppid"],"action":"SCMP_ACT_ALLOW"},
                 {"names":["getpgrp"],"action":"SCMP_ACT_LOG"}]}"#,
            [libc::SYS_getppid, libc::SYS_getpgrp, libc::SYS_getuid],
        )
        .unwrap();
        assert_eq!(results, [0, 0, libc::EPERM]);
    }

    #[test]
    fn errno_rule_under_a_kill_default_returns_its_errno() {
        let results = run_under(
            r#"{"defaultAction":"SCMP_ACT_KILL_PROCESS","syscalls":[
                 {"names":["exit_group","exit","write","getppid"],"action":"SCMP_ACT_ALLOW"},
                 {"names":["getpgrp"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                 {"names":["getuid"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
            [libc::SYS_getppid, libc::SYS_getpgrp, libc::SYS_getuid],
        )
        .unwrap();
        assert_eq!(results, [0, libc::ENOSYS, libc::EACCES]);
    }

    #[test]
    fn kill_rule_kills_with_sigsys() {
        let outcome = run_under(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                 {"names":["getpgrp"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
            [libc::SYS_getppid, libc::SYS_getpgrp, libc::SYS_getuid],
        );
        assert_eq!(outcome, Err(libc::SIGSYS));
    }

    /// `husk run`'s default profile (data kept with the host, which puts
    /// it in the spec): every name is a syscall this table knows, and it
    /// compiles; under it, a namespace flag to clone fails with EPERM,
    /// clone3 with ENOSYS, and ordinary calls work.
    #[test]
    fn the_default_run_profile_compiles_and_behaves() {
        let text = include_str!("../../../runtime-shim/src/sandbox/seccomp_default.json");
        let parsed = profile(text);
        for rule in parsed.syscalls().iter().flatten() {
            for name in rule.names() {
                assert!(syscall_number(name).is_some(), "{name}");
            }
        }
        let results = run_under(
            text,
            [libc::SYS_getppid, libc::SYS_clone3, libc::SYS_unshare],
        )
        .unwrap();
        assert_eq!(results[0], 0);
        assert_eq!(results[1], libc::ENOSYS);
        // unshare is not allowed at all: EPERM whatever its flags.
        assert_eq!(results[2], libc::EPERM);
    }

    #[test]
    fn syscall_table_knows_common_names() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("execve"), Some(59));
        assert_eq!(syscall_number("clone3"), Some(435));
        assert_eq!(syscall_number("not_a_syscall"), None);
    }
}
