//! Connection tracking for translated flows: an LRU hash from the flow as it appears on the
//! wire to the rewrite its packets need. LRU means a full table forgets the least recently
//! used flows instead of refusing new ones; the daemon also expires idle entries.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap,
};
use netbpf_common::{FlowKey, IpAddrKey, MAX_FLOWS, NatEntry, TCP_SEEN_FIN, TCP_SEEN_RST};

use crate::parse::{Ipv4Flow, TCP_FIN, TCP_RST, TCP_SYN};

#[map]
static CONNTRACK: LruHashMap<FlowKey, NatEntry> = LruHashMap::pinned(MAX_FLOWS, 0);

/// The key of `flow` in the direction it travels.
#[inline(always)]
pub fn key_of(flow: &Ipv4Flow) -> FlowKey {
    FlowKey {
        src: IpAddrKey::from_v4(flow.src),
        dst: IpAddrKey::from_v4(flow.dst),
        sport: flow.sport,
        dport: flow.dport,
        proto: flow.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
pub fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: IpAddrKey::from_v4(src),
        dst: IpAddrKey::from_v4(dst),
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

/// CLOCK_MONOTONIC at tick resolution, which is all expiry needs and cheaper per packet than
/// reading the clock source.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Finds the entry for this packet's direction and notes that the flow is alive.
#[inline(always)]
pub fn lookup(flow: &Ipv4Flow) -> Option<NatEntry> {
    let entry = CONNTRACK.get_ptr_mut(&key_of(flow))?;
    // SAFETY: the pointer is to a live map value; concurrent writers only store whole
    // timestamps and flag bits, a benign race for expiry bookkeeping.
    let entry = unsafe { &mut *entry };
    entry.last_seen_ns = now_ns();
    if flow.tcp_flags & TCP_FIN != 0 {
        entry.tcp_seen |= TCP_SEEN_FIN;
    }
    if flow.tcp_flags & TCP_RST != 0 {
        entry.tcp_seen |= TCP_SEEN_RST;
    }
    Some(*entry)
}

/// Records a rewrite for packets matching `key`. With `exclusive`, fails if the key is
/// taken (how masquerade claims a free source port).
#[inline(always)]
pub fn insert(key: &FlowKey, addr: [u8; 4], port: u16, action: u8, exclusive: bool) -> bool {
    let entry = NatEntry {
        addr: IpAddrKey::from_v4(addr),
        port,
        action,
        tcp_seen: 0,
        _pad: 0,
        last_seen_ns: now_ns(),
    };
    let flags = if exclusive { u64::from(BPF_NOEXIST) } else { 0 };
    CONNTRACK.insert(key, &entry, flags).is_ok()
}

/// Records a rewrite for packets matching `key`, or, when the entry already holds it, only
/// notes that the flow is alive: an LRU hash update on every packet (a free-list pop and
/// push) took a quarter of the XDP path's time. A TCP SYN starts the entry afresh, so a
/// reused 4-tuple does not inherit the FIN or RST its previous connection saw.
#[inline(always)]
pub fn record(key: &FlowKey, addr: [u8; 4], port: u16, action: u8, tcp_flags: u8) -> bool {
    if tcp_flags & TCP_SYN == 0
        && let Some(entry) = CONNTRACK.get_ptr_mut(key)
    {
        // SAFETY: as in `lookup`.
        let entry = unsafe { &mut *entry };
        if entry.addr == IpAddrKey::from_v4(addr) && entry.port == port && entry.action == action {
            entry.last_seen_ns = now_ns();
            return true;
        }
    }
    insert(key, addr, port, action, false)
}

pub fn remove(key: &FlowKey) {
    let _ = CONNTRACK.remove(key);
}

/// The IPv4 bytes of an IPv4-mapped key address.
#[inline(always)]
pub fn v4(addr: &IpAddrKey) -> [u8; 4] {
    [
        addr.octets[12],
        addr.octets[13],
        addr.octets[14],
        addr.octets[15],
    ]
}
