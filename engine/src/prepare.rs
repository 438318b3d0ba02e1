//! `engine prepare`: text or JSONL to a prepared data set directory (llm.c shards plus a
//! `dataset.json`) that `data.path` can point at, streaming, in bounded memory, resumable;
//! and `engine prepare --import` for a directory of existing llm.c shards.
//!
//! **Inputs.** Files, directories (their plain, non-hidden files, sorted by name) and glob
//! patterns (`*`, `?`, `[...]`; matches sorted), in command-line order. A file is JSONL
//! when it ends in `.jsonl` or `.json` (or with `--format jsonl`), else text. A JSONL line
//! is one document, the string field `--text-field` (default `text`) of a JSON object;
//! blank lines are skipped. A text file is one document.
//!
//! **Documents** are tokenized as llm.c's `fineweb.py` does: GPT-2 writes
//! `[<|endoftext|>] + encode_ordinary(text)` per document; the byte tokenizer writes the
//! bytes, with no separator. Documents straddle shards, as in llm.c.
//!
//! **Bounded memory.** The input is read in batches of about [`BATCH_BYTES`] of text (a
//! reader thread), each batch tokenized in parallel (rayon, one task per JSONL document or
//! text piece) and handed to a writer thread that appends the tokens to the open shard
//! file; reading, tokenizing and writing overlap. At most three batches are alive (one
//! being read, one being tokenized, one being written), so memory stays under about
//! 1 GiB whatever the input size (measured: docs/BENCHMARKS.md, issue 17). A text file is
//! cut into pieces of about [`PIECE_TARGET`] bytes, for GPT-2 only at
//! `datasets::tokenizer::safe_split_points`' kind of cut (a blank line between printable
//! characters, where the tokens cannot change): the first such cut at least
//! [`PIECE_TARGET`] into the piece, else the last one within [`PIECE_MAX`]. A text file
//! with no such cut within [`PIECE_MAX`] bytes is an error naming the file and byte. A
//! JSONL line longer than [`LINE_MAX`] is an error naming the file and line.
//!
//! **Splits.** `--val-tokens N`: the first N tokens are the validation split (llm.c's
//! shard 0 is its first 100M tokens), written as `val_000000.bin`, ... then the rest as
//! `train_000000.bin`, ...; every shard holds exactly `--shard-tokens` tokens except the
//! last of each split. `--val-fraction F` (the default, 0.1, when neither is given): the
//! last fraction of all tokens, as for a text `data.path`. That needs the total first, so
//! every token is streamed into train shards, and the tail is then moved into val shards
//! (read back from the train shards, block by block) and the train shard it began in cut.
//!
//! **Resuming.** `prepare-state.json` in the output directory records the options, each
//! input's size and modification time, and per completed shard its SHA-256 and where in
//! the input the next shard starts (the file, the byte and line of the piece, and how many
//! of its tokens went to earlier shards). A re-run with the same inputs and options checks
//! every recorded shard against its hash and continues after the last good one, writing
//! byte-identical shards; changed inputs or options are an error (delete the directory to
//! start over). `dataset.json` is written last and marks completion; then the state file
//! is removed. Bad input found mid-way (a bad JSONL line, non-UTF-8 text for GPT-2, too few
//! tokens) removes what this preparation wrote, so a refused command leaves nothing.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, IsTerminal, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Instant, UNIX_EPOCH};

use datasets::dataset::{find_llmc_shards, ShardMeta, SourceMeta, SplitMeta, DATASET_FORMAT, DATASET_JSON};
use datasets::shard::{hex, sha256_file};
use datasets::{DatasetMeta, Shard, ShardWriter, TokenWidth, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::io;
use crate::{Error, Result};

/// Shard size when `--shard-tokens` is not given (llm.c's 100M).
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;
/// The validation fraction when neither `--val-tokens` nor `--val-fraction` is given.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;
/// Text bytes per batch read and tokenized at once.
pub const BATCH_BYTES: usize = 32 << 20;
/// The size a text piece (one parallel task) aims at.
pub const PIECE_TARGET: usize = 1 << 20;
/// The most bytes of a text file without a safe cut (GPT-2).
pub const PIECE_MAX: usize = 16 << 20;
/// The longest JSONL line (one document).
pub const LINE_MAX: usize = 16 << 20;
/// The progress and resume record in the output directory.
pub const STATE_FILE: &str = "prepare-state.json";
const STATE_FORMAT: u32 = 1;
/// Test hook: SIGKILL this process right after its N-th state save (N >= 1).
const KILL_ENV: &str = "ENGINE_PREPARE_KILL_AFTER";

/// How a file's text is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// By extension: `.jsonl` and `.json` are JSONL, anything else text.
    Auto,
    /// The whole file is one document.
    Text,
    /// One JSON object per line, its `text_field` string one document.
    Jsonl,
}

/// Which tokens become the validation split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValSplit {
    /// The first this many tokens (llm.c's shard 0).
    Tokens(u64),
    /// The last fraction of all tokens, in (0, 1).
    Fraction(f64),
}

/// What [`prepare`] tokenizes and where it writes (the arguments of `engine prepare`).
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// "byte" or "gpt2".
    pub tokenizer: String,
    /// Files, directories and glob patterns, in order.
    pub inputs: Vec<String>,
    /// The data set directory to write; created if missing. It must not hold a
    /// `dataset.json`, nor shards or a state file of another preparation.
    pub out: PathBuf,
    /// The validation split.
    pub val: ValSplit,
    /// Tokens per shard file ([`DEFAULT_SHARD_TOKENS`] from the CLI); at least 1.
    pub shard_tokens: usize,
    /// Text or JSONL, or by extension.
    pub format: InputFormat,
    /// The JSONL field holding a document's text.
    pub text_field: String,
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
    /// Wall time of this invocation, seconds.
    pub seconds: f64,
    /// Input bytes read and tokenized by this invocation (less than the input when resumed).
    pub bytes_read: u64,
    /// Tokens produced by this invocation.
    pub tokens_made: u64,
    /// Shards found complete and verified from an interrupted run.
    pub resumed_shards: usize,
}

