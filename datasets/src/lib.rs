//! Data for training, CPU only:
//! - [`shard`]: llm.c token shards (uint16 / uint32), memory-mapped, checked on open,
//!   written atomically;
//! - [`tokenizer`]: byte-level and GPT-2 BPE, with a parallel chunked encoder;
//! - [`split`] and [`dataset`]: train/val splits from text, the embedded Tiny Shakespeare
//!   or a prepared directory (`dataset.json` + shards), read as windows of T+1 tokens;
//! - [`sampler`]: deterministic epochs of non-overlapping windows per (seed, epoch, rank,
//!   world size), resumable from (epoch, position);
//! - [`loader`]: the rayon worker pool filling a ring of host batch buffers ahead of use.
//!
//! The embedded default is Tiny Shakespeare (public domain, 1,115,394 bytes), so a fresh
//! clone trains with no download.

use std::path::PathBuf;

pub mod dataset;
pub mod loader;
pub mod sampler;
pub mod shard;
pub mod split;
pub mod tokenizer;

pub use dataset::{find_llmc_shards, Data, DatasetMeta, LlmcShards, TextSource};
pub use loader::{HostAllocator, HostBuffer, LoadedBatch, Loader, LoaderConfig, PageableAllocator};
pub use sampler::{EpochSampler, Order, SamplerState};
pub use shard::{Shard, ShardWriter, TokenWidth};
pub use split::{Split, WindowIndex};
pub use tokenizer::{tokenizer, ByteTokenizer, Gpt2Tokenizer, Tokenizer};

