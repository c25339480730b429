//! macvlan and ipvlan networks: containers sit directly on a parent interface of the host,
//! or on a VLAN sub-interface of it made with the network, with addresses from the parent's
//! LAN. No bridge, no veth and none of the BPF fast path: the kernel's macvlan and ipvlan
//! drivers carry the packets, and keep macvlan networks apart as they do for Docker.

use std::{collections::BTreeMap, fs::File};

use rtnetlink::packet_route::link::{IpVlanMode, MacVlanMode};

use crate::{
    endpoint::{self, DefaultRoute},
    netlink::{self, Netlink, NetlinkError, SubLink},
    state::{EndpointRecord, NetworkRecord, ParentRecord, random_id},
};

pub const DRIVERS: [&str; 2] = ["macvlan", "ipvlan"];

#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("unknown option {key:?} for a {driver} network: use parent and {driver}_mode")]
    UnknownOption { driver: String, key: String },
    #[error("a {0} network needs -o parent=INTERFACE (or INTERFACE.VLAN)")]
    NoParent(String),
    #[error("invalid macvlan_mode {0:?}: use bridge, private, vepa or passthru")]
    MacvlanMode(String),
    #[error("invalid ipvlan_mode {0:?}: use l2, l3 or l3s")]
    IpvlanMode(String),
    #[error("parent interface {0} is down: bring it up first")]
    ParentDown(String),
    #[error("parent interface {0} does not exist")]
    NoSuchParent(String),
    #[error("parent interface {base} (for VLAN {id} as {name}) does not exist")]
    NoSuchBase { base: String, id: u16, name: String },
    #[error(
        "{0} does not exist and this kernel cannot make VLAN sub-interfaces (CONFIG_VLAN_8021Q)"
    )]
    NoVlanSupport(String),
    #[error(
        "this kernel has no {driver} support (CONFIG_{}): {driver} networks cannot be made here",
        driver.to_uppercase()
    )]
    NoDriverSupport { driver: String },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl DirectError {
    /// Whether the error names an interface that does not exist (HTTP 404, not 400).
    pub fn is_missing_interface(&self) -> bool {
        matches!(
            self,
            DirectError::NoSuchParent(_) | DirectError::NoSuchBase { .. }
        )
    }
}

/// The parent and mode that a network's `-o` options ask for.
pub fn parse_options(
    driver: &str,
    options: &BTreeMap<String, String>,
) -> Result<ParentRecord, DirectError> {
    let mode_key = format!("{driver}_mode");
    let mut parent = None;
    let mut mode = None;
    for (key, value) in options {
        if key == "parent" {
            parent = Some(value.clone());
        } else if *key == mode_key {
            mode = Some(value.clone());
        } else {
            return Err(DirectError::UnknownOption {
                driver: driver.to_owned(),
                key: key.clone(),
            });
        }
    }
    let name = parent
        .filter(|p| !p.is_empty())
        .ok_or_else(|| DirectError::NoParent(driver.to_owned()))?;
    let mode = mode.unwrap_or_else(|| if driver == "macvlan" { "bridge" } else { "l2" }.into());
    sublink_kind(driver, &mode)?;
    Ok(ParentRecord {
        name,
        created_vlan: false,
        mode,
    })
}

/// The interface kind the containers of a `driver` network in `mode` get.
pub fn sublink_kind(driver: &str, mode: &str) -> Result<SubLink, DirectError> {
    Ok(match (driver, mode) {
        ("macvlan", "bridge") => SubLink::MacVlan(MacVlanMode::Bridge),
        ("macvlan", "private") => SubLink::MacVlan(MacVlanMode::Private),
        ("macvlan", "vepa") => SubLink::MacVlan(MacVlanMode::Vepa),
        ("macvlan", "passthru") => SubLink::MacVlan(MacVlanMode::Passthrough),
        ("ipvlan", "l2") => SubLink::IpVlan(IpVlanMode::L2),
        ("ipvlan", "l3") => SubLink::IpVlan(IpVlanMode::L3),
        ("ipvlan", "l3s") => SubLink::IpVlan(IpVlanMode::L3S),
        ("macvlan", _) => return Err(DirectError::MacvlanMode(mode.to_owned())),
        _ => return Err(DirectError::IpvlanMode(mode.to_owned())),
    })
}

/// `eth1.60` → (`eth1`, 60): a parent name that stands for a VLAN sub-interface.
fn vlan_of(name: &str) -> Option<(&str, u16)> {
    let (base, id) = name.rsplit_once('.')?;
    let id: u16 = id.parse().ok()?;
    (!base.is_empty() && (1..=4094).contains(&id)).then_some((base, id))
}

/// How a network's parent is found: there already, or to be made as a VLAN of a base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentPlan {
    Exists,
    /// The VLAN sub-interface `parent.name` is made on `base` (which exists and is up).
    MakeVlan {
        base: String,
        id: u16,
    },
}

impl ParentPlan {
    /// The interface that exists now, to probe the driver on.
    pub fn existing<'a>(&'a self, parent: &'a ParentRecord) -> &'a str {
        match self {
            ParentPlan::Exists => &parent.name,
            ParentPlan::MakeVlan { base, .. } => base,
        }
    }
}

