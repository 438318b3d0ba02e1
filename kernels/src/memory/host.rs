//! The CPU half of the pool: host buffers for CPU tensors.
//!
//! A training step allocates the same activation and gradient buffers every step. Fresh
//! zeroed allocations cost a memset on the calling thread (while the worker threads wait)
//! or, for large ones, page faults on memory the allocator returned to the OS; together
//! they were about a tenth of a CPU training step. Cached buffers are handed out again
//! without clearing.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use half::bf16;

use super::pool::{size_class, Oom, Pool};
use crate::{Device, Error, Result};

/// A cached host block: a whole size class of elements, all initialized.
#[derive(Debug)]
pub(crate) enum HostBlock {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    U32(Vec<u32>),
}

/// An element type of CPU tensors.
pub(crate) trait HostElement: Copy + Default + Send + Sync + 'static {
    /// Keeps cached blocks of different element types apart.
    const KIND: u64;
    /// What [`set_poison`] fills uncleared buffers with (`None`: integers are left as they are).
    const POISON: Option<Self>;
    fn wrap(v: Vec<Self>) -> HostBlock;
    fn unwrap(b: HostBlock) -> Vec<Self>;
}

macro_rules! host_element {
    ($t:ty, $variant:ident, $kind:expr, $poison:expr) => {
        impl HostElement for $t {
            const KIND: u64 = $kind;
            const POISON: Option<Self> = $poison;
            fn wrap(v: Vec<Self>) -> HostBlock {
                HostBlock::$variant(v)
            }
            fn unwrap(b: HostBlock) -> Vec<Self> {
                match b {
                    HostBlock::$variant(v) => v,
                    other => unreachable!("the pool keys blocks by element type, got {other:?}"),
                }
            }
        }
    };
}
host_element!(f32, F32, 0, Some(f32::NAN));
host_element!(bf16, Bf16, 1, Some(bf16::NAN));
host_element!(u32, U32, 2, None);

/// The buffer of a CPU tensor: `len` elements at the front of `vec`. A pool block's `vec`
/// holds its whole size class (so it can serve any request of that class without
/// reallocating); a buffer adopted from outside (`Tensor::from_vec`) is counted but not
/// cached when dropped.
#[derive(Debug, Default)]
pub(crate) struct HostBuf<T> {
    vec: Vec<T>,
    len: usize,
    /// Bytes charged to the pool: the size class of a pool block, the capacity of an
    /// adopted buffer.
    charged: usize,
    pooled: bool,
}

impl<T> Deref for HostBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.vec[..self.len]
    }
}

impl<T> DerefMut for HostBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.vec[..self.len]
    }
}

static POOL: Mutex<Pool<HostBlock>> = Mutex::new(Pool::new());
static POISON: AtomicBool = AtomicBool::new(false);

fn lock() -> MutexGuard<'static, Pool<HostBlock>> {
    // The pool's counts are updated before anything can panic; a poisoned lock is usable.
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn with_pool<R>(f: impl FnOnce(&mut Pool<HostBlock>) -> R) -> R {
    f(&mut lock())
}

/// With `on`, every uncleared buffer (`Tensor::try_empty`, on any device) is filled with NaN
/// first, so an op that leaves an element unwritten shows up (for tests).
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

/// Whether [`set_poison`] is on.
pub fn poison() -> bool {
    POISON.load(Ordering::Relaxed)
}

pub(crate) fn oom_error(device: Device, oom: Oom) -> Error {
    Error::OutOfMemory { device, requested: oom.requested, in_use: oom.in_use, budget: oom.budget, largest_free: oom.largest_free }
}

