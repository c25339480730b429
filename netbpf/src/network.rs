//! Bridge networks: the Linux bridge device of each, names, and checks on new subnets.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use netbpf_common::{EndpointIface, IFACE_FLAG_INTERNAL, IpAddrKey, SubnetInfo};

use crate::{
    ipam,
    netlink::{self, Netlink, NetlinkError},
    state::{EndpointRecord, NetworkRecord},
    sysctl::{self, SysctlError},
};

/// The network containers join when `--network` is not given; like Docker's `bridge`.
pub const DEFAULT_NETWORK: &str = "bridge";
/// Its bridge device (Docker's is `docker0`; a different name lets both run side by side).
pub const DEFAULT_BRIDGE: &str = "netbpf0";
/// Names that select a network mode rather than a network.
pub const RESERVED_NAMES: [&str; 2] = ["host", "none"];

/// Where user-defined networks get a /24 when no `--subnet` is given. Clear of Docker's
/// pools (172.17.0.0/16 to 172.31.0.0/16, 192.168.0.0/16 in /20s) and Podman's
/// (10.88.0.0/16, 10.89.0.0/16 in /24s).
pub fn user_pool() -> Ipv4Net {
    "10.214.0.0/15".parse().expect("valid constant")
}
pub const USER_PREFIX_LEN: u8 = 24;

/// The bridge device name of a user-defined network, like Docker's `br-<12 hex of the id>`.
pub fn bridge_name(network_id: &str) -> String {
    format!("br-{}", &network_id[..12])
}

/// A name that breaks Docker's rule for names.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid {kind} name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
)]
pub struct InvalidName {
    pub kind: &'static str,
    pub name: String,
}

/// Docker's rule for names: a letter or digit, then letters, digits, `_`, `.` or `-`.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    validate_up_to(kind, name, 64)
}

/// The same rule for a name that ends up in the DNS and in resolv.conf/hosts files (an
/// alias, a link's alias, a search domain), up to a DNS name's 253 characters: no space
/// or newline can add a line of its own.
pub fn validate_dns_name(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    validate_up_to(kind, name, 253)
}

fn validate_up_to(kind: &'static str, name: &str, max: usize) -> Result<(), InvalidName> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= max;
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            kind,
            name: name.to_owned(),
        })
    }
}

/// Makes sure the network's bridge exists, has the gateway address and is up. Idempotent,
/// so the same call creates a bridge and restores one after a restart.
pub fn ensure_bridge(network: &NetworkRecord) -> Result<u32, NetlinkError> {
    Netlink::run(None, |nl| {
        let bridge = match nl.link_by_name(&network.bridge)? {
            Some(link) if link.is_bridge => link,
            // Another interface took the name: nothing of it is netbpf's to change.
            Some(_) => {
                return Err(NetlinkError::Conflict(format!(
                    "interface {} exists and is not a bridge",
                    network.bridge
                )));
            }
            None => nl.create_bridge(&network.bridge, ipam::mac_for(network.gateway))?,
        };
        nl.ensure_address(
            bridge.index,
            IpAddr::V4(network.gateway),
            network.subnet.prefix_len(),
        )?;
        nl.set_up(bridge.index)?;
        Ok(bridge.index)
    })
}

/// The host routes for a bridge's containers, and only for them: IPv4 forwarding is on for
/// packets arriving on the bridge, not host-wide, so enabling netbpf does not make the host
/// a router between its other interfaces (replies and published ports come in through BPF
/// redirects, which need no forwarding). The bridge takes no IPv6 router advertisements.
pub fn route_for_containers(network: &NetworkRecord) -> Result<(), SysctlError> {
    sysctl::set_iface("ipv4", &network.bridge, "forwarding", "1")?;
    sysctl::refuse_router_advertisements(&network.bridge)
}

pub fn delete_bridge(network: &NetworkRecord) {
    netlink::remove_link(None, &network.bridge, "bridge");
}

/// IPv4 networks the host already uses (main-table routes and addresses), leaving out the
/// default route and anything on the bridges in `ours`.
pub fn host_subnets(ours: &[String]) -> Result<Vec<Ipv4Net>, NetlinkError> {
    Netlink::run(None, |nl| {
        let our_indexes: Vec<u32> = nl
            .links()?
            .into_iter()
            .filter(|l| ours.contains(&l.name))
            .map(|l| l.index)
            .collect();
        let mut used: Vec<Ipv4Net> = nl
            .routes_v4()?
            .into_iter()
            .filter(|r| r.destination.prefix_len() > 0)
            .filter(|r| !r.oif.is_some_and(|oif| our_indexes.contains(&oif)))
            .map(|r| r.destination)
            .collect();
        for addr in nl.addresses()? {
            if let IpNet::V4(net) = addr {
                // Loopback addresses never collide with a bridge subnet in practice, and
                // our own gateways are on our bridges.
                if !net.addr().is_loopback() && !used.iter().any(|u| u.contains(&net.addr())) {
                    used.push(Ipv4Net::new(net.addr(), 32).expect("/32 is valid"));
                }
            }
        }
        Ok(used)
    })
}

/// The entry of the subnet trie that tells the fast path which network owns an address.
pub fn subnet_info(network: &NetworkRecord) -> SubnetInfo {
    SubnetInfo {
        network: network.index,
        _pad: 0,
        gateway: IpAddrKey::from_v4(network.gateway.octets()),
    }
}

/// The `ENDPOINT_IFACES` entry of an endpoint's host veth on `network`: which network the
/// packets it sends belong to, and the only MAC and address they may carry as source.
pub fn endpoint_iface(network: &NetworkRecord, endpoint: &EndpointRecord) -> EndpointIface {
    EndpointIface {
        network: network.index,
        flags: if network.internal {
            IFACE_FLAG_INTERNAL
        } else {
            0
        },
        mac: endpoint.mac,
        _pad: [0; 2],
        addr: IpAddrKey::from_v4(endpoint.ip.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rule() {
        for good in ["a", "web-1", "db.main", "x_y", "0abc"] {
            assert!(validate_name("network", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", &"x".repeat(65)] {
            let e = validate_name("network", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid network name"), "{e}");
        }
    }

    #[test]
    fn bridges_are_named_after_the_network_id() {
        assert_eq!(bridge_name("0123456789abcdef"), "br-0123456789ab");
    }
}