/// One input file, resolved.
#[derive(Clone, Debug)]
struct Input {
    path: PathBuf,
    jsonl: bool,
    bytes: u64,
}

/// An input as the state file records it, to notice a change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct InputStamp {
    path: String,
    bytes: u64,
    modified_ns: u128,
    jsonl: bool,
}

/// The options the shards depend on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StateOptions {
    tokenizer: String,
    shard_tokens: usize,
    val: ValSplit,
    text_field: String,
}

/// Where a shard's successor starts in the input: re-read the piece at (`source`,
/// `offset`, `line`) and skip its first `skip` tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ResumePoint {
    source: usize,
    offset: u64,
    line: u64,
    skip: u64,
    /// Tokens of `source` before this piece.
    source_tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ShardState {
    file: String,
    tokens: u64,
    sha256: String,
    /// Where the next shard starts.
    next: ResumePoint,
    /// `sources` entries complete when this shard was.
    sources_done: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct State {
    format: u32,
    options: StateOptions,
    inputs: Vec<InputStamp>,
    shards: Vec<ShardState>,
    sources: Vec<SourceMeta>,
    /// Set once the whole input is tokenized: the total token count.
    streamed: Option<u64>,
    /// `--val-fraction`, after streaming: the val shards written from the train tail.
    carved: Option<Vec<ShardState>>,
    /// `--val-fraction`: the hash of the cut train shard, recorded before it replaces the
    /// streamed one.
    cut_sha256: Option<String>,
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

fn check(options: &PrepareOptions) -> Result<()> {
    match options.val {
        ValSplit::Fraction(f) if !(f > 0.0 && f < 1.0) => {
            return Err(usage(format!("--val-fraction must be in (0, 1), exclusive, got {f}")));
        }
        ValSplit::Tokens(0) => return Err(usage("--val-tokens must be at least 1")),
        _ => {}
    }
    if options.shard_tokens == 0 {
        return Err(usage("--shard-tokens must be at least 1"));
    }
    if options.shard_tokens > i32::MAX as usize {
        return Err(usage(format!("--shard-tokens {} is more than an llm.c shard holds (2^31 - 1)", options.shard_tokens)));
    }
    if options.text_field.is_empty() {
        return Err(usage("--text-field must not be empty"));
    }
    if options.inputs.is_empty() {
        return Err(usage("no input files"));
    }
    check_out_dir(&options.out)
}

/// `out` is missing, or a directory without a `dataset.json` and without shards other than
/// those of an interrupted preparation (which has a state file).
fn check_out_dir(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(usage(format!("--out {} exists and is not a directory", out.display())));
    }
    if out.join(DATASET_JSON).exists() {
        return Err(usage(format!(
            "{} already holds a prepared data set ({DATASET_JSON}); choose another --out or delete it first",
            out.display()
        )));
    }
    if out.is_dir() && !out.join(STATE_FILE).exists() {
        if let Some(bin) = bin_files(out)?.first() {
            return Err(usage(format!(
                "{} holds shard files ({bin}) but no {STATE_FILE}, so they are not an interrupted `engine prepare`; \
                 choose another --out, or use `engine prepare --import {}` for llm.c shards",
                out.display(),
                out.display()
            )));
        }
    }
    Ok(())
}

fn bin_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".bin") && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Files, directories and globs to the input files, in order.
fn resolve_inputs(inputs: &[String], format: InputFormat) -> Result<Vec<Input>> {
    let mut paths = Vec::new();
    for arg in inputs {
        let path = PathBuf::from(arg);
        if path.is_dir() {
            let mut files = Vec::new();
            for entry in fs::read_dir(&path).map_err(io(&path))? {
                let entry = entry.map_err(io(&path))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && entry.path().is_file() {
                    files.push(entry.path());
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(usage(format!("input directory {arg} holds no files")));
            }
            paths.extend(files);
        } else if !path.exists() && is_pattern(arg) {
            let matches = glob::glob(arg).map_err(|e| usage(format!("input pattern `{arg}`: {e}")))?;
            let mut files = Vec::new();
            for m in matches {
                let m = m.map_err(|e| usage(format!("input pattern `{arg}`: {e}")))?;
                if m.is_file() {
                    files.push(m);
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(usage(format!("input pattern `{arg}` matches no files")));
            }
            paths.extend(files);
        } else {
            if let Err(source) = File::open(&path) {
                return Err(datasets::Error::Read { path, source }.into());
            }
            paths.push(path);
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let bytes = fs::metadata(&path).map_err(io(&path))?.len();
            let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
            let jsonl = match format {
                InputFormat::Jsonl => true,
                InputFormat::Text => false,
                InputFormat::Auto => matches!(ext.as_deref(), Some("jsonl" | "json")),
            };
            Ok(Input { path, jsonl, bytes })
        })
        .collect()
}

fn stamps(inputs: &[Input]) -> Result<Vec<InputStamp>> {
    inputs
        .iter()
        .map(|i| {
            let meta = fs::metadata(&i.path).map_err(io(&i.path))?;
            let modified_ns = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
            Ok(InputStamp { path: i.path.display().to_string(), bytes: meta.len(), modified_ns, jsonl: i.jsonl })
        })
        .collect()
}

/// One unit of tokenization: a JSONL line or a piece of a text file.
#[derive(Clone, Debug)]
struct Piece {
    source: usize,
    /// File offset of its first byte.
    offset: u64,
    /// JSONL: the 1-based line; text: 0.
    line: u64,
    /// Put the document separator first (a JSONL document; a text file's first piece).
    doc_start: bool,
    json: bool,
    range: Range<usize>,
    /// Set on the last piece of its source: the source's bytes and SHA-256.
    end_of_source: Option<(u64, String)>,
}

struct Batch {
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
}

impl Batch {
    fn new() -> Self {
        Self { bytes: Vec::with_capacity(BATCH_BYTES + LINE_MAX), pieces: Vec::new() }
    }
}

/// The reader: `inputs` from `start` on, as batches, into `tx`.
struct Reader<'a> {
    inputs: &'a [Input],
    gpt2: bool,
    tx: SyncSender<Result<Batch>>,
    batch: Batch,
}

/// The receiver hung up: the pipeline is stopping, reading ends quietly.
struct Hangup;

impl Reader<'_> {
    fn send(&mut self) -> std::result::Result<(), Hangup> {
        let batch = std::mem::replace(&mut self.batch, Batch::new());
        self.tx.send(Ok(batch)).map_err(|_| Hangup)
    }

    fn push(&mut self, piece_bytes: &[u8], mut piece: Piece) -> std::result::Result<(), Hangup> {
        let at = self.batch.bytes.len();
        self.batch.bytes.extend_from_slice(piece_bytes);
        piece.range = at..self.batch.bytes.len();
        self.batch.pieces.push(piece);
        if self.batch.bytes.len() >= BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }

    fn run(mut self, start: ResumePoint) {
        let result = (|| -> Result<std::result::Result<(), Hangup>> {
            for source in start.source..self.inputs.len() {
                let (offset, line) = if source == start.source { (start.offset, start.line) } else { (0, 0) };
                let done = if self.inputs[source].jsonl { self.jsonl(source, offset, line)? } else { self.text(source, offset)? };
                if done.is_err() {
                    return Ok(done);
                }
            }
            Ok(if self.batch.pieces.is_empty() { Ok(()) } else { self.send() })
        })();
        if let Err(e) = result {
            let _ = self.tx.send(Err(e));
        }
    }

    /// Opens a source and hashes its first `offset` bytes (read past on a resume).
    fn open(&self, source: usize, offset: u64) -> Result<(File, Sha256)> {
        let path = &self.inputs[source].path;
        let mut file = File::open(path).map_err(|source| datasets::Error::Read { path: path.clone(), source })?;
        let mut hasher = Sha256::new();
        let mut left = offset;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = file.read(&mut buf[..(left.min(1 << 20)) as usize]).map_err(io(path))?;
            if n == 0 {
                return Err(usage(format!("{} is shorter than when the interrupted run read it", path.display())));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        file.seek(SeekFrom::Start(offset)).map_err(io(path))?;
        Ok((file, hasher))
    }

    fn text(&mut self, source: usize, offset: u64) -> Result<std::result::Result<(), Hangup>> {
        let path = self.inputs[source].path.clone();
        let (mut file, mut hasher) = self.open(source, offset)?;
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_at = offset; // file offset of buf[0]
        let mut eof = false;
        let mut chunk = vec![0u8; 1 << 20];
        let piece = |at: u64, end: bool| Piece {
            source,
            offset: at,
            line: 0,
            doc_start: at == 0,
            json: false,
            range: 0..0,
            end_of_source: if end { Some((0, String::new())) } else { None },
        };
        loop {
            while !eof && buf.len() < BATCH_BYTES + PIECE_MAX {
                let n = file.read(&mut chunk).map_err(io(&path))?;
                if n == 0 {
                    eof = true;
                } else {
                    hasher.update(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            let mut c = 0usize;
            loop {
                if !eof && c + PIECE_MAX > buf.len() {
                    break; // the window of the next cut is not all read yet
                }
                let limit = (c + PIECE_MAX).min(buf.len());
                let window = &buf[c..limit];
                let at_end = eof && limit == buf.len();
                let cut = if !self.gpt2 {
                    if at_end && window.len() <= PIECE_TARGET {
                        None
                    } else {
                        Some(PIECE_TARGET)
                    }
                } else {
                    match datasets::tokenizer::next_safe_split(window, PIECE_TARGET) {
                        Some(p) => Some(p),
                        None if at_end => None,
                        None => match datasets::tokenizer::last_safe_split(window, 0) {
                            Some(p) => Some(p),
                            None => {
                                return Err(usage(format!(
                                    "{}: no place to cut the text between byte {} and byte {} (a blank line between \
                                     printable characters, where GPT-2's tokens cannot change); a text file needs one at \
                                     least every {} MiB (or make it JSONL, one document a line)",
                                    path.display(),
                                    buf_at + c as u64,
                                    buf_at + limit as u64,
                                    PIECE_MAX >> 20
                                )))
                            }
                        },
                    }
                };
                let end = cut.map_or(window.len(), |p| p);
                let last = cut.is_none();
                let mut p = piece(buf_at + c as u64, last);
                if last {
                    p.end_of_source = Some((buf_at + buf.len() as u64, hex(&std::mem::take(&mut hasher).finalize())));
                }
                let bytes = &buf[c..c + end];
                // `push` may send the batch; `bytes` borrows `buf`, not the batch.
                let at = self.batch.bytes.len();
                self.batch.bytes.extend_from_slice(bytes);
                p.range = at..self.batch.bytes.len();
                self.batch.pieces.push(p);
                c += end;
                if self.batch.bytes.len() >= BATCH_BYTES && self.send().is_err() {
                    return Ok(Err(Hangup));
                }
                if last {
                    return Ok(Ok(()));
                }
            }
            buf.drain(..c);
            buf_at += c as u64;
        }
    }

    fn jsonl(&mut self, source: usize, offset: u64, first_line: u64) -> Result<std::result::Result<(), Hangup>> {
        let path = self.inputs[source].path.clone();
        let (file, mut hasher) = self.open(source, offset)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut at = offset;
        let mut line_no = first_line.max(1);
        let mut line: Vec<u8> = Vec::new();
        loop {
            line.clear();
            // One line, at most LINE_MAX bytes, hashed as read.
            let mut newline = false;
            loop {
                let avail = reader.fill_buf().map_err(io(&path))?;
                if avail.is_empty() {
                    break;
                }
                let (take, found) = match avail.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (avail.len(), false),
                };
                hasher.update(&avail[..take]);
                line.extend_from_slice(&avail[..take]);
                reader.consume(take);
                if line.len() > LINE_MAX + 1 {
                    return Err(usage(format!(
                        "{} line {line_no}: longer than {} MiB, the most one JSONL document may hold",
                        path.display(),
                        LINE_MAX >> 20
                    )));
                }
                if found {
                    newline = true;
                    break;
                }
            }
            if line.is_empty() {
                break;
            }
            let len = line.len() as u64;
            let body_end = line.len() - usize::from(newline);
            let body = line[..body_end].strip_suffix(b"\r").unwrap_or(&line[..body_end]);
            if !body.iter().all(u8::is_ascii_whitespace) {
                let piece =
                    Piece { source, offset: at, line: line_no, doc_start: true, json: true, range: 0..0, end_of_source: None };
                let body = body.to_vec();
                if self.push(&body, piece).is_err() {
                    return Ok(Err(Hangup));
                }
            }
            at += len;
            line_no += 1;
        }
        // A marker with no tokens closes the source (its bytes and hash).
        let end = Piece {
            source,
            offset: at,
            line: line_no,
            doc_start: false,
            json: false,
            range: 0..0,
            end_of_source: Some((at, hex(&hasher.finalize()))),
        };
        Ok(self.push(&[], end))
    }
}

/// The tokens of each piece of `batch`, in order; the first bad piece in order is the error.
fn tokenize(tokenizer: &dyn Tokenizer, inputs: &[Input], field: &str, batch: &Batch) -> Result<Vec<Vec<u32>>> {
    let gpt2 = tokenizer.name() == "gpt2";
    let results: Vec<Result<Vec<u32>>> = batch
        .pieces
        .par_iter()
        .map(|p| {
            let bytes = &batch.bytes[p.range.clone()];
            let mut ids = Vec::with_capacity(bytes.len() / 3 + 1);
            if p.doc_start {
                ids.extend(tokenizer.document_separator());
            }
            let path = || inputs[p.source].path.display().to_string();
            if p.json {
                let bad = |msg: String| usage(format!("{} line {}: {msg}", path(), p.line));
                let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
                    bad(format!("not JSON ({}); each line must be a JSON object with a string field \"{field}\"", e))
                })?;
                let text = match value.get(field) {
                    Some(serde_json::Value::String(t)) => t,
                    Some(other) => {
                        let kind = match other {
                            serde_json::Value::Null => "null",
                            serde_json::Value::Bool(_) => "a boolean",
                            serde_json::Value::Number(_) => "a number",
                            serde_json::Value::Array(_) => "an array",
                            serde_json::Value::Object(_) => "an object",
                            serde_json::Value::String(_) => unreachable!(),
                        };
                        return Err(bad(format!("field \"{field}\" is {kind}, not a string")));
                    }
                    None if value.is_object() => {
                        return Err(bad(format!("no field \"{field}\" (choose the field with --text-field)")));
                    }
                    None => return Err(bad(format!("not a JSON object with a string field \"{field}\""))),
                };
                ids.extend(tokenizer.encode(text.as_bytes()));
            } else {
                if gpt2 {
                    if let Err(e) = std::str::from_utf8(bytes) {
                        return Err(datasets::Error::NotUtf8 { what: path(), offset: p.offset as usize + e.valid_up_to() }.into());
                    }
                }
                ids.extend(tokenizer.encode(bytes));
            }
            Ok(ids)
        })
        .collect();
    results.into_iter().collect()
}

/// The shard files' names and sizes, and where they go.
struct Layout {
    shard_tokens: u64,
    val_tokens: Option<u64>,
}

impl Layout {
    /// The name and capacity of the shard that starts at global token `at`, given the
    /// number of val and train shards before it.
    fn next(&self, at: u64, val_shards: usize, train_shards: usize) -> (String, u64) {
        match self.val_tokens {
            Some(v) if at < v => (format!("val_{val_shards:06}.bin"), self.shard_tokens.min(v - at)),
            _ => (format!("train_{train_shards:06}.bin"), self.shard_tokens),
        }
    }
}

/// What the writer thread is told.
enum ToWriter {
    Tokens { pieces: Vec<Piece>, tokens: Vec<Vec<u32>> },
    /// The input is all read: finish the open shard.
    Finish,
}

/// The writer: the shards, the state file, the per-source counts.
struct Writer {
    out: PathBuf,
    width: TokenWidth,
    layout: Layout,
    state: State,
    inputs: Vec<Input>,
    open: Option<(ShardWriter, String, u64)>,
    at: u64,
    /// Tokens of the first piece still to skip (a resume).
    skip: u64,
    source_tokens: u64,
    current_source: usize,
}

impl Writer {
    fn counts(&self) -> (usize, usize) {
        let val = self.state.shards.iter().filter(|s| s.file.starts_with("val_")).count();
        (val, self.state.shards.len() - val)
    }

    fn save(&mut self) -> Result<()> {
        save(&self.out, &self.state)
    }

    fn open_shard(&mut self) -> Result<()> {
        let (val, train) = self.counts();
        let (name, cap) = self.layout.next(self.at, val, train);
        let w = ShardWriter::create(&self.out.join(&name), self.width, cap as usize)?;
        self.open = Some((w, name, cap));
        Ok(())
    }

    fn close_shard(&mut self, next: ResumePoint) -> Result<()> {
        let (w, name, _) = self.open.take().expect("a shard is open");
        let tokens = w.len() as u64;
        let sha256 = w.finish()?;
        let sources_done = self.state.sources.len();
        self.state.shards.push(ShardState { file: name, tokens, sha256, next, sources_done });
        self.save()
    }

    fn piece(&mut self, piece: &Piece, tokens: &[u32]) -> Result<()> {
        if piece.source != self.current_source {
            self.current_source = piece.source;
            self.source_tokens = 0;
        }
        let skip = std::mem::take(&mut self.skip) as usize;
        let mut used = skip.min(tokens.len());
        while used < tokens.len() {
            if self.open.is_none() {
                self.open_shard()?;
            }
            let (w, _, cap) = self.open.as_mut().expect("opened above");
            let take = ((*cap as usize) - w.len()).min(tokens.len() - used);
            w.push(&tokens[used..used + take])?;
            used += take;
            self.at += take as u64;
            if w.len() as u64 == *cap {
                let next = ResumePoint {
                    source: piece.source,
                    offset: piece.offset,
                    line: piece.line,
                    skip: used as u64,
                    source_tokens: self.source_tokens,
                };
                self.close_shard(next)?;
            }
        }
        self.source_tokens += tokens.len() as u64;
        if let Some((bytes, sha256)) = &piece.end_of_source {
            self.state.sources.push(SourceMeta {
                path: self.inputs[piece.source].path.display().to_string(),
                bytes: *bytes,
                sha256: sha256.clone(),
                tokens: self.source_tokens,
            });
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<ToWriter>) -> Result<State> {
        for msg in rx {
            match msg {
                ToWriter::Tokens { pieces, tokens } => {
                    for (p, t) in pieces.iter().zip(&tokens) {
                        self.piece(p, t)?;
                    }
                }
                ToWriter::Finish => {
                    if let Some((w, _, _)) = &self.open {
                        if w.is_empty() {
                            self.open = None;
                        } else {
                            let next = ResumePoint { source: self.inputs.len(), ..Default::default() };
                            self.close_shard(next)?;
                        }
                    }
                    self.state.streamed = Some(self.at);
                    self.save()?;
                    return Ok(self.state);
                }
            }
        }
        // Hung up without Finish: the pipeline failed; the open shard's temporary file goes.
        Err(usage("the preparation stopped"))
    }
}

/// Saves the state; the test hook [`KILL_ENV`] = N kills the process right after the N-th
/// save of this process (the first is before any shard).
fn save(out: &Path, state: &State) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SAVES: AtomicU64 = AtomicU64::new(0);
    save_state(out, state)?;
    let n = SAVES.fetch_add(1, Ordering::SeqCst) + 1;
    if std::env::var(KILL_ENV).ok().and_then(|v| v.parse::<u64>().ok()) == Some(n) {
        // SAFETY: kill(2) of this process with SIGKILL; nothing to uphold.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    Ok(())
}

fn save_state(out: &Path, state: &State) -> Result<()> {
    let path = out.join(STATE_FILE);
    let tmp = out.join(format!(".{STATE_FILE}.tmp-{}", std::process::id()));
    let json = serde_json::to_string_pretty(state).expect("state serializes") + "\n";
    fs::write(&tmp, json).map_err(io(&tmp))?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))
}

