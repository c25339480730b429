//! Taking a host over after a restart (crash, `kill -9`, upgrade) and the clean shutdown.
//! After a restart the recorded state is the truth: bridges are restored, live containers
//! re-adopted (the new programs swapped into their pinned links), dead ones released, and
//! whatever no record explains is removed.

use std::collections::BTreeSet;

use super::{Controller, endpoints::uses_embedded_dns};
use crate::{
    container,
    datapath::{self, Desired},
    endpoint, macvlan,
    netlink::Netlink,
    netns, network,
    publish::Ports,
    state::{AttachedTo, ContainerRecord, NetworkKind},
};

impl Controller {
    /// Brings the kernel in line with the recorded state after a restart. A network or
    /// container that cannot be reconciled is reported (`netbpf info`) and left as it was
    /// — its pinned programs keep serving — rather than failing the whole takeover.
    pub(super) fn reconcile(&mut self) -> anyhow::Result<()> {
        let broken = self.restore_networks();
        let containers: Vec<ContainerRecord> = self.state.containers.values().cloned().collect();
        for c in containers.iter().filter(|c| c.is_running()) {
            if let Some(net) = c.endpoints.iter().find(|ep| broken.contains(&ep.network)) {
                self.report_unreconciled(
                    format!("container {}", c.name),
                    format!("left as it was: network {} is not restored", net.network),
                );
            } else if is_alive(c) {
                if let Err(error) = self.readopt(c) {
                    self.report_unreconciled(format!("container {}", c.name), format!("{error:#}"));
                }
            } else {
                tracing::info!(container = c.name, "exited while the daemon was down");
                self.release(c);
                let record = self.state.containers.get_mut(&c.name).expect("exists");
                record.mark_exited(None);
                if c.auto_remove {
                    self.state.containers.remove(&c.name);
                    self.remove_container_dir(&c.id);
                }
            }
        }
        self.remove_leftovers()?;
        self.datapath.sync(&self.desired())?;
        self.sync_published()?;
        self.store.save(&self.state)?;
        self.sync_names();
        Ok(())
    }

    /// Every network's bridge (or parent) as recorded; returns the networks that could not
    /// be restored.
    fn restore_networks(&mut self) -> BTreeSet<String> {
        let mut broken = BTreeSet::new();
        let mut problems = vec![];
        for net in self.state.networks.values_mut() {
            match net.kind() {
                NetworkKind::Bridge | NetworkKind::OverlayBlock(_) => {
                    let restored = network::ensure_bridge(net)
                        .map_err(anyhow::Error::from)
                        .and_then(|_| Ok(network::route_for_containers(net)?));
                    if let Err(error) = restored {
                        broken.insert(net.name.clone());
                        problems.push((format!("network {}", net.name), format!("{error:#}")));
                    }
                }
                NetworkKind::Direct(parent) => match macvlan::ensure_parent(parent) {
                    Ok(parent) => net.parent = Some(parent),
                    Err(error) => {
                        tracing::warn!(%error, network = net.name, "parent interface unusable")
                    }
                },
            }
        }
        for (what, why) in problems {
            self.report_unreconciled(what, why);
        }
        broken
    }

    fn report_unreconciled(&mut self, what: String, why: String) {
        tracing::error!(reason = why, "{what} not taken over: left as it was");
        self.unreconciled.push(format!("{what}: {why}"));
    }

