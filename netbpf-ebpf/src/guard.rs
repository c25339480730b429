//! Anti-spoofing for frames from a container, before any other decision (NAT included, so a
//! forged source cannot use another container's flows): the Ethernet source, the IPv4
//! source and ARP's sender fields must be the container's own, and IPv6 router
//! advertisements and solicitations never leave it.

use aya_ebpf::programs::TcContext;
use netbpf_common::{DropReason, EndpointIface};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    conntrack::v4,
    parse::{ensure_linear, ptr_at},
};

/// ARP over Ethernet for IPv4, as far as the check reads it.
#[repr(C)]
struct EthArp {
    eth: EthHdr,
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    oper: [u8; 2],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
}

/// An IPv6 packet whose first header after the fixed one may be ICMPv6.
#[repr(C)]
struct EthIpv6Icmp {
    eth: EthHdr,
    ip: Ipv6Hdr,
    icmp_type: u8,
}

const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;

/// Whether the container behind `iface` may send this frame.
#[inline(always)]
pub fn check(ctx: &TcContext, iface: &EndpointIface) -> Result<(), DropReason> {
    // A runt has no source to check; the bridge drops it.
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(());
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let eth = unsafe { &*eth };
    if eth.src_addr != iface.mac {
        return Err(DropReason::SpoofedSource);
    }
    let ether_type = eth.ether_type;
    if ether_type == EtherType::Ipv4 as u16 {
        check_ipv4(ctx, iface)
    } else if ether_type == EtherType::Arp as u16 {
        check_arp(ctx, iface)
    } else if ether_type == EtherType::Ipv6 as u16 {
        check_ipv6(ctx)
    } else {
        Ok(())
    }
}

#[inline(always)]
fn check_ipv4(ctx: &TcContext, iface: &EndpointIface) -> Result<(), DropReason> {
    if !ensure_linear(ctx, EthHdr::LEN + Ipv4Hdr::LEN) {
        // Too short for an IPv4 header: the kernel drops it as malformed.
        return Ok(());
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(DropReason::SpoofedSource)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*ip).src_addr } != v4(&iface.addr) {
        return Err(DropReason::SpoofedSource);
    }
    Ok(())
}

/// ARP's sender fields are what neighbours learn from, so they must be the container's; a
/// probe (RFC 5227) has sender address 0.0.0.0.
#[inline(always)]
fn check_arp(ctx: &TcContext, iface: &EndpointIface) -> Result<(), DropReason> {
    if !ensure_linear(ctx, core::mem::size_of::<EthArp>()) {
        return Ok(());
    }
    let arp = ptr_at::<EthArp>(ctx, 0).ok_or(DropReason::SpoofedSource)?;
    // SAFETY: bounds checked by ptr_at.
    let arp = unsafe { &*arp };
    if arp.hlen != 6 || arp.plen != 4 {
        // Not Ethernet/IPv4 ARP: nothing on the bridge learns from it.
        return Ok(());
    }
    let ip_ok = arp.sender_ip == v4(&iface.addr) || arp.sender_ip == [0; 4];
    if arp.sender_mac != iface.mac || !ip_ok {
        return Err(DropReason::SpoofedSource);
    }
    Ok(())
}

/// Router advertisements and solicitations, directly after the IPv6 header or after a
/// hop-by-hop header (fragmented NDP the kernel refuses itself, RFC 6980).
#[inline(always)]
fn check_ipv6(ctx: &TcContext) -> Result<(), DropReason> {
    if !ensure_linear(ctx, core::mem::size_of::<EthIpv6Icmp>()) {
        return Ok(());
    }
    let Some(pkt) = ptr_at::<EthIpv6Icmp>(ctx, 0) else {
        return Ok(());
    };
    // SAFETY: bounds checked by ptr_at.
    let pkt = unsafe { &*pkt };
    let icmp_type = match pkt.ip.next_hdr {
        IPPROTO_ICMPV6 => pkt.icmp_type,
        IPPROTO_HOPOPTS => {
            // The hop-by-hop header: next header, length in 8-byte units beyond the first 8.
            let off = EthHdr::LEN + Ipv6Hdr::LEN;
            let Ok([next, len]) = ctx.load::<[u8; 2]>(off) else {
                return Ok(());
            };
            if next != IPPROTO_ICMPV6 {
                return Ok(());
            }
            ctx.load::<u8>(off + (usize::from(len) + 1) * 8)
                .unwrap_or(0)
        }
        _ => return Ok(()),
    };
    if icmp_type == ROUTER_SOLICITATION || icmp_type == ROUTER_ADVERTISEMENT {
        return Err(DropReason::RouterAdvertisement);
    }
    Ok(())
}
