//! The container's network as the host describes it to the agent: the
//! interfaces to configure (found by MAC), their addresses and routes, and
//! the name-resolution files to write into the container.
//!
//! Everything here comes from the host and is applied over netlink by the
//! agent before the container's process starts.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The container's network. `Some` with no interfaces is `--network none`:
/// only `lo` (brought up in every container anyway) and the files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Routes, applied after every interface is up (so a gateway on an
    /// interface's subnet is reachable).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// `nameserver` lines of /etc/resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    /// `search` domains of /etc/resolv.conf.
    #[serde(default)]
    pub search: Vec<String>,
    /// `options` of /etc/resolv.conf (e.g. `ndots:2`).
    #[serde(default)]
    pub dns_options: Vec<String>,
    /// Extra /etc/hosts lines (docker's `--add-host`): name → address.
    #[serde(default)]
    pub extra_hosts: Vec<HostEntry>,
    /// Write /etc/hosts, /etc/hostname and /etc/resolv.conf (bind-mounted
    /// over the image's, as docker does). Off: the image's files stay.
    #[serde(default = "default_true")]
    pub write_files: bool,
}

fn default_true() -> bool {
    true
}

impl Default for NetworkConfig {
    /// Only `lo` and the files (as `--network none`).
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            routes: Vec::new(),
            nameservers: Vec::new(),
            search: Vec::new(),
            dns_options: Vec::new(),
            extra_hosts: Vec::new(),
            write_files: true,
        }
    }
}

/// One NIC of the VM, moved into the container's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The MAC the host gave the virtio-net device: how the agent finds it
    /// (guest interface names depend on probe order).
    pub mac: String,
    /// Its name inside the container, e.g. `eth0`.
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<IpPrefix>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// An address with its prefix length, e.g. 10.88.0.2/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpPrefix {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl IpPrefix {
    /// Whether the prefix length fits the address family.
    pub fn is_valid(&self) -> bool {
        let max = if self.address.is_ipv4() { 32 } else { 128 };
        self.prefix_len <= max
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// A route in the container's main table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `None`: the default route of the gateway's family.
    #[serde(default)]
    pub destination: Option<IpPrefix>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// The interface (container-side name); `None`: the kernel picks it
    /// from the gateway.
    #[serde(default)]
    pub device: Option<String>,
}

/// An /etc/hosts line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub name: String,
    pub address: IpAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_json_takes_defaults() {
        let config: NetworkConfig = serde_json::from_str("{}").unwrap();
        assert!(config.interfaces.is_empty());
        assert!(config.write_files);
        assert_eq!(config, NetworkConfig::default());
        let iface: Interface =
            serde_json::from_str(r#"{"mac":"02:00:00:00:00:01","name":"eth0"}"#).unwrap();
        assert_eq!(iface.mtu, None);
    }

    #[test]
    fn prefix_lengths_are_checked_per_family() {
        let v4 = |prefix_len| IpPrefix {
            address: "10.0.0.1".parse().unwrap(),
            prefix_len,
        };
        assert!(v4(32).is_valid());
        assert!(!v4(33).is_valid());
        let v6 = IpPrefix {
            address: "fd00::1".parse().unwrap(),
            prefix_len: 64,
        };
        assert!(v6.is_valid());
        assert_eq!(v6.to_string(), "fd00::1/64");
    }
}
