//! Address and port rewrites with incremental checksum updates (RFC 1624), through the
//! kernel's `l3_csum_replace`/`l4_csum_replace`, which also handle checksum offload
//! (CHECKSUM_PARTIAL) and UDP's "no checksum" zero correctly.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use network_types::eth::EthHdr;

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
