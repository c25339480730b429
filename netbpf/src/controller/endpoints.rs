//! The endpoint operation: "wire this network namespace into these networks, with these
//! address requests, these ports and these names" ([`Controller::plug`]) and its inverse
//! ([`Controller::unplug`]). `run`, `start`, `attach` and `network connect` all go through
//! it, and so will the Docker and CNI front-ends, with a namespace they did not make.

use std::{collections::BTreeSet, fs::File, net::Ipv4Addr};

use super::{Controller, Error, Result, Step, Undo, specs::ConnectSpec};
use crate::{
    endpoint, ipam, macvlan,
    network::{self, DEFAULT_NETWORK},
    publish::{PortSpec, PublishedPort},
    state::{
        ContainerRecord, EndpointRecord, NetworkKind, NetworkMode, NetworkRecord, NetworkRequest,
    },
    sysctl,
};

/// What [`Controller::plug`] made, for the caller to record.
#[derive(Debug, Default)]
pub struct Plugged {
    pub endpoints: Vec<EndpointRecord>,
    pub published: Vec<PublishedPort>,
}

/// Containers with their own namespace on a user-defined network use the embedded DNS;
/// the default bridge does not (Docker's documented behaviour).
pub fn uses_embedded_dns(mode: &NetworkMode, endpoints: &[EndpointRecord]) -> bool {
    *mode == NetworkMode::Networks && endpoints.iter().any(|ep| ep.network != DEFAULT_NETWORK)
}

