//! A network namespace prepared by containerd or CNI (the OCI spec's
//! network namespace path): the VM joins it the way Kata's default
//! `tcfilter` model does. A tap is made inside the namespace, and tc
//! redirects every frame between it and the namespace's interface (ingress
//! of one → egress of the other), so the guest NIC, which takes the
//! interface's MAC, addresses and routes, is on the network in its place:
//! the container sees what a runc container in that namespace would.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use husk_protocol::network::{Interface, IpPrefix, Route};
use husk_protocol::NetworkConfig;
use serde::{Deserialize, Serialize};

use super::host;
use super::tap::{tap_name, NicConfig, TAP_PREFIX};
use super::NetworkError;

/// What [`release`] needs to undo an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsLink {
    pub netns: PathBuf,
    pub tap: String,
    pub interface: String,
}

/// `program args` inside the namespace at `netns`.
fn run_in(netns: &Path, program: &str, args: &[&str]) -> Result<String, NetworkError> {
    let net = format!("--net={}", netns.display());
    let mut full = vec![net.as_str(), program];
    full.extend_from_slice(args);
    host::run("nsenter", &full)
}

/// The namespace's interface: the first Ethernet link (not ours) with an
/// address, as CNI plugins leave it (`eth0` by convention).
fn find_interface(netns: &Path) -> Result<serde_json::Value, NetworkError> {
    let json = run_in(netns, "ip", &["-j", "addr", "show"])?;
    let links: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    links
        .as_array()
        .into_iter()
        .flatten()
        .find(|link| {
            link["link_type"].as_str() == Some("ether")
                && !link["ifname"]
                    .as_str()
                    .unwrap_or(TAP_PREFIX)
                    .starts_with(TAP_PREFIX)
                && link["addr_info"]
                    .as_array()
                    .is_some_and(|addrs| addrs.iter().any(|a| a["scope"] == "global"))
        })
        .cloned()
        .ok_or_else(|| {
            NetworkError::Refused(format!(
                "network namespace {} has no Ethernet interface with an address",
                netns.display()
            ))
        })
}

/// The interface's routes that the kernel does not derive from its
/// addresses (those come back by themselves once the guest has them).
fn routes(netns: &Path, interface: &str) -> Result<Vec<Route>, NetworkError> {
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let json = run_in(
            netns,
            "ip",
            &["-j", family, "route", "show", "dev", interface],
        )?;
        let list: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        for route in list.as_array().into_iter().flatten() {
            if route["protocol"] == "kernel" {
                continue;
            }
            let gateway = route["gateway"].as_str().and_then(|g| g.parse().ok());
            let destination = match route["dst"].as_str() {
                Some("default") | None => None,
                Some(dst) => Some(parse_prefix(dst).ok_or_else(|| {
                    NetworkError::Refused(format!("unreadable route destination {dst:?}"))
                })?),
            };
            if destination.is_none() && gateway.is_none() {
                continue;
            }
            routes.push(Route {
                destination,
                gateway,
                device: Some(interface.to_owned()),
            });
        }
    }
    Ok(routes)
}

fn parse_prefix(text: &str) -> Option<IpPrefix> {
    let (address, prefix_len) = match text.split_once('/') {
        Some((address, prefix)) => (address.parse::<IpAddr>().ok()?, prefix.parse().ok()?),
        None => {
            let address: IpAddr = text.parse().ok()?;
            (address, if address.is_ipv4() { 32 } else { 128 })
        }
    };
    let prefix = IpPrefix {
        address,
        prefix_len,
    };
    prefix.is_valid().then_some(prefix)
}

