//! Networks: create (bridge, overlay, macvlan/ipvlan), remove, prune. Each kind validates
//! everything before it makes anything; a bridge network's bridge and subnet entry, and a
//! direct network's VLAN, are steps of the operation's undo list.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::{
    Controller, Error, Result, Step, Undo,
    specs::{DriverSpec, NetworkSpec},
};
use crate::{
    ipam::{self, Pool},
    macvlan,
    network::{self, DEFAULT_BRIDGE, DEFAULT_NETWORK},
    overlay::{self, OverlaySpec},
    state::{NetworkKind, NetworkRecord, OverlayRecord, ParentRecord, now_rfc3339, random_id},
};

/// A bridge network to make: a user's, the default one, or this host's block of an overlay.
pub(super) struct BridgeNetwork<'a> {
    pub name: &'a str,
    pub id: String,
    /// `None`: `br-` and the first 12 hex digits of the id, as Docker names them.
    pub bridge: Option<&'a str>,
    pub pool: Pool,
    pub internal: bool,
    pub overlay: Option<OverlayRecord>,
}

fn pool(subnet: Ipv4Net, gateway: Option<Ipv4Addr>, range: Option<Ipv4Net>) -> Result<Pool> {
    Pool::new(subnet, gateway, range).map_err(|e| Error::invalid(e.to_string()))
}

impl Controller {
    /// `network create`; returns the new network's name.
    pub fn network_create(&mut self, spec: NetworkSpec) -> Result<Created> {
        network::validate_name("network", &spec.name)?;
        if network::RESERVED_NAMES.contains(&spec.name.as_str()) || spec.name == DEFAULT_NETWORK {
            return Err(Error::conflict(format!(
                "network name {} is reserved for a network mode",
                spec.name
            )));
        }
        if self.state.networks.contains_key(&spec.name)
            || self.overlay.view().networks.contains_key(&spec.name)
        {
            return Err(Error::conflict(format!(
                "network with name {} already exists",
                spec.name
            )));
        }
        if spec.subnet.is_none() && (spec.gateway.is_some() || spec.ip_range.is_some()) {
            return Err(Error::invalid("--gateway and --ip-range need --subnet"));
        }
        match &spec.driver {
            DriverSpec::Bridge => self.create_user_bridge(&spec)?,
            DriverSpec::Overlay { vni, port } => {
                return Ok(Created::Overlay(self.define_overlay(&spec, *vni, *port)?));
            }
            DriverSpec::Direct { driver, parent } => self.create_direct(&spec, driver, parent)?,
        }
        Ok(Created::Local(spec.name))
    }

    /// An overlay network the cluster store has defined: in the view at once.
    pub fn overlay_defined(&mut self, spec: OverlaySpec) {
        self.overlay.defined(spec);
    }

    fn create_user_bridge(&mut self, spec: &NetworkSpec) -> Result<()> {
        let subnet = match spec.subnet {
            Some(subnet) => subnet,
            None => self.free_subnet()?,
        };
        let network = BridgeNetwork {
            name: &spec.name,
            id: spec.id.clone().unwrap_or_else(random_id),
            bridge: None,
            pool: pool(subnet, spec.gateway, spec.ip_range)?,
            internal: spec.internal,
            overlay: None,
        };
        self.transaction(|ctl, undo| ctl.create_bridge_network(undo, network))
    }

    pub(super) fn create_default_network(&mut self) -> Result<()> {
        let network = BridgeNetwork {
            name: DEFAULT_NETWORK,
            id: random_id(),
            bridge: Some(DEFAULT_BRIDGE),
            pool: pool(self.config.default_subnet, None, None)?,
            internal: false,
            overlay: None,
        };
        self.transaction(|ctl, undo| ctl.create_bridge_network(undo, network))
    }

