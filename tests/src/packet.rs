//! Crafted frames for BPF_PROG_TEST_RUN and a checker that re-parses what a program wrote
//! and says exactly what is wrong (wrong address, bad checksum).

use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const TCP_SYN: u8 = 0x02;

const ETH: usize = 14;

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ip(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

/// Ethernet + IPv4 + `l4` (whose checksum is filled in here), from `src` to `dst`.
fn frame(src: &str, dst: &str, proto: u8, mut l4: Vec<u8>) -> Vec<u8> {
    let (src, dst) = (ip(src), ip(dst));
    let csum_at = match proto {
        TCP => Some(16),
        UDP => Some(6),
        ICMP => Some(2),
        _ => None,
    };
    if let Some(at) = csum_at {
        let mut sum = sum16(&l4);
        if proto != ICMP {
            sum += sum16(&src) + sum16(&dst) + u32::from(proto) + l4.len() as u32;
        }
        let csum = fold(sum);
        l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    }
    let total = (20 + l4.len()) as u16;
    let mut ip_hdr = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    ip_hdr.extend(src);
    ip_hdr.extend(dst);
    let csum = fold(sum16(&ip_hdr));
    ip_hdr[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut out = vec![0x02, 0x42, 0, 0, 0, 1, 0x02, 0x42, 0, 0, 0, 2, 0x08, 0x00];
    out.extend(ip_hdr);
    out.extend(l4);
    out
}

/// `frame` with these Ethernet addresses (the builders use placeholders).
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out
}

/// The frame in hex, for [`INJECT`].
pub fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// `python3 -c INJECT IFACE HEX` sends one raw Ethernet frame out of IFACE, as a hostile
/// neighbour or container would: nothing in the sender's stack checks or routes it.
pub const INJECT: &str = "import socket,sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(bytes.fromhex(sys.argv[2]))";

pub fn tcp(src: (&str, u16), dst: (&str, u16), flags: u8) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
    l4[4..8].copy_from_slice(&1000u32.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = flags;
    l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
    l4.extend(b"payload");
    frame(src.0, dst.0, TCP, l4)
}

pub fn udp(src: (&str, u16), dst: (&str, u16)) -> Vec<u8> {
    let mut l4 = vec![0u8; 8];
    l4[0..2].copy_from_slice(&src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
    l4.extend(b"question");
    let len = l4.len() as u16;
    l4[4..6].copy_from_slice(&len.to_be_bytes());
    frame(src.0, dst.0, UDP, l4)
}

pub fn icmp_echo(src: &str, dst: &str, id: u16) -> Vec<u8> {
    let mut l4 = vec![8, 0, 0, 0];
    l4.extend(id.to_be_bytes());
    l4.extend([0, 1]);
    l4.extend(b"ping data");
    frame(src, dst, ICMP, l4)
}

/// The same frame with 4 bytes of IP options (NOPs), header length and checksums fixed.
pub fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..ETH + 20].to_vec();
    out[ETH] = 0x46;
    out.extend([1, 1, 1, 1]);
    out.extend(&frame[ETH + 20..]);
    let total = (out.len() - ETH) as u16;
    out[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
    out[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
    let csum = fold(sum16(&out[ETH..ETH + 24]));
    out[ETH + 10..ETH + 12].copy_from_slice(&csum.to_be_bytes());
    out
}

/// The frame with an 802.1Q tag after the MAC addresses.
pub fn with_vlan(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend([0x81, 0x00, 0x00, 0x64]);
    out.extend(&frame[12..]);
    out
}

/// What a checker reads back from a (possibly rewritten) frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// Re-parses an IPv4 frame and verifies the IP and L4 checksums from scratch.
pub fn check(frame: &[u8]) -> Result<Seen, String> {
    let ihl = usize::from(frame[ETH] & 0xf) * 4;
    let ip_hdr = &frame[ETH..ETH + ihl];
    if fold(sum16(ip_hdr)) != 0 {
        return Err("IPv4 header checksum is wrong".into());
    }
    let proto = ip_hdr[9];
    let src: [u8; 4] = ip_hdr[12..16].try_into().unwrap();
    let dst: [u8; 4] = ip_hdr[16..20].try_into().unwrap();
    let l4 = &frame[ETH + ihl..];
    let udp_without_csum = proto == UDP && l4[6..8] == [0, 0];
    if !udp_without_csum {
        let mut sum = sum16(l4);
        if proto != ICMP {
            sum += sum16(&src) + sum16(&dst) + u32::from(proto) + l4.len() as u32;
        }
        if fold(sum) != 0 {
            return Err(format!("L4 (protocol {proto}) checksum is wrong"));
        }
    }
    let (sport, dport) = if proto == ICMP {
        let id = u16::from_be_bytes([l4[4], l4[5]]);
        (id, id)
    } else {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    };
    Ok(Seen {
        src: src.into(),
        dst: dst.into(),
        sport,
        dport,
    })
}

/// `inner` (a whole Ethernet frame) in VXLAN (RFC 7348) over UDP to port 4789 with `vni`,
/// from `outer_src` to `outer_dst`, with placeholder outer MACs (see [`with_macs`]). The
/// outer UDP checksum is 0, as Linux's VXLAN device sends it.
pub fn vxlan(outer_src: &str, outer_dst: &str, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 8];
    l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&4789u16.to_be_bytes());
    l4.extend([0x08, 0, 0, 0]);
    l4.extend(&(vni << 8).to_be_bytes());
    l4.extend(inner);
    let len = l4.len() as u16;
    l4[4..6].copy_from_slice(&len.to_be_bytes());
    let mut out = frame(outer_src, outer_dst, UDP, l4);
    // `frame` filled in a UDP checksum; VXLAN senders leave it 0.
    out[ETH + 20 + 6..ETH + 20 + 8].copy_from_slice(&[0, 0]);
    out
}