/// Joins container `id`'s VM to the namespace at `netns`: the NIC for the
/// VM, the network for the agent, and what to undo later.
pub fn attach(
    netns: &Path,
    id: &str,
) -> Result<(NicConfig, NetworkConfig, NetnsLink), NetworkError> {
    let link = find_interface(netns)?;
    let interface = link["ifname"].as_str().unwrap_or_default().to_owned();
    let mac = link["address"].as_str().unwrap_or_default().to_owned();
    let mtu = link["mtu"].as_u64().and_then(|m| u32::try_from(m).ok());
    let addresses: Vec<IpPrefix> = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] == "global")
        .filter_map(|a| {
            let address: IpAddr = a["local"].as_str()?.parse().ok()?;
            let prefix_len = u8::try_from(a["prefixlen"].as_u64()?).ok()?;
            Some(IpPrefix {
                address,
                prefix_len,
            })
        })
        .collect();
    let routes = routes(netns, &interface)?;
    let tap = tap_name(id);
    let undo = NetnsLink {
        netns: netns.to_path_buf(),
        tap: tap.clone(),
        interface: interface.clone(),
    };
    let made = (|| {
        run_in(
            netns,
            "ip",
            &["tuntap", "add", "dev", &tap, "mode", "tap", "vnet_hdr"],
        )?;
        let mtu_text = mtu.unwrap_or(1500).to_string();
        run_in(
            netns,
            "ip",
            &["link", "set", "dev", &tap, "mtu", &mtu_text, "up"],
        )?;
        for (from, to) in [(&interface, &tap), (&tap, &interface)] {
            run_in(netns, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
            run_in(
                netns,
                "tc",
                &[
                    "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                    "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
                ],
            )?;
        }
        Ok(())
    })();
    if let Err(e) = made {
        let _ = release(&undo);
        return Err(e);
    }
    tracing::info!(netns = %netns.display(), %interface, %tap, "joined the network namespace with tc redirects");
    let nic = NicConfig {
        tap,
        mac: mac.clone(),
        netns: Some(netns.to_path_buf()),
    };
    let agent = NetworkConfig {
        interfaces: vec![Interface {
            mac,
            name: interface,
            addresses,
            mtu,
        }],
        routes,
        // CNI leaves DNS to the runtime's caller (containerd's resolv.conf
        // mount); keep the image's files unless the spec mounts its own.
        write_files: false,
        ..NetworkConfig::default()
    };
    Ok((nic, agent, undo))
}

/// The network part of an OCI spec, ready for the VM and the agent.
pub struct SpecNetwork {
    /// The spec for the agent: a network namespace path (meaningless in
    /// the guest) becomes a fresh namespace there, configured as told.
    pub spec: oci_spec::runtime::Spec,
    pub nics: Vec<NicConfig>,
    pub agent: Option<NetworkConfig>,
    pub release: Option<super::NetworkRelease>,
}

/// Reads the spec's network namespace: with a path (containerd with CNI,
/// `ctr run --with-ns network:PATH`), the VM joins that namespace through
/// a tap and tc ([`attach`]); without one, the container gets only `lo`.
/// For the OCI command line and the containerd shim alike.
pub fn from_spec(spec: &oci_spec::runtime::Spec, id: &str) -> Result<SpecNetwork, NetworkError> {
    use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
    let mut spec = spec.clone();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.namespaces().clone())
        .unwrap_or_default();
    let path = namespaces
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)
        .and_then(|ns| ns.path().clone());
    let Some(path) = path else {
        return Ok(SpecNetwork {
            spec,
            nics: Vec::new(),
            agent: None,
            release: None,
        });
    };
    let (nic, agent, link) = attach(&path, id)?;
    let rewritten: Vec<_> = namespaces
        .into_iter()
        .map(|ns| {
            if ns.typ() == LinuxNamespaceType::Network {
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .build()
                    .expect("a namespace without a path builds")
            } else {
                ns
            }
        })
        .collect();
    if let Some(linux) = spec.linux_mut() {
        linux.set_namespaces(Some(rewritten));
    }
    Ok(SpecNetwork {
        spec,
        nics: vec![nic],
        agent: Some(agent),
        release: Some(super::NetworkRelease::Netns(link)),
    })
}

/// Removes the tap and the interface's ingress qdisc (a namespace that is
/// already gone took them with it).
pub fn release(link: &NetnsLink) -> Result<(), NetworkError> {
    if !link.netns.exists() {
        return Ok(());
    }
    let _ = run_in(
        &link.netns,
        "tc",
        &["qdisc", "del", "dev", &link.interface, "ingress"],
    );
    if run_in(&link.netns, "ip", &["link", "show", "dev", &link.tap]).is_ok() {
        run_in(&link.netns, "ip", &["link", "del", "dev", &link.tap])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_prefixes_parse() {
        assert_eq!(
            parse_prefix("10.22.0.0/16").unwrap().to_string(),
            "10.22.0.0/16"
        );
        assert_eq!(parse_prefix("10.22.0.5").unwrap().prefix_len, 32);
        assert!(parse_prefix("10.0.0.0/40").is_none());
        assert!(parse_prefix("default").is_none());
    }
}
