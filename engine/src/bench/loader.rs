//! The `loader` suite: the data loader's throughput into host buffers. Windows of T+1 tokens
//! are sampled in shuffled epoch order from memory-mapped uint16 shards of synthetic ids,
//! gathered by the rayon worker pool into the prefetch ring, and handed to a consumer that
//! only releases them; B*T tokens (what the model consumes) count per batch. Per worker
//! count: one warm-up run, then timed runs, each from a different epoch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datasets::shard::write_shard;
use datasets::{EpochSampler, Loader, LoaderConfig, Order, PageableAllocator, SamplerState, Shard, Split, TokenWidth};

use super::{BenchOptions, Better, Entry, Results, Workload};
use crate::Result;

/// What one loader measurement reads.
#[derive(Clone, Debug)]
pub struct LoaderBench {
    /// Synthetic token ids written in all (the training split's size).
    pub tokens: usize,
    /// Most tokens per shard file.
    pub shard_tokens: usize,
    /// Windows per batch (B).
    pub batch_size: usize,
    /// Tokens per window's inputs (T); each window reads T + 1.
    pub seq_len: usize,
    /// Slots of the loader's buffer ring (`data.prefetch`).
    pub prefetch: usize,
    /// Batches taken per run.
    pub batches: usize,
    /// Timed runs per worker count, after one untimed warm-up run.
    pub repeats: usize,
    /// Seeds the synthetic ids and the sampler's window order.
    pub seed: u64,
}

impl LoaderBench {
    /// The suite's settings: 50M tokens, 100 batches of 64 x 1024, 7 timed runs; with
    /// `quick`, 2M tokens, 10 batches and 2 runs.
    pub fn new(quick: bool) -> LoaderBench {
        LoaderBench {
            tokens: if quick { 2_000_000 } else { 50_000_000 },
            shard_tokens: 25_000_000,
            batch_size: 64,
            seq_len: 1024,
            prefetch: 4,
            batches: if quick { 10 } else { 100 },
            repeats: if quick { 2 } else { 7 },
            seed: 1337,
        }
    }
}

/// Writes `tokens` random ids below 50257 into llm.c uint16 shards in `dir`.
pub fn write_synthetic(dir: &Path, tokens: usize, shard_tokens: usize, seed: u64) -> Result<Vec<PathBuf>> {
    let mut rng = xorshift(seed);
    let mut paths = Vec::new();
    let mut left = tokens;
    while left > 0 {
        let n = left.min(shard_tokens);
        let ids: Vec<u32> = (0..n).map(|_| (rng() % 50257) as u32).collect();
        let path = dir.join(format!("train_{:06}.bin", paths.len()));
        write_shard(&path, &ids, TokenWidth::U16)?;
        paths.push(path);
        left -= n;
    }
    Ok(paths)
}

/// Tokens per second of each timed run with `workers` workers over `split`, and the
/// fraction of each run the consumer waited.
pub fn measure(split: &Arc<Split>, b: &LoaderBench, workers: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let index = split.windows(b.seq_len)?;
    let config = LoaderConfig { batch_size: b.batch_size, seq_len: b.seq_len, num_workers: workers, prefetch: b.prefetch };
    let (mut rates, mut waits) = (Vec::new(), Vec::new());
    for run in 0..=b.repeats {
        let mut sampler = EpochSampler::new(b.seed, index.count(), 0, 1, Order::Shuffled)?;
        sampler.restore(SamplerState { epoch: run as u64, position: 0 })?;
        let t0 = Instant::now();
        let mut loader = Loader::new(split.clone(), index.clone(), sampler, config, PageableAllocator)?;
        let (mut checksum, mut wait) = (0u64, 0.0);
        for _ in 0..b.batches {
            let batch = loader.next_batch()?;
            wait += batch.waited().as_secs_f64();
            checksum = checksum.wrapping_add(batch.windows()[0] as u64);
        }
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(checksum);
        // The first run warms up (threads, page cache).
        if run > 0 {
            rates.push((b.batches * b.batch_size * b.seq_len) as f64 / secs);
            waits.push(wait / secs);
        }
    }
    Ok((rates, waits))
}

/// The `loader` suite: synthetic shards in a scratch directory (removed afterwards), then for
/// 1 worker and for the CPU backend's thread count, entries `loader/workers=N/tokens_per_s`
/// and `loader/workers=N/consumer_wait` (the fraction of each run the consumer waited).
pub fn run(results: &mut Results, options: &BenchOptions) -> Result<()> {
    let b = LoaderBench::new(options.quick);
    let dir = super::train::tempdir()?;
    let paths = write_synthetic(&dir, b.tokens, b.shard_tokens, b.seed)?;
    let shards = paths.iter().map(|p| Shard::open(p, Some(50257))).collect::<std::result::Result<Vec<_>, _>>()?;
    let split = Arc::new(Split::from_shards("bench", shards));
    let mut counts = vec![1];
    if kernels::ops::num_threads() > 1 {
        counts.push(kernels::ops::num_threads());
    }
    for workers in counts {
        if !options.quiet {
            eprintln!("bench loader: {workers} workers, {} runs of {} batches of {}x{}", b.repeats, b.batches, b.batch_size, b.seq_len);
        }
        let (rates, waits) = measure(&split, &b, workers)?;
        let settings = serde_json::json!({
            "suite": "loader", "tokens": b.tokens, "shard_tokens": b.shard_tokens, "batch_size": b.batch_size, "seq_len": b.seq_len,
            "prefetch": b.prefetch, "batches": b.batches, "workers": workers, "seed": b.seed,
        });
        let hash = results.workload(Workload::new(settings));
        results.push(Entry::from_values(format!("loader/workers={workers}/tokens_per_s"), "tokens/s", Better::Higher, &hash, &rates));
        results.push(Entry::from_values(format!("loader/workers={workers}/consumer_wait"), "fraction", Better::Lower, &hash, &waits));
    }
    drop(split);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// xorshift64*: fast enough to make millions of synthetic ids in a blink.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    }
}