/// An ARP reply (gratuitous when `sender_ip` is the target too) from `sender_mac` claiming
/// `sender_ip`, broadcast.
pub fn arp_reply(sender_mac: [u8; 6], sender_ip: &str, target_ip: &str) -> Vec<u8> {
    let mut out = vec![0xff; 6];
    out.extend(sender_mac);
    out.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    out.extend(sender_mac);
    out.extend(ip(sender_ip));
    out.extend([0xff; 6]);
    out.extend(ip(target_ip));
    out
}

/// An IPv6 router advertisement to all nodes from `src_mac` (and the link-local address
/// made from it), announcing `prefix`/64 for autoconfiguration — what a rogue router
/// sends. Checksummed, hop limit 255: a receiving kernel accepts it.
pub fn router_advertisement(src_mac: [u8; 6], prefix: std::net::Ipv6Addr) -> Vec<u8> {
    let mut src = [0u8; 16];
    src[0] = 0xfe;
    src[1] = 0x80;
    src[8..11].copy_from_slice(&[src_mac[0] ^ 2, src_mac[1], src_mac[2]]);
    src[11..13].copy_from_slice(&[0xff, 0xfe]);
    src[13..16].copy_from_slice(&src_mac[3..6]);
    let dst: [u8; 16] = "ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
    // Type 134, code 0, checksum, hop limit 64, flags 0, router lifetime 1800 s, reachable
    // and retransmit timers 0; a prefix information option (type 3, 4 × 8 bytes): /64,
    // on-link and autonomous, valid and preferred for a day.
    let mut icmp = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend([3, 4, 64, 0xc0]);
    icmp.extend(86_400u32.to_be_bytes());
    icmp.extend(86_400u32.to_be_bytes());
    icmp.extend([0; 4]);
    icmp.extend(prefix.octets());
    // The source link-layer address option (type 1, 8 bytes).
    icmp.extend([1, 1]);
    icmp.extend(src_mac);
    let len = icmp.len() as u32;
    let sum = sum16(&src) + sum16(&dst) + len + 58 + sum16(&icmp);
    icmp[2..4].copy_from_slice(&fold(sum).to_be_bytes());
    let mut out = vec![0x33, 0x33, 0, 0, 0, 1];
    out.extend(src_mac);
    out.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
    out.extend((len as u16).to_be_bytes());
    out.extend([58, 255]);
    out.extend(src);
    out.extend(dst);
    out.extend(icmp);
    out
}

