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
//!
//! The measurement itself is `engine bench loader`'s (engine::bench::loader), with every
//! size adjustable here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use engine::bench::loader::{measure, write_synthetic, LoaderBench};
use engine::datasets::{Shard, Split};

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
    let paths = write_synthetic(&dir, args.tokens, args.shard_tokens, 2026)?;
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

    let bench = LoaderBench {
        tokens: args.tokens,
        shard_tokens: args.shard_tokens,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        prefetch: args.prefetch,
        batches: args.batches,
        repeats: args.repeats,
        seed: 1337,
    };
    for &workers in &args.workers {
        let (rates, waits) = measure(&split, &bench, workers)?;
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
