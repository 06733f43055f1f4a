//! What the user asks for: `--network none|bridge` and `-p` port mappings,
//! parsed as docker parses them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `--network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Only `lo` in the container.
    None,
    /// A NIC on the host bridge `husk0`, with NAT to the outside.
    #[default]
    Bridge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `None`: every host address (docker's 0.0.0.0).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// Whether both would catch the same packets.
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

impl FromStr for PortMapping {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!("invalid port mapping {text:?}: {why} (expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp])")
        };
        let (ports, protocol) = match text.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(bad("the protocol is tcp or udp")),
            None => (text, Protocol::Tcp),
        };
        let mut parts = ports.rsplitn(3, ':');
        let container = parts.next().ok_or_else(|| bad("no container port"))?;
        let host = parts
            .next()
            .ok_or_else(|| bad("no host port (husk publishes on a port you name)"))?;
        let host_ip = match parts.next() {
            None => None,
            Some(ip) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                let ip: IpAddr = ip.parse().map_err(|_| bad("bad host address"))?;
                if !ip.is_ipv4() {
                    return Err(bad("only IPv4 host addresses are published"));
                }
                (!ip.is_unspecified()).then_some(ip)
            }
        };
        let port = |text: &str| -> Result<u16, String> {
            match text.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(bad("a port is 1-65535")),
            }
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host)?,
            container_port: port(container)?,
            protocol,
        })
    }
}

/// The network part of `husk run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkOptions {
    pub mode: NetworkMode,
    pub publish: Vec<PortMapping>,
}

impl NetworkOptions {
    /// Refuses what cannot work before anything is set up.
    pub fn check(&self) -> Result<(), String> {
        if self.mode == NetworkMode::None && !self.publish.is_empty() {
            return Err("-p needs a network: not with --network none".into());
        }
        for (i, a) in self.publish.iter().enumerate() {
            if let Some(b) = self.publish[..i].iter().find(|b| a.conflicts_with(b)) {
                return Err(format!("port mappings {b} and {a} conflict"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_port_forms_parse() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(
            p,
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        let p: PortMapping = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.to_string(), "127.0.0.1:5353:53/udp");
        let p: PortMapping = "0.0.0.0:1:2/tcp".parse().unwrap();
        assert_eq!(p.host_ip, None);
        for bad in [
            "80",
            "0:80",
            "80:0",
            "x:80",
            "1:2/sctp",
            "300.1.1.1:1:2",
            "70000:1",
            "[::1]:1:2",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
    }

    #[test]
    fn conflicts_need_the_same_port_protocol_and_overlapping_address() {
        let p = |s: &str| s.parse::<PortMapping>().unwrap();
        assert!(p("8080:80").conflicts_with(&p("8080:81")));
        assert!(p("8080:80").conflicts_with(&p("127.0.0.1:8080:80")));
        assert!(!p("8080:80").conflicts_with(&p("8080:80/udp")));
        assert!(!p("127.0.0.1:8080:80").conflicts_with(&p("127.0.0.2:8080:80")));
        let options = NetworkOptions {
            mode: NetworkMode::Bridge,
            publish: vec![p("8080:80"), p("8080:90")],
        };
        assert!(options.check().unwrap_err().contains("conflict"));
        let none = NetworkOptions {
            mode: NetworkMode::None,
            publish: vec![p("8080:80")],
        };
        assert!(none.check().is_err());
    }
}