fn load_state(out: &Path) -> Result<Option<State>> {
    let path = out.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    let state: State = serde_json::from_str(&text).map_err(|e| {
        usage(format!("{}: not a state file of this engine's `engine prepare` ({e}); delete the directory to start over", path.display()))
    })?;
    if state.format != STATE_FORMAT {
        return Err(usage(format!("{}: state format {} is not {STATE_FORMAT}; delete the directory to start over", path.display(), state.format)));
    }
    Ok(Some(state))
}

/// Compares an interrupted run's state with this one's options and inputs.
fn same_run(out: &Path, old: &State, options: &StateOptions, inputs: &[InputStamp]) -> Result<()> {
    let other = |what: String| {
        usage(format!(
            "{} holds an interrupted `engine prepare` of other inputs or options ({STATE_FILE}: {what}); \
             re-run it with the same ones to continue, or delete {} to start over",
            out.display(),
            out.display()
        ))
    };
    if old.options != *options {
        let (a, b) = (&old.options, options);
        let what = if a.tokenizer != b.tokenizer {
            format!("--tokenizer {} there, {} now", a.tokenizer, b.tokenizer)
        } else if a.shard_tokens != b.shard_tokens {
            format!("--shard-tokens {} there, {} now", a.shard_tokens, b.shard_tokens)
        } else if a.val != b.val {
            format!("validation split {:?} there, {:?} now", a.val, b.val)
        } else {
            format!("--text-field {} there, {} now", a.text_field, b.text_field)
        };
        return Err(other(what));
    }
    if old.inputs.len() != inputs.len() {
        return Err(other(format!("{} input files there, {} now", old.inputs.len(), inputs.len())));
    }
    for (a, b) in old.inputs.iter().zip(inputs) {
        if a.path != b.path {
            return Err(other(format!("input {} there, {} now", a.path, b.path)));
        }
        if a != b {
            return Err(other(format!("input {} changed since (size or modification time, or its format)", a.path)));
        }
    }
    Ok(())
}

