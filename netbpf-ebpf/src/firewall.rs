//! What the uplink lets through once NAT has had its say (docs/security.md): from the LAN,
//! nothing reaches a container address or a loopback address; towards the LAN, nothing
//! leaves with a container's address. NAT's own paths (published ports, replies of
//! tracked flows) are decided before these checks run.

use aya_ebpf::programs::TcContext;
use netbpf_common::DropReason;

use crate::{endpoints, parse, tc};

/// An untranslated packet from outside: to a container address it is direct routing (a LAN
/// host with a route to a container subnet via this host), to 127/8 a martian no program
/// may translate. Both are dropped; the rest is the host's own traffic.
#[inline(always)]
pub fn from_outside(ctx: &TcContext) -> tc::Action {
    let Some((_, dst)) = parse::ipv4_addrs(ctx) else {
        return Ok(tc::NEXT);
    };
    if dst[0] == 127 {
        return Err(DropReason::LoopbackDestination);
    }
    if endpoints::is_container_addr(dst) {
        return Err(DropReason::NotPublished);
    }
    Ok(tc::NEXT)
}

/// A packet leaving through the uplink that NAT could not parse as a flow (a fragment, an
/// ICMP error, another protocol): with a container's source address it is dropped, never
/// let out with a private address.
#[inline(always)]
pub fn untranslated_to_outside(ctx: &TcContext) -> tc::Action {
    match parse::ipv4_addrs(ctx) {
        Some((src, _)) if endpoints::is_container_addr(src) => Err(DropReason::Untranslatable),
        _ => Ok(tc::PASS),
    }
}