    /// A /24 of the user pool that no network and no host route uses.
    fn free_subnet(&self) -> Result<Ipv4Net> {
        let mut taken = network::host_subnets(&self.bridge_names())?;
        taken.extend(self.state.networks.values().map(|n| n.subnet));
        ipam::free_subnet(network::user_pool(), network::USER_PREFIX_LEN, &taken).ok_or_else(|| {
            Error::conflict(format!(
                "no free /{} left in the address pool {}: give --subnet",
                network::USER_PREFIX_LEN,
                network::user_pool()
            ))
        })
    }

    pub(super) fn bridge_names(&self) -> Vec<String> {
        self.state
            .networks
            .values()
            .map(|n| n.bridge.clone())
            .collect()
    }

    /// Validates, makes the bridge, programs the subnet, records the network.
    pub(super) fn create_bridge_network(
        &mut self,
        undo: &mut Undo,
        network: BridgeNetwork<'_>,
    ) -> Result<()> {
        self.check_no_overlap(network.pool.subnet)?;
        let host = network::host_subnets(&self.bridge_names())?;
        if let Some(route) = host
            .iter()
            .find(|r| ipam::overlaps(**r, network.pool.subnet))
        {
            return Err(Error::conflict(format!(
                "subnet {} overlaps {route}, which the host already routes: choose another subnet",
                network.pool.subnet
            )));
        }
        let bridge = match network.bridge {
            Some(bridge) => bridge.to_owned(),
            None => network::bridge_name(&network.id),
        };
        let driver = if network.overlay.is_some() {
            "overlay"
        } else {
            "bridge"
        };
        let record = self.new_record(network.name, network.id, driver, &network.pool, bridge);
        let record = NetworkRecord {
            internal: network.internal,
            overlay: network.overlay,
            ..record
        };
        network::ensure_bridge(&record)?;
        undo.push(Step::Bridge(record.clone()));
        network::route_for_containers(&record)?;
        self.datapath
            .set_subnet(record.subnet, network::subnet_info(&record))?;
        undo.push(Step::Subnet(record.subnet));
        if let Err(error) = self.uplink.refresh_host_addrs(&mut self.datapath) {
            tracing::warn!(%error, "refreshing the host addresses");
        }
        tracing::info!(network = record.name, subnet = %record.subnet, bridge = record.bridge, "network created");
        self.insert_network(record);
        Ok(())
    }

    /// A record for a new network, with the next map index (never reused).
    fn new_record(
        &self,
        name: &str,
        id: String,
        driver: &str,
        pool: &Pool,
        bridge: String,
    ) -> NetworkRecord {
        NetworkRecord {
            id,
            name: name.to_owned(),
            driver: driver.to_owned(),
            subnet: pool.subnet,
            gateway: pool.gateway,
            ip_range: pool.range,
            internal: false,
            index: self.state.next_network_index,
            bridge,
            created: now_rfc3339(),
            parent: None,
            overlay: None,
        }
    }

    fn insert_network(&mut self, record: NetworkRecord) {
        self.state.next_network_index = record.index + 1;
        self.state.networks.insert(record.name.clone(), record);
    }

    fn check_no_overlap(&self, subnet: Ipv4Net) -> Result<()> {
        match self
            .state
            .networks
            .values()
            .find(|n| ipam::overlaps(n.subnet, subnet))
        {
            Some(other) => Err(Error::conflict(format!(
                "subnet {subnet} overlaps network {} ({})",
                other.name, other.subnet
            ))),
            None => Ok(()),
        }
    }

