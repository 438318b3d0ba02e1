//! The ring protocol the CUDA staging relies on (datasets/src/loader.rs, "Where CUDA plugs
//! in"), checked on the CPU with a simulated copy: a slot whose copy is still in flight is
//! not written until [`HostBuffer::wait_reusable`] returns, and a failed wait is an error
//! naming the batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use datasets::{EpochSampler, HostAllocator, HostBuffer, Loader, LoaderConfig, Order, PageableAllocator, Split};

/// Stands in for a CUDA event: set when a copy out of the slot starts, cleared by the
/// "copy engine" thread when it ends.
#[derive(Default)]
struct Fence {
    in_flight: Mutex<bool>,
    done: Condvar,
}

#[derive(Default)]
struct Counters {
    /// Refills that found the slot's copy still in flight and waited.
    waited: AtomicU64,
    /// Writes into a slot whose copy had not completed: must stay 0.
    early_writes: AtomicU64,
}

struct FencedBuffer {
    tokens: Vec<u32>,
    fence: Arc<Fence>,
    counters: Arc<Counters>,
    /// Fail the wait on this fill (1 = the first fill at start-up), to check error reporting.
    fail_on_refill: Option<u64>,
    refills: u64,
}

impl HostBuffer for FencedBuffer {
    fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    fn tokens_mut(&mut self) -> &mut [u32] {
        if *self.fence.in_flight.lock().unwrap() {
            self.counters.early_writes.fetch_add(1, Ordering::Relaxed);
        }
        &mut self.tokens
    }
    fn wait_reusable(&mut self) -> Result<(), String> {
        self.refills += 1;
        if self.fail_on_refill == Some(self.refills) {
            return Err("simulated event failure".into());
        }
        let mut in_flight = self.fence.in_flight.lock().unwrap();
        if *in_flight {
            self.counters.waited.fetch_add(1, Ordering::Relaxed);
        }
        while *in_flight {
            in_flight = self.fence.done.wait(in_flight).unwrap();
        }
        Ok(())
    }
}

struct FencedAllocator {
    counters: Arc<Counters>,
    fail_on_refill: Option<u64>,
}

impl HostAllocator for FencedAllocator {
    type Buffer = FencedBuffer;
    fn allocate(&self, tokens: usize) -> datasets::Result<FencedBuffer> {
        Ok(FencedBuffer {
            tokens: vec![0; tokens],
            fence: Arc::default(),
            counters: self.counters.clone(),
            fail_on_refill: self.fail_on_refill,
            refills: 0,
        })
    }
}

fn split() -> Arc<Split> {
    Arc::new(Split::from_tokens("t", (0..20_000u32).map(|t| t % 251).collect()))
}

fn loader<A: HostAllocator>(split: &Arc<Split>, allocator: A, prefetch: usize) -> Loader<A> {
    let cfg = LoaderConfig { batch_size: 4, seq_len: 16, num_workers: 2, prefetch };
    let index = split.windows(cfg.seq_len).unwrap();
    let sampler = EpochSampler::new(7, index.count(), 0, 1, Order::Shuffled).unwrap();
    Loader::new(split.clone(), index, sampler, cfg, allocator).unwrap()
}

#[test]
fn a_slot_is_refilled_only_after_its_copy_completes() {
    let split = split();
    let counters = Arc::new(Counters::default());
    let mut fenced = loader(&split, FencedAllocator { counters: counters.clone(), fail_on_refill: None }, 2);
    let mut plain = loader(&split, PageableAllocator, 2);
    for _ in 0..30 {
        let expected = plain.next_batch().unwrap().windows().to_vec();
        let batch = fenced.next_batch().unwrap();
        assert_eq!(batch.windows(), expected, "same batches as the pageable ring");
        // "Issue the copy": the slot is busy until the copy engine thread says it is done,
        // and the batch is dropped (the slot handed back to the workers) right away.
        let fence = batch.buffer().fence.clone();
        *fence.in_flight.lock().unwrap() = true;
        drop(batch);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(3));
            *fence.in_flight.lock().unwrap() = false;
            fence.done.notify_all();
        });
    }
    assert_eq!(counters.early_writes.load(Ordering::Relaxed), 0, "a slot was written while its copy was in flight");
    assert!(counters.waited.load(Ordering::Relaxed) > 0, "no refill ever found a copy in flight: the test did not exercise the wait");
}

#[test]
fn a_failed_wait_is_an_error_naming_the_batch() {
    let split = split();
    let allocator = FencedAllocator { counters: Arc::default(), fail_on_refill: Some(2) };
    let mut loader = loader(&split, allocator, 1);
    drop(loader.next_batch().unwrap());
    let err = loader.next_batch().err().expect("the refill's wait failed").to_string();
    assert_eq!(err, "data worker failed on batch 1: waiting for the slot's previous copy: simulated event failure");
}
