//! A performance report of a run directory: one self-contained `report.html` (inline CSS
//! and SVG charts, no script, no external resource) from `metrics.jsonl`, `summary.json`,
//! `events.jsonl`, `telemetry.jsonl` and `config.toml` (docs/CONFIG.md, "Run directory").
//!
//! [`load`] reads the files (a malformed line is an error naming the file and line, but for
//! a torn last line, one without its newline as a killed run leaves it, which is skipped
//! with a note), [`render`] turns what was read into HTML without touching the disk,
//! [`write_page`] writes it atomically, and [`write_report`] does all three.

mod chart;
mod html;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use html::render;

use crate::error::{io, Error};
use crate::Result;

/// One line of `metrics.jsonl`. Numbers that were not finite are written as `null` by
/// serde_json, hence the `Option`s on values that may diverge.
#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    /// Steps completed (1-based, as in metrics.log).
    pub step: u64,
    /// Seconds since that `engine train` started, at the end of the step.
    pub time_s: f64,
    /// Training loss of the step; `None` when it was not finite.
    pub loss: Option<f64>,
    /// Validation loss after the step; `None` when not evaluated (or not finite).
    pub val_loss: Option<f64>,
    /// Learning rate of the step.
    pub lr: Option<f64>,
    /// Global gradient norm before clipping; `None` when it was not finite.
    pub grad_norm: Option<f64>,
    /// Tokens in the step (`batch.tokens_per_step`).
    pub tokens: u64,
    /// `tokens` / the step's wall time.
    pub tokens_per_s: Option<f64>,
    /// Model FLOPs utilization in [0, 1]; `None` when the peak rate is unknown.
    pub mfu: Option<f64>,
    /// The step's wall time (data wait, forward, backward, optimizer), milliseconds.
    pub step_ms: f64,
    /// Milliseconds of the step spent waiting for the data loader.
    pub data_wait_ms: f64,
    /// Milliseconds in the forward passes; `None` in logs of older versions.
    pub forward_ms: Option<f64>,
    /// Milliseconds in the backward passes; `None` in logs of older versions.
    pub backward_ms: Option<f64>,
    /// Milliseconds in the AdamW step; `None` in logs of older versions.
    pub optimizer_ms: Option<f64>,
    /// The device pool after the step.
    pub memory: Memory,
    /// Sequences per micro-batch the step ran with.
    pub micro_batch: usize,
    /// Micro-batches the step ran.
    pub grad_accum: usize,
    /// The recomputation policy the step ran with ("none", "full:2", ...).
    pub recompute: String,
    /// lm-eval-harness's HellaSwag `acc` after the step (`train.hellaswag_interval`);
    /// `None` when not scored (or an llm.c `.bin` was).
    #[serde(default)]
    pub hellaswag_acc: Option<f64>,
    /// lm-eval-harness's HellaSwag `acc_norm` after the step.
    #[serde(default)]
    pub hellaswag_acc_norm: Option<f64>,
    /// llm.c's HellaSwag `acc_norm` (mean token loss) after the step.
    #[serde(default)]
    pub hellaswag_llmc_acc_norm: Option<f64>,
    /// HellaSwag examples scored after the step.
    #[serde(default)]
    pub hellaswag_examples: Option<u64>,
}

/// The device pool after a step, bytes.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Memory {
    /// Held by live tensors.
    pub in_use: u64,
    /// The most in use since the run started.
    pub peak: u64,
    /// In use plus cached free blocks.
    pub reserved: u64,
    /// The pool's budget; `None`: unlimited.
    pub budget: Option<u64>,
}

/// An alert as written to `events.jsonl` and `summary.json` ([`crate::logs::Alert`]).
#[derive(Clone, Debug, Deserialize)]
pub struct Alert {
    /// The step it was raised at (1-based).
    pub step: u64,
    /// "data_stall", "memory_near_budget", "loss_spike", "nonfinite_loss",
    /// "gpu_throttling" or "low_gpu_utilization".
    pub kind: String,
    /// The line printed on the terminal.
    pub message: String,
    /// The measured value; `None` when it was not finite (a NaN loss).
    pub value: Option<f64>,
    /// The threshold it crossed.
    pub threshold: Option<f64>,
}

