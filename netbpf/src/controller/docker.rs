//! The Docker front-end's networks and endpoints (docs/runtimes.md). Docker drives the
//! remote driver in steps: `CreateEndpoint` (the address Docker's IPAM chose), `Join` (the
//! driver makes the interface, Docker moves it into the sandbox and configures it),
//! `ProgramExternalConnectivity` (published ports), and back. An endpoint is a container
//! record named after Docker's endpoint id, joined while Docker has its interface.

use std::{net::Ipv4Addr, path::PathBuf};

use super::{
    Controller,
    error::{Error, Result},
    specs::{DriverSpec, NetworkSpec},
    undo::{Step, Undo},
};
use crate::{
    endpoint, ipam, macvlan, netlink,
    publish::PortSpec,
    state::{
        AttachedTo, ContainerRecord, DockerKey, EndpointRecord, NetworkKind, NetworkMode,
        NetworkRecord, NetworkRequest, Status,
    },
    sysctl,
};

/// What `Join` answers: the interface Docker moves into the sandbox, and the gateway of
/// its default route (none: out of the interface).
pub struct Joined {
    pub interface: String,
    pub gateway: Option<Ipv4Addr>,
}

/// netbpf's name for the network Docker calls `network_id` (Docker never tells a driver
/// the name it shows): `docker-` and the id's first 12 hex digits, as `docker network ls`
/// shortens it.
pub fn network_name(network_id: &str) -> String {
    format!("docker-{}", &network_id[..network_id.len().min(12)])
}

/// netbpf's name for an endpoint: `docker-ep-` and 12 hex digits of Docker's endpoint id.
fn record_name(key: &DockerKey) -> String {
    format!(
        "docker-ep-{}",
        &key.endpoint_id[..key.endpoint_id.len().min(12)]
    )
}

impl Controller {
    /// The netbpf network Docker calls `network_id`: the one `-o netbpf.name` named, or
    /// `docker-<12 hex>`.
    pub fn docker_network_name(&self, network_id: &str) -> String {
        self.state
            .docker_networks
            .get(network_id)
            .cloned()
            .unwrap_or_else(|| network_name(network_id))
    }

    /// `CreateNetwork`, first step: the network to make for `spec`, or none when it is an
    /// overlay another host's Docker (or netbpf) already defined in the cluster store under
    /// that name, which this host then joins (every host has its block of it).
    pub fn docker_network_plan(&self, spec: NetworkSpec) -> Result<Option<NetworkSpec>> {
        let defined = self.overlay.view().networks.get(&spec.name).cloned();
        match (&spec.driver, defined) {
            (DriverSpec::Overlay { vni, .. }, Some(defined)) => {
                if spec.subnet != Some(defined.subnet) || vni.is_some_and(|v| v != defined.vni) {
                    return Err(Error::conflict(format!(
                        "overlay network {} is defined with subnet {} and vni {}: create the Docker network with --subnet {}",
                        spec.name, defined.subnet, defined.vni, defined.subnet
                    )));
                }
                Ok(None)
            }
            _ => Ok(Some(spec)),
        }
    }

    /// `CreateNetwork`, last step for a network `-o netbpf.name` named: Docker's id for it.
    pub fn docker_name_network(&mut self, network_id: &str, name: &str) -> Result<()> {
        self.transaction(|ctl, _| {
            ctl.state
                .docker_networks
                .insert(network_id.to_owned(), name.to_owned());
            Ok(())
        })
    }

    /// `DeleteNetwork`. An overlay stays defined in the cluster store (other hosts may
    /// have containers on it: `netbpf network rm` removes it everywhere); this host only
    /// forgets Docker's name for it.
    pub fn docker_remove_network(&mut self, network_id: &str) -> Result<()> {
        let name = self.docker_network_name(network_id);
        if !self.overlay.view().networks.contains_key(&name) && self.state.network(&name).is_some()
        {
            self.remove_local_network(&name)?;
        }
        if self.state.docker_networks.contains_key(network_id) {
            self.transaction(|ctl, _| {
                ctl.state.docker_networks.remove(network_id);
                Ok(())
            })?;
        }
        Ok(())
    }

    fn docker_record(&self, key: &DockerKey) -> Result<ContainerRecord> {
        self.state
            .containers
            .values()
            .find(|c| c.docker.as_ref() == Some(key))
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no endpoint {}", key.endpoint_id)))
    }

