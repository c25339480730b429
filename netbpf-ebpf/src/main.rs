//! netbpf's in-kernel programs. Entry points only; the logic lives in one module per concern.
#![no_std]
#![no_main]

mod bridge;
mod parse;

use aya_ebpf::{bindings::TC_ACT_REDIRECT, macros::classifier, programs::TcContext};
use netbpf_common::DropReason;

use bridge::Verdict;

/// Attached (tcx ingress) to the host-side veth of every container endpoint, so it sees each
/// packet a container sends. Decides: same network and known destination → redirect into the
/// peer container's namespace (bypassing the bridge); destination on a network the sender is
/// not on → drop (isolation); everything else → the Linux bridge, unchanged.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    // SAFETY: `skb` points at the kernel's __sk_buff for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(iface) = bridge::endpoint_iface(ifindex) else {
        return bridge::PASS;
    };
    let bytes = u64::from(ctx.len());
    match bridge::decide(&ctx, ifindex, &iface) {
        Verdict::Redirect(target) => {
            let action = bridge::redirect_to_peer(&ctx, &target);
            if action == TC_ACT_REDIRECT as i32 {
                bridge::count(ifindex, |c| {
                    c.fast_packets += 1;
                    c.fast_bytes += bytes;
                });
            } else {
                bridge::count(ifindex, |c| {
                    c.drops[DropReason::RedirectFailed as usize] += 1
                });
            }
            action
        }
        Verdict::Pass => {
            bridge::count(ifindex, |c| {
                c.passed_packets += 1;
                c.passed_bytes += bytes;
            });
            bridge::PASS
        }
        Verdict::Drop(reason) => {
            bridge::count(ifindex, |c| c.drops[reason as usize] += 1);
            bridge::SHOT
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