/// A change of plan after an out-of-memory error, as in `events.jsonl`
/// ([`crate::train::PlanChange`]).
#[derive(Clone, Debug, Deserialize)]
pub struct PlanChange {
    /// The step that was redone (1-based).
    pub step: u64,
    /// The out-of-memory error, as printed.
    pub error: String,
    /// The recomputation policy that ran out of memory.
    pub from_policy: String,
    /// The micro-batch that ran out of memory.
    pub from_micro_batch: usize,
    /// The policy the step was redone with.
    pub to_policy: String,
    /// The micro-batch the step was redone with.
    pub to_micro_batch: usize,
    /// Micro-batches per step under the new plan.
    pub to_grad_accum: usize,
}

/// A checkpoint written, as in `events.jsonl`.
#[derive(Clone, Debug, Deserialize)]
pub struct Checkpoint {
    /// Steps completed when it was written.
    pub step: u64,
    /// Its directory, as the trainer wrote it (`<run_dir>/checkpoints/step-XXXXXX`).
    pub path: String,
}

/// A sample of generated text (`train.sample_interval`), as in `events.jsonl`.
#[derive(Clone, Debug, Deserialize)]
pub struct TextSample {
    /// Steps completed when it was drawn.
    pub step: u64,
    /// The seed of its random draws (`engine sample --seed`).
    pub seed: u64,
    /// The text it continues (`train.sample_prompt`).
    pub prompt: String,
    /// Tokens generated.
    pub tokens: usize,
    /// The generated text (the continuation, without the prompt).
    pub text: String,
}

/// One line of `events.jsonl`; kinds this report does not know are kept as their JSON.
#[derive(Clone, Debug)]
pub enum Event {
    /// `{"event": "alert", "alert": {...}}`.
    Alert(Alert),
    /// `{"event": "plan_change", "change": {...}}`.
    PlanChange(PlanChange),
    /// `{"event": "checkpoint", "checkpoint": {...}}`.
    Checkpoint(Checkpoint),
    /// `{"event": "sample", "sample": {...}}`.
    TextSample(TextSample),
    /// Any other `event`.
    Other {
        /// The line's `event` value ("(no kind)" when it has none).
        kind: String,
        /// The whole line, re-serialized.
        json: String,
    },
}

/// summary.json's statistics of one metric over the steps after the warm-up; a value that
/// was not finite reads as `None`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Stats {
    /// Steps with a value.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: Option<f64>,
    /// Smallest value.
    pub min: Option<f64>,
    /// Largest value.
    pub max: Option<f64>,
    /// Population standard deviation.
    pub std: Option<f64>,
    /// Median, interpolated linearly between closest ranks.
    pub p50: Option<f64>,
    /// 95th percentile, interpolated as `p50`.
    pub p95: Option<f64>,
}

/// `summary.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Summary {
    /// Steps the last `engine train` invocation trained.
    pub steps: u64,
    /// The first steps left out of `metrics` (0 when there were no more than the warm-up).
    pub warmup_steps_excluded: u64,
    /// The invocation's first step (1-based).
    pub first_step: u64,
    /// The invocation's last step.
    pub last_step: u64,
    /// Tokens trained in the invocation.
    pub tokens: u64,
    /// Seconds from the start of the command to the end of training.
    pub wall_seconds: f64,
    /// Seconds in the steps themselves (the sum of `step_ms`).
    pub train_seconds: f64,
    /// Training loss of the last step; `None` if none, or not finite.
    pub final_loss: Option<f64>,
    /// The latest validation loss; `None` if the invocation never evaluated.
    pub final_val_loss: Option<f64>,
    /// Statistics by metric name (`loss`, `tokens_per_s`, `step_ms`, `memory_peak`, ...).
    pub metrics: BTreeMap<String, Stats>,
    /// The peak bf16 rate MFU was computed with, TFLOP/s; `None` when unknown.
    pub peak_tflops: Option<f64>,
    /// Where `peak_tflops` came from: `"logs.peak_tflops"`, `"table: <GPU name>"` or
    /// `"unknown: ..."`.
    pub peak_tflops_source: String,
    /// Every alert of the invocation, in order (absent in older summaries: empty).
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// The device and precision the run trained on (absent in older summaries).
    #[serde(default)]
    pub device: Option<String>,
    /// "fp32" or "bf16" (absent in older summaries).
    #[serde(default)]
    pub precision: Option<String>,
    /// What the logs cost (absent in older summaries).
    #[serde(default)]
    pub logging: Option<Logging>,
}

