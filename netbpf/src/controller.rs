//! The controller: every change to networks and containers goes through here, in order,
//! under one lock. Each operation validates everything first, then changes the kernel, and
//! on failure undoes what it did, so a refused request leaves nothing behind. State is saved
//! after every change.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs::File,
    net::Ipv4Addr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::Ipv4Net;
use netbpf_common::{
    DropReason, EndpointCounters, EndpointIface, EndpointTarget, IFACE_FLAG_INTERNAL, IpAddrKey,
    NatConfig, OverlayLocal, OverlayRoute, PublishedKey, PublishedTarget,
};
use tokio::sync::{mpsc, watch};

use crate::{
    api::{
        ApiError, AttachRequest, ConnectRequest, ContainerCreate, ContainerEndpointView,
        ContainerStateView, ContainerSummary, ContainerView, CountersView, DaemonInfo,
        DisconnectRequest, EndpointStats, NetworkCreate, NetworkView,
    },
    container,
    datapath::{self, Datapath, Desired},
    dns::{self, server::DnsServers, table::Table},
    endpoint,
    ipam::{self, Pool, format_mac},
    macvlan,
    netlink::Netlink,
    netns,
    network::{self, DEFAULT_BRIDGE, DEFAULT_NETWORK},
    overlay::{
        self, ClusterView, OverlaySpec,
        store::{Cluster, StoreError},
    },
    publish::{self, PortSpec, Proto, PublishedPort},
    state::{
        AttachedTo, ContainerRecord, EndpointRecord, NetworkMode, NetworkRecord, NetworkRequest,
        OverlayRecord, ParentRecord, State, Status, Store, now_rfc3339, random_id,
    },
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
}

/// Whether published ports from outside get the XDP stage on the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpChoice {
    /// Driver-mode XDP if the uplink supports it and is not a veth, else tcx only.
    Auto,
    /// Driver-mode XDP whenever the driver supports it (a veth uplink's peer must then
    /// send complete checksums).
    Native,
    /// tcx only.
    Off,
}

impl Config {
    pub fn netns_dir(&self) -> PathBuf {
        self.state_dir.join("netns")
    }
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("containers").join(id).join("log")
    }
}

/// A container's process ended. `code` is `None` when it was not our child (after a
/// restart, or attached) and so its status cannot be known.
#[derive(Debug)]
pub struct ExitEvent {
    pub id: String,
    pub pid: i32,
    pub code: Option<i32>,
}

/// What `wait` finds: an exit status now, or a channel that will carry it.
pub enum WaitFor {
    Exited(Option<i32>),
    Running(watch::Receiver<Option<Option<i32>>>),
}

/// How many exit statuses of auto-removed containers to remember for late `wait` calls.
const FINISHED_KEPT: usize = 256;

type Result<T, E = ApiError> = std::result::Result<T, E>;

pub struct Controller {
    config: Config,
    store: Store,
    state: State,
    datapath: Datapath,
    /// Where watcher threads report exits; the daemon feeds them back to `on_exit`.
    exits: mpsc::UnboundedSender<ExitEvent>,
    /// Per running container id: `None` until it exits, then `Some(exit code)`.
    exit_watches: BTreeMap<String, watch::Sender<Option<Option<i32>>>>,
    /// Exit codes of auto-removed containers, by id, for `wait` calls that come late.
    finished: VecDeque<(String, Option<i32>)>,
    /// Bound sockets holding published host ports against host processes.
    reservations: BTreeMap<(Ipv4Addr, u16, Proto), OwnedFd>,
    /// `tc` once the uplink programs are attached.
    nat_mode: Option<String>,
    /// The embedded DNS servers, one per container on a user-defined network.
    dns: DnsServers,
    /// The host's resolvers, from its /etc/resolv.conf at start.
    host_upstreams: Vec<std::net::SocketAddr>,
    tracked_flows: usize,
    /// The cluster store session, with `--cluster-store`.
    cluster: Option<Cluster>,
    /// Overlay networks and every host's blocks, as the cluster store last said.
    cluster_view: ClusterView,
    /// MTU of the VTEP's interface, once known.
    underlay_mtu: u32,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e)
}

fn parse<T: FromStr>(what: &str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid {what} {value:?}: {e}")))
}

fn parse_opt<T: FromStr>(what: &str, value: Option<&str>) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    value.map(|v| parse(what, v)).transpose()
}

