//! The only module that touches aya: loads the programs, attaches and pins them, and gives
//! the controller typed map updates.
//!
//! Pins under `--bpffs`:
//!
//! ```text
//! maps/ENDPOINTS maps/ENDPOINT_IFACES maps/SUBNETS maps/COUNTERS   pinned by name
//! links/<host veth>                                                  one tcx link each
//! ```
//!
//! Pinned maps and links keep the fast path running while the daemon is down (crash,
//! `kill -9`, upgrade). A restarted daemon loads the program again, reuses the pinned maps
//! (aya opens pins by name instead of creating maps) and swaps its program into each pinned
//! link with `bpf_link_update`, so traffic never stops.

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use ipnet::Ipv4Net;
use netbpf_common::{
    EndpointCounters, EndpointIface, EndpointKey, EndpointTarget, FlowKey, IpAddrKey,
    NAT_TIMEOUT_TCP_CLOSING_NS, NAT_TIMEOUT_TCP_NS, NAT_TIMEOUT_UDP_NS, NatConfig, NatEntry,
    OverlayLocal, OverlayRoute, OverlayRouteKey, PROTO_TCP, PublishedKey, PublishedTarget,
    SubnetInfo, SubnetKey, names,
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot prepare pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("eBPF link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("attaching inside a container's namespace: {0}")]
    Netns(#[from] crate::netns::NetnsError),
}

/// The compiled eBPF object, built by build.rs with aya-build.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netbpf"));

/// Ids the kernel gave the loaded objects, for `bpftool prog show id N` and friends.
#[derive(Debug, Clone, Serialize)]
pub struct DatapathIds {
    pub program_ids: BTreeMap<String, u32>,
    pub map_ids: BTreeMap<String, u32>,
}

/// Every map entry the controller wants, used to reconcile pinned maps after a restart.
#[derive(Debug, Default)]
pub struct Desired {
    pub endpoints: BTreeMap<(u32, Ipv4Addr), EndpointTarget>,
    pub ifaces: BTreeMap<u32, EndpointIface>,
    pub subnets: BTreeMap<Ipv4Net, SubnetInfo>,
}

pub struct Datapath {
    ebpf: Ebpf,
    endpoints: HashMap<MapData, EndpointKey, EndpointTarget>,
    ifaces: HashMap<MapData, u32, EndpointIface>,
    subnets: LpmTrie<MapData, SubnetKey, SubnetInfo>,
    counters: PerCpuHashMap<MapData, u32, EndpointCounters>,
    published: HashMap<MapData, PublishedKey, PublishedTarget>,
    host_addrs: HashMap<MapData, IpAddrKey, u32>,
    nat_config: Array<MapData, NatConfig>,
    conntrack: HashMap<MapData, FlowKey, NatEntry>,
    xdp_redirects: PerCpuArray<MapData, u64>,
    overlay_routes: LpmTrie<MapData, OverlayRouteKey, OverlayRoute>,
    overlay_vnis: HashMap<MapData, u32, OverlayLocal>,
    links_dir: PathBuf,
    host_links_dir: PathBuf,
    xdp_links_dir: PathBuf,
}

/// The XDP programs, all loaded at start.
const XDP_PROGRAMS: [&str; 2] = [names::PROG_UPLINK_XDP, names::PROG_CONTAINER_XDP_PASS];

/// The TC programs, all loaded at start.
const TC_PROGRAMS: [&str; 6] = [
    names::PROG_FROM_CONTAINER,
    names::PROG_OVERLAY_INGRESS,
    names::PROG_UPLINK_INGRESS,
    names::PROG_UPLINK_EGRESS,
    names::PROG_DNS_LO_INGRESS,
    names::PROG_DNS_LO_EGRESS,
];
/// The cgroup socket programs, all loaded at start.
const SOCK_PROGRAMS: [&str; 7] = [
    names::PROG_CONNECT4,
    names::PROG_SENDMSG4,
    names::PROG_RECVMSG4,
    names::PROG_GETPEERNAME4,
    names::PROG_CONNECT6,
    names::PROG_RECVMSG6,
    names::PROG_GETPEERNAME6,
];

fn pins_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Datapath {
    /// Loads (and so verifies) every program, reusing maps already pinned under `root`.
    pub fn load(root: &Path) -> Result<Self, DatapathError> {
        let maps_dir = root.join("maps");
        let links_dir = root.join("links");
        let host_links_dir = root.join("host-links");
        let xdp_links_dir = root.join("xdp-links");
        for dir in [&maps_dir, &links_dir, &host_links_dir, &xdp_links_dir] {
            std::fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
                path: dir.clone(),
                source,
            })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)?;
        // Every program is loaded (and so verified) now, whether or not it gets attached.
        for name in TC_PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()?;
            program.load()?;
        }
        for name in XDP_PROGRAMS {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()?;
            program.load()?;
        }
        for name in SOCK_PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()?;
            program.load()?;
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let endpoints = HashMap::try_from(take(names::ENDPOINTS)?)?;
        let ifaces = HashMap::try_from(take(names::ENDPOINT_IFACES)?)?;
        let subnets = LpmTrie::try_from(take(names::SUBNETS)?)?;
        let counters = PerCpuHashMap::try_from(take(names::COUNTERS)?)?;
        let published = HashMap::try_from(take(names::PUBLISHED)?)?;
        let host_addrs = HashMap::try_from(take(names::HOST_ADDRS)?)?;
        let nat_config = Array::try_from(take(names::NAT_CONFIG)?)?;
        let conntrack = HashMap::try_from(take(names::CONNTRACK)?)?;
        let xdp_redirects = PerCpuArray::try_from(take(names::XDP_REDIRECTS)?)?;
        let overlay_routes = LpmTrie::try_from(take(names::OVERLAY_ROUTES)?)?;
        let overlay_vnis = HashMap::try_from(take(names::OVERLAY_VNIS)?)?;
        Ok(Self {
            overlay_routes,
            overlay_vnis,
            ebpf,
            endpoints,
            ifaces,
            subnets,
            counters,
            published,
            host_addrs,
            nat_config,
            conntrack,
            xdp_redirects,
            links_dir,
            host_links_dir,
            xdp_links_dir,
        })
    }

    fn tc_program(&mut self, name: &str) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in load")
    }

    fn link_pin(&self, host_veth: &str) -> PathBuf {
        self.links_dir.join(host_veth)
    }

    /// Attaches the fast path to a host-side veth (tcx ingress) and pins the link. If a
    /// pinned link is already there (a restart), the new program replaces the old one in it
    /// atomically instead.
    pub fn attach(&mut self, host_veth: &str) -> Result<(), DatapathError> {
        let pin = self.link_pin(host_veth);
        self.attach_tc(
            names::PROG_FROM_CONTAINER,
            host_veth,
            TcAttachType::Ingress,
            &pin,
        )
    }

    /// Attaches a TC program with tcx and pins the link at `pin`, or swaps the program into
    /// the link already pinned there.
    fn attach_tc(
        &mut self,
        name: &str,
        iface: &str,
        attach_type: TcAttachType,
        pin: &Path,
    ) -> Result<(), DatapathError> {
        if pin.exists() {
            match PinnedLink::from_pin(pin) {
                Ok(pinned) => {
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
                    let program = self.tc_program(name);
                    let id = program.attach_to_link(link)?;
                    // Dropping our copy closes one fd; the pin keeps the link.
                    drop(program.take_link(id)?);
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, pin = %pin.display(), "stale link pin, attaching anew");
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        let program = self.tc_program(name);
        let id = program.attach_with_options(
            iface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        let link = FdLink::try_from(program.take_link(id)?)?;
        link.pin(pin)?;
        Ok(())
    }

    /// Attaches the published-port and masquerade programs to the uplink (tcx ingress and
    /// egress), dropping links pinned for a different uplink by an earlier run.
    pub fn attach_uplink(&mut self, uplink: &str) -> Result<(), DatapathError> {
        let ingress = self.host_links_dir.join(format!("uplink-ingress-{uplink}"));
        let egress = self.host_links_dir.join(format!("uplink-egress-{uplink}"));
        for stale in pins_in(&self.host_links_dir) {
            if stale.starts_with("uplink-") && !stale.ends_with(&format!("-{uplink}")) {
                let _ = std::fs::remove_file(self.host_links_dir.join(stale));
            }
        }
        self.attach_tc(
            names::PROG_UPLINK_INGRESS,
            uplink,
            TcAttachType::Ingress,
            &ingress,
        )?;
        self.attach_tc(
            names::PROG_UPLINK_EGRESS,
            uplink,
            TcAttachType::Egress,
            &egress,
        )
    }

    /// Puts VXLAN decapsulation on the interface that holds this host's VTEP address.
    pub fn attach_overlay_ingress(&mut self, iface: &str) -> Result<(), DatapathError> {
        let pin = self.host_links_dir.join(format!("overlay-ingress-{iface}"));
        self.attach_tc(
            names::PROG_OVERLAY_INGRESS,
            iface,
            TcAttachType::Ingress,
            &pin,
        )
    }

    /// Makes the overlay maps hold exactly these routes (per local network and remote
    /// block) and VNIs.
    pub fn sync_overlay(
        &mut self,
        routes: &BTreeMap<(u32, Ipv4Net), OverlayRoute>,
        vnis: &BTreeMap<u32, OverlayLocal>,
    ) -> Result<(), DatapathError> {
        let route_key = |network: u32, block: Ipv4Net| {
            Key::new(
                32 + IpAddrKey::V4_MAPPED_PREFIX_BITS + u32::from(block.prefix_len()),
                OverlayRouteKey {
                    network,
                    addr: IpAddrKey::from_v4(block.network().octets()),
                },
            )
        };
        let wanted: Vec<_> = routes.keys().map(|(n, b)| route_key(*n, *b)).collect();
        remove_other_keys(&mut self.overlay_routes, &wanted);
        for ((network, block), route) in routes {
            self.overlay_routes
                .insert(&route_key(*network, *block), *route, 0)?;
        }
        let stale: Vec<u32> = self
            .overlay_vnis
            .keys()
            .flatten()
            .filter(|vni| !vnis.contains_key(vni))
            .collect();
        for vni in stale {
            let _ = self.overlay_vnis.remove(&vni);
        }
        for (vni, local) in vnis {
            self.overlay_vnis.insert(vni, local, 0)?;
        }
        Ok(())
    }

    /// Attaches the socket programs to the cgroup whose processes count as "the host". A
    /// new link is pinned first and then replaces the old pin (rename is atomic), so host
    /// processes never see a moment without translation.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let dir = File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let pin = self.host_links_dir.join(format!("cgroup-{name}"));
            let fresh = self.host_links_dir.join(format!("cgroup-{name}-new"));
            let _ = std::fs::remove_file(&fresh);
            let program: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .expect("loaded");
            // bpffs refuses names with a dot, hence "-new". A bpf_link on a cgroup always allows other programs next to it; `Single` means
            // "no flags", which is what BPF_LINK_CREATE accepts.
            let id = program.attach(&dir, CgroupAttachMode::Single)?;
            let link = FdLink::try_from(program.take_link(id)?)?;
            link.pin(&fresh)?;
            std::fs::rename(&fresh, &pin).map_err(|source| DatapathError::PinDir {
                path: pin.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Detaches from a veth by dropping the pins, the links' last references.
    pub fn detach(&mut self, host_veth: &str) {
        let _ = std::fs::remove_file(self.link_pin(host_veth));
        let _ = std::fs::remove_file(self.xdp_links_dir.join(host_veth));
    }

    /// Attaches an XDP program in driver mode and pins the link, or swaps the program into
    /// a link already pinned there. Runs in the calling thread's namespace.
    fn attach_xdp(&mut self, name: &str, ifindex: u32, pin: &Path) -> Result<(), DatapathError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded");
        if let Ok(pinned) = PinnedLink::from_pin(pin) {
            let id = program.attach_to_link(XdpLink::try_from(FdLink::from(pinned))?)?;
            drop(program.take_link(id)?);
            return Ok(());
        }
        let _ = std::fs::remove_file(pin);
        let id = program.attach_to_if_index(ifindex, XdpMode::Driver)?;
        FdLink::try_from(program.take_link(id)?)?.pin(pin)?;
        Ok(())
    }

    /// Puts the XDP stage on the uplink (driver mode only: generic XDP would be slower
    /// than the tcx path it fronts).
    pub fn attach_uplink_xdp(&mut self, uplink: &str, ifindex: u32) -> Result<(), DatapathError> {
        let pin = self.host_links_dir.join(format!("uplink-xdp-{uplink}"));
        self.remove_uplink_xdp_except(Some(uplink));
        self.attach_xdp(names::PROG_UPLINK_XDP, ifindex, &pin)
    }

    /// Drops the uplink XDP links, except the one for `keep`.
    pub fn remove_uplink_xdp_except(&mut self, keep: Option<&str>) {
        for pin in pins_in(&self.host_links_dir) {
            let kept = keep.is_some_and(|k| pin == format!("uplink-xdp-{k}"));
            if pin.starts_with("uplink-xdp-") && !kept {
                let _ = std::fs::remove_file(self.host_links_dir.join(pin));
            }
        }
    }

    /// Gives a container interface the XDP program that lets it receive frames the uplink's
    /// XDP stage redirects. `ifindex` is inside `ns`, where the attach must happen.
    pub fn attach_container_xdp(
        &mut self,
        ns: &File,
        ifindex: u32,
        host_veth: &str,
    ) -> Result<(), DatapathError> {
        let pin = self.xdp_links_dir.join(host_veth);
        crate::netns::run_in(ns, || {
            self.attach_xdp(names::PROG_CONTAINER_XDP_PASS, ifindex, &pin)
        })?
    }

    /// Attaches the embedded-DNS port steering to `lo` inside `ns`. The links are returned,
    /// not pinned: the steering lives exactly as long as the DNS server that owns them, so
    /// with no daemon a query fails at once instead of waiting for a socket nobody reads.
    pub fn attach_dns_steering(&mut self, ns: &File) -> Result<Vec<FdLink>, DatapathError> {
        let attach = |dp: &mut Self| -> Result<Vec<FdLink>, DatapathError> {
            let mut links = vec![];
            for (name, attach_type) in [
                (names::PROG_DNS_LO_INGRESS, TcAttachType::Ingress),
                (names::PROG_DNS_LO_EGRESS, TcAttachType::Egress),
            ] {
                let program = dp.tc_program(name);
                let id = program.attach_with_options(
                    "lo",
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )?;
                links.push(FdLink::try_from(program.take_link(id)?)?);
            }
            Ok(links)
        };
        crate::netns::run_in(ns, || attach(self))?
    }

    /// Veths with a pinned container XDP link.
    pub fn pinned_xdp_links(&self) -> Vec<String> {
        pins_in(&self.xdp_links_dir)
    }

    pub fn remove_container_xdp(&mut self, host_veth: &str) {
        let _ = std::fs::remove_file(self.xdp_links_dir.join(host_veth));
    }

    /// Packets the uplink XDP stage has redirected, summed over CPUs.
    pub fn xdp_redirects(&self) -> u64 {
        self.xdp_redirects
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Names of the veths that have a pinned link.
    pub fn pinned_links(&self) -> Vec<String> {
        pins_in(&self.links_dir)
    }

    pub fn set_published(
        &mut self,
        key: PublishedKey,
        target: PublishedTarget,
    ) -> Result<(), DatapathError> {
        Ok(self.published.insert(key, target, 0)?)
    }

    pub fn remove_published(&mut self, key: &PublishedKey) {
        let _ = self.published.remove(key);
    }

    /// Keys of everything published, for reconciling after a restart.
    pub fn published_keys(&self) -> Vec<PublishedKey> {
        self.published.keys().flatten().collect()
    }

    /// Makes `HOST_ADDRS` hold exactly `addrs`.
    pub fn set_host_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<(), DatapathError> {
        let wanted: HashSet<IpAddrKey> = addrs
            .iter()
            .map(|a| IpAddrKey::from_v4(a.octets()))
            .collect();
        let stale: Vec<_> = self
            .host_addrs
            .keys()
            .flatten()
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            let _ = self.host_addrs.remove(&key);
        }
        for key in wanted {
            self.host_addrs.insert(key, 1, 0)?;
        }
        Ok(())
    }

    pub fn set_nat_config(&mut self, config: NatConfig) -> Result<(), DatapathError> {
        Ok(self.nat_config.set(0, config, 0)?)
    }

    /// Deletes tracked flows idle for longer than their timeout; returns how many remain.
    pub fn expire_flows(&mut self, now_ns: u64) -> usize {
        let mut expired = vec![];
        let mut live = 0;
        for (key, entry) in self.conntrack.iter().flatten() {
            if is_expired(&key, &entry, now_ns) {
                expired.push(key);
            } else {
                live += 1;
            }
        }
        for key in expired {
            let _ = self.conntrack.remove(&key);
        }
        live
    }

    pub fn set_endpoint(
        &mut self,
        network: u32,
        ip: Ipv4Addr,
        target: EndpointTarget,
    ) -> Result<(), DatapathError> {
        Ok(self
            .endpoints
            .insert(endpoint_key(network, ip), target, 0)?)
    }

    pub fn remove_endpoint(&mut self, network: u32, ip: Ipv4Addr) {
        let _ = self.endpoints.remove(&endpoint_key(network, ip));
    }

    /// Records which network a host veth belongs to, and gives it zeroed counters unless it
    /// has some already (a restart keeps them). The program only updates existing counter
    /// entries, so entries live and die with the endpoint, under the controller's control.
    pub fn set_iface(&mut self, ifindex: u32, iface: EndpointIface) -> Result<(), DatapathError> {
        if self.counters.get(&ifindex, 0).is_err() {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
            let zeroes = PerCpuValues::try_from(vec![EndpointCounters::default(); cpus])
                .map_err(DatapathError::Cpus)?;
            self.counters.insert(ifindex, zeroes, 0)?;
        }
        Ok(self.ifaces.insert(ifindex, iface, 0)?)
    }

    /// Forgets a host veth: its network and its counters.
    pub fn remove_iface(&mut self, ifindex: u32) {
        let _ = self.ifaces.remove(&ifindex);
        let _ = self.counters.remove(&ifindex);
    }

    pub fn set_subnet(&mut self, subnet: Ipv4Net, info: SubnetInfo) -> Result<(), DatapathError> {
        Ok(self.subnets.insert(&subnet_key(subnet), info, 0)?)
    }

    pub fn remove_subnet(&mut self, subnet: Ipv4Net) {
        let _ = self.subnets.remove(&subnet_key(subnet));
    }

    /// The counters of one host veth, summed over CPUs.
    pub fn counters(&self, ifindex: u32) -> EndpointCounters {
        let mut total = EndpointCounters::default();
        if let Ok(per_cpu) = self.counters.get(&ifindex, 0) {
            for counters in per_cpu.iter() {
                total.add(counters);
            }
        }
        total
    }

    /// Makes the maps hold exactly `desired`: entries left by a crash are removed, missing
    /// ones added, and entries that are already right are rewritten in place (no gap).
    pub fn sync(&mut self, desired: &Desired) -> Result<(), DatapathError> {
        let wanted: HashSet<EndpointKey> = desired
            .endpoints
            .keys()
            .map(|(n, ip)| endpoint_key(*n, *ip))
            .collect();
        let stale: Vec<_> = self
            .endpoints
            .keys()
            .flatten()
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            let _ = self.endpoints.remove(&key);
        }
        for ((network, ip), target) in &desired.endpoints {
            self.set_endpoint(*network, *ip, *target)?;
        }

        let stale: Vec<_> = self
            .ifaces
            .keys()
            .flatten()
            .filter(|k| !desired.ifaces.contains_key(k))
            .collect();
        for ifindex in stale {
            self.remove_iface(ifindex);
        }
        let stale: Vec<_> = self
            .counters
            .keys()
            .flatten()
            .filter(|k| !desired.ifaces.contains_key(k))
            .collect();
        for ifindex in stale {
            let _ = self.counters.remove(&ifindex);
        }
        for (ifindex, iface) in &desired.ifaces {
            self.set_iface(*ifindex, *iface)?;
        }

        let wanted: Vec<_> = desired.subnets.keys().map(|s| subnet_key(*s)).collect();
        remove_other_keys(&mut self.subnets, &wanted);
        for (subnet, info) in &desired.subnets {
            self.set_subnet(*subnet, *info)?;
        }
        Ok(())
    }

    pub fn ids(&self) -> DatapathIds {
        let mut program_ids = BTreeMap::new();
        let mut map_ids = BTreeMap::new();
        for (name, program) in self.ebpf.programs() {
            if let Ok(info) = program.info() {
                program_ids.insert(name.to_owned(), info.id());
            }
        }
        let maps = [
            (names::ENDPOINTS, map_id(&self.endpoints)),
            (names::ENDPOINT_IFACES, map_id(&self.ifaces)),
            (names::SUBNETS, map_id(&self.subnets)),
            (names::COUNTERS, map_id(&self.counters)),
            (names::PUBLISHED, map_id(&self.published)),
            (names::HOST_ADDRS, map_id(&self.host_addrs)),
            (names::NAT_CONFIG, map_id(&self.nat_config)),
            (names::CONNTRACK, map_id(&self.conntrack)),
            (names::XDP_REDIRECTS, map_id(&self.xdp_redirects)),
            (names::OVERLAY_ROUTES, map_id(&self.overlay_routes)),
            (names::OVERLAY_VNIS, map_id(&self.overlay_vnis)),
        ];
        for (name, id) in maps {
            if let Some(id) = id {
                map_ids.insert(name.to_owned(), id);
            }
        }
        DatapathIds {
            program_ids,
            map_ids,
        }
    }
}

fn map_id<K: aya::Pod, V>(map: &impl IterableMap<K, V>) -> Option<u32> {
    map.map().info().ok().map(|info| info.id())
}

/// Whether a tracked flow has been idle longer than its timeout: UDP and ICMP by time
/// alone, TCP by state (established until a FIN or RST is seen, closing after).
pub fn is_expired(key: &FlowKey, entry: &NatEntry, now_ns: u64) -> bool {
    let timeout = match key.proto {
        PROTO_TCP if entry.tcp_seen != 0 => NAT_TIMEOUT_TCP_CLOSING_NS,
        PROTO_TCP => NAT_TIMEOUT_TCP_NS,
        _ => NAT_TIMEOUT_UDP_NS,
    };
    now_ns.saturating_sub(entry.last_seen_ns) > timeout
}

/// Removes everything pinned under `root` (maps and links); the kernel frees the objects
/// once the daemon's own file descriptors close.
pub fn remove_pins(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
}

fn endpoint_key(network: u32, ip: Ipv4Addr) -> EndpointKey {
    EndpointKey {
        network,
        addr: IpAddrKey::from_v4(ip.octets()),
    }
}

/// Removes every entry of an LPM trie whose key is not in `wanted`.
fn remove_other_keys<K: aya::Pod + PartialEq, V: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, V>,
    wanted: &[Key<K>],
) {
    let stale: Vec<Key<K>> = trie
        .keys()
        .flatten()
        .filter(|k| {
            !wanted
                .iter()
                .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
        })
        .collect();
    for key in stale {
        let _ = trie.remove(&key);
    }
}

fn subnet_key(subnet: Ipv4Net) -> Key<SubnetKey> {
    Key::new(
        IpAddrKey::V4_MAPPED_PREFIX_BITS + u32::from(subnet.prefix_len()),
        SubnetKey {
            addr: IpAddrKey::from_v4(subnet.network().octets()),
        },
    )
}

#[cfg(test)]
mod tests {
    use netbpf_common::{PROTO_UDP, TCP_SEEN_FIN};

    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn flows_expire_by_protocol_and_tcp_state() {
        let key = |proto| FlowKey {
            proto,
            ..FlowKey::default()
        };
        let entry = |tcp_seen| NatEntry {
            last_seen_ns: 1_000 * SEC,
            tcp_seen,
            ..NatEntry::default()
        };
        let later = |secs| 1_000 * SEC + secs * SEC;
        assert!(!is_expired(&key(PROTO_UDP), &entry(0), later(59)));
        assert!(is_expired(&key(PROTO_UDP), &entry(0), later(61)));
        assert!(!is_expired(&key(PROTO_TCP), &entry(0), later(3_600)));
        assert!(is_expired(&key(PROTO_TCP), &entry(0), later(2 * 3_600 + 1)));
        assert!(is_expired(&key(PROTO_TCP), &entry(TCP_SEEN_FIN), later(11)));
        // A clock older than the entry (it was just touched) never expires it.
        assert!(!is_expired(&key(PROTO_UDP), &entry(0), 0));
    }
}
