//! The typed run configuration. Every section rejects unknown keys; every field has a
//! default, so a config names only what it changes. Errors name the file, the key and
//! what was expected.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::registry::{ModelSection, Registry, INIT_FROM_KEY};
use crate::{Error, Result};

/// Configs that would need more memory than this (see [`Config::min_memory_bytes`]) are
/// rejected up front: 1 TiB, far beyond any one device this engine runs on, so a typo such
/// as an extra three zeros gives an error instead of an allocation failure or overflow.
pub const MAX_MEMORY_BYTES: f64 = 1024.0 * GIB;
/// The most loader threads or ring slots (`data.num_workers`, `data.prefetch`) accepted.
pub const MAX_LOADER_SLOTS: usize = 1024;
const GIB: f64 = (1u64 << 30) as f64;

/// A whole run configuration, one field per TOML section (docs/CONFIG.md lists every key).
/// Build it with [`Config::load`] or [`Config::parse`], which check every value.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[run]`: the run directory, seed and device.
    pub run: RunConfig,
    /// `[data]`: what to train on and how batches are loaded.
    pub data: DataConfig,
    /// `[model]`: `kind` (default "gpt2") and that kind's own keys, validated by the kind
    /// ([`crate::registry`]).
    #[serde(skip)]
    pub model: ModelSection,
    /// `[train]`: batch shape, optimizer, schedule, evaluation, checkpoints, precision.
    pub train: TrainConfig,
    /// `[batch]`: the global batch (tokens per optimizer step).
    pub batch: BatchConfig,
    /// `[memory]`: the device pool's budget and the planner's preference.
    pub memory: MemoryConfig,
    /// `[logs]`: the performance logs, telemetry and alert thresholds.
    pub logs: LogsConfig,
    /// Which of the planner's keys the config (or a `--set`) gave explicitly: those are
    /// kept as given, the planner chooses the rest ([`crate::plan`]).
    #[serde(skip)]
    pub explicit: ExplicitKeys,
    /// The model kinds the config was resolved with: checkpoints of the run are read back
    /// with the same kinds.
    #[serde(skip)]
    pub registry: Registry,
}

impl PartialEq for Config {
    /// Equal settings (the registry is not compared).
    fn eq(&self, o: &Self) -> bool {
        (&self.run, &self.data, &self.model, &self.train, &self.batch, &self.memory, &self.logs, self.explicit)
            == (&o.run, &o.data, &o.model, &o.train, &o.batch, &o.memory, &o.logs, o.explicit)
    }
}

/// The keys the memory planner would otherwise choose, as given explicitly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExplicitKeys {
    /// `train.batch_size` was given: the planner keeps the micro-batch.
    pub batch_size: bool,
    /// `train.grad_accum` was given: the micro-batch is the step's sequences / `grad_accum`.
    pub grad_accum: bool,
    /// `train.recompute` was given: the planner keeps the policy.
    pub recompute: bool,
}

/// `[logs]`: the performance logs (crate::logs).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// metrics.jsonl, telemetry.jsonl, alerts, summary.json and report.html; off: only
    /// metrics.log (and events.jsonl's plan changes and checkpoints).
    pub enabled: bool,
    /// Telemetry's sampling interval in milliseconds; 0: no telemetry.
    pub telemetry_interval_ms: u64,
    /// The first steps of each invocation left out of summary.json's statistics.
    pub warmup_steps: u64,
    /// The device's peak bf16 rate in TFLOP/s for MFU; unset: from the table of known GPUs
    /// (unknown devices, and the CPU, get no MFU).
    pub peak_tflops: Option<f64>,
    /// Alert when a step waits for data longer than this fraction of its time.
    pub alert_data_stall: f64,
    /// Alert when the pool's peak exceeds this fraction of memory.budget.
    pub alert_memory: f64,
    /// Alert when a loss exceeds this multiple of the recent median; 0 disables.
    pub alert_loss_spike: f64,
    /// Alert when the GPU's mean utilization over the last 10 telemetry samples is below
    /// this fraction; 0 disables.
    pub alert_gpu_util: f64,
    /// Alert when the GPU's clocks are held down (thermal, power, hardware slowdown) in this
    /// many telemetry samples in a row; 0 disables.
    pub alert_throttle_samples: usize,
    /// TensorBoard event files in `<run_dir>/tb/` (crate::tensorboard): every step's scalars,
    /// the telemetry samples, the resolved config as text. Needs `enabled`. Default off.
    pub tensorboard: bool,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            telemetry_interval_ms: 1000,
            warmup_steps: 2,
            peak_tflops: None,
            alert_data_stall: 0.05,
            alert_memory: 0.95,
            alert_loss_spike: 2.0,
            alert_gpu_util: 0.5,
            alert_throttle_samples: 3,
            tensorboard: false,
        }
    }
}