impl Controller {
    /// The endpoint operation. For container `c` (whose record says its name, aliases and
    /// mode), wires `ns` into each network of `requests`, publishes `ports` on the first
    /// endpoint that can carry them, and starts the embedded DNS if the container's networks
    /// call for it. Every step goes on `undo`; nothing is recorded in the state.
    pub(super) fn plug(
        &mut self,
        undo: &mut Undo,
        c: &ContainerRecord,
        ns: &File,
        requests: &[NetworkRequest],
        ports: &[PortSpec],
    ) -> Result<Plugged> {
        let mut plugged = Plugged::default();
        for request in requests {
            let net = self
                .state
                .networks
                .get(&request.network)
                .cloned()
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "network {} of container {} no longer exists: disconnect it",
                        request.network, c.name
                    ))
                })?;
            let taken: Vec<&EndpointRecord> =
                c.endpoints.iter().chain(&plugged.endpoints).collect();
            let ep = self.add_endpoint(undo, c, &taken, ns, &net, request)?;
            plugged.endpoints.push(ep);
        }
        if !ports.is_empty() {
            let ep = self.publishing_endpoint(&plugged.endpoints).ok_or_else(|| {
                Error::invalid(format!(
                    "container {} has no network that can publish ports (internal, macvlan and ipvlan networks cannot)",
                    c.name
                ))
            })?;
            let taken = self.published_by_others(&c.name);
            // A CNI runtime holds the host ports itself.
            let hold = c.cni.is_none();
            plugged.published =
                self.ports
                    .publish(&mut self.datapath, ports, &ep, &taken, &c.name, hold)?;
            undo.push(Step::Ports(plugged.published.clone()));
            let shown: Vec<String> = plugged.published.iter().map(|p| p.to_string()).collect();
            tracing::info!(container = c.name, ports = ?shown, "ports published");
        }
        let all: Vec<EndpointRecord> = c
            .endpoints
            .iter()
            .chain(&plugged.endpoints)
            .cloned()
            .collect();
        if uses_embedded_dns(&c.mode, &all)
            && self
                .names
                .start_dns(&c.id, ns, &mut self.datapath)
                .map_err(|e| Error::Other(anyhow::anyhow!("embedded DNS: {e}")))?
        {
            undo.push(Step::Dns(c.id.clone()));
        }
        Ok(plugged)
    }

    /// The inverse of [`Controller::plug`] for everything a running container holds: its
    /// embedded DNS, published ports and endpoints, and the `ip netns` name that `run` and
    /// `attach` give its namespace next to the operation. Never fails half-way.
    pub(super) fn unplug(&mut self, c: &ContainerRecord) {
        self.names.stop_dns(&c.id);
        self.names.unexpose(&c.name);
        self.ports.unpublish(&mut self.datapath, &c.published);
        for ep in &c.endpoints {
            self.release_endpoint(ep);
        }
    }

    /// Ports other containers publish, with their names (for collision messages).
    pub(super) fn published_by_others(&self, name: &str) -> Vec<(PublishedPort, String)> {
        self.state
            .containers
            .values()
            .filter(|o| o.name != name)
            .flat_map(|o| o.published.iter().map(move |p| (*p, o.name.clone())))
            .collect()
    }

    /// The endpoint published ports lead to: the first one with a veth on a non-internal
    /// network.
    pub(super) fn publishing_endpoint(
        &self,
        endpoints: &[EndpointRecord],
    ) -> Option<EndpointRecord> {
        endpoints
            .iter()
            .filter(|ep| ep.has_veth())
            .find(|ep| {
                self.state
                    .networks
                    .get(&ep.network)
                    .is_some_and(|n| !n.internal)
            })
            .cloned()
    }

    /// Allocates an address and wires a new interface into `ns`, the fast path included.
    /// `taken` are the container's endpoints so far (for the next free `ethN`).
    fn add_endpoint(
        &mut self,
        undo: &mut Undo,
        c: &ContainerRecord,
        taken: &[&EndpointRecord],
        ns: &File,
        net: &NetworkRecord,
        request: &NetworkRequest,
    ) -> Result<EndpointRecord> {
        let mut in_use = self.in_use(&net.name);
        in_use.extend(undo.addresses_on(net.index));
        let ip = ipam::Pool {
            subnet: net.subnet,
            gateway: net.gateway,
            range: net.ip_range,
        }
        .allocate(&in_use, request.ip)
        .map_err(|e| Error::conflict(format!("network {}: {e}", net.name)))?;
        let id = crate::state::random_id();
        let ifname = match &request.ifname {
            Some(ifname) => ifname.clone(),
            None => (0..)
                .map(|i| format!("eth{i}"))
                .find(|n| !taken.iter().any(|ep| &ep.ifname == n))
                .expect("unbounded"),
        };
        let ep = EndpointRecord {
            no_xdp_receiver: false,
            network: net.name.clone(),
            host_veth: String::new(),
            ip,
            mac: request.mac.unwrap_or_else(|| ipam::mac_for(ip)),
            ifname,
            host_ifindex: 0,
            id,
        };
        match net.kind() {
            NetworkKind::Direct(parent) => {
                let mac = macvlan::wire(ns, net, parent, &ep)?;
                undo.push(Step::DirectEndpoint {
                    ns: ns.try_clone()?,
                    ifname: ep.ifname.clone(),
                });
                tracing::info!(container = c.name, network = net.name, %ip, parent = parent.name, "endpoint up");
                Ok(EndpointRecord { mac, ..ep })
            }
            kind => {
                let ep = self.wire_veth(undo, ns, net, kind, ep)?;
                tracing::info!(container = c.name, network = net.name, %ip, veth = ep.host_veth, "endpoint up");
                Ok(ep)
            }
        }
    }

    /// A veth endpoint on a bridge (or an overlay block's bridge): the pair wired, its MTU
    /// fitted to the tunnel, the fast path attached and the maps written, and only then the
    /// host end on the bridge and up (no bypass window).
    fn wire_veth(
        &mut self,
        undo: &mut Undo,
        ns: &File,
        net: &NetworkRecord,
        kind: NetworkKind<'_>,
        ep: EndpointRecord,
    ) -> Result<EndpointRecord> {
        let ep = EndpointRecord {
            host_veth: endpoint::host_veth_name(&ep.id),
            ..ep
        };
        let host_ifindex = endpoint::wire(ns, net, &ep)?;
        let ep = EndpointRecord { host_ifindex, ..ep };
        undo.push(Step::Endpoint {
            network_index: net.index,
            endpoint: ep.clone(),
        });
        if let NetworkKind::OverlayBlock(_) = kind {
            endpoint::set_mtu(ns, &ep, self.overlay.container_mtu())?;
        }
        sysctl::refuse_router_advertisements(&ep.host_veth)?;
        self.install_endpoint(net, &ep)?;
        self.uplink.attach_endpoint(&mut self.datapath, ns, &ep)?;
        endpoint::plug_into_bridge(net, &ep)?;
        Ok(ep)
    }

    /// Addresses leased on `network` (the endpoints of every container on it).
    fn in_use(&self, network: &str) -> BTreeSet<Ipv4Addr> {
        self.state
            .containers
            .values()
            .flat_map(|c| &c.endpoints)
            .filter(|ep| ep.network == network)
            .map(|ep| ep.ip)
            .collect()
    }

    /// Publishes the endpoint in the maps, then attaches the fast path to its veth: a
    /// program swapped into a re-adopted veth's link finds its entry already there (the
    /// maps may have been recreated by an upgrade), so no packet of it meets an unknown
    /// interface.
    pub(super) fn install_endpoint(
        &mut self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
    ) -> Result<(), crate::datapath::DatapathError> {
        self.datapath
            .set_iface(ep.host_ifindex, network::endpoint_iface(net, ep))?;
        self.datapath
            .set_endpoint(net.index, ep.ip, endpoint::map_target(ep))?;
        self.datapath.attach(&ep.host_veth)
    }

    /// `network connect`: a new endpoint, live if the container runs, and the request kept
    /// for its next start.
    pub fn network_connect(&mut self, name: &str, spec: ConnectSpec) -> Result<()> {
        let net = self.network(name)?.clone();
        let c = self.container(&spec.container)?.clone();
        if c.mode != NetworkMode::Networks {
            return Err(Error::conflict(format!(
                "container {} uses network mode {}: it cannot join networks",
                c.name,
                c.mode.name()
            )));
        }
        if c.networks.iter().any(|r| r.network == net.name) {
            return Err(Error::conflict(format!(
                "container {} is already connected to network {}",
                c.name, net.name
            )));
        }
        check_fixed_ip_allowed(&net, spec.ip)?;
        check_aliases_allowed(&net, &spec.aliases)?;
        let request = NetworkRequest {
            ifname: None,
            mac: None,
            aliases: spec.aliases,
            network: net.name.clone(),
            ip: spec.ip,
        };
        self.transaction(|ctl, undo| {
            if c.is_running() {
                let ns = ctl.open_netns(&c)?;
                let plugged = ctl.plug(undo, &c, &ns, std::slice::from_ref(&request), &[])?;
                let record = ctl.state.containers.get_mut(&c.name).expect("exists");
                record.endpoints.extend(plugged.endpoints);
            }
            let record = ctl.state.containers.get_mut(&c.name).expect("exists");
            record.networks.push(request);
            Ok(())
        })
    }

    /// `network disconnect`: the endpoint goes at once, and the request with it. As in
    /// Docker, published ports that led to it move to the next network that can publish,
    /// and the default route, if it went with it, to the next network that gives one.
    pub fn network_disconnect(&mut self, name: &str, container: &str) -> Result<()> {
        let net = self.network(name)?.clone();
        let c = self.container(container)?.clone();
        if !c.networks.iter().any(|r| r.network == net.name) {
            return Err(Error::conflict(format!(
                "container {} is not connected to network {}",
                c.name, net.name
            )));
        }
        let ports_move = !c.published.is_empty()
            && self
                .publishing_endpoint(&c.endpoints)
                .is_some_and(|ep| ep.network == net.name);
        if ports_move {
            self.ports.unpublish(&mut self.datapath, &c.published);
        }
        let ns = c.is_running().then(|| self.open_netns(&c).ok()).flatten();
        for ep in c.endpoints.iter().filter(|ep| ep.network == net.name) {
            if let (false, Some(ns)) = (ep.has_veth(), &ns) {
                macvlan::unwire(ns, &ep.ifname);
            }
            self.release_endpoint(ep);
        }
        let remaining: Vec<EndpointRecord> = c
            .endpoints
            .iter()
            .filter(|ep| ep.network != net.name)
            .cloned()
            .collect();
        if let Some(ns) = &ns {
            self.restore_default_route(ns, &remaining);
        }
        self.transaction(|ctl, undo| {
            let published = match ctl.publishing_endpoint(&remaining) {
                Some(ep) if ports_move => {
                    let taken = ctl.published_by_others(&c.name);
                    let hold = c.cni.is_none();
                    let published = ctl.ports.publish(
                        &mut ctl.datapath,
                        &c.ports,
                        &ep,
                        &taken,
                        &c.name,
                        hold,
                    )?;
                    undo.push(Step::Ports(published.clone()));
                    published
                }
                None if ports_move => vec![],
                _ => c.published.clone(),
            };
            let record = ctl.state.containers.get_mut(&c.name).expect("exists");
            record.endpoints = remaining;
            record.networks.retain(|r| r.network != net.name);
            record.published = published;
            Ok(())
        })
    }

    /// A default route through the first of `endpoints` that gives one, if the namespace
    /// has none left (best effort: the container is told nothing either way).
    fn restore_default_route(&self, ns: &File, endpoints: &[EndpointRecord]) {
        let route = endpoints.iter().find_map(|ep| {
            let net = self.state.networks.get(&ep.network)?;
            let route = match net.kind() {
                _ if net.internal => return None,
                NetworkKind::Direct(parent) if !macvlan::routes_via_gateway(net, parent) => {
                    endpoint::DefaultRoute::OutOfInterface
                }
                _ => endpoint::DefaultRoute::ViaGateway,
            };
            Some((net, ep, route))
        });
        if let Some((net, ep, route)) = route
            && let Err(error) = endpoint::default_route_if_none(ns, net, ep, route)
        {
            tracing::warn!(%error, network = net.name, "no default route after disconnect");
        }
    }
}

pub(super) fn check_fixed_ip_allowed(net: &NetworkRecord, ip: Option<Ipv4Addr>) -> Result<()> {
    if ip.is_some() && net.name == DEFAULT_NETWORK {
        return Err(Error::invalid(
            "--ip is only supported on user-defined networks (as in Docker)",
        ));
    }
    Ok(())
}

pub(super) fn check_aliases_allowed(net: &NetworkRecord, aliases: &[String]) -> Result<()> {
    if !aliases.is_empty() && net.name == DEFAULT_NETWORK {
        return Err(Error::invalid(
            "network-scoped aliases are only supported on user-defined networks (as in Docker)",
        ));
    }
    for alias in aliases {
        network::validate_name("alias", alias)?;
    }
    Ok(())
}
