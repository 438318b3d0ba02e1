//! The sampler and the loader: determinism, disjoint ranks, no repeats within an epoch,
//! and exact resumption from a saved state.

use std::collections::HashSet;
use std::sync::Arc;

use datasets::shard::write_shard;
use datasets::{EpochSampler, Loader, LoaderConfig, Order, PageableAllocator, SamplerState, Shard, Split, TokenWidth};
use tempfile::TempDir;

/// A split over three uint16 shards of different lengths whose token at global position i
/// is i mod 65521, so a window's content tells where it came from.
fn shard_split(dir: &TempDir) -> Split {
    let mut shards = Vec::new();
    let mut at = 0u32;
    for (i, n) in [10_000u32, 3_333, 7_001].into_iter().enumerate() {
        let tokens: Vec<u32> = (at..at + n).map(|t| t % 65521).collect();
        at += n;
        let p = dir.path().join(format!("train_{i:06}.bin"));
        write_shard(&p, &tokens, TokenWidth::U16).unwrap();
        shards.push(Shard::open(&p, Some(65536)).unwrap());
    }
    Split::from_shards("train", shards)
}

fn config(workers: usize, prefetch: usize) -> LoaderConfig {
    LoaderConfig { batch_size: 8, seq_len: 32, num_workers: workers, prefetch }
}

/// `batches` batches from a loader starting at `state`: (windows (B, T+1), window ids).
fn run(split: &Arc<Split>, seed: u64, state: SamplerState, cfg: LoaderConfig, batches: usize) -> (Vec<Vec<u32>>, Vec<Vec<u64>>, SamplerState) {
    let index = split.windows(cfg.seq_len).unwrap();
    let mut sampler = EpochSampler::new(seed, index.count(), 0, 1, Order::Shuffled).unwrap();
    sampler.restore(state).unwrap();
    let mut loader = Loader::new(split.clone(), index, sampler, cfg, PageableAllocator).unwrap();
    let (mut windows, mut ids) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        let b = loader.next_batch().unwrap();
        windows.push(b.windows().to_vec());
        ids.push(b.window_ids().to_vec());
    }
    (windows, ids, loader.state())
}

#[test]
fn same_seed_same_batches_whatever_the_worker_count() {
    let dir = TempDir::new().unwrap();
    let split = Arc::new(shard_split(&dir));
    let start = SamplerState::default();
    let (a, ids_a, _) = run(&split, 1, start, config(1, 1), 40);
    let (b, ids_b, _) = run(&split, 1, start, config(2, 4), 40);
    assert_eq!(ids_a, ids_b);
    assert_eq!(a, b);
    let (_, ids_c, _) = run(&split, 2, start, config(2, 4), 40);
    assert_ne!(ids_a, ids_c, "another seed gives another order");
}

#[test]
fn loaded_windows_hold_the_tokens_the_index_points_at() {
    let dir = TempDir::new().unwrap();
    let split = Arc::new(shard_split(&dir));
    let all = split.to_vec();
    let index = split.windows(32).unwrap();
    // floor(9999/32) + floor(3332/32) + floor(7000/32)
    assert_eq!(index.count(), 312 + 104 + 218);
    let (windows, ids, _) = run(&split, 5, SamplerState::default(), config(2, 3), 10);
    let starts = [0usize, 10_000, 13_333];
    for (rows, ids) in windows.iter().zip(&ids) {
        for (row, &w) in rows.chunks(33).zip(ids) {
            let (segment, offset) = index.locate(w);
            let global = starts[segment] + offset;
            assert_eq!(row, &all[global..global + 33], "window {w}");
        }
    }
    let batch = datasets::Batch::from_windows(&windows[0], 32);
    assert_eq!(batch.inputs[..32], windows[0][..32]);
    assert_eq!(batch.targets[..32], windows[0][1..33]);
}

#[test]
fn no_window_repeats_within_an_epoch_and_every_window_is_visited() {
    for order in [Order::Shuffled, Order::Sequential] {
        let mut s = EpochSampler::new(9, 634, 0, 1, order).unwrap();
        let epoch: Vec<u64> = (0..634).map(|_| s.next_window()).collect();
        let set: HashSet<u64> = epoch.iter().copied().collect();
        assert_eq!(set.len(), 634, "{order:?}: a window repeats");
        assert!(epoch.iter().all(|&w| w < 634));
        assert_eq!(s.state(), SamplerState { epoch: 1, position: 0 });
        if order == Order::Sequential {
            assert_eq!(epoch, (0..634).collect::<Vec<_>>());
        }
    }
}

#[test]
fn ranks_get_disjoint_windows_of_equal_count() {
    let n = 1003;
    let world = 4;
    let mut seen = HashSet::new();
    for rank in 0..world {
        let mut s = EpochSampler::new(3, n, rank, world, Order::Shuffled).unwrap();
        assert_eq!(s.per_rank(), 250);
        for _ in 0..250 {
            assert!(seen.insert(s.next_window()), "rank {rank} repeats a window of another rank");
        }
    }
    assert_eq!(seen.len(), 1000); // 1003 mod 4 = 3 windows sit out this epoch
}

#[test]
fn resuming_from_a_saved_state_gives_the_uninterrupted_batches() {
    let dir = TempDir::new().unwrap();
    let split = Arc::new(shard_split(&dir));
    // 634 windows / 8 per batch: 100 batches cross several epoch boundaries.
    let (whole, whole_ids, end) = run(&split, 11, SamplerState::default(), config(2, 3), 100);
    for cut in [1usize, 37, 79] {
        let (_, _, saved) = run(&split, 11, SamplerState::default(), config(2, 3), cut);
        // Through the checkpoint's JSON, as the trainer stores it.
        let json = serde_json::to_string(&saved).unwrap();
        let restored: SamplerState = serde_json::from_str(&json).unwrap();
        let (rest, rest_ids, rest_end) = run(&split, 11, restored, config(1, 2), 100 - cut);
        assert_eq!(rest_ids, whole_ids[cut..], "cut at {cut}");
        assert_eq!(rest, whole[cut..], "cut at {cut}");
        assert_eq!(rest_end, end);
    }
    assert_eq!(end, SamplerState { epoch: 800 / 634, position: 800 % 634 });
}

#[test]
fn bad_loader_settings_are_refused() {
    let split = Arc::new(Split::from_tokens("t", (0..100).collect()));
    let index = split.windows(8).unwrap();
    let sampler = EpochSampler::new(1, index.count(), 0, 1, Order::Shuffled).unwrap();
    let cfg = LoaderConfig { batch_size: 2, seq_len: 8, num_workers: 0, prefetch: 2 };
    let err = Loader::new(split, index, sampler, cfg, PageableAllocator).err().unwrap().to_string();
    assert!(err.starts_with("bad loader settings: LoaderConfig"), "{err}");
}
