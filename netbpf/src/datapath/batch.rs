//! Whole-map reads and bulk deletes with the kernel's batch commands (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_DELETE_BATCH`, Linux 5.6): a 262 144-entry conntrack table in a few dozen
//! syscalls instead of two per entry. Written by hand because aya 0.14 has no batch
//! operations: a thin wrapper over bpf(2), its one `unsafe` explained below.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per call.
const CHUNK: usize = 4096;

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: bpf(2) reads and writes only `attr` (valid for its size) and the buffers its
    // fields point to, which the callers keep alive for the call and size for `count`
    // elements of the map's key and value types (and 8 bytes for a batch token, more than
    // a hash map's 4).
    let done = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if done < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every entry of the hash map `map`, whose keys are `K` and values `V` (plain `repr(C)`
/// map types: [`aya::Pod`]).
pub fn read_all<K: aya::Pod, V: aya::Pod>(map: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut entries = vec![];
    let (mut token, mut next) = (0u64, 0u64);
    // SAFETY: Pod types are plain data, valid for any bytes, all-zero included.
    let (mut keys, mut values): (Vec<K>, Vec<V>) = unsafe {
        (
            vec![std::mem::zeroed(); CHUNK],
            vec![std::mem::zeroed(); CHUNK],
        )
    };
    for first in std::iter::once(true).chain(std::iter::repeat(false)) {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token as *const u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let filled = (attr.count as usize).min(CHUNK);
        entries.extend(
            keys[..filled]
                .iter()
                .copied()
                .zip(values[..filled].iter().copied()),
        );
        match result {
            Ok(()) => token = next,
            // The last batch: whatever it filled is in.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(entries)
}

/// Deletes `keys` from the hash map `map`; keys already gone (the LRU, or the programs,
/// got there first) are skipped.
pub fn delete<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(CHUNK)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => rest = &rest[chunk.len()..],
            // The batch stops at a missing key: past the ones done and that one.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = &rest[(attr.count as usize + 1).min(rest.len())..];
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