/// Rewrites an Ethernet + IPv4 + TCP/UDP frame's source address in place, updating the IP
/// and L4 checksums incrementally (RFC 1624), as a flooder varies one template.
pub fn set_ipv4_src(frame: &mut [u8], src: [u8; 4]) {
    let old: [u8; 4] = frame[ETH + 12..ETH + 16].try_into().unwrap();
    let update = |csum: u16| {
        // ~(~HC + ~m + m'), over the two 16-bit words of the address.
        let mut sum = u32::from(!csum);
        for i in [0, 2] {
            sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
            sum += u32::from(u16::from_be_bytes([src[i], src[i + 1]]));
        }
        fold(sum)
    };
    let ip_csum = u16::from_be_bytes([frame[ETH + 10], frame[ETH + 11]]);
    frame[ETH + 10..ETH + 12].copy_from_slice(&update(ip_csum).to_be_bytes());
    let l4 = ETH + usize::from(frame[ETH] & 0xf) * 4;
    let at = l4 + if frame[ETH + 9] == UDP { 6 } else { 16 };
    let l4_csum = u16::from_be_bytes([frame[at], frame[at + 1]]);
    frame[at..at + 2].copy_from_slice(&update(l4_csum).to_be_bytes());
    frame[ETH + 12..ETH + 16].copy_from_slice(&src);
}

/// An ICMP error of `icmp_type`/`code` from `src` to `dst` quoting `about` (an Ethernet
/// frame from the builders above): its IP header and the first 8 bytes after it, as a
/// router quotes them. "Fragmentation needed" (3/4) carries next-hop MTU 1400.
pub fn icmp_error(src: &str, dst: &str, icmp_type: u8, code: u8, about: &[u8]) -> Vec<u8> {
    let ihl = usize::from(about[ETH] & 0xf) * 4;
    let mut l4 = vec![icmp_type, code, 0, 0, 0, 0];
    l4.extend(
        if (icmp_type, code) == (3, 4) {
            1400u16
        } else {
            0
        }
        .to_be_bytes(),
    );
    l4.extend(&about[ETH..ETH + ihl + 8]);
    frame(src, dst, ICMP, l4)
}

/// The packet an ICMP error quotes: its addresses and ports (an echo's identifier as both),
/// after checking the quoted IP header's checksum. [`check`] verifies the rest.
pub fn quoted(frame: &[u8]) -> Result<Seen, String> {
    let at = ETH + usize::from(frame[ETH] & 0xf) * 4 + 8;
    let ihl = usize::from(frame[at] & 0xf) * 4;
    if fold(sum16(&frame[at..at + ihl])) != 0 {
        return Err("the quoted IPv4 header's checksum is wrong".into());
    }
    let l4 = &frame[at + ihl..];
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    let (sport, dport) = if frame[at + 9] == ICMP {
        (port(4), port(4))
    } else {
        (port(0), port(2))
    };
    Ok(Seen {
        src: <[u8; 4]>::try_from(&frame[at + 12..at + 16])
            .unwrap()
            .into(),
        dst: <[u8; 4]>::try_from(&frame[at + 16..at + 20])
            .unwrap()
            .into(),
        sport,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_source_keeps_both_checksums_right() {
        for mut frame in [
            tcp(("100.64.0.0", 40000), ("198.18.0.2", 8080), TCP_SYN),
            udp(("100.64.0.0", 40000), ("198.18.0.2", 53)),
        ] {
            set_ipv4_src(&mut frame, [100, 70, 255, 3]);
            let seen = check(&frame).unwrap();
            assert_eq!(seen.src, Ipv4Addr::new(100, 70, 255, 3));
        }
    }
}