impl Controller {
    /// Loads state and programs, reconciles them with the kernel, and makes sure the default
    /// network exists.
    pub fn start(config: Config, exits: mpsc::UnboundedSender<ExitEvent>) -> anyhow::Result<Self> {
        let store = Store::new(&config.state_dir);
        let state = store.load()?;
        let datapath = Datapath::load(&config.bpffs)?;
        let mut ctl = Self {
            config,
            store,
            state,
            datapath,
            exits,
            exit_watches: BTreeMap::new(),
            finished: VecDeque::new(),
            reservations: BTreeMap::new(),
            nat_mode: None,
            dns: DnsServers::new(tokio::runtime::Handle::current()),
            host_upstreams: dns::table::host_upstreams(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
            tracked_flows: 0,
            cluster: None,
            cluster_view: ClusterView::default(),
            underlay_mtu: 1500,
        };
        ctl.reconcile()?;
        ctl.start_nat()?;
        if !ctl.state.networks.contains_key(DEFAULT_NETWORK) {
            let subnet = ctl.config.default_subnet;
            ctl.create_network(
                DEFAULT_NETWORK,
                DEFAULT_BRIDGE.to_owned(),
                subnet,
                None,
                None,
                false,
            )
            .map_err(|e| anyhow::anyhow!("default network: {e}"))?;
        }
        Ok(ctl)
    }

    /// Attaches the uplink and socket programs and fills the NAT settings.
    fn start_nat(&mut self) -> anyhow::Result<()> {
        self.refresh_host_addrs()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.datapath.attach_cgroup(&self.config.cgroup)?;
        let cookie = netns::current_cookie().map_err(|e| anyhow::anyhow!("netns cookie: {e}"))?;
        let (port_min, port_max) = publish::ephemeral_range();
        let mut config = NatConfig {
            port_min,
            port_max,
            netns_cookie: cookie,
            ..NatConfig::default()
        };
        if let Some(uplink) = self.config.uplink.clone() {
            let (index, addr) = Netlink::run(None, |nl| {
                let link = nl.link(&uplink)?;
                Ok((link.index, nl.addresses_of(link.index)?.into_iter().next()))
            })?;
            config.uplink_ifindex = index;
            match addr {
                Some(addr) => config.uplink_addr = IpAddrKey::from_v4(addr.octets()),
                None => tracing::warn!(uplink, "uplink has no IPv4 address: no masquerade"),
            }
            self.datapath.attach_uplink(&uplink)?;
            let is_veth = Netlink::run(None, |nl| nl.link(&uplink))?.is_veth;
            let want_xdp = match self.config.xdp {
                XdpChoice::Auto => !is_veth,
                XdpChoice::Native => true,
                XdpChoice::Off => false,
            };
            let mut mode = "tc";
            if want_xdp {
                match self.datapath.attach_uplink_xdp(&uplink, index) {
                    Ok(()) => mode = "xdp",
                    Err(error) => {
                        tracing::warn!(%error, uplink, "native XDP not available; using tc only")
                    }
                }
            }
            if mode == "tc" {
                self.datapath.remove_uplink_xdp_except(None);
            }
            self.nat_mode = Some(mode.into());
            self.sync_container_xdp();
            tracing::info!(
                uplink,
                mode,
                "published ports and masquerade attached to the uplink"
            );
        }
        self.datapath.set_nat_config(config)?;
        Ok(())
    }

    fn xdp_active(&self) -> bool {
        self.nat_mode.as_deref() == Some("xdp")
    }

    /// With the XDP stage on, every running endpoint gets the receiving XDP program (a
    /// restart swaps in the new one); without it, none keeps one.
    fn sync_container_xdp(&mut self) {
        let containers: Vec<ContainerRecord> = self
            .state
            .containers
            .values()
            .filter(|c| c.is_running())
            .cloned()
            .collect();
        for c in containers {
            let Ok(ns) = self.open_netns(&c) else {
                continue;
            };
            for ep in c.endpoints.iter().filter(|ep| ep.has_veth()) {
                if self.xdp_active() {
                    if let Err(error) = self.attach_container_xdp(&ns, ep) {
                        tracing::warn!(%error, veth = ep.host_veth, "container XDP");
                    }
                } else {
                    self.datapath.remove_container_xdp(&ep.host_veth);
                }
            }
        }
    }

    fn attach_container_xdp(&mut self, ns: &File, ep: &EndpointRecord) -> anyhow::Result<()> {
        let ifindex = Netlink::run(Some(ns), |nl| nl.link(&ep.ifname))?.index;
        self.datapath
            .attach_container_xdp(ns, ifindex, &ep.host_veth)?;
        Ok(())
    }

    /// Tells the programs which addresses are the host's own (for ports on 0.0.0.0).
    fn refresh_host_addrs(&mut self) -> Result<()> {
        let addrs: Vec<Ipv4Addr> = Netlink::run(None, |nl| nl.addresses())
            .map_err(internal)?
            .into_iter()
            .filter_map(|a| match a.addr() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        self.datapath.set_host_addrs(&addrs).map_err(internal)
    }

    /// Expires idle NAT flows; the daemon calls it periodically.
    pub fn expire_flows(&mut self) {
        self.tracked_flows = self.datapath.expire_flows(monotonic_ns());
    }

    /// Saves the state and brings the DNS names in line with it, here and, for overlay
    /// networks, in the cluster store.
    fn save(&self) -> Result<()> {
        self.refresh_names();
        self.store.save(&self.state).map_err(internal)
    }

    /// The embedded DNS table: this host's containers, and the names other hosts publish
    /// for theirs on overlay networks.
    fn refresh_names(&self) {
        self.dns.set_table(self.dns_table(&self.state));
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut mine = vec![];
        for c in self.state.containers.values().filter(|c| c.is_running()) {
            for ep in &c.endpoints {
                let on_overlay = self
                    .state
                    .networks
                    .get(&ep.network)
                    .is_some_and(|n| n.overlay.is_some());
                if !on_overlay {
                    continue;
                }
                let aliases = c.aliases_on(&ep.network);
                for name in [c.name.clone(), c.id[..12].to_owned()]
                    .into_iter()
                    .chain(aliases)
                {
                    mine.push(overlay::NameRecord {
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

    /// The DNS table for `state`, with the names other hosts publish on overlay networks.
    fn dns_table(&self, state: &State) -> Table {
        let mut table = Table::from_state(state, &self.host_upstreams);
        if let Some(cluster) = &self.cluster {
            for name in self
                .cluster_view
                .names
                .iter()
                .filter(|n| n.vtep != cluster.vtep)
            {
                table.add_remote(&name.network, &name.name, name.ip);
            }
        }
        table
    }

    /// Writes the container's resolv.conf and hosts; returns (file, mount target) pairs.
    fn write_name_files(
        &self,
        c: &ContainerRecord,
        endpoints: &[EndpointRecord],
    ) -> Result<Vec<(PathBuf, &'static str)>> {
        let dir = self.config.state_dir.join("containers").join(&c.id);
        let (resolv, hosts) = (dir.join("resolv.conf"), dir.join("hosts"));
        let source = match &c.mode {
            NetworkMode::Host => return Ok(vec![]),
            // Sharing a namespace means sharing its names too.
            NetworkMode::Container(target) => {
                let target = self.container(target)?;
                let dir = self.config.state_dir.join("containers").join(&target.id);
                return Ok(vec![
                    (dir.join("resolv.conf"), "/etc/resolv.conf"),
                    (dir.join("hosts"), "/etc/hosts"),
                ]
                .into_iter()
                .filter(|(p, _)| p.exists())
                .collect());
            }
            NetworkMode::Bridge | NetworkMode::None => (resolv, hosts),
        };
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv_text = if uses_embedded_dns(&c.mode, endpoints) {
            dns::files::resolv_conf_embedded(&c.dns_search)
        } else {
            dns::files::resolv_conf_direct(&host_resolv, &c.dns, &c.dns_search)
        };
        let mut links = vec![];
        for (target, alias) in &c.links {
            let target = self.container(target)?;
            let ip = target.endpoints.first().map(|ep| ep.ip).ok_or_else(|| {
                ApiError::conflict(format!("linked container {} is not running", target.name))
            })?;
            links.push((ip, alias.clone(), target.name.clone()));
        }
        let hosts_text = dns::files::hosts(&c.name, endpoints.first().map(|ep| ep.ip), &links);
        std::fs::write(&source.0, resolv_text).map_err(internal)?;
        std::fs::write(&source.1, hosts_text).map_err(internal)?;
        Ok(vec![
            (source.0, "/etc/resolv.conf"),
            (source.1, "/etc/hosts"),
        ])
    }

    /// Names the namespace for `ip netns`: a bind mount in /run/netns and the name files in
    /// /etc/netns, which `ip netns exec` mounts over /etc. Best effort: a failure is logged.
    fn expose_netns(&self, name: &str, netns: &Path, files: &[(PathBuf, &'static str)]) {
        let Some(prefix) = &self.config.netns_prefix else {
            return;
        };
        let exposed = format!("{prefix}{name}");
        let run = Path::new("/run/netns").join(&exposed);
        let etc = Path::new("/etc/netns").join(&exposed);
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all("/run/netns")?;
            netns::bind(netns, &run).map_err(std::io::Error::other)?;
            std::fs::create_dir_all(&etc)?;
            for (source, target) in files {
                let file = Path::new(target).file_name().expect("a file name");
                std::fs::copy(source, etc.join(file))?;
            }
            Ok(())
        })();
        if let Err(error) = result {
            tracing::warn!(%error, netns = exposed, "cannot expose the namespace to ip netns");
        }
    }

    fn unexpose_netns(&self, name: &str) {
        let Some(prefix) = &self.config.netns_prefix else {
            return;
        };
        let exposed = format!("{prefix}{name}");
        netns::remove_persistent(&Path::new("/run/netns").join(&exposed));
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&exposed));
    }

    /// `--link NAME[:ALIAS]`: the target must exist; only for containers with a network.
    fn parse_links(&self, links: &[String], mode: &NetworkMode) -> Result<Vec<(String, String)>> {
        if !links.is_empty() && *mode != NetworkMode::Bridge {
            return Err(ApiError::bad_request(format!(
                "--link cannot be used with network mode {}",
                mode_name(mode)
            )));
        }
        links
            .iter()
            .map(|link| {
                let (name, alias) = link.split_once(':').unwrap_or((link, link));
                if name.is_empty() || alias.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "invalid --link {link:?}: use NAME[:ALIAS]"
                    )));
                }
                let target = self.container(name)?;
                if !target.is_running() {
                    return Err(ApiError::conflict(format!(
                        "cannot link to {}: it is not running",
                        target.name
                    )));
                }
                Ok((target.name.clone(), alias.to_owned()))
            })
            .collect()
    }

    // ---- networks ------------------------------------------------------------------------

    fn network(&self, name: &str) -> Result<&NetworkRecord> {
        self.state
            .networks
            .get(name)
            .or_else(|| {
                // Docker also accepts a unique id prefix.
                let mut hits = self
                    .state
                    .networks
                    .values()
                    .filter(|n| n.id.starts_with(name));
                match (hits.next(), hits.next()) {
                    (Some(n), None) if !name.is_empty() => Some(n),
                    _ => None,
                }
            })
            .ok_or_else(|| ApiError::not_found(format!("network {name} not found")))
    }

    fn bridge_names(&self) -> Vec<String> {
        self.state
            .networks
            .values()
            .map(|n| n.bridge.clone())
            .collect()
    }

    pub fn network_create(&mut self, req: NetworkCreate) -> Result<NetworkView> {
        network::validate_name("network", &req.name)?;
        if network::RESERVED_NAMES.contains(&req.name.as_str()) || req.name == DEFAULT_NETWORK {
            return Err(ApiError::conflict(format!(
                "network name {} is reserved for a network mode",
                req.name
            )));
        }
        if self.state.networks.contains_key(&req.name)
            || self.cluster_view.networks.contains_key(&req.name)
        {
            return Err(ApiError::conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        let driver = req.driver.as_deref().unwrap_or("bridge");
        let subnet: Option<Ipv4Net> = parse_opt("subnet", req.subnet.as_deref())?;
        let gateway: Option<Ipv4Addr> = parse_opt("gateway", req.gateway.as_deref())?;
        let ip_range: Option<Ipv4Net> = parse_opt("ip range", req.ip_range.as_deref())?;
        if subnet.is_none() && (gateway.is_some() || ip_range.is_some()) {
            return Err(ApiError::bad_request(
                "--gateway and --ip-range need --subnet",
            ));
        }
        match driver {
            "bridge" if req.options.is_empty() => {}
            "bridge" => {
                return Err(ApiError::bad_request("bridge networks take no -o options"));
            }
            "overlay" => return self.create_overlay_network(&req, subnet, gateway, ip_range),
            "macvlan" | "ipvlan" => {
                let parent = macvlan::parse_options(driver, &req.options)?;
                let subnet = subnet.ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "a {driver} network needs --subnet: the parent's LAN, where its containers get addresses"
                    ))
                })?;
                let pool = Pool::new(subnet, gateway, ip_range)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                self.create_direct_network(&req.name, driver, pool, parent, req.internal)?;
                return self.network_inspect(&req.name);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "driver {other:?} is not supported: use bridge, macvlan, ipvlan or overlay"
                )));
            }
        }
        let subnet = match subnet {
            Some(subnet) => subnet,
            None => {
                let mut taken = network::host_subnets(&self.bridge_names()).map_err(internal)?;
                taken.extend(self.state.networks.values().map(|n| n.subnet));
                ipam::free_subnet(network::user_pool(), network::USER_PREFIX_LEN, &taken)
                    .ok_or_else(|| {
                        ApiError::conflict(format!(
                            "no free /{} left in the address pool {}: give --subnet",
                            network::USER_PREFIX_LEN,
                            network::user_pool()
                        ))
                    })?
            }
        };
        let id = random_id();
        self.create_network(
            &req.name,
            network::bridge_name(&id),
            subnet,
            gateway,
            ip_range,
            req.internal,
        )?;
        self.network_inspect(&req.name)
    }

    /// Validates, creates the bridge, programs the subnet, records the network.
    fn create_network(
        &mut self,
        name: &str,
        bridge: String,
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        ip_range: Option<Ipv4Net>,
        is_internal: bool,
    ) -> Result<()> {
        let pool = Pool::new(subnet, gateway, ip_range)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        self.check_no_overlap(&pool)?;
        let host = network::host_subnets(&self.bridge_names()).map_err(internal)?;
        if let Some(route) = host.iter().find(|r| ipam::overlaps(**r, pool.subnet)) {
            return Err(ApiError::conflict(format!(
                "subnet {} overlaps {route}, which the host already routes: choose another subnet",
                pool.subnet
            )));
        }
        let record = NetworkRecord {
            id: random_id(),
            name: name.to_owned(),
            driver: "bridge".into(),
            subnet: pool.subnet,
            gateway: pool.gateway,
            ip_range: pool.range,
            internal: is_internal,
            index: self.state.next_network_index,
            bridge,
            created: now_rfc3339(),
            parent: None,
            overlay: None,
        };
        let undo = |record: &NetworkRecord, dp: &mut Datapath| {
            dp.remove_subnet(record.subnet);
            network::delete_bridge(record);
        };
        if let Err(e) = network::ensure_bridge(&record) {
            undo(&record, &mut self.datapath);
            return Err(internal(e));
        }
        if let Err(e) = self
            .datapath
            .set_subnet(record.subnet, network::subnet_info(&record))
        {
            undo(&record, &mut self.datapath);
            return Err(internal(e));
        }
        self.state.next_network_index += 1;
        self.state.networks.insert(name.to_owned(), record.clone());
        if let Err(e) = self.save() {
            self.state.networks.remove(name);
            undo(&record, &mut self.datapath);
            return Err(e);
        }
        let _ = self.refresh_host_addrs();
        tracing::info!(network = name, subnet = %record.subnet, bridge = record.bridge, "network created");
        Ok(())
    }

    /// Overlay networks across hosts: defined in the cluster store, where every daemon sees
    /// them and leases a block of the subnet for its own containers.
    pub fn set_cluster(&mut self, cluster: Cluster) {
        self.cluster = Some(cluster);
    }

    /// A new view of the cluster store: overlay networks and which host holds which block.
    pub fn apply_cluster(&mut self, view: ClusterView) {
        for (name, blocks) in &view.blocks {
            let before: Vec<_> = self
                .cluster_view
                .blocks
                .get(name)
                .map(|b| b.iter().map(|l| (l.block, l.vtep)).collect())
                .unwrap_or_default();
            for lease in blocks {
                if !before.contains(&(lease.block, lease.vtep)) {
                    tracing::info!(network = name, block = %lease.block, vtep = %lease.vtep, "overlay peer joined");
                }
            }
            for (block, vtep) in before {
                if !blocks.iter().any(|l| (l.block, l.vtep) == (block, vtep)) {
                    tracing::info!(network = name, %block, %vtep, "overlay peer left");
                }
            }
        }
        self.cluster_view = view;
        self.sync_overlay_networks();
        self.refresh_names();
    }

    /// Gives every overlay network this host holds a block of a local bridge network on
    /// that block, where its containers join as on any bridge; drops the local part of
    /// overlay networks that left the store, once no container uses it.
    fn sync_overlay_networks(&mut self) {
        let Some(vtep) = self.cluster.as_ref().map(|c| c.vtep) else {
            return;
        };
        let view = self.cluster_view.clone();
        for (name, spec) in &view.networks {
            let Some(mine) = view
                .blocks
                .get(name)
                .and_then(|b| b.iter().find(|l| l.vtep == vtep))
            else {
                continue;
            };
            match self.state.networks.get(name) {
                Some(local) if local.overlay.is_some() => {
                    if local.subnet != mine.block {
                        tracing::warn!(network = name, local = %local.subnet, leased = %mine.block, "overlay block changed; keeping the local one");
                    }
                }
                Some(_) => {
                    tracing::warn!(
                        network = name,
                        "a local network has this overlay's name: not joining the overlay"
                    );
                }
                None => {
                    let bridge = network::bridge_name(&spec.id);
                    if let Err(error) =
                        self.create_network(name, bridge, mine.block, None, None, false)
                    {
                        tracing::warn!(%error, network = name, "cannot join overlay network");
                        continue;
                    }
                    let record = self.state.networks.get_mut(name).expect("just made");
                    record.id = spec.id.clone();
                    record.driver = "overlay".into();
                    record.overlay = Some(OverlayRecord {
                        subnet: spec.subnet,
                        vni: spec.vni,
                        port: spec.port,
                    });
                    if let Err(error) = self.save() {
                        tracing::warn!(%error, network = name, "saving the overlay network");
                    }
                    tracing::info!(network = name, block = %mine.block, "joined overlay network");
                }
            }
        }
        let gone: Vec<String> = self
            .state
            .networks
            .values()
            .filter(|n| n.overlay.is_some() && !view.networks.contains_key(&n.name))
            .map(|n| n.name.clone())
            .collect();
        for name in gone {
            if let Err(error) = self.remove_local_network(&name) {
                tracing::warn!(
                    error = error.message,
                    network = name,
                    "overlay network left the store but stays here"
                );
            }
        }
        if let Err(error) = self.program_overlay(vtep) {
            tracing::warn!(
                error = format!("{error:#}"),
                "programming the overlay data plane"
            );
        }
    }

    /// Writes the overlay maps from the view: per local overlay network, its VNI and a
    /// route to every other host's block; and decapsulation on the VTEP's interface.
    fn program_overlay(&mut self, vtep: Ipv4Addr) -> anyhow::Result<()> {
        use anyhow::Context as _;
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
        let mut routes = BTreeMap::new();
        let mut vnis = BTreeMap::new();
        for local in self.state.networks.values() {
            let Some(ov) = &local.overlay else { continue };
            vnis.insert(
                ov.vni,
                OverlayLocal {
                    network: local.index,
                    port: ov.port,
                    gateway_mac: ipam::mac_for(local.gateway),
                },
            );
            for lease in self
                .cluster_view
                .blocks
                .get(&local.name)
                .into_iter()
                .flatten()
            {
                if lease.vtep == vtep {
                    continue;
                }
                let remote_gateway = Ipv4Addr::from(u32::from(lease.block.network()) + 1);
                routes.insert(
                    (local.index, lease.block),
                    OverlayRoute {
                        remote_vtep: IpAddrKey::from_v4(lease.vtep.octets()),
                        local_vtep: IpAddrKey::from_v4(vtep.octets()),
                        underlay_ifindex: underlay.index,
                        vni: ov.vni,
                        port: ov.port,
                        inner_dst_mac: ipam::mac_for(remote_gateway),
                    },
                );
            }
        }
        self.datapath.sync_overlay(&routes, &vnis)?;
        if !vnis.is_empty() {
            self.datapath.attach_overlay_ingress(&underlay.name)?;
        }
        Ok(())
    }

    fn create_overlay_network(
        &mut self,
        req: &NetworkCreate,
        subnet: Option<Ipv4Net>,
        gateway: Option<Ipv4Addr>,
        ip_range: Option<Ipv4Net>,
    ) -> Result<NetworkView> {
        let cluster = self.cluster.clone().ok_or_else(|| {
            ApiError::bad_request(
                "overlay networks need a cluster store: start the daemon with --cluster-store etcd://HOST:PORT",
            )
        })?;
        if gateway.is_some() || ip_range.is_some() {
            return Err(ApiError::bad_request(
                "--gateway and --ip-range do not apply to overlay networks: each host's block has its own gateway",
            ));
        }
        let subnet = subnet.ok_or_else(|| {
            ApiError::bad_request(format!(
                "an overlay network needs --subnet: every host leases a /{} of it",
                overlay::BLOCK_PREFIX_LEN
            ))
        })?;
        if subnet.prefix_len() > overlay::BLOCK_PREFIX_LEN {
            return Err(ApiError::bad_request(format!(
                "subnet {subnet} is smaller than one host's block (/{})",
                overlay::BLOCK_PREFIX_LEN
            )));
        }
        let (vni, port) = overlay::parse_options(&req.options).map_err(ApiError::bad_request)?;
        if self.cluster_view.networks.contains_key(&req.name) {
            return Err(ApiError::conflict(format!(
                "network with name {} already exists in the cluster store",
                req.name
            )));
        }
        let pool =
            Pool::new(subnet, None, None).map_err(|e| ApiError::bad_request(e.to_string()))?;
        self.check_no_overlap(&pool)?;
        if let Some(other) = self
            .cluster_view
            .networks
            .values()
            .find(|n| ipam::overlaps(n.subnet, subnet))
        {
            return Err(ApiError::conflict(format!(
                "subnet {subnet} overlaps overlay network {} ({})",
                other.name, other.subnet
            )));
        }
        let used: BTreeSet<u32> = self.cluster_view.networks.values().map(|n| n.vni).collect();
        let vni = match vni {
            Some(vni) if used.contains(&vni) => {
                return Err(ApiError::conflict(format!(
                    "vni {vni} is already used by another overlay network"
                )));
            }
            Some(vni) => vni,
            // Docker's overlay driver starts its VXLAN ids at 4096 too.
            None => (4096..).find(|v| !used.contains(v)).expect("unbounded"),
        };
        let spec = OverlaySpec {
            id: random_id(),
            name: req.name.clone(),
            subnet,
            vni,
            port,
            created: now_rfc3339(),
        };
        cluster.create_network(spec.clone()).map_err(|e| match e {
            StoreError::Exists(_) => ApiError::conflict(e.to_string()),
            _ => ApiError::internal(e),
        })?;
        self.cluster_view
            .networks
            .insert(spec.name.clone(), spec.clone());
        Ok(overlay_view(&spec, &[]))
    }

    fn check_no_overlap(&self, pool: &Pool) -> Result<()> {
        match self
            .state
            .networks
            .values()
            .find(|n| ipam::overlaps(n.subnet, pool.subnet))
        {
            Some(other) => Err(ApiError::conflict(format!(
                "subnet {} overlaps network {} ({})",
                pool.subnet, other.name, other.subnet
            ))),
            None => Ok(()),
        }
    }

    /// A macvlan or ipvlan network: checks (or makes) the parent and records the network.
    /// Its subnet is the parent's LAN, which the host may well route itself, so unlike a
    /// bridge subnet it is only checked against other networks.
    fn create_direct_network(
        &mut self,
        name: &str,
        driver: &str,
        pool: Pool,
        parent: ParentRecord,
        is_internal: bool,
    ) -> Result<()> {
        self.check_no_overlap(&pool)?;
        let parent = macvlan::ensure_parent(&parent)?;
        if let Err(e) = macvlan::check_kernel_support(driver, &parent) {
            macvlan::remove_parent(&parent);
            return Err(e);
        }
        let record = NetworkRecord {
            id: random_id(),
            name: name.to_owned(),
            driver: driver.to_owned(),
            subnet: pool.subnet,
            gateway: pool.gateway,
            ip_range: pool.range,
            internal: is_internal,
            index: self.state.next_network_index,
            bridge: String::new(),
            created: now_rfc3339(),
            parent: Some(parent.clone()),
            overlay: None,
        };
        self.state.next_network_index += 1;
        self.state.networks.insert(name.to_owned(), record.clone());
        if let Err(e) = self.save() {
            self.state.networks.remove(name);
            macvlan::remove_parent(&parent);
            return Err(e);
        }
        tracing::info!(network = name, driver, subnet = %record.subnet, parent = parent.name, "network created");
        Ok(())
    }

    pub fn network_list(&self) -> Vec<NetworkView> {
        self.state
            .networks
            .values()
            .filter(|n| n.overlay.is_none())
            .map(|n| network::view(n, self.state.containers.values()))
            .chain(self.cluster_view.networks.values().map(|spec| {
                overlay_view(
                    spec,
                    self.cluster_view
                        .blocks
                        .get(&spec.name)
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                )
            }))
            .collect()
    }

    pub fn network_inspect(&self, name: &str) -> Result<NetworkView> {
        if let Some(spec) = self.cluster_view.networks.get(name) {
            let blocks = self.cluster_view.blocks.get(name);
            let mut view = overlay_view(spec, blocks.map(Vec::as_slice).unwrap_or_default());
            // This host's containers on it, and its block.
            if let Some(local) = self.state.networks.get(name) {
                let local_view = network::view(local, self.state.containers.values());
                view.containers = local_view.containers;
                view.options
                    .insert("block".into(), local.subnet.to_string());
            }
            return Ok(view);
        }
        let record = self.network(name)?;
        Ok(network::view(record, self.state.containers.values()))
    }

    pub fn network_remove(&mut self, name: &str) -> Result<()> {
        if self.cluster_view.networks.contains_key(name) {
            let cluster = self.cluster.clone().ok_or_else(|| {
                ApiError::bad_request("overlay networks are removed through the cluster store")
            })?;
            if self.state.networks.contains_key(name) {
                self.check_unused(name)?;
            }
            cluster.remove_network(name).map_err(ApiError::internal)?;
            self.cluster_view.networks.remove(name);
            self.cluster_view.blocks.remove(name);
            if self.state.networks.contains_key(name) {
                self.remove_local_network(name)?;
            }
            return Ok(());
        }
        self.remove_local_network(name)
    }

    fn check_unused(&self, name: &str) -> Result<()> {
        let users: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|c| c.networks.iter().any(|r| r.network == name))
            .map(|c| c.name.as_str())
            .collect();
        if users.is_empty() {
            Ok(())
        } else {
            Err(ApiError::conflict(format!(
                "network {name} has containers attached: {} (disconnect or remove them first)",
                users.join(", ")
            )))
        }
    }

    fn remove_local_network(&mut self, name: &str) -> Result<()> {
        let record = self.network(name)?.clone();
        if record.name == DEFAULT_NETWORK {
            return Err(ApiError::conflict(
                "bridge is the default network and cannot be removed",
            ));
        }
        self.check_unused(&record.name)?;
        self.state.networks.remove(&record.name);
        self.save()?;
        match &record.parent {
            Some(parent) => macvlan::remove_parent(parent),
            None => {
                self.datapath.remove_subnet(record.subnet);
                network::delete_bridge(&record);
            }
        }
        tracing::info!(network = record.name, "network removed");
        Ok(())
    }

    /// Removes every user-defined network no container uses; returns their names.
    pub fn network_prune(&mut self) -> Result<Vec<String>> {
        let unused: Vec<String> = self
            .state
            .networks
            .keys()
            .filter(|name| *name != DEFAULT_NETWORK)
            .filter(|name| {
                !self
                    .state
                    .containers
                    .values()
                    .any(|c| c.networks.iter().any(|r| &r.network == *name))
            })
            .cloned()
            .collect();
        for name in &unused {
            self.network_remove(name)?;
        }
        Ok(unused)
    }

    pub fn network_connect(&mut self, name: &str, req: ConnectRequest) -> Result<()> {
        let net = self.network(name)?.clone();
        let ip: Option<Ipv4Addr> = parse_opt("IP address", req.ip.as_deref())?;
        let c = self.container(&req.container)?.clone();
        if c.mode != NetworkMode::Bridge {
            return Err(ApiError::conflict(format!(
                "container {} uses network mode {}: it cannot join networks",
                c.name,
                mode_name(&c.mode)
            )));
        }
        if c.networks.iter().any(|r| r.network == net.name) {
            return Err(ApiError::conflict(format!(
                "container {} is already connected to network {}",
                c.name, net.name
            )));
        }
        check_fixed_ip_allowed(&net, ip)?;
        check_aliases_allowed(&net, &req.aliases)?;
        let request = NetworkRequest {
            aliases: req.aliases.clone(),
            network: net.name.clone(),
            ip,
        };
        if c.is_running() {
            let ns = self.open_netns(&c)?;
            let ep = self.add_endpoint(&c, &ns, &net, ip)?;
            let record = self.state.containers.get_mut(&c.name).expect("exists");
            record.endpoints.push(ep);
            if net.name != DEFAULT_NETWORK
                && let Err(error) = self.dns.start(&c.id, &ns, || {
                    self.datapath
                        .attach_dns_steering(&ns)
                        .map_err(std::io::Error::other)
                })
            {
                tracing::warn!(%error, container = c.name, "embedded DNS");
            }
        }
        let record = self.state.containers.get_mut(&c.name).expect("exists");
        record.networks.push(request);
        self.save()
    }

    pub fn network_disconnect(&mut self, name: &str, req: DisconnectRequest) -> Result<()> {
        let net = self.network(name)?.clone();
        let c = self.container(&req.container)?.clone();
        if !c.networks.iter().any(|r| r.network == net.name) {
            return Err(ApiError::conflict(format!(
                "container {} is not connected to network {}",
                c.name, net.name
            )));
        }
        for ep in c.endpoints.iter().filter(|ep| ep.network == net.name) {
            if !ep.has_veth()
                && c.is_running()
                && let Ok(ns) = self.open_netns(&c)
            {
                macvlan::unwire(&ns, &ep.ifname);
            }
            self.remove_endpoint(ep);
        }
        let record = self.state.containers.get_mut(&c.name).expect("exists");
        record.endpoints.retain(|ep| ep.network != net.name);
        record.networks.retain(|r| r.network != net.name);
        self.save()
    }

    // ---- endpoints -----------------------------------------------------------------------

    fn in_use(&self, network: &str) -> BTreeSet<Ipv4Addr> {
        self.state
            .containers
            .values()
            .flat_map(|c| &c.endpoints)
            .filter(|ep| ep.network == network)
            .map(|ep| ep.ip)
            .collect()
    }

    /// Allocates an address and wires a new interface for `c` into `ns`, fast path included.
    fn add_endpoint(
        &mut self,
        c: &ContainerRecord,
        ns: &File,
        net: &NetworkRecord,
        ip: Option<Ipv4Addr>,
    ) -> Result<EndpointRecord> {
        let pool = Pool {
            subnet: net.subnet,
            gateway: net.gateway,
            range: net.ip_range,
        };
        let ip = pool
            .allocate(&self.in_use(&net.name), ip)
            .map_err(|e| ApiError::conflict(format!("network {}: {e}", net.name)))?;
        let id = random_id();
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !c.endpoints.iter().any(|ep| &ep.ifname == n))
            .expect("unbounded");
        if let Some(parent) = &net.parent {
            let ep = EndpointRecord {
                network: net.name.clone(),
                host_veth: String::new(),
                id,
                ip,
                mac: ipam::mac_for(ip),
                ifname,
                host_ifindex: 0,
            };
            let mac = macvlan::wire(ns, net, parent, &ep).map_err(internal)?;
            tracing::info!(container = c.name, network = net.name, %ip, parent = parent.name, "endpoint up");
            return Ok(EndpointRecord { mac, ..ep });
        }
        let ep = EndpointRecord {
            network: net.name.clone(),
            host_veth: endpoint::host_veth_name(&id),
            id,
            ip,
            mac: ipam::mac_for(ip),
            ifname,
            host_ifindex: 0,
        };
        let host_ifindex = endpoint::wire(ns, net, &ep).map_err(internal)?;
        let ep = EndpointRecord { host_ifindex, ..ep };
        if net.overlay.is_some()
            && let Err(e) = endpoint::set_mtu(ns, &ep, overlay::container_mtu(self.underlay_mtu))
        {
            self.remove_endpoint(&ep);
            return Err(internal(e));
        }
        if let Err(e) = self.install_endpoint(net, &ep) {
            self.remove_endpoint(&ep);
            return Err(internal(e));
        }
        if self.xdp_active()
            && let Err(e) = self.attach_container_xdp(ns, &ep)
        {
            self.remove_endpoint(&ep);
            return Err(internal(e));
        }
        tracing::info!(container = c.name, network = net.name, %ip, veth = ep.host_veth, "endpoint up");
        Ok(ep)
    }

    /// Attaches the fast path to the endpoint's veth and publishes it in the maps.
    fn install_endpoint(
        &mut self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
    ) -> Result<(), datapath::DatapathError> {
        self.datapath.attach(&ep.host_veth)?;
        let flags = if net.internal { IFACE_FLAG_INTERNAL } else { 0 };
        self.datapath.set_iface(
            ep.host_ifindex,
            EndpointIface {
                network: net.index,
                flags,
            },
        )?;
        self.datapath
            .set_endpoint(net.index, ep.ip, endpoint_target(ep))
    }

    /// Takes an endpoint out of the maps, then deletes its veth; never fails half-way.
    /// (A macvlan or ipvlan interface goes with its namespace.)
    fn remove_endpoint(&mut self, ep: &EndpointRecord) {
        if !ep.has_veth() {
            return;
        }
        if let Some(net) = self.state.networks.get(&ep.network) {
            self.datapath.remove_endpoint(net.index, ep.ip);
        }
        self.datapath.remove_iface(ep.host_ifindex);
        self.datapath.detach(&ep.host_veth);
        endpoint::unwire(&ep.host_veth);
    }

    // ---- containers ----------------------------------------------------------------------

    fn container(&self, key: &str) -> Result<&ContainerRecord> {
        self.state
            .containers
            .get(key)
            .or_else(|| {
                let mut hits = self
                    .state
                    .containers
                    .values()
                    .filter(|c| c.id.starts_with(key));
                match (hits.next(), hits.next()) {
                    (Some(c), None) if !key.is_empty() => Some(c),
                    _ => None,
                }
            })
            .ok_or_else(|| ApiError::not_found(format!("no such container: {key}")))
    }

    /// The network namespace of a running container, opened.
    fn open_netns(&self, c: &ContainerRecord) -> Result<File> {
        let path = self.netns_path_of(c).ok_or_else(|| {
            ApiError::conflict(format!(
                "container {} has no network namespace of its own",
                c.name
            ))
        })?;
        netns::open(&path).map_err(internal)
    }

    /// Where the container's network namespace can be opened: its process's, if alive,
    /// otherwise the recorded path. `None` means the daemon's own namespace (host mode).
    fn netns_path_of(&self, c: &ContainerRecord) -> Option<PathBuf> {
        if let Some(pid) = c
            .pid
            .filter(|pid| container::is_same_process(*pid, c.pid_start_time))
            && c.mode != NetworkMode::Host
        {
            return Some(PathBuf::from(format!("/proc/{pid}/ns/net")));
        }
        c.netns.clone()
    }

    fn parse_mode(
        &self,
        network: Option<&str>,
        ip: Option<Ipv4Addr>,
        aliases: &[String],
    ) -> Result<(NetworkMode, Vec<NetworkRequest>)> {
        let network = network.unwrap_or(DEFAULT_NETWORK);
        let plain = |mode| {
            if ip.is_some() {
                return Err(ApiError::bad_request(format!(
                    "--ip cannot be used with --network {network}"
                )));
            }
            if !aliases.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "--network-alias cannot be used with --network {network}"
                )));
            }
            Ok((mode, vec![]))
        };
        match network {
            "host" => plain(NetworkMode::Host),
            "none" => plain(NetworkMode::None),
            _ => {
                if let Some(target) = network.strip_prefix("container:") {
                    let target = self.container(target)?;
                    if !matches!(
                        target.mode,
                        NetworkMode::Bridge | NetworkMode::None | NetworkMode::Host
                    ) {
                        return Err(ApiError::bad_request(format!(
                            "container {} itself shares another container's namespace: join that one",
                            target.name
                        )));
                    }
                    return plain(NetworkMode::Container(target.name.clone()));
                }
                let net = self.network(network)?;
                check_fixed_ip_allowed(net, ip)?;
                check_aliases_allowed(net, aliases)?;
                Ok((
                    NetworkMode::Bridge,
                    vec![NetworkRequest {
                        network: net.name.clone(),
                        ip,
                        aliases: aliases.to_vec(),
                    }],
                ))
            }
        }
    }

    fn check_new_container_name(&self, name: &str) -> Result<()> {
        network::validate_name("container", name)?;
        if let Some(c) = self.state.containers.get(name) {
            return Err(ApiError::conflict(format!(
                "container name {name} is already in use by container {}: remove it or choose another name",
                &c.id[..12]
            )));
        }
        Ok(())
    }

    pub fn container_create(&mut self, req: ContainerCreate) -> Result<ContainerView> {
        self.check_new_container_name(&req.name)?;
        if req.cmd.is_empty() {
            return Err(ApiError::bad_request(
                "no command given: netbpf run --name NAME -- CMD [ARGS...]",
            ));
        }
        let ip: Option<Ipv4Addr> = parse_opt("IP address", req.ip.as_deref())?;
        let (mode, networks) = self.parse_mode(req.network.as_deref(), ip, &req.aliases)?;
        let ports = parse_ports(&req.ports, &mode)?;
        let links = self.parse_links(&req.links, &mode)?;
        let dns = req
            .dns
            .iter()
            .map(|d| parse::<std::net::IpAddr>("--dns address", d))
            .collect::<Result<Vec<_>>>()?;
        let record = ContainerRecord {
            links,
            dns,
            dns_search: req.dns_search.clone(),
            ports,
            published: vec![],
            id: random_id(),
            name: req.name.clone(),
            cmd: req.cmd,
            mode,
            networks,
            endpoints: vec![],
            status: Status::Created,
            pid: None,
            pid_start_time: None,
            exit_code: None,
            netns: None,
            attached: None,
            auto_remove: req.auto_remove,
            created: now_rfc3339(),
        };
        let log = self.config.log_path(&record.id);
        std::fs::create_dir_all(log.parent().expect("has parent")).map_err(internal)?;
        self.state
            .containers
            .insert(record.name.clone(), record.clone());
        if let Err(e) = self.start_container(&record.name) {
            self.state.containers.remove(&record.name);
            let _ = std::fs::remove_dir_all(log.parent().expect("has parent"));
            return Err(e);
        }
        self.container_inspect(&record.name)
    }

    pub fn container_start(&mut self, key: &str) -> Result<ContainerView> {
        let c = self.container(key)?.clone();
        if c.is_running() {
            return Err(ApiError::conflict(format!(
                "container {} is already running",
                c.name
            )));
        }
        if c.attached.is_some() {
            return Err(ApiError::conflict(format!(
                "container {} was attached, not started by netbpf: attach it again",
                c.name
            )));
        }
        self.start_container(&c.name)?;
        self.container_inspect(&c.name)
    }

    /// Makes the namespace, wires the endpoints, starts the process; undoes it all on error.
    fn start_container(&mut self, name: &str) -> Result<()> {
        let c = self
            .state
            .containers
            .get(name)
            .expect("caller checked")
            .clone();
        let own_netns = self.config.netns_dir().join(&c.id);
        let netns_path = match &c.mode {
            NetworkMode::Host => None,
            NetworkMode::Bridge | NetworkMode::None => {
                netns::remove_persistent(&own_netns);
                netns::create_persistent(&own_netns).map_err(internal)?;
                Some(own_netns.clone())
            }
            NetworkMode::Container(target) => {
                let target = self.container(target)?;
                if !target.is_running() {
                    return Err(ApiError::conflict(format!(
                        "cannot join the namespace of container {}: it is not running",
                        target.name
                    )));
                }
                self.netns_path_of(target)
            }
        };
        let mut endpoints = vec![];
        let mut published = vec![];
        let result = (|| -> Result<std::process::Child> {
            if let Some(path) = &netns_path
                && (c.mode == NetworkMode::None || c.mode == NetworkMode::Bridge)
            {
                let ns = netns::open(path).map_err(internal)?;
                endpoint::loopback_up(&ns).map_err(internal)?;
                for req in &c.networks {
                    let net = self.network(&req.network).map_err(|_| {
                        ApiError::not_found(format!(
                            "network {} of container {} no longer exists: disconnect it",
                            req.network, c.name
                        ))
                    })?;
                    let net = net.clone();
                    let view = ContainerRecord {
                        endpoints: endpoints.clone(),
                        ..c.clone()
                    };
                    endpoints.push(self.add_endpoint(&view, &ns, &net, req.ip)?);
                }
            }
            published = self.publish(&c, &endpoints)?;
            let files = self.write_name_files(&c, &endpoints)?;
            if let Some(path) = &netns_path
                && uses_embedded_dns(&c.mode, &endpoints)
            {
                let ns = netns::open(path).map_err(internal)?;
                self.dns
                    .start(&c.id, &ns, || {
                        self.datapath
                            .attach_dns_steering(&ns)
                            .map_err(std::io::Error::other)
                    })
                    .map_err(|e| ApiError::internal(format!("embedded DNS: {e}")))?;
            }
            if let Some(path) = &netns_path
                && matches!(c.mode, NetworkMode::Bridge | NetworkMode::None)
            {
                self.expose_netns(&c.name, path, &files);
            }
            // The process may ask for a name as soon as it runs: the table must already
            // know it as a running container on its networks.
            let mut starting = self.state.clone();
            if let Some(record) = starting.containers.get_mut(name) {
                record.endpoints = endpoints.clone();
                record.status = Status::Running;
            }
            self.dns.set_table(self.dns_table(&starting));
            let binds: Vec<(&Path, &Path)> = files
                .iter()
                .map(|(s, t)| (s.as_path(), Path::new(*t)))
                .collect();
            container::spawn(
                &c.cmd,
                netns_path.as_deref(),
                &self.config.log_path(&c.id),
                &self.config.netns_dir(),
                &binds,
            )
            .map_err(|e| ApiError::bad_request(format!("cannot start {:?}: {e}", c.cmd[0])))
        })();
        let child = match result {
            Ok(child) => child,
            Err(e) => {
                self.dns.stop(&c.id);
                self.dns.set_table(self.dns_table(&self.state));
                self.unpublish(&published);
                for ep in &endpoints {
                    self.remove_endpoint(ep);
                }
                if c.mode == NetworkMode::Bridge || c.mode == NetworkMode::None {
                    netns::remove_persistent(&own_netns);
                }
                return Err(e);
            }
        };
        let pid = child.id() as i32;
        let record = self.state.containers.get_mut(name).expect("exists");
        record.endpoints = endpoints;
        record.published = published;
        record.status = Status::Running;
        record.pid = Some(pid);
        record.pid_start_time = container::start_time(pid);
        record.exit_code = None;
        record.netns = netns_path;
        let id = record.id.clone();
        self.exit_watches.insert(id.clone(), watch::channel(None).0);
        let exits = self.exits.clone();
        std::thread::spawn(move || {
            let mut child = child;
            let code = child.wait().ok().map(container::exit_code);
            let _ = exits.send(ExitEvent { id, pid, code });
        });
        tracing::info!(container = name, pid, "container started");
        self.save()
    }

    /// Publishes the container's `-p` specs on its first non-internal endpoint: host ports
    /// chosen and held, map entries written. All or nothing.
    fn publish(
        &mut self,
        c: &ContainerRecord,
        endpoints: &[EndpointRecord],
    ) -> Result<Vec<PublishedPort>> {
        if c.ports.is_empty() {
            return Ok(vec![]);
        }
        let Some(ep) = self.publishing_endpoint(endpoints) else {
            return Err(ApiError::bad_request(format!(
                "container {} has no network that can publish ports (internal, macvlan and ipvlan networks cannot)",
                c.name
            )));
        };
        let taken: Vec<(PublishedPort, String)> = self
            .state
            .containers
            .values()
            .filter(|o| o.name != c.name)
            .flat_map(|o| o.published.iter().map(move |p| (*p, o.name.clone())))
            .collect();
        let ephemeral = publish::ephemeral_range();
        let mut done: Vec<PublishedPort> = vec![];
        for spec in &c.ports {
            let mut taken = taken.clone();
            taken.extend(done.iter().map(|p| (*p, c.name.clone())));
            let allocated = match publish::allocate(spec, &taken, ephemeral) {
                Ok(allocated) => allocated,
                Err(e) => {
                    self.unpublish(&done);
                    return Err(ApiError::conflict(e.to_string()));
                }
            };
            for (port, fd) in allocated {
                self.reservations
                    .insert((port.host_ip, port.host_port, port.proto), fd);
                done.push(port);
                let target = published_target(&ep, &port);
                if let Err(e) = self.datapath.set_published(published_key(&port), target) {
                    self.unpublish(&done);
                    return Err(internal(e));
                }
            }
        }
        let shown: Vec<String> = done.iter().map(|p| p.to_string()).collect();
        tracing::info!(container = c.name, ports = ?shown, "ports published");
        Ok(done)
    }

    /// The endpoint published ports lead to: the first one on a non-internal network.
    fn publishing_endpoint(&self, endpoints: &[EndpointRecord]) -> Option<EndpointRecord> {
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

    fn unpublish(&mut self, ports: &[PublishedPort]) {
        for port in ports {
            self.datapath.remove_published(&published_key(port));
            self.reservations
                .remove(&(port.host_ip, port.host_port, port.proto));
        }
    }

    pub fn container_ports(&self, key: &str) -> Result<Vec<String>> {
        Ok(self
            .container(key)?
            .published
            .iter()
            .map(|p| p.to_string())
            .collect())
    }

    /// Watches a process that is not our child, reporting its exit like a child's.
    fn watch_foreign(&mut self, id: &str, pid: i32) {
        self.exit_watches
            .insert(id.to_owned(), watch::channel(None).0);
        let exits = self.exits.clone();
        let id = id.to_owned();
        std::thread::spawn(move || {
            if let Err(error) = container::wait_foreign(pid) {
                tracing::warn!(%error, pid, "cannot watch process; treating it as exited");
            }
            let _ = exits.send(ExitEvent {
                id,
                pid,
                code: None,
            });
        });
    }

    /// A container's process ended: release its endpoints and namespace, record the status,
    /// wake waiters, and remove it if it was `--rm`.
    pub fn on_exit(&mut self, event: ExitEvent) {
        let Some(c) = self
            .state
            .containers
            .values()
            .find(|c| c.id == event.id && c.pid == Some(event.pid))
            .cloned()
        else {
            return;
        };
        self.release(&c);
        let record = self.state.containers.get_mut(&c.name).expect("exists");
        record.status = Status::Exited;
        record.exit_code = event.code;
        record.pid = None;
        record.pid_start_time = None;
        if let Err(error) = self.save() {
            tracing::error!(%error, "saving state");
        }
        if let Some(watch) = self.exit_watches.remove(&c.id) {
            let _ = watch.send(Some(event.code));
        }
        tracing::info!(container = c.name, code = ?event.code, "container exited");
        if c.auto_remove {
            self.finished.push_back((c.id.clone(), event.code));
            if self.finished.len() > FINISHED_KEPT {
                self.finished.pop_front();
            }
            if let Err(error) = self.container_remove(&c.name) {
                tracing::warn!(%error, "auto-remove");
            }
        }
    }

    /// Tears down what a running container holds: endpoints (their leases) and its netns.
    fn release(&mut self, c: &ContainerRecord) {
        self.dns.stop(&c.id);
        self.unexpose_netns(&c.name);
        self.unpublish(&c.published);
        for ep in &c.endpoints {
            self.remove_endpoint(ep);
        }
        if let Some(record) = self.state.containers.get_mut(&c.name) {
            record.endpoints.clear();
            record.published.clear();
        }
        if matches!(c.mode, NetworkMode::Bridge | NetworkMode::None) && c.attached.is_none() {
            netns::remove_persistent(&self.config.netns_dir().join(&c.id));
        }
    }

    /// First half of `stop`: signal the process group, return what to wait on.
    pub fn container_signal(&mut self, key: &str, signal: libc::c_int) -> Result<Option<WaitFor>> {
        let c = self.container(key)?.clone();
        if c.attached.is_some() {
            return Err(ApiError::conflict(format!(
                "container {} was attached, not started by netbpf: use rm to detach it",
                c.name
            )));
        }
        if !c.is_running() {
            return Ok(None);
        }
        if let Some(pid) = c
            .pid
            .filter(|pid| container::is_same_process(*pid, c.pid_start_time))
        {
            container::signal_group(pid, signal);
        }
        self.wait(&c.id).map(Some)
    }

    pub fn wait(&self, key: &str) -> Result<WaitFor> {
        if let Some((_, code)) = self.finished.iter().find(|(id, _)| id == key) {
            return Ok(WaitFor::Exited(*code));
        }
        let c = self.container(key)?;
        match (c.is_running(), self.exit_watches.get(&c.id)) {
            (true, Some(watch)) => Ok(WaitFor::Running(watch.subscribe())),
            _ => Ok(WaitFor::Exited(c.exit_code)),
        }
    }

    /// Removes a container that is not running (`rm -f` stops it first, in the API layer).
    pub fn container_remove(&mut self, key: &str) -> Result<()> {
        let c = self.container(key)?.clone();
        if c.is_running() && c.attached.is_none() {
            return Err(ApiError::conflict(format!(
                "container {} is running: stop it first or use rm -f",
                c.name
            )));
        }
        if let Some(dependent) = self
            .state
            .containers
            .values()
            .find(|d| d.is_running() && d.mode == NetworkMode::Container(c.name.clone()))
        {
            return Err(ApiError::conflict(format!(
                "container {} shares the network namespace of {}: remove it first",
                dependent.name, c.name
            )));
        }
        self.release(&c);
        self.state.containers.remove(&c.name);
        self.exit_watches.remove(&c.id);
        self.save()?;
        let _ = std::fs::remove_dir_all(self.config.log_path(&c.id).parent().expect("has parent"));
        tracing::info!(container = c.name, "container removed");
        Ok(())
    }

    /// `attach`: wire a namespace someone else made, as the manual walkthrough does.
    pub fn attach(&mut self, req: AttachRequest) -> Result<ContainerView> {
        self.check_new_container_name(&req.name)?;
        let ip: Option<Ipv4Addr> = parse_opt("IP address", req.ip.as_deref())?;
        let (path, attached, pid) = match (req.pid, req.netns.as_deref()) {
            (Some(pid), None) => {
                if container::start_time(pid).is_none() {
                    return Err(ApiError::not_found(format!("no process with pid {pid}")));
                }
                (
                    PathBuf::from(format!("/proc/{pid}/ns/net")),
                    AttachedTo::Pid,
                    Some(pid),
                )
            }
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                if !netns::is_namespace(&path) {
                    return Err(ApiError::bad_request(format!(
                        "{} is not a network namespace",
                        path.display()
                    )));
                }
                (path, AttachedTo::Netns, None)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of --pid and --netns",
                ));
            }
        };
        let ns = netns::open(&path).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if same_netns(&ns, Path::new("/proc/self/ns/net")) {
            return Err(ApiError::bad_request(
                "that namespace is the daemon's own (host) namespace: nothing to attach",
            ));
        }
        let (mode, networks) = self.parse_mode(req.network.as_deref(), ip, &[])?;
        if mode != NetworkMode::Bridge {
            return Err(ApiError::bad_request("attach needs a bridge network"));
        }
        let ports = parse_ports(&req.ports, &mode)?;
        let mut record = ContainerRecord {
            links: vec![],
            dns: vec![],
            dns_search: vec![],
            ports,
            published: vec![],
            id: random_id(),
            name: req.name.clone(),
            cmd: vec![],
            mode,
            networks,
            endpoints: vec![],
            status: Status::Running,
            pid,
            pid_start_time: pid.and_then(container::start_time),
            exit_code: None,
            netns: Some(path),
            attached: Some(attached),
            auto_remove: false,
            created: now_rfc3339(),
        };
        endpoint::loopback_up(&ns).map_err(internal)?;
        let req0 = record.networks[0].clone();
        let net = self.network(&req0.network)?.clone();
        let ep = self.add_endpoint(&record, &ns, &net, req0.ip)?;
        record.endpoints.push(ep);
        match self.publish(&record, &record.endpoints) {
            Ok(published) => record.published = published,
            Err(e) => {
                self.release(&record);
                return Err(e);
            }
        }
        let id = record.id.clone();
        self.state.containers.insert(record.name.clone(), record);
        if let Err(e) = self.save() {
            let c = self
                .state
                .containers
                .remove(&req.name)
                .expect("just inserted");
            self.release(&c);
            return Err(e);
        }
        if let Some(pid) = pid {
            self.watch_foreign(&id, pid);
        }
        self.container_inspect(&req.name)
    }

    /// Where and as whom `exec` runs: (network namespace, pid whose mount namespace to use).
    pub fn exec_target(&self, key: &str) -> Result<(Option<PathBuf>, Option<i32>)> {
        let c = self.container(key)?;
        if !c.is_running() {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                c.name
            )));
        }
        let pid = c
            .pid
            .filter(|pid| container::is_same_process(*pid, c.pid_start_time));
        Ok((self.netns_path_of(c), pid))
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.config.netns_dir()
    }

    /// The log file and whether the container is still running (logs follow until it stops).
    pub fn log_of(&self, key: &str) -> Result<(PathBuf, String)> {
        let c = self.container(key)?;
        Ok((self.config.log_path(&c.id), c.id.clone()))
    }

    pub fn is_running_id(&self, id: &str) -> bool {
        self.state
            .containers
            .values()
            .any(|c| c.id == id && c.is_running())
    }

    pub fn container_list(&self, all: bool) -> Vec<ContainerSummary> {
        self.state
            .containers
            .values()
            .filter(|c| all || c.is_running())
            .map(|c| ContainerSummary {
                id: c.id.clone(),
                name: c.name.clone(),
                command: c.cmd.join(" "),
                status: match (c.status, c.exit_code) {
                    (Status::Exited, Some(code)) => format!("exited ({code})"),
                    (Status::Running, _) if c.attached.is_some() => "running (attached)".into(),
                    (status, _) => status_name(status).into(),
                },
                networks: match &c.mode {
                    NetworkMode::Bridge => c.networks.iter().map(|r| r.network.clone()).collect(),
                    other => vec![mode_name(other)],
                },
            })
            .collect()
    }

    fn counters_view(&self, ep: &EndpointRecord) -> CountersView {
        counters_view(&self.datapath.counters(ep.host_ifindex))
    }

    pub fn container_inspect(&self, key: &str) -> Result<ContainerView> {
        let c = self.container(key)?;
        let mut networks = BTreeMap::new();
        for req in &c.networks {
            let Some(net) = self.state.networks.get(&req.network) else {
                continue;
            };
            let ep = c.endpoints.iter().find(|ep| ep.network == req.network);
            networks.insert(
                req.network.clone(),
                ContainerEndpointView {
                    network_id: net.id.clone(),
                    endpoint_id: ep.map(|ep| ep.id.clone()).unwrap_or_default(),
                    gateway: if ep.is_some() {
                        net.gateway.to_string()
                    } else {
                        String::new()
                    },
                    ip_address: ep.map(|ep| ep.ip.to_string()).unwrap_or_default(),
                    ip_prefix_len: if ep.is_some() {
                        net.subnet.prefix_len()
                    } else {
                        0
                    },
                    mac_address: ep.map(|ep| format_mac(ep.mac)).unwrap_or_default(),
                    interface: ep.map(|ep| ep.ifname.clone()).unwrap_or_default(),
                    host_interface: ep.map(|ep| ep.host_veth.clone()).unwrap_or_default(),
                    counters: ep.map(|ep| self.counters_view(ep)),
                },
            );
        }
        Ok(ContainerView {
            id: c.id.clone(),
            name: c.name.clone(),
            created: c.created.clone(),
            cmd: c.cmd.clone(),
            state: ContainerStateView {
                status: status_name(c.status).into(),
                running: c.is_running(),
                pid: c.pid.unwrap_or(0),
                exit_code: c.exit_code,
                attached: c.attached.as_ref().map(|a| format!("{a:?}").to_lowercase()),
            },
            network_mode: mode_name(&c.mode),
            sandbox_key: if c.is_running() {
                self.netns_path_of(c).map(|p| p.display().to_string())
            } else {
                None
            },
            networks,
            ports: c.published.iter().map(|p| p.to_string()).collect(),
        })
    }

    pub fn stats(&self) -> Vec<EndpointStats> {
        self.state
            .containers
            .values()
            .flat_map(|c| c.endpoints.iter().map(move |ep| (c, ep)))
            // macvlan and ipvlan endpoints are outside the fast path: nothing counts them.
            .filter(|(_, ep)| ep.has_veth())
            .map(|(c, ep)| EndpointStats {
                container: c.name.clone(),
                network: ep.network.clone(),
                interface: ep.ifname.clone(),
                host_interface: ep.host_veth.clone(),
                counters: self.counters_view(ep),
            })
            .collect()
    }

    pub fn info(&self) -> DaemonInfo {
        let ids = self.datapath.ids();
        DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            state_dir: self.config.state_dir.display().to_string(),
            bpffs: self.config.bpffs.display().to_string(),
            uplink: self.config.uplink.clone(),
            nat_mode: self.nat_mode.clone(),
            xdp_redirects: self.datapath.xdp_redirects(),
            tracked_flows: self.tracked_flows,
            cgroup: self.config.cgroup.display().to_string(),
            program_ids: ids.program_ids,
            map_ids: ids.map_ids,
        }
    }

    // ---- restart and shutdown ------------------------------------------------------------

    /// Brings the kernel in line with the recorded state after a restart: bridges restored,
    /// live containers re-adopted (the new program swapped into their pinned links), dead
    /// ones released, and leftovers no record explains removed.
    fn reconcile(&mut self) -> anyhow::Result<()> {
        for net in self.state.networks.values_mut() {
            match &net.parent {
                None => {
                    network::ensure_bridge(net)?;
                }
                Some(parent) => match macvlan::ensure_parent(parent) {
                    Ok(parent) => net.parent = Some(parent),
                    Err(error) => {
                        tracing::warn!(%error, network = net.name, "parent interface unusable")
                    }
                },
            }
        }
        let containers: Vec<ContainerRecord> = self.state.containers.values().cloned().collect();
        for c in containers {
            if !c.is_running() {
                continue;
            }
            let alive = match (&c.attached, c.pid) {
                (Some(AttachedTo::Netns), _) => c.netns.as_deref().is_some_and(netns::is_namespace),
                (_, Some(pid)) => container::is_same_process(pid, c.pid_start_time),
                (_, None) => false,
            };
            if !alive {
                tracing::info!(container = c.name, "exited while the daemon was down");
                self.release(&c);
                let record = self.state.containers.get_mut(&c.name).expect("exists");
                record.status = Status::Exited;
                record.exit_code = None;
                record.pid = None;
                if c.auto_remove {
                    self.state.containers.remove(&c.name);
                    let _ = std::fs::remove_dir_all(
                        self.config.log_path(&c.id).parent().expect("has parent"),
                    );
                }
                continue;
            }
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
                        self.install_endpoint(&net, ep)?;
                        kept.push(ep.clone());
                    }
                    _ => {
                        tracing::warn!(
                            container = c.name,
                            veth = ep.host_veth,
                            "endpoint vanished; dropping it"
                        );
                        self.remove_endpoint(ep);
                    }
                }
            }
            for port in &c.published {
                match publish::reserve(port.host_ip, port.host_port, port.proto) {
                    Ok(fd) => {
                        let key = (port.host_ip, port.host_port, port.proto);
                        self.reservations.insert(key, fd);
                    }
                    Err(error) => {
                        tracing::warn!(%error, port = %port, "cannot hold published port again")
                    }
                }
            }
            self.state
                .containers
                .get_mut(&c.name)
                .expect("exists")
                .endpoints = kept;
            if let Some(pid) = c.pid {
                self.watch_foreign(&c.id, pid);
            }
            let live = self.state.containers.get(&c.name).cloned().expect("exists");
            if uses_embedded_dns(&live.mode, &live.endpoints)
                && let Ok(ns) = self.open_netns(&live)
                && let Err(error) = self.dns.start(&live.id, &ns, || {
                    self.datapath
                        .attach_dns_steering(&ns)
                        .map_err(std::io::Error::other)
                })
            {
                tracing::warn!(%error, container = live.name, "embedded DNS not restarted");
            }
            tracing::info!(container = c.name, "re-adopted");
        }
        self.remove_leftovers()?;
        self.datapath.sync(&self.desired())?;
        self.sync_published()?;
        self.save()?;
        Ok(())
    }

    /// Deletes veths on our bridges, link pins and namespace mounts that no record owns.
    fn remove_leftovers(&mut self) -> anyhow::Result<()> {
        let veths: BTreeSet<String> = self
            .state
            .containers
            .values()
            .flat_map(|c| c.endpoints.iter().map(|ep| ep.host_veth.clone()))
            .collect();
        let bridges = self.bridge_names();
        Netlink::run(None, |nl| {
            let links = nl.links()?;
            let bridge_indexes: Vec<u32> = links
                .iter()
                .filter(|l| bridges.contains(&l.name))
                .map(|l| l.index)
                .collect();
            for link in links {
                let on_ours = link.controller.is_some_and(|c| bridge_indexes.contains(&c));
                if on_ours && !veths.contains(&link.name) {
                    tracing::info!(veth = link.name, "removing leftover veth");
                    nl.delete_link(link.index)?;
                }
            }
            Ok(())
        })?;
        for pin in self
            .datapath
            .pinned_links()
            .into_iter()
            .chain(self.datapath.pinned_xdp_links())
        {
            if !veths.contains(&pin) {
                self.datapath.detach(&pin);
            }
        }
        let live: BTreeSet<String> = self
            .state
            .containers
            .values()
            .filter(|c| c.is_running() && c.attached.is_none())
            .map(|c| c.id.clone())
            .collect();
        if let Ok(dir) = std::fs::read_dir(self.config.netns_dir()) {
            for entry in dir.flatten() {
                if !live.contains(&entry.file_name().to_string_lossy().into_owned()) {
                    netns::remove_persistent(&entry.path());
                }
            }
        }
        Ok(())
    }

    /// Makes `PUBLISHED` hold exactly the ports of running containers.
    fn sync_published(&mut self) -> anyhow::Result<()> {
        let mut wanted = std::collections::HashMap::new();
        for c in self.state.containers.values().filter(|c| c.is_running()) {
            let Some(ep) = self.publishing_endpoint(&c.endpoints) else {
                continue;
            };
            for port in &c.published {
                wanted.insert(published_key(port), published_target(&ep, port));
            }
        }
        for key in self.datapath.published_keys() {
            if !wanted.contains_key(&key) {
                self.datapath.remove_published(&key);
            }
        }
        for (key, target) in wanted {
            self.datapath.set_published(key, target)?;
        }
        Ok(())
    }

    fn desired(&self) -> Desired {
        let mut desired = Desired::default();
        for net in self.state.networks.values().filter(|n| n.is_bridge()) {
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
            let flags = if net.internal { IFACE_FLAG_INTERNAL } else { 0 };
            desired.ifaces.insert(
                ep.host_ifindex,
                EndpointIface {
                    network: net.index,
                    flags,
                },
            );
            desired
                .endpoints
                .insert((net.index, ep.ip), endpoint_target(ep));
        }
        desired
    }

    /// Pids of the containers the daemon started and that still run, for shutdown.
    pub fn running_pids(&self) -> Vec<(String, i32)> {
        self.state
            .containers
            .values()
            .filter(|c| c.is_running() && c.attached.is_none())
            .filter_map(|c| c.pid.map(|pid| (c.id.clone(), pid)))
            .collect()
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
                record.status = Status::Exited;
                record.pid = None;
            }
            if c.auto_remove {
                let _ = self.container_remove(&c.name);
            }
        }
        for net in self.state.networks.values() {
            match &net.parent {
                Some(parent) => macvlan::remove_parent(parent),
                None => network::delete_bridge(net),
            }
        }
        if let Err(error) = self.save() {
            tracing::error!(%error, "saving state at shutdown");
        }
        datapath::remove_pins(&self.config.bpffs);
    }
}

