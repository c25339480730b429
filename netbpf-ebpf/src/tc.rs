//! TC verdicts, and the helpers that end a program by sending the packet somewhere else.
//! Each raw helper call is here once, with the reason it is sound.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::{bpf_get_hash_recalc, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use netbpf_common::{DropReason, EndpointTarget};

/// Leave the packet to the kernel (the bridge, the stack).
pub const PASS: i32 = TC_ACT_OK;
/// tcx's "next program": for hooks shared with other programs (the uplink, which may also
/// be the overlay's VTEP interface), a packet that is not ours must reach them; `PASS`
/// would end the chain there. With no program after, the packet goes on to the stack.
pub const NEXT: i32 = TC_ACT_UNSPEC;
pub const SHOT: i32 = TC_ACT_SHOT;
/// What the redirect helpers return when they took the packet.
pub const REDIRECT: i32 = TC_ACT_REDIRECT as i32;

/// A tc verdict, or why the packet is dropped: the entry program counts the reason at its
/// hook (`drops::settle`) and returns `SHOT`.
pub type Action = Result<i32, DropReason>;

/// A redirect helper's return value as an `Action`.
#[inline(always)]
fn redirected(action: i32) -> Action {
    if action == REDIRECT {
        Ok(action)
    } else {
        Err(DropReason::RedirectFailed)
    }
}

/// Rewrites the destination MAC and hands the packet to the peer of the host-side veth,
/// inside the container's namespace.
#[inline(always)]
pub fn redirect_to_peer(ctx: &TcContext, target: &EndpointTarget) -> Action {
    if ctx.store(0, &target.mac, 0).is_err() {
        return Err(DropReason::RewriteFailed);
    }
    // SAFETY: bpf_redirect_peer only takes integers; an unknown or non-veth ifindex makes it
    // return TC_ACT_SHOT, which becomes a counted drop.
    redirected(unsafe { bpf_redirect_peer(target.host_ifindex, 0) as i32 })
}

/// Sends the packet out of `ifindex`, with MACs from the neighbour table.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> Action {
    // SAFETY: a null parameter block asks the helper to resolve the next hop itself (FIB
    // lookup); the ifindex is checked by the kernel, which returns TC_ACT_SHOT if unusable.
    redirected(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 })
}

/// The packet's flow hash (computed now if the kernel had none).
#[inline(always)]
pub fn flow_hash(ctx: &TcContext) -> u32 {
    // SAFETY: the helper only reads the skb behind the context, valid for the whole run.
    unsafe { bpf_get_hash_recalc(ctx.skb.skb) }
}

/// The interface the packet arrived on.
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` points at the kernel's __sk_buff for the whole program run.
    unsafe { (*ctx.skb.skb).ifindex }
}