    fn docker_network(&self, key: &DockerKey) -> Result<NetworkRecord> {
        let name = self.docker_network_name(&key.network_id);
        match self.network(&name) {
            Ok(net) => Ok(net.clone()),
            Err(_) if self.overlay.view().networks.contains_key(&name) => {
                Err(Error::not_yet(format!(
                    "this host has no block of overlay network {name} yet: try again in a moment"
                )))
            }
            Err(error) => Err(error),
        }
    }

    /// `CreateEndpoint`: records the endpoint with Docker's address, and its MAC or, when
    /// Docker gave none, the one netbpf derives from the address (returned for Docker to
    /// set; an ipvlan interface has its parent's, so none is returned). Nothing is wired
    /// until `Join`.
    pub fn docker_create_endpoint(
        &mut self,
        key: DockerKey,
        ip: Ipv4Addr,
        given: Option<[u8; 6]>,
    ) -> Result<Option<[u8; 6]>> {
        let net = self.docker_network(&key)?;
        let ipvlan = net.driver == "ipvlan";
        if ipvlan && given.is_some() {
            return Err(Error::invalid(
                "ipvlan endpoints have their parent's MAC address: drop --mac-address",
            ));
        }
        if !net.subnet.contains(&ip) {
            if let NetworkKind::OverlayBlock(_) = net.kind() {
                return Err(Error::invalid(format!(
                    "address {ip} is outside this host's block {} of overlay network {}: create the Docker network with --ipam-driver netbpf",
                    net.subnet, net.name
                )));
            }
            return Err(Error::invalid(format!(
                "address {ip} is not in network {}'s subnet {}",
                net.name, net.subnet
            )));
        }
        let taken = self.state.containers.values().any(|c| {
            c.endpoints
                .iter()
                .any(|ep| ep.network == net.name && ep.ip == ip)
                || c.networks
                    .iter()
                    .any(|r| r.network == net.name && r.ip == Some(ip))
        });
        if taken {
            return Err(Error::conflict(format!(
                "address {ip} is already in use on network {}",
                net.name
            )));
        }
        let mac = given.unwrap_or_else(|| ipam::mac_for(ip));
        let request = NetworkRequest {
            network: net.name,
            ip: Some(ip),
            aliases: vec![],
            ifname: None,
            mac: Some(mac),
        };
        let mut record =
            ContainerRecord::new(&record_name(&key), NetworkMode::Networks, vec![request]);
        record.attached = Some(AttachedTo::Netns);
        record.docker = Some(key);
        self.transaction(|ctl, _| {
            ctl.state.containers.insert(record.name.clone(), record);
            Ok(())
        })?;
        Ok((given.is_none() && !ipvlan).then_some(mac))
    }

    /// `Join`: the interface Docker moves into `sandbox` — the container end of a veth
    /// pair whose host end gets the fast path and joins the bridge before Docker sees the
    /// interface, or a macvlan/ipvlan interface on a direct network's parent — and the
    /// gateway.
    pub fn docker_join(&mut self, key: &DockerKey, sandbox: PathBuf) -> Result<Joined> {
        let record = self.docker_record(key)?;
        if !record.endpoints.is_empty() {
            return Err(Error::conflict(format!(
                "endpoint {} has joined a sandbox already",
                key.endpoint_id
            )));
        }
        let net = self.docker_network(key)?;
        let request = record.networks.first().cloned().expect("one network");
        let ip = request.ip.expect("Docker's address");
        // Docker's endpoint id: the interface it moves back to the host after `Leave` is
        // found by it at `DeleteEndpoint`.
        let id = key.endpoint_id.clone();
        let ep = EndpointRecord {
            network: net.name.clone(),
            host_veth: String::new(),
            ip,
            mac: request.mac.unwrap_or_else(|| ipam::mac_for(ip)),
            // Docker names it in the sandbox (`eth` and a number of its choosing).
            ifname: "eth".into(),
            host_ifindex: 0,
            no_xdp_receiver: true,
            id,
        };
        self.transaction(|ctl, undo| {
            let (ep, joined) = match net.kind() {
                NetworkKind::Direct(parent) => {
                    let interface = macvlan::sublink_for_runtime(&net, parent, &ep)?;
                    let via_gateway = macvlan::routes_via_gateway(&net, parent);
                    let gateway = via_gateway.then_some(net.gateway);
                    (ep, Joined { interface, gateway })
                }
                _ => {
                    let (ep, interface) = ctl.docker_veth(undo, &net, ep)?;
                    let gateway = Some(net.gateway);
                    (ep, Joined { interface, gateway })
                }
            };
            let c = ctl.state.containers.get_mut(&record.name).expect("exists");
            c.endpoints = vec![ep];
            c.status = Status::Running;
            c.netns = Some(sandbox);
            Ok(joined)
        })
    }

