//! The performance logs of a short CPU run: `metrics.jsonl` has one line per step with every
//! documented field and type, `summary.json` summarizes them (warm-up left out), MFU is
//! absent on the CPU unless `logs.peak_tflops` gives a rate, and bad values name the key.

use engine::config::Config;
use engine::train::{train, TrainOptions};
use serde_json::Value;
use tempfile::TempDir;

/// The CPU memory pool (and its budget) is one per process: runs here take turns, so one
/// run's `memory.budget` is not reset by another starting meanwhile.
static POOL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(dir: &TempDir, sets: &[&str]) -> engine::train::TrainSummary {
    let toml = format!(
        r#"
[run]
name = "logs"
out_dir = '{}'
device = "cpu"
[model]
n_layer = 1
n_head = 2
n_embd = 32
context_length = 32
[train]
batch_size = 4
grad_accum = 2
seq_len = 32
max_steps = 5
eval_interval = 2
eval_batches = 1
"#,
        dir.path().display()
    );
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let config = Config::parse(&toml, "logs.toml", &sets).unwrap();
    train(&config, &TrainOptions { quiet: true, ..Default::default() }).unwrap()
}

/// The documented schema `docs/schemas/<name>.schema.json`.
fn schema(name: &str) -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas").join(format!("{name}.schema.json"));
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&value).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[track_caller]
fn validate(validator: &jsonschema::Validator, what: &str, value: &Value) {
    let errors: Vec<String> = validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{what} does not match its documented schema: {errors:?}\n{value}");
}

/// Each line of the run directory's `file` as JSON, checked against `schema`.
fn lines_of(run_dir: &std::path::Path, file: &str, schema_name: &str) -> Vec<Value> {
    let validator = schema(schema_name);
    let text = std::fs::read_to_string(run_dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{file} line {}: {e}", i + 1));
            validate(&validator, &format!("{file} line {}", i + 1), &v);
            v
        })
        .collect()
}

#[test]
fn a_short_run_writes_metrics_jsonl_and_summary_json() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    let s = run(&dir, &[]);
    // Every file of the run directory is there, every JSON line matches its schema.
    for file in ["config.toml", "plan.json", "metrics.log", "metrics.jsonl", "events.jsonl", "telemetry.jsonl", "summary.json"] {
        assert!(s.run_dir.join(file).is_file(), "no {file} in {}", s.run_dir.display());
    }
    let lines = lines_of(&s.run_dir, "metrics.jsonl", "metrics");
    assert_eq!(lines.len(), 5);
    let events = lines_of(&s.run_dir, "events.jsonl", "events");
    let checkpoints: Vec<u64> = events.iter().filter(|e| e["event"] == "checkpoint").map(|e| e["checkpoint"]["step"].as_u64().unwrap()).collect();
    assert_eq!(checkpoints, [5], "{events:?}");
    let telemetry = lines_of(&s.run_dir, "telemetry.jsonl", "telemetry");
    assert!(!telemetry.is_empty(), "telemetry samples at the start of the run");
    assert!(telemetry.iter().all(|t| t["gpu"].is_null() && t["host"]["rss"].as_u64() > Some(1 << 20)), "{telemetry:?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["step"].as_u64(), Some(i as u64 + 1));
        assert_eq!(line["tokens"].as_u64(), Some(4 * 2 * 32));
        assert_eq!((line["micro_batch"].as_u64(), line["grad_accum"].as_u64(), line["recompute"].as_str()), (Some(4), Some(2), Some("none")));
        assert!(line["mfu"].is_null(), "no MFU on the CPU without logs.peak_tflops: {line}");
        assert_eq!(line["loss"].as_f64().unwrap() as f32, s.losses[i].1, "the same loss as the trainer's");
        let parts = line["data_wait_ms"].as_f64().unwrap() + line["forward_ms"].as_f64().unwrap() + line["backward_ms"].as_f64().unwrap() + line["optimizer_ms"].as_f64().unwrap();
        assert!(parts <= line["step_ms"].as_f64().unwrap() * 1.0001 + 1e-3, "the split exceeds the step: {line}");
        assert!(line["memory"]["peak"].as_u64() >= line["memory"]["in_use"].as_u64() && line["memory"]["in_use"].as_u64() > Some(0));
        // validation at steps 2, 4 and the last
        assert_eq!(line["val_loss"].is_number(), [2, 4, 5].contains(&(i + 1)), "{line}");
    }

    let summary: Value = serde_json::from_str(&std::fs::read_to_string(s.run_dir.join("summary.json")).unwrap()).unwrap();
    validate(&schema("summary"), "summary.json", &summary);
    let cost = &summary["logging"];
    assert_eq!(cost["telemetry_samples"].as_u64(), Some(telemetry.len() as u64), "{cost}");
    assert!(cost["step_logging_ms"].as_f64() > Some(0.0) && cost["telemetry_ms"].as_f64() > Some(0.0), "{cost}");
    let train_ms = summary["train_seconds"].as_f64().unwrap() * 1e3;
    let share = (cost["step_logging_ms"].as_f64().unwrap() + cost["telemetry_ms"].as_f64().unwrap()) / train_ms;
    assert!((cost["share_of_step_time"].as_f64().unwrap() - share).abs() < 1e-12, "{cost}");
    assert_eq!((summary["steps"].as_u64(), summary["warmup_steps_excluded"].as_u64(), summary["tokens"].as_u64()), (Some(5), Some(2), Some(5 * 256)));
    assert_eq!(summary["final_val_loss"].as_f64().map(|v| v as f32), s.val_losses.last().map(|v| v.1));
    assert!(summary["peak_tflops"].is_null() && summary["peak_tflops_source"].as_str().unwrap().starts_with("unknown: cpu"), "{summary}");
    // step_ms statistics are those of steps 3..=5 of metrics.jsonl, computed here by hand.
    let ms: Vec<f64> = lines[2..].iter().map(|l| l["step_ms"].as_f64().unwrap()).collect();
    let stats = &summary["metrics"]["step_ms"];
    let mean = ms.iter().sum::<f64>() / 3.0;
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(stats["count"].as_u64(), Some(3));
    assert!((stats["mean"].as_f64().unwrap() - mean).abs() < 1e-9 && stats["min"].as_f64() == Some(sorted[0]) && stats["max"].as_f64() == Some(sorted[2]), "{stats}");
    assert_eq!(stats["p50"].as_f64(), Some(sorted[1]));
    for key in ["loss", "grad_norm", "tokens_per_s", "step_ms", "data_wait_ms", "forward_ms", "backward_ms", "optimizer_ms", "memory_in_use", "memory_peak"] {
        for stat in ["count", "mean", "min", "max", "std", "p50", "p95"] {
            assert!(summary["metrics"][key][stat].is_number(), "summary.metrics.{key}.{stat}: {summary}");
        }
    }
    assert!(summary["metrics"].get("mfu").is_none());
}