/// `[batch]`: the global batch, which neither the planner nor a run-time out-of-memory
/// changes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Tokens per optimizer step (a multiple of train.seq_len). Unset: train.batch_size x
    /// train.grad_accum x train.seq_len.
    pub tokens_per_step: Option<usize>,
}

/// `[memory]`: how much memory the run may take on its device.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// The pool's hard budget: an amount ("20GiB", "512MiB") or a percentage of the memory
    /// free when the run starts ("90%": of the GPU's free memory, or of the host's available
    /// memory on the CPU). Unset: unlimited.
    pub budget: Option<String>,
    /// The planner prefers less recomputation as long as the micro-batch it allows still
    /// holds this many tokens (or the whole step); below that, a bigger micro-batch wins.
    pub min_micro_tokens: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { budget: None, min_micro_tokens: 8192 }
    }
}

/// `[run]`: where the run's files go, its seed and its device.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The run directory is `<out_dir>/<name>`.
    pub name: String,
    /// Parent of the run directory; a relative path is relative to the working directory,
    /// not to the config file (default `runs`).
    pub out_dir: PathBuf,
    /// Seeds the weight initialisation and the training windows' order (default 1337).
    pub seed: u64,
    /// "auto" (GPU 0 when one is usable, else the CPU), "cpu", "cuda" (GPU 0) or "cuda:N".
    pub device: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { name: "run".into(), out_dir: "runs".into(), seed: 1337, device: "auto".into() }
    }
}

/// `[data]`: the training text or prepared data set, its tokenizer, and the loader.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A text file, or a directory prepared by `engine prepare` (it holds a
    /// `dataset.json`); absent means the embedded Tiny Shakespeare.
    pub path: Option<PathBuf>,
    /// "byte" (vocab 256) or "gpt2" (GPT-2 BPE, vocab 50257). A prepared directory must
    /// have been tokenized with this tokenizer.
    pub tokenizer: String,
    /// The last fraction of the text held out for validation (text only: a prepared
    /// directory has its own split).
    pub val_fraction: f64,
    /// Threads gathering training batches.
    pub num_workers: usize,
    /// Training batches filled ahead of the step that uses them (slots in the ring).
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { path: None, tokenizer: "byte".into(), val_fraction: 0.1, num_workers: 2, prefetch: 2 }
    }
}