/// Tiny Shakespeare, embedded in the binary.
pub const TINY_SHAKESPEARE: &[u8] = include_bytes!("../data/tinyshakespeare.txt");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read data file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot {op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} has {tokens} tokens, too few for one window of {window} (sequence length + 1)")]
    TooShort { what: String, tokens: usize, window: usize },
    #[error("{what} has {shards} shards, the longest of {longest} tokens: too few for one window of {window} (sequence length + 1); windows do not cross shards")]
    ShardsTooShort { what: String, shards: usize, longest: usize, window: usize },
    #[error("val_fraction must be in (0, 1), got {0}")]
    ValFraction(f64),
    #[error("unknown tokenizer `{0}` (expected \"byte\" or \"gpt2\")")]
    UnknownTokenizer(String),
    #[error("{what} is not valid UTF-8 (at byte {offset}); the gpt2 tokenizer needs UTF-8 text")]
    NotUtf8 { what: String, offset: usize },
    #[error("shard {}: {problem}", path.display())]
    BadShard { path: PathBuf, problem: String },
    #[error("shard {}: token id {token} does not fit in uint16; write a uint32 shard", path.display())]
    TokenTooWide { path: PathBuf, token: u32 },
    #[error("shard {}: {tokens} tokens is more than the format's int32 count allows", path.display())]
    ShardTooLarge { path: PathBuf, tokens: usize },
    #[error("{}: {msg}", path.display())]
    DatasetJson { path: PathBuf, msg: String },
    #[error("{} is a directory without a dataset.json or llm.c shards (`*train*.bin` and `*val*.bin`); make a data set directory with `engine prepare`, or point at a text file", path.display())]
    NotADataset { path: PathBuf },
    #[error("data set {} was prepared with the {dataset} tokenizer (vocab {vocab}), not `{requested}`", path.display())]
    TokenizerMismatch { path: PathBuf, dataset: String, vocab: usize, requested: String },
    #[error("rank {rank} is not below the world size {world_size}")]
    Rank { rank: u64, world_size: u64 },
    #[error("{windows} windows cannot be shared by {world_size} ranks (each needs at least one)")]
    TooFewWindows { windows: u64, world_size: u64 },
    #[error("sampler state position {position} is past the end of an epoch of {per_rank} windows per rank")]
    SamplerState { position: u64, per_rank: u64 },
    #[error("bad loader settings: {0}")]
    LoaderConfig(String),
    #[error("data worker failed on batch {batch}: {msg}")]
    LoaderWorker { batch: u64, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A batch of windows: `inputs` (B, T) and `targets` (B, T), targets shifted by one.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batch {
    /// From windows (B, T+1) row-major.
    pub fn from_windows(windows: &[u32], seq_len: usize) -> Self {
        let row = seq_len + 1;
        let batch_size = windows.len() / row;
        let (mut inputs, mut targets) = (Vec::with_capacity(batch_size * seq_len), Vec::with_capacity(batch_size * seq_len));
        for w in windows.chunks_exact(row) {
            inputs.extend_from_slice(&w[..seq_len]);
            targets.extend_from_slice(&w[1..]);
        }
        Self { batch_size, seq_len, inputs, targets }
    }

    fn from_starts(tokens: &[u32], starts: impl Iterator<Item = usize>, seq_len: usize) -> Self {
        let mut windows = Vec::new();
        for s in starts {
            windows.extend_from_slice(&tokens[s..s + seq_len + 1]);
        }
        Self::from_windows(&windows, seq_len)
    }
}

/// Token ids in memory, split into train and validation: the last `val_fraction` is held
/// out. The trainer uses [`Data`]; this stays for simple in-memory uses (benchmarks).
pub struct TokenDataset {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub vocab_size: usize,
}

impl TokenDataset {
    pub fn from_text(source: &TextSource, tokenizer: &dyn Tokenizer, val_fraction: f64) -> Result<Self> {
        let mut tokens = tokenizer.encode(&source.read()?);
        let val = tokens.split_off(dataset::val_split_point(tokens.len(), val_fraction)?);
        Ok(Self { train: tokens, val, vocab_size: tokenizer.vocab_size() })
    }
}

/// Random windows of T+1 tokens at any offset, a pure function of (seed, step, micro-step).
/// The trainer uses [`EpochSampler`] + [`Loader`]; this stays for simple in-memory uses.
#[derive(Clone, Debug)]
pub struct WindowSampler {
    pub seed: u64,
}

impl WindowSampler {
    pub fn batch(&self, tokens: &[u32], step: u64, micro_step: u64, batch_size: usize, seq_len: usize) -> Batch {
        assert!(tokens.len() > seq_len, "the caller checks that a window fits");
        let mix = self.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro_step.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let mut rng = fastrand::Rng::with_seed(mix);
        let max_start = tokens.len() - seq_len - 1;
        Batch::from_starts(tokens, (0..batch_size).map(|_| rng.usize(0..=max_start)), seq_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_text_splits_last_tenth_for_validation() {
        let ds = Data::from_text(&TextSource::TinyShakespeare, &ByteTokenizer, 0.1).unwrap();
        assert_eq!(ds.train.len(), 1_003_854);
        assert_eq!(ds.val.len(), 1_115_394 - 1_003_854);
        assert_eq!(ds.val.to_vec(), ByteTokenizer.encode(&TINY_SHAKESPEARE[1_003_854..]));
        let legacy = TokenDataset::from_text(&TextSource::TinyShakespeare, &ByteTokenizer, 0.1).unwrap();
        assert_eq!(legacy.train, ds.train.to_vec());
    }

    #[test]
    fn window_sampler_is_deterministic_and_targets_shift_by_one() {
        let tokens: Vec<u32> = (0..1000).collect();
        let s = WindowSampler { seed: 42 };
        let a = s.batch(&tokens, 3, 0, 8, 16);
        assert_eq!(a, s.batch(&tokens, 3, 0, 8, 16));
        assert_ne!(a, s.batch(&tokens, 4, 0, 8, 16));
        assert_ne!(a, WindowSampler { seed: 43 }.batch(&tokens, 3, 0, 8, 16));
        for (x, y) in a.inputs.iter().zip(&a.targets) {
            assert_eq!(x + 1, *y);
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = TextSource::File("no/such/file.txt".into()).read().unwrap_err().to_string();
        assert!(err.starts_with("cannot read data file no/such/file.txt"), "{err}");
    }

    #[test]
    fn sequential_batches_cover_consecutive_windows() {
        let split = Split::from_tokens("t", (0..100).collect());
        let index = split.windows(10).unwrap();
        let b = split.sequential_batches(&index, 4, 100);
        assert_eq!(b.len(), 3); // 9 windows of 10 (+1 target) in 100 tokens
        assert_eq!(b[0].inputs[10], 10);
        assert_eq!(b[0].targets[9], 10);
        assert_eq!(b[2].batch_size, 1);
        assert_eq!(split.sequential_batches(&index, 4, 2).len(), 2);
    }
}
