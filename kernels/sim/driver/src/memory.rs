//! Device and pinned host memory, and the checks on every copy and memset.
//!
//! A device pointer is the address of a host allocation of its own (256-byte aligned, as
//! `cuMemAlloc` promises), filled with 0xFF bytes when made. The table of live allocations
//! is consulted when a copy is queued and again when it runs: a range that leaves its
//! allocation, or memory freed by the time the copy runs, is an error naming the call.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::sys::CUresult;

use crate::context::{lock, props};
use crate::{code, fail, Res};

const DEVICE_ALIGN: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Device,
    PinnedHost,
}

#[derive(Debug)]
struct Alloc {
    bytes: usize,
    kind: Kind,
    /// Set by cuMemFreeAsync: the pointer may no longer be passed to the API, but the
    /// memory stays valid until the freeing stream reaches the free.
    free_queued: bool,
}

#[derive(Default)]
struct Table {
    live: BTreeMap<usize, Alloc>,
    device_bytes: usize,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(Table::default()))
}

fn layout(bytes: usize, kind: Kind) -> Res<Layout> {
    let align = if kind == Kind::Device { DEVICE_ALIGN } else { 4096 };
    Layout::from_size_align(bytes.max(1), align).map_err(|_| code(CUresult::CUDA_ERROR_OUT_OF_MEMORY))
}

/// Allocates `bytes` of device memory (0xFF-filled) or pinned host memory (zeroed).
pub(crate) fn alloc(bytes: usize, kind: Kind) -> Res<usize> {
    if bytes == 0 {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    let mut t = lock(table());
    if kind == Kind::Device {
        let total = props().total_memory;
        if t.device_bytes.checked_add(bytes).is_none_or(|n| n > total) {
            return Err(code(CUresult::CUDA_ERROR_OUT_OF_MEMORY));
        }
    }
    let layout = layout(bytes, kind)?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { if kind == Kind::Device { std::alloc::alloc(layout) } else { std::alloc::alloc_zeroed(layout) } };
    if ptr.is_null() {
        return Err(code(CUresult::CUDA_ERROR_OUT_OF_MEMORY));
    }
    if kind == Kind::Device {
        // SAFETY: `ptr` is a fresh allocation of at least `bytes` bytes.
        unsafe { std::ptr::write_bytes(ptr, 0xFF, bytes) };
        t.device_bytes += bytes;
    }
    t.live.insert(ptr as usize, Alloc { bytes, kind, free_queued: false });
    Ok(ptr as usize)
}

/// Checks that `ptr` is the start of a live allocation of `kind` that may still be freed,
/// and marks it so (the memory itself goes when [`release`] runs).
pub(crate) fn begin_free(ptr: usize, kind: Kind) -> Res {
    let mut t = lock(table());
    match t.live.get_mut(&ptr) {
        Some(a) if a.kind == kind && !a.free_queued => {
            a.free_queued = true;
            Ok(())
        }
        Some(a) if a.free_queued => Err(fail(CUresult::CUDA_ERROR_INVALID_VALUE, format!("{ptr:#x} is already being freed (a double free)"))),
        _ => Err(fail(
            CUresult::CUDA_ERROR_INVALID_VALUE,
            format!("{ptr:#x} is not the start of a live {} allocation", if kind == Kind::Device { "device" } else { "pinned host" }),
        )),
    }
}

/// Frees what [`begin_free`] marked.
pub(crate) fn release(ptr: usize) {
    let mut t = lock(table());
    if let Some(a) = t.live.remove(&ptr) {
        if a.kind == Kind::Device {
            t.device_bytes -= a.bytes;
        }
        if let Ok(layout) = layout(a.bytes, a.kind) {
            // SAFETY: `ptr` was allocated by `alloc` with this layout and is removed from the
            // table, so it is freed once.
            unsafe { std::alloc::dealloc(ptr as *mut u8, layout) };
        }
    }
}

pub(crate) fn device_bytes_in_use() -> usize {
    lock(table()).device_bytes
}

/// What a range of memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Region {
    Device,
    Pinned,
    /// Not an allocation of ours: pageable host memory.
    Pageable,
}

/// The allocation `[ptr, ptr+bytes)` lies in, if any, and whether it is being freed.
fn find(t: &Table, ptr: usize, bytes: usize) -> Option<(usize, &Alloc)> {
    let (&base, a) = t.live.range(..=ptr).next_back()?;
    let end = ptr.checked_add(bytes)?;
    (end <= base + a.bytes.max(1)).then_some((base, a))
}

/// Checks a device range for `what` (e.g. "cuMemcpyHtoDAsync destination"); `queued` says
/// whether a pointer whose free is queued may still be used (true when the copy runs: the
/// memory is there until the free does).
pub(crate) fn check_device(ptr: usize, bytes: usize, what: &str, queued: bool) -> Res {
    if bytes == 0 {
        return Ok(());
    }
    let t = lock(table());
    match find(&t, ptr, bytes) {
        Some((_, a)) if a.kind == Kind::Device && (queued || !a.free_queued) => Ok(()),
        Some((_, a)) if a.kind == Kind::Device => {
            Err(fail(CUresult::CUDA_ERROR_INVALID_VALUE, format!("{what}: {ptr:#x} is device memory whose free was already queued")))
        }
        _ => {
            let inside = t.live.range(..=ptr).next_back().filter(|(b, a)| ptr < **b + a.bytes);
            let why = match inside {
                Some((base, a)) => format!(
                    "{bytes} bytes at {ptr:#x} run past the end of the {}-byte allocation at {base:#x} (by {} bytes)",
                    a.bytes,
                    ptr + bytes - (base + a.bytes)
                ),
                None => format!("{ptr:#x} is not in any live device allocation (freed, or never allocated)"),
            };
            Err(fail(if queued { CUresult::CUDA_ERROR_ILLEGAL_ADDRESS } else { CUresult::CUDA_ERROR_INVALID_VALUE }, format!("{what}: {why}")))
        }
    }
}

/// Whether a host range is pinned memory of ours (whole) or pageable.
pub(crate) fn host_region(ptr: usize, bytes: usize) -> Region {
    let t = lock(table());
    match find(&t, ptr, bytes.max(1)) {
        Some((_, a)) if a.kind == Kind::PinnedHost => Region::Pinned,
        Some((_, a)) if a.kind == Kind::Device => Region::Device,
        _ => Region::Pageable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_memory_is_nan_filled_bounded_and_freed_once() {
        let p = alloc(1000, Kind::Device).unwrap();
        assert_eq!(p % DEVICE_ALIGN, 0);
        // SAFETY: `p` is a live 1000-byte allocation.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, 1000) };
        assert!(bytes.iter().all(|&b| b == 0xFF));
        check_device(p, 1000, "test", false).unwrap();
        check_device(p + 10, 990, "test", false).unwrap();
        let e = check_device(p + 10, 991, "test", false).unwrap_err();
        assert!(e.msg.unwrap().contains("run past the end of the 1000-byte allocation"), "message");
        begin_free(p, Kind::Device).unwrap();
        assert!(begin_free(p, Kind::Device).is_err(), "double free refused");
        assert!(check_device(p, 4, "test", false).is_err(), "no new use after the free was queued");
        check_device(p, 4, "test", true).unwrap();
        release(p);
        assert!(check_device(p, 4, "test", true).is_err(), "gone once freed");
        assert_eq!(alloc(0, Kind::Device).unwrap_err().code, CUresult::CUDA_ERROR_INVALID_VALUE);
    }
}