/// An overlay network as `network inspect` shows it, with every host's block as a peer.
fn overlay_view(spec: &OverlaySpec, blocks: &[overlay::BlockLease]) -> NetworkView {
    NetworkView {
        name: spec.name.clone(),
        id: spec.id.clone(),
        created: spec.created.clone(),
        scope: "global".into(),
        driver: "overlay".into(),
        enable_ipv6: false,
        ipam: crate::api::IpamView {
            driver: "default".into(),
            config: vec![crate::api::IpamConfigView {
                subnet: spec.subnet.to_string(),
                gateway: String::new(),
                ip_range: None,
            }],
        },
        internal: false,
        containers: BTreeMap::new(),
        options: BTreeMap::from([
            ("vni".to_owned(), spec.vni.to_string()),
            ("port".to_owned(), spec.port.to_string()),
        ]),
        peers: blocks
            .iter()
            .map(|b| crate::api::PeerView {
                name: b.host.clone(),
                ip: b.vtep.to_string(),
                block: b.block.to_string(),
            })
            .collect(),
    }
}

fn check_fixed_ip_allowed(net: &NetworkRecord, ip: Option<Ipv4Addr>) -> Result<()> {
    if ip.is_some() && net.name == DEFAULT_NETWORK {
        return Err(ApiError::bad_request(
            "--ip is only supported on user-defined networks (as in Docker)",
        ));
    }
    Ok(())
}

