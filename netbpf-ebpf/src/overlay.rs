//! VXLAN (RFC 7348) in BPF, without a kernel VXLAN device: encapsulation of packets from a
//! local container to a container in another host's block, and decapsulation of packets
//! arriving on the underlay for a local container.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use netbpf_common::{
    DropReason, EndpointKey, IpAddrKey, MAX_OVERLAY_ROUTES, MAX_OVERLAY_VNIS, OverlayLocal,
    OverlayRoute, OverlayRouteKey, VXLAN_OVERHEAD,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    udp::UdpHdr,
    vxlan::{VXLAN_I_FLAG_MASK, VxlanHdr},
};

use crate::{
    conntrack::v4,
    csum, endpoints,
    parse::{IPPROTO_UDP, ensure_linear, ptr_at},
    tc,
};

#[map]
static OVERLAY_ROUTES: LpmTrie<OverlayRouteKey, OverlayRoute> =
    LpmTrie::pinned(MAX_OVERLAY_ROUTES, 0);

#[map]
static OVERLAY_VNIS: HashMap<u32, OverlayLocal> = HashMap::pinned(MAX_OVERLAY_VNIS, 0);

/// What encapsulation inserts after the outer Ethernet header (which the packet's own
/// becomes): outer IPv4, UDP, VXLAN, and the inner Ethernet header.
#[repr(C)]
struct Encap {
    ip: Ipv4Hdr,
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner_eth: EthHdr,
}
const _: () = assert!(core::mem::size_of::<Encap>() == VXLAN_OVERHEAD as usize);

/// The start of a VXLAN packet on the underlay, as far as decapsulation reads it.
#[repr(C)]
struct VxlanFrame {
    outer_eth: EthHdr,
    outer_ip: Ipv4Hdr,
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner_eth: EthHdr,
    inner_ip: Ipv4Hdr,
}
const _: () = assert!(
    core::mem::size_of::<VxlanFrame>() == VXLAN_OVERHEAD as usize + EthHdr::LEN + Ipv4Hdr::LEN
);

/// The route to the remote block holding `dst`, for a sender on local network `network`.
#[inline(always)]
pub fn route(network: u32, dst: IpAddrKey) -> Option<OverlayRoute> {
    OVERLAY_ROUTES
        .get(Key::new(
            32 + IpAddrKey::V4_MAPPED_PREFIX_BITS + 32,
            OverlayRouteKey { network, addr: dst },
        ))
        .copied()
}

/// Wraps the IPv4 packet in outer IPv4/UDP/VXLAN/Ethernet headers and sends it out of the
/// underlay towards the remote VTEP (`bpf_redirect_neigh` fills in the outer MACs).
#[inline(always)]
pub fn encap(ctx: &TcContext, route: &OverlayRoute) -> tc::Action {
    let Some(inner) = ptr_at::<EthHdr>(ctx, 0) else {
        return Err(DropReason::RewriteFailed);
    };
    // SAFETY: bounds checked by ptr_at.
    let inner_src_mac = unsafe { (*inner).src_addr };
    let inner_ip_len = ctx.len().saturating_sub(EthHdr::LEN as u32);
    let udp_len = (inner_ip_len + VXLAN_OVERHEAD - Ipv4Hdr::LEN as u32) as u16;
    // Receivers spread flows over their queues by the source port, so it comes from the
    // flow hash, in the ephemeral range as Linux's own VXLAN device picks it.
    let sport = 49152 + (tc::flow_hash(ctx) % 16384) as u16;
    let mut ip = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        tot_len: (udp_len + Ipv4Hdr::LEN as u16).to_be_bytes(),
        id: [0; 2],
        frags: [0; 2],
        ttl: 64,
        proto: IPPROTO_UDP,
        check: [0; 2],
        src_addr: v4(&route.local_vtep),
        dst_addr: v4(&route.remote_vtep),
    };
    ip.check = csum::ipv4_header(&ip);
    let headers = Encap {
        ip,
        udp: UdpHdr {
            src: sport.to_be_bytes(),
            dst: route.port.to_be_bytes(),
            len: udp_len.to_be_bytes(),
            // None, as Linux's VXLAN device sends by default over IPv4.
            check: [0; 2],
        },
        vxlan: VxlanHdr::new(route.vni),
        inner_eth: EthHdr {
            dst_addr: route.inner_dst_mac,
            src_addr: inner_src_mac,
            ether_type: EtherType::Ipv4 as u16,
        },
    };
    // ENCAP_L2(14): the inner Ethernet header's length, in the flags' top byte.
    let flags = u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4)
        | u64::from(BPF_F_ADJ_ROOM_ENCAP_L4_UDP)
        | u64::from(BPF_F_ADJ_ROOM_ENCAP_L2_ETH)
        | ((EthHdr::LEN as u64) << 56);
    if ctx
        .adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
        .is_err()
        || ctx.store(EthHdr::LEN, &headers, 0).is_err()
    {
        return Err(DropReason::RewriteFailed);
    }
    tc::redirect_neigh(route.underlay_ifindex)
}