/// Checks, without changing anything, that the parent exists and is up, or that it names a
/// VLAN of a base interface that does.
pub fn check_parent(parent: &ParentRecord) -> Result<ParentPlan, DirectError> {
    let lookup = |name: &str| Netlink::run(None, |nl| nl.link_by_name(name));
    if let Some(link) = lookup(&parent.name)? {
        return if link.up {
            Ok(ParentPlan::Exists)
        } else {
            Err(DirectError::ParentDown(parent.name.clone()))
        };
    }
    let Some((base, id)) = vlan_of(&parent.name) else {
        return Err(DirectError::NoSuchParent(parent.name.clone()));
    };
    let base_link = lookup(base)?.ok_or_else(|| DirectError::NoSuchBase {
        base: base.to_owned(),
        id,
        name: parent.name.clone(),
    })?;
    if !base_link.up {
        return Err(DirectError::ParentDown(base.to_owned()));
    }
    Ok(ParentPlan::MakeVlan {
        base: base.to_owned(),
        id,
    })
}

/// Makes the VLAN sub-interface the plan asks for, up; returns the record to keep
/// (`created_vlan` set if it was made here, so it goes with the network).
pub fn make_parent(parent: &ParentRecord, plan: &ParentPlan) -> Result<ParentRecord, DirectError> {
    let ParentPlan::MakeVlan { base, id } = plan else {
        return Ok(parent.clone());
    };
    Netlink::run(None, |nl| {
        nl.create_sublink(&parent.name, nl.link(base)?.index, SubLink::Vlan(*id))?;
        let vlan = nl.link(&parent.name)?;
        nl.set_up(vlan.index).inspect_err(|_| {
            let _ = nl.delete_link(vlan.index);
        })
    })
    .map_err(|e| match e {
        e if e.is_unsupported() => DirectError::NoVlanSupport(parent.name.clone()),
        e => e.into(),
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

/// Checks that the parent exists and is up, or makes the VLAN sub-interface it names (after
/// a restart, the VLAN a network made may be gone with a reboot).
pub fn ensure_parent(parent: &ParentRecord) -> Result<ParentRecord, DirectError> {
    let plan = check_parent(parent)?;
    make_parent(parent, &plan)
}

/// Checks that the kernel has the driver, by making one interface of the kind on `on` and
/// deleting it at once: a kernel built without ipvlan (or macvlan) is found when the network
/// is created, not when its first container starts.
pub fn probe_kernel_support(driver: &str, mode: &str, on: &str) -> Result<(), DirectError> {
    let kind = sublink_kind(driver, mode)?;
    let probe = format!("nbp{}", &random_id()[..8]);
    Netlink::run(None, |nl| {
        nl.create_sublink(&probe, nl.link(on)?.index, kind)?;
        nl.delete_link(nl.link(&probe)?.index)
    })
    .map_err(|e| match e {
        e if e.is_unsupported() => DirectError::NoDriverSupport {
            driver: driver.to_owned(),
        },
        e => e.into(),
    })
}

/// Deletes the VLAN sub-interface if the network made it.
pub fn remove_parent(parent: &ParentRecord) {
    if parent.created_vlan {
        netlink::remove_link(None, &parent.name, "VLAN sub-interface");
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
    let temp = runtime_link_name(&endpoint.id);
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
        let route = if routes_via_gateway(network, parent) {
            DefaultRoute::ViaGateway
        } else {
            DefaultRoute::OutOfInterface
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

/// The host-namespace name of a runtime endpoint's interface before the runtime moves it
/// (and, after Docker's `Leave`, again: Docker moves it back under this name).
pub fn runtime_link_name(endpoint_id: &str) -> String {
    format!("nbd{}", &endpoint_id[..8])
}

/// The container's interface on the parent, left in the host namespace, down, for a
/// runtime that moves and configures it itself (Docker's `Join`); a macvlan one gets the
/// endpoint's MAC. Returns its name. On failure nothing is left behind.
pub fn sublink_for_runtime(
    network: &NetworkRecord,
    parent: &ParentRecord,
    endpoint: &EndpointRecord,
) -> Result<String, NetlinkError> {
    let kind = sublink_kind(&network.driver, &parent.mode).expect("validated at creation");
    let name = runtime_link_name(&endpoint.id);
    let made = Netlink::run(None, |nl| {
        nl.create_sublink(&name, nl.link(&parent.name)?.index, kind)?;
        if let SubLink::MacVlan(_) = kind {
            nl.rename_with_mac(nl.link(&name)?.index, &name, endpoint.mac)?;
        }
        Ok(())
    });
    match made {
        Ok(()) => Ok(name),
        Err(error) => {
            netlink::remove_link(None, &name, "container interface");
            Err(error)
        }
    }
}

/// Whether containers on a network of this driver and mode reach the outside through a
/// gateway (ipvlan L3 routes everything out of the interface instead).
pub fn routes_via_gateway(network: &NetworkRecord, parent: &ParentRecord) -> bool {
    !matches!(
        sublink_kind(&network.driver, &parent.mode),
        Ok(SubLink::IpVlan(IpVlanMode::L3 | IpVlanMode::L3S))
    )
}

/// Deletes a container's interface `ifname` inside `ns` (when it leaves the network while
/// the namespace lives on).
pub fn unwire(ns: &File, ifname: &str) {
    netlink::remove_link(Some(ns), ifname, "container interface");
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
