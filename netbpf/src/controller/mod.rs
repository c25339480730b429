//! The controller: every change to networks and containers goes through here, in order,
//! under one lock ([`Shared`]). It orchestrates and owns no mechanism: each operation
//! validates across concepts (making no kernel object), calls the services in order while
//! recording each completed step in one [`Undo`] list, and commits — the state saved, the
//! names brought in line — or, on any failure, restores the state and undoes the steps in
//! reverse, so a refused request leaves nothing behind.
//!
//! - [`networks`]: create, remove, prune (bridge, overlay, macvlan/ipvlan);
//! - [`endpoints`]: the endpoint operation every front-end uses, `network connect/disconnect`;
//! - [`containers`]: run, start, stop, remove, attach, exits;
//! - [`cluster`]: carrying out the overlay plan for a new view of the cluster store;
//! - [`restore`]: taking a host over after a restart, and the clean shutdown;
//! - [`error`], [`undo`], [`specs`]: the error, the undo list, the parsed requests.
//!
//! The services it calls own their state: [`Ports`], [`Names`], [`Uplink`], [`Overlay`] and
//! [`Exits`] (which has a lock of its own, so waiting never holds this one).

pub mod cluster;
pub mod cni;
pub mod containers;
pub mod docker;
pub mod docker_ipam;
pub mod endpoints;
pub mod error;
pub mod networks;
pub mod restore;
pub mod specs;
pub mod undo;

use std::{
    fs::File,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use ipnet::Ipv4Net;
use netbpf_common::EndpointCounters;

pub use error::{Error, Result};
pub use undo::{Step, Undo};

pub use crate::uplink::XdpChoice;
use crate::{
    container,
    datapath::{Datapath, DatapathIds},
    endpoint,
    exits::Exits,
    lock, macvlan,
    names::Names,
    netns,
    network::{self, DEFAULT_NETWORK},
    overlay::Overlay,
    publish::Ports,
    state::{ContainerRecord, EndpointRecord, NetworkMode, NetworkRecord, State, Store},
    uplink::{NatMode, Uplink},
};

/// What the daemon was started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub uplink: Option<String>,
    pub default_subnet: Ipv4Net,
    /// The cgroup (v2) whose processes are "the host" for published ports.
    pub cgroup: PathBuf,
    pub xdp: XdpChoice,
    /// Each container's namespace is also `/run/netns/<prefix><name>`, with its
    /// resolv.conf and hosts in `/etc/netns/<prefix><name>/`, so `ip netns exec` works.
    /// `None`: not exposed.
    pub netns_prefix: Option<String>,
    /// The host's resolver configuration (`--resolv-conf`, /etc/resolv.conf).
    pub resolv_conf: PathBuf,
}

impl Config {
    pub fn netns_dir(&self) -> PathBuf {
        self.state_dir.join("netns")
    }
    /// A container's directory: its log and name files.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("containers").join(id)
    }
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("log")
    }
}

pub struct Controller {
    config: Config,
    store: Store,
    state: State,
    datapath: Datapath,
    ports: Ports,
    names: Names,
    uplink: Uplink,
    overlay: Overlay,
    exits: Arc<Exits>,
    /// What the last takeover could not reconcile and left as it was (`netbpf info`).
    unreconciled: Vec<String>,
    /// Processes the running operation started, each waiting at its gate until the
    /// operation is saved (opened then; dropped, and so ended, if it is undone).
    gates: Vec<crate::container::StartGate>,
}

/// The controller behind its one lock. Every caller takes it the same way, so there is one
/// lock and one order.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Controller>>);

impl Shared {
    pub fn new(controller: Controller) -> Self {
        Self(Arc::new(Mutex::new(controller)))
    }

    pub fn lock(&self) -> MutexGuard<'_, Controller> {
        lock::lock(&self.0)
    }

    /// Runs `op` with the controller locked on tokio's blocking pool: controller calls
    /// block (netlink, fork, map syscalls). Errs only if `op` panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Controller) -> T + Send + 'static,
    ) -> std::result::Result<T, tokio::task::JoinError> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || op(&mut shared.lock())).await
    }
}