/// `[train]`: the batch shape, optimizer, learning-rate schedule, evaluation, checkpoints,
/// precision and recomputation.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence (T); at most model.context_length.
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps to train to, counted from 0 also when resuming (default 1000).
    pub max_steps: u64,
    /// Peak learning rate, reached after `warmup_steps`, then cosine decay to `min_lr`.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay (`max_steps`); at most `lr`.
    pub min_lr: f64,
    /// Steps of linear warm-up: step s (0-based) uses `lr * (s + 1) / warmup_steps`.
    pub warmup_steps: u64,
    /// AdamW's decoupled weight decay, applied to the matmul weights only unless
    /// `decay_all_params`.
    pub weight_decay: f64,
    /// Also decay biases, LayerNorm parameters and embeddings (off by default).
    pub decay_all_params: bool,
    /// AdamW's first-moment decay, in [0, 1) (default 0.9).
    pub beta1: f64,
    /// AdamW's second-moment decay, in [0, 1) (default 0.95).
    pub beta2: f64,
    /// AdamW's epsilon, > 0 (default 1e-8).
    pub eps: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub grad_clip: f64,
    /// Validation loss every this many steps (and at the end); 0: only at the end.
    pub eval_interval: u64,
    /// Validation batches per evaluation, of `batch_size` windows each.
    pub eval_batches: usize,
    /// HellaSwag accuracies (`hellaswag_acc`, `hellaswag_acc_norm`, ... in metrics.jsonl)
    /// every this many steps and at the end; 0 (the default): never. Needs `hellaswag_data`.
    pub hellaswag_interval: u64,
    /// The HellaSwag file `hellaswag_interval` scores: the official JSONL or llm.c's `.bin`
    /// (read and checked before the run starts).
    pub hellaswag_data: Option<PathBuf>,
    /// Score only the first this many HellaSwag examples; 0 (the default): all of them.
    pub hellaswag_examples: usize,
    /// A progress line every this many steps when stderr is not a terminal (0 acts as 1);
    /// on a GPU also how often the host reads back the loss. metrics.log gets every step.
    pub log_interval: u64,
    /// A checkpoint every this many steps (and at the end); 0: only at the end.
    pub checkpoint_interval: u64,
    /// After each checkpoint, remove the oldest beyond the newest this many (never the one
    /// `checkpoints/latest` names); 0: keep every checkpoint (default).
    pub keep_checkpoints: u64,
    /// With `keep_checkpoints`, also keep the checkpoint of the lowest `val_loss` its
    /// `state.json` records.
    pub keep_best: bool,
    /// "auto" (bf16 on a GPU, fp32 on the CPU), "fp32" or "bf16" (mixed precision: bf16
    /// weight copies and activations, fp32 master weights, gradients and AdamW state; GPU only).
    pub precision: String,
    /// Activation recomputation: "none", "selective" (LayerNorm and GeLU outputs), "full"
    /// (each block keeps only its input) or "full:K" (full on every K-th block).
    pub recompute: String,
    /// What a diverged step (a NaN or infinite loss or gradient norm, or an update that made
    /// a weight non-finite) does: "stop" (the default: the run ends with an error, no
    /// checkpoint is written from the diverged weights, `checkpoints/latest` stays on the
    /// last finite one) or "rollback" (reload the last good checkpoint, skip the data read
    /// since, scale the learning rate by `rollback_lr_factor` and go on; at most
    /// `max_rollbacks` times, each an event in events.jsonl).
    pub on_divergence: String,
    /// Rollbacks a run may take before a divergence stops it (`on_divergence = "rollback"`).
    pub max_rollbacks: u32,
    /// The learning rate is multiplied by this at each rollback, in (0, 1).
    pub rollback_lr_factor: f64,
    /// Skip an update whose loss or gradient norm lies more than this many standard
    /// deviations above the mean of the last 128 steps (llm.c's outlier policy; judged once
    /// 16 steps are known); 0 (the default) turns it off. On a GPU it reads the loss and the
    /// norm back every step (two waits for the device per step).
    pub skip_update_zscore: f64,
    /// Generate a sample of text every this many steps (and at the end) into events.jsonl
    /// and the report; 0 (the default) turns it off. It draws from its own random generator
    /// and changes nothing of training (losses and resumes stay bit-identical).
    pub sample_interval: u64,
    /// The text the samples continue (empty: a newline).
    pub sample_prompt: String,
    /// Tokens per sample, 1 to 4096.
    pub sample_tokens: usize,
}

/// The most tokens `train.sample_tokens` accepts (each sample is one events.jsonl line).
pub const MAX_SAMPLE_TOKENS: usize = 4096;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            seq_len: 128,
            grad_accum: 1,
            max_steps: 1000,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            weight_decay: 0.1,
            decay_all_params: false,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_interval: 250,
            eval_batches: 20,
            hellaswag_interval: 0,
            hellaswag_data: None,
            hellaswag_examples: 0,
            log_interval: 10,
            checkpoint_interval: 0,
            keep_checkpoints: 0,
            keep_best: false,
            precision: "auto".into(),
            recompute: "none".into(),
            on_divergence: "stop".into(),
            max_rollbacks: 3,
            rollback_lr_factor: 0.5,
            skip_update_zscore: 0.0,
            sample_interval: 0,
            sample_prompt: String::new(),
            sample_tokens: 64,
        }
    }
}

