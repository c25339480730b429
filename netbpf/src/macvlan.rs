//! macvlan and ipvlan networks: containers sit directly on a parent interface of the host,
//! or on a VLAN sub-interface of it made with the network, with addresses from the parent's
//! LAN. No bridge, no veth and none of the BPF fast path: the kernel's macvlan and ipvlan
//! drivers carry the packets, and keep macvlan networks apart as they do for Docker.

use std::{collections::BTreeMap, fs::File};

use rtnetlink::packet_route::link::{IpVlanMode, MacVlanMode};

use crate::{
    api::ApiError,
    endpoint::{self, DefaultRoute},
    netlink::{Netlink, NetlinkError, SubLink},
    state::{EndpointRecord, NetworkRecord, ParentRecord, random_id},
};

pub const DRIVERS: [&str; 2] = ["macvlan", "ipvlan"];

fn internal(e: NetlinkError) -> ApiError {
    ApiError::internal(e)
}

/// The parent and mode that a network's `-o` options ask for.
pub fn parse_options(
    driver: &str,
    options: &BTreeMap<String, String>,
) -> Result<ParentRecord, ApiError> {
    let mode_key = format!("{driver}_mode");
    let mut parent = None;
    let mut mode = None;
    for (key, value) in options {
        if key == "parent" {
            parent = Some(value.clone());
        } else if *key == mode_key {
            mode = Some(value.clone());
        } else {
            return Err(ApiError::bad_request(format!(
                "unknown option {key:?} for a {driver} network: use parent and {mode_key}"
            )));
        }
    }
    let name = parent.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "a {driver} network needs -o parent=INTERFACE (or INTERFACE.VLAN)"
        ))
    })?;
    let mode = mode.unwrap_or_else(|| if driver == "macvlan" { "bridge" } else { "l2" }.into());
    sublink_kind(driver, &mode)?;
    Ok(ParentRecord {
        name,
        created_vlan: false,
        mode,
    })
}

/// The interface kind the containers of a `driver` network in `mode` get.
pub fn sublink_kind(driver: &str, mode: &str) -> Result<SubLink, ApiError> {
    Ok(match (driver, mode) {
        ("macvlan", "bridge") => SubLink::MacVlan(MacVlanMode::Bridge),
        ("macvlan", "private") => SubLink::MacVlan(MacVlanMode::Private),
        ("macvlan", "vepa") => SubLink::MacVlan(MacVlanMode::Vepa),
        ("macvlan", "passthru") => SubLink::MacVlan(MacVlanMode::Passthrough),
        ("ipvlan", "l2") => SubLink::IpVlan(IpVlanMode::L2),
        ("ipvlan", "l3") => SubLink::IpVlan(IpVlanMode::L3),
        ("ipvlan", "l3s") => SubLink::IpVlan(IpVlanMode::L3S),
        ("macvlan", _) => {
            return Err(ApiError::bad_request(format!(
                "invalid macvlan_mode {mode:?}: use bridge, private, vepa or passthru"
            )));
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "invalid ipvlan_mode {mode:?}: use l2, l3 or l3s"
            )));
        }
    })
}

/// `eth1.60` → (`eth1`, 60): a parent name that stands for a VLAN sub-interface.
fn vlan_of(name: &str) -> Option<(&str, u16)> {
    let (base, id) = name.rsplit_once('.')?;
    let id: u16 = id.parse().ok()?;
    (!base.is_empty() && (1..=4094).contains(&id)).then_some((base, id))
}

/// Checks that the parent exists and is up, or makes the VLAN sub-interface it names from
/// a base interface that does. Returns the record to keep (`created_vlan` set if made here).
pub fn ensure_parent(parent: &ParentRecord) -> Result<ParentRecord, ApiError> {
    let lookup = |name: &str| Netlink::run(None, |nl| nl.link_by_name(name)).map_err(internal);
    let down = |name: &str| {
        ApiError::bad_request(format!(
            "parent interface {name} is down: bring it up first"
        ))
    };
    if let Some(link) = lookup(&parent.name)? {
        return if link.up {
            Ok(parent.clone())
        } else {
            Err(down(&parent.name))
        };
    }
    let Some((base, id)) = vlan_of(&parent.name) else {
        return Err(ApiError::not_found(format!(
            "parent interface {} does not exist",
            parent.name
        )));
    };
    let base_link = lookup(base)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "parent interface {base} (for VLAN {id} as {}) does not exist",
            parent.name
        ))
    })?;
    if !base_link.up {
        return Err(down(base));
    }
    Netlink::run(None, |nl| {
        nl.create_sublink(&parent.name, base_link.index, SubLink::Vlan(id))?;
        let vlan = nl.link(&parent.name)?;
        nl.set_up(vlan.index).inspect_err(|_| {
            let _ = nl.delete_link(vlan.index);
        })
    })
    .map_err(|e| match e {
        e if e.is_unsupported() => ApiError::bad_request(format!(
            "{} does not exist and this kernel cannot make VLAN sub-interfaces (CONFIG_VLAN_8021Q)",
            parent.name
        )),
        e => internal(e),
    })?;
    tracing::info!(
        parent = parent.name,
        vlan = id,
        "VLAN sub-interface created"
    );
    Ok(ParentRecord {
        created_vlan: true,
        ..parent.clone()
    })
}

