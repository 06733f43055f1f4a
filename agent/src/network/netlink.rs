//! A small synchronous rtnetlink client over `netlink-packet-route` and
//! `netlink-sys`: the agent is a single-threaded poll loop without an async
//! runtime, so `rtnetlink` (tokio) would pull in a runtime for a handful of
//! requests made once per container. Requests are blocking and answered by
//! the kernel at once.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sched::{setns, CloneFlags};

use husk_agent::protocol::network::IpPrefix;

/// A bound NETLINK_ROUTE socket; it acts on the network namespace it was
/// created in, whatever namespace the agent is in later.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

/// One link as the kernel lists it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Vec<u8>>,
}

impl Netlink {
    /// A socket in the agent's own network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// A socket in the network namespace `netns` (an open
    /// /proc/PID/ns/net): enter it, create the socket, come back.
    pub fn open_in(netns: &File) -> io::Result<Self> {
        let own = File::open("/proc/thread-self/ns/net")?;
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let opened = Self::open();
        // The agent must never stay in the container's namespace.
        setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|err| {
            io::Error::other(format!("return to the agent's network namespace: {err}"))
        })?;
        opened
    }

    /// Sends one request and collects the answers: every message of a dump,
    /// or nothing once the kernel acknowledged.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        // NLM_F_DUMP is two bits, one of which (MATCH) is NLM_F_EXCL.
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < datagram.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::Error(err) => match err.code {
                            Some(_) => return Err(err.to_io()),
                            // The ACK: a dump ends with Done instead.
                            None if !dump => return Ok(answers),
                            None => {}
                        },
                        NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answers = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .map(|link| {
                let mut found = Link {
                    index: link.header.index,
                    name: String::new(),
                    mac: None,
                };
                for attribute in link.attributes {
                    match attribute {
                        LinkAttribute::IfName(name) => found.name = name,
                        LinkAttribute::Address(mac) => found.mac = Some(mac),
                        _ => {}
                    }
                }
                found
            })
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|link| link.name == name))
    }

    pub fn link_by_mac(&mut self, mac: &[u8]) -> io::Result<Option<Link>> {
        Ok(self
            .links()?
            .into_iter()
            .find(|link| link.mac.as_deref() == Some(mac)))
    }

    fn set_link(&mut self, index: u32, change: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        change(&mut message);
        self.request(RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
    }

    pub fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        self.set_link(index, |message| {
            message.header.change_mask = LinkFlags::Up;
            if up {
                message.header.flags = LinkFlags::Up;
            }
        })
    }

    /// Moves the link into the network namespace `netns`.
    pub fn move_to(&mut self, index: u32, netns: &File) -> io::Result<()> {
        let fd = netns.as_raw_fd();
        self.set_link(index, |message| {
            message.attributes.push(LinkAttribute::NetNsFd(fd))
        })
    }

    pub fn rename(&mut self, index: u32, name: &str) -> io::Result<()> {
        let name = name.to_owned();
        self.set_link(index, |message| {
            message.attributes.push(LinkAttribute::IfName(name))
        })
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        self.set_link(index, |message| {
            message.attributes.push(LinkAttribute::Mtu(mtu))
        })
    }

    pub fn add_address(&mut self, index: u32, prefix: IpPrefix) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = family(prefix.address);
        message.header.prefix_len = prefix.prefix_len;
        message.header.scope = AddressScope::Universe;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(prefix.address));
        message
            .attributes
            .push(AddressAttribute::Address(prefix.address));
        if let IpAddr::V4(v4) = prefix.address {
            // The broadcast address of the subnet, as `ip addr add .. brd +`.
            let host_bits = 32 - u32::from(prefix.prefix_len.min(32));
            let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
            if prefix.prefix_len < 31 {
                let broadcast = u32::from(v4) | !mask;
                message
                    .attributes
                    .push(AddressAttribute::Broadcast(broadcast.into()));
            }
        }
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds a route: to `destination` (`None`: the default route of the
    /// gateway's family) via `gateway` and/or out of link `oif`.
    pub fn add_route(
        &mut self,
        destination: Option<IpPrefix>,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> io::Result<()> {
        let address_family = destination
            .map(|prefix| family(prefix.address))
            .or(gateway.map(family))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a route needs a destination or a gateway",
                )
            })?;
        let mut message = RouteMessage::default();
        message.header.address_family = address_family;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.kind = RouteType::Unicast;
        message.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if let Some(prefix) = destination {
            message.header.destination_prefix_length = prefix.prefix_len;
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    prefix.address,
                )));
        }
        if let Some(gateway) = gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        }
        if let Some(oif) = oif {
            message.attributes.push(RouteAttribute::Oif(oif));
        }
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}
