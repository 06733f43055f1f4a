//! The container's network inside the VM: `lo` up in its network namespace,
//! the host-described NICs moved there and configured (name, MTU,
//! addresses, routes) over netlink, and the name-resolution files — all
//! before the container's process may start.

pub mod files;
mod netlink;

use std::fs::File;

use husk_agent::protocol::network::Interface;
use husk_agent::protocol::NetworkConfig;
use nix::unistd::Pid;

use crate::error::StepError;
use netlink::Netlink;

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Interface names the kernel accepts (IFNAMSIZ, no '/', ':' or blanks).
fn check_interface_name(name: &str) -> Result<(), StepError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|ch| ch.is_ascii_graphic() && ch != '/' && ch != ':');
    if ok {
        Ok(())
    } else {
        Err(StepError::new(
            "network",
            format!("{name:?} is not a valid interface name"),
        ))
    }
}

/// Configures the network of the process `pid`'s network namespace, or
/// of the agent's own when the container shares it (`own_namespace`).
pub fn configure(
    pid: Pid,
    own_namespace: bool,
    config: Option<&NetworkConfig>,
) -> Result<(), StepError> {
    let step = |what: &str| {
        let what = what.to_owned();
        move |err: std::io::Error| StepError::new(format!("network: {what}"), err)
    };
    let mut root = Netlink::open().map_err(step("netlink socket"))?;
    let netns = if own_namespace {
        None
    } else {
        Some(
            File::open(format!("/proc/{pid}/ns/net"))
                .map_err(step("open the container's network namespace"))?,
        )
    };
    let mut target = match &netns {
        Some(netns) => Netlink::open_in(netns).map_err(step("netlink socket in the container"))?,
        None => Netlink::open().map_err(step("netlink socket"))?,
    };

    let lo = target
        .link_by_name("lo")
        .map_err(step("list links"))?
        .ok_or_else(|| StepError::new("network: lo", "no loopback interface"))?;
    target.set_up(lo.index, true).map_err(step("bring lo up"))?;

    let Some(config) = config else {
        return Ok(());
    };
    for interface in &config.interfaces {
        configure_interface(&mut root, &mut target, netns.as_ref(), interface)?;
    }
    for route in &config.routes {
        let oif = match &route.device {
            Some(name) => Some(
                target
                    .link_by_name(name)
                    .map_err(step("list links"))?
                    .ok_or_else(|| {
                        StepError::new("network: route", format!("no interface {name:?}"))
                    })?
                    .index,
            ),
            None => None,
        };
        if let Some(prefix) = route.destination {
            if !prefix.is_valid() {
                return Err(StepError::new(
                    "network: route",
                    format!("bad destination {prefix}"),
                ));
            }
        }
        target
            .add_route(route.destination, route.gateway, oif)
            .map_err(|err| {
                let to = route
                    .destination
                    .map_or_else(|| "default".to_owned(), |prefix| prefix.to_string());
                StepError::new(format!("network: add route {to}"), err)
            })?;
    }
    Ok(())
}