impl Config {
    /// Reads `path`, applies `key=value` overrides (values in TOML syntax; a bare word is
    /// taken as a string), then checks every value.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        Self::load_in(path, overrides, &Registry::builtin())
    }

    /// [`Config::load`] with the model kinds of `registry`.
    pub fn load_in(path: &Path, overrides: &[String], registry: &Registry) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.display().to_string(),
            msg: format!("cannot read config: {e}"),
        })?;
        Self::parse_in(&text, &path.display().to_string(), overrides, registry)
    }

    /// Parses config text with the built-in model kinds; `file` names the source in errors.
    pub fn parse(text: &str, file: &str, overrides: &[String]) -> Result<Self> {
        Self::parse_in(text, file, overrides, &Registry::builtin())
    }

    /// Parses config text, `[model]` resolved by `registry`; `file` names the source in
    /// errors, or the `--set` override a wrong value came from.
    pub fn parse_in(text: &str, file: &str, overrides: &[String], registry: &Registry) -> Result<Self> {
        Self::parse_inner(text, file, overrides, registry, true)
    }

    /// A config a run recorded (config.toml, a checkpoint's state): its `[model]` holds every
    /// setting already, so `model.init_from` (where the run started from) is not read again
    /// and may be gone.
    pub fn parse_recorded(text: &str, file: &str, registry: &Registry) -> Result<Self> {
        Self::parse_inner(text, file, &[], registry, false)
    }

    fn parse_inner(text: &str, file: &str, overrides: &[String], registry: &Registry, read_init_from: bool) -> Result<Self> {
        let err = |msg: String| Error::Config { file: file.to_string(), msg };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(toml_message(&e, text)))?;
        for o in overrides {
            apply_override(&mut table, o).map_err(|m| err(format!("--set {o}: {m}")))?;
        }
        // A value that came from --set is named as such, not blamed on the file.
        // (`--set foo.bar=1` is to blame for an unknown section `foo` too.)
        let blame = |key: &str, msg: String| match overrides.iter().rev().find(|o| {
            o.split_once('=').is_some_and(|(k, _)| {
                let k = k.trim();
                !key.is_empty() && (k == key || k.strip_prefix(key).is_some_and(|rest| rest.starts_with('.')))
            })
        }) {
            Some(o) => err(format!("--set {o}: {msg}")),
            None => err(msg),
        };
        let mut model = match table.remove("model") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => return Err(err(format!("key `model`: expected a table ([model]), got {other}"))),
        };
        let init_from = match model.remove(INIT_FROM_KEY) {
            None => None,
            Some(toml::Value::String(dir)) => Some(PathBuf::from(dir)),
            Some(other) => return Err(blame("model.init_from", format!("key `model.init_from`: expected a directory path, got {other}"))),
        };
        let resolved = match &init_from {
            Some(dir) if read_init_from => crate::hf::resolve_init_from(dir, &model, registry),
            _ => registry.resolve(&model),
        };
        let mut model = resolved.map_err(|msg| {
            let key = msg.strip_prefix("key `").and_then(|m| m.split_once('`')).map(|(k, _)| k.to_string()).unwrap_or_default();
            blame(&key, msg)
        })?;
        model.init_from = init_from;
        let given = |key: &str| table.get("train").and_then(|t| t.as_table()).is_some_and(|t| t.contains_key(key));
        let explicit = ExplicitKeys { batch_size: given("batch_size"), grad_accum: given("grad_accum"), recompute: given("recompute") };
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let mut msg = format!("key `{key}`: {}", e.into_inner().message().trim());
            // `[model]` is read apart from the other sections (by its kind), so serde's list of
            // the sections leaves it out.
            if !key.contains('.') {
                msg = msg.replace("expected one of `run`, `data`, ", "expected one of `run`, `data`, `model`, ");
            }
            blame(&key, msg)
        })?;
        config.model = model;
        config.registry = registry.clone();
        config.explicit = explicit;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// The config as TOML, every key written except the planner's keys the config did not
    /// give (train.batch_size, train.grad_accum, train.recompute): those stay free, so the
    /// text parses back to the same config and the same plan (run directory, checkpoints).
    pub fn to_toml(&self) -> String {
        let mut table = toml::Table::try_from(self).expect("config serializes");
        table.insert("model".into(), toml::Value::Table(self.model.to_table()));
        if let Some(train) = table.get_mut("train").and_then(|t| t.as_table_mut()) {
            let e = self.explicit;
            for (key, given) in [("batch_size", e.batch_size), ("grad_accum", e.grad_accum), ("recompute", e.recompute)] {
                if !given {
                    train.remove(key);
                }
            }
        }
        toml::to_string_pretty(&table).expect("config serializes")
    }

    /// Host bytes of the data loader's ring: `data.prefetch` batches of the global batch's
    /// windows (T + 1 tokens of 4 bytes each); an error when the batch size does not resolve.
    pub fn staging_bytes(&self) -> std::result::Result<f64, String> {
        let global = self.global_batch()?;
        Ok(self.data.prefetch as f64 * global as f64 * (self.train.seq_len as f64 + 1.0) * 4.0)
    }

    /// The optimizer's keys are read as f64 but computed with in f32 (on the CPU and on the
    /// GPU): each must survive that conversion, with what it means intact.
    fn check_f32(&self) -> std::result::Result<(), String> {
        let t = &self.train;
        let as_f32 = |key: &str, v: f64, what: &str| -> std::result::Result<f32, String> {
            let x = v as f32;
            if !x.is_finite() {
                return Err(format!("key `{key}`: {v:?} is {what}, but it is used as a 32-bit float, whose largest value is {:e}", f32::MAX));
            }
            Ok(x)
        };
        for (key, v) in [("train.lr", t.lr), ("train.min_lr", t.min_lr), ("train.weight_decay", t.weight_decay), ("train.grad_clip", t.grad_clip)] {
            as_f32(key, v, "finite")?;
        }
        if as_f32("train.lr", t.lr, "finite")? == 0.0 {
            return Err(format!("key `train.lr`: {:?} rounds to 0 as a 32-bit float (the precision it is used in); the smallest is about {:e}", t.lr, f32::from_bits(1)));
        }
        for (key, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if v as f32 >= 1.0 {
                return Err(format!(
                    "key `{key}`: {v:?} rounds to 1 as a 32-bit float (the precision AdamW uses), which divides by zero in the \
                     bias correction; at most {} (the largest f32 below 1)",
                    f32::from_bits(1.0f32.to_bits() - 1)
                ));
            }
        }
        if (t.eps as f32) < f32::MIN_POSITIVE {
            return Err(format!(
                "key `train.eps`: {:?} is below {:e}, the smallest normal 32-bit float (AdamW uses f32, and a GPU flushes smaller values \
                 to 0, dividing by zero where a gradient is 0)",
                t.eps,
                f32::MIN_POSITIVE
            ));
        }
        Ok(())
    }

    /// Impossible values, each named by its key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.train;
        let context = self.model.spec().context_length();
        let positive = [
            ("train.batch_size", t.batch_size),
            ("train.seq_len", t.seq_len),
            ("train.grad_accum", t.grad_accum),
            ("train.eval_batches", t.eval_batches),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("key `{key}`: must be at least 1, got 0"));
            }
        }
        if t.seq_len > context {
            return Err(format!("key `train.seq_len`: {} is larger than the model's context (model.context_length = {context})", t.seq_len));
        }
        let bytes = self.min_memory_bytes();
        if bytes > MAX_MEMORY_BYTES {
            let settings: Vec<String> = self.model.settings.iter().map(|(k, v)| format!("model.{k} = {v}")).collect();
            return Err(format!(
                "too large: {}, train.batch_size = {}, train.seq_len = {} need at least {:.0} GiB, more than the {:.0} GiB this engine accepts",
                settings.join(", "),
                t.batch_size,
                t.seq_len,
                bytes / GIB,
                MAX_MEMORY_BYTES / GIB
            ));
        }
        if t.max_steps == 0 {
            return Err("key `train.max_steps`: must be at least 1, got 0".into());
        }
        if t.keep_best && t.keep_checkpoints == 0 {
            return Err(
                "key `train.keep_best`: true needs train.keep_checkpoints >= 1 (with 0, the default, every checkpoint is kept \
                 anyway); set train.keep_checkpoints or drop train.keep_best"
                    .into(),
            );
        }
        for (key, v) in [("train.lr", t.lr), ("train.min_lr", t.min_lr), ("train.weight_decay", t.weight_decay), ("train.grad_clip", t.grad_clip)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("key `{key}`: must be a finite number >= 0, got {v}"));
            }
        }
        if t.lr == 0.0 {
            return Err("key `train.lr`: must be greater than 0".into());
        }
        if t.min_lr > t.lr {
            return Err(format!("key `train.min_lr`: must not exceed train.lr ({}), got {}", t.lr, t.min_lr));
        }
        for (key, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("key `{key}`: must be in [0, 1), got {v}"));
            }
        }
        if !(t.eps > 0.0) {
            return Err(format!("key `train.eps`: must be greater than 0, got {}", t.eps));
        }
        self.check_f32()?;
        if !["stop", "rollback"].contains(&t.on_divergence.as_str()) {
            return Err(format!("key `train.on_divergence`: expected \"stop\" or \"rollback\", got \"{}\"", t.on_divergence));
        }
        if !(t.rollback_lr_factor > 0.0 && t.rollback_lr_factor < 1.0) {
            return Err(format!("key `train.rollback_lr_factor`: must be in (0, 1), got {}", t.rollback_lr_factor));
        }
        if !(t.skip_update_zscore.is_finite() && t.skip_update_zscore >= 0.0) {
            return Err(format!("key `train.skip_update_zscore`: expected 0 (off) or a number of standard deviations > 0, got {}", t.skip_update_zscore));
        }
        if t.sample_interval > 0 && !(1..=MAX_SAMPLE_TOKENS).contains(&t.sample_tokens) {
            return Err(format!(
                "key `train.sample_tokens`: expected 1 to {MAX_SAMPLE_TOKENS} tokens per sample (train.sample_interval = {}), got {}",
                t.sample_interval, t.sample_tokens
            ));
        }
        if !(self.data.val_fraction > 0.0 && self.data.val_fraction < 1.0) {
            return Err(format!("key `data.val_fraction`: must be in (0, 1), got {}", self.data.val_fraction));
        }
        if !datasets::tokenizer::TOKENIZERS.contains(&self.data.tokenizer.as_str()) {
            return Err(format!("key `data.tokenizer`: expected \"byte\" or \"gpt2\", got \"{}\"", self.data.tokenizer));
        }
        for (key, v) in [("data.num_workers", self.data.num_workers), ("data.prefetch", self.data.prefetch)] {
            if v == 0 {
                return Err(format!("key `{key}`: must be at least 1, got 0"));
            }
            if v > MAX_LOADER_SLOTS {
                return Err(format!("key `{key}`: at most {MAX_LOADER_SLOTS}, got {v}"));
            }
        }
        if kernels::device::DeviceRequest::parse(&self.run.device).is_none() {
            return Err(format!("key `run.device`: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"{}\"", self.run.device));
        }
        if !PRECISIONS.contains(&t.precision.as_str()) {
            return Err(format!("key `train.precision`: expected \"auto\", \"fp32\" or \"bf16\", got \"{}\"", t.precision));
        }
        self.recompute()?;
        self.memory_budget()?;
        let global = self.global_batch()?;
        if global.checked_mul(t.seq_len).is_none_or(|tokens| tokens > u32::MAX as usize) {
            return Err(format!(
                "too large: {global} sequences of train.seq_len = {} tokens per step (train.batch_size x train.grad_accum, or \
                 batch.tokens_per_step) exceed the {} tokens one step may hold",
                t.seq_len,
                u32::MAX
            ));
        }
        if self.staging_bytes()? > MAX_MEMORY_BYTES {
            return Err(format!(
                "key `data.prefetch`: {} batches of {global} x {} tokens need {:.0} GiB of host buffers, more than the {:.0} GiB this engine accepts",
                self.data.prefetch,
                t.seq_len + 1,
                self.staging_bytes()? / GIB,
                MAX_MEMORY_BYTES / GIB
            ));
        }
        if t.eval_batches.checked_mul(t.batch_size).is_none() {
            return Err(format!("keys `train.eval_batches` x `train.batch_size`: {} x {} windows overflow", t.eval_batches, t.batch_size));
        }
        if t.hellaswag_interval > 0 && t.hellaswag_data.is_none() {
            return Err(format!(
                "key `train.hellaswag_interval`: {} needs train.hellaswag_data (the HellaSwag JSONL or llm.c's .bin to score)",
                t.hellaswag_interval
            ));
        }
        if let Some(p) = self.logs.peak_tflops {
            if !(p.is_finite() && p > 0.0) {
                return Err(format!("key `logs.peak_tflops`: must be a finite number > 0 (TFLOP/s), got {p}"));
            }
        }
        let l = &self.logs;
        for (key, v, ok) in [
            ("logs.alert_data_stall", l.alert_data_stall, l.alert_data_stall > 0.0 && l.alert_data_stall < 1.0),
            ("logs.alert_memory", l.alert_memory, l.alert_memory > 0.0 && l.alert_memory <= 1.0),
            ("logs.alert_loss_spike", l.alert_loss_spike, l.alert_loss_spike == 0.0 || l.alert_loss_spike > 1.0),
            ("logs.alert_gpu_util", l.alert_gpu_util, (0.0..1.0).contains(&l.alert_gpu_util)),
        ] {
            if !(v.is_finite() && ok) {
                let expected = match key {
                    "logs.alert_data_stall" => "a fraction in (0, 1)",
                    "logs.alert_memory" => "a fraction in (0, 1]",
                    "logs.alert_gpu_util" => "0 (off) or a fraction in (0, 1)",
                    _ => "0 (off) or a ratio above 1",
                };
                return Err(format!("key `{key}`: expected {expected}, got {v}"));
            }
        }
        if l.telemetry_interval_ms > 0 && l.telemetry_interval_ms < 50 {
            return Err(format!("key `logs.telemetry_interval_ms`: expected 0 (off) or at least 50 (milliseconds), got {}", l.telemetry_interval_ms));
        }
        if l.tensorboard && !l.enabled {
            return Err("key `logs.tensorboard`: true needs logs.enabled = true (the event files mirror metrics.jsonl and telemetry.jsonl); \
                        set logs.enabled = true or drop logs.tensorboard"
                .into());
        }
        if self.memory.min_micro_tokens == 0 {
            return Err("key `memory.min_micro_tokens`: must be at least 1, got 0".into());
        }
        if t.precision == "bf16" && self.run.device == "cpu" {
            return Err(bf16_on_cpu("run.device = \"cpu\""));
        }
        if self.run.name.is_empty() || self.run.name.contains(['/', '\\']) || self.run.name == ".." {
            return Err(format!("key `run.name`: must be a plain directory name, got \"{}\"", self.run.name));
        }
        Ok(())
    }

    /// A rough lower bound, in bytes, of what training holds (the model kind's
    /// [`crate::registry::ModelSpec::min_memory_bytes`]). In f64, so absurd sizes cannot
    /// overflow.
    pub fn min_memory_bytes(&self) -> f64 {
        // The tokenizer's vocabulary padded to a multiple of 128.
        let vocab = if self.data.tokenizer == "gpt2" { 50304.0 } else { 256.0 };
        self.model.spec().min_memory_bytes(vocab, self.train.batch_size as f64, self.train.seq_len as f64)
    }

    /// The precision to compute in on `device`: `train.precision`, with "auto" meaning bf16
    /// on a GPU and fp32 on the CPU. bf16 on the CPU is an error naming the key.
    pub fn precision(&self, device: kernels::Device) -> std::result::Result<models::Precision, String> {
        use models::Precision;
        match (self.train.precision.as_str(), device) {
            ("fp32", _) | ("auto", kernels::Device::Cpu) => Ok(Precision::Fp32),
            ("bf16" | "auto", kernels::Device::Cuda(_)) => Ok(Precision::Bf16),
            ("bf16", kernels::Device::Cpu) => Err(bf16_on_cpu("the device is the CPU")),
            (other, _) => Err(format!("key `train.precision`: expected \"auto\", \"fp32\" or \"bf16\", got \"{other}\"")),
        }
    }

    /// `memory.budget` parsed (`None`: unlimited); a bad value is an error naming the key,
    /// the value and what was expected.
    pub fn memory_budget(&self) -> std::result::Result<Option<kernels::memory::Budget>, String> {
        match &self.memory.budget {
            None => Ok(None),
            Some(text) => kernels::memory::Budget::parse(text).map(Some).map_err(|e| format!("key `memory.budget`: {e}")),
        }
    }

    /// Sequences per optimizer step: `batch.tokens_per_step / train.seq_len`, or
    /// `train.batch_size x train.grad_accum` when that is unset. With `batch.tokens_per_step`
    /// set, it must be a multiple of train.seq_len, and an explicit train.batch_size or
    /// train.grad_accum must divide the step (both explicit: multiply to it); errors name
    /// the keys.
    pub fn global_batch(&self) -> std::result::Result<usize, String> {
        let t = &self.train;
        let Some(tokens) = self.batch.tokens_per_step else {
            return t.batch_size.checked_mul(t.grad_accum).ok_or_else(|| {
                format!("keys `train.batch_size` x `train.grad_accum`: {} x {} sequences per step overflow", t.batch_size, t.grad_accum)
            });
        };
        if tokens == 0 || tokens % t.seq_len != 0 {
            return Err(format!("key `batch.tokens_per_step`: {tokens} is not a positive multiple of train.seq_len ({})", t.seq_len));
        }
        let g = tokens / t.seq_len;
        let e = self.explicit;
        if e.batch_size && e.grad_accum && t.batch_size * t.grad_accum != g {
            return Err(format!(
                "key `batch.tokens_per_step`: {tokens} tokens are {g} sequences of train.seq_len = {}, but train.batch_size x \
                 train.grad_accum = {} x {} = {}; set only one of train.batch_size and train.grad_accum",
                t.seq_len,
                t.batch_size,
                t.grad_accum,
                t.batch_size * t.grad_accum
            ));
        }
        for (key, v, given) in [("train.batch_size", t.batch_size, e.batch_size), ("train.grad_accum", t.grad_accum, e.grad_accum)] {
            if given && !g.is_multiple_of(v) {
                return Err(format!(
                    "key `{key}`: {v} does not divide the step's {g} sequences (batch.tokens_per_step = {tokens} / train.seq_len = {})",
                    t.seq_len
                ));
            }
        }
        Ok(g)
    }

    /// The micro-batch fixed by the config, if any: an explicit train.batch_size, or the
    /// step divided by an explicit train.grad_accum. `None`: the planner chooses.
    pub fn fixed_micro_batch(&self) -> Option<usize> {
        let g = self.global_batch().expect("validated");
        if self.explicit.batch_size {
            Some(self.train.batch_size)
        } else if self.explicit.grad_accum {
            Some(g / self.train.grad_accum)
        } else {
            None
        }
    }

    /// The micro-batch without a planner: the fixed one, else the largest divisor of the
    /// step not above train.batch_size.
    pub fn default_micro_batch(&self) -> usize {
        let g = self.global_batch().expect("validated");
        self.fixed_micro_batch().unwrap_or_else(|| (1..=self.train.batch_size.min(g)).rev().find(|b| g.is_multiple_of(*b)).unwrap_or(1))
    }

    /// `train.recompute` as a policy; a bad value is an error naming the key and the choices.
    pub fn recompute(&self) -> std::result::Result<models::Recompute, String> {
        self.train.recompute.parse().map_err(|e| format!("key `train.recompute`: {e}"))
    }

    /// The run directory, `<run.out_dir>/<run.name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.run.out_dir.join(&self.run.name)
    }
}

/// The values `train.precision` takes.
pub const PRECISIONS: [&str; 3] = ["auto", "fp32", "bf16"];

fn bf16_on_cpu(why: &str) -> String {
    format!(
        "key `train.precision`: \"bf16\" needs a CUDA device, but {why}; the CPU computes in fp32 only \
         (set train.precision = \"fp32\" or \"auto\", or run.device = \"cuda\")"
    )
}

/// toml's messages carry a source excerpt over several lines; keep the line/column and the reason.
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("invalid TOML at line {line}, column {col}: {msg}")
        }
        None => format!("invalid TOML: {msg}"),
    }
}

fn apply_override(table: &mut toml::Table, item: &str) -> std::result::Result<(), String> {
    let (key, raw) = item.split_once('=').ok_or("expected key=value")?;
    let (key, raw) = (key.trim(), raw.trim());
    let value: toml::Value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("bad key `{key}`"));
    }
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("`{p}` in `{key}` is not a section"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
