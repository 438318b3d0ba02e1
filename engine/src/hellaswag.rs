//! HellaSwag (Zellers et al. 2019): four endings per context, one right; a language model
//! picks the ending it finds most likely. `engine eval RUN --task hellaswag --data FILE`
//! and `train.hellaswag_interval` score a model with it, by the same code on the CPU and on
//! a GPU, for any model of the registry (through [`Model::token_losses`]).
//!
//! Two files are read ([`load`]):
//!
//! - the official JSON lines (`hellaswag_val.jsonl` of github.com/rowanz/hellaswag: `ind`,
//!   `activity_label`, `ctx_a`, `ctx_b`, `ctx`, `split`, `split_type`, `label`,
//!   `endings` (4), `source_id`; `label` may also be a string "0".."3", as in the Hugging
//!   Face copy), tokenized with the run's tokenizer (GPT-2 BPE or bytes);
//! - llm.c's `hellaswag_val.bin` (`dev/data/hellaswag.py`, `write_evalfile`): a header of
//!   256 int32 (magic 20240522, version 1, examples, longest example in bytes), then per
//!   example uint16 values: 65535, the example's size in bytes, its index, the label, the
//!   number of endings (4), the context's length and GPT-2 tokens, and each ending's length
//!   and tokens. It holds llm.c's rendering only, already tokenized (GPT-2 runs only).
//!
//! Each example is scored in two renderings, each ending appended to its context:
//!
//! - **lm-eval-harness** (its `hellaswag` task, 0-shot): the context is
//!   `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`, each ending
//!   `" " + preprocess(ending)` ([`preprocess`], [`capitalize`]); context and context +
//!   ending are encoded and the ending's tokens are those past the context's (as the
//!   harness's `_encode_pair`). `acc`: the ending of the largest summed log-likelihood
//!   wins; `acc_norm`: the largest summed log-likelihood divided by the ending's length in
//!   characters (Unicode scalar values, Python's `len`, the leading space not counted).
//! - **llm.c** (`dev/data/hellaswag.py`): the context is `ctx` as it is, each ending
//!   `" " + ending`, encoded separately. `llmc_acc`: the smallest summed token loss wins
//!   (the same rule as `acc`, on this rendering); `llmc_acc_norm`: the smallest mean token
//!   loss over the ending's tokens wins (what llm.c prints as `acc_norm`).
//!
//! Ties go to the first ending (numpy's `argmax`, llm.c's strict `<`). A row (context +
//! ending) longer than the model's context length + 1 tokens is cut from the left (the
//! harness's rule): the context loses its first tokens; the example counts as
//! `truncated`. An ending that alone is longer than the context length loses its first
//! tokens too, which are then not scored (`endings_cut`); its `acc_norm` still divides by
//! its whole length in characters.
//!
//! The endings of consecutive examples go through the model a batch of rows at a time,
//! right-padded to the longest row of the batch (padding follows every scored position, so
//! causal attention never sees it).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use datasets::Tokenizer;
use kernels::Tensor;
use models::Model;
use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::{Error, Result};

/// The magic number of llm.c's eval files (the first int32 of the header).
pub const BIN_MAGIC: i32 = 20240522;
/// Endings per example.
pub const ENDINGS: usize = 4;
/// Rows (context + one ending) per forward that `engine eval` uses by default: the eight
/// rows of one JSONL example (four endings in each of the two renderings).
pub const DEFAULT_ROWS: usize = 8;

/// Which file [`load`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The official JSON lines: both renderings.
    Jsonl,
    /// llm.c's `.bin`: llm.c's rendering only.
    LlmcBin,
}

/// A context and its four endings, as token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendering {
    /// The context's tokens (never empty).
    pub context: Vec<u32>,
    /// Each ending's tokens (never empty), as they follow the context.
    pub endings: [Vec<u32>; ENDINGS],
}

/// One example, ready to score.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Its line in the JSONL file (1-based), or its index in a `.bin` (0-based, as llm.c
    /// numbers them).
    pub line: usize,
    /// The right ending, 0..4.
    pub label: usize,
    /// lm-eval-harness's rendering and each ending's length in characters (the divisor
    /// of `acc_norm`); `None` for a `.bin`.
    pub harness: Option<(Rendering, [usize; ENDINGS])>,
    /// llm.c's rendering.
    pub llmc: Rendering,
}

