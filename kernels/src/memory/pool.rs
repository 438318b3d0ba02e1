//! The device-independent heart of the pool: size classes, the free-block cache, the budget
//! and the statistics. The CPU and CUDA halves (host.rs, cuda.rs) own the actual buffers
//! and call in here under their lock; nothing here allocates or frees memory itself, so the
//! whole mechanism is tested below with plain tokens as blocks.

use std::collections::BTreeMap;

use super::{fmt_bytes, PoolStats};

/// Requests up to this size are rounded up to a multiple of [`SMALL_STEP`].
const SMALL_LIMIT: usize = 1 << 20;
const SMALL_STEP: usize = 512;
/// Above [`SMALL_LIMIT`], each power of two is split into this many classes, so a block is
/// at most 1/8 (12.5%) larger than its request.
const LARGE_CLASSES_PER_DOUBLING: usize = 8;

/// The size class of a request of `bytes`: what the pool allocates, caches and charges to
/// the budget. A freed block is reused only for a request of the same class (no splitting):
/// a training step asks for the same sizes every step, so exact classes reuse nearly
/// everything, and a block never fragments.
pub fn size_class(bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    if bytes <= SMALL_LIMIT {
        return bytes.div_ceil(SMALL_STEP) * SMALL_STEP;
    }
    let step = (1usize << (usize::BITS - 1 - bytes.leading_zeros())) / LARGE_CLASSES_PER_DOUBLING;
    bytes.div_ceil(step) * step
}

/// Why a request cannot be met: the numbers of `Error::OutOfMemory` minus the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Oom {
    pub requested: usize,
    pub in_use: usize,
    pub budget: Option<usize>,
    pub largest_free: usize,
}

/// Free blocks of type `B` by `(kind, class)`, where `kind` separates blocks that must not be
/// mixed (the element type of a host buffer, the stream of a device block).
#[derive(Debug)]
pub(crate) struct Pool<B> {
    budget: Option<usize>,
    free: BTreeMap<(usize, u64), Vec<B>>,
    cached: usize,
    in_use: usize,
    peak: usize,
    allocations: u64,
    hits: u64,
    misses: u64,
}

