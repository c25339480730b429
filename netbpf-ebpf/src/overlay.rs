//! VXLAN (RFC 7348) in BPF, without a kernel VXLAN device: encapsulation of packets from a
//! local container to a container in another host's block, and decapsulation of packets
//! arriving on the underlay for a local container.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::generated::{bpf_get_hash_recalc, bpf_redirect_neigh, bpf_skb_adjust_room},
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use netbpf_common::{
    EndpointKey, IpAddrKey, MAX_OVERLAY_ROUTES, MAX_OVERLAY_VNIS, OverlayLocal, OverlayRoute,
    OverlayRouteKey, VXLAN_OVERHEAD,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    bridge::{self, NEXT},
    conntrack::v4,
    parse::{IPPROTO_UDP, ensure_linear, ptr_at},
};

#[map]
static OVERLAY_ROUTES: LpmTrie<OverlayRouteKey, OverlayRoute> =
    LpmTrie::pinned(MAX_OVERLAY_ROUTES, 0);

#[map]
static OVERLAY_VNIS: HashMap<u32, OverlayLocal> = HashMap::pinned(MAX_OVERLAY_VNIS, 0);

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

/// One's-complement checksum of an IPv4 header.
#[inline(always)]
fn ipv4_checksum(header: &[u8; 20]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([header[i], header[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Wraps the IPv4 packet in outer IPv4/UDP/VXLAN/Ethernet headers and sends it out of the
/// underlay towards the remote VTEP (`bpf_redirect_neigh` fills in the outer MACs).
#[inline(always)]
pub fn encap(ctx: &TcContext, route: &OverlayRoute) -> i32 {
    let Some(inner_src_mac) = ptr_at::<[u8; 6]>(ctx, 6) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: bounds checked by ptr_at.
    let inner_src_mac = unsafe { *inner_src_mac };
    let inner_ip_len = ctx.len().saturating_sub(EthHdr::LEN as u32);
    let udp_len = (inner_ip_len + VXLAN_OVERHEAD - 20) as u16;
    // Receivers spread flows over their queues by the source port, so it comes from the
    // flow hash, in the ephemeral range as Linux's own VXLAN device picks it.
    // SAFETY: the helper only reads the skb behind the context.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let sport = 49152 + (hash % 16384) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(udp_len + 20).to_be_bytes());
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&v4(&route.local_vtep));
    ip[16..20].copy_from_slice(&v4(&route.remote_vtep));
    let check = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut headers = [0u8; 50];
    headers[..20].copy_from_slice(&ip);
    headers[20..22].copy_from_slice(&sport.to_be_bytes());
    headers[22..24].copy_from_slice(&route.port.to_be_bytes());
    headers[24..26].copy_from_slice(&udp_len.to_be_bytes());
    // UDP checksum 0: none, as Linux's VXLAN device sends by default over IPv4.
    headers[28] = 0x08;
    headers[32..35].copy_from_slice(&route.vni.to_be_bytes()[1..]);
    headers[36..42].copy_from_slice(&route.inner_dst_mac);
    headers[42..48].copy_from_slice(&inner_src_mac);
    headers[48..50].copy_from_slice(&[0x08, 0x00]);
    // ENCAP_L2(14): the inner Ethernet header's length, in the flags' top byte.
    let flags = u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4)
        | u64::from(BPF_F_ADJ_ROOM_ENCAP_L4_UDP)
        | u64::from(BPF_F_ADJ_ROOM_ENCAP_L2_ETH)
        | ((EthHdr::LEN as u64) << 56);
    // SAFETY: plain integer arguments; the kernel checks the skb can grow.
    if unsafe { bpf_skb_adjust_room(ctx.skb.skb, VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags) }
        != 0
    {
        return TC_ACT_SHOT;
    }
    if ctx.store(EthHdr::LEN, &headers, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: a null parameter block asks the helper to resolve the outer destination
    // itself; the ifindex is checked by the kernel.
    unsafe { bpf_redirect_neigh(route.underlay_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// On the underlay: a VXLAN packet for a VNI of ours, to a container of ours, is stripped
/// and delivered into that container. Everything else goes on unchanged.
#[inline(always)]
pub fn decap(ctx: &TcContext) -> i32 {
    const OUTER: usize = EthHdr::LEN + Ipv4Hdr::LEN + 8 + 8;
    if !ensure_linear(ctx, OUTER + EthHdr::LEN + Ipv4Hdr::LEN) {
        return NEXT;
    }
    let Some(outer) = ptr_at::<[u8; OUTER + EthHdr::LEN + Ipv4Hdr::LEN]>(ctx, 0) else {
        return NEXT;
    };
    // SAFETY: bounds checked by ptr_at.
    let p = unsafe { &*outer };
    // IPv4 without options (as every VXLAN sender writes it), UDP, not a fragment.
    if p[12..14] != [0x08, 0x00] || p[14] != 0x45 || p[23] != IPPROTO_UDP {
        return NEXT;
    }
    if u16::from_be_bytes([p[20], p[21]]) & 0x3fff != 0 || p[42] & 0x08 == 0 {
        return NEXT;
    }
    let vni = u32::from_be_bytes([0, p[46], p[47], p[48]]);
    // SAFETY: plain data replaced whole by the controller.
    let Some(local) = (unsafe { OVERLAY_VNIS.get(&vni) }).copied() else {
        return NEXT;
    };
    if u16::from_be_bytes([p[36], p[37]]) != local.port || p[62..64] != [0x08, 0x00] {
        return NEXT;
    }
    let dst = [p[80], p[81], p[82], p[83]];
    let key = EndpointKey {
        network: local.network,
        addr: IpAddrKey::from_v4(dst),
    };
    let Some(target) = bridge::endpoint(&key) else {
        // Our VNI, but no such container here: dropped by rule, never passed on.
        return TC_ACT_SHOT;
    };
    // SAFETY: plain integer arguments; the kernel checks the skb is long enough.
    if unsafe { bpf_skb_adjust_room(ctx.skb.skb, -(VXLAN_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, 0) }
        != 0
    {
        return TC_ACT_SHOT;
    }
    if ctx.store(6, &local.gateway_mac, 0).is_err() {
        return TC_ACT_SHOT;
    }
    bridge::redirect_to_peer(ctx, &target)
}