impl Controller {
    /// Loads state and programs, reconciles them with the kernel, and makes sure the default
    /// network exists.
    pub fn start(config: Config, exits: Arc<Exits>) -> anyhow::Result<Self> {
        let store = Store::new(&config.state_dir);
        let state = store.load()?;
        let mut datapath = Datapath::load(&config.bpffs)?;
        let uplink = Uplink::start(
            &mut datapath,
            config.uplink.as_deref(),
            config.xdp,
            &config.cgroup,
        )?;
        let names = Names::new(
            tokio::runtime::Handle::current(),
            &config.state_dir,
            config.netns_prefix.clone(),
            std::fs::read_to_string(&config.resolv_conf).unwrap_or_default(),
        );
        let mut ctl = Self {
            config,
            store,
            state,
            datapath,
            ports: Ports::default(),
            names,
            uplink,
            overlay: Overlay::default(),
            exits,
            unreconciled: vec![],
            gates: vec![],
        };
        ctl.reconcile()?;
        ctl.sync_container_xdp();
        if !ctl.state.networks.contains_key(DEFAULT_NETWORK) {
            ctl.create_default_network()
                .map_err(|e| anyhow::anyhow!("default network: {e}"))?;
        }
        Ok(ctl)
    }

    /// Runs one operation: `op` records each completed step in the undo list; on success
    /// the state is saved and the names follow it, on failure the state is restored and
    /// the steps are undone in reverse. Every change goes through here.
    fn transaction<T>(&mut self, op: impl FnOnce(&mut Self, &mut Undo) -> Result<T>) -> Result<T> {
        let before = self.state.clone();
        let mut undo = Undo::default();
        let result = op(self, &mut undo).and_then(|value| {
            self.store.save(&self.state)?;
            Ok(value)
        });
        if result.is_ok() {
            undo.commit();
            for gate in self.gates.drain(..) {
                gate.open();
            }
        } else {
            self.gates.clear();
            self.state = before;
            self.roll_back(undo);
        }
        self.sync_names();
        result
    }

    /// Undoes the steps of a failed operation, last first; never stops half-way.
    fn roll_back(&mut self, undo: Undo) {
        for step in undo.into_reverse() {
            tracing::debug!(%step, "undoing");
            match step {
                Step::Bridge(network) => network::delete_bridge(&network),
                Step::Subnet(subnet) => self.datapath.remove_subnet(subnet),
                Step::Parent(parent) => macvlan::remove_parent(&parent),
                Step::Netns(path) => netns::remove_persistent(&path),
                Step::Endpoint {
                    network_index,
                    endpoint,
                } => self.remove_endpoint(Some(network_index), &endpoint),
                Step::DirectEndpoint { ns, ifname } => macvlan::unwire(&ns, &ifname),
                Step::Ports(ports) => self.ports.unpublish(&mut self.datapath, &ports),
                Step::Dns(id) => self.names.stop_dns(&id),
                Step::Exposed(name) => self.names.unexpose(&name),
                Step::Process { id, pid } => {
                    container::signal_group(pid, libc::SIGKILL);
                    self.exits.forget(&id);
                }
                Step::Dir(path) => {
                    let _ = std::fs::remove_dir_all(path);
                }
            }
        }
    }

    /// The embedded DNS table from the state (and the names other hosts publish), and this
    /// host's names in the cluster store.
    fn sync_names(&self) {
        self.names.sync(&self.state, self.overlay.remote_names());
        self.overlay.publish_names(&self.state);
    }

    /// Takes a container's endpoint down, whatever its kind: a veth endpoint leaves the
    /// maps and its veth is deleted; a macvlan or ipvlan interface goes with its namespace.
    fn release_endpoint(&mut self, ep: &EndpointRecord) {
        if ep.has_veth() {
            let index = self.state.networks.get(&ep.network).map(|n| n.index);
            self.remove_endpoint(index, ep);
        }
    }