#[test]
fn mfu_from_an_explicit_peak_rate() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    let s = run(&dir, &["logs.peak_tflops=0.5", "train.max_steps=2"]);
    let text = std::fs::read_to_string(s.run_dir.join("metrics.jsonl")).unwrap();
    // flops per token = 6N + 6LCT for this model
    let n = {
        let m = engine::checkpoint::load_model(&s.checkpoint, engine::kernels::Device::Cpu, engine::models::Precision::Fp32, &Default::default()).unwrap().model;
        m.num_params() as f64
    };
    let flops = 6.0 * n + 6.0 * 1.0 * 32.0 * 32.0;
    for line in text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()) {
        let expected = flops * line["tokens_per_s"].as_f64().unwrap() / 0.5e12;
        assert!((line["mfu"].as_f64().unwrap() - expected).abs() <= 1e-9 * expected, "{line}");
    }
    let summary = s.perf.unwrap();
    assert_eq!((summary.peak_tflops, summary.peak_tflops_source.as_str()), (Some(0.5), "logs.peak_tflops"));
}

#[test]
fn bad_log_settings_name_the_key() {
    for bad in ["logs.peak_tflops=0", "logs.peak_tflops=-3.0", "logs.peak_tflops=nan"] {
        let err = Config::parse("", "l.toml", &[bad.to_string()]).unwrap_err().to_string();
        assert!(err.contains("key `logs.peak_tflops`") && err.contains("finite number > 0"), "{bad}: {err}");
    }
    for (bad, key) in [("logs.alert_data_stall=1.5", "logs.alert_data_stall"), ("logs.alert_memory=0", "logs.alert_memory"), ("logs.alert_loss_spike=0.5", "logs.alert_loss_spike")] {
        let err = Config::parse("", "l.toml", &[bad.to_string()]).unwrap_err().to_string();
        assert!(err.contains(&format!("key `{key}`: expected")), "{bad}: {err}");
    }
    let err = Config::parse("[logs]\nwarmup = 3\n", "l.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("unknown field `warmup`"), "{err}");
}

fn events(s: &engine::train::TrainSummary) -> Vec<Value> {
    lines_of(&s.run_dir, "events.jsonl", "events")
}

#[test]
fn memory_near_the_budget_raises_one_alert_in_events_and_summary() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    // Any run's peak is above 1% of 16 MiB (163 KiB): the alert is raised at step 1, once.
    let s = run(&dir, &["memory.budget=16MiB", "logs.alert_memory=0.01", "train.max_steps=3"]);
    let alerts: Vec<Value> = events(&s).into_iter().filter(|e| e["event"] == "alert").map(|e| e["alert"].clone()).collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((alerts[0]["kind"].as_str(), alerts[0]["step"].as_u64(), alerts[0]["threshold"].as_f64()), (Some("memory_near_budget"), Some(1), Some(0.01)));
    assert!(alerts[0]["message"].as_str().unwrap().contains("of 16.00 MiB"), "{alerts:?}");
    let perf = s.perf.unwrap();
    assert_eq!(perf.alerts.len(), 1);
    assert_eq!(perf.alerts[0].kind, "memory_near_budget");
    // summary.json's alerts are events.jsonl's, each matching the alert schema.
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(s.run_dir.join("summary.json")).unwrap()).unwrap();
    for alert in summary["alerts"].as_array().unwrap() {
        validate(&schema("events"), "summary.json alert", &serde_json::json!({"event": "alert", "alert": alert}));
    }
    assert_eq!(summary["alerts"][0], alerts[0]);
}

