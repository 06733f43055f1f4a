//! Host networking for husk's containers.
//!
//! `--network bridge` (the default of `husk run`): a host bridge `husk0`
//! with a range of its own (10.88.N.0/24, the first clear of the host's
//! routes, or `HUSK_BRIDGE_SUBNET`), one tap `husk-tap-<id>` per VM on it,
//! a static address per container (a lease under `/run/husk/network/`), NAT
//! and published ports in the nftables table `ip husk`. Everything is
//! removed with the last container, and a lease whose owner (the process
//! that runs the VM) is gone is swept by the next husk that touches the
//! network. `--network none`: no NIC, only `lo`.
//!
//! `cni` is the other model: a network namespace prepared by containerd or
//! CNI, whose interface the VM's tap is joined to with tc.

pub mod cni;
mod host;
mod lease;
mod nft;
pub mod options;
mod subnet;
pub mod tap;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use husk_protocol::network::{Interface, IpPrefix, Route};
use husk_protocol::NetworkConfig;

pub use options::{NetworkMode, NetworkOptions, PortMapping, Protocol};
pub use tap::NicConfig;

use lease::{Lease, Leases};
use subnet::Subnet;

/// The host bridge every `--network bridge` container is attached to.
pub const BRIDGE: &str = "husk0";
/// Overrides the bridge's range (when the bridge does not exist yet).
pub const SUBNET_ENV: &str = "HUSK_BRIDGE_SUBNET";
/// The container's interface name.
const CONTAINER_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("network state {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// Who undoes a container's network when its VM is gone: the process that
/// runs the VM (the monitor of a detached container) keeps this.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkRelease {
    /// A lease on the husk bridge.
    Bridge { dir: PathBuf, id: String },
    /// A tap joined to a CNI namespace.
    Netns(cni::NetnsLink),
}

impl NetworkRelease {
    /// Records `owner` as the process running the VM (sweeps spare it).
    pub fn adopt(&self, owner: u32) {
        if let NetworkRelease::Bridge { dir, id } = self {
            if let Err(e) = adopt(dir, id, owner) {
                tracing::warn!("network lease of {id}: {e}");
            }
        }
    }

    pub fn release(&self) {
        let result = match self {
            NetworkRelease::Bridge { dir, id } => release(dir, id),
            NetworkRelease::Netns(link) => cni::release(link),
        };
        if let Err(e) = result {
            tracing::warn!("releasing the container's network: {e}");
        }
    }
}

/// Releases a network when dropped (every return path of a VM's owner).
pub struct ReleaseGuard(pub Option<NetworkRelease>);

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release.release();
        }
    }
}

/// What a container's VM and agent get; releases the network when dropped
/// unless [`Attachment::keep`] hands that job to another process.
pub struct Attachment {
    pub nics: Vec<NicConfig>,
    pub agent: NetworkConfig,
    release: Option<(PathBuf, String)>,
}

impl Attachment {
    /// No NIC: only `lo` and the files.
    pub fn none(hostname: &str) -> Self {
        Attachment {
            nics: Vec::new(),
            agent: agent_config(None, hostname),
            release: None,
        }
    }

    /// What the VM's owner must release when it ends (`None`: nothing).
    pub fn to_release(&self) -> Option<NetworkRelease> {
        self.release
            .as_ref()
            .map(|(dir, id)| NetworkRelease::Bridge {
                dir: dir.clone(),
                id: id.clone(),
            })
    }

    /// Stops the drop from releasing: the monitor releases when it ends.
    pub fn keep(mut self) {
        self.release = None;
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some((dir, id)) = self.release.take() {
            if let Err(e) = release(&dir, &id) {
                tracing::warn!("releasing the network of {id}: {e}");
            }
        }
    }
}

/// Where leases live: host-global like the bridge (every store's containers
/// share it), one directory per network namespace (each has a bridge of
/// its own), on /run (gone at reboot, with the bridge).
pub const STATE_ROOT: &str = "/run/husk/network";

/// The lease directory of the calling thread's network namespace.
pub fn state_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|meta| meta.ino())
        .unwrap_or(0);
    Path::new(STATE_ROOT).join(format!("net-{netns}"))
}

/// The DNS servers the container gets: the host's, minus loopback ones it
/// cannot reach (docker falls back to public servers the same way).
fn nameservers() -> Vec<IpAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<IpAddr> = text
        .lines()
        .filter_map(|line| line.strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .filter(|ip: &IpAddr| !ip.is_loopback() && ip.is_ipv4())
        .collect();
    if servers.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8))]
    } else {
        servers
    }
}

