//! Types shared between the eBPF programs and the daemon through BPF maps.
//!
//! Every type is `#[repr(C)]` with explicit padding fields so that its layout is the same
//! on both sides and no byte of a map key is left uninitialised (the kernel hashes keys
//! byte by byte, so hidden padding would make equal keys compare unequal). Sizes are
//! checked at compile time.
//!
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so the
//! same keys carry IPv6 when it arrives without a map redesign.
#![no_std]

/// An IP address as stored in maps: IPv6, or IPv4-mapped IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IpAddrKey {
    pub octets: [u8; 16],
}

impl IpAddrKey {
    /// Bits of the IPv4-mapped prefix (`::ffff:0:0/96`) in front of an IPv4 address.
    pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

    pub const fn from_v4(v4: [u8; 4]) -> Self {
        let mut octets = [0u8; 16];
        octets[10] = 0xff;
        octets[11] = 0xff;
        octets[12] = v4[0];
        octets[13] = v4[1];
        octets[14] = v4[2];
        octets[15] = v4[3];
        Self { octets }
    }

    pub const fn from_v6(octets: [u8; 16]) -> Self {
        Self { octets }
    }
}

/// Key of [`ENDPOINTS`](map names): an address on one network.
///
/// Scoping the address by network lets two networks use overlapping subnets later
/// (macvlan, overlay) without colliding in the map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    /// The daemon's small numeric index of the network (not its 64-hex Id).
    pub network: u32,
    pub addr: IpAddrKey,
}

/// Where the fast path delivers a packet addressed to an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointTarget {
    /// Ifindex of the endpoint's host-side veth; `bpf_redirect_peer` delivers to its peer.
    pub host_ifindex: u32,
    /// MAC address of the container's interface, written as the frame's destination.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Per host-side veth: which network the packets arriving on it come from, and who may
/// send them (anti-spoofing: a container's frames carry its own MAC and address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointIface {
    pub network: u32,
    /// `IFACE_FLAG_*` bits. A `u32` rather than `bool`s keeps the layout free of padding.
    pub flags: u32,
    /// The container interface's MAC: the only Ethernet source (and ARP sender) allowed.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The container's address on this network: the only IP source (and ARP sender)
    /// allowed.
    pub addr: IpAddrKey,
}

/// The endpoint's network is `--internal`: nothing outside its own subnet is reachable.
pub const IFACE_FLAG_INTERNAL: u32 = 1 << 0;

/// Data of the subnet LPM trie key (the trie's `prefix_len` comes in front of it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubnetKey {
    pub addr: IpAddrKey,
}

/// Value of the subnet trie: which network owns a destination address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubnetInfo {
    pub network: u32,
    pub _pad: u32,
    /// The network's gateway: the host's own address on that bridge, always reachable.
    pub gateway: IpAddrKey,
}

/// Key of the overlay route trie: a remote host's block of an overlay network. The network
/// is always matched in full (its 32 bits count in the prefix length), then the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverlayRouteKey {
    /// The local network (this host's block of the overlay) the sender is on.
    pub network: u32,
    pub addr: IpAddrKey,
}

/// Where packets for a remote block go: VXLAN to the host holding it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverlayRoute {
    pub remote_vtep: IpAddrKey,
    pub local_vtep: IpAddrKey,
    /// The underlay interface the outer packet leaves by (`bpf_redirect_neigh`).
    pub underlay_ifindex: u32,
    pub vni: u32,
    /// VXLAN UDP destination port.
    pub port: u16,
    /// Inner destination MAC: the remote end's (a kernel VXLAN peer accepts only frames
    /// for its own device address).
    pub inner_dst_mac: [u8; 6],
}

/// Per VNI: the local network decapsulated packets are delivered on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverlayLocal {
    pub network: u32,
    pub port: u16,
    /// The local gateway's MAC, the source containers see on delivered frames.
    pub gateway_mac: [u8; 6],
}

/// Bytes VXLAN adds in front of the inner IPv4 packet: outer IPv4 (20), UDP (8), VXLAN (8)
/// and the inner Ethernet header (14). Container MTUs on overlays leave room for them.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Per-endpoint counters, one copy per CPU (no atomics on the BPF target).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointCounters {
    /// Packets the fast path redirected straight into a peer container.
    pub fast_packets: u64,
    pub fast_bytes: u64,
    /// Packets handed to the Linux bridge/stack unchanged (ARP, broadcast, unknown, host).
    pub passed_packets: u64,
    pub passed_bytes: u64,
    /// Packets dropped, indexed by [`DropReason`]; room for reasons to come, so adding
    /// one does not change the map's layout.
    pub drops: [u64; DROP_SLOTS],
}