    /// A macvlan or ipvlan network. Its subnet is the parent's LAN, which the host may well
    /// route itself, so unlike a bridge subnet it is only checked against other networks.
    /// Validation only looks: the driver is probed and a VLAN parent made after it passed.
    fn create_direct(
        &mut self,
        spec: &NetworkSpec,
        driver: &str,
        parent: &ParentRecord,
    ) -> Result<()> {
        let subnet = spec.subnet.ok_or_else(|| {
            Error::invalid(format!(
                "a {driver} network needs --subnet: the parent's LAN, where its containers get addresses"
            ))
        })?;
        let pool = pool(subnet, spec.gateway, spec.ip_range)?;
        self.check_no_overlap(pool.subnet)?;
        // As Docker: one network per parent (a second would share, and the first's removal
        // delete, a VLAN sub-interface netbpf made for it).
        if let Some(other) = self
            .state
            .networks
            .values()
            .find(|n| n.parent.as_ref().is_some_and(|p| p.name == parent.name))
        {
            return Err(Error::conflict(format!(
                "network {} is already using parent interface {}",
                other.name, parent.name
            )));
        }
        let plan = macvlan::check_parent(parent)?;
        macvlan::probe_kernel_support(driver, &parent.mode, plan.existing(parent))?;
        self.transaction(|ctl, undo| {
            let parent = macvlan::make_parent(parent, &plan)?;
            undo.push(Step::Parent(parent.clone()));
            let record = NetworkRecord {
                internal: spec.internal,
                parent: Some(parent.clone()),
                ..ctl.new_record(&spec.name, random_id(), driver, &pool, String::new())
            };
            tracing::info!(network = record.name, driver, subnet = %record.subnet, parent = parent.name, "network created");
            ctl.insert_network(record);
            Ok(())
        })
    }

    /// Overlay networks across hosts: defined in the cluster store, where every daemon sees
    /// them and leases a block of the subnet for its own containers. Checked here; the
    /// store is written off the controller lock ([`Created::Overlay`]).
    fn define_overlay(
        &mut self,
        spec: &NetworkSpec,
        vni: Option<u32>,
        port: u16,
    ) -> Result<PendingOverlay> {
        let cluster = self.overlay.cluster().cloned().ok_or_else(|| {
            Error::invalid(
                "overlay networks need a cluster store: start the daemon with --cluster-store etcd://HOST:PORT",
            )
        })?;
        if spec.gateway.is_some() || spec.ip_range.is_some() {
            return Err(Error::invalid(
                "--gateway and --ip-range do not apply to overlay networks: each host's block has its own gateway",
            ));
        }
        let subnet = spec.subnet.ok_or_else(|| {
            Error::invalid(format!(
                "an overlay network needs --subnet: every host leases a /{} of it",
                overlay::BLOCK_PREFIX_LEN
            ))
        })?;
        if subnet.prefix_len() > overlay::BLOCK_PREFIX_LEN {
            return Err(Error::invalid(format!(
                "subnet {subnet} is smaller than one host's block (/{})",
                overlay::BLOCK_PREFIX_LEN
            )));
        }
        pool(subnet, None, None)?;
        self.check_no_overlap(subnet)?;
        let view = self.overlay.view();
        if let Some(other) = view
            .networks
            .values()
            .find(|n| ipam::overlaps(n.subnet, subnet))
        {
            return Err(Error::conflict(format!(
                "subnet {subnet} overlaps overlay network {} ({})",
                other.name, other.subnet
            )));
        }
        let used: BTreeSet<u32> = view.networks.values().map(|n| n.vni).collect();
        let vni = match vni {
            Some(vni) if used.contains(&vni) => {
                return Err(Error::conflict(format!(
                    "vni {vni} is already used by another overlay network"
                )));
            }
            Some(vni) => vni,
            // Docker's overlay driver starts its VXLAN ids at 4096 too.
            None => (4096..).find(|v| !used.contains(v)).expect("unbounded"),
        };
        let spec = OverlaySpec {
            id: random_id(),
            name: spec.name.clone(),
            subnet,
            vni,
            port,
            created: now_rfc3339(),
        };
        Ok(PendingOverlay { cluster, spec })
    }