fn mac_for(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:68:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The agent's view: eth0 with the lease's address and a default route
/// via the bridge, or nothing but the files.
fn agent_config(lease: Option<(&Lease, Subnet)>, _hostname: &str) -> NetworkConfig {
    let Some((lease, subnet)) = lease else {
        return NetworkConfig::default();
    };
    NetworkConfig {
        interfaces: vec![Interface {
            mac: lease.mac.clone(),
            name: CONTAINER_IFNAME.into(),
            addresses: vec![IpPrefix {
                address: IpAddr::V4(lease.address),
                prefix_len: subnet.prefix_len,
            }],
            mtu: None,
        }],
        routes: vec![Route {
            destination: None,
            gateway: Some(IpAddr::V4(subnet.gateway())),
            device: Some(CONTAINER_IFNAME.into()),
        }],
        nameservers: nameservers(),
        ..NetworkConfig::default()
    }
}

/// Sets up the container's network (`owner` runs its VM). Refuses a port
/// that another container publishes or a host process holds, before
/// anything is made.
pub fn attach(
    id: &str,
    hostname: &str,
    options: &NetworkOptions,
    owner: u32,
) -> Result<Attachment, NetworkError> {
    options.check().map_err(NetworkError::Refused)?;
    if options.mode == NetworkMode::None {
        return Ok(Attachment::none(hostname));
    }
    let dir = state_dir();
    let leases = Leases::lock(&dir)?;
    sweep_locked(&leases)?;
    let existing = leases.all()?;
    for port in &options.publish {
        if let Some(other) = existing
            .iter()
            .find(|lease| lease.ports.iter().any(|p| p.conflicts_with(port)))
        {
            return Err(NetworkError::Refused(format!(
                "port {port} is already published by container {}",
                other.id
            )));
        }
        check_port_free(port)?;
    }
    let subnet = bridge_ensure()?;
    let taken: Vec<Ipv4Addr> = existing.iter().map(|lease| lease.address).collect();
    let address = (2..subnet.size() - 1)
        .filter_map(|n| subnet.host(n))
        .find(|candidate| !taken.contains(candidate))
        .ok_or_else(|| NetworkError::Refused(format!("no free address left in {subnet}")))?;
    let lease = Lease {
        id: id.to_owned(),
        address,
        mac: mac_for(address),
        tap: tap::tap_name(id),
        ports: options.publish.clone(),
        owner: lease::Owner::of(owner),
    };
    // The lease first: a crash from here on leaves something to sweep.
    leases.write(&lease)?;
    let made = (|| {
        if host::link_exists(&lease.tap) {
            host::ip(&["link", "del", &lease.tap])?;
        }
        host::ip(&[
            "tuntap", "add", "dev", &lease.tap, "mode", "tap", "vnet_hdr",
        ])?;
        host::ip(&["link", "set", "dev", &lease.tap, "master", BRIDGE, "up"])?;
        nft::add_ports(id, address, &lease.ports)
    })();
    if let Err(e) = made {
        let _ = release_locked(&leases, id);
        return Err(e);
    }
    tracing::info!(container = id, %address, tap = %lease.tap, ports = ?lease.ports, "network attached");
    Ok(Attachment {
        nics: vec![NicConfig {
            tap: lease.tap.clone(),
            mac: lease.mac.clone(),
            netns: None,
        }],
        agent: agent_config(Some((&lease, subnet)), hostname),
        release: Some((dir.clone(), id.to_owned())),
    })
}

/// Records that `owner` (the monitor) now runs the container's VM.
pub fn adopt(dir: &Path, id: &str, owner: u32) -> Result<(), NetworkError> {
    let leases = Leases::lock(dir)?;
    if let Some(mut lease) = leases.get(id)? {
        lease.owner = lease::Owner::of(owner);
        leases.write(&lease)?;
    }
    Ok(())
}

/// Releases the container's network (nothing to do is fine); the last
/// container takes the bridge and the table with it.
pub fn release(dir: &Path, id: &str) -> Result<(), NetworkError> {
    if !dir.exists() {
        return Ok(());
    }
    let leases = Leases::lock(dir)?;
    release_locked(&leases, id)?;
    remove_if_unused(&leases)
}

/// Releases every lease whose owner is gone, then what nobody uses.
pub fn sweep() -> Result<(), NetworkError> {
    let dir = state_dir();
    if !dir.exists() {
        return Ok(());
    }
    let leases = Leases::lock(&dir)?;
    sweep_locked(&leases)
}

fn sweep_locked(leases: &Leases) -> Result<(), NetworkError> {
    let all = leases.all()?;
    for lease in all.iter().filter(|lease| !lease.owner.alive()) {
        tracing::info!(container = %lease.id, "sweeping the network of a container whose owner is gone");
        release_locked(leases, &lease.id)?;
    }
    // Taps of ours that no lease names (a crash between tap and lease).
    let named: Vec<String> = leases.all()?.into_iter().map(|lease| lease.tap).collect();
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(tap::TAP_PREFIX) && !named.contains(&name) {
                let _ = host::ip(&["link", "del", &name]);
            }
        }
    }
    remove_if_unused(leases)
}