    /// A veth pair for Docker to move: the host end installed and on the bridge.
    fn docker_veth(
        &mut self,
        undo: &mut Undo,
        net: &NetworkRecord,
        ep: EndpointRecord,
    ) -> Result<(EndpointRecord, String)> {
        let ep = EndpointRecord {
            host_veth: endpoint::host_veth_name(&ep.id),
            ..ep
        };
        let (host_ifindex, peer) = endpoint::pair_for_runtime(&ep)?;
        let ep = EndpointRecord { host_ifindex, ..ep };
        undo.push(Step::Endpoint {
            network_index: net.index,
            endpoint: ep.clone(),
        });
        sysctl::refuse_router_advertisements(&ep.host_veth)?;
        self.install_endpoint(net, &ep)?;
        endpoint::plug_into_bridge(net, &ep)?;
        Ok((ep, peer))
    }

    /// `ProgramExternalConnectivity`: the published ports of `docker run -p`, in BPF.
    pub fn docker_publish(&mut self, key: &DockerKey, ports: Vec<PortSpec>) -> Result<()> {
        let record = self.docker_record(key)?;
        if record.endpoints.is_empty() {
            return Err(Error::conflict(format!(
                "endpoint {} has not joined",
                key.endpoint_id
            )));
        }
        self.docker_unpublish(key)?;
        if ports.is_empty() {
            return Ok(());
        }
        let ep = self.publishing_endpoint(&record.endpoints).ok_or_else(|| {
            Error::invalid(format!(
                "network {} cannot publish ports (internal, macvlan and ipvlan networks cannot)",
                record.networks[0].network
            ))
        })?;
        let taken = self.published_by_others(&record.name);
        self.transaction(|ctl, undo| {
            let published =
                ctl.ports
                    .publish(&mut ctl.datapath, &ports, &ep, &taken, &record.name, true)?;
            undo.push(Step::Ports(published.clone()));
            let c = ctl.state.containers.get_mut(&record.name).expect("exists");
            c.ports = ports;
            c.published = published;
            Ok(())
        })
    }

    /// `RevokeExternalConnectivity`.
    pub fn docker_unpublish(&mut self, key: &DockerKey) -> Result<()> {
        let record = self.docker_record(key)?;
        self.ports.unpublish(&mut self.datapath, &record.published);
        self.transaction(|ctl, _| {
            let c = ctl.state.containers.get_mut(&record.name).expect("exists");
            c.published.clear();
            c.ports.clear();
            Ok(())
        })
    }

    /// `Leave`: the endpoint's ports and interface go (Docker may have deleted the
    /// interface with the sandbox already); the record stays until `DeleteEndpoint`.
    pub fn docker_leave(&mut self, key: &DockerKey) -> Result<()> {
        let record = self.docker_record(key)?;
        self.ports.unpublish(&mut self.datapath, &record.published);
        for ep in &record.endpoints {
            self.release_endpoint(ep);
        }
        self.transaction(|ctl, _| {
            let c = ctl.state.containers.get_mut(&record.name).expect("exists");
            c.endpoints.clear();
            c.published.clear();
            c.status = Status::Created;
            c.netns = None;
            Ok(())
        })
    }

    /// `DeleteEndpoint`: forgets it (leaving first if Docker did not).
    pub fn docker_delete_endpoint(&mut self, key: &DockerKey) -> Result<()> {
        let record = self.docker_record(key)?;
        if !record.endpoints.is_empty() {
            self.docker_leave(key)?;
        }
        if !self.docker_network(key)?.kind().has_bridge() {
            // After `Leave` Docker moves a direct interface back to the host under the
            // name `Join` gave it.
            let name = macvlan::runtime_link_name(&key.endpoint_id);
            netlink::remove_link(None, &name, "container interface");
        }
        self.transaction(|ctl, _| {
            ctl.state.containers.remove(&record.name);
            Ok(())
        })
    }
}
