//! What this host should do about a view of the cluster store, as pure functions: which
//! overlay networks to join (a local bridge network on this host's block) or leave, and
//! the overlay map entries. The controller carries the plan out; unit tests read it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use netbpf_common::{IpAddrKey, OverlayLocal, OverlayRoute};

use super::{BlockLease, ClusterView, OverlaySpec};
use crate::{
    ipam,
    state::{NetworkKind, NetworkRecord},
};

/// A network to join: the store's spec and this host's block of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub spec: OverlaySpec,
    pub block: Ipv4Net,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Overlay networks this host holds a block of and has no local part of yet.
    pub join: Vec<Join>,
    /// Local parts of overlay networks that left the store.
    pub leave: Vec<String>,
    /// Why a network was neither joined nor kept as the store says, for the log.
    pub warnings: Vec<String>,
}

/// What this host (tunnel endpoint `vtep`, local networks `local`) should do about `view`.
pub fn plan(vtep: Ipv4Addr, view: &ClusterView, local: &BTreeMap<String, NetworkRecord>) -> Plan {
    let mut plan = Plan::default();
    for (name, spec) in &view.networks {
        let Some(mine) = view
            .blocks
            .get(name)
            .and_then(|b| b.iter().find(|l| l.vtep == vtep))
        else {
            continue;
        };
        match local.get(name).map(|n| (n, n.kind())) {
            Some((n, NetworkKind::OverlayBlock(_))) => {
                if n.subnet != mine.block {
                    plan.warnings.push(format!(
                        "overlay network {name}: block changed from {} to {}; keeping the local one",
                        n.subnet, mine.block
                    ));
                }
            }
            Some(_) => plan.warnings.push(format!(
                "a local network has the name of overlay network {name}: not joining the overlay"
            )),
            None => plan.join.push(Join {
                spec: spec.clone(),
                block: mine.block,
            }),
        }
    }
    plan.leave = local
        .values()
        .filter(|n| matches!(n.kind(), NetworkKind::OverlayBlock(_)))
        .filter(|n| !view.networks.contains_key(&n.name))
        .map(|n| n.name.clone())
        .collect();
    plan
}

/// The overlay maps' entries: per local overlay network its VNI, and a route to every other
/// host's block through `underlay_ifindex`.
pub type OverlayEntries = (
    BTreeMap<(u32, Ipv4Net), OverlayRoute>,
    BTreeMap<u32, OverlayLocal>,
);

pub fn entries(
    vtep: Ipv4Addr,
    underlay_ifindex: u32,
    view: &ClusterView,
    local: &BTreeMap<String, NetworkRecord>,
) -> OverlayEntries {
    let mut routes = BTreeMap::new();
    let mut vnis = BTreeMap::new();
    for network in local.values() {
        let NetworkKind::OverlayBlock(ov) = network.kind() else {
            continue;
        };
        vnis.insert(
            ov.vni,
            OverlayLocal {
                network: network.index,
                port: ov.port,
                gateway_mac: ipam::mac_for(network.gateway),
            },
        );
        let remote = view
            .blocks
            .get(&network.name)
            .into_iter()
            .flatten()
            .filter(|lease| lease.vtep != vtep);
        for lease in remote {
            let remote_gateway = Ipv4Addr::from(u32::from(lease.block.network()) + 1);
            routes.insert(
                (network.index, lease.block),
                OverlayRoute {
                    remote_vtep: IpAddrKey::from_v4(lease.vtep.octets()),
                    local_vtep: IpAddrKey::from_v4(vtep.octets()),
                    underlay_ifindex,
                    vni: ov.vni,
                    port: ov.port,
                    inner_dst_mac: ipam::mac_for(remote_gateway),
                },
            );
        }
    }
    (routes, vnis)
}

/// Log lines for hosts that joined or left between two views.
pub fn peer_changes(before: &ClusterView, after: &ClusterView) -> Vec<String> {
    let pairs = |blocks: Option<&Vec<BlockLease>>| -> BTreeSet<(Ipv4Net, Ipv4Addr)> {
        blocks
            .into_iter()
            .flatten()
            .map(|l| (l.block, l.vtep))
            .collect()
    };
    let mut lines = vec![];
    for name in after.blocks.keys() {
        let (old, new) = (
            pairs(before.blocks.get(name)),
            pairs(after.blocks.get(name)),
        );
        for (block, vtep) in new.difference(&old) {
            lines.push(format!(
                "overlay {name}: peer {vtep} joined with block {block}"
            ));
        }
        for (block, vtep) in old.difference(&new) {
            lines.push(format!("overlay {name}: peer {vtep} left (block {block})"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        overlay::fixtures::{local_block as block_at, view as view_of},
        state::fixtures,
    };

    fn view() -> ClusterView {
        view_of(&[("10.200.1.0/24", "10.0.0.1"), ("10.200.2.0/24", "10.0.0.2")])
    }

    fn local_block(block: &str) -> NetworkRecord {
        block_at(block, 5)
    }

    #[test]
    fn a_host_with_a_block_joins_and_one_without_does_not() {
        let me: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let p = plan(me, &view(), &BTreeMap::new());
        assert_eq!(p.join.len(), 1);
        assert_eq!(p.join[0].block, "10.200.1.0/24".parse::<Ipv4Net>().unwrap());
        let stranger: Ipv4Addr = "10.0.0.9".parse().unwrap();
        assert_eq!(plan(stranger, &view(), &BTreeMap::new()), Plan::default());
    }

    #[test]
    fn a_joined_network_stays_and_one_gone_from_the_store_is_left() {
        let me: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let local = BTreeMap::from([("ovl".to_owned(), local_block("10.200.1.0/24"))]);
        assert_eq!(plan(me, &view(), &local), Plan::default());
        let p = plan(me, &ClusterView::default(), &local);
        assert_eq!(p.leave, ["ovl"]);
        let moved = plan(
            me,
            &view(),
            &BTreeMap::from([("ovl".to_owned(), local_block("10.200.7.0/24"))]),
        );
        assert!(
            moved.join.is_empty() && moved.warnings.len() == 1,
            "{moved:?}"
        );
    }

    #[test]
    fn a_local_bridge_of_the_same_name_is_not_joined() {
        let me: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let local =
            BTreeMap::from([("ovl".to_owned(), fixtures::network("ovl", "10.9.0.0/24", 1))]);
        let p = plan(me, &view(), &local);
        assert!(p.join.is_empty() && p.leave.is_empty() && p.warnings.len() == 1);
    }

    #[test]
    fn routes_lead_to_other_hosts_blocks_only() {
        let me: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let local = BTreeMap::from([("ovl".to_owned(), local_block("10.200.1.0/24"))]);
        let (routes, vnis) = entries(me, 7, &view(), &local);
        assert_eq!(vnis[&42].network, 5);
        assert_eq!(routes.len(), 1);
        let ((network, block), route) = routes.iter().next().unwrap();
        assert_eq!((*network, block.to_string()), (5, "10.200.2.0/24".into()));
        assert_eq!(route.remote_vtep, IpAddrKey::from_v4([10, 0, 0, 2]));
        assert_eq!((route.underlay_ifindex, route.vni), (7, 42));
        assert_eq!(
            route.inner_dst_mac,
            ipam::mac_for("10.200.2.1".parse().unwrap())
        );
    }

    #[test]
    fn peers_joining_and_leaving_are_logged() {
        let lines = peer_changes(&ClusterView::default(), &view());
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("joined"), "{lines:?}");
        assert!(peer_changes(&view(), &view()).is_empty());
    }
}