fn release_locked(leases: &Leases, id: &str) -> Result<(), NetworkError> {
    let Some(lease) = leases.get(id)? else {
        return Ok(());
    };
    nft::remove_ports(id)?;
    if host::link_exists(&lease.tap) {
        host::ip(&["link", "del", &lease.tap])?;
    }
    leases.remove(id)?;
    tracing::info!(container = id, "network released");
    Ok(())
}

fn remove_if_unused(leases: &Leases) -> Result<(), NetworkError> {
    if !leases.all()?.is_empty() {
        return Ok(());
    }
    nft::remove()?;
    if host::link_exists(BRIDGE) {
        host::ip(&["link", "del", BRIDGE])?;
    }
    Ok(())
}

/// Refuses a host port some process already holds (as docker's proxy
/// would fail to bind it).
fn check_port_free(port: &PortMapping) -> Result<(), NetworkError> {
    let ip = port.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let at = SocketAddr::new(ip, port.host_port);
    let free = match port.protocol {
        Protocol::Tcp => TcpListener::bind(at).map(drop),
        Protocol::Udp => UdpSocket::bind(at).map(drop),
    };
    free.map_err(|e| {
        NetworkError::Refused(format!(
            "port {port}: host port {} is not available: {e}",
            port.host_port
        ))
    })
}

/// The host's IPv4 routes (every table), as subnets.
fn host_routes() -> Result<Vec<Subnet>, NetworkError> {
    let json = host::ip(&["-j", "-4", "route", "show", "table", "all"])?;
    let routes: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    Ok(routes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|route| route["dev"].as_str() != Some(BRIDGE))
        .filter_map(|route| route["dst"].as_str())
        .filter_map(|dst| {
            let (address, prefix) = match dst.split_once('/') {
                Some((address, prefix)) => (address, prefix.parse().ok()?),
                None => (dst, 32),
            };
            let address: Ipv4Addr = address.parse().ok()?;
            Some(Subnet {
                network: address,
                prefix_len: prefix,
            })
        })
        .map(|s| Subnet::new(s.network, s.prefix_len.min(30)).unwrap_or(s))
        .collect())
}

/// The bridge, its address and the nft table; made if missing.
fn bridge_ensure() -> Result<Subnet, NetworkError> {
    if host::link_exists(BRIDGE) {
        let json = host::ip(&["-j", "-4", "addr", "show", "dev", BRIDGE])?;
        let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let info = &value[0]["addr_info"][0];
        if let (Some(local), Some(prefix)) = (info["local"].as_str(), info["prefixlen"].as_u64()) {
            if let (Ok(local), Ok(prefix)) = (local.parse::<Ipv4Addr>(), u8::try_from(prefix)) {
                if let Some(subnet) = Subnet::new(local, prefix) {
                    nft::ensure(BRIDGE, subnet)?;
                    return Ok(subnet);
                }
            }
        }
        // A bridge without its address is half made: start over.
        host::ip(&["link", "del", BRIDGE])?;
    }
    let routes = host_routes()?;
    let subnet = match std::env::var(SUBNET_ENV) {
        Ok(text) => {
            let subnet: Subnet = text
                .parse()
                .map_err(|e| NetworkError::Refused(format!("{SUBNET_ENV}: {e}")))?;
            if let Some(route) = routes.iter().find(|route| route.overlaps(&subnet)) {
                return Err(NetworkError::Refused(format!(
                    "{SUBNET_ENV}={subnet} overlaps the host's route to {route}"
                )));
            }
            subnet
        }
        Err(_) => subnet::pick(subnet::default_candidates(), &routes).ok_or_else(|| {
            NetworkError::Refused(format!(
                "every 10.88.N.0/24 overlaps a host route: set {SUBNET_ENV}"
            ))
        })?,
    };
    host::ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    let made = (|| {
        let gateway = format!("{}/{}", subnet.gateway(), subnet.prefix_len);
        host::ip(&["addr", "add", &gateway, "dev", BRIDGE])?;
        host::ip(&["link", "set", "dev", BRIDGE, "up"])?;
        // Routing between the bridge and the world, and DNAT from the
        // host's loopback onto the bridge (as docker without its proxy).
        host::sysctl("net.ipv4.ip_forward", "1")?;
        host::sysctl(&format!("net.ipv4.conf.{BRIDGE}.route_localnet"), "1")?;
        nft::install(BRIDGE, subnet)
    })();
    if let Err(e) = made {
        let _ = host::ip(&["link", "del", BRIDGE]);
        return Err(e);
    }
    tracing::info!(bridge = BRIDGE, %subnet, "bridge created");
    Ok(subnet)
}
