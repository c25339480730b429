//! Overlay networks across hosts. An overlay network is defined once in the cluster store
//! (etcd, as Flannel and Calico use it) and seen by every host's daemon. Each daemon leases
//! a block of the network's subnet for its own containers, under an etcd lease it keeps
//! alive, with its VTEP (underlay) address; every daemon watches the others' blocks, so a
//! host whose daemon dies drops out when its lease expires.
//!
//! Keys (all JSON values):
//!
//! ```text
//! /netbpf/v1/networks/<name>              → OverlaySpec
//! /netbpf/v1/blocks/<name>/<addr>-<len>   → BlockLease (attached to the owner's etcd lease)
//! /netbpf/v1/names/<name>/<vtep>/<dns name> → NameRecord (likewise): the embedded DNS of
//!                                            every host answers for containers on all hosts
//! ```

pub mod access;
mod claim;
pub mod plan;
mod records;
pub mod store;
mod validate;

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::Datapath,
    netlink::Netlink,
    state::{NetworkKind, State},
};
use store::Cluster;

/// The UDP port of RFC 7348; Flannel's VXLAN backend uses 8472.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Prefix length of the block each host leases (Flannel's default `SubnetLen`).
pub const BLOCK_PREFIX_LEN: u8 = 24;
/// MTU of container interfaces on overlay networks over an underlay of `underlay_mtu`: less
/// the 50 bytes VXLAN adds, so that no encapsulated packet needs fragmenting.
pub fn container_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(netbpf_common::VXLAN_OVERHEAD)
}
/// Lifetime of a host's registrations without keep-alives.
pub const LEASE_TTL_SECS: i64 = 10;

pub const NETWORKS_PREFIX: &str = "/netbpf/v1/networks/";
pub const BLOCKS_PREFIX: &str = "/netbpf/v1/blocks/";
pub const NAMES_PREFIX: &str = "/netbpf/v1/names/";

/// An overlay network, as defined in the cluster store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    pub id: String,
    pub name: String,
    pub subnet: Ipv4Net,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP destination port.
    pub port: u16,
    pub created: String,
}

/// One host's block of an overlay network and where to tunnel to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockLease {
    pub network: String,
    pub block: Ipv4Net,
    /// The owner's name for people (its VTEP address unless told otherwise).
    pub host: String,
    /// Underlay address of the owner's tunnel endpoint.
    pub vtep: Ipv4Addr,
}

/// A DNS name of a container on an overlay network, as its host publishes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NameRecord {
    pub network: String,
    /// Container name, short id or alias.
    pub name: String,
    pub ip: Ipv4Addr,
    /// The publishing host's VTEP.
    pub vtep: Ipv4Addr,
}

impl NameRecord {
    pub fn key(&self) -> String {
        format!("{NAMES_PREFIX}{}/{}/{}", self.network, self.vtep, self.name)
    }
}

/// What the cluster store holds, as last read.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub networks: BTreeMap<String, OverlaySpec>,
    /// By network name.
    pub blocks: BTreeMap<String, Vec<BlockLease>>,
    /// Every host's container names.
    pub names: Vec<NameRecord>,
}

pub fn network_key(name: &str) -> String {
    format!("{NETWORKS_PREFIX}{name}")
}

pub fn block_key(network: &str, block: Ipv4Net) -> String {
    format!(
        "{BLOCKS_PREFIX}{network}/{}-{}",
        block.network(),
        block.prefix_len()
    )
}

/// The overlay options of `network create -d overlay -o KEY=VALUE`: `vni` and `port`.
pub fn parse_options(options: &BTreeMap<String, String>) -> Result<(Option<u32>, u16), String> {
    let mut vni = None;
    let mut port = DEFAULT_VXLAN_PORT;
    for (key, value) in options {
        match key.as_str() {
            "vni" => {
                let v: u32 = value
                    .parse()
                    .ok()
                    .filter(|v| (1..1 << 24).contains(v))
                    .ok_or_else(|| format!("invalid vni {value:?}: use 1 to 16777215"))?;
                vni = Some(v);
            }
            "port" => {
                port = value.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("invalid port {value:?}: use 4789, 8472 or another UDP port")
                })?;
            }
            other => {
                return Err(format!(
                    "unknown option {other:?} for an overlay network: use vni and port"
                ));
            }
        }
    }
    Ok((vni, port))
}

/// The overlay service: the cluster store session (with `--cluster-store`), the store's
/// view as last seen, and the underlay this host tunnels over.
pub struct Overlay {
    cluster: Option<Cluster>,
    /// Overlay networks and every host's blocks, as the cluster store last said.
    view: ClusterView,
    /// MTU of the VTEP's interface, once known.
    underlay_mtu: u32,
}

impl Default for Overlay {
    fn default() -> Self {
        Self {
            cluster: None,
            view: ClusterView::default(),
            underlay_mtu: 1500,
        }
    }
}

impl Overlay {
    pub fn set_cluster(&mut self, cluster: Cluster) {
        self.cluster = Some(cluster);
    }

