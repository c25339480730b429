//! netbpf's in-kernel programs. Entry points only; the logic lives in one module per concern.
#![no_std]
#![no_main]

mod bridge;
mod conntrack;
mod csum;
mod dns_steer;
mod drops;
mod endpoints;
mod firewall;
mod guard;
mod icmp;
mod nat;
mod overlay;
mod parse;
mod sock;
mod tc;
mod xdp;

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use netbpf_common::{
    DropReason, EndpointIface, Hook, IFACE_FLAG_INTERNAL, NAT_REWRITE_DST, NAT_REWRITE_SRC,
};

use bridge::Verdict;
use endpoints::Outcome;

/// Attached (tcx ingress) to the host-side veth of every container endpoint, so it sees each
/// packet a container sends. Decides, in order: a source that is not the container's own →
/// dropped (anti-spoofing); a tracked or hairpin NAT flow → translated; same network and
/// known destination → redirected into the peer container's namespace (bypassing the
/// bridge); another host's block of its overlay network → VXLAN; a network the sender is
/// not on → dropped (isolation); everything else → the Linux bridge.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    let ifindex = tc::ingress_ifindex(&ctx);
    // Only ever attached to container veths, each recorded before it comes up: a packet
    // from one the maps do not know is dropped, never bridged unchecked.
    let Some(iface) = endpoints::endpoint_iface(ifindex) else {
        drops::count(Hook::FromContainer, DropReason::UnknownInterface);
        return tc::SHOT;
    };
    let bytes = u64::from(ctx.len());
    let (outcome, result) = container_verdict(&ctx, ifindex, &iface);
    endpoints::count(ifindex, bytes, outcome, result)
}

#[inline(always)]
fn container_verdict(
    ctx: &TcContext,
    ifindex: u32,
    iface: &EndpointIface,
) -> (Outcome, tc::Action) {
    if let Err(reason) = guard::check(ctx, iface) {
        return (Outcome::Passed, Err(reason));
    }
    // An `--internal` network reaches nothing beyond its subnet, published ports on the
    // host's addresses included (no hairpin), and it has no NAT flows of its own.
    let internal = iface.flags & IFACE_FLAG_INTERNAL != 0;
    if !internal && let Some(result) = translate_from_container(ctx) {
        return (Outcome::Translated, result);
    }
    match bridge::decide(ctx, ifindex, iface) {
        Verdict::Redirect(target) => (Outcome::Forwarded, tc::redirect_to_peer(ctx, &target)),
        Verdict::Encap(route) => (Outcome::Forwarded, overlay::encap(ctx, &route)),
        Verdict::Pass => (Outcome::Passed, Ok(tc::PASS)),
        Verdict::Drop(reason) => (Outcome::Passed, Err(reason)),
    }
}

/// Attached (tcx ingress) to the interface holding this host's VTEP address: VXLAN packets
/// from a member of one of our overlay networks, for a local container, are decapsulated
/// and delivered.
#[classifier]
pub fn overlay_ingress(ctx: TcContext) -> i32 {
    drops::settle(Hook::OverlayIngress, overlay::decap(&ctx))
}

/// NAT for packets leaving a container, before the bridge decision: replies of flows that
/// came in through a published port (and later packets of masqueraded flows) get their
/// tracked source back, and so do the container's ICMP errors about them; packets to a
/// published port on a host address (hairpin) go straight to the published container.
/// `None`: not NAT's business.
#[inline(always)]
fn translate_from_container(ctx: &TcContext) -> Option<tc::Action> {
    let Some(flow) = parse::ipv4_flow(ctx) else {
        return icmp::from_container(ctx, &parse::icmp_error(ctx)?);
    };
    if let Some(entry) = conntrack::lookup(&flow) {
        if entry.action == NAT_REWRITE_SRC {
            return Some(nat::apply(ctx, &flow, &entry));
        }
    }
    if nat::is_host_addr(flow.dst) {
        let target = nat::published(flow.dst, flow.dport, flow.proto)?;
        return Some(nat::dnat(ctx, &flow, &target));
    }
    None
}

/// Attached (tcx ingress) to the uplink: packets from outside. Replies of masqueraded flows
/// go back to their container; new flows to a published port are translated to it and
/// delivered with `bpf_redirect_peer`; ICMP errors about either reach the container. Nothing else reaches a container (`firewall`); the
/// rest goes to the host stack unchanged.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    drops::settle(Hook::UplinkIngress, from_outside(&ctx))
}

#[inline(always)]
fn from_outside(ctx: &TcContext) -> tc::Action {
    if let Some(flow) = parse::ipv4_flow(ctx) {
        if let Some(entry) = conntrack::lookup(&flow) {
            if entry.action == NAT_REWRITE_DST {
                return nat::apply(ctx, &flow, &entry);
            }
        }
        if nat::is_host_addr(flow.dst) {
            if let Some(target) = nat::published(flow.dst, flow.dport, flow.proto) {
                return nat::dnat(ctx, &flow, &target);
            }
        }
    } else if let Some(result) = parse::icmp_error(ctx).and_then(|e| icmp::from_outside(ctx, &e)) {
        return result;
    }
    firewall::from_outside(ctx)
}

/// Attached (XDP, driver mode where the NIC supports it) to the uplink: published ports
/// from outside, translated before the kernel allocates an skb and redirected into the
/// container. Whatever it does not handle goes on to `uplink_ingress`.
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    xdp::uplink(&ctx)
}

/// Attached (XDP) to a container's interface when the uplink runs XDP: a veth only accepts
/// frames redirected at the XDP layer if its receiving end has an XDP program.
#[xdp]
pub fn container_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Attached (tcx ingress) to `lo` in containers with the embedded DNS: 127.0.0.11:53 is
/// served by the daemon's socket on another port, leaving 53 to the container.
#[classifier]
pub fn dns_lo_ingress(ctx: TcContext) -> i32 {
    dns_steer::to_server(&ctx)
}

/// Attached (tcx egress) to `lo` in those containers: answers come from port 53.
#[classifier]
pub fn dns_lo_egress(ctx: TcContext) -> i32 {
    dns_steer::from_server(&ctx)
}

/// Attached (tcx egress) to the uplink: container packets leaving the host get the uplink
/// address as source (masquerade), tracked so replies find their way back.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    drops::settle(Hook::UplinkEgress, to_outside(&ctx))
}

#[inline(always)]
fn to_outside(ctx: &TcContext) -> tc::Action {
    let Some(flow) = parse::ipv4_flow(ctx) else {
        // Fragments, ICMP errors, other protocols: nothing NAT translates may leave with a
        // container's address.
        return firewall::untranslated_to_outside(ctx);
    };
    if !endpoints::is_container_addr(flow.src) {
        return Ok(tc::PASS);
    }
    match conntrack::lookup(&flow) {
        // Already on its way out: only the rewrite is left to do.
        Some(entry) if entry.action == NAT_REWRITE_SRC => nat::rewrite_source(ctx, &flow, &entry),
        _ => nat::masquerade(ctx, &flow),
    }
}

/// Socket hooks on the daemon's cgroup: published ports for host processes.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx);
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::from_backend(&ctx);
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    sock::from_backend(&ctx);
    1
}

/// IPv6 sockets reach published ports through `connect()` only: the kernel refuses an
/// IPv4-mapped rewrite in sendmsg6 (ENOTSUPP), so unconnected UDP `sendto([::1]:port)` is
/// not translated.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock::to_backend6(&ctx);
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::from_backend6(&ctx);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    sock::from_backend6(&ctx);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
