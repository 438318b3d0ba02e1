//! Data loader throughput into host buffers: windows of T+1 tokens sampled (shuffled
//! epoch order) from memory-mapped uint16 shards, gathered by the rayon worker pool into
//! the prefetch ring, and handed to a consumer that only releases them. Counts B*T tokens
//! (what the model consumes) per batch.
//!
//! A synthetic data set is written first (random ids below 50257, llm.c uint16 shards of
//! `--shard-tokens`), then opened with full validation (which also brings it into the page
//! cache, as in training), then for each worker count: one warm-up run, then `--repeats`
//! timed runs of `--batches` batches, each from a different epoch; the median is reported.
//!
//! cargo run --release -p benches --bin loader -- [--tokens 200000000] [--workers 1,2] [--json]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use engine::datasets::shard::write_shard;
use engine::datasets::{EpochSampler, Loader, LoaderConfig, Order, PageableAllocator, SamplerState, Shard, Split, TokenWidth};

#[derive(Parser)]
struct Args {
    /// Tokens in the synthetic data set.
    #[arg(long, default_value_t = 200_000_000)]
    tokens: usize,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: usize,
    /// B.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// T.
    #[arg(long, default_value_t = 1024)]
    seq_len: usize,
    /// Worker counts to measure, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Ring slots.
    #[arg(long, default_value_t = 4)]
    prefetch: usize,
    /// Batches per timed run.
    #[arg(long, default_value_t = 300)]
    batches: usize,
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Where to write the shards (default: a fresh directory under the system temp dir,
    /// removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// One JSON line per worker count instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (dir, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("loader-bench-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&dir)?;

    let started = Instant::now();
    let mut rng = fastrand_like(2026);
    let mut paths = Vec::new();
    let mut left = args.tokens;
    while left > 0 {
        let n = left.min(args.shard_tokens);
        let tokens: Vec<u32> = (0..n).map(|_| (rng() % 50257) as u32).collect();
        let path = dir.join(format!("train_{:06}.bin", paths.len()));
        write_shard(&path, &tokens, TokenWidth::U16)?;
        paths.push(path);
        left -= n;
    }
    let write_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let shards = paths.iter().map(|p| Shard::open(p, Some(50257))).collect::<Result<Vec<_>, _>>()?;
    let open_s = started.elapsed().as_secs_f64();
    let split = Arc::new(Split::from_shards("bench", shards));
    let index = split.windows(args.seq_len)?;
    let windows = index.count();
    if !args.json {
        println!(
            "{} tokens in {} uint16 shards ({:.0} MB) written in {write_s:.1}s, opened and validated in {open_s:.2}s; \
             {windows} windows of {}; B={} T={} prefetch={} batches/run={} repeats={}",
            args.tokens,
            paths.len(),
            (args.tokens * 2) as f64 / 1e6,
            args.seq_len + 1,
            args.batch_size,
            args.seq_len,
            args.prefetch,
            args.batches,
            args.repeats
        );
    }

    let config = |workers| LoaderConfig { batch_size: args.batch_size, seq_len: args.seq_len, num_workers: workers, prefetch: args.prefetch };
    for &workers in &args.workers {
        let mut rates = Vec::new();
        let mut waits = Vec::new();
        for run in 0..=args.repeats {
            let mut sampler = EpochSampler::new(1337, windows, 0, 1, Order::Shuffled)?;
            sampler.restore(SamplerState { epoch: run as u64, position: 0 })?;
            let t0 = Instant::now();
            let mut loader = Loader::new(split.clone(), index.clone(), sampler, config(workers), PageableAllocator)?;
            let mut checksum = 0u64;
            let mut wait = 0.0;
            for _ in 0..args.batches {
                let batch = loader.next_batch()?;
                wait += batch.waited().as_secs_f64();
                checksum = checksum.wrapping_add(batch.windows()[0] as u64);
            }
            let secs = t0.elapsed().as_secs_f64();
            std::hint::black_box(checksum);
            if run > 0 {
                rates.push((args.batches * args.batch_size * args.seq_len) as f64 / secs);
                waits.push(wait / secs);
            }
        }
        let median = benches::median(&rates);
        let (lo, hi) = rates.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        if args.json {
            println!(
                "{}",
                serde_json::json!({"workers": workers, "tokens_per_s_median": median, "tokens_per_s_min": lo, "tokens_per_s_max": hi,
                    "batch_size": args.batch_size, "seq_len": args.seq_len, "prefetch": args.prefetch, "batches": args.batches,
                    "repeats": args.repeats, "dataset_tokens": args.tokens})
            );
        } else {
            println!(
                "workers {workers}: median {:.1}M tokens/s (min {:.1}M, max {:.1}M over {} runs; {:.0} batches/s; consumer blocked {:.0}% of the time)",
                median / 1e6,
                lo / 1e6,
                hi / 1e6,
                rates.len(),
                median / (args.batch_size * args.seq_len) as f64,
                100.0 * benches::median(&waits)
            );
        }
    }
    drop(split);
    if remove {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// xorshift64*: fast enough to make 200M synthetic ids in a second or two.
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    }
}
