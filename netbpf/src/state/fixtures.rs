//! Records for unit tests that need a state but no kernel.

use super::*;

/// A bridge network on `subnet` (gateway .1) with map index `index`.
pub fn network(name: &str, subnet: &str, index: u32) -> NetworkRecord {
    let subnet: Ipv4Net = subnet.parse().unwrap();
    NetworkRecord {
        id: format!("{name:0<64}"),
        name: name.into(),
        driver: "bridge".into(),
        subnet,
        gateway: subnet.hosts().next().unwrap(),
        ip_range: None,
        internal: false,
        index,
        bridge: format!("br-{name}"),
        created: "2026-12-02T00:00:00Z".into(),
        parent: None,
        overlay: None,
    }
}

/// A running container with an endpoint per (network, address, aliases).
pub fn container(name: &str, id: &str, eps: &[(&str, &str, &[&str])]) -> ContainerRecord {
    let networks = eps
        .iter()
        .map(|(n, _, aliases)| NetworkRequest {
            ifname: None,
            mac: None,
            network: (*n).into(),
            ip: None,
            aliases: aliases.iter().map(|a| (*a).into()).collect(),
        })
        .collect();
    let mut c = ContainerRecord::new(name, NetworkMode::Networks, networks);
    c.id = format!("{id:0<64}");
    c.cmd = vec!["sleep".into(), "1d".into()];
    c.status = Status::Running;
    c.pid = Some(4242);
    c.endpoints = eps
        .iter()
        .enumerate()
        .map(|(i, (n, ip, _))| EndpointRecord {
            no_xdp_receiver: false,
            network: (*n).into(),
            id: format!("{n}{i}{id:0<60}"),
            ip: ip.parse().unwrap(),
            mac: crate::ipam::mac_for(ip.parse().unwrap()),
            ifname: format!("eth{i}"),
            host_veth: format!("veth{i}{}", &id[..id.len().min(6)]),
            host_ifindex: 10 + i as u32,
        })
        .collect();
    c
}
