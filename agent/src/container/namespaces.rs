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

/// The clone flags that create the namespaces the spec asks for. A VM runs
/// one container, so joining other namespaces by path makes no sense here.
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
