//! `engine bench`: a results file validates against docs/schemas/bench.schema.json and
//! carries the environment; `compare` prints the expected ratios of two known files; bad
//! input (an unknown suite, a missing or malformed results file, results of different
//! configs) is one clear error line.

use std::path::Path;
use std::process::Output;

use engine::bench::hash_settings;
use serde_json::{json, Value};
use tempfile::TempDir;

mod common;

use common::{assert_fails, command_in, text};

/// `engine args...` in the current directory.
fn engine(args: &[&str]) -> Output {
    command_in(Path::new("."), args).output().expect("the engine binary runs")
}

fn schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas/bench.schema.json");
    jsonschema::validator_for(&serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()).unwrap()
}

#[track_caller]
fn validate(value: &Value) {
    let errors: Vec<String> = schema().iter_errors(value).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "results do not match docs/schemas/bench.schema.json: {errors:?}");
}

fn entry<'a>(results: &'a Value, name: &str) -> &'a Value {
    results["entries"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no entry {name}"))
}

#[test]
fn quick_train_and_loader_runs_write_valid_results_with_the_environment() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("train.json");
    let run = engine(&["bench", "train", "--quick", "--quiet", "--device", "cpu", "--out", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("train/shakespeare-char/none/tokens_per_s | "), "{}", text(&run.stdout));
    let results: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    validate(&results);
    let env = &results["environment"];
    assert_eq!((env["device"].as_str(), env["gpu"].is_null()), (Some("cpu"), true));
    assert!(env["cpu"]["logical_cores"].as_u64() >= Some(1) && env["host_memory"].as_u64() > Some(0) && !env["os"].as_str().unwrap().is_empty());
    let commit = env["git_commit"].as_str().unwrap();
    assert!(commit == "unknown" || commit.len() == 40, "{commit}");
    // 6 steps, 2 of warm-up: statistics over 4; tokens/s and step time describe the same steps.
    let tps = entry(&results, "train/shakespeare-char/none/tokens_per_s");
    let ms = entry(&results, "train/shakespeare-char/none/step_ms");
    assert_eq!((tps["samples"].as_u64(), ms["samples"].as_u64()), (Some(4), Some(4)));
    let implied = 4096.0 / (tps["median"].as_f64().unwrap() / 1e3);
    assert!((implied / ms["median"].as_f64().unwrap() - 1.0).abs() < 0.1, "{implied} ms vs {ms}");
    assert!(tps["min"].as_f64() <= tps["median"].as_f64() && tps["median"].as_f64() <= tps["max"].as_f64());
    // The workload records the settings that decide comparability, under their hash.
    let workload = &results["workloads"][tps["workload"].as_str().unwrap()];
    assert_eq!(workload["hash"].as_str().map(String::from), Some(hash_settings(&workload["settings"])));
    let s = &workload["settings"];
    assert!(workload["config_hash"].as_str().is_some_and(|h| h.len() == 16), "{workload}");
    assert_eq!((s["model"]["n_layer"].as_u64(), s["seq_len"].as_u64(), s["precision"].as_str(), s["steps"].as_u64()), (Some(4), Some(128), Some("fp32"), Some(6)));

    let out = dir.path().join("loader.json");
    let run = engine(&["bench", "loader", "--quick", "--quiet", "--out", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let results: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    validate(&results);
    let rate = entry(&results, "loader/workers=1/tokens_per_s");
    assert!(rate["median"].as_f64() > Some(1e5) && rate["samples"].as_u64() == Some(2), "{rate}");
}

/// A results file holding `entries` (name, unit, better, median) of one workload.
fn results_file(dir: &Path, name: &str, settings: Value, entries: &[(&str, &str, &str, f64)]) -> String {
    let hash = hash_settings(&settings);
    let entries: Vec<Value> = entries
        .iter()
        .map(|(n, unit, better, median)| json!({"name": n, "unit": unit, "better": better, "median": median, "min": median, "max": median, "samples": 5, "workload": hash}))
        .collect();
    let value = json!({
        "format": "engine-bench/1", "suite": "train", "implementation": name, "created": "2026-12-01T00:00:00Z",
        "environment": {"engine_version": "0.1.0", "git_commit": "unknown", "git_dirty": null, "device": "cpu", "gpu": null,
            "cpu": {"model": "test", "logical_cores": 2, "physical_cores": 1}, "host_memory": 1, "os": "linux", "cpu_threads": 2},
        "workloads": {hash.clone(): {"hash": hash, "settings": settings}},
        "entries": entries,
    });
    validate(&value);
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

fn settings(seq_len: u64) -> Value {
    json!({"suite": "train", "seq_len": seq_len, "model": {"n_layer": 2}, "precision": "bf16"})
}

#[test]
fn compare_prints_the_ratio_of_every_entry_both_contain() {
    let dir = TempDir::new().unwrap();
    let a = results_file(
        dir.path(),
        "a",
        settings(128),
        &[("train/x/none/tokens_per_s", "tokens/s", "higher", 1000.0), ("train/x/none/step_ms", "ms", "lower", 100.0), ("train/x/none/mfu", "fraction", "higher", 0.4)],
    );
    let b = results_file(dir.path(), "b", settings(128), &[("train/x/none/tokens_per_s", "tokens/s", "higher", 1500.0), ("train/x/none/step_ms", "ms", "lower", 80.0)]);
    let out = engine(&["bench", "compare", &a, &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("| train/x/none/tokens_per_s | tokens/s | 1000 | 1500 | 1.500 | 1.50x better |"), "{stdout}");
    assert!(stdout.contains("| train/x/none/step_ms | ms | 100.000 | 80.000 | 0.800 | 1.25x better |"), "{stdout}");
    assert!(stdout.contains("only in A: train/x/none/mfu; only in B: none"), "{stdout}");
    // The other way round: B's numbers are A's, the verdicts turn.
    let stdout = text(&engine(&["bench", "compare", &b, &a]).stdout);
    assert!(stdout.contains("| train/x/none/tokens_per_s | tokens/s | 1500 | 1000 | 0.667 | 1.50x worse |"), "{stdout}");
}

#[test]
fn bad_bench_input_is_one_clear_error() {
    let dir = TempDir::new().unwrap();
    assert_fails(&engine(&["bench", "kernel"]), &["unknown bench suite \"kernel\"", "kernels, loader, train, all", "compare"]);
    assert_fails(&engine(&["bench", "train", "x.json"]), &["takes no file arguments", "--out"]);
    let a = results_file(dir.path(), "a", settings(128), &[("train/x/none/step_ms", "ms", "lower", 100.0)]);
    assert_fails(&engine(&["bench", "compare", &a]), &["two results files", "got 1"]);
    let missing = dir.path().join("missing.json");
    assert_fails(&engine(&["bench", "compare", &a, missing.to_str().unwrap()]), &["cannot read results file", "missing.json"]);
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{ not json").unwrap();
    assert_fails(&engine(&["bench", "compare", &a, garbage.to_str().unwrap()]), &["garbage.json is not a results file: not JSON (line 1"]);
    let other = dir.path().join("other.json");
    std::fs::write(&other, r#"{"format": "something-else/3", "entries": []}"#).unwrap();
    assert_fails(&engine(&["bench", "compare", &a, other.to_str().unwrap()]), &["other.json is not a results file of this engine", "\"something-else/3\"", "engine-bench/1"]);
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"format": "engine-bench/1", "suite": "train"}"#).unwrap();
    assert_fails(&engine(&["bench", "compare", &a, broken.to_str().unwrap()]), &["broken.json", "missing field"]);
    // Results of another config: the settings that differ are named.
    let b = results_file(dir.path(), "b", settings(256), &[("train/x/none/step_ms", "ms", "lower", 90.0)]);
    assert_fails(&engine(&["bench", "compare", &a, &b]), &["measured different workloads", "train/x/none/step_ms", "seq_len: 128 -> 256"]);
    // Nothing in common.
    let c = results_file(dir.path(), "c", settings(128), &[("loader/workers=1/tokens_per_s", "tokens/s", "higher", 1e6)]);
    assert_fails(&engine(&["bench", "compare", &a, &c]), &["no entry in common"]);
}