/// A HellaSwag file, read and tokenized.
#[derive(Clone, Debug)]
pub struct Task {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its examples, in file order.
    pub examples: Vec<Example>,
}

/// The scores of one rendering's four endings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EndingScores {
    /// The summed log-likelihood (natural log) of each ending's scored tokens.
    pub loglik: [f64; ENDINGS],
    /// Tokens scored per ending (fewer than the ending's when `endings_cut`).
    pub tokens: [usize; ENDINGS],
}

/// One example's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExampleScore {
    /// [`Example::line`].
    pub line: usize,
    /// The right ending.
    pub label: usize,
    /// lm-eval-harness's rendering (`None` for a `.bin`).
    pub harness: Option<EndingScores>,
    /// Each ending's length in characters (`acc_norm`'s divisor; `None` for a `.bin`).
    pub chars: Option<[usize; ENDINGS]>,
    /// llm.c's rendering.
    pub llmc: EndingScores,
    /// `acc`'s pick: the largest summed log-likelihood (harness rendering).
    pub pred: Option<usize>,
    /// `acc_norm`'s pick: the largest log-likelihood per character (harness rendering).
    pub pred_norm: Option<usize>,
    /// `llmc_acc`'s pick: the smallest summed loss (llm.c rendering).
    pub llmc_pred: usize,
    /// `llmc_acc_norm`'s pick: the smallest mean token loss (llm.c rendering).
    pub llmc_pred_norm: usize,
    /// A row of it was cut from the left to fit the model's context.
    pub truncated: bool,
    /// An ending of it lost tokens to that cut (they are not scored).
    pub ending_cut: bool,
}

/// The accuracies over the scored examples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Examples scored.
    pub examples: usize,
    /// lm-eval-harness's `acc` (`None` for a `.bin`).
    pub acc: Option<f64>,
    /// lm-eval-harness's `acc_norm` (`None` for a `.bin`).
    pub acc_norm: Option<f64>,
    /// `acc` on llm.c's rendering.
    pub llmc_acc: f64,
    /// llm.c's `acc_norm`: the mean token loss's pick, on its rendering.
    pub llmc_acc_norm: f64,
    /// Examples with a row cut from the left.
    pub truncated: usize,
    /// Examples with an ending that lost tokens to the cut.
    pub endings_cut: usize,
}

/// lm-eval-harness's `preprocess` of HellaSwag text: trimmed, `" [title]"` turned into
/// `". "`, every `[...]` (within a line, shortest first) removed, then every two spaces
/// made one (in one left-to-right pass, as Python's `str.replace`).
pub fn preprocess(text: &str) -> String {
    static BRACKETS: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new(r"\[.*?\]").expect("a valid pattern"));
    let text = text.trim().replace(" [title]", ". ");
    BRACKETS.replace_all(&text, "").replace("  ", " ")
}

/// Python's `str.capitalize`: the first character upper case, the rest lower case (Python
/// title-cases the first; the two differ only for a few digraphs such as `ǆ`).
pub fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars.as_str().to_lowercase().chars()).collect(),
        None => String::new(),
    }
}

/// One line of the official JSONL (fields not listed are ignored).
#[derive(Deserialize)]
struct Line {
    activity_label: String,
    ctx_a: String,
    ctx_b: String,
    ctx: String,
    label: serde_json::Value,
    endings: Vec<String>,
}