/// A buffer of `len` elements with unspecified (but initialized) contents: a cached block
/// of its size class when there is one, else a fresh zeroed one. NaN under [`set_poison`].
pub(crate) fn take<T: HostElement>(len: usize) -> Result<HostBuf<T>> {
    // Past half the address space no allocation can succeed (and the class would overflow).
    let Some(bytes) = len.checked_mul(size_of::<T>()).filter(|&b| b <= isize::MAX as usize / 2) else {
        return Err(oom_error(Device::Cpu, lock().oom(usize::MAX)));
    };
    let class = size_class(bytes);
    if class == 0 {
        return Ok(HostBuf::default());
    }
    let mut evicted = Vec::new();
    let cached = lock().take(T::KIND, class, &mut evicted).map_err(|oom| oom_error(Device::Cpu, oom))?;
    drop(evicted); // freed outside the lock
    let vec = match cached {
        Some(block) => T::unwrap(block),
        // calloc: large blocks are fresh zero pages, touched only when written. The system
        // refusing is out of memory like the budget refusing (an error, not an abort).
        None => match zeroed_vec::<T>(class / size_of::<T>()) {
            Some(vec) => vec,
            None => {
                let mut pool = lock();
                pool.release(class);
                return Err(oom_error(Device::Cpu, pool.oom(class)));
            }
        },
    };
    let mut buf = HostBuf { vec, len, charged: class, pooled: true };
    if let (true, Some(nan)) = (poison(), T::POISON) {
        buf.fill(nan);
    }
    Ok(buf)
}

/// `n` zeroed elements from the system allocator, or `None` when it refuses.
fn zeroed_vec<T: HostElement>(n: usize) -> Option<Vec<T>> {
    let layout = std::alloc::Layout::array::<T>(n).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout has a non-zero size. Every HostElement (f32, bf16, u32) is valid as
    // all-zero bits, so the n elements are initialized; the Vec frees the block with the same
    // layout (Layout::array::<T>(capacity)).
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut T;
        (!ptr.is_null()).then(|| Vec::from_raw_parts(ptr, n, n))
    }
}

/// Counts a buffer made outside the pool (its capacity) against the budget.
pub(crate) fn adopt<T: HostElement>(vec: Vec<T>) -> Result<HostBuf<T>> {
    let bytes = vec.capacity() * size_of::<T>();
    let mut evicted = Vec::new();
    lock().charge(bytes, &mut evicted).map_err(|oom| oom_error(Device::Cpu, oom))?;
    Ok(HostBuf { len: vec.len(), vec, charged: bytes, pooled: false })
}

/// A tensor's buffer comes back: a pool block is cached, an adopted one freed.
pub(crate) fn give<T: HostElement>(buf: HostBuf<T>) {
    if buf.charged == 0 {
        return;
    }
    let mut pool = lock();
    if buf.pooled {
        pool.give(T::KIND, buf.charged, T::wrap(buf.vec));
    } else {
        pool.release(buf.charged);
        drop(pool);
        drop(buf.vec);
    }
}

pub(super) fn set_budget(budget: Option<usize>) {
    let mut evicted = Vec::new();
    lock().set_budget(budget, &mut evicted);
}

pub(super) fn empty_cache() {
    let mut evicted = Vec::new();
    lock().drain(&mut evicted);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_the_system_refuses_is_an_error_not_an_abort() {
        let before = with_pool(|p| p.stats().in_use);
        for len in [1usize << 58, usize::MAX / 2, usize::MAX] {
            let err = take::<f32>(len).unwrap_err();
            assert!(matches!(err, Error::OutOfMemory { device: Device::Cpu, .. }), "{len}: {err}");
        }
        assert_eq!(with_pool(|p| p.stats().in_use), before, "a refused allocation stays charged");
    }

    #[test]
    fn buffers_are_recycled_by_class() {
        // A size class (about 21 MiB) no other test uses, so the block is this test's own.
        let len = (5 << 20) + 12_345;
        let a = take::<f32>(len).unwrap();
        let ptr = a.as_ptr();
        assert_eq!(a.len(), len);
        give(a);
        // a request of the same class, 100 elements shorter, gets the same block
        let b = take::<f32>(len - 100).unwrap();
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is handed out again");
        assert_eq!(b.len(), len - 100);
        give(b);
        // another element type of the same byte size does not
        let c = take::<u32>(len).unwrap();
        assert_ne!(c.as_ptr() as usize, ptr as usize);
        give(c);
    }
}