    /// Takes a veth endpoint out of the maps (its `ENDPOINTS` entry only if its network is
    /// known), deletes its veth and forgets its tracked flows; never fails half-way.
    fn remove_endpoint(&mut self, network_index: Option<u32>, ep: &EndpointRecord) {
        if let Some(index) = network_index {
            self.datapath.remove_endpoint(index, ep.ip);
        }
        self.datapath.remove_iface(ep.host_ifindex);
        self.datapath.detach(&ep.host_veth);
        endpoint::unwire(&ep.host_veth);
        // The address goes back to the pool: its next holder must not inherit its flows.
        self.datapath.forget_flows_of(ep.ip);
    }

    /// With the XDP stage on, every running endpoint gets the receiving XDP program.
    fn sync_container_xdp(&mut self) {
        let running: Vec<(File, Vec<&EndpointRecord>)> = self
            .state
            .containers
            .values()
            .filter(|c| c.is_running())
            .filter_map(|c| {
                let ns = self.open_netns(c).ok()?;
                Some((ns, c.endpoints.iter().filter(|ep| ep.has_veth()).collect()))
            })
            .collect();
        self.uplink.sync_endpoints(&mut self.datapath, running);
    }

    // ---- lookups -------------------------------------------------------------------------

    fn network(&self, key: &str) -> Result<&NetworkRecord> {
        self.state
            .network(key)
            .ok_or_else(|| Error::not_found(format!("network {key} not found")))
    }

    fn container(&self, key: &str) -> Result<&ContainerRecord> {
        self.state
            .container(key)
            .ok_or_else(|| Error::not_found(format!("no such container: {key}")))
    }

    /// The network namespace of a running container, opened.
    fn open_netns(&self, c: &ContainerRecord) -> Result<File> {
        let path = self.netns_path_of(c).ok_or_else(|| {
            Error::conflict(format!(
                "container {} has no network namespace of its own",
                c.name
            ))
        })?;
        Ok(netns::open(&path)?)
    }

    /// Where the container's network namespace can be opened: its process's, if alive,
    /// otherwise the recorded path. `None` means the daemon's own namespace (host mode).
    pub fn netns_path_of(&self, c: &ContainerRecord) -> Option<PathBuf> {
        if c.mode != NetworkMode::Host
            && let Some(pid) = container::live_pid(c)
        {
            return Some(PathBuf::from(format!("/proc/{pid}/ns/net")));
        }
        c.netns.clone()
    }

    // ---- what the views read -------------------------------------------------------------

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// An endpoint's counters, summed over CPUs.
    pub fn counters(&self, host_ifindex: u32) -> EndpointCounters {
        self.datapath.counters(host_ifindex)
    }

    /// Drops by hook and reason (the non-zero ones).
    pub fn drops(&self) -> Vec<(netbpf_common::Hook, netbpf_common::DropReason, u64)> {
        self.datapath.drops()
    }

    pub fn nat_mode(&self) -> Option<NatMode> {
        self.uplink.mode()
    }

    pub fn tracked_flows(&self) -> crate::datapath::TrackedFlows {
        self.uplink.tracked_flows()
    }

    pub fn xdp_redirects(&self) -> u64 {
        self.datapath.xdp_redirects()
    }

    pub fn datapath_ids(&self) -> DatapathIds {
        self.datapath.ids()
    }

    pub fn unreconciled(&self) -> &[String] {
        &self.unreconciled
    }

    /// The host's resolv.conf as it reads now (the daemon watches the file).
    pub fn set_host_resolv_conf(&mut self, text: String) {
        if self.names.set_host_resolv_conf(text) {
            self.sync_names();
        }
    }

    /// The host's addresses changed: the uplink follows them.
    pub fn follow_addresses(&mut self) {
        if let Err(error) = self.uplink.follow_addresses(&mut self.datapath) {
            tracing::warn!(%error, "following an address change");
        }
    }

    /// What the daemon's last flow-expiry sweep left, for `info` and `stats`.
    pub fn set_tracked_flows(&mut self, flows: crate::datapath::TrackedFlows) {
        self.uplink.set_tracked_flows(flows);
    }
}
