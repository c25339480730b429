//! Bounds-checked access to packet headers in the skb's linear data.

use aya_ebpf::programs::TcContext;

/// A pointer to a `T` at `offset` in the packet, or `None` when the packet is too short.
///
/// The check against `data_end` is what the verifier needs to accept the later access.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
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
