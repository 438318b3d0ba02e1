//! Helpers shared by the engine's integration tests (`mod common;` in a test file): run
//! the `engine` binary, check a clean failure or a success, build tiny runs, and snapshot a
//! directory. Each test binary uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `engine` binary built for these tests.
pub const ENGINE: &str = env!("CARGO_BIN_EXE_engine");
/// The shipped default config (Tiny Shakespeare, a tiny GPT).
pub const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/shakespeare-char.toml");

/// `engine args...` in `cwd`, with `RUST_BACKTRACE` unset so a panic shows its
/// "run with `RUST_BACKTRACE=1`" hint (which [`assert_fails`] looks for).
pub fn engine_in(cwd: &Path, args: &[&str]) -> Output {
    command_in(cwd, args).output().expect("the engine binary runs")
}

/// The [`Command`] of [`engine_in`], for a test that needs to adjust it (environment,
/// `pre_exec`, spawn instead of wait).
pub fn command_in(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(ENGINE);
    cmd.args(args).current_dir(cwd).env_remove("RUST_BACKTRACE");
    cmd
}

/// Bytes as text, lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Everything a command printed: stdout, then stderr.
pub fn said(out: &Output) -> String {
    text(&out.stdout) + &text(&out.stderr)
}

/// `p` as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Asserts a clean failure: exit code 1 (no death by a signal), exactly one stderr line
/// besides `alert: ` lines, starting with `error: ` and containing every one of `needles`,
/// and no sign of a panic. Returns that line.
#[track_caller]
pub fn assert_fails(out: &Output, needles: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panicked:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "expected exit code 1 ({:?}); stderr:\n{stderr}", out.status);
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("alert: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    let line = errors[0];
    assert!(line.starts_with("error: "), "stderr does not start with `error: `: {line}");
    for needle in needles {
        assert!(line.contains(needle), "stderr does not name {needle:?}: {line}");
    }
    line.to_string()
}

/// Asserts exit code 0, showing both streams otherwise; returns stderr.
#[track_caller]
pub fn assert_succeeds(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stderr)
}

/// The `--set` values of a tiny CPU run named `name` under `out_dir` that trains in well
/// under a second: 1 layer, 16 wide, sequences of 16, batch 2, `max_steps` steps, one
/// validation batch, no telemetry sampling.
pub fn tiny_sets(out_dir: &Path, name: &str, max_steps: u64) -> Vec<String> {
    vec![
        "model.n_layer=1".into(),
        "model.n_embd=16".into(),
        "model.n_head=2".into(),
        "model.context_length=16".into(),
        "train.seq_len=16".into(),
        "train.batch_size=2".into(),
        format!("train.max_steps={max_steps}"),
        "train.eval_batches=1".into(),
        "run.device=cpu".into(),
        "logs.telemetry_interval_ms=0".into(),
        format!("run.name={name}"),
        // A TOML literal string, so the path is taken as written.
        format!("run.out_dir='{}'", out_dir.display()),
    ]
}

/// `sets` as command-line arguments: `--set a --set b ...`.
pub fn set_args(sets: &[String]) -> Vec<String> {
    sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]).collect()
}

/// `engine train <shipped config> --quiet <tiny run `name` of max_steps> <extra...>` in
/// `dir`; the run directory is `dir/name`.
pub fn train_tiny(dir: &Path, name: &str, max_steps: u64, extra: &[&str]) -> Output {
    let mut args = vec!["train".to_string(), SHIPPED_CONFIG.to_string(), "--quiet".into()];
    args.extend(set_args(&tiny_sets(dir, name, max_steps)));
    args.extend(extra.iter().map(|s| s.to_string()));
    engine_in(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `run/checkpoints/step-NNNNNN`.
pub fn checkpoint_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:06}"))
}

/// Writes `body` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    path
}

/// Every file under `dir` with its bytes, sorted by path: equal snapshots before and after a
/// refused command show it wrote nothing.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.clone(), fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Every line of `file` parsed as JSON (panics naming a line that does not parse, or a last
/// line without its newline: a torn write).
#[track_caller]
pub fn json_lines(file: &Path) -> Vec<serde_json::Value> {
    let body = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(body.is_empty() || body.ends_with('\n'), "{} does not end with a newline", file.display());
    body.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{} line {}: {e}: {l}", file.display(), i + 1)))
        .collect()
}

/// An llm.c shard written by hand, as llm.c's `write_datafile` does (independently of
/// `datasets::shard`): 256 int32 little-endian header words (magic 20240520, version 1, the
/// token count, the rest zero), then the tokens as uint16 little-endian.
pub fn llmc_shard(path: &Path, tokens: &[u32]) {
    let mut bytes = Vec::with_capacity(1024 + 2 * tokens.len());
    let mut header = [0i32; 256];
    header[0] = 20240520;
    header[1] = 1;
    header[2] = tokens.len() as i32;
    for h in header {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    for &t in tokens {
        bytes.extend_from_slice(&u16::try_from(t).unwrap().to_le_bytes());
    }
    fs::write(path, bytes).unwrap();
}