/// Reads a HellaSwag file: llm.c's `.bin` (by its `.bin` extension or its magic number),
/// else the official JSON lines, tokenized with `tokenizer`; every token must be below
/// `vocab` (the model's). Any fault is one error naming the file and the line (or the
/// `.bin` example and byte offset) and what was expected.
pub fn load(path: &Path, tokenizer: &dyn Tokenizer, vocab: usize) -> Result<Task> {
    let bytes = fs::read(path).map_err(io(path))?;
    let is_bin = path.extension().is_some_and(|e| e == "bin") || bytes.get(..4) == Some(&BIN_MAGIC.to_le_bytes());
    let (format, examples) = if is_bin {
        if tokenizer.name() != "gpt2" {
            return Err(Error::Usage(format!(
                "{}: an llm.c .bin holds GPT-2 tokens, but this model uses the {} tokenizer (give the official JSONL instead: \
                 it is tokenized with the model's tokenizer)",
                path.display(),
                tokenizer.name()
            )));
        }
        (Format::LlmcBin, read_bin(path, &bytes)?)
    } else {
        (Format::Jsonl, read_jsonl(path, &bytes, tokenizer)?)
    };
    if examples.is_empty() {
        return Err(Error::Usage(format!("{}: no HellaSwag examples in it (the file is empty)", path.display())));
    }
    for e in &examples {
        let renderings = std::iter::once(&e.llmc).chain(e.harness.as_ref().map(|(r, _)| r));
        for r in renderings {
            if let Some(&id) = r.context.iter().chain(r.endings.iter().flatten()).find(|&&id| id as usize >= vocab) {
                let at = if format == Format::Jsonl { "line" } else { "example" };
                return Err(Error::Usage(format!(
                    "{} {at} {}: token {id} is not below the model's vocabulary size {vocab}",
                    path.display(),
                    e.line
                )));
            }
        }
    }
    Ok(Task { path: path.to_path_buf(), format, examples })
}

fn read_jsonl(path: &Path, bytes: &[u8], tokenizer: &dyn Tokenizer) -> Result<Vec<Example>> {
    let at = |line: usize, msg: String| Error::Usage(format!("{} line {line}: {msg}", path.display()));
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        at(line, "not UTF-8 text (expected HellaSwag JSON lines, or an llm.c .bin)".into())
    })?;
    let lines: Vec<&str> = text.split('\n').collect();
    let mut examples = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let number = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            // The newline that ends the last line leaves an empty string after it.
            if i + 1 == lines.len() {
                break;
            }
            return Err(at(number, "an empty line (expected one HellaSwag example, a JSON object, per line)".into()));
        }
        let line: Line = serde_json::from_str(raw).map_err(|e| {
            let msg = e.to_string();
            let msg = match msg.rsplit_once(" at line ") {
                Some((m, _)) if e.is_syntax() || e.is_eof() => format!("not JSON: {m} (column {})", e.column()),
                Some((m, _)) => format!("not a HellaSwag example: {m} (expected fields activity_label, ctx_a, ctx_b, ctx, label, endings)"),
                None => msg,
            };
            at(number, msg)
        })?;
        examples.push(example_from(&line, number, tokenizer).map_err(|msg| at(number, msg))?);
    }
    Ok(examples)
}

fn example_from(line: &Line, number: usize, tokenizer: &dyn Tokenizer) -> std::result::Result<Example, String> {
    let endings: &[String; ENDINGS] =
        line.endings.as_slice().try_into().map_err(|_| format!("`endings` has {} endings, expected {ENDINGS}", line.endings.len()))?;
    let label = match &line.label {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as usize),
        serde_json::Value::String(s) => s.parse::<usize>().ok(),
        _ => None,
    };
    let label = label.filter(|&l| l < ENDINGS).ok_or_else(|| format!("`label` is {}, expected 0, 1, 2 or 3 (the right ending)", line.label))?;
    if let Some(i) = endings.iter().position(|e| e.trim().is_empty()) {
        return Err(format!("ending {i} is empty"));
    }
    if line.ctx.is_empty() {
        return Err("`ctx` is empty".into());
    }
    let encode = |text: &str| tokenizer.encode(text.as_bytes());
    // lm-eval-harness: the query, and each ending's tokens as they follow it in the
    // encoding of the whole.
    let query = preprocess(&format!("{}: {} {}", line.activity_label, line.ctx_a, capitalize(&line.ctx_b)));
    let context = encode(&query);
    let mut chars = [0; ENDINGS];
    let mut harness = Vec::with_capacity(ENDINGS);
    for (i, ending) in endings.iter().enumerate() {
        let choice = preprocess(ending);
        chars[i] = choice.chars().count();
        let whole = encode(&format!("{query} {choice}"));
        let tokens = whole.get(context.len()..).unwrap_or_default().to_vec();
        if tokens.is_empty() {
            return Err(format!("ending {i} encodes to no tokens after the context"));
        }
        harness.push(tokens);
    }
    let llmc_context = encode(&line.ctx);
    let llmc: Vec<Vec<u32>> = endings.iter().map(|e| encode(&format!(" {e}"))).collect();
    let four = |v: Vec<Vec<u32>>| -> [Vec<u32>; ENDINGS] { v.try_into().expect("four endings") };
    Ok(Example {
        line: number,
        label,
        harness: Some((Rendering { context, endings: four(harness) }, chars)),
        llmc: Rendering { context: llmc_context, endings: four(llmc) },
    })
}