fn configure_interface(
    root: &mut Netlink,
    target: &mut Netlink,
    netns: Option<&File>,
    interface: &Interface,
) -> Result<(), StepError> {
    let what = |action: &str| format!("network: {action} {}", interface.name);
    check_interface_name(&interface.name)?;
    let mac = parse_mac(&interface.mac).ok_or_else(|| {
        StepError::new(what("MAC of"), format!("{:?} is not a MAC", interface.mac))
    })?;
    let link = root
        .link_by_mac(&mac)
        .map_err(|err| StepError::new(what("find"), err))?
        .ok_or_else(|| {
            StepError::new(
                what("find"),
                format!("no NIC with MAC {} in the VM", interface.mac),
            )
        })?;
    // Renaming needs the link down; moving it to a namespace takes it down.
    root.set_up(link.index, false)
        .map_err(|err| StepError::new(what("bring down"), err))?;
    if let Some(netns) = netns {
        root.move_to(link.index, netns)
            .map_err(|err| StepError::new(what("move into the container"), err))?;
    }
    // The index may change on the move: find it again by MAC.
    let link = target
        .link_by_mac(&mac)
        .map_err(|err| StepError::new(what("find"), err))?
        .ok_or_else(|| StepError::new(what("find"), "gone after the move"))?;
    if link.name != interface.name {
        target
            .rename(link.index, &interface.name)
            .map_err(|err| StepError::new(what("rename to"), err))?;
    }
    if let Some(mtu) = interface.mtu {
        target
            .set_mtu(link.index, mtu)
            .map_err(|err| StepError::new(what("set MTU of"), err))?;
    }
    for prefix in &interface.addresses {
        if !prefix.is_valid() {
            return Err(StepError::new(
                what("address of"),
                format!("bad prefix {prefix}"),
            ));
        }
        target
            .add_address(link.index, *prefix)
            .map_err(|err| StepError::new(what(&format!("add {prefix} to")), err))?;
    }
    target
        .set_up(link.index, true)
        .map_err(|err| StepError::new(what("bring up"), err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:42:AC:11:00:02"),
            Some([0x02, 0x42, 0xac, 0x11, 0x00, 0x02])
        );
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn interface_names_fit_the_kernel() {
        assert!(check_interface_name("eth0").is_ok());
        for bad in ["", "a/b", "a b", "x:1", "sixteen-chars-xx", ".."] {
            assert!(check_interface_name(bad).is_err(), "{bad}");
        }
    }

    /// `ip ARGS` in the calling thread's network namespace.
    fn ip(args: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_nic_is_moved_into_the_namespace_renamed_addressed_and_routed() {
        if !nix::unistd::geteuid().is_root() {
            husk_test_skip::skip_unless_ci("needs root (network namespaces)");
            return;
        }
        // unshare(CLONE_NEWNET) moves only the calling thread: the test's
        // own thread stands for the VM's root namespace, so nothing of the
        // host is touched.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            ip("link add hkt0 address 02:00:00:aa:bb:01 type veth peer name hkt1");
            ip("link set hkt1 up");
            let mut child = std::process::Command::new("unshare")
                .args(["-n", "sleep", "60"])
                .spawn()
                .unwrap();
            let pid = Pid::from_raw(child.id() as i32);
            // Wait (bounded) until the child is in a namespace of its own.
            let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .as_ref()
                == Some(&own)
            {
                assert!(std::time::Instant::now() < deadline, "unshare -n never ran");
                std::thread::yield_now();
            }
            let config: NetworkConfig = serde_json::from_str(
                r#"{"interfaces":[{"mac":"02:00:00:AA:BB:01","name":"eth0",
                    "addresses":[{"address":"10.1.2.3","prefix_len":24}],"mtu":1400}],
                    "routes":[{"gateway":"10.1.2.1"}]}"#,
            )
            .unwrap();
            let result = configure(pid, false, Some(&config));
            let show = |args: &str| {
                let out = std::process::Command::new("nsenter")
                    .args(["-t", &pid.to_string(), "-n", "ip"])
                    .args(args.split_whitespace())
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let links = show("-o link show");
            let addrs = show("-o addr show dev eth0");
            let routes = show("route show");
            let _ = child.kill();
            let _ = child.wait();
            result.unwrap();
            assert!(links.contains("lo: <LOOPBACK,UP"), "{links}");
            assert!(
                links.contains("eth0@") && links.contains("mtu 1400"),
                "{links}"
            );
            assert!(addrs.contains("inet 10.1.2.3/24 brd 10.1.2.255"), "{addrs}");
            assert!(routes.contains("default via 10.1.2.1 dev eth0"), "{routes}");
            // Gone from the agent's namespace.
            assert!(!ip("-o link show").contains("hkt0"));
        })
        .join()
        .unwrap();
    }
}