#[test]
fn a_nonfinite_loss_is_an_alert_then_an_error() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    let toml = format!(
        "[run]\nname = \"nan\"\nout_dir = '{}'\ndevice = \"cpu\"\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\ncontext_length = 32\n\
         [train]\nbatch_size = 4\nseq_len = 32\nmax_steps = 10\nlr = 1e38\nmin_lr = 1e38\nwarmup_steps = 0\ngrad_clip = 0.0\neval_batches = 1\n",
        dir.path().display()
    );
    let config = Config::parse(&toml, "nan.toml", &[]).unwrap();
    let err = train(&config, &TrainOptions { quiet: true, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("training diverged at step"), "{err}");
    let text = std::fs::read_to_string(dir.path().join("nan").join("events.jsonl")).unwrap();
    let last = lines_of(&dir.path().join("nan"), "events.jsonl", "events").pop().unwrap();
    // lr 1e38 overflows the first update: the optimizer's guard flags it (nonfinite_update)
    // before any loss is NaN; a NaN loss would be nonfinite_loss.
    assert!(["nonfinite_loss", "nonfinite_update"].contains(&last["alert"]["kind"].as_str().unwrap()), "{text}");
    assert!(last["alert"]["message"].as_str().unwrap().contains("training diverged"), "{text}");
    // The error and the alert name the same step (metrics.log's numbering, from 1).
    let step = last["alert"]["step"].as_u64().unwrap();
    assert!(step >= 1 && err.contains(&format!("diverged at step {step}:")), "alert at step {step}, error: {err}");
}

#[test]
fn logs_off_write_only_metrics_log() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    let s = run(&dir, &["logs.enabled=false", "train.max_steps=3"]);
    for file in ["metrics.jsonl", "telemetry.jsonl", "summary.json"] {
        assert!(!s.run_dir.join(file).exists(), "{file} written with logs.enabled = false");
    }
    let log = std::fs::read_to_string(s.run_dir.join("metrics.log")).unwrap();
    assert_eq!(log.lines().count(), 1 + 3, "{log}");
    assert!(s.perf.is_none());
    // Checkpoints are still recorded.
    assert_eq!(events(&s).len(), 1);
}

#[test]
fn telemetry_off_and_bad_telemetry_settings() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    let s = run(&dir, &["logs.telemetry_interval_ms=0", "train.max_steps=2"]);
    assert!(!s.run_dir.join("telemetry.jsonl").exists() && s.run_dir.join("metrics.jsonl").exists());
    for (bad, key, expected) in [
        ("logs.telemetry_interval_ms=10", "logs.telemetry_interval_ms", "expected 0 (off) or at least 50 (milliseconds), got 10"),
        ("logs.alert_gpu_util=1.5", "logs.alert_gpu_util", "expected 0 (off) or a fraction in (0, 1), got 1.5"),
        ("logs.alert_throttle_samples=-1", "logs.alert_throttle_samples", "invalid value"),
    ] {
        let err = Config::parse("", "l.toml", &[bad.to_string()]).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(expected), "{bad}: {err}");
    }
}
