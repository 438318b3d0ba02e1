//! The prefetching loader: a persistent rayon pool gathers sampled windows from the split
//! (memory-mapped shards or in-memory tokens) into a ring of host batch buffers, up to
//! `prefetch` batches ahead of the consumer.
//!
//! Ring protocol. There are `prefetch` slots. A free slot is handed to the pool together with
//! the window numbers of the next batch (drawn from the sampler on the consumer's thread,
//! so the order is deterministic whatever the workers' timing); a worker fills it and sends
//! it back; [`Loader::next_batch`] hands batches out strictly in order. A slot goes back to the
//! pool only when the consumer drops its [`LoadedBatch`], so a buffer is never refilled
//! while it is being read.
//!
//! Where CUDA plugs in (engine/src/staging.rs does this). Supply a [`HostAllocator`] whose
//! buffers are pinned (page-locked, `cuMemHostAlloc`) and each carry a CUDA event:
//! 1. the consumer takes a batch with [`Loader::next_batch`], enqueues the host-to-device copy of
//!    [`LoadedBatch::windows`] on the dedicated copy stream (asynchronous, since the memory
//!    is pinned; two strided copies, pitch T+1, give inputs (B, T) and targets (B, T)),
//!    records the slot's event ([`LoadedBatch::buffer`]) on the copy stream, makes the
//!    compute stream wait on an event of the copy (`cuStreamWaitEvent`: compute waits only
//!    for its own batch), and drops the batch right away, without waiting for the copy;
//! 2. before a worker writes into a slot it calls [`HostBuffer::wait_reusable`], which for a
//!    pinned buffer synchronizes on the slot's event: the buffer is refilled only after its
//!    copy has completed (a failure there is reported as [`Error::LoaderWorker`]). The
//!    pageable `Vec<u32>` used on the CPU has no copy in flight, so its `wait_reusable`
//!    does nothing.
//!
//! Nothing else changes: same ring, same order, same sampler state.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::sampler::{EpochSampler, SamplerState};
use crate::split::{Split, WindowIndex};
use crate::{Batch, Error, Result};