impl<B> Pool<B> {
    pub(crate) const fn new() -> Self {
        Self { budget: None, free: BTreeMap::new(), cached: 0, in_use: 0, peak: 0, allocations: 0, hits: 0, misses: 0 }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            in_use: self.in_use,
            peak: self.peak,
            reserved: self.in_use + self.cached,
            cached: self.cached,
            budget: self.budget,
            allocations: self.allocations,
            hits: self.hits,
            misses: self.misses,
        }
    }

    pub(crate) fn reset_peak(&mut self) {
        self.peak = self.in_use;
    }

    /// Sets the budget and frees (into `evicted`) cached blocks beyond it.
    pub(crate) fn set_budget(&mut self, budget: Option<usize>, evicted: &mut Vec<B>) {
        self.budget = budget;
        if let Some(b) = budget {
            self.evict(b, 0, evicted);
        }
    }

    /// A cached block of `class` bytes and `kind`, or `None` after reserving `class` bytes
    /// for a fresh allocation the caller makes outside the lock (and undoes with
    /// [`Pool::unreserve`] if it fails). Cached blocks of other classes are moved to
    /// `evicted` (for the caller to free) when the budget needs their room.
    pub(crate) fn take(&mut self, kind: u64, class: usize, evicted: &mut Vec<B>) -> Result<Option<B>, Oom> {
        self.allocations += 1;
        if let Some(list) = self.free.get_mut(&(class, kind)) {
            if let Some(block) = list.pop() {
                if list.is_empty() {
                    self.free.remove(&(class, kind));
                }
                self.hits += 1;
                self.cached -= class;
                self.charge_unchecked(class);
                return Ok(Some(block));
            }
        }
        self.misses += 1;
        self.charge(class, evicted)?;
        Ok(None)
    }

    /// Counts `bytes` as in use (a fresh block, or a buffer adopted from outside the pool),
    /// freeing cached blocks if the budget needs their room; fails past the budget.
    pub(crate) fn charge(&mut self, bytes: usize, evicted: &mut Vec<B>) -> Result<(), Oom> {
        if let Some(budget) = self.budget {
            if self.in_use + bytes > budget {
                return Err(self.oom(bytes));
            }
            self.evict(budget, bytes, evicted);
        }
        self.charge_unchecked(bytes);
        Ok(())
    }

    fn charge_unchecked(&mut self, bytes: usize) {
        self.in_use += bytes;
        self.peak = self.peak.max(self.in_use);
    }

    /// Undoes a reservation whose allocation failed, or a buffer leaving the pool for good.
    pub(crate) fn release(&mut self, bytes: usize) {
        self.in_use -= bytes;
    }

    /// A block of `class` bytes comes back: it is kept for reuse. The budget still holds, as
    /// `in_use + cached` does not change.
    pub(crate) fn give(&mut self, kind: u64, class: usize, block: B) {
        self.in_use -= class;
        self.cached += class;
        self.free.entry((class, kind)).or_default().push(block);
    }

    /// Every cached block, for the caller to free (`empty_cache`, or a failed device
    /// allocation before its retry).
    pub(crate) fn drain(&mut self, evicted: &mut Vec<B>) {
        for (_, list) in std::mem::take(&mut self.free) {
            evicted.extend(list);
        }
        self.cached = 0;
    }

    /// Frees cached blocks, largest first, until `in_use + cached + incoming <= budget`.
    fn evict(&mut self, budget: usize, incoming: usize, evicted: &mut Vec<B>) {
        while self.in_use + self.cached + incoming > budget {
            let Some(mut entry) = self.free.last_entry() else { break };
            let class = entry.key().0;
            let list = entry.get_mut();
            evicted.push(list.pop().expect("empty lists are removed"));
            if list.is_empty() {
                entry.remove();
            }
            self.cached -= class;
        }
    }

    /// The error for a request of `requested` bytes that does not fit.
    pub(crate) fn oom(&self, requested: usize) -> Oom {
        let largest_free = match self.budget {
            Some(b) => b.saturating_sub(self.in_use),
            None => 0,
        };
        Oom { requested, in_use: self.in_use, budget: self.budget, largest_free }
    }
}

