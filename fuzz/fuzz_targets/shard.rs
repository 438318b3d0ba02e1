//! The token shard reader: `Shard::from_bytes` (the checks `Shard::open` runs on a mapped
//! file) on arbitrary bytes, then every token and a few windows read through a `Split`.
//!
//! Input: one byte choosing the vocabulary check (none, 256, 50257 or 200000), then the file.
#![no_main]

use std::path::Path;

use engine::datasets::{Shard, Split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, file)) = data.split_first() else { return };
    let vocab = [None, Some(256), Some(50257), Some(200_000)][pick as usize % 4];
    let Ok(shard) = Shard::from_bytes(Path::new("fuzz.bin"), file.to_vec(), vocab) else { return };

    let tokens = shard.to_vec();
    assert_eq!(tokens.len(), shard.len());
    assert!(!tokens.is_empty(), "an empty shard opened");
    if let Some(vocab) = vocab {
        assert!(tokens.iter().all(|&t| (t as usize) < vocab), "a token at or above the vocabulary passed the check");
    }
    let split = Split::from_shards("the fuzzed split", vec![shard]);
    for seq_len in [1, 7, 64] {
        let Ok(index) = split.windows(seq_len) else { continue };
        let mut window = vec![0u32; seq_len + 1];
        for w in [0, index.count() / 2, index.count() - 1] {
            split.read_window(&index, w, &mut window);
            let start = w as usize * seq_len;
            assert_eq!(window, tokens[start..start + seq_len + 1], "window {w} of T = {seq_len}");
        }
    }
});
