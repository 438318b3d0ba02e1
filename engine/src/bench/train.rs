//! The `train` suite: whole training runs of preset configs, one per recomputation policy,
//! through the same trainer `engine train` uses (logs on, as a user runs it). Per run, from
//! its summary (steps after the warm-up): tokens/s, MFU (when the device's peak is known),
//! step time and its split (data wait, forward, backward, optimizer), the pool's peak
//! memory.

use std::path::Path;

use super::{BenchOptions, Better, Entry, Results, Workload};
use crate::config::Config;
use crate::train::{train, TrainOptions};
use crate::{Error, Result};

/// The default config (the one the README trains), embedded so `engine bench` runs from
/// anywhere.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/shakespeare-char.toml");

/// Steps per run and the warm-up left out of the statistics: (steps, warm-up).
fn steps(quick: bool) -> (u64, u64) {
    if quick {
        (6, 2)
    } else {
        (40, 5)
    }
}

/// The configs to run, by name: `--config` files (`None`: the embedded default).
fn configs(options: &BenchOptions) -> Vec<(String, Option<&Path>)> {
    if options.configs.is_empty() {
        return vec![("shakespeare-char".into(), None)];
    }
    options.configs.iter().map(|path| (path.file_stem().map_or("config".into(), |s| s.to_string_lossy().into_owned()), Some(path.as_path()))).collect()
}

/// The config at `path` (`None`: the embedded default) with `sets` applied.
fn load(path: Option<&Path>, sets: &[String], registry: &crate::registry::Registry) -> Result<Config> {
    match path {
        Some(path) => Config::load_in(path, sets, registry),
        None => Config::parse_in(DEFAULT_CONFIG, "configs/shakespeare-char.toml (embedded)", sets, registry),
    }
}

/// What a training run was, beyond its config.
pub struct RunShape<'a> {
    /// The tokenizer's vocabulary the model was built for (without padding).
    pub vocab_size: usize,
    /// Sequences per micro-batch the run ended with.
    pub micro_batch: usize,
    /// Micro-batches per step the run ended with.
    pub grad_accum: usize,
    /// The recomputation policy, as in `train.recompute` ("none", "selective", "full").
    pub recompute: &'a str,
    /// The precision trained in ("fp32", "bf16").
    pub precision: &'a str,
    /// Steps run, and the first ones left out of the statistics.
    pub steps: u64,
    /// Steps at the start left out of the statistics (`logs.warmup_steps`).
    pub warmup: u64,
}

/// The settings that define a training workload (the same keys benches/reference writes).
pub fn workload_settings(config: &Config, run: &RunShape<'_>) -> serde_json::Value {
    let t = &config.train;
    let RunShape { vocab_size, micro_batch, grad_accum, recompute, precision, steps, warmup } = *run;
    // The model's settings as configs write them, with the vocabulary; a kind other than
    // GPT-2 is named (GPT-2 workloads keep the keys benches/reference writes).
    let mut model = serde_json::to_value(&config.model.settings).expect("settings are JSON");
    model["vocab_size"] = vocab_size.into();
    if config.model.kind != crate::registry::DEFAULT_KIND {
        model["kind"] = config.model.kind.clone().into();
    }
    serde_json::json!({
        "suite": "train",
        "model": model,
        "seq_len": t.seq_len,
        "micro_batch": micro_batch,
        "grad_accum": grad_accum,
        "recompute": recompute,
        "precision": precision,
        "data": {"path": config.data.path.as_ref().map(|p| p.display().to_string()), "tokenizer": config.data.tokenizer},
        "optimizer": {"lr": t.lr, "min_lr": t.min_lr, "warmup_steps": t.warmup_steps, "beta1": t.beta1, "beta2": t.beta2, "eps": t.eps, "weight_decay": t.weight_decay, "grad_clip": t.grad_clip},
        "seed": config.run.seed,
        "steps": steps,
        "warmup": warmup,
    })
}

/// The `train` suite: each config (`options.configs`, or [`DEFAULT_CONFIG`]) trained under
/// each recomputation policy (only "none" with `quick`) in a scratch directory, giving
/// entries `train/<config>/<policy>/<metric>` from the run's summary.json statistics (median
/// = p50) and the pool's `peak_memory`. A bad config fails before anything trains.
pub fn run(results: &mut Results, options: &BenchOptions) -> Result<()> {
    let (steps, warmup) = steps(options.quick);
    let policies: &[&str] = if options.quick { &["none"] } else { &["none", "selective", "full"] };
    let scratch = tempdir()?;
    // A bad config or --set fails here, before anything trains.
    for (_, path) in configs(options) {
        load(path, &options.overrides, &options.registry)?;
    }
    for (stem, path) in configs(options) {
        for policy in policies {
            let mut sets = options.overrides.clone();
            sets.extend([
                format!("run.out_dir={}", scratch.display()),
                format!("run.name={stem}-{policy}"),
                format!("run.device={}", options.device),
                format!("train.max_steps={steps}"),
                "train.eval_interval=0".into(),
                "train.checkpoint_interval=0".into(),
                format!("train.recompute={policy}"),
                format!("logs.warmup_steps={warmup}"),
            ]);
            let config = load(path, &sets, &options.registry)?;
            if !options.quiet {
                eprintln!("bench train: {stem}, recompute {policy}, {steps} steps");
            }
            let s = train(&config, &TrainOptions { quiet: true, ..Default::default() })?;
            let perf = s.perf.as_ref().ok_or_else(|| Error::Usage("the train suite needs logs.enabled = true".into()))?;
            let vocab = crate::checkpoint::read_state(&s.checkpoint, &config.registry).map(|(state, _)| state.vocab_size).unwrap_or(0);
            let settings = workload_settings(
                &config,
                &RunShape {
                    vocab_size: vocab,
                    micro_batch: s.final_plan.micro_batch,
                    grad_accum: s.final_plan.grad_accum,
                    recompute: policy,
                    precision: &perf.precision,
                    steps,
                    warmup,
                },
            );
            let hash = results.workload(Workload { config_hash: Some(super::short_sha256(config.to_toml().as_bytes())), ..Workload::new(settings) });
            let name = |metric: &str| format!("train/{stem}/{policy}/{metric}");
            for (metric, unit, better) in [
                ("tokens_per_s", "tokens/s", Better::Higher),
                ("mfu", "fraction", Better::Higher),
                ("step_ms", "ms", Better::Lower),
                ("data_wait_ms", "ms", Better::Lower),
                ("forward_ms", "ms", Better::Lower),
                ("backward_ms", "ms", Better::Lower),
                ("optimizer_ms", "ms", Better::Lower),
            ] {
                if let Some(st) = perf.metrics.get(metric) {
                    results.entries.push(Entry {
                        name: name(metric),
                        unit: unit.into(),
                        better,
                        median: st.p50,
                        min: st.min,
                        max: st.max,
                        samples: st.count,
                        workload: hash.clone(),
                    });
                }
            }
            let peak = s.memory.peak as f64;
            results.push(Entry::from_values(name("peak_memory"), "bytes", Better::Lower, &hash, &[peak]));
        }
    }
    std::fs::remove_dir_all(&scratch).ok();
    Ok(())
}

/// A fresh scratch directory under the system's temp dir.
pub(super) fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("engine-bench-{}-{}", std::process::id(), super::env::now_rfc3339().replace(':', "")));
    std::fs::create_dir_all(&dir).map_err(crate::error::io(Path::new(&dir)))?;
    Ok(dir)
}
