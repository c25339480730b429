//! The bridge fast path and network isolation for packets leaving a container.
//!
//! The decision is pure lookups in maps the controller keeps:
//! - `ENDPOINT_IFACES[ingress ifindex]` says which network the sender is on;
//! - `SUBNETS` (longest prefix) says which network owns the destination address;
//! - `ENDPOINTS[(network, dst)]` says which veth leads to the destination container.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuHashMap, lpm_trie::Key},
    programs::TcContext,
};
use netbpf_common::{
    DropReason, EndpointCounters, EndpointIface, EndpointKey, EndpointTarget, IFACE_FLAG_INTERNAL,
    IpAddrKey, MAX_ENDPOINTS, MAX_SUBNETS, OverlayRoute, SubnetInfo, SubnetKey,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::parse::{ensure_linear, ptr_at};

#[map]
static ENDPOINTS: HashMap<EndpointKey, EndpointTarget> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map]
static ENDPOINT_IFACES: HashMap<u32, EndpointIface> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map]
static SUBNETS: LpmTrie<SubnetKey, SubnetInfo> = LpmTrie::pinned(MAX_SUBNETS, 0);

#[map]
static COUNTERS: PerCpuHashMap<u32, EndpointCounters> = PerCpuHashMap::pinned(MAX_ENDPOINTS, 0);

/// What to do with one packet from a container.
pub enum Verdict {
    /// Deliver straight into the peer of this host-side veth, with this destination MAC.
    Redirect(EndpointTarget),
    /// Hand it to the Linux bridge unchanged.
    Pass,
    /// To another host's block of the sender's overlay network: VXLAN to it.
    Encap(OverlayRoute),
    Drop(DropReason),
}

/// Decides the fate of a packet that arrived from the container behind `ifindex`.
#[inline(always)]
pub fn decide(ctx: &TcContext, ifindex: u32, iface: &EndpointIface) -> Verdict {
    if !ensure_linear(ctx, EthHdr::LEN + Ipv4Hdr::LEN) {
        return Verdict::Pass;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::Pass;
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != EtherType::Ipv4 as u16 {
        // ARP, IPv6 (not configured on netbpf networks yet) and the rest: the bridge's job.
        return Verdict::Pass;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return Verdict::Pass;
    };
    // SAFETY: as above, bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    // A malformed header is the kernel's to judge (it drops it), never ours to forward.
    if ip.version() != 4 || usize::from(ip.ihl()) < Ipv4Hdr::LEN {
        return Verdict::Pass;
    }
    let dst = IpAddrKey::from_v4(ip.dst_addr);

    let owner = SUBNETS.get(Key::new(
        IpAddrKey::V4_MAPPED_PREFIX_BITS + 32,
        SubnetKey { addr: dst },
    ));
    let internal = iface.flags & IFACE_FLAG_INTERNAL != 0;
    match owner {
        Some(owner) if owner.network == iface.network => {
            let key = EndpointKey {
                network: iface.network,
                addr: dst,
            };
            // SAFETY: the controller only replaces whole entries; a racing update yields
            // either the old or the new target, both valid veths of this network.
            match unsafe { ENDPOINTS.get(&key) } {
                Some(target) if target.host_ifindex != ifindex => Verdict::Redirect(*target),
                _ => Verdict::Pass,
            }
        }
        // The gateway of another network is the host itself, which containers may reach.
        Some(owner) if owner.gateway == dst && !internal => Verdict::Pass,
        Some(_) => Verdict::Drop(DropReason::Isolation),
        None if internal => Verdict::Drop(DropReason::Internal),
        None => match crate::overlay::route(iface.network, dst) {
            Some(route) => Verdict::Encap(route),
            None => Verdict::Pass,
        },
    }
}

/// The endpoint at `key`, if there is one.
#[inline(always)]
pub fn endpoint(key: &EndpointKey) -> Option<EndpointTarget> {
    // SAFETY: entries are plain data replaced whole by the controller.
    unsafe { ENDPOINTS.get(key).copied() }
}

/// Looks up which network the veth `ifindex` belongs to; `None` for foreign interfaces.
#[inline(always)]
pub fn endpoint_iface(ifindex: u32) -> Option<EndpointIface> {
    // SAFETY: entries are plain data replaced whole by the controller.
    unsafe { ENDPOINT_IFACES.get(&ifindex).copied() }
}

/// Rewrites the destination MAC and hands the packet to the peer's namespace.
#[inline(always)]
pub fn redirect_to_peer(ctx: &TcContext, target: &EndpointTarget) -> i32 {
    if ctx.store(0, &target.mac, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: bpf_redirect_peer only takes integers; an unknown or non-veth ifindex makes it
    // return TC_ACT_SHOT, which the caller counts as a drop.
    unsafe { aya_ebpf::helpers::generated::bpf_redirect_peer(target.host_ifindex, 0) as i32 }
}

/// Bumps this CPU's counters of the endpoint behind `ifindex`.
#[inline(always)]
pub fn count(ifindex: u32, update: impl FnOnce(&mut EndpointCounters)) {
    if let Some(counters) = COUNTERS.get_ptr_mut(&ifindex) {
        // SAFETY: a per-CPU map value is only touched by this CPU while the program runs.
        update(unsafe { &mut *counters });
    }
}

pub const PASS: i32 = TC_ACT_OK;
/// tcx's "next program": for hooks shared with other programs (the uplink, which may also
/// be the overlay's VTEP interface), a packet that is not ours must reach them; `PASS`
/// would end the chain there. With no program after, the packet goes on to the stack.
pub const NEXT: i32 = aya_ebpf::bindings::TC_ACT_UNSPEC;
pub const SHOT: i32 = TC_ACT_SHOT;

/// The endpoint that owns `addr` on whichever network's subnet holds it.
#[inline(always)]
pub fn endpoint_by_addr(addr: [u8; 4]) -> Option<EndpointTarget> {
    let addr = IpAddrKey::from_v4(addr);
    let owner = SUBNETS.get(Key::new(
        IpAddrKey::V4_MAPPED_PREFIX_BITS + 32,
        SubnetKey { addr },
    ))?;
    let key = EndpointKey {
        network: owner.network,
        addr,
    };
    // SAFETY: entries are plain data replaced whole by the controller.
    unsafe { ENDPOINTS.get(&key) }.copied()
}

/// Whether `addr` is a container address (in a netbpf subnet, and not its gateway).
#[inline(always)]
pub fn is_container_addr(addr: [u8; 4]) -> bool {
    let addr = IpAddrKey::from_v4(addr);
    match SUBNETS.get(Key::new(
        IpAddrKey::V4_MAPPED_PREFIX_BITS + 32,
        SubnetKey { addr },
    )) {
        Some(owner) => owner.gateway != addr,
        None => false,
    }
}

/// The fast-path target of a published port's container.
#[inline(always)]
pub fn target_of(published: &netbpf_common::PublishedTarget) -> EndpointTarget {
    EndpointTarget {
        host_ifindex: published.host_ifindex,
        mac: published.mac,
        _pad: [0; 2],
    }
}