impl EndpointCounters {
    pub fn add(&mut self, other: &Self) {
        self.fast_packets += other.fast_packets;
        self.fast_bytes += other.fast_bytes;
        self.passed_packets += other.passed_packets;
        self.passed_bytes += other.passed_bytes;
        let mut i = 0;
        while i < DROP_SLOTS {
            self.drops[i] += other.drops[i];
            i += 1;
        }
    }
}

/// Slots for drop reasons in every drop counter (more than there are reasons today).
pub const DROP_SLOTS: usize = 16;

/// Why a packet was dropped. Shared with userspace so `netbpf stats` can say why; the
/// numbers are slots in the counters and never change.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The destination is on a network the sender is not attached to.
    Isolation = 0,
    /// The sender's network is `--internal` and the destination is outside it.
    Internal = 1,
    /// `bpf_redirect_peer` (or `bpf_redirect`) refused the packet.
    RedirectFailed = 2,
    /// From outside, to a container address on a port that is not published (direct
    /// routing), and not a reply of a flow a container started.
    NotPublished = 3,
    /// A container's frame with an Ethernet, IP or ARP source that is not its own.
    SpoofedSource = 4,
    /// VXLAN from a VTEP that does not hold the inner source's block of that VNI, or not
    /// to this host's VTEP.
    UnknownVtep = 5,
    /// A 127/8 destination from the wire.
    LoopbackDestination = 6,
    /// A container's packet NAT cannot translate (and so must not leave).
    Untranslatable = 7,
    /// Conntrack refused the entry a translation needs.
    ConntrackFull = 8,
    /// The kernel refused a header rewrite: half a rewrite never leaves.
    RewriteFailed = 9,
    /// An IPv6 router advertisement or solicitation from a container.
    RouterAdvertisement = 10,
    /// VXLAN for one of our VNIs to an address no local container has.
    NoEndpoint = 11,
    /// Every masquerade source port probed was taken.
    PortsExhausted = 12,
    /// From a veth the endpoint maps do not know (one being removed).
    UnknownInterface = 13,
}

impl DropReason {
    pub const COUNT: usize = 14;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Isolation,
        DropReason::Internal,
        DropReason::RedirectFailed,
        DropReason::NotPublished,
        DropReason::SpoofedSource,
        DropReason::UnknownVtep,
        DropReason::LoopbackDestination,
        DropReason::Untranslatable,
        DropReason::ConntrackFull,
        DropReason::RewriteFailed,
        DropReason::RouterAdvertisement,
        DropReason::NoEndpoint,
        DropReason::PortsExhausted,
        DropReason::UnknownInterface,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Isolation => "isolation",
            DropReason::Internal => "internal",
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::NotPublished => "not_published",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::UnknownVtep => "unknown_vtep",
            DropReason::LoopbackDestination => "loopback_destination",
            DropReason::Untranslatable => "untranslatable",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::RouterAdvertisement => "router_advertisement",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::PortsExhausted => "ports_exhausted",
            DropReason::UnknownInterface => "unknown_interface",
        }
    }
}
const _: () = assert!(DropReason::COUNT <= DROP_SLOTS);

/// The program (and attachment point) that dropped a packet: the first index of `DROPS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tcx ingress of a container's host veth.
    FromContainer = 0,
    /// XDP on the uplink.
    UplinkXdp = 1,
    /// tcx ingress of the uplink.
    UplinkIngress = 2,
    /// tcx egress of the uplink.
    UplinkEgress = 3,
    /// tcx ingress of the VTEP's interface.
    OverlayIngress = 4,
}

impl Hook {
    pub const COUNT: usize = 5;
    pub const ALL: [Hook; Self::COUNT] = [
        Hook::FromContainer,
        Hook::UplinkXdp,
        Hook::UplinkIngress,
        Hook::UplinkEgress,
        Hook::OverlayIngress,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::FromContainer => "from_container",
            Hook::UplinkXdp => "uplink_xdp",
            Hook::UplinkIngress => "uplink_ingress",
            Hook::UplinkEgress => "uplink_egress",
            Hook::OverlayIngress => "overlay_ingress",
        }
    }

    /// The `DROPS` slot counting `reason` at this hook.
    pub const fn drop_slot(self, reason: DropReason) -> u32 {
        self as u32 * DROP_SLOTS as u32 + reason as u32
    }
}

