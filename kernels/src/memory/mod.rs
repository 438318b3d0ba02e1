//! The memory pool: one caching allocator per device (the CPU, and each CUDA ordinal), with
//! a hard budget and statistics. Every tensor buffer is taken from and given back to the
//! pool of its device ([`Tensor::try_empty`](crate::Tensor::try_empty), `try_zeros`, copies,
//! and dropping the last clone of a tensor).
//!
//! # API
//!
//! ```text
//! memory::stats(device) -> PoolStats       // in_use, peak, reserved, cached, budget,
//!                                          // allocations, hits, misses; .hit_rate()
//! memory::in_use(device) / memory::peak(device) -> usize (bytes)
//! memory::reset_peak(device)               // peak := in_use (measure one phase's peak)
//! memory::set_budget(device, Option<usize>)// None = unlimited (the default)
//! memory::empty_cache(device)              // give every cached block back to the system
//! Budget::parse("20GiB" | "512MiB" | "90%")?.resolve(device)? -> Option<usize>
//! memory::set_poison(true)                 // tests: uncleared buffers start as NaN
//! ```
//!
//! # How it works
//! - **Size classes** ([`size_class`]): a request is rounded up to a multiple of 512 B (up to
//!   1 MiB), above that to one of 8 classes per power of two (at most 12.5% slack). The
//!   rounded size is what is allocated, cached and charged to the budget. A freed block is
//!   cached and reused for the next request of the same class; blocks are never split or
//!   merged, so they never fragment, at the price of the rounding slack and of a cache that
//!   holds, per class, the most blocks ever live at once. A training step asks for the same
//!   sizes every step, so after the first step nearly every allocation is a cache hit.
//! - **Budget**: `reserved = in_use + cached <= budget` always holds. A request that does
//!   not fit first frees cached blocks (largest first); if `in_use + request` still exceeds
//!   the budget it fails with [`Error::OutOfMemory`](crate::Error::OutOfMemory) (requested,
//!   in use, budget, largest free = the largest request that would succeed now), never a
//!   panic. Without a budget a request fails only when the system refuses it (the driver's
//!   out-of-memory on a GPU, after freeing the cache and retrying once).
//! - **Uncleared memory**: `try_empty` hands out a cached block as it is (every op
//!   overwrites its outputs), on the GPU too, where a fresh block is not memset either.
//!   Tests call [`set_poison`] so such buffers start as NaN and an unwritten element fails.
//! - **CUDA, stream rule**: a device block is tagged with the stream it lives on (the
//!   device's compute stream for every tensor) and is reused only on that stream. A block
//!   goes back to the pool when its tensor is dropped, while kernels queued on that stream
//!   may still use it; that is safe without a sync because the next user's kernels are
//!   queued on the same stream, after them. Code that touches a tensor from another stream
//!   (the data copy stream) must make the compute stream wait for that work (an event)
//!   before the tensor is dropped. See cuda.rs for the choice of raw blocks over cached
//!   `CudaSlice`s.
//! - **Cost**: one uncontended mutex per allocation and per free (tens of nanoseconds), no
//!   memset on a cache hit.

mod budget;
mod cuda;
mod host;
mod pool;

pub use budget::Budget;
pub(crate) use cuda::{alloc as cuda_alloc, give as cuda_give};
pub(crate) use host::{adopt as host_adopt, give as host_give, take as host_take, HostBuf, HostElement};
pub use host::{poison, set_poison};
pub use pool::{size_class, Oom};

use crate::Device;

/// A snapshot of one device's pool. Byte counts are size-class rounded (what the budget sees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of live tensors.
    pub in_use: usize,
    /// The most `in_use` has been since the pool started or [`reset_peak`].
    pub peak: usize,
    /// `in_use + cached`: what the pool holds from the system.
    pub reserved: usize,
    /// Bytes of freed blocks kept for reuse.
    pub cached: usize,
    pub budget: Option<usize>,
    /// Requests served (hits + misses).
    pub allocations: u64,
    /// Requests served from the cache.
    pub hits: u64,
    /// Requests that allocated fresh memory (or failed).
    pub misses: u64,
}

impl PoolStats {
    /// Fraction of requests served from the cache (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        if self.allocations == 0 {
            0.0
        } else {
            self.hits as f64 / self.allocations as f64
        }
    }
}

impl std::fmt::Display for PoolStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let budget = self.budget.map(fmt_bytes).unwrap_or_else(|| "unlimited".into());
        write!(
            f,
            "peak {}, reserved {}, in use {}, budget {}, {} allocations, hit rate {:.1}%",
            fmt_bytes(self.peak),
            fmt_bytes(self.reserved),
            fmt_bytes(self.in_use),
            budget,
            self.allocations,
            100.0 * self.hit_rate()
        )
    }
}

/// The statistics of `device`'s pool (zeros for a device nothing was allocated on).
pub fn stats(device: Device) -> PoolStats {
    match device {
        Device::Cpu => host::with_pool(|p| p.stats()),
        Device::Cuda(ordinal) => cuda::with_pool(ordinal, |p| p.stats()),
    }
}

/// Bytes of live tensors on `device`.
pub fn in_use(device: Device) -> usize {
    stats(device).in_use
}

/// The most bytes live at once on `device` since the start or the last [`reset_peak`].
pub fn peak(device: Device) -> usize {
    stats(device).peak
}

/// Starts a new peak measurement on `device`: peak := in use now.
pub fn reset_peak(device: Device) {
    match device {
        Device::Cpu => host::with_pool(|p| p.reset_peak()),
        Device::Cuda(ordinal) => cuda::with_pool(ordinal, |p| p.reset_peak()),
    }
}

/// Sets `device`'s budget in bytes (`None`: unlimited) and frees cached blocks beyond it.
/// Live tensors are not touched: if they already exceed it, the next request fails.
pub fn set_budget(device: Device, budget: Option<usize>) {
    match device {
        Device::Cpu => host::set_budget(budget),
        Device::Cuda(ordinal) => cuda::set_budget(ordinal, budget),
    }
}

/// Frees every cached block of `device` (live tensors stay).
pub fn empty_cache(device: Device) {
    match device {
        Device::Cpu => host::empty_cache(),
        Device::Cuda(ordinal) => cuda::empty_cache(ordinal),
    }
}

/// `bytes` for people: "512 B", "1.50 KiB", "20.00 GiB".
pub fn fmt_bytes(bytes: usize) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}
