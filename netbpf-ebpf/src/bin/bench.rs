//! Programs for `cargo xtask bench`'s per-packet run, not part of the data plane. pktgen and
//! xdp-trafficgen do not work on the kernels this runs on, so the traffic generator is an
//! XDP program run through BPF_PROG_TEST_RUN's live-frames mode: there, XDP_TX sends each
//! frame out of the interface named in the context, at the rate one CPU can push them.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Length of the frames the generator sends: 64 bytes on the wire with the FCS.
const FRAME_LEN: usize = 60;

/// The frame the generator sends, written by the harness.
#[map]
static BENCH_FRAME: Array<[u8; FRAME_LEN]> = Array::with_max_entries(1, 0);

/// Frames the sink has taken, per CPU.
#[map]
static BENCH_SINK_PACKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The generator: every frame goes out as the template has it. Live-frames mode recycles
/// the pages it sends, and what the path did to a frame (a DNAT rewrite, a TTL decrement)
/// is still in the page when it comes round again, so each run writes the frame afresh.
#[xdp]
pub fn bench_generate(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(template) = BENCH_FRAME.get(0) else {
        return XDP_ABORTED;
    };
    if start + FRAME_LEN > end {
        return XDP_ABORTED;
    }
    // SAFETY: the check above keeps all FRAME_LEN bytes from `start` inside the packet.
    unsafe {
        core::ptr::copy_nonoverlapping(template.as_ptr(), start as *mut u8, FRAME_LEN);
    }
    XDP_TX
}

/// On the receiving veth of a path with no XDP stage of its own: a veth only takes frames
/// sent with XDP_TX/redirect when its peer runs an XDP program, and this one hands them to
/// the stack unchanged.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// In the destination container: counts and drops IPv4, the cheapest end a path can have,
/// so the rate measured is the data plane's. ARP goes through, or a stack path could not
/// resolve the container's address.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 14 > end {
        return XDP_PASS;
    }
    // SAFETY: the check above keeps the Ethernet header inside the packet.
    let ether_type = unsafe { core::ptr::read_unaligned((start + 12) as *const [u8; 2]) };
    if ether_type != [0x08, 0x00] {
        return XDP_PASS;
    }
    if let Some(count) = BENCH_SINK_PACKETS.get_ptr_mut(0) {
        // SAFETY: the slot is this CPU's own and nothing else runs on the CPU while the
        // program does.
        unsafe { *count += 1 };
    }
    XDP_DROP
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
