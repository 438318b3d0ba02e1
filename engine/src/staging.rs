//! Data staging: training batches from the loader's ring to the device the model runs on.
//!
//! On the CPU, [`Stager::Cpu`] is the loader's ring of pageable buffers; each batch is
//! copied out of its slot into the model's input tensors.
//!
//! On a GPU, [`Stager::Cuda`] runs the pipeline of BRIEF §2 / issue 4:
//!
//! ```text
//! workers --fill--> pinned slot --copy stream, 2 strided copies--> device slot (inputs, targets)
//!                        ^                         |  record copy_end
//!                        |                         v
//!      wait_reusable: blocks on the      compute stream waits on copy_end, then the step
//!      slot's event (recorded after      (other batches' copies go on meanwhile)
//!      the copy) before a refill
//! ```
//!
//! - Host ring: `data.prefetch` pinned slots ([`PinnedAllocator`]). The consumer issues the
//!   slot's copy, records the slot's own event after it, and hands the slot back at once; a
//!   worker refills it only after that event completes ([`PinnedSlot::wait_reusable`]).
//! - Device ring: [`DEVICE_SLOTS`] pairs of (B, T) u32 tensors. Before a copy writes a
//!   device slot, the copy stream waits on an event recorded on the compute stream at that
//!   moment, which follows every step that read the slot. Three slots: the batch the step
//!   reads, the next batch being copied, and the previous batch, which the model may still
//!   hold (saved for backward) until its next forward replaces it. If a slot's tensors are
//!   still shared anyway, the write goes to a fresh copy of them (copy-on-write), never
//!   into memory a live tensor reads.
//! - Look-ahead: [`Stager::next_batch`] hands out batch n (its copy issued during the previous
//!   call) and issues the copy of batch n + 1 before returning, so that copy runs while the
//!   compute stream works on batch n. Only the first batch is copied on demand.
//! - Measured: [`StagedBatch::waited`] is how long the host blocked for the loader's
//!   workers (the same `data_wait_ms` as on the CPU). Per batch, four timing events give
//!   [`CopyTiming`]: the copy's GPU time, how much of it ran before the compute stream
//!   reached the batch (overlap), and how long the compute stream stood waiting for it.
//!
//!   The events are read without blocking the host: [`Stager::take_copy_timing`] reads
//!   the batches whose events have completed (in order) and waits only when asked to, on
//!   the steps where the trainer waits for the device anyway.
//!
//! The sampler state ([`Stager::state`]) is the one after the last batch handed to the
//! trainer, not after the look-ahead batch, so checkpoints resume exactly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datasets::{EpochSampler, HostAllocator, HostBuffer, Loader, LoaderConfig, PageableAllocator, SamplerState, Split, WindowIndex};
use kernels::cuda::{self, copy_rows_htod, wait_event, CudaDevice, CudaStream, Event, EventKind, PinnedBuffer};
use kernels::{DType, Device, Tensor};

use crate::Result;

/// Device batch slots on a GPU (see the module docs for why three).
pub const DEVICE_SLOTS: usize = 3;

/// One loader batch (`LoaderConfig::batch_size` windows; in training a whole step, which the
/// trainer cuts into micro-batches) on the model's device.
#[derive(Debug)]
pub struct StagedBatch {
    /// (B, T) u32 token ids.
    pub inputs: Tensor,
    /// (B, T) u32: `inputs` shifted by one token.
    pub targets: Tensor,
    /// How long the host blocked waiting for the loader's workers in this call.
    pub waited: Duration,
}

/// Copy timings summed over some batches, from CUDA events (milliseconds of GPU time).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CopyTiming {
    /// Batches measured.
    pub batches: u32,
    /// Host-to-device copy time on the copy stream (both strided copies).
    pub copy_ms: f64,
    /// The part of `copy_ms` that ran before the compute stream reached the batch, i.e.
    /// while it was still on earlier work: hidden behind compute.
    pub overlapped_ms: f64,
    /// How long the compute stream stood waiting for the copies to finish.
    pub stall_ms: f64,
}