/// Slots for hooks in `DROPS` (room for hooks to come).
pub const HOOK_SLOTS: usize = 8;
const _: () = assert!(Hook::COUNT <= HOOK_SLOTS);
/// Entries of the per-CPU `DROPS` array: one counter per hook and reason.
pub const DROPS_LEN: u32 = (HOOK_SLOTS * DROP_SLOTS) as u32;

/// IP protocol numbers as they appear in map keys.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of `PUBLISHED`: a host address and port. The unspecified address (`::ffff:0.0.0.0`)
/// stands for every address of the host, as `-p 5050:80` means on Docker.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PublishedKey {
    pub addr: IpAddrKey,
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Where a published port leads: a container address and port, and how to reach it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PublishedTarget {
    pub addr: IpAddrKey,
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
    /// The container's host-side veth, for `bpf_redirect_peer`.
    pub host_ifindex: u32,
    pub mac: [u8; 6],
    /// `PUBLISHED_FLAG_*` bits.
    pub flags: u8,
    pub _pad2: u8,
}

/// The container end of the veth has no XDP program (a runtime moved it into its sandbox
/// before netbpf could attach one), so a frame redirected at the XDP layer would be dropped:
/// the XDP stage leaves this port's packets to the tcx programs.
pub const PUBLISHED_FLAG_NO_XDP: u8 = 1 << 0;

/// Key of `SOCK_ORIGINAL`: a socket (by cookie) and the container address it was redirected
/// to, so replies can be shown as coming from the address the program asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockBackendKey {
    pub cookie: u64,
    pub backend: PublishedKey,
    pub _pad: u32,
}

/// One direction of a translated flow, as seen on the wire: the conntrack key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: IpAddrKey,
    pub dst: IpAddrKey,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// What to do with a packet of a tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatEntry {
    /// The address and port to write: the source for `NAT_REWRITE_SRC`, the destination
    /// for `NAT_REWRITE_DST`.
    pub addr: IpAddrKey,
    /// Host byte order.
    pub port: u16,
    /// `NAT_REWRITE_*`.
    pub action: u8,
    /// `TCP_SEEN_*` bits, to expire closed TCP flows quickly.
    pub tcp_seen: u8,
    /// In `CONNTRACK_NEW`: the container's SYN-ACK sequence number, which the client's ACK
    /// must acknowledge to confirm the flow (host order; 0 elsewhere).
    pub isn: u32,
    /// `bpf_ktime_get_ns` of the last packet; the daemon expires idle entries.
    pub last_seen_ns: u64,
}

pub const NAT_REWRITE_SRC: u8 = 1;
pub const NAT_REWRITE_DST: u8 = 2;
pub const TCP_SEEN_FIN: u8 = 1 << 0;
pub const TCP_SEEN_RST: u8 = 1 << 1;
/// `isn` holds the SYN-ACK's sequence number.
pub const TCP_SEEN_SYNACK: u8 = 1 << 2;

/// How long an idle flow is kept. TCP uses the established timeout until a FIN or RST is
/// seen, then the closing one.
pub const NAT_TIMEOUT_UDP_NS: u64 = 60 * 1_000_000_000;
pub const NAT_TIMEOUT_TCP_NS: u64 = 2 * 3600 * 1_000_000_000;
pub const NAT_TIMEOUT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
/// How long a flow from outside may stay unconfirmed while idle (as a SYN_RECV).
pub const NAT_TIMEOUT_NEW_NS: u64 = 30 * 1_000_000_000;

/// The host-wide settings the NAT programs need, in a one-element array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatConfig {
    /// The uplink's first IPv4 address: the source of masqueraded packets.
    pub uplink_addr: IpAddrKey,
    pub uplink_ifindex: u32,
    /// Masquerade source ports are taken from `[port_min, port_max]`.
    pub port_min: u16,
    pub port_max: u16,
    /// Cookie of the daemon's network namespace: socket programs only act there.
    pub netns_cookie: u64,
}

/// The embedded DNS address inside every container (Docker's).
pub const DNS_ADDR: [u8; 4] = [127, 0, 0, 11];
/// The port the daemon's DNS sockets really listen on inside a container; `lo` programs
/// translate 53 to it and back. Outside the ephemeral range, so no client takes it first.
pub const DNS_SERVER_PORT: u16 = 65053;

