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

/// Per host-side veth: which network the packets arriving on it come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointIface {
    pub network: u32,
    /// `IFACE_FLAG_*` bits. A `u32` rather than `bool`s keeps the layout free of padding.
    pub flags: u32,
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
    /// Packets dropped, indexed by [`DropReason`].
    pub drops: [u64; DropReason::COUNT],
}

impl EndpointCounters {
    pub fn add(&mut self, other: &Self) {
        self.fast_packets += other.fast_packets;
        self.fast_bytes += other.fast_bytes;
        self.passed_packets += other.passed_packets;
        self.passed_bytes += other.passed_bytes;
        let mut i = 0;
        while i < DropReason::COUNT {
            self.drops[i] += other.drops[i];
            i += 1;
        }
    }
}

/// Why a packet was dropped. Shared with userspace so `netbpf stats` can say why.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The destination is on a network the sender is not attached to.
    Isolation = 0,
    /// The sender's network is `--internal` and the destination is outside it.
    Internal = 1,
    /// `bpf_redirect_peer` refused the packet.
    RedirectFailed = 2,
}

impl DropReason {
    pub const COUNT: usize = 3;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Isolation,
        DropReason::Internal,
        DropReason::RedirectFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Isolation => "isolation",
            DropReason::Internal => "internal",
            DropReason::RedirectFailed => "redirect_failed",
        }
    }
}

/// Names of the maps and programs, used by both sides.
pub mod names {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const ENDPOINT_IFACES: &str = "ENDPOINT_IFACES";
    pub const SUBNETS: &str = "SUBNETS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const PROG_FROM_CONTAINER: &str = "from_container";
}

/// Map sizes. Endpoints and counters are keyed per host veth or per address.
pub const MAX_ENDPOINTS: u32 = 65_536;
pub const MAX_SUBNETS: u32 = 4_096;

const _: () = assert!(core::mem::size_of::<IpAddrKey>() == 16);
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);
const _: () = assert!(core::mem::size_of::<EndpointTarget>() == 12);
const _: () = assert!(core::mem::size_of::<EndpointIface>() == 8);
const _: () = assert!(core::mem::size_of::<SubnetKey>() == 16);
const _: () = assert!(core::mem::size_of::<SubnetInfo>() == 24);
const _: () = assert!(core::mem::size_of::<EndpointCounters>() == 32 + 8 * DropReason::COUNT);

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
    unsafe impl aya::Pod for super::EndpointCounters {}
}
