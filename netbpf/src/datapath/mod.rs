//! The only module that touches aya: loads the programs ([`Datapath::load`]), attaches and
//! pins them ([`links`]), and gives the controller typed map updates ([`maps`]).
//!
//! Pins under `--bpffs` (docs/architecture.md lists them all):
//!
//! ```text
//! maps/<NAME>                                  every map, pinned by its name in the object
//! links/<host veth>                            one tcx link per endpoint
//! host-links/{uplink-*,overlay-ingress-*,cgroup-*}   links on the host's interfaces and cgroup
//! xdp-links/<host veth>                        container XDP receivers (XDP mode)
//! ```
//!
//! Pinned maps and links keep the fast path running while the daemon is down (crash,
//! `kill -9`, upgrade). A restarted daemon loads the program again, reuses the pinned maps
//! (aya opens pins by name instead of creating maps) and swaps its program into each pinned
//! link with `bpf_link_update`, so traffic never stops.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap},
    programs::{CgroupSockAddr, SchedClassifier, Xdp},
};
use ipnet::Ipv4Net;
use netbpf_common::{
    EndpointCounters, EndpointIface, EndpointKey, EndpointTarget, FlowKey, IpAddrKey, NatConfig,
    NatEntry, OverlayLocal, OverlayRoute, OverlayRouteKey, PublishedKey, PublishedTarget,
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
    conntrack_new: HashMap<MapData, FlowKey, NatEntry>,
    xdp_redirects: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
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

/// Maps the daemon rebuilds whole from its state (or that only count), with the layout
/// this release gives their values. A pin of an older layout is removed before loading, so
/// a new map is made: reusing it would make the new programs fail the verifier (or read
/// past the old values). The old programs keep the old map until their links are swapped.
const REBUILT_MAPS: [(&str, usize); 3] = [
    (names::ENDPOINT_IFACES, size_of::<EndpointIface>()),
    (names::COUNTERS, size_of::<EndpointCounters>()),
    (names::DROPS, size_of::<u64>()),
];

fn unpin_outgrown(maps_dir: &Path) {
    for (name, value_size) in REBUILT_MAPS {
        let pin = maps_dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&pin) else {
            continue;
        };
        if info.value_size() as usize != value_size {
            tracing::info!(
                map = name,
                old = info.value_size(),
                new = value_size,
                "map layout changed: made anew"
            );
            if let Err(error) = std::fs::remove_file(&pin) {
                tracing::warn!(%error, map = name, "cannot remove the outgrown pin");
            }
        }
    }
}

mod batch;
mod links;
mod maps;
pub mod sweep;

pub use maps::{TrackedFlows, endpoint_key, is_expired, subnet_key};

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
        unpin_outgrown(&maps_dir);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)?;
        load_programs(&mut ebpf)?;
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
        let conntrack_new = HashMap::try_from(take(names::CONNTRACK_NEW)?)?;
        let xdp_redirects = PerCpuArray::try_from(take(names::XDP_REDIRECTS)?)?;
        let drops = PerCpuArray::try_from(take(names::DROPS)?)?;
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
            conntrack_new,
            xdp_redirects,
            drops,
            links_dir,
            host_links_dir,
            xdp_links_dir,
        })
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
            (names::CONNTRACK_NEW, map_id(&self.conntrack_new)),
            (names::XDP_REDIRECTS, map_id(&self.xdp_redirects)),
            (names::DROPS, map_id(&self.drops)),
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

/// Loads (and so verifies) every program now, whether or not it gets attached: only loaded
/// programs are verified, and a verifier error must show at start, not at first use.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
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
    Ok(())
}

fn map_id<K: aya::Pod, V>(map: &impl IterableMap<K, V>) -> Option<u32> {
    map.map().info().ok().map(|info| info.id())
}

/// Removes everything pinned under `root` (maps and links); the kernel frees the objects
/// once the daemon's own file descriptors close.
/// Whether anything is pinned under `root`: a data plane an earlier daemon left serving.
pub fn has_pins(root: &Path) -> bool {
    ["maps", "links", "host-links", "xdp-links"]
        .iter()
        .any(|dir| {
            std::fs::read_dir(root.join(dir)).is_ok_and(|mut entries| entries.next().is_some())
        })
}

pub fn remove_pins(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSymbol as _};

    use super::EBPF_OBJECT;

    /// A program with a path to Rust's panic handler ends without an exit instruction, and
    /// whether the verifier sees that depends on where the loader places the handler: it
    /// failed in release builds only. So no program may reach it at all.
    #[test]
    fn no_program_can_reach_the_panic_handler() {
        let object = object::File::parse(EBPF_OBJECT).expect("an ELF object");
        let panics: Vec<&str> = object
            .symbols()
            .filter_map(|s| s.name().ok())
            .filter(|name| name.contains("panicking"))
            .collect();
        assert!(
            panics.is_empty(),
            "the eBPF object links {panics:?}: an index or unwrap the compiler cannot prove \
             in range (llvm-objdump -dr -l on the object shows where)"
        );
    }
}
