//! Typed map updates: what the controller writes (endpoints, subnets, published ports,
//! host addresses, NAT settings, overlay routes), reconciling after a restart, counters,
//! and the expiry of tracked flows.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
};

use std::os::fd::AsFd as _;

use aya::maps::{LpmTrie, MapData, PerCpuValues, lpm_trie::Key};
use ipnet::Ipv4Net;
use netbpf_common::{
    DropReason, EndpointCounters, EndpointIface, EndpointKey, EndpointTarget, FlowKey, Hook,
    IpAddrKey, NAT_REWRITE_DST, NAT_REWRITE_SRC, NAT_TIMEOUT_TCP_CLOSING_NS, NAT_TIMEOUT_TCP_NS,
    NAT_TIMEOUT_UDP_NS, NatConfig, NatEntry, OverlayLocal, OverlayRoute, OverlayRouteKey,
    PROTO_ICMP, PROTO_TCP, PublishedKey, PublishedTarget, SubnetInfo, SubnetKey,
};

use super::{Datapath, DatapathError, Desired};

/// How many flows conntrack holds, after an expiry pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackedFlows {
    /// In `CONNTRACK`: masqueraded flows, and flows from outside their client confirmed.
    pub confirmed: usize,
    /// In `CONNTRACK_NEW`: flows from outside not confirmed yet (a SYN flood lands here).
    pub unconfirmed: usize,
}

impl Datapath {
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

