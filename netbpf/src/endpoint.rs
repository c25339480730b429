//! Endpoints: one container interface on one bridge network, wired the way the manual
//! walkthrough does it — a veth pair, one end plugged into the bridge, the other moved into
//! the container's namespace and renamed, an address, a default route via the gateway, `lo`
//! up — and then handed to the fast path.

use std::{fs::File, net::IpAddr};

use netbpf_common::EndpointTarget;

use crate::{
    netlink::{self, Netlink, NetlinkError},
    state::{EndpointRecord, NetworkRecord},
};

/// Temporary name of the container end until it is inside the namespace and renamed; it
/// shares the host end's random suffix so concurrent set-ups never collide.
pub fn peer_temp_name(host_veth: &str) -> String {
    format!("tmp{}", host_veth.trim_start_matches("veth"))
}

/// A host veth name like Docker's: `veth` + 7 hex digits, from the endpoint id.
pub fn host_veth_name(endpoint_id: &str) -> String {
    format!("veth{}", &endpoint_id[..7])
}

/// Creates the veth pair and configures the container end. The host end stays down and
/// off the bridge until [`plug_into_bridge`], which comes after the fast path is attached:
/// no packet crosses the bridge before the program sees it. On failure nothing is left
/// behind: deleting the host end deletes its peer wherever it is.
pub fn wire(
    ns: &File,
    network: &NetworkRecord,
    endpoint: &EndpointRecord,
) -> Result<u32, NetlinkError> {
    let result = wire_inner(ns, network, endpoint);
    if result.is_err() {
        unwire(&endpoint.host_veth);
    }
    result
}

fn wire_inner(
    ns: &File,
    network: &NetworkRecord,
    endpoint: &EndpointRecord,
) -> Result<u32, NetlinkError> {
    let peer = peer_temp_name(&endpoint.host_veth);
    let host_index = Netlink::run(None, |nl| {
        nl.create_veth(&endpoint.host_veth, &peer)?;
        let host = nl.link(&endpoint.host_veth)?;
        nl.mark_owned(host.index)?;
        nl.move_to_netns(nl.link(&peer)?.index, ns)?;
        Ok(host.index)
    })?;
    Netlink::run(Some(ns), |nl| {
        let container_end = nl.link(&peer)?;
        nl.rename_with_mac(container_end.index, &endpoint.ifname, endpoint.mac)?;
        configure(
            nl,
            container_end.index,
            network,
            endpoint,
            DefaultRoute::ViaGateway,
        )
    })?;
    Ok(host_index)
}

/// A veth pair whose container end stays in the host namespace, down, with the endpoint's
/// MAC, for a runtime that moves and configures it itself (Docker's `Join`: it moves the
/// returned interface into the sandbox, renames it and sets the address). Returns the host
/// end's ifindex and the container end's name. The host end stays down and off the bridge,
/// as in [`wire`].
pub fn pair_for_runtime(endpoint: &EndpointRecord) -> Result<(u32, String), NetlinkError> {
    let peer = peer_temp_name(&endpoint.host_veth);
    let result = Netlink::run(None, |nl| {
        nl.create_veth(&endpoint.host_veth, &peer)?;
        nl.mark_owned(nl.link(&endpoint.host_veth)?.index)?;
        let container_end = nl.link(&peer)?;
        nl.rename_with_mac(container_end.index, &peer, endpoint.mac)?;
        Ok(nl.link(&endpoint.host_veth)?.index)
    });
    match result {
        Ok(index) => Ok((index, peer)),
        Err(error) => {
            unwire(&endpoint.host_veth);
            Err(error)
        }
    }
}

/// The last step of a veth endpoint: its host end joins the network's bridge and comes up.
pub fn plug_into_bridge(
    network: &NetworkRecord,
    endpoint: &EndpointRecord,
) -> Result<(), NetlinkError> {
    Netlink::run(None, |nl| {
        let bridge = nl.link(&network.bridge)?;
        nl.set_controller(endpoint.host_ifindex, bridge.index)?;
        nl.set_up(endpoint.host_ifindex)
    })
}

/// How a container's default route leaves, when its interface gives one.
pub enum DefaultRoute {
    ViaGateway,
    /// Straight out of the interface (ipvlan L3 modes, which answer no ARP).
    OutOfInterface,
}

/// The container side of any endpoint, once its interface is in the namespace and named:
/// the address, the interface and `lo` up, and the default route. Runs in the container's
/// namespace.
pub fn configure(
    nl: &Netlink,
    index: u32,
    network: &NetworkRecord,
    endpoint: &EndpointRecord,
    route: DefaultRoute,
) -> Result<(), NetlinkError> {
    nl.add_address(index, IpAddr::V4(endpoint.ip), network.subnet.prefix_len())?;
    nl.set_up(index)?;
    nl.set_up(nl.link("lo")?.index)?;
    // Like Docker: the first non-internal network gives the default route; internal
    // networks never do, since nothing outside them is reachable.
    if !network.internal && nl.default_route_link()?.is_none() {
        add_default_route(nl, network, index, route)?;
    }
    Ok(())
}

fn add_default_route(
    nl: &Netlink,
    network: &NetworkRecord,
    index: u32,
    route: DefaultRoute,
) -> Result<(), NetlinkError> {
    match route {
        DefaultRoute::ViaGateway => nl.add_default_route(network.gateway),
        DefaultRoute::OutOfInterface => nl.add_default_route_dev(index),
    }
}

/// Adds `endpoint`'s default route in `ns` unless the namespace has one (after another
/// network's endpoint, which had it, went).
pub fn default_route_if_none(
    ns: &File,
    network: &NetworkRecord,
    endpoint: &EndpointRecord,
    route: DefaultRoute,
) -> Result<(), NetlinkError> {
    Netlink::run(Some(ns), |nl| {
        if nl.default_route_link()?.is_some() {
            return Ok(());
        }
        add_default_route(nl, network, nl.link(&endpoint.ifname)?.index, route)
    })
}

/// Sets the MTU of both ends of an endpoint's veth pair.
pub fn set_mtu(ns: &File, endpoint: &EndpointRecord, mtu: u32) -> Result<(), NetlinkError> {
    Netlink::run(None, |nl| {
        nl.set_mtu(nl.link(&endpoint.host_veth)?.index, mtu)
    })?;
    Netlink::run(Some(ns), |nl| {
        nl.set_mtu(nl.link(&endpoint.ifname)?.index, mtu)
    })
}

/// The `ENDPOINTS` entry of an endpoint: where the fast path delivers packets for its
/// address.
pub fn map_target(endpoint: &EndpointRecord) -> EndpointTarget {
    EndpointTarget {
        host_ifindex: endpoint.host_ifindex,
        mac: endpoint.mac,
        _pad: [0; 2],
    }
}

/// Deletes the host end of an endpoint's veth pair (and so the container end).
pub fn unwire(host_veth: &str) {
    netlink::remove_link(None, host_veth, "veth");
}

/// Brings up `lo` in a namespace that gets no endpoint (`--network none`).
pub fn loopback_up(ns: &File) -> Result<(), NetlinkError> {
    Netlink::run(Some(ns), |nl| nl.set_up(nl.link("lo")?.index))
}
