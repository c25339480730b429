//! What the daemon accepts from the cluster store. Anyone who can write to etcd — another
//! host, or whoever took one over — may have written any record, so each is checked before
//! it counts: names and ids of the right form, VNI and port in range, a block of the right
//! size inside its network's subnet, and a container name only from a host that holds a
//! block of that network, for an address in that block. What fails is left out (and logged
//! once by the session).

use std::collections::BTreeMap;

use super::{BLOCK_PREFIX_LEN, BlockLease, ClusterView, NameRecord, OverlaySpec};
use crate::network;

/// `view` without the records that fail; each failure as one line.
pub fn validated(view: ClusterView) -> (ClusterView, Vec<String>) {
    let mut rejected = vec![];
    let mut out = ClusterView::default();
    for (name, spec) in view.networks {
        match check_network(&name, &spec) {
            Ok(()) => {
                out.networks.insert(name, spec);
            }
            Err(why) => rejected.push(format!("network {name:?}: {why}")),
        }
    }
    let mut seen: BTreeMap<(String, ipnet::Ipv4Net), usize> = BTreeMap::new();
    for lease in view.blocks.values().flatten() {
        *seen
            .entry((lease.network.clone(), lease.block))
            .or_default() += 1;
    }
    for (network, leases) in view.blocks {
        for lease in leases {
            let twice = seen[&(lease.network.clone(), lease.block)] > 1;
            match out
                .networks
                .get(&network)
                .map(|spec| check_block(spec, &lease))
            {
                Some(Ok(())) if !twice => {
                    out.blocks.entry(network.clone()).or_default().push(lease)
                }
                Some(Ok(())) => {
                    rejected.push(format!("block {} of {network}: claimed twice", lease.block))
                }
                Some(Err(why)) => {
                    rejected.push(format!("block {} of {network}: {why}", lease.block))
                }
                None => rejected.push(format!(
                    "block {} of unknown network {network:?}",
                    lease.block
                )),
            }
        }
    }
    for name in view.names {
        match check_name(&out, &name) {
            Ok(()) => out.names.push(name),
            Err(why) => rejected.push(format!(
                "name {:?} on {} from {}: {why}",
                name.name, name.network, name.vtep
            )),
        }
    }
    (out, rejected)
}

pub(super) fn check_network(key: &str, spec: &OverlaySpec) -> Result<(), String> {
    network::validate_name("network", &spec.name).map_err(|e| e.to_string())?;
    if spec.name != key {
        return Err(format!("stored as {key:?} but named {:?}", spec.name));
    }
    if spec.id.len() < 12 || !spec.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("invalid id {:?}", spec.id));
    }
    if !(1..1 << 24).contains(&spec.vni) {
        return Err(format!("invalid vni {}", spec.vni));
    }
    if spec.port == 0 {
        return Err("invalid port 0".into());
    }
    if spec.subnet.prefix_len() > BLOCK_PREFIX_LEN {
        return Err(format!("subnet {} is smaller than a block", spec.subnet));
    }
    Ok(())
}

fn check_block(spec: &OverlaySpec, lease: &BlockLease) -> Result<(), String> {
    let len = BLOCK_PREFIX_LEN.max(spec.subnet.prefix_len());
    if lease.block.prefix_len() != len || !spec.subnet.contains(&lease.block) {
        return Err(format!("not a /{len} of {}", spec.subnet));
    }
    let vtep = lease.vtep;
    if vtep.is_unspecified() || vtep.is_loopback() || vtep.is_multicast() || vtep.is_broadcast() {
        return Err(format!("invalid tunnel endpoint {vtep}"));
    }
    Ok(())
}

fn check_name(view: &ClusterView, name: &NameRecord) -> Result<(), String> {
    network::validate_dns_name("container", &name.name).map_err(|e| e.to_string())?;
    let holds = view
        .blocks
        .get(&name.network)
        .into_iter()
        .flatten()
        .any(|lease| lease.vtep == name.vtep && lease.block.contains(&name.ip));
    if holds {
        Ok(())
    } else {
        Err(format!(
            "{} holds no block of it with {}",
            name.vtep, name.ip
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::fixtures;

    #[test]
    fn forged_and_malformed_records_are_left_out() {
        let mut view =
            fixtures::view(&[("10.200.1.0/24", "10.0.0.1"), ("10.200.2.0/24", "10.0.0.2")]);
        let mut short = view.networks["ovl"].clone();
        short.name = "short".into();
        short.id = "abc".into();
        view.networks.insert("short".into(), short);
        view.blocks.get_mut("ovl").unwrap().push(BlockLease {
            network: "ovl".into(),
            block: "10.99.0.0/24".parse().unwrap(),
            host: "x".into(),
            vtep: "10.0.0.3".parse().unwrap(),
        });
        let name = |name: &str, ip: &str, vtep: &str| NameRecord {
            network: "ovl".into(),
            name: name.into(),
            ip: ip.parse().unwrap(),
            vtep: vtep.parse().unwrap(),
        };
        view.names = vec![
            name("web", "10.200.1.5", "10.0.0.1"),
            // A host naming an address in another host's block.
            name("bank", "10.200.1.6", "10.0.0.2"),
            name("two words", "10.200.2.7", "10.0.0.2"),
        ];
        let (ok, rejected) = validated(view);
        assert!(ok.networks.contains_key("ovl") && !ok.networks.contains_key("short"));
        assert_eq!(ok.blocks["ovl"].len(), 2);
        assert_eq!(ok.names.len(), 1);
        assert_eq!(ok.names[0].name, "web");
        assert_eq!(rejected.len(), 4, "{rejected:?}");
    }
}
