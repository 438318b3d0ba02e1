//! Data for training, CPU only: tokenizers, token data sets split into train and
//! validation, and deterministic sampling of (input, target) windows.
//!
//! The embedded default is Tiny Shakespeare (public domain, 1,115,394 bytes), so a fresh
//! clone trains with no download. Token shards and the worker pool grow behind the same
//! [`TokenDataset`] / [`WindowSampler`] interface.

use std::path::{Path, PathBuf};

/// Tiny Shakespeare, embedded in the binary.
pub const TINY_SHAKESPEARE: &[u8] = include_bytes!("../data/tinyshakespeare.txt");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read data file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{what} has {tokens} tokens, too few for one window of {window} (sequence length + 1)")]
    TooShort { what: String, tokens: usize, window: usize },
    #[error("val_fraction must be in (0, 1), got {0}")]
    ValFraction(f64),
    #[error("unknown tokenizer `{0}` (expected \"byte\")")]
    UnknownTokenizer(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Text to token ids and back.
pub trait Tokenizer: Send + Sync {
    fn name(&self) -> &'static str;
    fn vocab_size(&self) -> usize;
    fn encode(&self, text: &[u8]) -> Vec<u32>;
    fn decode(&self, ids: &[u32]) -> String;
}

/// One token per byte (vocab 256): the tiny default.
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn name(&self) -> &'static str {
        "byte"
    }
    fn vocab_size(&self) -> usize {
        256
    }
    fn encode(&self, text: &[u8]) -> Vec<u32> {
        text.iter().map(|&b| b as u32).collect()
    }
    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().map(|&i| i.min(255) as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

pub fn tokenizer(name: &str) -> Result<Box<dyn Tokenizer>> {
    match name {
        "byte" => Ok(Box::new(ByteTokenizer)),
        other => Err(Error::UnknownTokenizer(other.to_string())),
    }
}

/// Where the text comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TextSource {
    /// The embedded Tiny Shakespeare.
    TinyShakespeare,
    File(PathBuf),
}

impl TextSource {
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            TextSource::TinyShakespeare => Ok(TINY_SHAKESPEARE.to_vec()),
            TextSource::File(path) => read_file(path),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })
}

/// Token ids split into train and validation: the last `val_fraction` is held out.
pub struct TokenDataset {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub vocab_size: usize,
}

impl TokenDataset {
    pub fn from_text(source: &TextSource, tokenizer: &dyn Tokenizer, val_fraction: f64) -> Result<Self> {
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(Error::ValFraction(val_fraction));
        }
        let mut tokens = tokenizer.encode(&source.read()?);
        let split = ((tokens.len() as f64) * (1.0 - val_fraction)).floor() as usize;
        let val = tokens.split_off(split);
        Ok(Self { train: tokens, val, vocab_size: tokenizer.vocab_size() })
    }

    /// Errors unless both splits hold at least one window of `seq_len + 1` tokens.
    pub fn check_fits(&self, seq_len: usize) -> Result<()> {
        for (what, split) in [("the training split", &self.train), ("the validation split", &self.val)] {
            if split.len() < seq_len + 1 {
                return Err(Error::TooShort { what: what.into(), tokens: split.len(), window: seq_len + 1 });
            }
        }
        Ok(())
    }
}

/// A batch of windows: `inputs` (B,T) and `targets` (B,T), targets shifted by one.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batch {
    fn from_starts(tokens: &[u32], starts: impl Iterator<Item = usize>, seq_len: usize) -> Self {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        let mut batch_size = 0;
        for s in starts {
            inputs.extend_from_slice(&tokens[s..s + seq_len]);
            targets.extend_from_slice(&tokens[s + 1..s + seq_len + 1]);
            batch_size += 1;
        }
        Self { batch_size, seq_len, inputs, targets }
    }
}

/// Deterministic random windows of T+1 tokens: the windows of (step, micro-step) depend
/// only on the seed and those two numbers, so a resumed run sees exactly the batches an
/// uninterrupted one would have.
#[derive(Clone, Debug)]
pub struct WindowSampler {
    pub seed: u64,
}

impl WindowSampler {
    pub fn batch(&self, tokens: &[u32], step: u64, micro_step: u64, batch_size: usize, seq_len: usize) -> Batch {
        assert!(tokens.len() > seq_len, "check_fits guarantees a window fits");
        let mix = self.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro_step.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let mut rng = fastrand::Rng::with_seed(mix);
        let max_start = tokens.len() - seq_len - 1;
        Batch::from_starts(tokens, (0..batch_size).map(|_| rng.usize(0..=max_start)), seq_len)
    }
}

/// Consecutive non-overlapping windows from the start of `tokens`, in batches, for
/// evaluation: the same tokens every time.
pub fn sequential_batches(tokens: &[u32], batch_size: usize, seq_len: usize, max_batches: usize) -> Vec<Batch> {
    let windows = (tokens.len().saturating_sub(1)) / seq_len;
    let starts: Vec<usize> = (0..windows).map(|w| w * seq_len).collect();
    starts
        .chunks(batch_size)
        .take(max_batches)
        .map(|chunk| Batch::from_starts(tokens, chunk.iter().copied(), seq_len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_text_splits_last_tenth_for_validation() {
        let ds = TokenDataset::from_text(&TextSource::TinyShakespeare, &ByteTokenizer, 0.1).unwrap();
        assert_eq!(ds.train.len() + ds.val.len(), 1_115_394);
        assert_eq!(ds.train.len(), 1_003_854);
        assert_eq!(&ds.val[..], &ByteTokenizer.encode(&TINY_SHAKESPEARE[1_003_854..])[..]);
    }

    #[test]
    fn byte_tokenizer_round_trips() {
        let text = "First Citizen:\nBefore we proceed";
        assert_eq!(ByteTokenizer.decode(&ByteTokenizer.encode(text.as_bytes())), text);
    }

    #[test]
    fn sampler_is_deterministic_and_targets_shift_by_one() {
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
        let tokens: Vec<u32> = (0..100).collect();
        let b = sequential_batches(&tokens, 4, 10, 100);
        assert_eq!(b.len(), 3); // 9 windows of 10 (+1 target) in 100 tokens
        assert_eq!(b[0].inputs[10], 10);
        assert_eq!(b[2].batch_size, 1);
    }
}