/// Removes what a preparation wrote into `out` (shards listed in the state, stray
/// temporary files, the state file), and `out` itself if that leaves it empty.
fn clean_up(out: &Path, state: Option<&State>) {
    if let Some(state) = state {
        for s in state.shards.iter().chain(state.carved.iter().flatten()) {
            let _ = fs::remove_file(out.join(&s.file));
        }
    }
    remove_temporaries(out);
    let _ = fs::remove_file(out.join(STATE_FILE));
    let _ = fs::remove_dir(out);
}

/// Temporary files of killed runs (`.NAME.tmp-PID`).
fn remove_temporaries(out: &Path) {
    if let Ok(entries) = fs::read_dir(out) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Keeps the shards of `state` whose files match their hashes, up to the first that does not
/// (the rest are written again). Returns how many were kept.
fn verify_streamed(out: &Path, state: &mut State) -> Result<usize> {
    let mut good = 0;
    for s in &state.shards {
        let path = out.join(&s.file);
        if !path.is_file() || sha256_file(&path)? != s.sha256 {
            break;
        }
        good += 1;
    }
    if good < state.shards.len() {
        for s in &state.shards[good..] {
            let _ = fs::remove_file(out.join(&s.file));
        }
        state.shards.truncate(good);
        let done = state.shards.last().map_or(0, |s| s.sources_done);
        state.sources.truncate(done);
        state.streamed = None;
        state.carved = None;
        state.cut_sha256 = None;
    }
    Ok(good)
}

fn progress_bar(show: bool, total: u64, at: u64) -> ProgressBar {
    if !(show && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("tokenizing {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg} eta {eta}")
            .expect("template"),
    );
    bar.set_position(at);
    bar.reset_elapsed();
    bar
}

/// Tokenizes `options.inputs` into a data set directory; see the module documentation.
pub fn prepare(options: &PrepareOptions) -> Result<PrepareSummary> {
    let started = Instant::now();
    check(options)?;
    let tokenizer = datasets::tokenizer(&options.tokenizer)?;
    let inputs = resolve_inputs(&options.inputs, options.format)?;
    let state_options = StateOptions {
        tokenizer: tokenizer.name().to_string(),
        shard_tokens: options.shard_tokens,
        val: options.val,
        text_field: options.text_field.clone(),
    };
    let input_stamps = stamps(&inputs)?;
    let old = if options.out.is_dir() { load_state(&options.out)? } else { None };
    let resumed = old.is_some();
    let mut state = match old {
        Some(old) => {
            same_run(&options.out, &old, &state_options, &input_stamps)?;
            old
        }
        None => State {
            format: STATE_FORMAT,
            options: state_options,
            inputs: input_stamps,
            shards: Vec::new(),
            sources: Vec::new(),
            streamed: None,
            carved: None,
            cut_sha256: None,
        },
    };
    fs::create_dir_all(&options.out).map_err(io(&options.out))?;
    remove_temporaries(&options.out);
    let result = run(options, tokenizer.as_ref(), &inputs, &mut state, resumed, started);
    if let Err(e) = &result {
        // Bad input: nothing stays. An I/O failure or an interruption keeps the state for a re-run.
        if matches!(e, Error::Usage(_) | Error::Data(datasets::Error::NotUtf8 { .. }) | Error::Data(datasets::Error::Read { .. })) {
            let state = load_state(&options.out).ok().flatten();
            clean_up(&options.out, state.as_ref());
        }
    }
    result
}

fn run(
    options: &PrepareOptions,
    tokenizer: &dyn Tokenizer,
    inputs: &[Input],
    state: &mut State,
    resumed: bool,
    started: Instant,
) -> Result<PrepareSummary> {
    let out = &options.out;
    let width = TokenWidth::for_vocab(tokenizer.vocab_size());
    let mut resumed_shards = 0;
    if resumed {
        resumed_shards = if state.carved.is_some() { state.shards.len() } else { verify_streamed(out, state)? };
        let at = state.shards.last().map(|s| s.next).unwrap_or_default();
        let place = match inputs.get(at.source) {
            Some(i) => format!("{} byte {}", i.path.display(), at.offset),
            None => "the end of the input".into(),
        };
        eprintln!("resuming {}: {resumed_shards} shard(s) verified, continuing at {place}", out.display());
    }
    let (mut bytes_read, mut tokens_made) = (0u64, 0u64);
    if state.streamed.is_none() {
        save(out, state)?;
        let start = state.shards.last().map(|s| s.next).unwrap_or_default();
        let total: u64 = inputs.iter().map(|i| i.bytes).sum();
        let before: u64 = inputs[..start.source.min(inputs.len())].iter().map(|i| i.bytes).sum::<u64>() + start.offset;
        let bar = progress_bar(options.progress, total, before);
        let writer = Writer {
            out: out.clone(),
            width,
            layout: Layout { shard_tokens: options.shard_tokens as u64, val_tokens: val_tokens(options.val) },
            state: state.clone(),
            inputs: inputs.to_vec(),
            open: None,
            at: state.shards.iter().map(|s| s.tokens).sum(),
            skip: start.skip,
            source_tokens: start.source_tokens,
            current_source: start.source,
        };
        let gpt2 = tokenizer.name() == "gpt2";
        let streamed = std::thread::scope(|s| -> Result<State> {
            let (btx, brx) = sync_channel::<Result<Batch>>(1);
            let (wtx, wrx) = sync_channel::<ToWriter>(1);
            s.spawn(move || Reader { inputs, gpt2, tx: btx, batch: Batch::new() }.run(start));
            let writer = s.spawn(move || writer.run(wrx));
            let t0 = Instant::now();
            let fed = (|| -> Result<()> {
                for batch in brx {
                    let batch = batch?;
                    let tokens = tokenize(tokenizer, inputs, &options.text_field, &batch)?;
                    bytes_read += batch.bytes.len() as u64;
                    tokens_made += tokens.iter().map(|t| t.len() as u64).sum::<u64>();
                    bar.inc(batch.bytes.len() as u64);
                    bar.set_message(format!("{:.2}M tokens/s", tokens_made as f64 / t0.elapsed().as_secs_f64() / 1e6));
                    if wtx.send(ToWriter::Tokens { pieces: batch.pieces, tokens }).is_err() {
                        return Ok(()); // the writer failed: its error is the one to report
                    }
                }
                let _ = wtx.send(ToWriter::Finish);
                Ok(())
            })();
            drop(wtx);
            let written = writer.join().expect("the writer thread does not panic");
            fed?;
            written
        });
        bar.finish_and_clear();
        *state = streamed?;
    }
    let total = state.streamed.expect("streamed");
    let (train, val) = match options.val {
        ValSplit::Tokens(v) => {
            if total <= v {
                return Err(usage(format!(
                    "the input holds {total} tokens: not more than --val-tokens {v}, so no training tokens are left; \
                     give more input or a smaller --val-tokens"
                )));
            }
            let split = |prefix: &str| {
                let shards: Vec<ShardMeta> = state
                    .shards
                    .iter()
                    .filter(|s| s.file.starts_with(prefix))
                    .map(|s| ShardMeta { file: s.file.clone(), tokens: s.tokens, sha256: Some(s.sha256.clone()) })
                    .collect();
                SplitMeta { tokens: shards.iter().map(|s| s.tokens).sum(), shards }
            };
            (split("train_"), split("val_"))
        }
        ValSplit::Fraction(f) => carve(out, state, total, f, width, options.shard_tokens as u64)?,
    };
    let meta = DatasetMeta {
        format: DATASET_FORMAT,
        tokenizer: tokenizer.name().to_string(),
        vocab_size: tokenizer.vocab_size(),
        token_bytes: width.bytes(),
        document_separator: tokenizer.document_separator(),
        val_fraction: match options.val {
            ValSplit::Fraction(f) => Some(f),
            ValSplit::Tokens(_) => None,
        },
        val_tokens: val_tokens(options.val),
        train,
        val,
        sources: state.sources.clone(),
    };
    meta.write(out)?;
    let _ = fs::remove_file(out.join(STATE_FILE));
    Ok(PrepareSummary {
        out: out.clone(),
        meta,
        seconds: started.elapsed().as_secs_f64(),
        bytes_read,
        tokens_made,
        resumed_shards,
    })
}

fn val_tokens(val: ValSplit) -> Option<u64> {
    match val {
        ValSplit::Tokens(v) => Some(v),
        ValSplit::Fraction(_) => None,
    }
}

/// `--val-fraction`: moves the last fraction of the streamed train shards into val shards,
/// in steps recorded in the state so a kill at any point continues correctly.
fn carve(out: &Path, state: &mut State, total: u64, fraction: f64, width: TokenWidth, s: u64) -> Result<(SplitMeta, SplitMeta)> {
    let split = datasets::dataset::val_split_point(total as usize, fraction)? as u64;
    if split == 0 || split == total {
        return Err(usage(format!(
            "{total} tokens cannot be split into non-empty train and val parts with --val-fraction {fraction}"
        )));
    }
    let (k, r) = ((split / s) as usize, split % s);
    let streamed = state.shards.clone();
    if state.carved.is_none() {
        // 1. The val shards, from tokens [split, total) of the train shards.
        let maps = streamed[k..].iter().map(|sh| Shard::open(&out.join(&sh.file), None)).collect::<datasets::Result<Vec<_>>>()?;
        let mut carved = Vec::new();
        let mut writer: Option<(ShardWriter, String)> = None;
        let mut block = vec![0u32; 1 << 20];
        for (i, map) in maps.iter().enumerate() {
            let mut pos = if i == 0 { r as usize } else { 0 };
            while pos < map.len() {
                if writer.is_none() {
                    let name = format!("val_{:06}.bin", carved.len());
                    let done: u64 = carved.iter().map(|c: &ShardState| c.tokens).sum();
                    let cap = s.min(total - split - done) as usize;
                    writer = Some((ShardWriter::create(&out.join(&name), width, cap)?, name));
                }
                let (w, _) = writer.as_mut().expect("opened above");
                let room = (s as usize - w.len()).min(map.len() - pos).min(block.len());
                map.read(pos, &mut block[..room]);
                w.push(&block[..room])?;
                pos += room;
                if w.len() as u64 == s {
                    let (w, name) = writer.take().expect("open");
                    let tokens = w.len() as u64;
                    carved.push(ShardState { file: name, tokens, sha256: w.finish()?, next: ResumePoint::default(), sources_done: 0 });
                }
            }
        }
        if let Some((w, name)) = writer.take() {
            let tokens = w.len() as u64;
            carved.push(ShardState { file: name, tokens, sha256: w.finish()?, next: ResumePoint::default(), sources_done: 0 });
        }
        state.carved = Some(carved);
        save(out, state)?;
    } else {
        for c in state.carved.iter().flatten() {
            let path = out.join(&c.file);
            if !path.is_file() || sha256_file(&path)? != c.sha256 {
                return Err(changed(&path, out));
            }
        }
    }
    // 2. Cut train shard k to its first r tokens (or drop it), drop the ones after it.
    let mut train: Vec<ShardMeta> =
        streamed[..k].iter().map(|sh| ShardMeta { file: sh.file.clone(), tokens: sh.tokens, sha256: Some(sh.sha256.clone()) }).collect();
    if r > 0 {
        let path = out.join(&streamed[k].file);
        let current = sha256_file(&path)?;
        if Some(&current) != state.cut_sha256.as_ref() {
            if current != streamed[k].sha256 {
                return Err(changed(&path, out));
            }
            let map = Shard::open(&path, None)?;
            let tmp_name = cut_name(&streamed[k].file);
            let mut w = ShardWriter::create(&out.join(&tmp_name), width, r as usize)?;
            let mut block = vec![0u32; 1 << 20];
            let mut pos = 0usize;
            while pos < r as usize {
                let n = (r as usize - pos).min(block.len());
                map.read(pos, &mut block[..n]);
                w.push(&block[..n])?;
                pos += n;
            }
            drop(map);
            let sha = w.finish()?;
            state.cut_sha256 = Some(sha);
            save(out, state)?;
            fs::rename(out.join(&tmp_name), &path).map_err(io(&path))?;
        }
        train.push(ShardMeta { file: streamed[k].file.clone(), tokens: r, sha256: state.cut_sha256.clone() });
    }
    let _ = fs::remove_file(out.join(cut_name(&streamed[k].file)));
    for sh in &streamed[k + usize::from(r > 0)..] {
        match fs::remove_file(out.join(&sh.file)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io { path: out.join(&sh.file), source: e }),
        }
    }
    let carved = state.carved.clone().unwrap_or_default();
    let val: Vec<ShardMeta> =
        carved.iter().map(|c| ShardMeta { file: c.file.clone(), tokens: c.tokens, sha256: Some(c.sha256.clone()) }).collect();
    Ok((SplitMeta { tokens: split, shards: train }, SplitMeta { tokens: total - split, shards: val }))
}