impl std::fmt::Display for Oom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let budget = self.budget.map(fmt_bytes).unwrap_or_else(|| "unlimited".into());
        write!(f, "requested {}, in use {}, budget {}, largest free {}", fmt_bytes(self.requested), fmt_bytes(self.in_use), budget, fmt_bytes(self.largest_free))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_little() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        // above 1 MiB: steps of 1/8 of the power of two below
        assert_eq!(size_class((1 << 20) + 1), (1 << 20) + (1 << 17));
        assert_eq!(size_class(3 << 20), 3 << 20);
        for bytes in [1usize, 700, 4096, 100_000, 1 << 20, 1_234_567, 50_000_000, 1 << 33] {
            let c = size_class(bytes);
            assert!(c >= bytes && c - bytes <= (bytes / 8).max(511), "{bytes} -> {c}");
            assert_eq!(size_class(c), c, "a class is its own class");
        }
    }

    #[test]
    fn freed_blocks_are_reused_by_class_and_kind() {
        let mut pool = Pool::<u32>::new();
        let mut ev = Vec::new();
        assert_eq!(pool.take(0, 1024, &mut ev), Ok(None)); // miss: caller allocates block 7
        pool.give(0, 1024, 7);
        assert_eq!(pool.take(1, 1024, &mut ev), Ok(None), "another kind does not get it");
        assert_eq!(pool.take(0, 2048, &mut ev), Ok(None), "another class does not get it");
        assert_eq!(pool.take(0, 1024, &mut ev), Ok(Some(7)));
        let s = pool.stats();
        assert_eq!((s.allocations, s.hits, s.misses), (4, 1, 3));
        assert_eq!(s.hit_rate(), 0.25);
        assert_eq!((s.in_use, s.cached, s.reserved), (1024 * 2 + 2048, 0, 1024 * 2 + 2048));
        assert!(ev.is_empty());
    }

    #[test]
    fn peak_and_reset_peak() {
        let mut pool = Pool::<u32>::new();
        let mut ev = Vec::new();
        pool.take(0, 4096, &mut ev).unwrap();
        pool.take(0, 8192, &mut ev).unwrap();
        pool.give(0, 8192, 1);
        let s = pool.stats();
        assert_eq!((s.in_use, s.peak, s.reserved), (4096, 4096 + 8192, 4096 + 8192));
        pool.reset_peak();
        assert_eq!(pool.stats().peak, 4096);
        pool.take(0, 512, &mut ev).unwrap();
        assert_eq!(pool.stats().peak, 4096 + 512);
    }

    #[test]
    fn over_budget_evicts_cache_then_fails_with_the_numbers() {
        let mut pool = Pool::<u32>::new();
        let mut ev = Vec::new();
        pool.set_budget(Some(10_240), &mut ev);
        pool.take(0, 4096, &mut ev).unwrap();
        pool.take(0, 4096, &mut ev).unwrap();
        pool.give(0, 4096, 1); // in use 4096, cached 4096
        // 6144 fits only once the cached block is freed
        assert_eq!(pool.take(0, 6144, &mut ev), Ok(None));
        assert_eq!(ev, [1]);
        let s = pool.stats();
        assert_eq!((s.in_use, s.cached), (10_240, 0));
        pool.give(0, 6144, 2);
        let err = pool.take(0, 8192, &mut ev).unwrap_err();
        assert_eq!(err, Oom { requested: 8192, in_use: 4096, budget: Some(10_240), largest_free: 6144 });
        assert_eq!(err.to_string(), "requested 8.00 KiB, in use 4.00 KiB, budget 10.00 KiB, largest free 6.00 KiB");
        // the failed request left the counts as they were
        assert_eq!(pool.stats().in_use, 4096);
    }

    /// Random allocate/free sequences under a budget (fixed seed): reserved memory never
    /// exceeds the budget, the counts always add up, and every refusal was necessary.
    #[test]
    fn never_exceeds_the_budget_under_random_traffic() {
        let mut rng = fastrand::Rng::with_seed(5);
        for round in 0..20 {
            let budget = rng.usize(1 << 16..1 << 24);
            let mut pool = Pool::<usize>::new();
            let mut ev = Vec::new();
            pool.set_budget(Some(budget), &mut ev);
            let mut live: Vec<(u64, usize, usize)> = Vec::new(); // (kind, class, block id)
            let (mut next_id, mut freed, mut refused) = (0usize, 0usize, 0usize);
            for _ in 0..2000 {
                if live.is_empty() || rng.u8(..) < 150 {
                    let bytes = if rng.bool() { rng.usize(1..1 << 14) } else { rng.usize(1..budget / 2) };
                    let (kind, class) = (rng.u64(0..3), size_class(bytes));
                    let before = pool.stats();
                    match pool.take(kind, class, &mut ev) {
                        Ok(Some(id)) => live.push((kind, class, id)),
                        Ok(None) => {
                            live.push((kind, class, next_id));
                            next_id += 1;
                        }
                        Err(oom) => {
                            refused += 1;
                            assert!(before.in_use + class > budget, "round {round}: refused although it fit");
                            assert_eq!((oom.requested, oom.in_use, oom.largest_free), (class, before.in_use, budget - before.in_use));
                        }
                    }
                } else {
                    let (kind, class, id) = live.swap_remove(rng.usize(..live.len()));
                    pool.give(kind, class, id);
                }
                freed += ev.drain(..).count();
                let s = pool.stats();
                assert!(s.reserved <= budget, "round {round}: reserved {} > budget {budget}", s.reserved);
                assert_eq!(s.in_use, live.iter().map(|l| l.1).sum::<usize>());
                assert!(s.peak >= s.in_use && s.peak <= budget);
            }
            assert!(refused > 0 && freed > 0 && pool.stats().hits > 0, "round {round}: the sequence exercised every path");
        }
    }
}
