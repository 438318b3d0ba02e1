//! A training data set: train and val splits with their vocabulary, from a text file, the
//! embedded Tiny Shakespeare, or a directory prepared by `engine prepare` (shards plus a
//! `dataset.json` describing them).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::shard::Shard;
use crate::split::Split;
use crate::tokenizer::{encode_parallel, tokenizer, Tokenizer};
use crate::{Error, Result, TINY_SHAKESPEARE};

/// The file that marks a prepared data set directory.
pub const DATASET_JSON: &str = "dataset.json";
/// `dataset.json`'s `format`.
pub const DATASET_FORMAT: u32 = 1;

/// `dataset.json`: what `engine prepare` wrote and from what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    pub format: u32,
    /// "byte" or "gpt2".
    pub tokenizer: String,
    pub vocab_size: usize,
    /// Bytes per token in the shards: 2 (uint16, magic 20240520) or 4 (uint32, 20240801).
    pub token_bytes: usize,
    /// Put before each input file's tokens (GPT-2's `<|endoftext|>`), or none (byte).
    pub document_separator: Option<u32>,
    /// The last fraction of all tokens went to `val`.
    pub val_fraction: f64,
    pub train: SplitMeta,
    pub val: SplitMeta,
    /// The inputs, in order.
    pub sources: Vec<SourceMeta>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitMeta {
    pub tokens: u64,
    pub shards: Vec<ShardMeta>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// File name inside the data set directory.
    pub file: String,
    pub tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// As given on the command line.
    pub path: String,
    pub bytes: u64,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Tokens from this file, its separator included.
    pub tokens: u64,
}

impl DatasetMeta {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(DATASET_JSON);
        let bad = |msg: String| Error::DatasetJson { path: path.clone(), msg };
        let text = fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let meta: Self = serde_json::from_str(&text).map_err(|e| bad(format!("malformed: {e}")))?;
        if meta.format != DATASET_FORMAT {
            return Err(bad(format!("format {} is not supported (expected {DATASET_FORMAT})", meta.format)));
        }
        Ok(meta)
    }

    /// Writes `dir/dataset.json` atomically (temporary file, then rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(DATASET_JSON);
        let tmp = dir.join(format!(".{DATASET_JSON}.tmp-{}", std::process::id()));
        let json = serde_json::to_string_pretty(self).expect("dataset.json serializes") + "\n";
        fs::write(&tmp, json).map_err(|source| Error::Io { op: "write", path: tmp.clone(), source })?;
        fs::rename(&tmp, &path).map_err(|source| Error::Io { op: "rename into", path, source })
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
            TextSource::File(path) => fs::read(path).map_err(|source| Error::Read { path: path.to_path_buf(), source }),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            TextSource::TinyShakespeare => "the embedded Tiny Shakespeare".into(),
            TextSource::File(p) => p.display().to_string(),
        }
    }
}

/// The token index where the validation split starts: `floor(n * (1 - val_fraction))`.
pub fn val_split_point(tokens: usize, val_fraction: f64) -> Result<usize> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(Error::ValFraction(val_fraction));
    }
    Ok(((tokens as f64) * (1.0 - val_fraction)).floor() as usize)
}

/// Train and val splits ready for sampling.
pub struct Data {
    pub train: Arc<Split>,
    pub val: Arc<Split>,
    pub vocab_size: usize,
    /// The tokenizer's name ("byte", "gpt2").
    pub tokenizer: String,
    /// Where the tokens came from, for logs.
    pub description: String,
}

impl Data {
    /// Tokenizes `source` (GPT-2 in parallel chunks) and holds out its last `val_fraction`.
    pub fn from_text(source: &TextSource, tokenizer: &dyn Tokenizer, val_fraction: f64) -> Result<Self> {
        let text = source.read()?;
        let mut tokens = encode_parallel(tokenizer, &text, &source.describe(), 1 << 20, &|_| {})?;
        let val = tokens.split_off(val_split_point(tokens.len(), val_fraction)?);
        Ok(Self {
            train: Arc::new(Split::from_tokens("the training split", tokens)),
            val: Arc::new(Split::from_tokens("the validation split", val)),
            vocab_size: tokenizer.vocab_size(),
            tokenizer: tokenizer.name().to_string(),
            description: source.describe(),
        })
    }

    /// Opens a directory written by `engine prepare`: reads `dataset.json`, then maps and
    /// checks every shard it lists (format, size, token ids below the vocabulary size, and
    /// the token count `dataset.json` recorded for it).
    pub fn open_prepared(dir: &Path) -> Result<Self> {
        let meta = DatasetMeta::read(dir)?;
        let json = dir.join(DATASET_JSON);
        let bad = |msg: String| Error::DatasetJson { path: json.clone(), msg };
        let known = tokenizer(&meta.tokenizer).map_err(|e| bad(e.to_string()))?;
        if known.vocab_size() != meta.vocab_size {
            return Err(bad(format!(
                "vocab_size {} does not match the {} tokenizer's {}",
                meta.vocab_size,
                meta.tokenizer,
                known.vocab_size()
            )));
        }
        let open_split = |name: &str, split: &SplitMeta| -> Result<Split> {
            if split.shards.is_empty() {
                return Err(bad(format!("lists no {name} shards")));
            }
            let mut shards = Vec::new();
            for s in &split.shards {
                if s.file.is_empty() || s.file.contains(['/', '\\']) || s.file == ".." {
                    return Err(bad(format!("shard file `{}` is not a plain file name", s.file)));
                }
                let shard = Shard::open(&dir.join(&s.file), Some(meta.vocab_size))?;
                if shard.len() as u64 != s.tokens {
                    return Err(bad(format!("lists {} with {} tokens, but the shard holds {}", s.file, s.tokens, shard.len())));
                }
                shards.push(shard);
            }
            Ok(Split::from_shards(&format!("the {name} split of {}", dir.display()), shards))
        };
        Ok(Self {
            train: Arc::new(open_split("training", &meta.train)?),
            val: Arc::new(open_split("validation", &meta.val)?),
            vocab_size: meta.vocab_size,
            tokenizer: meta.tokenizer.clone(),
            description: format!("{} (prepared, {} tokenizer)", dir.display(), meta.tokenizer),
        })
    }

    /// `path` unset: the embedded Tiny Shakespeare. A directory: a prepared data set, which
    /// must have been tokenized with `tokenizer`. A file: text, tokenized now.
    pub fn open(path: Option<&Path>, tokenizer_name: &str, val_fraction: f64) -> Result<Self> {
        match path {
            None => Self::from_text(&TextSource::TinyShakespeare, tokenizer(tokenizer_name)?.as_ref(), val_fraction),
            Some(dir) if dir.is_dir() => {
                if !dir.join(DATASET_JSON).is_file() {
                    return Err(Error::NotADataset { path: dir.to_path_buf() });
                }
                let data = Self::open_prepared(dir)?;
                if data.tokenizer != tokenizer_name {
                    return Err(Error::TokenizerMismatch {
                        path: dir.to_path_buf(),
                        dataset: data.tokenizer,
                        vocab: data.vocab_size,
                        requested: tokenizer_name.to_string(),
                    });
                }
                Ok(data)
            }
            Some(file) => Self::from_text(&TextSource::File(file.to_path_buf()), tokenizer(tokenizer_name)?.as_ref(), val_fraction),
        }
    }
}
