//! Connection tracking for translated flows: LRU hashes from the flow as it appears on the
//! wire to the rewrite its packets need. LRU means a full table forgets the least recently
//! used flows instead of refusing new ones; the daemon also expires idle entries.
//!
//! Flows that come in from outside start in `CONNTRACK_NEW` and move to `CONNTRACK` only
//! once the client has shown it is real: for TCP, an ACK of the container's SYN-ACK (which
//! a spoofing sender never sees), for UDP a second datagram. So a flood of spoofed SYNs
//! churns `CONNTRACK_NEW` and cannot evict established flows (docs/security.md, 4).

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap,
};
use netbpf_common::{
    FlowKey, IpAddrKey, MAX_FLOWS, MAX_NEW_FLOWS, NatEntry, TCP_SEEN_FIN, TCP_SEEN_RST,
    TCP_SEEN_SYNACK,
};

use crate::parse::{IPPROTO_TCP, Ipv4Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

#[map]
static CONNTRACK: LruHashMap<FlowKey, NatEntry> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map]
static CONNTRACK_NEW: LruHashMap<FlowKey, NatEntry> = LruHashMap::pinned(MAX_NEW_FLOWS, 0);

/// What a packet from a flow's client says about the flow, for [`record_inbound`].
pub struct ClientPacket {
    pub proto: u8,
    pub tcp_flags: u8,
    /// TCP acknowledgment number, host order.
    pub ack: u32,
}

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

/// Finds the entry for this packet's direction and notes that the flow is alive. In an
/// unconfirmed flow, a SYN-ACK's sequence number is what the client must acknowledge.
#[inline(always)]
pub fn lookup(flow: &Ipv4Flow) -> Option<NatEntry> {
    let key = key_of(flow);
    if let Some(entry) = CONNTRACK.get_ptr_mut(&key) {
        // SAFETY: the pointer is to a live map value; concurrent writers only store whole
        // timestamps and flag bits, a benign race for expiry bookkeeping.
        return Some(touch(unsafe { &mut *entry }, flow));
    }
    let entry = CONNTRACK_NEW.get_ptr_mut(&key)?;
    // SAFETY: as above.
    let entry = unsafe { &mut *entry };
    if flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        entry.isn = flow.seq;
        entry.tcp_seen |= TCP_SEEN_SYNACK;
    }
    Some(touch(entry, flow))
}

/// The entry for `key`, confirmed or not, without noting the flow alive (an ICMP error
/// about a flow is no sign of life).
#[inline(always)]
pub fn peek(key: &FlowKey) -> Option<NatEntry> {
    // SAFETY: plain data; a racing update yields the old or the new entry, both whole.
    unsafe { CONNTRACK.get(key).or_else(|| CONNTRACK_NEW.get(key)) }.copied()
}

#[inline(always)]
fn touch(entry: &mut NatEntry, flow: &Ipv4Flow) -> NatEntry {
    entry.last_seen_ns = now_ns();
    if flow.tcp_flags & TCP_FIN != 0 {
        entry.tcp_seen |= TCP_SEEN_FIN;
    }
    if flow.tcp_flags & TCP_RST != 0 {
        entry.tcp_seen |= TCP_SEEN_RST;
    }
    *entry
}

/// Records a rewrite for packets matching `key`. With `exclusive`, fails if the key is
/// taken (how masquerade claims a free source port).
#[inline(always)]
pub fn insert(key: &FlowKey, addr: [u8; 4], port: u16, action: u8, exclusive: bool) -> bool {
    let flags = if exclusive { u64::from(BPF_NOEXIST) } else { 0 };
    CONNTRACK
        .insert(key, &new_entry(addr, port, action), flags)
        .is_ok()
}

#[inline(always)]
fn new_entry(addr: [u8; 4], port: u16, action: u8) -> NatEntry {
    NatEntry {
        addr: IpAddrKey::from_v4(addr),
        port,
        action,
        tcp_seen: 0,
        isn: 0,
        last_seen_ns: now_ns(),
    }
}

/// Records the rewrite for the replies of a flow from outside (`key` is the reply
/// direction), on each of its client's packets. A confirmed flow's entry only notes that it
/// is alive: an LRU hash update on every packet (a free-list pop and push) took a quarter
/// of the XDP path's time. A new flow's entry goes to `CONNTRACK_NEW` and moves to
/// `CONNTRACK` on the packet that confirms it ([`confirms`]). A TCP SYN on a tracked tuple
/// clears the FIN or RST its previous connection saw.
#[inline(always)]
pub fn record_inbound(
    key: &FlowKey,
    addr: [u8; 4],
    port: u16,
    action: u8,
    packet: &ClientPacket,
) -> bool {
    let same =
        |e: &NatEntry| e.addr == IpAddrKey::from_v4(addr) && e.port == port && e.action == action;
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: as in `lookup`.
        let entry = unsafe { &mut *entry };
        if same(entry) {
            entry.last_seen_ns = now_ns();
            if packet.tcp_flags & TCP_SYN != 0 {
                entry.tcp_seen = 0;
            }
            return true;
        }
        return insert(key, addr, port, action, false);
    }
    if let Some(entry) = CONNTRACK_NEW.get_ptr_mut(key) {
        // SAFETY: as in `lookup`.
        let entry = unsafe { &mut *entry };
        if same(entry) {
            if !confirms(entry, packet) {
                entry.last_seen_ns = now_ns();
                return true;
            }
            let confirmed = NatEntry {
                tcp_seen: entry.tcp_seen & !TCP_SEEN_SYNACK,
                isn: 0,
                last_seen_ns: now_ns(),
                ..*entry
            };
            let _ = CONNTRACK_NEW.remove(key);
            return CONNTRACK.insert(key, &confirmed, 0).is_ok();
        }
    }
    CONNTRACK_NEW
        .insert(key, &new_entry(addr, port, action), 0)
        .is_ok()
}

/// Whether this client packet proves the client real: for TCP, a non-SYN segment that
/// acknowledges exactly the container's SYN-ACK (an off-path spoofer cannot know its
/// sequence number); for UDP, any second datagram.
#[inline(always)]
fn confirms(entry: &NatEntry, packet: &ClientPacket) -> bool {
    if packet.proto != IPPROTO_TCP {
        return true;
    }
    packet.tcp_flags & TCP_SYN == 0
        && entry.tcp_seen & TCP_SEEN_SYNACK != 0
        && packet.ack == entry.isn.wrapping_add(1)
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
