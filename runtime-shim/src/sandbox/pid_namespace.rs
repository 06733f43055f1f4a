//! Starting the VM program as PID 1 of a PID namespace of its own, so that
//! a VMM taken over by its guest sees no other process of the host (and
//! cannot signal or ptrace one even where its uid would allow it).
//!
//! Why a thread of its own: `unshare(CLONE_NEWPID)` moves only the caller's
//! *future children* into the new namespace, and a task whose children's
//! namespace differs from its own may no longer create threads. husk-vmm
//! needs threads, so it cannot unshare for itself; husk's own threads must
//! keep working too. A dedicated husk thread therefore unshares and forks:
//! the child starts as PID 1 of the new namespace, and its threads live
//! there with it. The thread then stays until the VM process has been
//! reaped, because the parent-death signal that ties the VM to husk fires
//! when the *thread* that forked it ends, not the process.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The thread that forked a VM process into its PID namespace. Dropping it
/// (after the VM process has been reaped) lets the thread end.
#[derive(Debug)]
pub(crate) struct NamespaceParent {
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for NamespaceParent {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Spawns `command` as PID 1 of a new PID namespace (needs CAP_SYS_ADMIN).
/// The child's `getppid()` is 0 there, so a parent-death check in a
/// `pre_exec` closure cannot compare it with husk's pid.
pub(crate) fn spawn(mut command: Command) -> io::Result<(Child, NamespaceParent)> {
    let (spawned_tx, spawned_rx) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("vm-pid-ns".into())
        .spawn(move || {
            // SAFETY: unshare has no memory-safety preconditions; it changes
            // only this thread's namespace for children.
            let spawned = if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                Err(io::Error::last_os_error())
            } else {
                command.spawn()
            };
            let ok = spawned.is_ok();
            if spawned_tx.send(spawned).is_err() || !ok {
                return;
            }
            // Until the VmProcess is gone (the sender is dropped).
            let _ = released.recv();
        })?;
    let parent = NamespaceParent {
        release: Some(release),
        thread: Some(thread),
    };
    match spawned_rx.recv() {
        Ok(Ok(child)) => Ok((child, parent)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the VM's PID namespace thread ended")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root: the child is PID 1 of its own namespace, and it stays alive
    /// (the forking thread does not end under it) until it is killed.
    #[test]
    fn the_child_is_pid_1_of_a_namespace_of_its_own() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: a PID namespace needs root");
            return;
        }
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo $$; exec sleep 30"])
            .stdout(std::process::Stdio::piped());
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (mut child, parent) = spawn(command).expect("spawn in a PID namespace");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "1", "the shell's own pid in its namespace");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default();
        assert_eq!(nspid, [child.id().to_string().as_str(), "1"], "{status}");
        // Still running although spawn() has returned: the forking thread
        // is alive, so the parent-death signal has not fired.
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
        drop(parent);
    }
}
