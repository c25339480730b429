//! ICMP errors about translated flows, translated both ways (docs/security.md, 6): a
//! "fragmentation needed" from a router on the way reaches the container whose flow it is,
//! and a container's own errors leave with the host's address, so path-MTU discovery works
//! through published ports and masquerade.
//!
//! An error about a packet A → B travels B' → A, quoting that packet: translating it means
//! rewriting the error's address on one side and the quoted packet's on the other, with the
//! outer IP checksum, the quoted IP checksum and the ICMP checksum (which covers the quoted
//! bytes) all updated. The quoted L4 checksum is left alone: only its first 8 bytes are
//! quoted, and receivers do not verify it.

use aya_ebpf::programs::TcContext;
use netbpf_common::{DropReason, NAT_REWRITE_DST, NAT_REWRITE_SRC};

use crate::{
    conntrack::{self, v4},
    csum::{self, Side},
    endpoints, nat,
    parse::{IPPROTO_ICMP, IcmpError},
    tc,
};

/// The tracked flow the quoted packet belongs to, seen from the other direction: the
/// entry of the packets that come back (`None` if there is none).
#[inline(always)]
fn entry_of_quoted(e: &IcmpError) -> Option<netbpf_common::NatEntry> {
    let q = &e.inner;
    conntrack::peek(&conntrack::key(q.dst, q.dport, q.src, q.sport, q.proto))
}

/// An error from outside, to the host, about a packet the host sent for a container: a
/// masqueraded flow's (its reply entry names the container), or a published port's reply
/// (the quoted source is the published address). Rewritten to the container and delivered
/// into it. `None`: not about one of our flows.
#[inline(always)]
pub fn from_outside(ctx: &TcContext, e: &IcmpError) -> Option<tc::Action> {
    // The error goes back to whoever sent the quoted packet.
    if e.dst != e.inner.src {
        return None;
    }
    if let Some(entry) = entry_of_quoted(e) {
        if entry.action == NAT_REWRITE_DST {
            let container = v4(&entry.addr);
            let target = endpoints::endpoint_by_addr(container)?;
            return Some(
                rewrite(ctx, e, Side::Dst, container, entry.port)
                    .and_then(|()| tc::redirect_to_peer(ctx, &target)),
            );
        }
    }
    if !nat::is_host_addr(e.inner.src) {
        return None;
    }
    let target = nat::published(e.inner.src, e.inner.sport, e.inner.proto)?;
    let backend = v4(&target.addr);
    // Only for a flow that exists: the backend's replies to the quoted destination.
    let reply = conntrack::key(
        backend,
        target.port,
        e.inner.dst,
        e.inner.dport,
        e.inner.proto,
    );
    conntrack::peek(&reply)?;
    Some(
        rewrite(ctx, e, Side::Dst, backend, target.port)
            .and_then(|()| tc::redirect_to_peer(ctx, &endpoints::target_of(&target))),
    )
}

/// A container's error about a packet of a translated flow it received (a published
/// port's client, a masqueraded flow's server): rewritten to come from the address and port
/// the other end knows, and sent out of the uplink (or into the container it is for).
#[inline(always)]
pub fn from_container(ctx: &TcContext, e: &IcmpError) -> Option<tc::Action> {
    // A container speaks only for packets it received (its source is checked already).
    if e.src != e.inner.dst {
        return None;
    }
    let entry = entry_of_quoted(e)?;
    if entry.action != NAT_REWRITE_SRC {
        return None;
    }
    let result = rewrite(ctx, e, Side::Src, v4(&entry.addr), entry.port);
    Some(
        result.and_then(|()| match endpoints::endpoint_by_addr(e.dst) {
            Some(target) => tc::redirect_to_peer(ctx, &target),
            None => match nat::config() {
                Some(cfg) => tc::redirect_neigh(cfg.uplink_ifindex),
                None => Ok(tc::PASS),
            },
        }),
    )
}

/// `Side::Dst`: the error's destination and the quoted source become `addr` (and the
/// quoted source port `port`); `Side::Src`: the error's source and the quoted destination.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    e: &IcmpError,
    side: Side,
    addr: [u8; 4],
    port: u16,
) -> Result<(), DropReason> {
    let q = &e.inner;
    let echo = q.proto == IPPROTO_ICMP;
    let (outer_old, inner_old, inner_addr_at, old_port, port_at) = match side {
        Side::Dst => (e.dst, q.src, 12, q.sport, if echo { 4 } else { 0 }),
        Side::Src => (e.src, q.dst, 16, q.dport, if echo { 4 } else { 2 }),
    };
    let icmp_csum = e.icmp_offset + 2;
    let inner_csum_at = e.inner_ip_offset + 10;
    let failed = |_| DropReason::RewriteFailed;
    let old_inner_csum: u16 = ctx.load(inner_csum_at).map_err(failed)?;
    let new_inner_csum = csum::update_addr(old_inner_csum, inner_old, addr);
    let (old_port, new_port) = (old_port.to_be(), port.to_be());
    let ok = csum::replace_in_l4(ctx, icmp_csum, &inner_old, &addr)
        && csum::replace_word_in_l4(ctx, icmp_csum, old_inner_csum, new_inner_csum)
        && csum::replace_word_in_l4(ctx, icmp_csum, old_port, new_port)
        && csum::replace_outer_addr(ctx, side, outer_old, addr)
        && ctx
            .store(e.inner_ip_offset + inner_addr_at, &addr, 0)
            .is_ok()
        && ctx.store(inner_csum_at, &new_inner_csum, 0).is_ok()
        && ctx.store(q.l4_offset + port_at, &new_port, 0).is_ok();
    if ok {
        Ok(())
    } else {
        Err(DropReason::RewriteFailed)
    }
}