/// The header of llm.c's files, in int32.
const HEADER_INTS: usize = 256;

fn read_bin(path: &Path, bytes: &[u8]) -> Result<Vec<Example>> {
    let fail = |msg: String| Error::Usage(format!("{}: {msg}", path.display()));
    let header_bytes = HEADER_INTS * 4;
    if bytes.len() < header_bytes {
        return Err(fail(format!(
            "bad header: {} bytes, shorter than the {header_bytes}-byte header of an llm.c eval file (256 int32)",
            bytes.len()
        )));
    }
    let int = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    if int(0) != BIN_MAGIC {
        return Err(fail(format!("bad header: magic {}, expected {BIN_MAGIC} (an llm.c eval file, as dev/data/hellaswag.py writes)", int(0))));
    }
    if int(1) != 1 {
        return Err(fail(format!("bad header: version {}, expected 1", int(1))));
    }
    let count = usize::try_from(int(2)).ok().filter(|&n| n > 0).ok_or_else(|| fail(format!("bad header: {} examples, expected at least 1", int(2))))?;
    let body = &bytes[header_bytes..];
    if body.len() % 2 != 0 {
        return Err(fail(format!("{} bytes after the header, an odd number (the examples are uint16 values)", body.len())));
    }
    let words: Vec<u16> = body.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let mut examples = Vec::with_capacity(count);
    let mut pos = 0usize;
    for index in 0..count {
        let offset = header_bytes + 2 * pos;
        let bad = |msg: String| fail(format!("example {index} (byte offset {offset}): {msg}"));
        let head = words.get(pos..pos + 6).ok_or_else(|| bad(format!("the file ends; the header says {count} examples")))?;
        let (start, size, idx, label, endings, context_len) = (head[0], head[1] as usize, head[2] as usize, head[3] as usize, head[4] as usize, head[5] as usize);
        if start != u16::MAX {
            return Err(bad(format!("starts with {start}, expected the example marker 65535")));
        }
        if idx != index {
            return Err(bad(format!("has index {idx}, expected {index} (examples in order)")));
        }
        if endings != ENDINGS {
            return Err(bad(format!("has {endings} endings, expected {ENDINGS}")));
        }
        if label >= ENDINGS {
            return Err(bad(format!("label {label}, expected 0, 1, 2 or 3")));
        }
        if size % 2 != 0 || size / 2 < 6 || pos + size / 2 > words.len() {
            return Err(bad(format!("size {size} bytes does not fit the file ({} bytes of examples left)", 2 * (words.len() - pos))));
        }
        let example = &words[pos..pos + size / 2];
        let mut cursor = 6;
        let mut take = |n: usize, what: &str| -> Result<Vec<u32>> {
            let tokens = example.get(cursor..cursor + n).ok_or_else(|| bad(format!("{what} of {n} tokens runs past the example's {size} bytes")))?;
            cursor += n;
            Ok(tokens.iter().map(|&t| t as u32).collect())
        };
        if context_len == 0 {
            return Err(bad("an empty context".into()));
        }
        let context = take(context_len, "the context")?;
        let mut tokens = Vec::with_capacity(ENDINGS);
        for i in 0..ENDINGS {
            let len = take(1, "an ending's length")?[0] as usize;
            if len == 0 {
                return Err(bad(format!("ending {i} is empty")));
            }
            tokens.push(take(len, &format!("ending {i}"))?);
        }
        if cursor != example.len() {
            return Err(bad(format!("size {size} bytes, but its fields take {} bytes", 2 * cursor)));
        }
        let endings: [Vec<u32>; ENDINGS] = tokens.try_into().expect("four endings");
        examples.push(Example { line: index, label, harness: None, llmc: Rendering { context, endings } });
        pos += size / 2;
    }
    if pos != words.len() {
        return Err(fail(format!(
            "{} bytes after the last of the header's {count} examples (byte offset {})",
            2 * (words.len() - pos),
            header_bytes + 2 * pos
        )));
    }
    Ok(examples)
}