impl CopyTiming {
    /// `overlapped_ms / copy_ms`, or `None` when nothing was copied.
    pub fn overlap(&self) -> Option<f64> {
        (self.copy_ms > 0.0).then(|| self.overlapped_ms / self.copy_ms)
    }

    fn add(&mut self, other: CopyTiming) {
        self.batches += other.batches;
        self.copy_ms += other.copy_ms;
        self.overlapped_ms += other.overlapped_ms;
        self.stall_ms += other.stall_ms;
    }

    /// One batch's timing from its events, as milliseconds from any common origin: the copy
    /// ran in [`copy_start`, `copy_end`] on the copy stream; the compute stream reached the
    /// batch (finished the work queued before it) at `ready` and went on at `resumed`,
    /// once the copy was done.
    pub fn from_marks(copy_start: f64, copy_end: f64, ready: f64, resumed: f64) -> Self {
        let copy_ms = (copy_end - copy_start).max(0.0);
        let overlapped_ms = (ready.min(copy_end) - copy_start).clamp(0.0, copy_ms);
        CopyTiming { batches: 1, copy_ms, overlapped_ms, stall_ms: (resumed - ready).max(0.0) }
    }
}

/// Counters of the pinned ring, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Slot fills, the first fill of each slot included.
    pub fills: AtomicU64,
    /// Fills that found the slot's previous copy still in flight and blocked on its event.
    pub fills_waited: AtomicU64,
    /// Fills that went ahead while the event still said "in flight": must stay 0.
    pub fills_early: AtomicU64,
}

/// Pinned host buffers, one event each, for the loader's ring on a GPU.
pub struct PinnedAllocator {
    dev: Arc<CudaDevice>,
    stats: Arc<RingStats>,
}

impl PinnedAllocator {
    /// An allocator of pinned slots on `dev`, its counters at 0.
    pub fn new(dev: Arc<CudaDevice>) -> Self {
        Self { dev, stats: Arc::default() }
    }

    /// The counters shared by every slot this allocator made.
    pub fn stats(&self) -> Arc<RingStats> {
        self.stats.clone()
    }
}

impl HostAllocator for PinnedAllocator {
    type Buffer = PinnedSlot;
    fn allocate(&self, tokens: usize) -> datasets::Result<PinnedSlot> {
        let to_data_error = |e: kernels::Error| datasets::Error::LoaderConfig(format!("pinned batch buffer: {e}"));
        Ok(PinnedSlot {
            host: self.dev.alloc_pinned(tokens).map_err(to_data_error)?,
            copied: self.dev.new_event(EventKind::Sync).map_err(to_data_error)?,
            stats: self.stats.clone(),
        })
    }
}

/// A pinned slot of the loader's ring and the event recorded after its last copy.
pub struct PinnedSlot {
    host: PinnedBuffer<u32>,
    copied: Event,
    stats: Arc<RingStats>,
}

impl PinnedSlot {
    /// The pinned memory, for the copy.
    pub fn pinned(&self) -> &PinnedBuffer<u32> {
        &self.host
    }

    /// Record this on the copy stream right after the slot's copy.
    pub fn copied_event(&self) -> &Event {
        &self.copied
    }
}

