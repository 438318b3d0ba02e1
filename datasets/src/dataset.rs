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
    /// Put before each document's tokens (GPT-2's `<|endoftext|>`), or none (byte).
    pub document_separator: Option<u32>,
    /// `engine prepare --val-fraction`: the last fraction of all tokens went to `val`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// `engine prepare --val-tokens`: the first this many tokens went to `val` (as llm.c's
    /// shard 0). Neither this nor `val_fraction` for imported llm.c shards (`val` is the
    /// `*val*` files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_tokens: Option<u64>,
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
    /// Hex SHA-256 of the whole shard file, when `engine prepare` wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// As given on the command line, or as found in a directory or by a glob given there.
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

    /// Opens a directory of llm.c shards without a `dataset.json` (see [`find_llmc_shards`]):
    /// maps and checks every shard (header, size, token ids below `tokenizer_name`'s
    /// vocabulary), re-tokenizing nothing.
    pub fn open_llmc(dir: &Path, tokenizer_name: &str) -> Result<Self> {
        let tok = tokenizer(tokenizer_name)?;
        let found = find_llmc_shards(dir)?.ok_or_else(|| Error::NotADataset { path: dir.to_path_buf() })?;
        let open = |name: &str, files: &[PathBuf]| -> Result<Split> {
            let shards = files.iter().map(|f| Shard::open(f, Some(tok.vocab_size()))).collect::<Result<Vec<_>>>()?;
            Ok(Split::from_shards(&format!("the {name} split of {}", dir.display()), shards))
        };
        Ok(Self {
            train: Arc::new(open("training", &found.train)?),
            val: Arc::new(open("validation", &found.val)?),
            vocab_size: tok.vocab_size(),
            tokenizer: tok.name().to_string(),
            description: format!("{} (llm.c shards, {} tokenizer)", dir.display(), tok.name()),
        })
    }

    /// `path` unset: the embedded Tiny Shakespeare. A directory: a prepared data set, which
    /// must have been tokenized with `tokenizer`, or a directory of llm.c shards without a
    /// `dataset.json` ([`Data::open_llmc`]). A file: text, tokenized now.
    pub fn open(path: Option<&Path>, tokenizer_name: &str, val_fraction: f64) -> Result<Self> {
        match path {
            None => Self::from_text(&TextSource::TinyShakespeare, tokenizer(tokenizer_name)?.as_ref(), val_fraction),
            Some(dir) if dir.is_dir() => {
                if !dir.join(DATASET_JSON).is_file() {
                    return Self::open_llmc(dir, tokenizer_name);
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

/// The shard files of a directory of llm.c shards, each list sorted by file name.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmcShards {
    /// The training shards (`*train*.bin`).
    pub train: Vec<PathBuf>,
    /// The validation shards (`*val*.bin`).
    pub val: Vec<PathBuf>,
}

/// Whether a shard file name (`*.bin`) is a training (`Some(false)`) or validation
/// (`Some(true)`) shard: a `train` or `val` word of the name (split at `_`, `-`, `.`), as
/// in llm.c's `fineweb_train_000001.bin`, `edu_fineweb_val_000000.bin` and
/// `tinyshakespeare_val.bin`; failing that, the name containing exactly one of `train`
/// and `val`. `None` when it is neither or both.
pub fn llmc_role(name: &str) -> Option<bool> {
    let stem = name.strip_suffix(".bin")?.to_ascii_lowercase();
    let words: Vec<&str> = stem.split(['_', '-', '.']).collect();
    let (word_train, word_val) = (words.contains(&"train"), words.contains(&"val"));
    match (word_train, word_val) {
        (true, false) => return Some(false),
        (false, true) => return Some(true),
        (true, true) => return None,
        (false, false) => {}
    }
    match (stem.contains("train"), stem.contains("val")) {
        (true, false) => Some(false),
        (false, true) => Some(true),
        _ => None,
    }
}

/// The llm.c shards of `dir` (plain files named `*.bin`, not hidden), split into training and
/// validation by [`llmc_role`]. `Ok(None)` when `dir` holds no `*.bin` file; an error when a
/// `*.bin` name is neither train nor val (or both), or when either list is empty.
pub fn find_llmc_shards(dir: &Path) -> Result<Option<LlmcShards>> {
    let entries = fs::read_dir(dir).map_err(|source| Error::Io { op: "list", path: dir.to_path_buf(), source })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io { op: "list", path: dir.to_path_buf(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".bin") && !name.starts_with('.') && entry.path().is_file() {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(None);
    }
    names.sort();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for name in &names {
        match llmc_role(name) {
            Some(false) => train.push(dir.join(name)),
            Some(true) => val.push(dir.join(name)),
            None => {
                return Err(Error::DatasetJson {
                    path: dir.join(name),
                    msg: "an llm.c shard name must say `train` or `val` (e.g. fineweb_train_000001.bin, fineweb_val_000000.bin); this one says neither or both".into(),
                })
            }
        }
    }
    let missing = |what: &str, pattern: &str, other: &[PathBuf]| Error::DatasetJson {
        path: dir.to_path_buf(),
        msg: format!(
            "holds llm.c shards ({}{}) but no {what} shard (a `*{pattern}*.bin` file); training needs both splits",
            other[0].file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            if other.len() > 1 { format!(" and {} more", other.len() - 1) } else { String::new() }
        ),
    };
    if train.is_empty() {
        return Err(missing("training", "train", &val));
    }
    if val.is_empty() {
        return Err(missing("validation", "val", &train));
    }
    Ok(Some(LlmcShards { train, val }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llmc_names_are_sorted_into_train_and_val() {
        for (name, role) in [
            ("fineweb_train_000001.bin", Some(false)),
            ("fineweb_val_000000.bin", Some(true)),
            ("edu_fineweb_train_000001.bin", Some(false)),
            ("tinyshakespeare_train.bin", Some(false)),
            ("tinyshakespeare_val.bin", Some(true)),
            ("mytraindata.bin", Some(false)),
            ("shard-val-3.bin", Some(true)),
            // `interval` holds `val`, but the word `train` decides.
            ("interval_train_0.bin", Some(false)),
            ("data.bin", None),
            ("train_val.bin", None),
            ("train.txt", None),
        ] {
            assert_eq!(llmc_role(name), role, "{name}");
        }
    }
}
