//! The nftables table `ip husk`: masquerade for the bridge's range, and a
//! DNAT rule pair per published port (prerouting for traffic from outside,
//! output for the host's own, loopback included), each rule tagged with a
//! comment `husk:<container id>` so it is removed with its container.

use std::net::Ipv4Addr;

use super::host;
use super::options::PortMapping;
use super::subnet::Subnet;
use super::NetworkError;

pub const TABLE: &str = "husk";

/// (Re)creates the table for `subnet` on `bridge`, in one transaction.
pub fn install(bridge: &str, subnet: Subnet) -> Result<(), NetworkError> {
    let ruleset = format!(
        "add table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain output {{ type nat hook output priority -100; policy accept; }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{bridge}\" ip saddr 127.0.0.0/8 masquerade
    oifname \"{bridge}\" ip saddr {subnet} ct status dnat masquerade
    ip saddr {subnet} oifname != \"{bridge}\" masquerade
  }}
}}
"
    );
    host::run_with_input("nft", &["-f", "-"], Some(&ruleset)).map(drop)
}

/// Installs the table unless it is there (its port rules are kept).
pub fn ensure(bridge: &str, subnet: Subnet) -> Result<(), NetworkError> {
    if host::run("nft", &["list", "table", "ip", TABLE]).is_ok() {
        return Ok(());
    }
    install(bridge, subnet)
}

pub fn remove() -> Result<(), NetworkError> {
    if host::run("nft", &["list", "table", "ip", TABLE]).is_ok() {
        host::run("nft", &["delete", "table", "ip", TABLE])?;
    }
    Ok(())
}

fn comment(id: &str) -> String {
    format!("husk:{id}")
}

/// The DNAT rules of one container's published ports.
pub fn add_ports(id: &str, address: Ipv4Addr, ports: &[PortMapping]) -> Result<(), NetworkError> {
    if ports.is_empty() {
        return Ok(());
    }
    let mut batch = String::new();
    for port in ports {
        let daddr = match port.host_ip {
            Some(ip) => format!("ip daddr {ip} "),
            None => "fib daddr type local ".to_owned(),
        };
        for chain in ["prerouting", "output"] {
            batch.push_str(&format!(
                "add rule ip {TABLE} {chain} {daddr}{proto} dport {hport} dnat to {address}:{cport} comment \"{comment}\"\n",
                proto = port.protocol,
                hport = port.host_port,
                cport = port.container_port,
                comment = comment(id),
            ));
        }
    }
    host::run_with_input("nft", &["-f", "-"], Some(&batch)).map(drop)
}

/// Removes every rule tagged for `id` (none is fine).
pub fn remove_ports(id: &str) -> Result<(), NetworkError> {
    let Ok(listing) = host::run("nft", &["-j", "-a", "list", "table", "ip", TABLE]) else {
        return Ok(());
    };
    let json: serde_json::Value =
        serde_json::from_str(&listing).map_err(|e| NetworkError::Command {
            command: "nft -j list table".into(),
            message: e.to_string(),
        })?;
    let wanted = comment(id);
    let mut batch = String::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        if rule["comment"].as_str() == Some(wanted.as_str()) {
            if let (Some(chain), Some(handle)) = (rule["chain"].as_str(), rule["handle"].as_u64()) {
                batch.push_str(&format!("delete rule ip {TABLE} {chain} handle {handle}\n"));
            }
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    host::run_with_input("nft", &["-f", "-"], Some(&batch)).map(drop)
}