/// A row of a forward: the window of context + ending that fits the model, and which of
/// its targets are the ending's.
struct Row {
    /// Tokens of the window (inputs are all but the last, targets all but the first).
    window: Vec<u32>,
    /// The first target that is an ending token.
    first_scored: usize,
    /// Tokens cut from the left.
    cut: usize,
    /// The ending's tokens.
    ending_len: usize,
}

fn row(context: &[u32], ending: &[u32], context_length: usize) -> Row {
    let len = context.len() + ending.len();
    let cut = len.saturating_sub(context_length + 1);
    let window: Vec<u32> = context.iter().chain(ending).skip(cut).copied().collect();
    // Target k is token cut + 1 + k of the row: an ending token from k = context - cut - 1 on.
    let first_scored = (context.len() as isize - cut as isize - 1).max(0) as usize;
    Row { window, first_scored, cut, ending_len: ending.len() }
}

/// The first index of the largest value (numpy's `argmax` on finite values).
fn first_max(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Scores `examples` with `model`: `rows` rows (context + one ending) per forward, on the
/// model's device, through [`Model::token_losses`]. `progress` is told how many examples
/// are done after each forward. What the model keeps is released at the end.
pub fn score(model: &mut dyn Model, examples: &[Example], rows: usize, progress: &mut dyn FnMut(usize)) -> Result<Vec<ExampleScore>> {
    let context_length = model.context_length();
    let device = model.device();
    // (example, rendering: 0 harness / 1 llm.c, ending)
    let mut order = Vec::new();
    for (e, example) in examples.iter().enumerate() {
        let renderings: &[usize] = if example.harness.is_some() { &[0, 1] } else { &[1] };
        for &r in renderings {
            order.extend((0..ENDINGS).map(|i| (e, r, i)));
        }
    }
    let rendering = |e: usize, r: usize| -> &Rendering {
        match r {
            0 => &examples[e].harness.as_ref().expect("harness rows only for JSONL").0,
            _ => &examples[e].llmc,
        }
    };
    // Per example and rendering: summed log-likelihood and tokens per ending, and flags.
    let mut sums = vec![[[0.0f64; ENDINGS]; 2]; examples.len()];
    let mut counts = vec![[[0usize; ENDINGS]; 2]; examples.len()];
    let mut flags = vec![(false, false); examples.len()];
    for chunk in order.chunks(rows.max(1)) {
        let built: Vec<Row> = chunk.iter().map(|&(e, r, i)| row(&rendering(e, r).context, &rendering(e, r).endings[i], context_length)).collect();
        let t = built.iter().map(|r| r.window.len() - 1).max().expect("a chunk has rows");
        let (mut inputs, mut targets) = (vec![0u32; chunk.len() * t], vec![0u32; chunk.len() * t]);
        for (b, r) in built.iter().enumerate() {
            let n = r.window.len() - 1;
            inputs[b * t..b * t + n].copy_from_slice(&r.window[..n]);
            targets[b * t..b * t + n].copy_from_slice(&r.window[1..]);
        }
        let x = Tensor::from_u32(&[chunk.len(), t], inputs)?.to_device(device)?;
        let y = Tensor::from_u32(&[chunk.len(), t], targets)?.to_device(device)?;
        model.release();
        let losses = model.token_losses(&x, &y)?.try_to_vec()?;
        for (b, (r, &(e, rend, i))) in built.iter().zip(chunk).enumerate() {
            let n = r.window.len() - 1;
            let total: f64 = losses[b * t + r.first_scored..b * t + n].iter().map(|&l| l as f64).sum();
            if !total.is_finite() {
                return Err(Error::Usage(format!(
                    "HellaSwag example {} (line {}): the model's loss is {total} (are its weights finite?)",
                    e + 1,
                    examples[e].line
                )));
            }
            sums[e][rend][i] = -total;
            counts[e][rend][i] = n - r.first_scored;
            flags[e].0 |= r.cut > 0;
            flags[e].1 |= n - r.first_scored < r.ending_len;
        }
        progress(chunk.last().map_or(0, |&(e, _, _)| e + 1));
    }
    model.release();
    let mut scores = Vec::with_capacity(examples.len());
    for (e, example) in examples.iter().enumerate() {
        let llmc = EndingScores { loglik: sums[e][1], tokens: counts[e][1] };
        let mean_loss: Vec<f64> = (0..ENDINGS).map(|i| -llmc.loglik[i] / llmc.tokens[i].max(1) as f64).collect();
        let (harness, chars, pred, pred_norm) = match &example.harness {
            Some((_, chars)) => {
                let ll = sums[e][0];
                let per_char: Vec<f64> = (0..ENDINGS).map(|i| ll[i] / chars[i].max(1) as f64).collect();
                (Some(EndingScores { loglik: ll, tokens: counts[e][0] }), Some(*chars), Some(first_max(&ll)), Some(first_max(&per_char)))
            }
            None => (None, None, None, None),
        };
        scores.push(ExampleScore {
            line: example.line,
            label: example.label,
            harness,
            chars,
            llmc_pred: first_max(&llmc.loglik),
            llmc_pred_norm: first_max(&mean_loss.iter().map(|l| -l).collect::<Vec<_>>()),
            llmc,
            pred,
            pred_norm,
            truncated: flags[e].0,
            ending_cut: flags[e].1,
        });
    }
    Ok(scores)
}

/// The accuracies of `scores` (each the fraction of examples whose pick is the label).
pub fn summarize(scores: &[ExampleScore]) -> Summary {
    let n = scores.len().max(1) as f64;
    let rate = |hit: &dyn Fn(&ExampleScore) -> bool| scores.iter().filter(|s| hit(s)).count() as f64 / n;
    let harness = scores.iter().all(|s| s.pred.is_some()) && !scores.is_empty();
    Summary {
        examples: scores.len(),
        acc: harness.then(|| rate(&|s| s.pred == Some(s.label))),
        acc_norm: harness.then(|| rate(&|s| s.pred_norm == Some(s.label))),
        llmc_acc: rate(&|s| s.llmc_pred == s.label),
        llmc_acc_norm: rate(&|s| s.llmc_pred_norm == s.label),
        truncated: scores.iter().filter(|s| s.truncated).count(),
        endings_cut: scores.iter().filter(|s| s.ending_cut).count(),
    }
}

/// The first `limit` examples of `task` (all with 0) scored and summarized: what the
/// training hook (`train.hellaswag_interval`) runs.
pub fn evaluate(model: &mut dyn Model, task: &Task, limit: usize, rows: usize) -> Result<Summary> {
    let examples = match limit {
        0 => &task.examples[..],
        n => &task.examples[..n.min(task.examples.len())],
    };
    Ok(summarize(&score(model, examples, rows, &mut |_| {})?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_follows_the_harness() {
        assert_eq!(preprocess("  A man [title] is here. [header] Then  he goes. "), "A man. is here. Then he goes.");
        // Shortest brackets first, not across a newline; three spaces become two.
        assert_eq!(preprocess("a [x] b [y]c"), "a b c");
        assert_eq!(preprocess("a [x\n] b"), "a [x\n] b");
        assert_eq!(preprocess("a   b"), "a  b");
    }

    #[test]
    fn capitalize_is_pythons() {
        assert_eq!(capitalize("he IS"), "He is");
        assert_eq!(capitalize(""), "");
        assert_eq!(capitalize("élan"), "Élan");
    }

    #[test]
    fn rows_are_cut_from_the_left() {
        // Fits: nothing cut, the ending's targets start at the last context token.
        let r = row(&[1, 2, 3], &[4, 5], 8);
        assert_eq!((r.window.clone(), r.first_scored, r.cut), (vec![1, 2, 3, 4, 5], 2, 0));
        // 5 tokens, context 3: keep the last 4; targets 3, 4, 5; the ending's are 4, 5.
        let r = row(&[1, 2, 3], &[4, 5], 3);
        assert_eq!((r.window.clone(), r.first_scored, r.cut), (vec![2, 3, 4, 5], 1, 1));
        // The ending alone is longer than the context: its first token is not scored.
        let r = row(&[1], &[4, 5, 6, 7], 2);
        assert_eq!((r.window.clone(), r.first_scored, r.cut), (vec![5, 6, 7], 0, 2));
        assert_eq!(r.window.len() - 1 - r.first_scored, 2);
    }

    #[test]
    fn ties_go_to_the_first() {
        assert_eq!(first_max(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(first_max(&[-2.0, -1.0, -1.0, -3.0]), 1);
    }
}
