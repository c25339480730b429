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
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, IterableMap, LpmTrie, MapData, PerCpuHashMap, PerCpuValues, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use ipnet::Ipv4Net;
use netbpf_common::{
    EndpointCounters, EndpointIface, EndpointKey, EndpointTarget, IpAddrKey, SubnetInfo, SubnetKey,
    names,
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
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
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
    links_dir: PathBuf,
}

impl Datapath {
    /// Loads (and so verifies) every program, reusing maps already pinned under `root`.
    pub fn load(root: &Path) -> Result<Self, DatapathError> {
        let maps_dir = root.join("maps");
        let links_dir = root.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
                path: dir.clone(),
                source,
            })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(names::PROG_FROM_CONTAINER)
            .ok_or(DatapathError::MissingProgram(names::PROG_FROM_CONTAINER))?
            .try_into()?;
        program.load()?;
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let endpoints = HashMap::try_from(take(names::ENDPOINTS)?)?;
        let ifaces = HashMap::try_from(take(names::ENDPOINT_IFACES)?)?;
        let subnets = LpmTrie::try_from(take(names::SUBNETS)?)?;
        let counters = PerCpuHashMap::try_from(take(names::COUNTERS)?)?;
        Ok(Self {
            ebpf,
            endpoints,
            ifaces,
            subnets,
            counters,
            links_dir,
        })
    }

    fn program(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(names::PROG_FROM_CONTAINER)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load")
    }

    fn link_pin(&self, host_veth: &str) -> PathBuf {
        self.links_dir.join(host_veth)
    }

    /// Attaches the fast path to a host-side veth (tcx ingress) and pins the link. If a
    /// pinned link is already there (a restart), the new program replaces the old one in it
    /// atomically instead.
    pub fn attach(&mut self, host_veth: &str) -> Result<(), DatapathError> {
        let pin = self.link_pin(host_veth);
        if pin.exists() {
            match PinnedLink::from_pin(&pin) {
                Ok(pinned) => {
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
                    let program = self.program();
                    let id = program.attach_to_link(link)?;
                    // Dropping our copy closes one fd; the pin keeps the link.
                    drop(program.take_link(id)?);
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, pin = %pin.display(), "stale link pin, attaching anew");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let program = self.program();
        let id = program.attach_with_options(
            host_veth,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        let link = FdLink::try_from(program.take_link(id)?)?;
        link.pin(&pin)?;
        Ok(())
    }

    /// Detaches from a veth by dropping the pin, the link's last reference.
    pub fn detach(&mut self, host_veth: &str) {
        let _ = std::fs::remove_file(self.link_pin(host_veth));
    }

    /// Names of the veths that have a pinned link.
    pub fn pinned_links(&self) -> Vec<String> {
        std::fs::read_dir(&self.links_dir)
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
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
        let stale: Vec<_> = self
            .subnets
            .keys()
            .flatten()
            .filter(|k| {
                !wanted
                    .iter()
                    .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for key in stale {
            let _ = self.subnets.remove(&key);
        }
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

fn subnet_key(subnet: Ipv4Net) -> Key<SubnetKey> {
    Key::new(
        IpAddrKey::V4_MAPPED_PREFIX_BITS + u32::from(subnet.prefix_len()),
        SubnetKey {
            addr: IpAddrKey::from_v4(subnet.network().octets()),
        },
    )
}
