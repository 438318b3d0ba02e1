//! `engine prepare`: text files to a prepared data set directory, llm.c shards plus a
//! `dataset.json`, that `data.path` can point at.
//!
//! The inputs are read whole, hashed (SHA-256), tokenized in parallel chunks (rayon; for
//! GPT-2 cut only where the cut cannot change the tokens, see
//! `datasets::tokenizer::safe_split_points`), concatenated in command-line order with
//! GPT-2's `<|endoftext|>` before each file (the byte tokenizer has no separator), and split:
//! the last `val_fraction` of all tokens is the validation split, as for a text `data.path`.
//! Each split is written as shards of at most `shard_tokens` tokens (`train_000000.bin`,
//! ..., `val_000000.bin`, ...), uint16 when the vocabulary fits. `dataset.json` is written
//! last, so a directory is a data set only once every shard is in place.
//!
//! Everything is held in memory (4 bytes per token plus the text): fine for corpora up to a
//! few GB of text; a streaming writer is left for when a larger corpus needs it.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use datasets::dataset::{val_split_point, ShardMeta, SourceMeta, SplitMeta, DATASET_FORMAT, DATASET_JSON};
use datasets::shard::write_shard;
use datasets::tokenizer::encode_parallel;
use datasets::{DatasetMeta, TextSource, TokenWidth};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::io;
use crate::{Error, Result};

/// Shard size when `--shard-tokens` is not given (llm.c's 100M).
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;
/// Bytes of text per parallel tokenization chunk.
const CHUNK_BYTES: usize = 1 << 20;

/// What [`prepare`] tokenizes and where it writes (the arguments of `engine prepare`).
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// "byte" or "gpt2".
    pub tokenizer: String,
    /// Text files, concatenated in this order (GPT-2: each preceded by `<|endoftext|>`).
    pub inputs: Vec<PathBuf>,
    /// The data set directory to write; created if missing, and must not hold a
    /// `dataset.json` already.
    pub out: PathBuf,
    /// The last fraction of all tokens that becomes the validation split; in (0, 1).
    pub val_fraction: f64,
    /// Most tokens per shard file ([`DEFAULT_SHARD_TOKENS`] from the CLI); at least 1.
    pub shard_tokens: usize,
    /// A progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
}

/// What [`prepare`] wrote.
#[derive(Clone, Debug)]
pub struct PrepareSummary {
    /// The data set directory (`PrepareOptions::out`).
    pub out: PathBuf,
    /// The `dataset.json` written there: tokenizer, splits, shards and sources.
    pub meta: DatasetMeta,
    /// Wall time of the whole preparation (reading, tokenizing, writing), seconds.
    pub seconds: f64,
}

fn check(options: &PrepareOptions) -> Result<()> {
    if !(options.val_fraction > 0.0 && options.val_fraction < 1.0) {
        return Err(Error::Usage(format!("--val-fraction must be in (0, 1), exclusive, got {}", options.val_fraction)));
    }
    if options.shard_tokens == 0 {
        return Err(Error::Usage("--shard-tokens must be at least 1".into()));
    }
    if options.inputs.is_empty() {
        return Err(Error::Usage("no input files".into()));
    }
    if options.out.join(DATASET_JSON).exists() {
        return Err(Error::Usage(format!(
            "{} already holds a prepared data set ({DATASET_JSON}); choose another --out or delete it first",
            options.out.display()
        )));
    }
    if options.out.exists() && !options.out.is_dir() {
        return Err(Error::Usage(format!("--out {} exists and is not a directory", options.out.display())));
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `tokens` as shards `<prefix>_NNNNNN.bin` of at most `shard_tokens` tokens each.
fn write_split(out: &Path, prefix: &str, tokens: &[u32], shard_tokens: usize, width: TokenWidth) -> Result<SplitMeta> {
    let mut shards = Vec::new();
    for (i, chunk) in tokens.chunks(shard_tokens).enumerate() {
        let file = format!("{prefix}_{i:06}.bin");
        write_shard(&out.join(&file), chunk, width)?;
        shards.push(ShardMeta { file, tokens: chunk.len() as u64 });
    }
    Ok(SplitMeta { tokens: tokens.len() as u64, shards })
}

/// Tokenizes `options.inputs` into a data set directory: the train and val shards, then
/// `dataset.json` last. Bad options, a missing input or text too short to split are an
/// error, and no `dataset.json` is written.
pub fn prepare(options: &PrepareOptions) -> Result<PrepareSummary> {
    let started = Instant::now();
    check(options)?;
    let tokenizer = datasets::tokenizer(&options.tokenizer)?;
    let texts: Vec<Vec<u8>> = options.inputs.iter().map(|p| TextSource::File(p.clone()).read()).collect::<datasets::Result<_>>()?;
    let total_bytes: usize = texts.iter().map(Vec::len).sum();
    let bar = if options.progress && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total_bytes as u64);
        bar.set_style(
            ProgressStyle::with_template("tokenizing {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
                .expect("template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut tokens: Vec<u32> = Vec::new();
    let mut sources = Vec::new();
    for (path, text) in options.inputs.iter().zip(&texts) {
        let before = tokens.len();
        tokens.extend(tokenizer.document_separator());
        let ids = encode_parallel(tokenizer.as_ref(), text, &path.display().to_string(), CHUNK_BYTES, &|n| bar.inc(n as u64))?;
        tokens.extend(ids);
        sources.push(SourceMeta {
            path: path.display().to_string(),
            bytes: text.len() as u64,
            sha256: sha256_hex(text),
            tokens: (tokens.len() - before) as u64,
        });
    }
    bar.finish_and_clear();

    let split = val_split_point(tokens.len(), options.val_fraction)?;
    if split == 0 || split == tokens.len() {
        return Err(Error::Usage(format!(
            "{} tokens cannot be split into non-empty train and val parts with --val-fraction {}",
            tokens.len(),
            options.val_fraction
        )));
    }
    fs::create_dir_all(&options.out).map_err(io(&options.out))?;
    let width = TokenWidth::for_vocab(tokenizer.vocab_size());
    let train = write_split(&options.out, "train", &tokens[..split], options.shard_tokens, width)?;
    let val = write_split(&options.out, "val", &tokens[split..], options.shard_tokens, width)?;
    let meta = DatasetMeta {
        format: DATASET_FORMAT,
        tokenizer: tokenizer.name().to_string(),
        vocab_size: tokenizer.vocab_size(),
        token_bytes: width.bytes(),
        document_separator: tokenizer.document_separator(),
        val_fraction: options.val_fraction,
        train,
        val,
        sources,
    };
    meta.write(&options.out)?;
    Ok(PrepareSummary { out: options.out.clone(), meta, seconds: started.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
