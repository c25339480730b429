//! Records as the daemon keeps them, for tests that fill the maps by hand: they go through
//! the daemon's own record → map entry helpers (`network::subnet_info`,
//! `endpoint::map_target`, `publish::published_key`…), so a layout or encoding change in
//! the daemon cannot leave the tests writing something else.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netbpf::state::{EndpointRecord, NetworkRecord};

/// A bridge network on `subnet` (gateway .1) with map index `index`.
pub fn network(subnet: &str, index: u32) -> NetworkRecord {
    let subnet: Ipv4Net = subnet.parse().expect("a subnet");
    NetworkRecord {
        id: format!("{index:0>64}"),
        name: format!("net{index}"),
        driver: "bridge".into(),
        subnet,
        gateway: subnet.hosts().next().expect("room for a gateway"),
        ip_range: None,
        internal: false,
        index,
        bridge: format!("br-net{index}"),
        created: String::new(),
        parent: None,
        overlay: None,
    }
}

/// An endpoint at `ip` on `network` whose host veth has `host_ifindex`, with the MAC the
/// daemon gives that address.
pub fn endpoint(network: &NetworkRecord, ip: &str, host_ifindex: u32) -> EndpointRecord {
    let ip: Ipv4Addr = ip.parse().expect("an address");
    EndpointRecord {
        no_xdp_receiver: false,
        network: network.name.clone(),
        id: format!("{:0>64}", host_ifindex),
        ip,
        mac: netbpf::ipam::mac_for(ip),
        ifname: "eth0".into(),
        host_veth: format!("veth{host_ifindex}"),
        host_ifindex,
    }
}
