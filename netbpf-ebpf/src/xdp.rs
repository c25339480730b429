//! The XDP stage on the uplink: published ports translated at the driver, before an skb
//! exists. It handles only the common case — a whole, well-formed TCP/UDP datagram to a
//! published port — and passes everything else (replies of masqueraded flows included) to
//! the tcx programs, which handle every case.
//!
//! XDP has no checksum helpers, so checksums are updated with `csum`'s RFC 1624 arithmetic.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    helpers::generated::{bpf_redirect, bpf_xdp_store_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use netbpf_common::{DropReason, Hook, NAT_REWRITE_SRC, PUBLISHED_FLAG_NO_XDP, PublishedTarget};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    conntrack::{self, ClientPacket, v4},
    csum, drops, nat,
    parse::{IPPROTO_TCP, IPPROTO_UDP, ptr_at},
};

/// Packets the XDP stage translated and redirected (per CPU), so users and tests can see
/// that the XDP path, not the tcx fallback, carried them.
#[map]
static XDP_REDIRECTS: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// Packet data as the XDP stage reads it: the L4 header's position and the ports.
struct Datagram {
    ip: *mut Ipv4Hdr,
    l4_offset: usize,
    proto: u8,
    /// TCP flags byte (0 for UDP).
    tcp_flags: u8,
    /// TCP acknowledgment number, host order (0 for UDP).
    ack: u32,
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<Datagram> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: ptr_at checked the header lies inside the packet.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return None;
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)?;
    // SAFETY: as above.
    let hdr = unsafe { &*ip };
    let ihl = usize::from(hdr.ihl());
    if hdr.version() != 4 || ihl < Ipv4Hdr::LEN || ihl > 60 {
        return None;
    }
    if u16::from_be_bytes(hdr.frags) & 0x3fff != 0 {
        return None;
    }
    let proto = hdr.proto;
    let l4_offset = EthHdr::LEN + ihl;
    let (tcp_flags, ack) = match proto {
        IPPROTO_TCP => {
            let tcp = ptr_at::<[u8; 20]>(ctx, l4_offset)?;
            // SAFETY: bounds checked by ptr_at.
            let tcp = unsafe { &*tcp };
            if usize::from(tcp[12] >> 4) * 4 < 20 {
                return None;
            }
            (
                tcp[13],
                u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
            )
        }
        IPPROTO_UDP => {
            ptr_at::<[u8; 8]>(ctx, l4_offset)?;
            (0, 0)
        }
        _ => return None,
    };
    Some(Datagram {
        ip,
        l4_offset,
        proto,
        tcp_flags,
        ack,
    })
}

/// Translates a packet for a published port and redirects it into the container's veth;
/// `XDP_PASS` for anything else.
#[inline(always)]
pub fn uplink(ctx: &XdpContext) -> u32 {
    let Some(d) = parse(ctx) else {
        return XDP_PASS;
    };
    // SAFETY: `parse` checked the IPv4 header is inside the packet.
    let (src, dst) = unsafe { ((*d.ip).src_addr, (*d.ip).dst_addr) };
    if !nat::is_host_addr(dst) {
        return XDP_PASS;
    }
    let Some(ports) = ptr_at::<[u8; 4]>(ctx, d.l4_offset) else {
        return XDP_PASS;
    };
    // SAFETY: bounds checked by ptr_at.
    let raw = unsafe { *ports };
    let sport = u16::from_be_bytes([raw[0], raw[1]]);
    let dport = u16::from_be_bytes([raw[2], raw[3]]);
    let Some(target) = nat::published(dst, dport, d.proto) else {
        return XDP_PASS;
    };
    if target.flags & PUBLISHED_FLAG_NO_XDP != 0 {
        // Its veth cannot take XDP-redirected frames: tcx delivers it.
        return XDP_PASS;
    }
    match translate(ctx, &d, src, sport, dst, dport, &target) {
        Ok(action) => action,
        Err(reason) => {
            drops::count(Hook::UplinkXdp, reason);
            XDP_DROP
        }
    }
}

#[inline(always)]
fn translate(
    ctx: &XdpContext,
    d: &Datagram,
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    target: &PublishedTarget,
) -> Result<u32, DropReason> {
    let backend = v4(&target.addr);
    let reply = conntrack::key(backend, target.port, src, sport, d.proto);
    let packet = ClientPacket {
        proto: d.proto,
        tcp_flags: d.tcp_flags,
        ack: d.ack,
    };
    if !conntrack::record_inbound(&reply, dst, dport, NAT_REWRITE_SRC, &packet) {
        return Err(DropReason::ConntrackFull);
    }
    let csum_offset = d.l4_offset + if d.proto == IPPROTO_UDP { 6 } else { 16 };
    let l4_csum = ptr_at::<u16>(ctx, csum_offset).ok_or(DropReason::RewriteFailed)?;
    let dport_ptr = ptr_at::<u16>(ctx, d.l4_offset + 2).ok_or(DropReason::RewriteFailed)?;
    let new_port = target.port.to_be();
    // SAFETY: every pointer was bounds-checked above; XDP owns the frame while it runs.
    unsafe {
        let ip = &mut *d.ip;
        ip.check = csum::update_addr(u16::from_ne_bytes(ip.check), dst, backend).to_ne_bytes();
        ip.dst_addr = backend;
        let old = *l4_csum;
        // UDP checksum 0 means "none": it stays 0. A computed 0 is sent as 0xffff.
        if !(d.proto == IPPROTO_UDP && old == 0) {
            let mut l4 = csum::update_addr(old, dst, backend);
            l4 = csum::update(l4, *dport_ptr, new_port);
            if d.proto == IPPROTO_UDP && l4 == 0 {
                l4 = 0xffff;
            }
            *l4_csum = l4;
        }
        *dport_ptr = new_port;
        // Through the helper: the compiler folds a bounds check at offset 0 into the later
        // ones, which the verifier cannot follow.
        let mut mac = target.mac;
        if bpf_xdp_store_bytes(ctx.ctx, 0, mac.as_mut_ptr().cast(), 6) != 0 {
            return Err(DropReason::RewriteFailed);
        }
        // An unknown ifindex makes bpf_redirect return XDP_ABORTED.
        if bpf_redirect(target.host_ifindex, 0) as u32 != XDP_REDIRECT {
            return Err(DropReason::RedirectFailed);
        }
        if let Some(count) = XDP_REDIRECTS.get_ptr_mut(0) {
            *count += 1;
        }
        Ok(XDP_REDIRECT)
    }
}
