//! Bounds-checked access to packet headers (an skb's linear data, or an XDP frame).

use aya_ebpf::programs::{TcContext, XdpContext};

/// A program context whose packet bytes the program reads in place.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset` in the packet, or `None` when the packet is too short.
///
/// The check against `data_end` is what the verifier needs to accept the later access.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    let size = core::mem::size_of::<T>();
    if start + offset + size > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Makes sure the first `len` bytes are in the linear area, pulling them in if needed.
///
/// Returns false for packets shorter than `len`: they are not ours to judge.
#[inline(always)]
pub fn ensure_linear(ctx: &TcContext, len: usize) -> bool {
    if ctx.data() + len <= ctx.data_end() {
        return true;
    }
    if (ctx.len() as usize) < len {
        return false;
    }
    ctx.pull_data(len as u32).is_ok() && ctx.data() + len <= ctx.data_end()
}

use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

/// A TCP or UDP packet over IPv4 that NAT may translate, with what it needs to know.
pub struct Ipv4Flow {
    /// Offset of the L4 header (after any IP options).
    pub l4_offset: usize,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgment numbers, host order (0 for UDP and ICMP).
    pub seq: u32,
    pub ack: u32,
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Parses Ethernet + IPv4 + TCP/UDP, or an ICMP echo request/reply, whose identifier
/// plays the part of both ports (that is how masquerade tells pings apart). `None` for anything NAT must leave alone: other
/// protocols, VLAN-tagged frames, fragments (no ports after the first), malformed headers
/// (bad version, header length, TCP data offset) and truncated packets.
#[inline(always)]
pub fn ipv4_flow(ctx: &TcContext) -> Option<Ipv4Flow> {
    let ip = ipv4_header(ctx)?;
    let ihl = usize::from(ip.ihl());
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN || ihl > 60 {
        return None;
    }
    // More-fragments flag or a fragment offset: not a whole datagram with ports.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return None;
    }
    let proto = ip.proto;
    let (src, dst) = (ip.src_addr, ip.dst_addr);
    let l4_offset = EthHdr::LEN + ihl;
    let ports: [u8; 4] = ctx.load(l4_offset).ok()?;
    let (tcp_flags, seq, ack) = match proto {
        IPPROTO_TCP => {
            // Sequence and acknowledgment numbers, data offset and flags, in one load; the
            // header must be at least 20 bytes.
            let t: [u8; 10] = ctx.load(l4_offset + 4).ok()?;
            if usize::from(t[8] >> 4) * 4 < 20 {
                return None;
            }
            let seq = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
            (t[9], seq, u32::from_be_bytes([t[4], t[5], t[6], t[7]]))
        }
        IPPROTO_UDP => {
            if (ctx.len() as usize) < l4_offset + 8 {
                return None;
            }
            (0, 0, 0)
        }
        IPPROTO_ICMP => {
            // Echo reply (0) or request (8); other ICMP is left to the kernel.
            if (ports[0] != 0 && ports[0] != 8) || (ctx.len() as usize) < l4_offset + 8 {
                return None;
            }
            let id: [u8; 2] = ctx.load(l4_offset + 4).ok()?;
            let id = u16::from_be_bytes(id);
            return Some(Ipv4Flow {
                l4_offset,
                src,
                dst,
                proto,
                sport: id,
                dport: id,
                tcp_flags: 0,
                seq: 0,
                ack: 0,
            });
        }
        _ => return None,
    };
    Some(Ipv4Flow {
        l4_offset,
        src,
        dst,
        proto,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        tcp_flags,
        seq,
        ack,
    })
}

/// The source and destination of any IPv4 packet (fragment, any protocol), for the checks
/// that judge by address alone. `None` for everything that is not IPv4.
#[inline(always)]
pub fn ipv4_addrs(ctx: &TcContext) -> Option<([u8; 4], [u8; 4])> {
    let ip = ipv4_header(ctx)?;
    Some((ip.src_addr, ip.dst_addr))
}

/// The IPv4 header of an untagged IPv4 frame, pulled into the linear area.
#[inline(always)]
fn ipv4_header(ctx: &TcContext) -> Option<&Ipv4Hdr> {
    if !ensure_linear(ctx, EthHdr::LEN + Ipv4Hdr::LEN) {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: ptr_at checked the header lies inside the packet.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return None;
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)?;
    // SAFETY: as above; the reference lives no longer than the borrow of `ctx`, and nothing
    // writes the packet while it is held.
    Some(unsafe { &*ip })
}

/// An ICMP error (destination unreachable, fragmentation needed included; time exceeded;
/// parameter problem) about a TCP, UDP or ICMP echo packet: where its parts are, and the
/// flow of the packet it quotes, as that packet was sent.
pub struct IcmpError {
    /// The error's own addresses.
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub icmp_offset: usize,
    pub inner_ip_offset: usize,
    /// The quoted packet: addresses, protocol, ports (an echo's identifier as both), and
    /// where its L4 header starts.
    pub inner: Ipv4Flow,
}

const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Parses an ICMP error; `None` for everything else. Reads through `load` (bounds checked
/// by the helper), as the quoted header's offset depends on two header lengths.
#[inline(always)]
pub fn icmp_error(ctx: &TcContext) -> Option<IcmpError> {
    let ip = ipv4_header(ctx)?;
    let ihl = usize::from(ip.ihl());
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN || ihl > 60 || ip.proto != IPPROTO_ICMP {
        return None;
    }
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return None;
    }
    let (src, dst) = (ip.src_addr, ip.dst_addr);
    let icmp_offset = EthHdr::LEN + ihl;
    let icmp_type: u8 = ctx.load(icmp_offset).ok()?;
    if !matches!(
        icmp_type,
        ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return None;
    }
    let inner_ip_offset = icmp_offset + 8;
    let inner: [u8; 20] = ctx.load(inner_ip_offset).ok()?;
    let inner_ihl = usize::from(inner[0] & 0xf) * 4;
    if inner[0] >> 4 != 4 || inner_ihl < Ipv4Hdr::LEN {
        return None;
    }
    let l4_offset = inner_ip_offset + inner_ihl;
    // RFC 792: the error quotes at least the first 8 bytes of the L4 header.
    let l4: [u8; 8] = ctx.load(l4_offset).ok()?;
    let proto = inner[9];
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        IPPROTO_ICMP if l4[0] == 0 || l4[0] == 8 => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => return None,
    };
    Some(IcmpError {
        src,
        dst,
        icmp_offset,
        inner_ip_offset,
        inner: Ipv4Flow {
            l4_offset,
            src: [inner[12], inner[13], inner[14], inner[15]],
            dst: [inner[16], inner[17], inner[18], inner[19]],
            proto,
            sport,
            dport,
            tcp_flags: 0,
            seq: 0,
            ack: 0,
        },
    })
}