/// Host memory for one batch of windows, (B, T+1) u32 token ids row-major.
pub trait HostBuffer: Send + 'static {
    fn tokens(&self) -> &[u32];
    fn tokens_mut(&mut self) -> &mut [u32];
    /// Called by a worker right before it overwrites the buffer. A pinned buffer whose
    /// device copy may still be in flight waits here for the slot's event. An `Err` (the
    /// wait itself failed) fails the batch with [`Error::LoaderWorker`] carrying the text.
    fn wait_reusable(&mut self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Makes the ring's buffers.
pub trait HostAllocator {
    type Buffer: HostBuffer;
    /// A buffer of `tokens` u32 token ids.
    fn allocate(&self, tokens: usize) -> Result<Self::Buffer>;
}

impl HostBuffer for Vec<u32> {
    fn tokens(&self) -> &[u32] {
        self
    }
    fn tokens_mut(&mut self) -> &mut [u32] {
        self
    }
}

/// Ordinary (pageable) heap buffers: the CPU backend's ring.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageableAllocator;

impl HostAllocator for PageableAllocator {
    type Buffer = Vec<u32>;
    fn allocate(&self, tokens: usize) -> Result<Vec<u32>> {
        Ok(vec![0; tokens])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// B: windows per batch.
    pub batch_size: usize,
    /// T: each window is T+1 tokens.
    pub seq_len: usize,
    /// Threads in the gather pool (at least 1).
    pub num_workers: usize,
    /// Slots in the ring: batches filled ahead of the consumer (at least 1).
    pub prefetch: usize,
}

struct Filled<B> {
    seq: u64,
    buffer: B,
    window_ids: Vec<u64>,
    /// The sampler state once this batch is consumed.
    state_after: SamplerState,
}

type Message<B> = std::result::Result<Filled<B>, (u64, String)>;

pub struct Loader<A: HostAllocator = PageableAllocator> {
    pool: rayon::ThreadPool,
    split: Arc<Split>,
    index: Arc<WindowIndex>,
    config: LoaderConfig,
    /// Draws the windows of the next batch to issue (ahead of the consumer).
    sampler: EpochSampler,
    tx: Sender<Message<A::Buffer>>,
    rx: Receiver<Message<A::Buffer>>,
    /// Filled batches received out of order, waiting for their turn.
    arrived: VecDeque<Filled<A::Buffer>>,
    next_issue: u64,
    next_consume: u64,
    consumed_state: SamplerState,
    last_wait: Duration,
    allocator: A,
}

impl<A: HostAllocator> Loader<A> {
    /// Starts the pool and fills every slot, beginning at `sampler`'s current state.
    pub fn new(split: Arc<Split>, index: WindowIndex, sampler: EpochSampler, config: LoaderConfig, allocator: A) -> Result<Self> {
        if config.num_workers == 0 || config.prefetch == 0 || config.batch_size == 0 || config.seq_len != index.seq_len() {
            return Err(Error::LoaderConfig(format!(
                "{config:?} (num_workers, prefetch and batch_size must be at least 1; seq_len must be the index's {})",
                index.seq_len()
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.num_workers)
            .thread_name(|i| format!("data-worker-{i}"))
            .build()
            .map_err(|e| Error::LoaderConfig(format!("cannot start {} data workers: {e}", config.num_workers)))?;
        let (tx, rx) = channel();
        let consumed_state = sampler.state();
        let mut loader = Self {
            pool,
            split,
            index: Arc::new(index),
            config,
            sampler,
            tx,
            rx,
            arrived: VecDeque::new(),
            next_issue: 0,
            next_consume: 0,
            consumed_state,
            last_wait: Duration::ZERO,
            allocator,
        };
        for _ in 0..config.prefetch {
            let buffer = loader.allocator.allocate(config.batch_size * (config.seq_len + 1))?;
            loader.issue(buffer);
        }
        Ok(loader)
    }

    /// The sampler state after the last batch handed out by [`next_batch`](Self::next_batch): save it
    /// in a checkpoint and pass it to a new loader to continue exactly here.
    pub fn state(&self) -> SamplerState {
        self.consumed_state
    }

    /// How long the last [`next_batch`](Self::next_batch) call blocked waiting for a worker.
    pub fn last_wait(&self) -> Duration {
        self.last_wait
    }

    pub fn config(&self) -> LoaderConfig {
        self.config
    }

    /// Hands `buffer` to the pool to be filled with the next batch in sampler order.
    fn issue(&mut self, mut buffer: A::Buffer) {
        let window_ids: Vec<u64> = (0..self.config.batch_size).map(|_| self.sampler.next_window()).collect();
        let state_after = self.sampler.state();
        let seq = self.next_issue;
        self.next_issue += 1;
        let (split, index, tx, row) = (self.split.clone(), self.index.clone(), self.tx.clone(), self.config.seq_len + 1);
        self.pool.spawn(move || {
            let filled = catch_unwind(AssertUnwindSafe(|| {
                buffer.wait_reusable()?;
                gather(&split, &index, &window_ids, row, buffer.tokens_mut());
                Ok::<(), String>(())
            }));
            let message = match filled {
                Ok(Ok(())) => Ok(Filled { seq, buffer, window_ids, state_after }),
                Ok(Err(msg)) => Err((seq, format!("waiting for the slot's previous copy: {msg}"))),
                Err(panic) => Err((seq, panic_text(panic))),
            };
            // The receiver is gone only if the loader was dropped: nothing to do then.
            let _ = tx.send(message);
        });
    }

    /// The next batch in order, blocking until a worker has filled it. Its slot is refilled
    /// when the returned batch is dropped.
    pub fn next_batch(&mut self) -> Result<LoadedBatch<'_, A>> {
        let started = Instant::now();
        let filled = loop {
            if let Some(i) = self.arrived.iter().position(|f| f.seq == self.next_consume) {
                break self.arrived.remove(i).expect("index from position");
            }
            match self.rx.recv() {
                Ok(Ok(f)) => self.arrived.push_back(f),
                Ok(Err((seq, msg))) => return Err(Error::LoaderWorker { batch: seq, msg }),
                Err(_) => unreachable!("the loader holds a sender, so the channel stays open"),
            }
        };
        self.last_wait = started.elapsed();
        self.next_consume += 1;
        self.consumed_state = filled.state_after;
        Ok(LoadedBatch { loader: self, filled: Some(filled) })
    }
}

/// Copies windows `window_ids` into `out`, (B, T+1) with `row` = T+1, using the pool the
/// caller runs on (rows in parallel when other workers are idle).
fn gather(split: &Split, index: &WindowIndex, window_ids: &[u64], row: usize, out: &mut [u32]) {
    out.par_chunks_mut(row).zip(window_ids.par_iter()).with_min_len(4).for_each(|(dst, &w)| split.read_window(index, w, dst));
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a data worker panicked".into())
}

/// A filled batch on loan from the ring; dropping it returns the slot for refilling.
pub struct LoadedBatch<'a, A: HostAllocator> {
    loader: &'a mut Loader<A>,
    filled: Option<Filled<A::Buffer>>,
}

impl<A: HostAllocator> LoadedBatch<'_, A> {
    fn filled(&self) -> &Filled<A::Buffer> {
        self.filled.as_ref().expect("present until drop")
    }

    /// (B, T+1) token ids, row-major: row b is window `window_ids()[b]`.
    pub fn windows(&self) -> &[u32] {
        &self.filled().buffer.tokens()[..self.loader.config.batch_size * (self.loader.config.seq_len + 1)]
    }

    /// The slot's buffer itself, for the consumer to start a device copy from it and
    /// record the event its [`HostBuffer::wait_reusable`] waits on.
    pub fn buffer(&self) -> &A::Buffer {
        &self.filled().buffer
    }

    /// The global window numbers of the rows.
    pub fn window_ids(&self) -> &[u64] {
        &self.filled().window_ids
    }

    /// How long [`Loader::next_batch`] blocked before this batch was ready.
    pub fn waited(&self) -> Duration {
        self.loader.last_wait
    }

    /// Inputs (B, T) and targets (B, T), copied out of the slot.
    pub fn to_batch(&self) -> Batch {
        Batch::from_windows(self.windows(), self.loader.config.seq_len)
    }
}

impl<A: HostAllocator> Drop for LoadedBatch<'_, A> {
    fn drop(&mut self) {
        if let Some(filled) = self.filled.take() {
            self.loader.issue(filled.buffer);
        }
    }
}