/// summary.json's `logging`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Logging {
    /// The trainer's time writing step lines, checking alerts and updating the terminal,
    /// milliseconds, all steps together.
    pub step_logging_ms: f64,
    /// Telemetry samples taken.
    pub telemetry_samples: u64,
    /// The telemetry thread's time taking and writing them, milliseconds.
    pub telemetry_ms: f64,
    /// (`step_logging_ms` + `telemetry_ms`) / the steps' time: an upper bound of what the
    /// logs took from training.
    pub share_of_step_time: f64,
}

/// One line of `telemetry.jsonl`: the writer's own types (crate::telemetry).
pub use crate::telemetry::{GpuSample as Gpu, HostSample as Host, Sample};

/// Everything the report is drawn from.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// The run directory read.
    pub dir: PathBuf,
    /// `config.toml`, when present.
    pub config: Option<toml::Table>,
    /// The steps of the last training in the directory (see `restarts`).
    pub steps: Vec<Step>,
    /// Lines of `metrics.jsonl` where the step went back (training again into the directory
    /// without `--resume` starts again at step 1); the report shows what follows the last.
    pub restarts: Vec<usize>,
    /// `None`: no `events.jsonl`.
    pub events: Option<Vec<Event>>,
    /// `None`: no `summary.json` (written when `engine train` ends, or diverges; not while it
    /// trains, nor after other errors).
    pub summary: Option<Summary>,
    /// `None`: no `telemetry.jsonl`.
    pub telemetry: Option<Vec<Sample>>,
    /// Directory names under `checkpoints/` and the one `latest` names.
    pub checkpoints_on_disk: Vec<String>,
    /// The directory name `checkpoints/latest` holds (e.g. `step-001000`); `None` without one.
    pub latest_checkpoint: Option<String>,
    /// What reading the files skipped or resolved, one line each: a torn last line (a run
    /// killed while writing it), steps logged twice (a resume from an earlier checkpoint).
    pub notes: Vec<String>,
}

/// Reads `run_dir/report.html`'s sources; see [`Run`] for what is optional.
pub fn load(run_dir: &Path) -> Result<Run> {
    if !run_dir.is_dir() {
        return Err(Error::Usage(format!("{} is not a run directory (expected <run.out_dir>/<run.name>, holding metrics.jsonl)", run_dir.display())));
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let metrics = read_text(&metrics_path).map_err(io(&metrics_path))?;
    let mut notes = Vec::new();
    let (steps, restarts) = last_training(&metrics_path, parse_lines::<Step>(&metrics_path, &metrics, &mut notes)?, &mut notes);
    let config = match read_optional(&run_dir.join("config.toml"))? {
        Some(text) => Some(toml::from_str::<toml::Table>(&text).map_err(|e| Error::RunFile {
            path: run_dir.join("config.toml"),
            line: None,
            msg: e.message().to_string(),
        })?),
        None => None,
    };
    let events_path = run_dir.join("events.jsonl");
    let events = read_optional(&events_path)?.map(|text| parse_events(&events_path, &text, &mut notes)).transpose()?;
    let summary_path = run_dir.join("summary.json");
    let summary = read_optional(&summary_path)?
        .map(|text| {
            serde_json::from_str::<Summary>(&text).map_err(|e| Error::RunFile { path: summary_path.clone(), line: Some(e.line()), msg: json_msg(&e) })
        })
        .transpose()?;
    let telemetry_path = run_dir.join("telemetry.jsonl");
    let telemetry = read_optional(&telemetry_path)?
        .map(|text| parse_lines::<Sample>(&telemetry_path, &text, &mut notes).map(|v| continuous_time(v.into_iter().map(|(_, s)| s).collect())))
        .transpose()?;
    let (checkpoints_on_disk, latest_checkpoint) = checkpoints(&run_dir.join("checkpoints"));
    Ok(Run { dir: run_dir.to_path_buf(), config, steps, restarts, events, summary, telemetry, checkpoints_on_disk, latest_checkpoint, notes })
}

/// Telemetry's `time_s` starts again at each invocation (a resumed run appends): each
/// restart is shifted to follow the sample before it, so time on the charts runs forward.
fn continuous_time(mut samples: Vec<Sample>) -> Vec<Sample> {
    let (mut offset, mut last) = (0.0, f64::NEG_INFINITY);
    for s in &mut samples {
        if s.time_s + offset < last {
            offset = last - s.time_s;
        }
        s.time_s += offset;
        last = s.time_s;
    }
    samples
}

/// Writes `run_dir/report.html` (via a temporary file in the same directory, renamed into
/// place, so a reader never sees half a page) and returns its path.
pub fn write_report(run_dir: &Path) -> Result<PathBuf> {
    write_page(&load(run_dir)?)
}

/// Writes `run.dir/report.html` from what [`load`] read, atomically as [`write_report`];
/// returns its path.
pub fn write_page(run: &Run) -> Result<PathBuf> {
    let page = render(run);
    let run_dir = &run.dir;
    let path = run_dir.join("report.html");
    let tmp = run_dir.join(".report.html.tmp");
    std::fs::write(&tmp, page).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}

/// The text of the regular file at `path`; anything else (a symlink to a device such as
/// /dev/zero, whose reading would not end; a pipe) is refused unread.
fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file (a device, a pipe or a directory), not read"));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// The file's text; `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match read_text(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// serde_json's message without its " at line 1 column N", which would name the line within
/// the line.
fn json_msg(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text.rfind(" at line ").map_or(text.as_str(), |i| &text[..i]);
    format!("{text} (column {})", e.column())
}

/// Each non-blank line of a JSON-lines file with its 1-based line number. A last line that
/// does not parse and has no newline is torn (its writer was killed): skipped, with a note.
fn parse_lines<T: DeserializeOwned>(path: &Path, text: &str, notes: &mut Vec<String>) -> Result<Vec<(usize, T)>> {
    let mut out = Vec::new();
    let torn = !text.is_empty() && !text.ends_with('\n');
    let last = text.lines().count();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(value) => out.push((i + 1, value)),
            Err(_) if torn && i + 1 == last => notes.push(format!(
                "{} line {}: skipped a torn last line ({} bytes without a newline: the run was killed while writing it)",
                path.display(),
                i + 1,
                line.len()
            )),
            Err(e) => return Err(Error::RunFile { path: path.to_path_buf(), line: Some(i + 1), msg: json_msg(&e) }),
        }
    }
    Ok(out)
}

