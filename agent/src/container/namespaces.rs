//! Spec namespaces → clone flags.

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("joining an existing {0:?} namespace by path is not supported in the guest")]
    PathUnsupported(LinuxNamespaceType),
    #[error("user namespaces are not supported (the VM is the isolation boundary)")]
    UserUnsupported,
}

/// The namespaces a pod member may share with its sandbox: a path (a host
/// path, meaningless in the guest) on one of these means "the sandbox's".
pub const SHARED_WITH_SANDBOX: [(LinuxNamespaceType, &str, CloneFlags); 3] = [
    (LinuxNamespaceType::Network, "net", CloneFlags::CLONE_NEWNET),
    (LinuxNamespaceType::Ipc, "ipc", CloneFlags::CLONE_NEWIPC),
    (LinuxNamespaceType::Uts, "uts", CloneFlags::CLONE_NEWUTS),
];

/// A pod member's namespaces: those it shares with its sandbox (its
/// network, IPC and UTS entries that carry a path), as (`/proc/PID/ns`
/// name, kind), and the rest, which it gets of its own. Outside a pod
/// (`member` false) nothing is shared.
pub fn split_shared(
    namespaces: &[LinuxNamespace],
    member: bool,
) -> (Vec<LinuxNamespace>, Vec<(&'static str, CloneFlags)>) {
    let mut own = Vec::new();
    let mut shared = Vec::new();
    for namespace in namespaces {
        let share = SHARED_WITH_SANDBOX
            .iter()
            .find(|(typ, _, _)| *typ == namespace.typ())
            .filter(|_| member && namespace.path().is_some());
        match share {
            Some((_, name, flag)) => shared.push((*name, *flag)),
            None => own.push(namespace.clone()),
        }
    }
    (own, shared)
}

/// The clone flags that create the namespaces the spec asks for. Joining
/// a namespace by path makes no sense in the guest (a pod member's shared
/// ones are taken out first by [`split_shared`]).
pub fn clone_flags(namespaces: &[LinuxNamespace]) -> Result<CloneFlags, NamespaceError> {
    let mut flags = CloneFlags::empty();
    for namespace in namespaces {
        if namespace.path().is_some() {
            return Err(NamespaceError::PathUnsupported(namespace.typ()));
        }
        flags |= match namespace.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::Time => CloneFlags::empty(),
            LinuxNamespaceType::User => return Err(NamespaceError::UserUnsupported),
        };
    }
    // The agent's own mounts must never change: the container always gets
    // a mount namespace, even if the spec forgot it.
    Ok(flags | CloneFlags::CLONE_NEWNS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces(json: &str) -> Vec<LinuxNamespace> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn spec_namespaces_map_to_clone_flags() {
        let flags = clone_flags(&namespaces(
            r#"[{"type":"pid"},{"type":"uts"},{"type":"ipc"},{"type":"network"},{"type":"mount"}]"#,
        ))
        .unwrap();
        assert_eq!(
            flags,
            CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWNS
        );
    }

    #[test]
    fn mount_namespace_is_always_added() {
        let flags = clone_flags(&namespaces(r#"[{"type":"pid"}]"#)).unwrap();
        assert!(flags.contains(CloneFlags::CLONE_NEWNS));
        assert!(!flags.contains(CloneFlags::CLONE_NEWNET));
    }

    #[test]
    fn a_member_shares_net_ipc_and_uts_given_by_path_and_owns_the_rest() {
        let spec = namespaces(
            r#"[{"type":"pid"},{"type":"mount"},{"type":"network","path":"/var/run/netns/cni-1"},
                {"type":"ipc","path":"/proc/9/ns/ipc"},{"type":"uts","path":"/proc/9/ns/uts"}]"#,
        );
        let (own, shared) = split_shared(&spec, true);
        assert_eq!(
            shared,
            vec![
                ("net", CloneFlags::CLONE_NEWNET),
                ("ipc", CloneFlags::CLONE_NEWIPC),
                ("uts", CloneFlags::CLONE_NEWUTS)
            ]
        );
        let flags = clone_flags(&own).unwrap();
        assert_eq!(flags, CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS);
        // Not a member: nothing is shared, and the paths are refused.
        let (own, shared) = split_shared(&spec, false);
        assert!(shared.is_empty());
        assert!(clone_flags(&own).is_err());
        // A member's PID namespace by path is not the sandbox's: refused.
        let (own, _) = split_shared(
            &namespaces(r#"[{"type":"pid","path":"/proc/9/ns/pid"}]"#),
            true,
        );
        assert!(clone_flags(&own).is_err());
        // Without paths a member gets its own of everything.
        let (own, shared) =
            split_shared(&namespaces(r#"[{"type":"uts"},{"type":"network"}]"#), true);
        assert!(shared.is_empty());
        assert_eq!(own.len(), 2);
    }

    #[test]
    fn paths_and_user_namespaces_are_rejected() {
        assert!(matches!(
            clone_flags(&namespaces(
                r#"[{"type":"network","path":"/proc/1/ns/net"}]"#
            )),
            Err(NamespaceError::PathUnsupported(_))
        ));
        assert!(matches!(
            clone_flags(&namespaces(r#"[{"type":"user"}]"#)),
            Err(NamespaceError::UserUnsupported)
        ));
    }
}
