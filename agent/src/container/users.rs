//! User and group names, resolved the way Docker does against the
//! container's own `/etc/passwd` and `/etc/group` (the host cannot read the
//! image's files; the guest has them mounted). The host passes the name as
//! `process.user.username` (`USER[:GROUP]`, each a name or a number), with
//! numeric placeholders in uid/gid.

use std::fs;
use std::path::Path;

use oci_spec::runtime::Process;

use crate::error::StepError;

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_lines(path: &Path) -> Vec<Vec<String>> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    read_lines(&rootfs.join("etc/passwd"))
        .into_iter()
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.clone(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn groups(rootfs: &Path) -> Vec<GroupEntry> {
    read_lines(&rootfs.join("etc/group"))
        .into_iter()
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.clone(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Replaces a named user in `process` by its uid, gid and supplementary
/// groups from the rootfs at `rootfs`.
pub fn resolve(rootfs: &Path, process: &mut Process) -> Result<(), StepError> {
    let Some(text) = process.user().username().clone() else {
        return Ok(());
    };
    let step = || format!("user {text}");
    let (user_part, group_part) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text.as_str(), None),
    };
    let users = passwd(rootfs);
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid),
        Err(_) => Some(users.iter().find(|e| e.name == user_part).ok_or_else(|| {
            StepError::new(
                step(),
                format!("unable to find user {user_part}: no matching entries in passwd file"),
            )
        })?),
    };
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map(|e| e.uid).unwrap_or_default(),
    };
    let all_groups = groups(rootfs);
    let gid = match group_part {
        None => entry.map(|e| e.gid).unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => all_groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    StepError::new(
                        step(),
                        format!("unable to find group {g}: no matching entries in group file"),
                    )
                })?,
        },
    };
    let mut extra = process.user().additional_gids().clone().unwrap_or_default();
    if let Some(entry) = entry {
        for group in &all_groups {
            if group.members.contains(&entry.name) && !extra.contains(&group.gid) {
                extra.push(group.gid);
            }
        }
    }
    let mut user = process.user().clone();
    user.set_uid(uid);
    user.set_gid(gid);
    user.set_additional_gids((!extra.is_empty()).then_some(extra));
    user.set_username(None);
    process.set_user(user);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, UserBuilder};

    fn process(name: &str) -> Process {
        ProcessBuilder::default()
            .args(vec!["sh".to_string()])
            .cwd("/")
            .user(
                UserBuilder::default()
                    .uid(0u32)
                    .gid(0u32)
                    .username(name)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn names_resolve_through_the_rootfs_files() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\nstaff:x:50:\n",
        )
        .unwrap();
        let mut p = process("alice");
        resolve(root.path(), &mut p).unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(p.user().additional_gids().clone(), Some(vec![10]));
        assert!(p.user().username().is_none());

        let mut p = process("alice:staff");
        resolve(root.path(), &mut p).unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 50));

        let mut p = process("1000");
        resolve(root.path(), &mut p).unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));

        let mut p = process("4242:wheel");
        resolve(root.path(), &mut p).unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (4242, 10));

        let e = resolve(root.path(), &mut process("mallory")).unwrap_err();
        assert!(
            e.message.contains("unable to find user mallory"),
            "{}",
            e.message
        );
        let e = resolve(root.path(), &mut process("alice:nogroup")).unwrap_err();
        assert!(
            e.message.contains("unable to find group nogroup"),
            "{}",
            e.message
        );
    }
}
