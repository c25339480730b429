//! Drop counters by hook and reason, for `netbpf stats`: every program that drops a packet
//! says why here, so no drop is silent.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use netbpf_common::{DROPS_LEN, DropReason, Hook};

use crate::tc;

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DROPS_LEN, 0);

/// Counts one packet `hook` dropped for `reason` on this CPU.
#[inline(always)]
pub fn count(hook: Hook, reason: DropReason) {
    // The map's own bounds check: an array index the compiler could not prove in range
    // would become a panic path, which the verifier refuses.
    if let Some(slot) = DROPS.get_ptr_mut(hook.drop_slot(reason)) {
        // SAFETY: a per-CPU value is only touched by this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The tc action for `result`: a drop is counted at `hook` and becomes `TC_ACT_SHOT`.
#[inline(always)]
pub fn settle(hook: Hook, result: tc::Action) -> i32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            count(hook, reason);
            tc::SHOT
        }
    }
}
