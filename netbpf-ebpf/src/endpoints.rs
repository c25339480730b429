//! The endpoint maps the controller keeps, and the lookups every path shares:
//! - `ENDPOINT_IFACES[host veth ifindex]`: which network a container's packets are on;
//! - `SUBNETS` (longest prefix): which network owns an address, and its gateway;
//! - `ENDPOINTS[(network, address)]`: which veth leads to the container with that address;
//! - `COUNTERS[host veth ifindex]`: per-CPU packet counters and drop reasons.
//!
//! Map names are the pin names: they never change, so pins survive upgrades.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuHashMap, lpm_trie::Key},
};
use netbpf_common::{
    DropReason, EndpointCounters, EndpointIface, EndpointKey, EndpointTarget, Hook, IpAddrKey,
    MAX_ENDPOINTS, MAX_SUBNETS, PublishedTarget, SubnetInfo, SubnetKey,
};

use crate::{drops, tc};

#[map]
static ENDPOINTS: HashMap<EndpointKey, EndpointTarget> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map]
static ENDPOINT_IFACES: HashMap<u32, EndpointIface> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map]
static SUBNETS: LpmTrie<SubnetKey, SubnetInfo> = LpmTrie::pinned(MAX_SUBNETS, 0);

#[map]
static COUNTERS: PerCpuHashMap<u32, EndpointCounters> = PerCpuHashMap::pinned(MAX_ENDPOINTS, 0);

/// The network whose subnet holds `addr`.
#[inline(always)]
pub fn subnet_of(addr: IpAddrKey) -> Option<&'static SubnetInfo> {
    SUBNETS.get(Key::new(
        IpAddrKey::V4_MAPPED_PREFIX_BITS + 32,
        SubnetKey { addr },
    ))
}

/// The endpoint at `key`, if there is one.
#[inline(always)]
pub fn endpoint(key: &EndpointKey) -> Option<EndpointTarget> {
    // SAFETY: the controller only replaces whole entries; a racing update yields either
    // the old or the new target, both valid veths of this network.
    unsafe { ENDPOINTS.get(key).copied() }
}

/// Which network the veth `ifindex` belongs to; `None` for foreign interfaces.
#[inline(always)]
pub fn endpoint_iface(ifindex: u32) -> Option<EndpointIface> {
    // SAFETY: entries are plain data replaced whole by the controller.
    unsafe { ENDPOINT_IFACES.get(&ifindex).copied() }
}

/// The endpoint that owns `addr` on whichever network's subnet holds it.
#[inline(always)]
pub fn endpoint_by_addr(addr: [u8; 4]) -> Option<EndpointTarget> {
    let addr = IpAddrKey::from_v4(addr);
    let owner = subnet_of(addr)?;
    endpoint(&EndpointKey {
        network: owner.network,
        addr,
    })
}

/// Whether `addr` is a container address (in a netbpf subnet, and not its gateway).
#[inline(always)]
pub fn is_container_addr(addr: [u8; 4]) -> bool {
    let addr = IpAddrKey::from_v4(addr);
    subnet_of(addr).is_some_and(|owner| owner.gateway != addr)
}

/// The fast-path target of a published port's container.
#[inline(always)]
pub fn target_of(published: &PublishedTarget) -> EndpointTarget {
    EndpointTarget {
        host_ifindex: published.host_ifindex,
        mac: published.mac,
        _pad: [0; 2],
    }
}

/// What became of a packet from a container that was not dropped, for its counters.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// NAT translated it (counted as fast only if it was redirected).
    Translated,
    /// The fast path sent it on (into a peer, or VXLAN to another host).
    Forwarded,
    /// Left to the Linux bridge.
    Passed,
}

/// Counts one packet of `bytes` from the endpoint behind `ifindex` on this CPU, and
/// returns its tc action. A drop is counted on the endpoint and at its hook.
#[inline(always)]
pub fn count(ifindex: u32, bytes: u64, outcome: Outcome, result: tc::Action) -> i32 {
    let counters = COUNTERS.get_ptr_mut(&ifindex);
    let action = match result {
        Ok(action) => action,
        Err(reason) => {
            drops::count(Hook::FromContainer, reason);
            if let Some(c) = counters {
                // SAFETY: a per-CPU map value is only touched by this CPU while the
                // program runs.
                count_drop(unsafe { &mut *c }, reason);
            }
            return tc::SHOT;
        }
    };
    let Some(c) = counters else {
        return action;
    };
    // SAFETY: as above.
    let c = unsafe { &mut *c };
    match outcome {
        Outcome::Translated | Outcome::Forwarded if action == tc::REDIRECT => {
            c.fast_packets += 1;
            c.fast_bytes += bytes;
        }
        Outcome::Translated | Outcome::Forwarded => {}
        Outcome::Passed => {
            c.passed_packets += 1;
            c.passed_bytes += bytes;
        }
    }
    action
}

/// `get_mut`, not indexing: every reason is in range, but an index the compiler cannot
/// prove so becomes a call to the panic handler, which ends the program without an exit
/// instruction and so fails the verifier.
#[inline(always)]
fn count_drop(c: &mut EndpointCounters, reason: DropReason) {
    if let Some(drops) = c.drops.get_mut(reason as usize) {
        *drops += 1;
    }
}