    /// Packets the uplink XDP stage has redirected, summed over CPUs.
    pub fn xdp_redirects(&self) -> u64 {
        self.xdp_redirects
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Drops by hook and reason, summed over CPUs; only the counts that are not zero.
    pub fn drops(&self) -> Vec<(Hook, DropReason, u64)> {
        let mut out = vec![];
        for hook in Hook::ALL {
            for reason in DropReason::ALL {
                let n: u64 = self
                    .drops
                    .get(&hook.drop_slot(reason), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                if n > 0 {
                    out.push((hook, reason, n));
                }
            }
        }
        out
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

    /// Deletes every tracked flow of `ip` (as either end, or as the address a rewrite
    /// writes), confirmed or not: the next endpoint given that address must not receive the
    /// old one's flows.
    pub fn forget_flows_of(&mut self, ip: Ipv4Addr) {
        let addr = IpAddrKey::from_v4(ip.octets());
        let of_ip = |key: &FlowKey, entry: &NatEntry| {
            key.src == addr || key.dst == addr || entry.addr == addr
        };
        for map in [&self.conntrack, &self.conntrack_new] {
            let fd = aya::maps::IterableMap::map(map).fd().as_fd();
            let flows: Vec<(FlowKey, NatEntry)> = match super::batch::read_all(fd) {
                Ok(flows) => flows,
                Err(error) => {
                    tracing::warn!(%error, "reading tracked flows");
                    continue;
                }
            };
            let stale: Vec<FlowKey> = flows
                .iter()
                .filter(|(key, entry)| of_ip(key, entry))
                .map(|(key, _)| *key)
                .collect();
            if let Err(error) = super::batch::delete(fd, &stale) {
                tracing::warn!(%error, "forgetting tracked flows");
            }
        }
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

/// The tracked flows to delete at `now_ns`: those idle past their timeout whose other half
/// (a masqueraded flow has two entries, see [`partner`]) is gone or idle too. A one-way flow
/// refreshes only the half its packets use; dropping the other would free its port claim
/// for a second flow while the first still sends.
pub fn expired_flows(flows: &HashMap<FlowKey, NatEntry>, now_ns: u64) -> Vec<FlowKey> {
    let idle = |key: &FlowKey, entry: &NatEntry| is_expired(key, entry, now_ns);
    flows
        .iter()
        .filter(|(key, entry)| idle(key, entry))
        .filter(|(key, entry)| {
            partner(key, entry)
                .and_then(|other| flows.get(&other).map(|e| (other, e)))
                .is_none_or(|(other, e)| idle(&other, e))
        })
        .map(|(key, _)| *key)
        .collect()
}

/// The other half of a masqueraded flow: the reply entry (`NAT_REWRITE_DST`, remote → host
/// port, rewritten to the container) and the forward entry (`NAT_REWRITE_SRC`, container →
/// remote, rewritten to the host port) name each other. An ICMP echo's identifier stands
/// for both ports. A published port's entry has no partner in the map.
pub fn partner(key: &FlowKey, entry: &NatEntry) -> Option<FlowKey> {
    let icmp = key.proto == PROTO_ICMP;
    let flow = |src, sport, dst, dport| FlowKey {
        src,
        dst,
        sport,
        dport,
        proto: key.proto,
        _pad: [0; 3],
    };
    match entry.action {
        NAT_REWRITE_DST => {
            let remote_port = if icmp { entry.port } else { key.sport };
            Some(flow(entry.addr, entry.port, key.src, remote_port))
        }
        NAT_REWRITE_SRC => {
            let remote_port = if icmp { entry.port } else { key.dport };
            Some(flow(key.dst, remote_port, entry.addr, entry.port))
        }
        _ => None,
    }
}

/// The `ENDPOINTS` key of address `ip` on network `network`.
pub fn endpoint_key(network: u32, ip: Ipv4Addr) -> EndpointKey {
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

/// The `SUBNETS` key of a subnet: its IPv4-mapped prefix.
pub fn subnet_key(subnet: Ipv4Net) -> Key<SubnetKey> {
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

    fn v4(s: &str) -> IpAddrKey {
        IpAddrKey::from_v4(s.parse::<Ipv4Addr>().unwrap().octets())
    }

    /// The two entries masquerade makes for container 10.1.0.2:5000 → 192.0.2.9:53 over
    /// host port 61000, as `nat::masquerade` writes them.
    fn masqueraded(proto: u8, last_seen: [u64; 2]) -> [(FlowKey, NatEntry); 2] {
        let icmp = proto == PROTO_ICMP;
        let remote_port = if icmp { 61_000 } else { 53 };
        let reply = FlowKey {
            src: v4("192.0.2.9"),
            dst: v4("198.18.0.2"),
            sport: remote_port,
            dport: 61_000,
            proto,
            _pad: [0; 3],
        };
        let forward = FlowKey {
            src: v4("10.1.0.2"),
            dst: v4("192.0.2.9"),
            sport: 5_000,
            dport: if icmp { 5_000 } else { 53 },
            proto,
            _pad: [0; 3],
        };
        let entry = |addr, port, action, seen| NatEntry {
            addr,
            port,
            action,
            last_seen_ns: seen * SEC,
            ..NatEntry::default()
        };
        [
            (
                reply,
                entry(v4("10.1.0.2"), 5_000, NAT_REWRITE_DST, last_seen[0]),
            ),
            (
                forward,
                entry(v4("198.18.0.2"), 61_000, NAT_REWRITE_SRC, last_seen[1]),
            ),
        ]
    }

    #[test]
    fn the_halves_of_a_masqueraded_flow_name_each_other() {
        for proto in [PROTO_UDP, PROTO_TCP, PROTO_ICMP] {
            let [(reply, reply_entry), (forward, forward_entry)] = masqueraded(proto, [0, 0]);
            assert_eq!(
                partner(&reply, &reply_entry),
                Some(forward),
                "proto {proto}"
            );
            assert_eq!(
                partner(&forward, &forward_entry),
                Some(reply),
                "proto {proto}"
            );
        }
    }

    #[test]
    fn a_one_way_flow_keeps_its_port_claim() {
        // Only the forward half is used (the container sends, nothing comes back).
        let flows: HashMap<FlowKey, NatEntry> = masqueraded(PROTO_UDP, [0, 100]).into();
        assert_eq!(expired_flows(&flows, 120 * SEC), vec![]);
        // Both idle: both go, together.
        assert_eq!(expired_flows(&flows, 200 * SEC).len(), 2);
        // A published port's entry has no partner and expires alone.
        let [(reply, mut entry), _] = masqueraded(PROTO_UDP, [0, 0]);
        entry.action = NAT_REWRITE_SRC;
        let flows = HashMap::from([(reply, entry)]);
        assert_eq!(expired_flows(&flows, 61 * SEC), vec![reply]);
    }
}