    /// This host's tunnel endpoint, when it is in a cluster.
    pub fn vtep(&self) -> Option<Ipv4Addr> {
        self.cluster.as_ref().map(|c| c.vtep)
    }

    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// Takes a new view of the store, logging the hosts that joined or left; returns what
    /// this host should do about it (nothing outside a cluster).
    pub fn apply(&mut self, view: ClusterView, state: &State) -> Option<plan::Plan> {
        for line in plan::peer_changes(&self.view, &view) {
            tracing::info!("{line}");
        }
        self.view = view;
        let vtep = self.vtep()?;
        Some(plan::plan(vtep, &self.view, &state.networks))
    }

    /// MTU for container interfaces on overlay networks.
    pub fn container_mtu(&self) -> u32 {
        container_mtu(self.underlay_mtu)
    }

    /// Writes the overlay maps from the view and puts decapsulation on the VTEP's interface.
    pub fn program(&mut self, datapath: &mut Datapath, state: &State) -> anyhow::Result<()> {
        let Some(vtep) = self.vtep() else {
            return Ok(());
        };
        let underlay = Netlink::run(None, |nl| {
            for link in nl.links()? {
                if nl.addresses_of(link.index)?.contains(&vtep) {
                    return Ok(Some(link));
                }
            }
            Ok(None)
        })?
        .with_context(|| format!("no interface holds the VTEP address {vtep}"))?;
        self.underlay_mtu = underlay.mtu;
        let (routes, vnis) = plan::entries(vtep, underlay.index, &self.view, &state.networks);
        datapath.sync_overlay(&routes, &vnis)?;
        if !vnis.is_empty() {
            datapath.attach_overlay_ingress(&underlay.name)?;
        }
        Ok(())
    }

    /// Names other hosts publish for their containers.
    pub fn remote_names(&self) -> impl Iterator<Item = &NameRecord> {
        let me = self.vtep();
        self.view.names.iter().filter(move |n| Some(n.vtep) != me)
    }

    /// Publishes this host's container names on overlay networks in the store.
    pub fn publish_names(&self, state: &State) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut mine = vec![];
        for c in state.containers.values().filter(|c| c.is_running()) {
            for ep in &c.endpoints {
                let on_overlay = state
                    .networks
                    .get(&ep.network)
                    .is_some_and(|n| matches!(n.kind(), NetworkKind::OverlayBlock(_)));
                if !on_overlay {
                    continue;
                }
                let names = [c.name.clone(), c.short_id().to_owned()]
                    .into_iter()
                    .chain(c.aliases_on(&ep.network));
                for name in names {
                    mine.push(NameRecord {
                        network: ep.network.clone(),
                        name,
                        ip: ep.ip,
                        vtep: cluster.vtep,
                    });
                }
            }
        }
        mine.sort();
        cluster.publish_names(mine);
    }

    /// The store session, for changes that need it.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// A network the store has just defined, in this view at once (the watch confirms it).
    pub fn defined(&mut self, spec: OverlaySpec) {
        self.view.networks.insert(spec.name.clone(), spec);
    }

    /// A network the store has just removed, with every host's block of it.
    pub fn undefined(&mut self, name: &str) {
        self.view.networks.remove(name);
        self.view.blocks.remove(name);
    }
}

/// Overlay records for unit tests that need a cluster view but no etcd.
#[cfg(test)]
pub mod fixtures {
    use super::*;
    use crate::state::{NetworkRecord, OverlayRecord};

    /// Overlay network `ovl` on 10.200.0.0/16 (VNI 42, port 4789) with a block per
    /// (block, VTEP) pair.
    pub fn view(blocks: &[(&str, &str)]) -> ClusterView {
        let spec = OverlaySpec {
            id: "f".repeat(64),
            name: "ovl".into(),
            subnet: "10.200.0.0/16".parse().unwrap(),
            vni: 42,
            port: 4789,
            created: String::new(),
        };
        let leases = blocks
            .iter()
            .map(|(block, vtep)| BlockLease {
                network: "ovl".into(),
                block: block.parse().unwrap(),
                host: (*vtep).into(),
                vtep: vtep.parse().unwrap(),
            })
            .collect();
        ClusterView {
            networks: BTreeMap::from([("ovl".into(), spec)]),
            blocks: BTreeMap::from([("ovl".into(), leases)]),
            names: vec![],
        }
    }

    /// This host's block of `ovl`, as the local network it becomes (map index `index`).
    pub fn local_block(block: &str, index: u32) -> NetworkRecord {
        NetworkRecord {
            overlay: Some(OverlayRecord {
                subnet: "10.200.0.0/16".parse().unwrap(),
                vni: 42,
                port: 4789,
            }),
            driver: "overlay".into(),
            ..crate::state::fixtures::network("ovl", block, index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let opts = |p: &[(&str, &str)]| -> BTreeMap<String, String> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(parse_options(&opts(&[])).unwrap(), (None, 4789));
        assert_eq!(
            parse_options(&opts(&[("vni", "42"), ("port", "8472")])).unwrap(),
            (Some(42), 8472)
        );
        assert!(parse_options(&opts(&[("vni", "0")])).is_err());
        assert!(parse_options(&opts(&[("vni", "16777216")])).is_err());
        assert!(parse_options(&opts(&[("parent", "eth1")])).is_err());
        assert_eq!(
            block_key("ovl", "10.200.3.0/24".parse().unwrap()),
            "/netbpf/v1/blocks/ovl/10.200.3.0-24"
        );
    }
}