/// The steps of the last training, and the lines where the step went back to 1 (trained
/// again without `--resume`). A step going back to a later one is a resume from a checkpoint
/// before steps already logged (the killed invocation trained past its last checkpoint):
/// the later records of those steps replace the earlier ones, with a note.
fn last_training(path: &Path, lines: Vec<(usize, Step)>, notes: &mut Vec<String>) -> (Vec<Step>, Vec<usize>) {
    let mut restarts = Vec::new();
    let mut kept: Vec<Step> = Vec::new();
    let mut replaced = Vec::new();
    for (line, step) in lines {
        if kept.last().is_some_and(|last| step.step <= last.step) {
            if step.step <= 1 {
                restarts.push(line);
                kept.clear();
                replaced.clear();
            } else {
                let from = kept.partition_point(|s| s.step < step.step);
                replaced.push((line, kept[from].step, kept.last().map_or(0, |s| s.step)));
                kept.truncate(from);
            }
        }
        kept.push(step);
    }
    for (line, first, last) in replaced {
        notes.push(format!(
            "{} line {line}: steps {first} to {last} were logged again (a resume from the checkpoint before them); the later records are shown",
            path.display()
        ));
    }
    (kept, restarts)
}

fn parse_events(path: &Path, text: &str, notes: &mut Vec<String>) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    for (line, value) in parse_lines::<serde_json::Value>(path, text, notes)? {
        let kind = value.get("event").and_then(|k| k.as_str()).unwrap_or("(no kind)").to_string();
        let body = |key: &str| value.get(key).cloned().unwrap_or(serde_json::Value::Null);
        let bad = |e: serde_json::Error| Error::RunFile { path: path.to_path_buf(), line: Some(line), msg: format!("{kind}: {e}") };
        events.push(match kind.as_str() {
            "alert" => Event::Alert(serde_json::from_value(body("alert")).map_err(bad)?),
            "plan_change" => Event::PlanChange(serde_json::from_value(body("change")).map_err(bad)?),
            "checkpoint" => Event::Checkpoint(serde_json::from_value(body("checkpoint")).map_err(bad)?),
            "sample" => Event::TextSample(serde_json::from_value(body("sample")).map_err(bad)?),
            _ => Event::Other { json: value.to_string(), kind },
        });
    }
    Ok(events)
}

