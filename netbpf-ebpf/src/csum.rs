//! Checksums. In TC programs: address and port rewrites with incremental updates (RFC
//! 1624) through the kernel's `l3_csum_replace`/`l4_csum_replace`, which also handle
//! checksum offload (CHECKSUM_PARTIAL) and UDP's "no checksum" zero correctly. Where no
//! helper exists (XDP, headers the program writes itself): the same arithmetic here, over
//! one fold.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::parse::{IPPROTO_ICMP, IPPROTO_UDP, Ipv4Flow};

/// Offsets inside the IPv4 header.
const IP_CSUM: usize = EthHdr::LEN + 10;
const IP_SRC: usize = EthHdr::LEN + 12;
const IP_DST: usize = EthHdr::LEN + 16;

#[derive(Clone, Copy)]
pub enum Side {
    Src,
    Dst,
}

fn l4_csum_offset(flow: &Ipv4Flow) -> usize {
    flow.l4_offset
        + match flow.proto {
            IPPROTO_UDP => 6,
            IPPROTO_ICMP => 2,
            _ => 16,
        }
}

/// Writes a new address and port on one side of the packet, fixing both checksums.
/// Returns false if the kernel refused a write (the caller drops the packet then: half a
/// rewrite must never leave).
#[inline(always)]
pub fn rewrite(ctx: &TcContext, flow: &Ipv4Flow, side: Side, addr: [u8; 4], port: u16) -> bool {
    let (ip_off, port_off, old_addr, old_port) = match side {
        // An ICMP echo's identifier stands for the port on both sides.
        _ if flow.proto == IPPROTO_ICMP => {
            let (off, old) = if let Side::Src = side {
                (IP_SRC, flow.src)
            } else {
                (IP_DST, flow.dst)
            };
            (off, flow.l4_offset + 4, old, flow.sport)
        }
        Side::Src => (IP_SRC, flow.l4_offset, flow.src, flow.sport),
        Side::Dst => (IP_DST, flow.l4_offset + 2, flow.dst, flow.dport),
    };
    let old_addr = u32::from_ne_bytes(old_addr);
    let new_addr = u32::from_ne_bytes(addr);
    let old_port = old_port.to_be();
    let new_port = port.to_be();
    let csum = l4_csum_offset(flow);
    let udp_flag = if flow.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let addr_flags = u64::from(BPF_F_PSEUDO_HDR) | udp_flag | 4;
    // ICMP's checksum covers no pseudo-header: an address change does not touch it.
    let l4_addr_ok = flow.proto == IPPROTO_ICMP
        || ctx
            .l4_csum_replace(csum, u64::from(old_addr), u64::from(new_addr), addr_flags)
            .is_ok();
    l4_addr_ok
        && ctx
            .l4_csum_replace(csum, u64::from(old_port), u64::from(new_port), udp_flag | 2)
            .is_ok()
        && ctx
            .l3_csum_replace(IP_CSUM, u64::from(old_addr), u64::from(new_addr), 4)
            .is_ok()
        && ctx.store(ip_off, &addr, 0).is_ok()
        && ctx.store(port_off, &new_port, 0).is_ok()
}

/// Folds a 32-bit one's-complement sum to 16 bits and complements it: a checksum field.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The header checksum of an IPv4 header without options (its `check` field counted as 0).
#[inline(always)]
pub fn ipv4_header(ip: &Ipv4Hdr) -> [u8; 2] {
    let word = |a: u8, b: u8| u32::from(u16::from_be_bytes([a, b]));
    let sum = word(ip.vihl, ip.tos)
        + word(ip.tot_len[0], ip.tot_len[1])
        + word(ip.id[0], ip.id[1])
        + word(ip.frags[0], ip.frags[1])
        + word(ip.ttl, ip.proto)
        + word(ip.src_addr[0], ip.src_addr[1])
        + word(ip.src_addr[2], ip.src_addr[3])
        + word(ip.dst_addr[0], ip.dst_addr[1])
        + word(ip.dst_addr[2], ip.dst_addr[3]);
    fold(sum).to_be_bytes()
}

/// RFC 1624 update of a checksum for a 16-bit word changing from `old` to `new` (all
/// values as they are in the packet, big-endian).
#[inline(always)]
pub fn update(csum: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!u16::from_be(csum))
        + u32::from(!u16::from_be(old))
        + u32::from(u16::from_be(new));
    fold(sum).to_be()
}

/// [`update`] for an IPv4 address, two words at a time.
#[inline(always)]
pub fn update_addr(csum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let csum = update(
        csum,
        u16::from_ne_bytes([old[0], old[1]]),
        u16::from_ne_bytes([new[0], new[1]]),
    );
    update(
        csum,
        u16::from_ne_bytes([old[2], old[3]]),
        u16::from_ne_bytes([new[2], new[3]]),
    )
}

/// Replaces the 4 bytes `old` with `new` in a checksum at `csum_offset` that covers them
/// without a pseudo-header (ICMP's, over the packet an error quotes).
#[inline(always)]
pub fn replace_in_l4(ctx: &TcContext, csum_offset: usize, old: &[u8; 4], new: &[u8; 4]) -> bool {
    ctx.l4_csum_replace(
        csum_offset,
        u64::from(u32::from_ne_bytes(*old)),
        u64::from(u32::from_ne_bytes(*new)),
        4,
    )
    .is_ok()
}

/// The same for a 16-bit word (values as they are in the packet).
#[inline(always)]
pub fn replace_word_in_l4(ctx: &TcContext, csum_offset: usize, old: u16, new: u16) -> bool {
    ctx.l4_csum_replace(csum_offset, u64::from(old), u64::from(new), 2)
        .is_ok()
}

/// Writes a new source or destination address in the (outer) IPv4 header, fixing its
/// checksum; the L4 checksum is the caller's (ICMP's has no pseudo-header).
#[inline(always)]
pub fn replace_outer_addr(ctx: &TcContext, side: Side, old: [u8; 4], new: [u8; 4]) -> bool {
    let at = match side {
        Side::Src => IP_SRC,
        Side::Dst => IP_DST,
    };
    ctx.l3_csum_replace(
        IP_CSUM,
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
        4,
    )
    .is_ok()
        && ctx.store(at, &new, 0).is_ok()
}