/// Names of the maps and programs, used by both sides.
pub mod names {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const ENDPOINT_IFACES: &str = "ENDPOINT_IFACES";
    pub const SUBNETS: &str = "SUBNETS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const PUBLISHED: &str = "PUBLISHED";
    pub const BACKENDS: &str = "BACKENDS";
    pub const HOST_ADDRS: &str = "HOST_ADDRS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const CONNTRACK_NEW: &str = "CONNTRACK_NEW";
    pub const NAT_CONFIG: &str = "NAT_CONFIG";
    pub const SOCK_ORIGINAL: &str = "SOCK_ORIGINAL";
    pub const PROG_FROM_CONTAINER: &str = "from_container";
    pub const PROG_UPLINK_INGRESS: &str = "uplink_ingress";
    pub const PROG_DNS_LO_INGRESS: &str = "dns_lo_ingress";
    pub const PROG_DNS_LO_EGRESS: &str = "dns_lo_egress";
    pub const PROG_UPLINK_XDP: &str = "uplink_xdp";
    pub const PROG_CONTAINER_XDP_PASS: &str = "container_xdp_pass";
    pub const XDP_REDIRECTS: &str = "XDP_REDIRECTS";
    pub const DROPS: &str = "DROPS";
    pub const PROG_UPLINK_EGRESS: &str = "uplink_egress";
    pub const OVERLAY_ROUTES: &str = "OVERLAY_ROUTES";
    pub const OVERLAY_VNIS: &str = "OVERLAY_VNIS";
    pub const PROG_OVERLAY_INGRESS: &str = "overlay_ingress";
    pub const PROG_CONNECT4: &str = "connect4";
    pub const PROG_SENDMSG4: &str = "sendmsg4";
    pub const PROG_RECVMSG4: &str = "recvmsg4";
    pub const PROG_GETPEERNAME4: &str = "getpeername4";
    pub const PROG_CONNECT6: &str = "connect6";
    pub const PROG_RECVMSG6: &str = "recvmsg6";
    pub const PROG_GETPEERNAME6: &str = "getpeername6";
}

/// Map sizes. Endpoints and counters are keyed per host veth or per address.
pub const MAX_ENDPOINTS: u32 = 65_536;
pub const MAX_SUBNETS: u32 = 4_096;
pub const MAX_PUBLISHED: u32 = 65_536;
pub const MAX_HOST_ADDRS: u32 = 1_024;
pub const MAX_OVERLAY_ROUTES: u32 = 16_384;
pub const MAX_OVERLAY_VNIS: u32 = 1_024;
/// Tracked flows; the map is LRU, so a full table evicts the oldest flows, never wedges.
pub const MAX_FLOWS: u32 = 262_144;
/// Flows from outside not yet confirmed by their client (`CONNTRACK_NEW`): what a flood of
/// spoofed SYNs fills instead of `CONNTRACK`.
pub const MAX_NEW_FLOWS: u32 = 131_072;

const _: () = assert!(core::mem::size_of::<IpAddrKey>() == 16);
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);
const _: () = assert!(core::mem::size_of::<EndpointTarget>() == 12);
const _: () = assert!(core::mem::size_of::<EndpointIface>() == 32);
const _: () = assert!(core::mem::size_of::<SubnetKey>() == 16);
const _: () = assert!(core::mem::size_of::<SubnetInfo>() == 24);
const _: () = assert!(core::mem::size_of::<PublishedKey>() == 20);
const _: () = assert!(core::mem::size_of::<PublishedTarget>() == 32);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<SockBackendKey>() == 32);
const _: () = assert!(core::mem::size_of::<OverlayRouteKey>() == 20);
const _: () = assert!(core::mem::size_of::<OverlayRoute>() == 48);
const _: () = assert!(core::mem::size_of::<OverlayLocal>() == 12);
const _: () = assert!(core::mem::size_of::<NatEntry>() == 32);
const _: () = assert!(core::mem::size_of::<NatConfig>() == 32);
const _: () = assert!(core::mem::size_of::<EndpointCounters>() == 32 + 8 * DROP_SLOTS);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with every
    // padding byte an explicit field, so any bit pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for super::IpAddrKey {}
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::EndpointTarget {}
    unsafe impl aya::Pod for super::EndpointIface {}
    unsafe impl aya::Pod for super::SubnetKey {}
    unsafe impl aya::Pod for super::SubnetInfo {}
    unsafe impl aya::Pod for super::OverlayRouteKey {}
    unsafe impl aya::Pod for super::OverlayRoute {}
    unsafe impl aya::Pod for super::OverlayLocal {}
    unsafe impl aya::Pod for super::EndpointCounters {}
    unsafe impl aya::Pod for super::PublishedKey {}
    unsafe impl aya::Pod for super::PublishedTarget {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::SockBackendKey {}
    unsafe impl aya::Pod for super::NatEntry {}
    unsafe impl aya::Pod for super::NatConfig {}
}
