//! The CUDA half of the pool: device blocks, one pool per GPU ordinal. Unverified on a GPU.
//!
//! Blocks are raw device allocations of a whole size class (`CudaStream::alloc` then
//! `CudaSlice::leak`); a tensor gets a `CudaSlice<T>` of exactly its length over a block
//! (`CudaStream::upgrade_device_ptr`), and when the tensor is dropped the slice is leaked
//! back to a raw pointer and cached. The alternative, caching the `CudaSlice`s themselves by
//! exact length, needs no unsafe code but cannot round sizes up (launchers read
//! `slice.len()`), so similar sizes would never share blocks and the cache could not be
//! accounted in classes; raw blocks keep one mechanism for the CPU and the GPU.
//!
//! Stream rule (see the module docs of `memory`): a block is keyed by the stream it lives on
//! and reused only there, without a sync: whatever still uses it was queued on that stream
//! before the next user's kernels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::host::oom_error;
use super::pool::{size_class, Pool};
use crate::cuda::{CudaDevice, CudaElement, CudaSlice, CudaStream};
use crate::Result;

/// A cached device block of one size class on `stream`. Dropping it frees the memory
/// (stream-ordered, like dropping a `CudaSlice`).
#[derive(Debug)]
pub(crate) struct DeviceBlock {
    ptr: cudarc::driver::sys::CUdeviceptr,
    bytes: usize,
    stream: Arc<CudaStream>,
}

impl DeviceBlock {
    /// The pointer, without freeing it (the block's `Arc<CudaStream>` is released).
    fn into_ptr(self) -> cudarc::driver::sys::CUdeviceptr {
        let block = std::mem::ManuallyDrop::new(self);
        // SAFETY: `block` is never used or dropped again; the stream handle is dropped once.
        drop(unsafe { std::ptr::read(&block.stream) });
        block.ptr
    }
}

impl Drop for DeviceBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` is a live allocation of `bytes` bytes made on `stream` and owned by
        // this block alone; the slice frees it on the stream when dropped.
        drop(unsafe { self.stream.upgrade_device_ptr::<u8>(self.ptr, self.bytes) });
    }
}

type SharedPool = Arc<Mutex<Pool<DeviceBlock>>>;
static POOLS: OnceLock<Mutex<HashMap<usize, SharedPool>>> = OnceLock::new();

fn pool(ordinal: usize) -> SharedPool {
    let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    lock(pools).entry(ordinal).or_insert_with(|| Arc::new(Mutex::new(Pool::new()))).clone()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn with_pool<R>(ordinal: usize, f: impl FnOnce(&mut Pool<DeviceBlock>) -> R) -> R {
    f(&mut lock(&pool(ordinal)))
}

/// `n` elements of device memory on `dev`'s compute stream, contents unspecified: a cached
/// block of the size class when there is one, else a fresh allocation (no memset). When the
/// driver refuses, the cache is freed and the allocation retried once.
pub(crate) fn alloc<T: CudaElement>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    let stream = dev.stream();
    let class = size_class(n * size_of::<T>());
    if class == 0 {
        // SAFETY: an empty allocation has no contents to misread.
        return unsafe { stream.alloc::<T>(0) }.map_err(dev.error("allocating an empty buffer"));
    }
    let kind = stream.cu_stream() as usize as u64;
    let pool = pool(dev.ordinal());
    for attempt in 0..2 {
        let mut evicted = Vec::new();
        let cached = lock(&pool).take(kind, class, &mut evicted).map_err(|oom| oom_error(dev.device(), oom))?;
        drop(evicted);
        let ptr = match cached {
            Some(block) => block.into_ptr(),
            // SAFETY: the memory is left unset: `try_empty` promises unspecified contents and
            // every other caller overwrites it (memset or copy) before reading.
            None => match unsafe { stream.alloc::<u8>(class) } {
                Ok(slice) => slice.leak(),
                // the driver's error is not kept: OutOfMemory carries the numbers that matter
                Err(_) => {
                    let mut p = lock(&pool);
                    p.release(class);
                    if attempt == 0 {
                        let mut cache = Vec::new();
                        p.drain(&mut cache);
                        drop(p);
                        drop(cache);
                        dev.synchronize()?; // the frees above are stream-ordered
                        continue;
                    }
                    let mut oom = p.oom(class);
                    if let Ok((free, _)) = dev.context().mem_get_info() {
                        oom.largest_free = if oom.budget.is_some() { oom.largest_free.min(free) } else { free };
                    }
                    drop(p);
                    return Err(oom_error(dev.device(), oom));
                }
            },
        };
        // SAFETY: `ptr` is a block of `class >= n * size_of::<T>()` bytes on this stream,
        // owned by the slice from here until `give` takes it back.
        return Ok(unsafe { stream.upgrade_device_ptr::<T>(ptr, n) });
    }
    unreachable!("the second attempt returns")
}

/// A tensor's device buffer comes back to its device's pool (it must have come from
/// [`alloc`]: its class is recomputed from its length).
pub(crate) fn give<T: CudaElement>(slice: CudaSlice<T>) {
    let class = size_class(slice.len() * size_of::<T>());
    if class == 0 {
        return;
    }
    let stream = slice.stream().clone();
    let kind = stream.cu_stream() as usize as u64;
    let ordinal = slice.ordinal();
    let ptr = slice.leak();
    lock(&pool(ordinal)).give(kind, class, DeviceBlock { ptr, bytes: class, stream });
}

pub(super) fn set_budget(ordinal: usize, budget: Option<usize>) {
    let mut evicted = Vec::new();
    with_pool(ordinal, |p| p.set_budget(budget, &mut evicted));
}

pub(super) fn empty_cache(ordinal: usize) {
    let mut evicted = Vec::new();
    with_pool(ordinal, |p| p.drain(&mut evicted));
}
