//! The bridge decision for packets leaving a container: the fast path and network
//! isolation, as pure lookups in the endpoint maps (see `endpoints`).

use aya_ebpf::programs::TcContext;
use netbpf_common::{
    DropReason, EndpointIface, EndpointKey, EndpointTarget, IFACE_FLAG_INTERNAL, IpAddrKey,
    OverlayRoute,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    endpoints, overlay,
    parse::{ensure_linear, ptr_at},
};

/// What to do with one packet from a container.
pub enum Verdict {
    /// Deliver straight into the peer of this host-side veth, with this destination MAC.
    Redirect(EndpointTarget),
    /// Hand it to the Linux bridge unchanged.
    Pass,
    /// To another host's block of the sender's overlay network: VXLAN to it.
    Encap(OverlayRoute),
    Drop(DropReason),
}

/// Decides the fate of a packet that arrived from the container behind `ifindex`.
#[inline(always)]
pub fn decide(ctx: &TcContext, ifindex: u32, iface: &EndpointIface) -> Verdict {
    if !ensure_linear(ctx, EthHdr::LEN + Ipv4Hdr::LEN) {
        return Verdict::Pass;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::Pass;
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != EtherType::Ipv4 as u16 {
        // ARP, IPv6 (not configured on netbpf networks yet) and the rest: the bridge's job.
        return Verdict::Pass;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return Verdict::Pass;
    };
    // SAFETY: as above, bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    // A malformed header is the kernel's to judge (it drops it), never ours to forward.
    if ip.version() != 4 || usize::from(ip.ihl()) < Ipv4Hdr::LEN {
        return Verdict::Pass;
    }
    let dst = IpAddrKey::from_v4(ip.dst_addr);
    let internal = iface.flags & IFACE_FLAG_INTERNAL != 0;
    match endpoints::subnet_of(dst) {
        Some(owner) if owner.network == iface.network => {
            let key = EndpointKey {
                network: iface.network,
                addr: dst,
            };
            match endpoints::endpoint(&key) {
                Some(target) if target.host_ifindex != ifindex => Verdict::Redirect(target),
                _ => Verdict::Pass,
            }
        }
        // The gateway of another network is the host itself, which containers may reach.
        Some(owner) if owner.gateway == dst && !internal => Verdict::Pass,
        Some(_) => Verdict::Drop(DropReason::Isolation),
        None if internal => Verdict::Drop(DropReason::Internal),
        None => match overlay::route(iface.network, dst) {
            Some(route) => Verdict::Encap(route),
            None => Verdict::Pass,
        },
    }
}
