//! /etc/hosts, /etc/hostname and /etc/resolv.conf for the container, made
//! by the agent and bind-mounted over the image's files, as docker does
//! (so they work on a read-only rootfs and the image stays untouched).

use std::fs;
use std::path::Path;

use oci_spec::runtime::{Mount, MountBuilder};

use husk_agent::protocol::NetworkConfig;

use crate::error::StepError;

/// The files, each with its path inside the container.
pub const FILES: [(&str, &str); 3] = [
    ("hosts", "/etc/hosts"),
    ("hostname", "/etc/hostname"),
    ("resolv.conf", "/etc/resolv.conf"),
];

/// A name that is safe on one line of these files (the host sends them,
/// but a newline would let a name add lines of its own).
fn check_name(what: &str, name: &str) -> Result<(), StepError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_' | ':'));
    if ok {
        Ok(())
    } else {
        Err(StepError::new(
            "network files",
            format!("{what} {name:?} is not a valid host name"),
        ))
    }
}

pub fn hosts(config: &NetworkConfig, hostname: Option<&str>) -> Result<String, StepError> {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for entry in &config.extra_hosts {
        check_name("host", &entry.name)?;
        text.push_str(&format!("{}\t{}\n", entry.address, entry.name));
    }
    if let Some(hostname) = hostname {
        check_name("hostname", hostname)?;
        // The container's own addresses resolve to its hostname.
        let addresses = config
            .interfaces
            .iter()
            .flat_map(|iface| iface.addresses.iter());
        for prefix in addresses {
            text.push_str(&format!("{}\t{hostname}\n", prefix.address));
        }
    }
    Ok(text)
}

pub fn resolv_conf(config: &NetworkConfig) -> Result<String, StepError> {
    let mut text = String::new();
    for server in &config.nameservers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !config.search.is_empty() {
        for domain in &config.search {
            check_name("search domain", domain)?;
        }
        text.push_str(&format!("search {}\n", config.search.join(" ")));
    }
    if !config.dns_options.is_empty() {
        for option in &config.dns_options {
            check_name("resolver option", option)?;
        }
        text.push_str(&format!("options {}\n", config.dns_options.join(" ")));
    }
    Ok(text)
}

/// Writes the files under `dir` (the agent's per-container directory) and
/// returns bind mounts for those the spec does not mount itself.
pub fn prepare(
    dir: &Path,
    config: &NetworkConfig,
    hostname: Option<&str>,
    spec_mounts: &[Mount],
) -> Result<Vec<Mount>, StepError> {
    if !config.write_files {
        return Ok(Vec::new());
    }
    fs::create_dir_all(dir)
        .map_err(|err| StepError::new(format!("create {}", dir.display()), err))?;
    let mut mounts = Vec::new();
    for (file, destination) in FILES {
        let text = match file {
            "hosts" => hosts(config, hostname)?,
            "hostname" => match hostname {
                Some(name) => {
                    check_name("hostname", name)?;
                    format!("{name}\n")
                }
                None => continue,
            },
            _ => resolv_conf(config)?,
        };
        if spec_mounts
            .iter()
            .any(|mount| mount.destination() == Path::new(destination))
        {
            continue;
        }
        let source = dir.join(file);
        fs::write(&source, text)
            .map_err(|err| StepError::new(format!("write {}", source.display()), err))?;
        let mount = MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(&source)
            .options(vec!["rbind".to_owned(), "rprivate".to_owned()])
            .build()
            .map_err(|err| StepError::new("network files", err))?;
        mounts.push(mount);
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_agent::protocol::network::{HostEntry, Interface, IpPrefix};

    fn config() -> NetworkConfig {
        NetworkConfig {
            interfaces: vec![Interface {
                mac: "02:42:0a:58:00:02".into(),
                name: "eth0".into(),
                addresses: vec![IpPrefix {
                    address: "10.88.0.2".parse().unwrap(),
                    prefix_len: 24,
                }],
                mtu: None,
            }],
            nameservers: vec!["10.88.0.1".parse().unwrap()],
            search: vec!["example.com".into()],
            dns_options: vec!["ndots:2".into()],
            extra_hosts: vec![HostEntry {
                name: "db".into(),
                address: "10.88.0.3".parse().unwrap(),
            }],
            ..NetworkConfig::default()
        }
    }

    #[test]
    fn hosts_has_localhost_extra_hosts_and_own_address() {
        let text = hosts(&config(), Some("web")).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("10.88.0.3\tdb\n"));
        assert!(text.ends_with("10.88.0.2\tweb\n"), "{text}");
    }

    #[test]
    fn resolv_conf_lists_servers_search_and_options() {
        assert_eq!(
            resolv_conf(&config()).unwrap(),
            "nameserver 10.88.0.1\nsearch example.com\noptions ndots:2\n"
        );
    }

    #[test]
    fn names_with_newlines_are_refused() {
        let mut bad = config();
        bad.extra_hosts[0].name = "db\n1.2.3.4 evil".into();
        assert!(hosts(&bad, None).is_err());
        assert!(hosts(&config(), Some("a b")).is_err());
    }

    #[test]
    fn files_become_bind_mounts_unless_the_spec_mounts_them() {
        let dir = tempfile::tempdir().unwrap();
        let own: Mount = MountBuilder::default()
            .destination("/etc/resolv.conf")
            .build()
            .unwrap();
        let mounts = prepare(dir.path(), &config(), Some("web"), &[own]).unwrap();
        let destinations: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(
            destinations,
            [Path::new("/etc/hosts"), Path::new("/etc/hostname")]
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "web\n"
        );
        let off = NetworkConfig {
            write_files: false,
            ..config()
        };
        assert!(prepare(dir.path(), &off, None, &[]).unwrap().is_empty());
    }
}
