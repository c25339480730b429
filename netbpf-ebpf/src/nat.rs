//! Published ports (DNAT) and egress masquerade (SNAT): the maps the controller fills and
//! the translations built on `conntrack` and `csum`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
    programs::TcContext,
};
use netbpf_common::{
    DropReason, IpAddrKey, MAX_HOST_ADDRS, MAX_PUBLISHED, NAT_REWRITE_DST, NAT_REWRITE_SRC,
    NatConfig, NatEntry, PublishedKey, PublishedTarget,
};

use crate::{
    conntrack::{self, ClientPacket, v4},
    csum::{self, Side},
    endpoints,
    parse::{IPPROTO_ICMP, Ipv4Flow},
    tc,
};

#[map]
static PUBLISHED: HashMap<PublishedKey, PublishedTarget> = HashMap::pinned(MAX_PUBLISHED, 0);

/// Every IPv4 address of the host namespace (value unused): what "the host" means for a
/// port published on all addresses.
#[map]
static HOST_ADDRS: HashMap<IpAddrKey, u32> = HashMap::pinned(MAX_HOST_ADDRS, 0);

#[map]
static NAT_CONFIG: Array<NatConfig> = Array::pinned(1, 0);

#[inline(always)]
pub fn config() -> Option<NatConfig> {
    NAT_CONFIG.get(0).copied()
}

/// Whether `addr` is one of the host's own addresses, as packets from outside and from
/// containers may name it. Never a loopback address (the controller keeps them out of the
/// map, and a map a previous release filled may still hold them): 127/8 from the wire is
/// never translated.
#[inline(always)]
pub fn is_host_addr(addr: [u8; 4]) -> bool {
    // SAFETY: plain data replaced whole by the controller.
    addr[0] != 127 && unsafe { HOST_ADDRS.get(&IpAddrKey::from_v4(addr)) }.is_some()
}

/// The published port for `addr:port`: bound to all addresses, or to exactly that one. The
/// controller never lets both exist for one port (as Docker, it refuses the overlap), so
/// the order only decides cost: all-addresses, the common `-p`, takes one lookup.
#[inline(always)]
pub fn published(addr: [u8; 4], port: u16, proto: u8) -> Option<PublishedTarget> {
    let mut key = PublishedKey {
        addr: IpAddrKey::from_v4([0; 4]),
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: plain data replaced whole by the controller.
    if let Some(target) = unsafe { PUBLISHED.get(&key) } {
        return Some(*target);
    }
    key.addr = IpAddrKey::from_v4(addr);
    // SAFETY: as above.
    unsafe { PUBLISHED.get(&key) }.copied()
}

/// Translates a packet for a published port to its container and delivers it there. The
/// reply direction is recorded so replies get the host address back as their source.
#[inline(always)]
pub fn dnat(ctx: &TcContext, flow: &Ipv4Flow, target: &PublishedTarget) -> tc::Action {
    let backend = v4(&target.addr);
    let reply = conntrack::key(backend, target.port, flow.src, flow.sport, flow.proto);
    let packet = ClientPacket {
        proto: flow.proto,
        tcp_flags: flow.tcp_flags,
        ack: flow.ack,
    };
    if !conntrack::record_inbound(&reply, flow.dst, flow.dport, NAT_REWRITE_SRC, &packet) {
        return Err(DropReason::ConntrackFull);
    }
    rewrite(ctx, flow, Side::Dst, backend, target.port)?;
    tc::redirect_to_peer(ctx, &endpoints::target_of(target))
}

/// Applies a tracked rewrite and sends the packet on: into a container when the
/// destination is one, otherwise out of the uplink through the neighbour table.
#[inline(always)]
pub fn apply(ctx: &TcContext, flow: &Ipv4Flow, entry: &NatEntry) -> tc::Action {
    let (side, dst) = if entry.action == NAT_REWRITE_DST {
        (Side::Dst, v4(&entry.addr))
    } else {
        (Side::Src, flow.dst)
    };
    rewrite(ctx, flow, side, v4(&entry.addr), entry.port)?;
    if let Some(target) = endpoints::endpoint_by_addr(dst) {
        return tc::redirect_to_peer(ctx, &target);
    }
    match config() {
        Some(cfg) if entry.action == NAT_REWRITE_SRC => tc::redirect_neigh(cfg.uplink_ifindex),
        _ => Ok(tc::PASS),
    }
}

/// Rewrites the source of a packet already leaving through the uplink.
#[inline(always)]
pub fn rewrite_source(ctx: &TcContext, flow: &Ipv4Flow, entry: &NatEntry) -> tc::Action {
    rewrite(ctx, flow, Side::Src, v4(&entry.addr), entry.port)?;
    Ok(tc::PASS)
}

/// `csum::rewrite` as an action step: a refused write drops the packet.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    flow: &Ipv4Flow,
    side: Side,
    addr: [u8; 4],
    port: u16,
) -> Result<(), DropReason> {
    if csum::rewrite(ctx, flow, side, addr, port) {
        Ok(())
    } else {
        Err(DropReason::RewriteFailed)
    }
}

/// Source-NATs a container's packet to the uplink address, claiming a source port for a
/// new flow: a few hashed probes in the configured range, which the host reserves for
/// masquerade, so a container's flow never takes a host socket's 4-tuple (its own port is
/// not kept: the host may be using it).
#[inline(always)]
pub fn masquerade(ctx: &TcContext, flow: &Ipv4Flow) -> tc::Action {
    let Some(cfg) = config() else {
        return Ok(tc::PASS);
    };
    let host = v4(&cfg.uplink_addr);
    let span = u32::from(cfg.port_max.saturating_sub(cfg.port_min)) + 1;
    let seed = u32::from_ne_bytes(flow.src)
        ^ u32::from_ne_bytes(flow.dst)
        ^ (u32::from(flow.sport) << 16 | u32::from(flow.dport));
    let mut i: u32 = 0;
    while i < 8 {
        let port = cfg.port_min
            + (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 40_503) % span) as u16;
        i += 1;
        if published(host, port, flow.proto).is_some() {
            continue;
        }
        // An echo reply carries the (new) identifier in both "port" slots.
        let reply_sport = if flow.proto == IPPROTO_ICMP {
            port
        } else {
            flow.dport
        };
        let reply = conntrack::key(flow.dst, reply_sport, host, port, flow.proto);
        if !conntrack::insert(&reply, flow.src, flow.sport, NAT_REWRITE_DST, true) {
            continue;
        }
        let forward = conntrack::key_of(flow);
        if !conntrack::insert(&forward, host, port, NAT_REWRITE_SRC, false) {
            conntrack::remove(&reply);
            return Err(DropReason::ConntrackFull);
        }
        rewrite(ctx, flow, Side::Src, host, port)?;
        return Ok(tc::PASS);
    }
    // Every probe collided: drop rather than leak an untranslated container address.
    Err(DropReason::PortsExhausted)
}