/// The `step-XXXXXX` directories under `dir`, sorted, and the name `latest` holds.
fn checkpoints(dir: &Path) -> (Vec<String>, Option<String>) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("step-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let latest = std::fs::read_to_string(dir.join("latest")).ok().map(|s| s.trim().to_string());
    (names, latest)
}

/// `text` with the characters HTML gives meaning to escaped.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn step_line(step: u64, loss: &str) -> String {
        format!(
            r#"{{"step":{step},"time_s":{t},"loss":{loss},"val_loss":null,"lr":0.001,"grad_norm":1.5,"tokens":4096,"tokens_per_s":28000.5,"mfu":null,"step_ms":140.25,"data_wait_ms":0.002,"forward_ms":50.0,"backward_ms":88.0,"optimizer_ms":2.0,"memory":{{"in_use":13479936,"peak":196227072,"reserved":208826368,"budget":null}},"micro_batch":32,"grad_accum":1,"recompute":"none"}}"#,
            t = step as f64 * 0.14
        )
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn a_malformed_line_names_the_file_and_the_line() {
        let good = step_line(1, "5.5");
        let metrics = format!("{good}\n{}\n{{\"step\": 3, \"time_s\": 0.4}}\n", step_line(2, "5.4"));
        let dir = dir_with(&[("metrics.jsonl", &metrics)]);
        let err = load(dir.path()).unwrap_err().to_string();
        // `loss` may be null, so the first required field missing is `tokens`.
        let want = format!("{} line 3: missing field `tokens` (column 26)", dir.path().join("metrics.jsonl").display());
        assert_eq!(err, want);

        let dir = dir_with(&[("metrics.jsonl", &format!("{good}\n\n{good}\nnot json\n"))]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl line 4: expected"), "{err}");

        let events = "{\"event\":\"alert\",\"alert\":{\"step\":1,\"kind\":\"x\",\"message\":\"m\",\"value\":1,\"threshold\":0}}\n{\"event\":\"alert\",\"alert\":{\"step\":\"two\"}}\n";
        let dir = dir_with(&[("metrics.jsonl", &good), ("events.jsonl", events)]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("events.jsonl line 2: alert: invalid type: string \"two\""), "{err}");

        let dir = dir_with(&[("metrics.jsonl", &good), ("telemetry.jsonl", "{\"time_s\": 1.0}\n")]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("telemetry.jsonl line 1: missing field `step`"), "{err}");

        let dir = dir_with(&[]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl") && err.contains("No such file"), "{err}");
    }

    #[test]
    fn events_of_unknown_kinds_are_kept_and_restarts_show_the_last_training() {
        let metrics = [1, 2, 3, 1, 2].iter().map(|&s| step_line(s, "5.0")).collect::<Vec<_>>().join("\n");
        let events = "{\"event\":\"checkpoint\",\"checkpoint\":{\"step\":2,\"path\":\"checkpoints/step-000002\"}}\n{\"event\":\"thermal\",\"gpu\":0}\n";
        let dir = dir_with(&[("metrics.jsonl", &metrics), ("events.jsonl", events)]);
        let run = load(dir.path()).unwrap();
        assert_eq!(run.steps.iter().map(|s| s.step).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(run.restarts, vec![4]);
        let events = run.events.unwrap();
        assert!(matches!(&events[0], Event::Checkpoint(c) if c.step == 2));
        assert!(matches!(&events[1], Event::Other { kind, json } if kind == "thermal" && json.contains("\"gpu\":0")));
        assert!(run.summary.is_none() && run.telemetry.is_none() && run.config.is_none());
    }

    #[test]
    fn a_torn_last_line_is_skipped_with_a_note() {
        let good = format!("{}\n{}\n", step_line(1, "5.5"), step_line(2, "5.4"));
        let torn = &step_line(3, "5.3")[..40];
        let event = "{\"event\":\"checkpoint\",\"checkpoint\":{\"step\":2,\"path\":\"checkpoints/step-000002\"}}\n";
        let sample = "{\"time_s\":0.5,\"step\":1,\"gpu\":null,\"host\":{\"cpu_pct\":1.0,\"process_cpu_pct\":1.0,\"rss\":1,\"disk_free\":null}}\n";
        let dir = dir_with(&[
            ("metrics.jsonl", &format!("{good}{torn}")),
            ("events.jsonl", &format!("{event}{{\"event\":\"alert\",\"al")),
            ("telemetry.jsonl", &format!("{sample}{{")),
        ]);
        let run = load(dir.path()).unwrap();
        assert_eq!(run.steps.iter().map(|s| s.step).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((run.events.as_ref().unwrap().len(), run.telemetry.as_ref().unwrap().len()), (1, 1));
        assert_eq!(run.notes.len(), 3, "{:?}", run.notes);
        let want = format!("{} line 3: skipped a torn last line (40 bytes without a newline", dir.path().join("metrics.jsonl").display());
        assert!(run.notes[0].starts_with(&want), "{:?}", run.notes);
        assert!(run.notes[1].contains("events.jsonl line 2: skipped a torn last line") && run.notes[2].contains("telemetry.jsonl line 2"), "{:?}", run.notes);
        assert!(render(&run).contains("skipped a torn last line"));
        // A whole last record without its newline is no tear: kept, no note.
        let dir = dir_with(&[("metrics.jsonl", &format!("{good}{}", step_line(3, "5.3")))]);
        let run = load(dir.path()).unwrap();
        assert_eq!((run.steps.len(), run.notes.len()), (3, 0));
        // The same bytes in the middle of the file are an error naming the line.
        let dir = dir_with(&[("metrics.jsonl", &format!("{good}{torn}\n{}\n", step_line(3, "5.3")))]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl line 3: "), "{err}");
    }

    #[test]
    fn steps_logged_again_after_a_resume_replace_the_earlier_records() {
        // Checkpoint at 2, killed after logging 3 and 4; resumed, 3 to 5 trained again; then
        // trained again from scratch, and resumed again from 1.
        let lines = [(1, "5.0"), (2, "4.0"), (3, "9.0"), (4, "9.0"), (3, "3.0"), (4, "2.0"), (5, "1.0")];
        let metrics: String = lines.iter().map(|&(s, l)| step_line(s, l) + "\n").collect();
        let dir = dir_with(&[("metrics.jsonl", &metrics)]);
        let run = load(dir.path()).unwrap();
        let steps: Vec<(u64, f64)> = run.steps.iter().map(|s| (s.step, s.loss.unwrap())).collect();
        assert_eq!(steps, [(1, 5.0), (2, 4.0), (3, 3.0), (4, 2.0), (5, 1.0)]);
        assert!(run.restarts.is_empty());
        assert_eq!(run.notes.len(), 1);
        assert!(run.notes[0].ends_with("metrics.jsonl line 5: steps 3 to 4 were logged again (a resume from the checkpoint before them); the later records are shown"), "{:?}", run.notes);
        let again = format!("{metrics}{}\n{}\n{}\n", step_line(1, "5.0"), step_line(2, "8.0"), step_line(2, "4.0"));
        let dir = dir_with(&[("metrics.jsonl", &again)]);
        let run = load(dir.path()).unwrap();
        assert_eq!(run.steps.iter().map(|s| (s.step, s.loss.unwrap())).collect::<Vec<_>>(), [(1, 5.0), (2, 4.0)]);
        assert_eq!((run.restarts.as_slice(), run.notes.len()), ([8].as_slice(), 1));
        assert!(run.notes[0].contains("line 10: steps 2 to 2"), "{:?}", run.notes);
    }

    #[test]
    fn write_report_replaces_the_page_atomically() {
        let dir = dir_with(&[("metrics.jsonl", &step_line(1, "5.5"))]);
        std::fs::write(dir.path().join("report.html"), "old").unwrap();
        let path = write_report(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("report.html"));
        let page = std::fs::read_to_string(&path).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
        assert!(!dir.path().join(".report.html.tmp").exists());
    }

    #[test]
    fn telemetry_of_a_resumed_run_keeps_time_running_forward() {
        let host = Host { cpu_pct: 1.0, process_cpu_pct: 1.0, rss: 1, disk_free: None };
        let sample = |t: f64| Sample { time_s: t, step: 0, gpu: None, host: host.clone() };
        let times: Vec<f64> = continuous_time([0.1, 1.1, 2.1, 0.05, 1.05, 0.2].map(sample).to_vec()).iter().map(|s| s.time_s).collect();
        let expected = [0.1, 1.1, 2.1, 2.1, 3.1, 3.1];
        assert!(times.iter().zip(expected).all(|(t, e)| (t - e).abs() < 1e-12), "{times:?}");
    }
}