/// Checks that the kernel has the driver, by making one interface of the kind on the parent
/// and deleting it: a kernel built without ipvlan (or macvlan) is found when the network is
/// created, not when its first container starts.
pub fn check_kernel_support(driver: &str, parent: &ParentRecord) -> Result<(), ApiError> {
    let kind = sublink_kind(driver, &parent.mode)?;
    let probe = format!("nbp{}", &random_id()[..8]);
    Netlink::run(None, |nl| {
        nl.create_sublink(&probe, nl.link(&parent.name)?.index, kind)?;
        nl.delete_link(nl.link(&probe)?.index)
    })
    .map_err(|e| match e {
        e if e.is_unsupported() => {
            ApiError::bad_request(format!(
                "this kernel has no {driver} support (CONFIG_{}): {driver} networks cannot be made here",
                driver.to_uppercase()
            ))
        }
        e => internal(e),
    })
}

/// Deletes the VLAN sub-interface if the network made it.
pub fn remove_parent(parent: &ParentRecord) {
    if !parent.created_vlan {
        return;
    }
    let result = Netlink::run(None, |nl| match nl.link_by_name(&parent.name)? {
        Some(link) => nl.delete_link(link.index),
        None => Ok(()),
    });
    if let Err(error) = result {
        tracing::warn!(%error, parent = parent.name, "could not delete VLAN sub-interface");
    }
}

/// Creates the container's interface on the parent, moves it into `ns` and configures it
/// as a bridge endpoint would be (address, up, default route). Returns its MAC address
/// (an ipvlan interface has the parent's). On failure nothing is left behind.
pub fn wire(
    ns: &File,
    network: &NetworkRecord,
    parent: &ParentRecord,
    endpoint: &EndpointRecord,
) -> Result<[u8; 6], NetlinkError> {
    let kind = sublink_kind(&network.driver, &parent.mode).expect("validated at creation");
    // Unique per endpoint, so that concurrent set-ups never collide in the host namespace.
    let temp = format!("nbd{}", &endpoint.id[..8]);
    Netlink::run(None, |nl| {
        nl.create_sublink(&temp, nl.link(&parent.name)?.index, kind)?;
        let link = nl.link(&temp)?;
        nl.move_to_netns(link.index, ns).inspect_err(|_| {
            let _ = nl.delete_link(link.index);
        })
    })?;
    let configured = Netlink::run(Some(ns), |nl| {
        let link = nl.link(&temp)?;
        match kind {
            SubLink::MacVlan(_) => {
                nl.rename_with_mac(link.index, &endpoint.ifname, endpoint.mac)?
            }
            _ => nl.rename(link.index, &endpoint.ifname)?,
        }
        let route = match kind {
            SubLink::IpVlan(IpVlanMode::L3 | IpVlanMode::L3S) => DefaultRoute::OutOfInterface,
            _ => DefaultRoute::ViaGateway,
        };
        endpoint::configure(nl, link.index, network, endpoint, route)?;
        Ok(nl.link(&endpoint.ifname)?.mac.unwrap_or(endpoint.mac))
    });
    if configured.is_err() {
        for name in [temp.as_str(), endpoint.ifname.as_str()] {
            unwire(ns, name);
        }
    }
    configured
}

/// Deletes a container's interface `ifname` inside `ns` (when it leaves the network while
/// the namespace lives on).
pub fn unwire(ns: &File, ifname: &str) {
    let result = Netlink::run(Some(ns), |nl| match nl.link_by_name(ifname)? {
        Some(link) => nl.delete_link(link.index),
        None => Ok(()),
    });
    if let Err(error) = result {
        tracing::warn!(%error, ifname, "could not delete container interface");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_name_a_parent_and_a_mode() {
        let p = parse_options("macvlan", &options(&[("parent", "eth1")])).unwrap();
        assert_eq!((p.name.as_str(), p.mode.as_str()), ("eth1", "bridge"));
        let p = parse_options(
            "ipvlan",
            &options(&[("parent", "eth1.60"), ("ipvlan_mode", "l3")]),
        )
        .unwrap();
        assert_eq!((p.name.as_str(), p.mode.as_str()), ("eth1.60", "l3"));
        for bad in [
            options(&[]),
            options(&[("parent", "eth1"), ("macvlan_mode", "l3")]),
            options(&[("parent", "eth1"), ("mtu", "1400")]),
        ] {
            assert!(parse_options("macvlan", &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vlan_parents_are_base_dot_id() {
        assert_eq!(vlan_of("eth1.60"), Some(("eth1", 60)));
        assert_eq!(vlan_of("eth1"), None);
        assert_eq!(vlan_of("eth1.0"), None);
        assert_eq!(vlan_of("eth1.4095"), None);
        assert_eq!(vlan_of(".60"), None);
    }
}