    /// A container that kept running while the daemon was down: its endpoints installed
    /// again (dropping those whose veth vanished), its ports held, its exit watched, its
    /// embedded DNS served.
    fn readopt(&mut self, c: &ContainerRecord) -> anyhow::Result<()> {
        let mut kept = vec![];
        for ep in &c.endpoints {
            if !ep.has_veth() {
                kept.push(ep.clone());
                continue;
            }
            let link = Netlink::run(None, |nl| nl.link_by_name(&ep.host_veth))?;
            let net = self.state.networks.get(&ep.network).cloned();
            match (link, net) {
                (Some(link), Some(net)) if link.index == ep.host_ifindex => {
                    // One endpoint that fails stays as it was (its pinned link serving with
                    // the programs it had); the others are taken over.
                    if let Err(error) = self.install_endpoint(&net, ep) {
                        self.report_unreconciled(
                            format!("endpoint {} of container {}", ep.host_veth, c.name),
                            error.to_string(),
                        );
                    }
                    kept.push(ep.clone());
                }
                _ => {
                    tracing::warn!(
                        container = c.name,
                        veth = ep.host_veth,
                        "endpoint vanished; dropping it"
                    );
                    self.release_endpoint(ep);
                }
            }
        }
        if c.cni.is_none() {
            // (A CNI runtime holds its containers' host ports itself.)
            self.ports.restore(&c.published);
        }
        let record = self.state.containers.get_mut(&c.name).expect("exists");
        record.endpoints = kept;
        let live = record.clone();
        if let Some(pid) = c.pid {
            self.exits.watch_foreign(&c.id, pid);
        }
        // Docker serves names on its networks itself.
        if live.docker.is_none()
            && uses_embedded_dns(&live.mode, &live.endpoints)
            && let Ok(ns) = self.open_netns(&live)
            && let Err(error) = self.names.start_dns(&live.id, &ns, &mut self.datapath)
        {
            tracing::warn!(%error, container = live.name, "embedded DNS not restarted");
        }
        tracing::info!(container = c.name, "re-adopted");
        Ok(())
    }

    /// Deletes interfaces, link pins, namespace mounts and `ip netns` names that no record
    /// owns (what a crash between two steps of an operation leaves).
    fn remove_leftovers(&mut self) -> anyhow::Result<()> {
        let owned = Owned::of(&self.state);
        remove_leftover_links(&owned)?;
        for pin in self
            .datapath
            .pinned_links()
            .into_iter()
            .chain(self.datapath.pinned_xdp_links())
        {
            if !owned.veths.contains(&pin) {
                self.datapath.detach(&pin);
            }
        }
        let live: BTreeSet<String> = self
            .state
            .containers
            .values()
            .filter(|c| c.is_running() && c.owns_netns())
            .map(|c| c.id.clone())
            .collect();
        if let Ok(dir) = std::fs::read_dir(self.config.netns_dir()) {
            for entry in dir.flatten() {
                if !live.contains(&entry.file_name().to_string_lossy().into_owned()) {
                    netns::remove_persistent(&entry.path());
                }
            }
        }
        let running: BTreeSet<String> = self
            .state
            .containers
            .values()
            .filter(|c| c.is_running())
            .map(|c| c.name.clone())
            .collect();
        self.names.unexpose_all_but(&running);
        Ok(())
    }

    /// Makes `PUBLISHED` hold exactly the ports of running containers.
    fn sync_published(&mut self) -> anyhow::Result<()> {
        let mut wanted = vec![];
        for c in self.state.containers.values().filter(|c| c.is_running()) {
            if let Some(ep) = self.publishing_endpoint(&c.endpoints) {
                wanted.extend(c.published.iter().map(|port| (*port, ep.clone())));
            }
        }
        Ports::sync(&mut self.datapath, wanted.iter().map(|(p, ep)| (p, ep)))?;
        Ok(())
    }

    /// Every map entry the state calls for: subnets of bridge networks, and each veth
    /// endpoint's interface and address.
    fn desired(&self) -> Desired {
        let mut desired = Desired::default();
        for net in self
            .state
            .networks
            .values()
            .filter(|n| n.kind().has_bridge())
        {
            desired
                .subnets
                .insert(net.subnet, network::subnet_info(net));
        }
        for ep in self
            .state
            .containers
            .values()
            .flat_map(|c| &c.endpoints)
            .filter(|ep| ep.has_veth())
        {
            let Some(net) = self.state.networks.get(&ep.network) else {
                continue;
            };
            desired
                .ifaces
                .insert(ep.host_ifindex, network::endpoint_iface(net, ep));
            desired
                .endpoints
                .insert((net.index, ep.ip), endpoint::map_target(ep));
        }
        desired
    }

