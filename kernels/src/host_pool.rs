//! Recycled host buffers for f32 CPU tensors.
//!
//! A training step allocates the same activation and gradient buffers every step. Fresh
//! zeroed allocations cost a memset on the calling thread (while the worker threads wait)
//! or, for large ones, page faults on memory the allocator returned to the OS; together
//! they were about a tenth of a CPU training step. Buffers of dropped tensors come back
//! here, and [`Tensor::empty`](crate::Tensor::empty) hands them out again without clearing:
//! every op overwrites its outputs entirely (the gradient rule: activation gradients
//! overwrite), so stale contents are never read. Tests can [`set_poison`] so that every
//! `empty` buffer starts as NaN and an op that leaves an element unwritten shows up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Buffers below this many elements (16 KiB) are cheap to allocate and not kept.
const MIN_LEN: usize = 1 << 12;
/// At most this much memory waits here for reuse; buffers beyond it are freed.
const MAX_RETAINED_BYTES: usize = 1 << 30;

struct Pool {
    /// Free buffers by length (a step asks for the same lengths every time).
    free: BTreeMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { free: BTreeMap::new(), bytes: 0 });
static POISON: AtomicBool = AtomicBool::new(false);

/// With `on`, every buffer [`take`] returns is filled with NaN first (for tests).
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

/// Bytes currently held for reuse.
pub fn retained_bytes() -> usize {
    POOL.lock().map(|p| p.bytes).unwrap_or(0)
}

/// A buffer of `len` elements with unspecified (but initialized) contents: a recycled one
/// when available, else a fresh zeroed allocation.
pub(crate) fn take(len: usize) -> Vec<f32> {
    let recycled = if len >= MIN_LEN {
        POOL.lock().ok().and_then(|mut pool| {
            let list = pool.free.get_mut(&len)?;
            let v = list.pop()?;
            if list.is_empty() {
                pool.free.remove(&len);
            }
            pool.bytes -= len * size_of::<f32>();
            Some(v)
        })
    } else {
        None
    };
    let mut v = recycled.unwrap_or_else(|| vec![0.0; len]);
    if POISON.load(Ordering::Relaxed) {
        v.fill(f32::NAN);
    }
    v
}

/// Keeps `v` for reuse if it is worth it and there is room; frees it otherwise.
pub(crate) fn give(v: Vec<f32>) {
    let (len, bytes) = (v.len(), v.capacity() * size_of::<f32>());
    if len < MIN_LEN || v.capacity() != len {
        return;
    }
    if let Ok(mut pool) = POOL.lock() {
        if pool.bytes + bytes <= MAX_RETAINED_BYTES {
            pool.bytes += bytes;
            pool.free.entry(len).or_default().push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_recycled_by_length_and_bounded() {
        // A length no other test uses, so the counts below are this test's own.
        let len = MIN_LEN + 12_345;
        let a = take(len);
        let ptr = a.as_ptr();
        let before = retained_bytes();
        give(a);
        assert_eq!(retained_bytes(), before + len * 4);
        let b = take(len);
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is handed out again");
        assert_eq!(b.len(), len);
        assert_eq!(retained_bytes(), before);
        // small buffers are not kept
        give(vec![0.0; 16]);
        assert_eq!(retained_bytes(), before);
    }
}