    /// `network rm`: an overlay network leaves the cluster store (and this host: checked
    /// here, done off the lock, [`Removal::Overlay`]); any other network only this host.
    pub fn network_remove(&mut self, name: &str) -> Result<Removal> {
        if self.overlay.view().networks.contains_key(name) {
            let cluster = self.overlay.cluster().cloned().ok_or_else(|| {
                Error::invalid("overlay networks are removed through the cluster store")
            })?;
            if self.state.networks.contains_key(name) {
                self.check_unused(name)?;
            }
            // Removing it would cut other hosts' containers off each other.
            let elsewhere: BTreeSet<String> = self
                .overlay
                .remote_names()
                .filter(|n| n.network == name)
                .map(|n| n.vtep.to_string())
                .collect();
            if !elsewhere.is_empty() {
                return Err(Error::conflict(format!(
                    "overlay network {name} has containers on other hosts ({}): remove them first",
                    elsewhere.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
            return Ok(Removal::Overlay {
                cluster,
                name: name.to_owned(),
            });
        }
        self.remove_local_network(name)?;
        Ok(Removal::Done)
    }

    /// An overlay network the cluster store has removed: gone from the view, and its
    /// local part from this host.
    pub fn overlay_removed(&mut self, name: &str) -> Result<()> {
        self.overlay.undefined(name);
        if self.state.networks.contains_key(name) {
            self.remove_local_network(name)?;
        }
        Ok(())
    }

    fn check_unused(&self, name: &str) -> Result<()> {
        let users = self.state.users_of(name);
        if users.is_empty() {
            return Ok(());
        }
        Err(Error::conflict(format!(
            "network {name} has containers attached: {} (disconnect or remove them first)",
            users.join(", ")
        )))
    }

    /// Forgets the network, then removes what it had in the kernel (after the state no
    /// longer names it, a crash leaves at most a bridge the next start removes).
    pub(super) fn remove_local_network(&mut self, name: &str) -> Result<()> {
        let record = self.network(name)?.clone();
        if record.name == DEFAULT_NETWORK {
            return Err(Error::conflict(
                "bridge is the default network and cannot be removed",
            ));
        }
        self.check_unused(&record.name)?;
        self.transaction(|ctl, _| {
            ctl.state.networks.remove(&record.name);
            Ok(())
        })?;
        fail::fail_point!("network-forgotten-before-bridge-deleted", |_| {
            std::process::abort()
        });
        match record.kind() {
            NetworkKind::Direct(parent) => macvlan::remove_parent(parent),
            NetworkKind::Bridge | NetworkKind::OverlayBlock(_) => {
                self.datapath.remove_subnet(record.subnet);
                network::delete_bridge(&record);
            }
        }
        tracing::info!(network = record.name, "network removed");
        Ok(())
    }

    /// Removes every user-defined network no container uses; returns their names. Overlay
    /// networks are left alone: they are the cluster's, and other hosts may use them.
    pub fn network_prune(&mut self) -> Result<Vec<String>> {
        let unused: Vec<String> = self
            .state
            .networks
            .values()
            .filter(|n| n.name != DEFAULT_NETWORK && n.overlay.is_none())
            .filter(|n| self.state.users_of(&n.name).is_empty())
            .map(|n| n.name.clone())
            .collect();
        for name in &unused {
            self.remove_local_network(name)?;
        }
        Ok(unused)
    }
}

/// What `network create` did, or leaves to do off the lock.
#[must_use = "an overlay network is only defined once the store is written"]
pub enum Created {
    Local(String),
    Overlay(PendingOverlay),
}

/// An overlay network checked and ready to be written to the cluster store.
pub struct PendingOverlay {
    pub cluster: crate::overlay::store::Cluster,
    pub spec: OverlaySpec,
}

/// What `network rm` did, or leaves to do off the lock.
#[must_use = "an overlay network is only removed once the store is written"]
pub enum Removal {
    Done,
    Overlay {
        cluster: crate::overlay::store::Cluster,
        name: String,
    },
}