/// Where the cut train shard is written before it replaces the streamed one (a name
/// [`remove_temporaries`] removes).
fn cut_name(file: &str) -> String {
    format!(".{file}.tmp-cut")
}

fn changed(shard: &Path, out: &Path) -> Error {
    datasets::Error::BadShard {
        path: shard.to_path_buf(),
        problem: format!("changed since an interrupted `engine prepare` wrote it; delete {} to start over", out.display()),
    }
    .into()
}

/// What `engine prepare --import` wrote.
#[derive(Clone, Debug)]
pub struct ImportSummary {
    /// The directory of shards.
    pub dir: PathBuf,
    /// The `dataset.json` written there.
    pub meta: DatasetMeta,
}

/// `engine prepare --import DIR`: checks the llm.c shards of `dir` (header, size, token ids
/// below the tokenizer's vocabulary) and writes only a `dataset.json` describing them.
pub fn import(dir: &Path, tokenizer_name: &str) -> Result<ImportSummary> {
    if !dir.is_dir() {
        return Err(usage(format!("--import {}: not a directory", dir.display())));
    }
    if dir.join(DATASET_JSON).exists() {
        return Err(usage(format!("{} already holds a prepared data set ({DATASET_JSON}); nothing to import", dir.display())));
    }
    let tokenizer = datasets::tokenizer(tokenizer_name)?;
    let found = find_llmc_shards(dir)?.ok_or_else(|| {
        usage(format!("--import {}: no llm.c shards there (files named `*train*.bin` and `*val*.bin`)", dir.display()))
    })?;
    let mut width = None;
    let mut split = |files: &[PathBuf]| -> Result<SplitMeta> {
        let mut shards = Vec::new();
        for f in files {
            let shard = Shard::open(f, Some(tokenizer.vocab_size()))?;
            if *width.get_or_insert(shard.width()) != shard.width() {
                return Err(usage(format!("{}: uint{} tokens, unlike the shards before it", f.display(), 8 * shard.width().bytes())));
            }
            let file = f.file_name().expect("a file").to_string_lossy().into_owned();
            shards.push(ShardMeta { file, tokens: shard.len() as u64, sha256: None });
        }
        Ok(SplitMeta { tokens: shards.iter().map(|s| s.tokens).sum(), shards })
    };
    let train = split(&found.train)?;
    let val = split(&found.val)?;
    let meta = DatasetMeta {
        format: DATASET_FORMAT,
        tokenizer: tokenizer.name().to_string(),
        vocab_size: tokenizer.vocab_size(),
        token_bytes: width.expect("at least one shard").bytes(),
        document_separator: tokenizer.document_separator(),
        val_fraction: None,
        val_tokens: None,
        train,
        val,
        sources: Vec::new(),
    };
    meta.write(dir)?;
    Ok(ImportSummary { dir: dir.to_path_buf(), meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_puts_the_first_val_tokens_in_val_shards() {
        let l = Layout { shard_tokens: 10, val_tokens: Some(25) };
        assert_eq!(l.next(0, 0, 0), ("val_000000.bin".into(), 10));
        assert_eq!(l.next(20, 2, 0), ("val_000002.bin".into(), 5));
        assert_eq!(l.next(25, 3, 0), ("train_000000.bin".into(), 10));
        let l = Layout { shard_tokens: 10, val_tokens: None };
        assert_eq!(l.next(0, 0, 0), ("train_000000.bin".into(), 10));
    }
}