    /// Graceful shutdown, after the containers were stopped: remove every interface,
    /// namespace and pin the daemon made. Networks stay recorded; their bridges come back at
    /// the next start.
    pub fn teardown(&mut self) {
        let containers: Vec<ContainerRecord> = self.state.containers.values().cloned().collect();
        for c in containers {
            if c.is_running() {
                self.release(&c);
                let record = self.state.containers.get_mut(&c.name).expect("exists");
                record.mark_exited(record.exit_code);
            }
            if c.auto_remove {
                let _ = self.container_remove(&c.name);
            }
        }
        for net in self.state.networks.values() {
            match net.kind() {
                NetworkKind::Direct(parent) => macvlan::remove_parent(parent),
                NetworkKind::Bridge | NetworkKind::OverlayBlock(_) => network::delete_bridge(net),
            }
        }
        if let Err(error) = self.store.save(&self.state) {
            tracing::error!(%error, "saving state at shutdown");
        }
        datapath::remove_pins(&self.config.bpffs);
    }
}

/// The temporary names netbpf gives interfaces: `nbd` (a macvlan/ipvlan interface before
/// it moves), `nbp` (a kernel support probe) and 8 hex digits, `tmp` and 7 (a veth's
/// container end before it moves).
fn is_temporary_name(name: &str) -> bool {
    let hex =
        |rest: &str, len: usize| rest.len() == len && rest.bytes().all(|b| b.is_ascii_hexdigit());
    match name.split_at_checked(3) {
        Some(("nbd" | "nbp", rest)) => hex(rest, 8),
        Some(("tmp", rest)) => hex(rest, 7),
        _ => false,
    }
}

/// Whether a container recorded as running still is: its process (or, attached with
/// `--netns`, its namespace) is there.
fn is_alive(c: &ContainerRecord) -> bool {
    if c.docker.is_some() {
        // Docker owns the sandbox (its path lives in dockerd's mount namespace) and says
        // when an endpoint goes (`Leave`); its veth is checked when it is re-adopted.
        return !c.endpoints.is_empty();
    }
    match (&c.attached, c.pid) {
        (Some(AttachedTo::Netns), _) => c.netns.as_deref().is_some_and(netns::is_namespace),
        (_, Some(pid)) => container::is_same_process(pid, c.pid_start_time),
        (_, None) => false,
    }
}

/// The interfaces the state accounts for.
struct Owned {
    /// Host ends of recorded endpoints.
    veths: BTreeSet<String>,
    bridges: BTreeSet<String>,
    /// Temporary names an operation gives interfaces before they are moved or renamed:
    /// those of recorded endpoints (a runtime's, waiting for it) stay.
    temporary: BTreeSet<String>,
}

impl Owned {
    fn of(state: &crate::state::State) -> Self {
        let endpoints = || state.containers.values().flat_map(|c| &c.endpoints);
        Self {
            veths: endpoints().map(|ep| ep.host_veth.clone()).collect(),
            bridges: state.networks.values().map(|n| n.bridge.clone()).collect(),
            temporary: endpoints()
                .flat_map(|ep| {
                    [
                        endpoint::peer_temp_name(&ep.host_veth),
                        macvlan::runtime_link_name(&ep.id),
                    ]
                })
                .collect(),
        }
    }
}

/// Deletes veths on our bridges that no endpoint owns, and bridges, veths and temporary
/// links marked as netbpf's that no record explains.
fn remove_leftover_links(owned: &Owned) -> anyhow::Result<()> {
    Netlink::run(None, |nl| {
        let links = nl.links()?;
        let bridge_indexes: Vec<u32> = links
            .iter()
            .filter(|l| owned.bridges.contains(&l.name))
            .map(|l| l.index)
            .collect();
        for link in links {
            let on_ours = link.controller.is_some_and(|c| bridge_indexes.contains(&c));
            let marked = link.alias.as_deref() == Some(crate::netlink::OWNED_ALIAS);
            let orphan_bridge = link.is_bridge && marked && !owned.bridges.contains(&link.name);
            // A veth made for an endpoint that was never recorded (a crash in
            // `network connect`): its peer sits in a live container.
            let orphan_veth = link.is_veth && marked && !owned.veths.contains(&link.name);
            let orphan_temporary =
                is_temporary_name(&link.name) && !owned.temporary.contains(&link.name);
            if (on_ours && !owned.veths.contains(&link.name))
                || orphan_bridge
                || orphan_veth
                || orphan_temporary
            {
                tracing::info!(interface = link.name, "removing leftover interface");
                nl.delete_link(link.index)?;
            }
        }
        Ok(())
    })?;
    Ok(())
}