/// On the underlay: a VXLAN packet for a VNI of ours, from the member holding the inner
/// source's block, to a container of ours, is stripped and delivered into that container.
/// Other traffic (not VXLAN, another VNI or port) goes on unchanged; VXLAN of ours that
/// fails a check is dropped.
#[inline(always)]
pub fn decap(ctx: &TcContext) -> tc::Action {
    if !ensure_linear(ctx, core::mem::size_of::<VxlanFrame>()) {
        return Ok(tc::NEXT);
    }
    let Some(frame) = ptr_at::<VxlanFrame>(ctx, 0) else {
        return Ok(tc::NEXT);
    };
    // SAFETY: bounds checked by ptr_at.
    let f = unsafe { &*frame };
    // IPv4 without options (as every VXLAN sender writes it), UDP, not a fragment.
    if f.outer_eth.ether_type != EtherType::Ipv4 as u16
        || f.outer_ip.vihl != 0x45
        || f.outer_ip.proto != IPPROTO_UDP
    {
        return Ok(tc::NEXT);
    }
    if u16::from_be_bytes(f.outer_ip.frags) & 0x3fff != 0 || f.vxlan.flags & VXLAN_I_FLAG_MASK == 0
    {
        return Ok(tc::NEXT);
    }
    // SAFETY: plain data replaced whole by the controller.
    let Some(local) = (unsafe { OVERLAY_VNIS.get(&f.vxlan.vni()) }).copied() else {
        return Ok(tc::NEXT);
    };
    if u16::from_be_bytes(f.udp.dst) != local.port
        || f.inner_eth.ether_type != EtherType::Ipv4 as u16
    {
        return Ok(tc::NEXT);
    }
    check_sender(f, &local)?;
    let key = EndpointKey {
        network: local.network,
        addr: IpAddrKey::from_v4(f.inner_ip.dst_addr),
    };
    // Our VNI, but no such container here: dropped by rule, never passed on.
    let target = endpoints::endpoint(&key).ok_or(DropReason::NoEndpoint)?;
    if ctx
        .adjust_room(-(VXLAN_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, 0)
        .is_err()
        || ctx.store(6, &local.gateway_mac, 0).is_err()
    {
        return Err(DropReason::RewriteFailed);
    }
    tc::redirect_to_peer(ctx, &target)
}

/// Only a member may send into our overlay: the inner source must lie in a block of this
/// VNI's network that the cluster view gives to exactly the VTEP the packet comes from, and
/// the packet must be addressed to our VTEP. The route towards the inner source's block says
/// both, so no map of its own is needed. Anything else is a host on the underlay forging
/// VXLAN (a VNI and a container address are easy to guess).
#[inline(always)]
fn check_sender(f: &VxlanFrame, local: &OverlayLocal) -> Result<(), DropReason> {
    let sender = route(local.network, IpAddrKey::from_v4(f.inner_ip.src_addr))
        .ok_or(DropReason::UnknownVtep)?;
    if v4(&sender.remote_vtep) != f.outer_ip.src_addr
        || v4(&sender.local_vtep) != f.outer_ip.dst_addr
    {
        return Err(DropReason::UnknownVtep);
    }
    Ok(())
}