impl HostBuffer for PinnedSlot {
    fn tokens(&self) -> &[u32] {
        self.host.as_slice()
    }
    fn tokens_mut(&mut self) -> &mut [u32] {
        self.host.as_mut_slice()
    }
    fn wait_reusable(&mut self) -> std::result::Result<(), String> {
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        if !self.copied.is_complete().map_err(|e| e.to_string())? {
            self.stats.fills_waited.fetch_add(1, Ordering::Relaxed);
            self.copied.synchronize().map_err(|e| e.to_string())?;
        }
        if !self.copied.is_complete().map_err(|e| e.to_string())? {
            self.stats.fills_early.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Drop for PinnedSlot {
    fn drop(&mut self) {
        // The memory is freed right after this: no copy may still be reading it.
        let _ = self.copied.synchronize();
    }
}

/// Training batches for the model's device (module docs).
pub enum Stager {
    /// On the CPU: the loader's ring of pageable buffers, each batch copied out of its slot.
    Cpu(Loader<PageableAllocator>),
    /// On a GPU: pinned ring, copy stream and device ring.
    Cuda(CudaStager),
}

impl Stager {
    /// Starts the loader's workers for `device`: pageable buffers on the CPU, the pinned
    /// ring, copy stream and device ring on a GPU.
    pub fn new(device: Device, split: Arc<Split>, index: WindowIndex, sampler: EpochSampler, config: LoaderConfig) -> Result<Self> {
        Ok(match device {
            Device::Cpu => Stager::Cpu(Loader::new(split, index, sampler, config, PageableAllocator)?),
            Device::Cuda(ordinal) => Stager::Cuda(CudaStager::new(cuda::device(ordinal)?, split, index, sampler, config)?),
        })
    }

    /// The next batch, in sampler order, on the device.
    pub fn next_batch(&mut self) -> Result<StagedBatch> {
        match self {
            Stager::Cpu(loader) => {
                let loaded = loader.next_batch()?;
                let waited = loaded.waited();
                let batch = loaded.to_batch();
                drop(loaded);
                let shape = [batch.batch_size, batch.seq_len];
                let inputs = Tensor::from_u32(&shape, batch.inputs)?;
                let targets = Tensor::from_u32(&shape, batch.targets)?;
                Ok(StagedBatch { inputs, targets, waited })
            }
            Stager::Cuda(stager) => stager.next_batch(),
        }
    }

    /// The sampler state after the last batch [`next_batch`](Self::next_batch) returned.
    pub fn state(&self) -> SamplerState {
        match self {
            Stager::Cpu(loader) => loader.state(),
            Stager::Cuda(stager) => stager.state(),
        }
    }

    /// Copy timings by group: the batches handed out between two calls are one group,
    /// numbered from 0 by the call that closes it (the trainer calls once per step, so a
    /// group is a step's batches). Returns the groups whose timings are now all read, in
    /// order; with `wait` false it reads only events that have completed and never blocks
    /// the host, so a group may come back a few calls later; with `wait` true it waits for
    /// every batch handed out so far. Empty on the CPU.
    pub fn take_copy_timing(&mut self, wait: bool) -> Result<Vec<(u64, CopyTiming)>> {
        match self {
            Stager::Cpu(_) => Ok(Vec::new()),
            Stager::Cuda(stager) => stager.take_copy_timing(wait),
        }
    }
}

/// The timing events of one batch (see [`CopyTiming::from_marks`]).
struct BatchEvents {
    /// Copy stream, before and after the two copies.
    copy_start: Event,
    copy_end: Event,
    /// Compute stream, before and after it waits on `copy_end`.
    ready: Event,
    resumed: Event,
}

impl BatchEvents {
    fn new(dev: &CudaDevice) -> Result<Self> {
        let event = || dev.new_event(EventKind::Timing);
        Ok(Self { copy_start: event()?, copy_end: event()?, ready: event()?, resumed: event()? })
    }

    /// Whether all four have completed (`resumed` is the compute stream's last, `copy_end`
    /// the copy stream's), without waiting.
    fn is_complete(&self) -> Result<bool> {
        Ok(self.resumed.is_complete()? && self.copy_end.is_complete()?)
    }

    /// The batch's timing; waits for the events if they have not completed.
    fn timing(&self) -> Result<CopyTiming> {
        // Origin: copy_start.
        let ms = |e: &Event| self.copy_start.elapsed_ms(e).map(f64::from);
        Ok(CopyTiming::from_marks(0.0, ms(&self.copy_end)?, ms(&self.ready)?, ms(&self.resumed)?))
    }
}

/// A device slot: the batch tensors and the events of the copy into them (handed over to
/// [`Untimed`] when the batch is handed out, so the slot's next copy records fresh ones).
struct DeviceSlot {
    inputs: Tensor,
    targets: Tensor,
    events: BatchEvents,
}

/// A batch handed out whose timing has not been read, and its group.
struct Untimed {
    events: BatchEvents,
    group: u64,
}

/// A batch whose copy has been issued.
struct Issued {
    slot: usize,
    waited: Duration,
    state_after: SamplerState,
}

/// The GPU pipeline: pinned ring, copy stream, device ring (module docs).
pub struct CudaStager {
    dev: Arc<CudaDevice>,
    copy: Arc<CudaStream>,
    loader: Loader<PinnedAllocator>,
    stats: Arc<RingStats>,
    slots: Vec<DeviceSlot>,
    next_slot: usize,
    /// Recorded on the compute stream before each copy; the copy stream waits on it.
    compute_done: Event,
    /// The look-ahead batch: copy issued, not yet handed out.
    ahead: Option<Issued>,
    state: SamplerState,
    timings: Box<Timings>,
    seq_len: usize,
}

/// The copy timings not yet returned (boxed: it keeps [`Stager`]'s variants of a size).
#[derive(Default)]
struct Timings {
    /// Handed out, timing not read yet, oldest first.
    untimed: VecDeque<Untimed>,
    /// Event sets already read, for reuse.
    spare: Vec<BatchEvents>,
    /// The group the batches handed out now belong to.
    group: u64,
    /// The oldest group not yet returned: the timings of its batches read so far.
    partial: Option<(u64, CopyTiming)>,
}

impl CudaStager {
    /// Starts the loader's workers over pinned slots of `dev` and allocates the
    /// [`DEVICE_SLOTS`] device batches; the sampler goes on from its current state.
    pub fn new(dev: Arc<CudaDevice>, split: Arc<Split>, index: WindowIndex, sampler: EpochSampler, config: LoaderConfig) -> Result<Self> {
        let copy = dev.copy_stream()?;
        let allocator = PinnedAllocator::new(dev.clone());
        let stats = allocator.stats();
        let state = sampler.state();
        let loader = Loader::new(split, index, sampler, config, allocator)?;
        let shape = [config.batch_size, config.seq_len];
        let mut slots = Vec::with_capacity(DEVICE_SLOTS);
        for _ in 0..DEVICE_SLOTS {
            slots.push(DeviceSlot {
                inputs: Tensor::try_empty(dev.device(), DType::U32, &shape)?,
                targets: Tensor::try_empty(dev.device(), DType::U32, &shape)?,
                events: BatchEvents::new(&dev)?,
            });
        }
        let compute_done = dev.new_event(EventKind::Sync)?;
        Ok(Self {
            dev,
            copy,
            loader,
            stats,
            slots,
            next_slot: 0,
            compute_done,
            ahead: None,
            state,
            timings: Box::default(),
            seq_len: config.seq_len,
        })
    }

    /// The pinned ring's counters.
    pub fn ring_stats(&self) -> &RingStats {
        &self.stats
    }

    /// The copy stream (tests stall it to keep copies in flight).
    pub fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.copy
    }

    /// The sampler state after the last batch [`next_batch`](Self::next_batch) returned
    /// (not after the look-ahead batch already being copied).
    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// Takes the next batch from the loader and queues its copy into the next device slot.
    fn issue(&mut self) -> Result<Issued> {
        let k = self.next_slot;
        self.next_slot = (k + 1) % DEVICE_SLOTS;
        let loaded = self.loader.next_batch()?;
        let waited = loaded.waited();
        let (row, t) = (self.seq_len + 1, self.seq_len);
        let b = loaded.window_ids().len();
        let DeviceSlot { inputs, targets, events } = &mut self.slots[k];
        // Unique in the steady state; copied first (on the compute stream) if the model
        // still holds them, so a live tensor is never overwritten.
        let (inputs, targets) = (inputs.cuda_slice_mut::<u32>()?, targets.cuda_slice_mut::<u32>()?);
        // Everything queued on the compute stream so far (every step that read this slot,
        // and the allocation or copy above) comes before the copy overwrites it.
        self.compute_done.record(self.dev.stream())?;
        wait_event(&self.copy, &self.compute_done)?;
        events.copy_start.record(&self.copy)?;
        let pinned = loaded.buffer().pinned();
        copy_rows_htod(&self.copy, pinned, 0, row, inputs, t, b)?;
        copy_rows_htod(&self.copy, pinned, 1, row, targets, t, b)?;
        events.copy_end.record(&self.copy)?;
        // The pinned slot may be refilled once this completes; hand it back right away.
        loaded.buffer().copied_event().record(&self.copy)?;
        drop(loaded);
        let state_after = self.loader.state();
        Ok(Issued { slot: k, waited, state_after })
    }

    /// The next batch, its copy issued by the previous call (or now, for the first), with
    /// the compute stream made to wait for it; issues the copy of the batch after it before
    /// returning. `waited` covers both batches' waits for the loader.
    pub fn next_batch(&mut self) -> Result<StagedBatch> {
        let mut waited = Duration::ZERO;
        let current = match self.ahead.take() {
            Some(issued) => issued,
            None => self.issue()?,
        };
        waited += current.waited;
        let compute = self.dev.stream().clone();
        let fresh = match self.timings.spare.pop() {
            Some(events) => events,
            None => BatchEvents::new(&self.dev)?,
        };
        let slot = &mut self.slots[current.slot];
        slot.events.ready.record(&compute)?;
        wait_event(&compute, &slot.events.copy_end)?;
        slot.events.resumed.record(&compute)?;
        // The events go with the batch until its timing is read; the slot's next copy
        // records fresh ones.
        let events = std::mem::replace(&mut slot.events, fresh);
        self.timings.untimed.push_back(Untimed { events, group: self.timings.group });
        let batch = StagedBatch { inputs: slot.inputs.clone(), targets: slot.targets.clone(), waited: Duration::ZERO };
        self.state = current.state_after;
        // Look-ahead: the next batch's copy overlaps this batch's compute.
        let ahead = self.issue()?;
        waited += ahead.waited;
        self.ahead = Some(ahead);
        Ok(StagedBatch { waited, ..batch })
    }

    /// See [`Stager::take_copy_timing`].
    pub fn take_copy_timing(&mut self, wait: bool) -> Result<Vec<(u64, CopyTiming)>> {
        let t = &mut *self.timings;
        // This call closes the group of the batches handed out since the last one.
        let closed = t.group;
        t.group += 1;
        let mut done = Vec::new();
        while let Some(front) = t.untimed.front() {
            if !wait && !front.events.is_complete()? {
                break;
            }
            let Untimed { events, group } = t.untimed.pop_front().expect("front exists");
            let timing = events.timing()?;
            t.spare.push(events);
            match &mut t.partial {
                Some((g, sum)) if *g == group => sum.add(timing),
                _ => {
                    done.extend(t.partial.take());
                    t.partial = Some((group, timing));
                }
            }
        }
        // The oldest group is whole once none of its batches is left unread and it is closed.
        if let Some((g, _)) = t.partial {
            if t.untimed.front().map_or(g <= closed, |u| u.group > g) {
                done.extend(t.partial.take());
            }
        }
        Ok(done)
    }
}

impl Drop for CudaStager {
    fn drop(&mut self) {
        // The look-ahead copy may still be writing a device slot that is freed (on the
        // compute stream) when the fields drop.
        let _ = self.copy.synchronize();
    }
}

#[cfg(test)]
mod tests {
    //! The GPU tests (`staging_gpu_*`) print `skipped: no usable CUDA device (...)` and pass
    //! without a GPU (with ENGINE_REQUIRE_GPU=1 they fail instead, as in kernels/tests/common).
    use super::*;
    use datasets::{Data, Order};

    fn gpu_or_skip() -> Option<Arc<CudaDevice>> {
        let found = cuda::probe(0).map_err(|reason| reason.to_string()).and_then(|_| cuda::device(0).map_err(|e| e.to_string()));
        match found {
            Ok(dev) => Some(dev),
            Err(reason) if std::env::var("ENGINE_REQUIRE_GPU").as_deref() == Ok("1") => {
                panic!("ENGINE_REQUIRE_GPU=1 but there is no usable CUDA device ({reason})")
            }
            Err(reason) => {
                eprintln!("skipped: no usable CUDA device ({reason})");
                None
            }
        }
    }

    /// A stager over the embedded Tiny Shakespeare, B = 4, T = 64, seed 5.
    fn stager(device: Device, prefetch: usize) -> Stager {
        let data = Data::open(None, "byte", 0.1).unwrap();
        let config = LoaderConfig { batch_size: 4, seq_len: 64, num_workers: 2, prefetch };
        let index = data.train.windows(config.seq_len).unwrap();
        let sampler = EpochSampler::new(5, index.count(), 0, 1, Order::Shuffled).unwrap();
        Stager::new(device, data.train.clone(), index, sampler, config).unwrap()
    }

    fn tokens(t: &Tensor) -> Vec<u32> {
        t.to_host().unwrap().u32().unwrap().to_vec()
    }

    #[test]
    fn cpu_stager_hands_out_the_loaders_batches_in_order() {
        let data = Data::open(None, "byte", 0.1).unwrap();
        let config = LoaderConfig { batch_size: 4, seq_len: 64, num_workers: 1, prefetch: 1 };
        let index = data.train.windows(config.seq_len).unwrap();
        let sampler = EpochSampler::new(5, index.count(), 0, 1, Order::Shuffled).unwrap();
        let mut loader = Loader::new(data.train.clone(), index, sampler, config, PageableAllocator).unwrap();
        let mut staged = stager(Device::Cpu, 3);
        for _ in 0..10 {
            let expected = loader.next_batch().unwrap().to_batch();
            let got = staged.next_batch().unwrap();
            assert_eq!(got.inputs.shape(), [4, 64]);
            assert_eq!(tokens(&got.inputs), expected.inputs);
            assert_eq!(tokens(&got.targets), expected.targets);
            assert_eq!(staged.state(), loader.state());
        }
        assert!(staged.take_copy_timing(true).unwrap().is_empty());
    }

    #[test]
    fn staging_gpu_batches_match_the_cpu_loader() {
        let Some(dev) = gpu_or_skip() else { return };
        let (mut gpu, mut cpu) = (stager(dev.device(), 3), stager(Device::Cpu, 3));
        for step in 0..50 {
            let (g, c) = (gpu.next_batch().unwrap(), cpu.next_batch().unwrap());
            assert_eq!(g.inputs.device(), dev.device());
            assert_eq!(g.targets.shape(), [4, 64]);
            assert!(tokens(&g.inputs) == tokens(&c.inputs), "inputs differ at batch {step}");
            assert!(tokens(&g.targets) == tokens(&c.targets), "targets differ at batch {step}");
            assert_eq!(gpu.state(), cpu.state(), "sampler state after batch {step}");
        }
        // One call: the 50 batches handed out are group 0, all read.
        let groups = gpu.take_copy_timing(true).unwrap();
        assert_eq!(groups.len(), 1, "{groups:?}");
        let (group, timing) = groups[0];
        assert_eq!((group, timing.batches), (0, 50));
        assert!(gpu.take_copy_timing(true).unwrap().is_empty(), "nothing handed out since");
        assert!(timing.copy_ms > 0.0 && timing.stall_ms >= 0.0, "{timing:?}");
        assert!((0.0..=1.0).contains(&timing.overlap().unwrap()), "{timing:?}");
        eprintln!("50 batches of 4 x 65 tokens: {timing:?}");
    }

    #[test]
    fn staging_gpu_slot_is_refilled_only_after_its_copy() {
        // Every copy is held back 5 ms on the copy stream, so the workers reach the pinned
        // slot while its copy is still queued: they must wait for its event, or the device
        // would receive the next batch's tokens. Every batch's tensors are also kept alive,
        // so device slots are always still shared when reused (the copy-on-write path):
        // they must keep their tokens to the end.
        let Some(dev) = gpu_or_skip() else { return };
        let (mut gpu, mut cpu) = (stager(dev.device(), 2), stager(Device::Cpu, 2));
        let mut held = Vec::new();
        for step in 0..20 {
            let Stager::Cuda(inner) = &gpu else { unreachable!("a CUDA stager") };
            cuda::stall_stream(inner.copy_stream(), Duration::from_millis(5)).unwrap();
            let (g, c) = (gpu.next_batch().unwrap(), cpu.next_batch().unwrap());
            let expected = (tokens(&c.inputs), tokens(&c.targets));
            assert!(tokens(&g.inputs) == expected.0, "inputs differ at batch {step}");
            assert!(tokens(&g.targets) == expected.1, "targets differ at batch {step}");
            held.push((g, expected));
        }
        for (step, (g, expected)) in held.iter().enumerate() {
            assert!(tokens(&g.inputs) == expected.0 && tokens(&g.targets) == expected.1, "batch {step} was overwritten while held");
        }
        let Stager::Cuda(inner) = &gpu else { unreachable!("a CUDA stager") };
        let stats = inner.ring_stats();
        let (fills, waited, early) =
            (stats.fills.load(Ordering::Relaxed), stats.fills_waited.load(Ordering::Relaxed), stats.fills_early.load(Ordering::Relaxed));
        assert_eq!(early, 0, "a slot was refilled before its copy's event completed");
        assert!(waited > 0, "no refill found its copy in flight ({fills} fills): the stall did not exercise the wait");
    }

    #[test]
    fn staging_gpu_copy_timing_comes_back_by_group_without_waiting() {
        // The compute stream is held for 300 ms, so no batch handed out meanwhile has
        // completed: reading without waiting returns nothing and does not block; reading
        // with waiting returns every group, in order, with its batches. (Copies wait for the
        // compute stream too, so the pinned ring is made deep enough for the 7 batches
        // issued meanwhile, or the host would wait for the loader instead.)
        let Some(dev) = gpu_or_skip() else { return };
        let mut gpu = stager(dev.device(), 8);
        dev.synchronize().unwrap();
        cuda::stall_stream(dev.stream(), Duration::from_millis(300)).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..3 {
            for _ in 0..2 {
                gpu.next_batch().unwrap();
            }
            let early = gpu.take_copy_timing(false).unwrap();
            assert!(early.is_empty(), "a group came back before its batches ran: {early:?} after {:?}", started.elapsed());
        }
        let queued = started.elapsed();
        assert!(queued < Duration::from_millis(250), "reading without waiting blocked: {queued:?}");
        let groups = gpu.take_copy_timing(true).unwrap();
        let shape: Vec<(u64, u32)> = groups.iter().map(|(g, t)| (*g, t.batches)).collect();
        assert_eq!(shape, vec![(0, 2), (1, 2), (2, 2)], "{groups:?}");
        assert!(groups.iter().all(|(_, t)| t.copy_ms >= 0.0 && t.stall_ms >= 0.0));
    }

    #[test]
    fn copy_timing_from_marks() {
        // Copy 2..5 ms, compute reached the batch at 4, resumed at 5: 2 of 3 ms hidden, 1 ms stall.
        let t = CopyTiming::from_marks(2.0, 5.0, 4.0, 5.0);
        assert_eq!((t.copy_ms, t.overlapped_ms, t.stall_ms), (3.0, 2.0, 1.0));
        // Done long before compute needed it: fully hidden, no stall.
        let t = CopyTiming::from_marks(0.0, 1.0, 7.0, 7.0);
        assert_eq!((t.overlapped_ms, t.stall_ms, t.overlap()), (1.0, 0.0, Some(1.0)));
        // Compute was idle, waiting, before the copy began (the first batch): nothing hidden.
        let t = CopyTiming::from_marks(3.0, 4.0, 1.0, 4.0);
        assert_eq!((t.overlapped_ms, t.stall_ms, t.overlap()), (0.0, 3.0, Some(0.0)));
        let mut sum = CopyTiming::default();
        assert_eq!(sum.overlap(), None);
        sum.add(CopyTiming::from_marks(2.0, 5.0, 4.0, 5.0));
        sum.add(CopyTiming::from_marks(0.0, 1.0, 7.0, 7.0));
        assert_eq!((sum.batches, sum.copy_ms, sum.overlapped_ms, sum.stall_ms), (2, 4.0, 3.0, 1.0));
    }
}
