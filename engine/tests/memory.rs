//! `memory.budget` end to end: the budget string is checked with the config (naming the key),
//! a budget too small for the run ends it with exit code 1 and one `error:` line giving the
//! numbers (never a panic), and a run that fits reports the pool's statistics.

use std::path::Path;
use std::process::{Command, Output};

use engine::config::Config;
use engine::kernels::memory::Budget;
use tempfile::TempDir;

mod common;

use common::{assert_fails, engine_in, train_tiny, ENGINE, SHIPPED_CONFIG};

/// `engine train <shipped config> --quiet` with a tiny model, 2 steps, and `extra` `--set`s.
fn train(dir: &Path, extra: &[&str]) -> Output {
    let args: Vec<&str> = extra.iter().flat_map(|s| ["--set", s]).collect();
    train_tiny(dir, "tiny", 2, &args)
}

#[test]
fn budget_key_parses_and_defaults_to_unlimited() {
    let c = Config::parse("", "c.toml", &[]).unwrap();
    assert_eq!(c.memory_budget(), Ok(None));
    let c = Config::parse("[memory]\nbudget = \"20GiB\"\n", "c.toml", &[]).unwrap();
    assert_eq!(c.memory_budget(), Ok(Some(Budget::Bytes(20 << 30))));
    let c = Config::parse("", "c.toml", &["memory.budget=90%".into()]).unwrap();
    assert_eq!(c.memory_budget(), Ok(Some(Budget::Percent(90.0))));
}

#[test]
fn malformed_budget_names_the_key_the_value_and_the_forms() {
    for (bad, needle) in [("lots", "\"20GiB\""), ("20 GiBs", "\"90%\""), ("150%", "at most 100%"), ("0", "at least 1 byte")] {
        let err = Config::parse(&format!("[memory]\nbudget = \"{bad}\"\n"), "c.toml", &[]).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("memory.budget") && err.contains(&format!("\"{bad}\"")) && err.contains(needle), "{bad}: {err}");
    }
    let err = Config::parse("[memory]\nbudjet = \"1GiB\"\n", "c.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("unknown field `budjet`"), "{err}");
}

#[test]
fn malformed_budget_on_the_command_line_fails_cleanly() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), &["memory.budget=lots"]);
    assert_fails(&out, &["memory.budget", "\"lots\"", "\"20GiB\""]);
}

#[test]
fn too_small_budget_fails_with_the_numbers_not_a_panic() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), &["memory.budget=64KiB"]);
    // train.batch_size = 2 is fixed by the --set; the planner measures and refuses.
    let line = assert_fails(&out, &["memory.budget = \"64KiB\" (64.00 KiB) is too small", "micro-batch 2", "with full recomputation needs ", "raise memory.budget to at least "]);
    assert!(!dir.path().join("tiny").join("checkpoints").exists(), "nothing trained: {line}");
}

#[test]
fn a_run_within_its_budget_reports_the_pool() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), &["memory.budget=256MiB"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().last().unwrap_or_default();
    assert!(line.contains("memory peak ") && line.contains("reserved ") && line.contains("cache hit rate "), "{line}");
    // two steps of the same shapes: the second is served from the cache
    let rate: f64 = line.split("cache hit rate ").nth(1).and_then(|r| r.split('%').next()).and_then(|r| r.parse().ok()).unwrap();
    assert!(rate > 30.0, "{line}");
}

/// `engine plan <shipped config> --set ...`, with the tiny model and no training.
fn plan(dir: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["plan".into(), SHIPPED_CONFIG.into()];
    let sets = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.context_length=32", "train.seq_len=32", "run.device=cpu"];
    for s in sets.iter().chain(extra) {
        args.extend(["--set".into(), s.to_string()]);
    }
    engine_in(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A 2 x 32 model at T = 32, 64 sequences per step, `budget`: micro-batch and policy free.
fn free_config(budget: &str) -> String {
    format!(
        "[run]\ndevice = \"cpu\"\n[model]\nn_layer = 2\nn_embd = 32\nn_head = 2\ncontext_length = 32\n[train]\nseq_len = 32\n\
         [batch]\ntokens_per_step = 2048\n[memory]\nbudget = \"{budget}\"\n"
    )
}

#[test]
fn engine_plan_prints_the_table_and_trains_nothing() {
    let dir = TempDir::new().unwrap();
    // The shipped config fixes train.batch_size = 32; a global batch in tokens frees it.
    let out = plan(dir.path(), &["memory.budget=64MiB", "batch.tokens_per_step=2048", "train.batch_size=8"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("memory plan (planner): budget 64.00 MiB; 64 sequences x 32 tokens per step"), "{stdout}");
    assert!(stdout.contains("policy") && stdout.contains("predicted") && stdout.contains("measured") && stdout.contains("headroom"), "{stdout}");
    assert!(stdout.contains("micro-batch 8 x 8 accumulation = 64 sequences per step"), "{stdout}");
    assert!(!dir.path().join("runs").exists(), "engine plan wrote a run directory");

    // Micro-batch and policy both free (the shipped config gives train.batch_size: a config
    // of our own), as JSON.
    let config = dir.path().join("free.toml");
    std::fs::write(&config, free_config("4MiB")).unwrap();
    let out = Command::new(ENGINE).args(["plan", config.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (micro, accum) = (v["micro_batch"].as_u64().unwrap(), v["grad_accum"].as_u64().unwrap());
    assert_eq!(micro * accum, 64, "{v}");
    assert!(v["measured_peak"].as_u64().unwrap() <= 4 << 20, "{v}");
    assert_eq!(v["source"], "planner");
    assert_eq!(v["rows"].as_array().unwrap().len(), 3, "none, selective, full for 2 layers: {v}");
}

#[test]
fn engine_plan_without_a_budget_says_so() {
    let dir = TempDir::new().unwrap();
    let out = plan(dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("memory.budget is unset") && stdout.contains("micro-batch 32 x 1 accumulation, recompute none"), "{stdout}");
}

#[test]
fn a_budget_below_micro_batch_1_with_full_recomputation_names_the_numbers() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("free.toml");
    std::fs::write(&config, free_config("100KiB")).unwrap();
    for command in ["plan", "train"] {
        let out = engine_in(dir.path(), &[command, config.to_str().unwrap()]);
        let line = assert_fails(&out, &["memory.budget = \"100KiB\" (100.00 KiB) is too small", "even micro-batch 1 with full recomputation needs ", "raise memory.budget to at least "]);
        assert!(!line.contains("unset train.batch_size"), "nothing was fixed: {line}");
    }
    assert!(!dir.path().join("runs").exists());
}