fn same_netns(a: &File, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (a.metadata(), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

fn endpoint_target(ep: &EndpointRecord) -> EndpointTarget {
    EndpointTarget {
        host_ifindex: ep.host_ifindex,
        mac: ep.mac,
        _pad: [0; 2],
    }
}

fn counters_view(c: &EndpointCounters) -> CountersView {
    CountersView {
        fast_packets: c.fast_packets,
        fast_bytes: c.fast_bytes,
        passed_packets: c.passed_packets,
        passed_bytes: c.passed_bytes,
        drops: DropReason::ALL
            .iter()
            .map(|r| (r.name().to_owned(), c.drops[*r as usize]))
            .collect(),
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Created => "created",
        Status::Running => "running",
        Status::Exited => "exited",
    }
}

fn mode_name(mode: &NetworkMode) -> String {
    match mode {
        NetworkMode::Bridge => "bridge".into(),
        NetworkMode::Host => "host".into(),
        NetworkMode::None => "none".into(),
        NetworkMode::Container(name) => format!("container:{name}"),
    }
}

/// Parses `-p` specs; only containers with their own bridge networking can publish.
fn parse_ports(specs: &[String], mode: &NetworkMode) -> Result<Vec<PortSpec>> {
    if !specs.is_empty() && *mode != NetworkMode::Bridge {
        return Err(ApiError::bad_request(format!(
            "ports cannot be published with network mode {}",
            mode_name(mode)
        )));
    }
    specs
        .iter()
        .map(|s| PortSpec::parse(s).map_err(|e| ApiError::bad_request(e.to_string())))
        .collect()
}

fn published_key(port: &PublishedPort) -> PublishedKey {
    PublishedKey {
        addr: IpAddrKey::from_v4(port.host_ip.octets()),
        port: port.host_port,
        proto: port.proto.number(),
        _pad: 0,
    }
}

fn published_target(ep: &EndpointRecord, port: &PublishedPort) -> PublishedTarget {
    PublishedTarget {
        addr: IpAddrKey::from_v4(ep.ip.octets()),
        port: port.container_port,
        _pad: [0; 2],
        host_ifindex: ep.host_ifindex,
        mac: ep.mac,
        _pad2: [0; 2],
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Containers with their own namespace on a user-defined network use the embedded DNS;
/// the default bridge does not (Docker's documented behaviour).
fn uses_embedded_dns(mode: &NetworkMode, endpoints: &[EndpointRecord]) -> bool {
    *mode == NetworkMode::Bridge && endpoints.iter().any(|ep| ep.network != DEFAULT_NETWORK)
}

fn check_aliases_allowed(net: &NetworkRecord, aliases: &[String]) -> Result<()> {
    if !aliases.is_empty() && net.name == DEFAULT_NETWORK {
        return Err(ApiError::bad_request(
            "network-scoped aliases are only supported on user-defined networks (as in Docker)",
        ));
    }
    for alias in aliases {
        network::validate_name("alias", alias)?;
    }
    Ok(())
}
