//! The training loop: warm-up + cosine learning rate, gradient accumulation, clipping,
//! periodic validation and checkpoints, a live progress line and a plain metrics log.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use datasets::{Batch, Data, EpochSampler, LoaderConfig, Order, Split};
use kernels::device::{select, DeviceRequest};
use kernels::memory::{self, PoolStats};
use kernels::timing::{self, Mark};
use kernels::{DType, Device, Tensor};
use models::{Model, Precision, Recompute};

use crate::checkpoint::{self, CheckpointState, SamplerCheckpoint};
use crate::config::Config;
use crate::error::io;
use crate::guard::{GuardState, OutlierDetector};
use crate::logs::{self, Alert, MemoryRecord, StepRecord};
use crate::monitor::{Monitor, MonitorSetup};
use crate::optim::{zero_grad, AdamW, AdamWConfig, GradNorm, Update};
use crate::plan::{self, ModelProbe, Plan, PlanRequest};
use crate::registry::BuildContext;
use crate::schedule::learning_rate;
use crate::staging::{CopyTiming, Stager};
use crate::{Error, Result};

/// How [`train`] runs, beyond the config (the flags of `engine train`).
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// No progress on the terminal: only alerts (stderr) and, from the CLI, the final summary.
    pub quiet: bool,
    /// Continue from the run directory's newest checkpoint (the newest that verifies, see
    /// [`checkpoint::resolve_noting`]).
    pub resume: bool,
    /// Continue from the run directory's checkpoint of this step instead of the newest
    /// (`engine train --resume-step STEP`); implies `resume`. A step without a checkpoint,
    /// or whose checkpoint fails verification, is an error listing the steps there are.
    pub resume_step: Option<u64>,
    /// Called before each micro-batch's forward with (step, micro-batch), both counting from
    /// 0 (again for a step that is redone), on the training thread: for a library user's own
    /// bookkeeping, or a test that changes the conditions mid-step (the memory budget).
    pub before_micro_batch: Option<StepHook>,
    /// Stop after this step (counting from 1), writing a checkpoint there, as a run
    /// interrupted at that point would have: `resume` then continues it to
    /// `train.max_steps` exactly as if it had not stopped (the learning-rate schedule still
    /// runs to `train.max_steps`). For time-boxed jobs, and for checking resumption.
    pub stop_after: Option<u64>,
    /// A stop request polled after every step: when it holds a signal number (non-zero),
    /// the run finishes the current step, writes a checkpoint there and returns
    /// [`Error::Interrupted`] (`engine train` sets it on SIGINT and SIGTERM).
    pub stop: Option<StopFlag>,
}

/// A stop request shared with a signal handler (or any thread): 0 while none, else the
/// signal number that asked for it.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(pub Arc<std::sync::atomic::AtomicUsize>);

impl StopFlag {
    /// The requesting signal, if a stop was asked for.
    pub fn requested(&self) -> Option<i32> {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            signal => Some(signal as i32),
        }
    }
}

/// A callback given (step, micro-batch) (see [`TrainOptions::before_micro_batch`]).
#[derive(Clone)]
pub struct StepHook(pub Arc<dyn Fn(u64, usize) + Send + Sync>);

impl std::fmt::Debug for StepHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepHook")
    }
}

/// A change of plan during the run, after a step ran out of memory (also a line of the run
/// directory's `events.jsonl`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PlanChange {
    /// The step that was redone (counting from 1, as in metrics.log).
    pub step: u64,
    /// The out-of-memory error, as printed.
    pub error: String,
    /// The recomputation policy that ran out of memory.
    #[serde(serialize_with = "plan::serialize_policy")]
    pub from_policy: Recompute,
    /// The micro-batch (sequences) that ran out of memory.
    pub from_micro_batch: usize,
    /// The policy the step was redone with, kept for the rest of the run.
    #[serde(serialize_with = "plan::serialize_policy")]
    pub to_policy: Recompute,
    /// The micro-batch the step was redone with: the next smaller divisor of the global
    /// batch, or the same at micro-batch 1 with more recomputation.
    pub to_micro_batch: usize,
    /// Micro-batches per step under the new plan (global batch / `to_micro_batch`).
    pub to_grad_accum: usize,
}

/// What a finished [`train`] did.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// The run directory, `<run.out_dir>/<run.name>`.
    pub run_dir: PathBuf,
    /// The checkpoint written after the last step, `<run_dir>/checkpoints/step-XXXXXX` (if no
    /// step ran, the run directory's latest).
    pub checkpoint: PathBuf,
    /// Steps completed at the end, counting those before a resume (the last checkpoint's step).
    pub steps: u64,
    /// (step, train loss) for every step of this invocation.
    pub losses: Vec<(u64, f32)>,
    /// (step, validation loss) at every evaluation.
    pub val_losses: Vec<(u64, f32)>,
    /// Tokens trained in this invocation / `train_seconds`.
    pub tokens_per_sec: f64,
    /// Wall time of this invocation's steps (data wait, forward, backward, optimizer; not
    /// evaluation or checkpoints), seconds: the sum of metrics.jsonl's `step_ms`.
    pub train_seconds: f64,
    /// (step, milliseconds the step waited for its training batches from the loader).
    pub data_wait_ms: Vec<(u64, f64)>,
    /// The sum of `data_wait_ms`, in seconds (part of `train_seconds`).
    pub data_wait_seconds: f64,
    /// (step, host-to-device copy timings of its batches from CUDA events): on a GPU only,
    /// also written to `copy.log` (crate::staging).
    pub copy_timings: Vec<(u64, CopyTiming)>,
    /// The device pool's statistics at the end of the run; `peak` counts from the start of
    /// this run (kernels::memory).
    pub memory: PoolStats,
    /// The plan the run started with (crate::plan), and the one it ended with.
    pub plan: Plan,
    /// The plan after the last out-of-memory change (`plan` if there was none).
    pub final_plan: Plan,
    /// Every change of plan after an out-of-memory error.
    pub plan_changes: Vec<PlanChange>,
    /// What summary.json holds (crate::logs).
    pub perf: Option<logs::Summary>,
    /// Steps whose update `train.skip_update_zscore` skipped as an outlier (events.jsonl
    /// `skipped_update`).
    pub skipped_updates: Vec<u64>,
    /// Every rollback after a diverged step (`train.on_divergence = "rollback"`).
    pub rollbacks: Vec<Rollback>,
}

/// A rollback after a diverged step (also a line of the run directory's `events.jsonl`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Rollback {
    /// The step that diverged (counting from 1).
    pub diverged_step: u64,
    /// What was not finite.
    pub what: String,
    /// The checkpoint reloaded.
    pub checkpoint: PathBuf,
    /// Its step: training went on from there, on the data after the diverged step's (the
    /// windows read since the checkpoint are skipped).
    pub to_step: u64,
    /// The learning-rate scale from then on (`train.rollback_lr_factor` per rollback).
    pub lr_scale: f64,
    /// Rollbacks taken so far, this one included (at most `train.max_rollbacks`).
    pub rollback: u32,
}

/// The config's data: `data.path` a prepared directory (shards, mapped and checked), a
/// text file (tokenized now), or unset (the embedded Tiny Shakespeare). Both splits must
/// hold at least one window of `train.seq_len + 1` tokens.
pub fn load_dataset(config: &Config) -> Result<Data> {
    let data = Data::open(config.data.path.as_deref(), &config.data.tokenizer, config.data.val_fraction).map_err(|e| match e {
        datasets::Error::TokenizerMismatch { path, dataset, vocab, requested } => Error::Usage(format!(
            "data.path = {}: prepared with the {dataset} tokenizer (vocab {vocab}), but data.tokenizer = \"{requested}\"; \
             set data.tokenizer = \"{dataset}\" so the model's vocabulary matches the data",
            path.display()
        )),
        other => other.into(),
    })?;
    data.train.windows(config.train.seq_len)?;
    data.val.windows(config.train.seq_len)?;
    Ok(data)
}

/// A batch's (inputs, targets), (B,T) u32 each, on the CPU.
pub fn batch_tensors(batch: &Batch) -> Result<(Tensor, Tensor)> {
    batch_tensors_on(batch, Device::Cpu)
}

/// A batch's (inputs, targets), (B,T) u32 each, on `device`.
pub fn batch_tensors_on(batch: &Batch, device: Device) -> Result<(Tensor, Tensor)> {
    let shape = [batch.batch_size, batch.seq_len];
    let x = Tensor::from_u32(&shape, batch.inputs.clone())?.to_device(device)?;
    let y = Tensor::from_u32(&shape, batch.targets.clone())?.to_device(device)?;
    Ok((x, y))
}

/// Mean cross-entropy over the first `max_batches * batch_size` windows of `split` in order
/// (the sampler's sequential mode), and how many windows that was.
pub fn evaluate(model: &mut dyn Model, split: &Split, batch_size: usize, seq_len: usize, max_batches: usize) -> Result<(f32, usize)> {
    // More windows than the split holds is all of them (no product may wrap to few or none).
    evaluate_windows(model, split, batch_size.saturating_mul(max_batches), batch_size, seq_len)
}

/// Mean cross-entropy over the first `windows` windows of `split` in order (fewer if it has
/// fewer), `chunk` at a time, and how many windows that was. What the model kept for
/// backward is released at the end.
pub fn evaluate_windows(model: &mut dyn Model, split: &Split, windows: usize, chunk: usize, seq_len: usize) -> Result<(f32, usize)> {
    let index = split.windows(seq_len)?;
    let device = model.device();
    let (mut total, mut count, mut seen) = (0.0f64, 0usize, 0usize);
    let rows = split.sequential_windows(&index, (index.count() as usize).min(windows));
    for rows in rows.chunks(chunk.max(1) * (seq_len + 1)) {
        let batch = Batch::from_windows(rows, seq_len);
        // The last batch's saved state goes before the next forward, not during it.
        model.release();
        let (x, y) = batch_tensors_on(&batch, device)?;
        let loss = model.forward(&x, Some(&y))?.expect("targets given");
        let n = batch.batch_size * batch.seq_len;
        total += loss as f64 * n as f64;
        count += n;
        seen += batch.batch_size;
    }
    model.release();
    Ok(((total / count.max(1) as f64) as f32, seen))
}

/// The HellaSwag file of `train.hellaswag_interval`, read and tokenized with
/// `data.tokenizer`; `None` when that is 0.
pub fn hellaswag_task(config: &Config) -> Result<Option<crate::hellaswag::Task>> {
    let t = &config.train;
    let (Some(path), true) = (&t.hellaswag_data, t.hellaswag_interval > 0) else { return Ok(None) };
    let tokenizer = datasets::tokenizer(&config.data.tokenizer)?;
    let task = crate::hellaswag::load(path, tokenizer.as_ref(), tokenizer.vocab_size()).map_err(|e| Error::Usage(format!("train.hellaswag_data: {e}")))?;
    Ok(Some(task))
}

/// The device `run.device` names (or `auto` picks) and the precision `train.precision`
/// gives on it, with a one-line note saying both. bf16 on the CPU (`auto` having found no
/// GPU) is an error naming `train.precision`.
pub fn resolve_device(config: &Config) -> Result<(Device, Precision, String)> {
    let request = DeviceRequest::parse(&config.run.device).expect("validated");
    let (device, note) = select(request)?;
    let precision = config.precision(device).map_err(Error::Usage)?;
    Ok((device, precision, format!("{note}; precision {}", precision.name())))
}

/// Trains as `config` says, the model built by its `[model]` kind, on the engine's CPU
/// worker pool (`kernels::ops::on_cpu_workers`, as the `engine` binary runs), so a library
/// caller trains as fast as the binary. An out-of-memory error names the budget's key and
/// the ways out; a run directory holding a model of another kind or shape is refused before
/// anything is written.
pub fn train(config: &Config, options: &TrainOptions) -> Result<TrainSummary> {
    kernels::ops::on_cpu_workers(|| train_run(config, options)).map_err(|e| match e {
        oom if is_out_of_memory(&oom) => Error::Usage(format!(
            "{oom}; memory.budget = {}: raise it, or lower train.batch_size (with a larger train.grad_accum) or set train.recompute",
            config.memory.budget.as_deref().map_or("unset (unlimited)".into(), |b| format!("\"{b}\""))
        )),
        other => other,
    })
}

/// `memory.budget` in bytes on `device` (`None`: unset, unlimited).
pub fn resolve_budget(config: &Config, device: Device) -> Result<Option<usize>> {
    match config.memory_budget().map_err(Error::Usage)? {
        Some(b) => Ok(Some(b.resolve(device)?)),
        None => Ok(None),
    }
}

/// Sets `device`'s pool budget to `budget` (`None`: unlimited) and starts a new peak
/// measurement; returns the line the trainer prints.
fn set_budget_line(config: &Config, device: Device, budget: Option<usize>) -> String {
    memory::set_budget(device, budget);
    memory::reset_peak(device);
    match budget {
        Some(bytes) => format!("memory budget on {device}: {} (memory.budget = \"{}\")", memory::fmt_bytes(bytes), config.memory.budget.as_deref().unwrap_or_default()),
        None => format!("memory budget on {device}: unlimited"),
    }
}

/// AdamW's settings from `[train]`.
pub fn adamw_config(config: &Config) -> AdamWConfig {
    let t = &config.train;
    AdamWConfig {
        beta1: t.beta1 as f32,
        beta2: t.beta2 as f32,
        eps: t.eps as f32,
        weight_decay: t.weight_decay as f32,
        decay_all_params: t.decay_all_params,
        grad_clip: t.grad_clip as f32,
    }
}

/// The model `config`'s `[model]` kind builds for a vocabulary of `vocab_size`, in
/// `precision` on `device`, its weights drawn from `run.seed`.
pub fn build_model(config: &Config, vocab_size: usize, device: Device, precision: Precision) -> Result<Box<dyn Model>> {
    let at = BuildContext { vocab_size, device, precision, seed: config.run.seed };
    Ok(config.model.spec().build(&at)?)
}

/// The run's plan (crate::plan): with `budget`, measured on a throw-away model of the
/// config on `device` (with the budget lifted while measuring), choosing among the
/// recomputation policies the model accepts; without, the config's settings. A budget no
/// plan fits is an error naming the numbers and the keys.
pub fn plan_run(config: &Config, device: Device, precision: Precision, vocab_size: usize, budget: Option<usize>) -> Result<Plan> {
    let t = &config.train;
    let global = config.global_batch().map_err(Error::Usage)?;
    let policy = config.recompute().map_err(Error::Usage)?;
    let Some(bytes) = budget else {
        return Ok(Plan::from_settings(global, t.seq_len, config.default_micro_batch(), policy));
    };
    // The device ring holds DEVICE_SLOTS batches of inputs and targets; the probe one.
    let extra = match device {
        Device::Cuda(_) => (crate::staging::DEVICE_SLOTS - 1) * 2 * global * t.seq_len * DType::U32.size_in_bytes(),
        Device::Cpu => 0,
    };
    memory::set_budget(device, None);
    let (planned, request) = {
        let mut probe = ModelProbe::new(device, global, t.seq_len, extra, || {
            let model = build_model(config, vocab_size, device, precision)?;
            let opt = AdamW::try_new(adamw_config(config), model.as_ref())?;
            Ok((model, opt))
        })?;
        let request = PlanRequest {
            global_batch: global,
            seq_len: t.seq_len,
            budget: Some(bytes),
            micro_batch: config.fixed_micro_batch(),
            policy: config.explicit.recompute.then_some(policy),
            candidates: probe.candidates(),
            min_micro_tokens: config.memory.min_micro_tokens,
        };
        (plan::plan(&mut probe, &request)?, request)
    };
    planned.map_err(|no_fit| {
        let text = config.memory.budget.as_deref().unwrap_or_default();
        Error::Usage(plan::no_fit_message(&no_fit, text, request.micro_batch.is_some(), request.policy.is_some()))
    })
}

/// What the run needs of the host's memory at least, against what the host has: the
/// loader's ring (`data.prefetch` batches) and, on the CPU, the model's lower bound at
/// `train.batch_size`. One error naming the keys instead of an allocation failing later.
pub fn check_host_memory(config: &Config, device: Device) -> Result<()> {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let total = system.total_memory() as f64;
    if total == 0.0 {
        return Ok(()); // unknown: nothing to compare with
    }
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let staging = config.staging_bytes().map_err(Error::Usage)?;
    let model = if device == Device::Cpu { config.min_memory_bytes() } else { 0.0 };
    if staging + model > total {
        let what = match device {
            Device::Cpu => format!(
                " and the model at train.batch_size = {} x train.seq_len = {} needs at least {:.1} GiB",
                config.train.batch_size,
                config.train.seq_len,
                gib(model)
            ),
            Device::Cuda(_) => String::new(),
        };
        return Err(Error::Usage(format!(
            "too large for this machine's {:.1} GiB of memory: the loader's data.prefetch = {} batches take {:.1} GiB{what}; \
             lower data.prefetch, the batch or the model",
            gib(total),
            config.data.prefetch,
            gib(staging)
        )));
    }
    Ok(())
}

/// Whether `e` is the memory pool (or the device) running out of memory.
pub fn is_out_of_memory(e: &Error) -> bool {
    matches!(e, Error::Kernel(kernels::Error::OutOfMemory { .. }) | Error::Model(models::Error::Kernel(kernels::Error::OutOfMemory { .. })))
}

/// A step's mean loss: a value on the CPU; on a GPU one f32 on the device, averaged there
/// over the micro-batches, read back only when the step is logged.
enum StepLoss {
    Host(f32),
    Device(Tensor),
}

impl StepLoss {
    fn read(&self) -> Result<f32> {
        Ok(match self {
            StepLoss::Host(loss) => *loss,
            StepLoss::Device(loss) => loss.try_to_vec()?[0],
        })
    }
}

/// One step's forward and backward passes over the step's batch (inputs, targets) (G, T),
/// cut into the plan's micro-batches in order; returns the step's mean loss and the marks
/// before each forward, between it and its backward, and after the backward (host instants on the CPU, events on a GPU).
/// Gradients are zeroed first, so a failed attempt leaves nothing behind once the model is
/// released.
fn accumulate(model: &mut dyn Model, inputs: &Tensor, targets: &Tensor, plan: &Plan, before: impl Fn(usize)) -> Result<(StepLoss, Vec<[Mark; 3]>)> {
    zero_grad(model)?;
    let device = model.device();
    let (micro, accum) = (plan.micro_batch, plan.grad_accum);
    let mut marks = Vec::with_capacity(accum);
    let (mut host_loss, mut device_loss) = (0.0f32, match device {
        Device::Cuda(_) => Some(Tensor::try_empty(device, DType::F32, &[1])?),
        Device::Cpu => None,
    });
    for i in 0..accum {
        before(i);
        let (x, y) = if accum == 1 { (inputs.clone(), targets.clone()) } else { (inputs.rows(i * micro, micro)?, targets.rows(i * micro, micro)?) };
        let t0 = timing::mark(device)?;
        match &mut device_loss {
            Some(loss) => model.forward_loss(&x, &y, loss, 1.0 / accum as f32, i > 0)?,
            None => host_loss += model.forward(&x, Some(&y))?.expect("targets given") / accum as f32,
        }
        let t1 = timing::mark(device)?;
        model.backward(1.0 / accum as f32)?;
        marks.push([t0, t1, timing::mark(device)?]);
    }
    Ok((device_loss.map_or(StepLoss::Host(host_loss), StepLoss::Device), marks))
}

/// A trained step whose loss, gradient norm and device times have not been read yet (on a
/// GPU, between logged steps): its record is complete but for those.
struct Unread {
    record: StepRecord,
    loss: StepLoss,
    grad_norm: GradNorm,
    marks: Vec<[Mark; 3]>,
    optimizer: (Mark, Mark),
}

/// Reads back the steps in `unread` (in order), records them in `summary` and hands them to
/// the monitor. Every loss, gradient norm and update status is read in one gathered copy (on
/// a GPU, one wait for the device; the steps' device times have completed by then). A
/// diverged step (a non-finite loss or gradient norm, or an update that made a weight
/// non-finite) ends the reading there, as `Error::Diverged` for that step (`kept` empty: the
/// caller says where the good weights are).
fn read_back(unread: &mut Vec<Unread>, summary: &mut TrainSummary, monitor: &mut Monitor) -> Result<()> {
    let mut on_device: Vec<&Tensor> = Vec::new();
    for u in unread.iter() {
        if let StepLoss::Device(t) = &u.loss {
            on_device.push(t);
        }
        if let GradNorm::Device(_, norm, status) = &u.grad_norm {
            on_device.push(norm);
            on_device.push(status);
        }
    }
    let mut values = Tensor::read_scalars(&on_device)?.into_iter();
    let mut next = || values.next().expect("one value per device scalar, in order");
    for Unread { mut record, loss, grad_norm, marks, optimizer } in unread.drain(..) {
        record.loss = match loss {
            StepLoss::Host(loss) => loss,
            StepLoss::Device(_) => next(),
        };
        if !record.loss.is_finite() {
            monitor.alert(logs::nonfinite_loss_alert(record.step, record.loss))?;
            return Err(Error::Diverged { step: record.step, what: format!("the loss is {}", record.loss), kept: String::new() });
        }
        let update;
        (record.grad_norm, update) = match grad_norm {
            GradNorm::Host(norm, update) => (norm, update),
            GradNorm::Device(..) => (next(), Update::from_status(next())),
        };
        let what = match update {
            Update::NonFiniteGradient => Some(format!("the gradient norm is {} (the update was skipped)", record.grad_norm)),
            Update::NonFinite => Some("the update made a weight or an AdamW moment NaN or infinite".to_string()),
            Update::Applied | Update::Skipped => None,
        };
        if let Some(what) = what {
            let message = format!("{what}: training diverged");
            monitor.alert(Alert { step: record.step, kind: "nonfinite_update", message, value: record.grad_norm as f64, threshold: 0.0 })?;
            return Err(Error::Diverged { step: record.step, what, kept: String::new() });
        }
        record.forward_ms = Some(timing::total_ms(marks.iter().map(|[a, b, _]| (a, b)))?);
        record.backward_ms = Some(timing::total_ms(marks.iter().map(|[_, b, c]| (b, c)))?);
        summary.losses.push((record.step, record.loss));
        monitor.step(record, optimizer)?;
    }
    Ok(())
}

/// The peak bf16 rate for MFU and where it came from: `logs.peak_tflops`, the table by the
/// GPU's name, or unknown (the CPU, an unlisted GPU).
pub fn peak_rate(config: &Config, device: Device) -> Result<(Option<f64>, String)> {
    if let Some(p) = config.logs.peak_tflops {
        return Ok((Some(p), "logs.peak_tflops".into()));
    }
    let name = match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(ordinal) => kernels::cuda::device(ordinal)?.name().to_string(),
    };
    Ok(match logs::peak_tflops_for(&name) {
        Some(p) => (Some(p), format!("table: {name}")),
        None => (None, format!("unknown: {name} (set logs.peak_tflops for MFU)")),
    })
}

/// A checkpoint of the run directory, if it has one, and its state.
type Previous = Option<(PathBuf, CheckpointState)>;

/// The run directory's newest checkpoint that verifies (or that of `resume_step`), refused
/// when it holds a model of another kind, of another shape, or over another vocabulary than
/// this config's: training there would overwrite `checkpoints/latest` with an unrelated
/// model. So is a run directory whose checkpoints all fail verification. Checked before
/// anything is written.
fn check_run_dir(config: &Config, run_dir: &Path, vocab_size: usize, resume_step: Option<u64>) -> Result<(Previous, Option<String>)> {
    let refuse = |what: String| {
        Error::Usage(format!(
            "run directory {} holds {what}; refusing to train there (nothing was written): set run.name (or run.out_dir) \
             to train this config elsewhere, or remove the directory",
            run_dir.display()
        ))
    };
    let found = match resume_step {
        Some(step) => Some(checkpoint::resolve_step(run_dir, step)?),
        None => match checkpoint::resolve_noting(run_dir) {
            Ok(found) => Some(found),
            Err(e) if !checkpoint::checkpoints(run_dir).is_empty() => return Err(refuse(format!("no checkpoint that verifies ({e})"))),
            Err(_) => None,
        },
    };
    let Some((dir, note)) = found else { return Ok((None, None)) };
    let (state, previous) = match checkpoint::read_state_unverified(&dir, &config.registry) {
        Ok(read) => read,
        Err(e) => return Err(refuse(format!("a checkpoint this config cannot continue ({e})"))),
    };
    let (here, there) = (&config.model, &previous.model);
    if here.kind != there.kind {
        return Err(refuse(format!(
            "a model of kind \"{}\" ({}), but this config trains kind \"{}\"",
            there.kind,
            dir.display(),
            here.kind
        )));
    }
    let differences = here.differences(there);
    if !differences.is_empty() {
        return Err(refuse(format!("a {} model of another shape ({}): {} (here vs there)", here.kind, dir.display(), differences.join(", "))));
    }
    if state.vocab_size != vocab_size {
        return Err(refuse(format!(
            "a model over a vocabulary of {} ({}), but the data ({}) has {vocab_size}",
            state.vocab_size,
            dir.display(),
            config.data.tokenizer
        )));
    }
    Ok((Some((dir, state)), note))
}

/// `--resume`: the newest checkpoint's weights, optimizer state and sampler position, so
/// the run continues exactly as an uninterrupted one would. Returns the step to start from.
fn resume(previous: &Previous, run_dir: &Path, model: &mut dyn Model, opt: &mut AdamW, sampler: &mut EpochSampler, global: usize, seq_len: usize) -> Result<u64> {
    let Some((dir, state)) = previous else {
        // check_run_dir refused a run directory with checkpoints that fail verification.
        let msg = "nothing to resume: there is no checkpoint (checkpoints/step-N) here; train without --resume to start the run";
        return Err(Error::Checkpoint { path: run_dir.to_path_buf(), msg: msg.into() });
    };
    checkpoint::load_weights(dir, model)?;
    checkpoint::load_optimizer(dir, model, opt, state.step)?;
    let resumed = match state.sampler {
        Some(s) if s.windows != sampler.windows() || s.world_size != 1 || s.rank != 0 => {
            return Err(Error::Usage(format!(
                "cannot resume {}: its data sampler covered {} windows (rank {} of {}), the data now has {} windows \
                 of train.seq_len + 1 = {} tokens; resume with the same data and train.seq_len",
                dir.display(),
                s.windows,
                s.rank,
                s.world_size,
                sampler.windows(),
                seq_len + 1
            )))
        }
        Some(s) => datasets::SamplerState { epoch: s.epoch, position: s.position },
        // Written before the state was recorded: every step read one global batch.
        None => sampler.state_after(state.step * global as u64),
    };
    sampler.restore(resumed)?;
    Ok(state.step)
}

/// `model.init_from`: the weights of the Hugging Face (or checkpoint) directory `dir`, whose
/// config the config's `[model]` was checked against when it was parsed. A vocabulary other
/// than the data's is an error naming both.
fn init_from(dir: &Path, model: &mut dyn Model, config: &Config, vocab_size: usize) -> Result<()> {
    // An engine checkpoint given as the starting point is verified like any other load.
    if dir.join(crate::manifest::MANIFEST).is_file() {
        crate::manifest::verify(dir, None)?;
    }
    let theirs = crate::hf::vocab_size(dir, &crate::hf::read_config(dir)?)?;
    if theirs != vocab_size {
        return Err(Error::Usage(format!(
            "model.init_from = {}: its vocabulary is {theirs} tokens, the data's (data.tokenizer = \"{}\") {vocab_size}; \
             set data.tokenizer to the tokenizer the model was trained with",
            dir.display(),
            config.data.tokenizer
        )));
    }
    checkpoint::load_weights_named(dir, model, checkpoint::Naming::HuggingFace)
}

/// What the run directory says about the run before it starts: config.toml and plan.json.
fn write_run_files(config: &Config, run_dir: &Path, plan: &Plan) -> Result<()> {
    fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    checkpoint::remove_debris(run_dir)?;
    let config_path = run_dir.join("config.toml");
    fs::write(&config_path, config.to_toml()).map_err(io(&config_path))?;
    let plan_path = run_dir.join("plan.json");
    fs::write(&plan_path, serde_json::to_string_pretty(plan).expect("serializable") + "\n").map_err(io(&plan_path))
}

/// A training run in progress: the model, its optimizer and plan, and what is recorded.
struct Run<'a> {
    config: &'a Config,
    options: &'a TrainOptions,
    device: Device,
    model: Box<dyn Model>,
    opt: AdamW,
    plan: Plan,
    /// The policies an out-of-memory retry may step through.
    candidates: Vec<Recompute>,
    monitor: Monitor,
    summary: TrainSummary,
    /// Trained steps whose loss and gradient norm are still on the device.
    unread: Vec<Unread>,
    run_started: Instant,
    tokens_per_step: u64,
    flops_per_token: f64,
    peak: Option<f64>,
    train_time: Duration,
    last_val: Option<f32>,
    vocab_size: usize,
    /// Rollbacks taken and the learning-rate scale they left (saved in checkpoints).
    guard: GuardState,
    /// `train.skip_update_zscore`'s windows of recent losses and gradient norms.
    loss_outliers: OutlierDetector,
    norm_outliers: OutlierDetector,
    /// The newest checkpoint known to hold finite weights, with its step and guard state: where
    /// a rollback goes.
    good: Option<(PathBuf, u64, GuardState)>,
}

impl Run<'_> {
    /// The step's forward and backward passes; a step that runs out of memory is redone
    /// from scratch, same samples, with the next smaller plan (logged as a plan change),
    /// until one fits or none is left.
    fn forward_backward(&mut self, step: u64, inputs: &Tensor, targets: &Tensor) -> Result<(StepLoss, Vec<[Mark; 3]>)> {
        loop {
            let before = |micro: usize| {
                if let Some(hook) = &self.options.before_micro_batch {
                    (hook.0)(step, micro);
                }
            };
            let e = match accumulate(self.model.as_mut(), inputs, targets, &self.plan, before) {
                Ok(done) => return Ok(done),
                Err(e) if is_out_of_memory(&e) => e,
                Err(e) => return Err(e),
            };
            // Nothing of the failed attempt is kept: redo the step, same samples,
            // smaller micro-batches (or more recomputation).
            self.model.release();
            let plan = &self.plan;
            let Some(next) = plan.shrink(&self.candidates) else {
                return Err(Error::Usage(format!(
                    "step {}: {e}, and no smaller plan is left (micro-batch {} with recompute {} was the last); \
                     raise memory.budget or make the model or train.seq_len smaller",
                    step + 1,
                    plan.micro_batch,
                    plan.policy
                )));
            };
            let change = PlanChange {
                step: step + 1,
                error: e.to_string(),
                from_policy: plan.policy,
                from_micro_batch: plan.micro_batch,
                to_policy: next.policy,
                to_micro_batch: next.micro_batch,
                to_grad_accum: next.grad_accum,
            };
            self.monitor.say(format!(
                "step {}: out of memory ({e}); redoing the step with micro-batch {} x {} accumulation, recompute {} (was micro-batch {}, recompute {})",
                step + 1,
                next.micro_batch,
                next.grad_accum,
                next.policy,
                plan.micro_batch,
                plan.policy
            ));
            self.monitor.event("plan_change", "change", &change)?;
            self.model.set_recompute(next.policy)?;
            self.summary.plan_changes.push(change);
            self.plan = next;
        }
    }

    /// Step `done`'s record, but for what is read from the device later (loss, gradient
    /// norm, device times).
    fn record(&self, done: u64, lr: f32, elapsed: Duration, data_wait_ms: f64, val_loss: Option<f32>) -> StepRecord {
        let pool = memory::stats(self.device);
        let tok_s = self.tokens_per_step as f64 / elapsed.as_secs_f64();
        StepRecord {
            step: done,
            time_s: self.run_started.elapsed().as_secs_f64(),
            loss: f32::NAN,
            val_loss,
            lr,
            grad_norm: f32::NAN,
            tokens: self.tokens_per_step,
            tokens_per_s: tok_s,
            mfu: logs::mfu(self.flops_per_token, tok_s, self.peak),
            step_ms: elapsed.as_secs_f64() * 1e3,
            data_wait_ms,
            forward_ms: None,
            backward_ms: None,
            optimizer_ms: None,
            memory: MemoryRecord { in_use: pool.in_use, peak: pool.peak, reserved: pool.reserved, budget: pool.budget },
            micro_batch: self.plan.micro_batch,
            grad_accum: self.plan.grad_accum,
            recompute: self.plan.policy.to_string(),
            hellaswag: None,
        }
    }

    /// The guard's state as a checkpoint records it.
    fn guard_state(&self) -> GuardState {
        GuardState { losses: self.loss_outliers.values(), grad_norms: self.norm_outliers.values(), ..self.guard.clone() }
    }

    /// After a diverged step (`e`, an `Error::Diverged`): with `train.on_divergence =
    /// "rollback"` and rollbacks left, reloads the last good checkpoint, lowers the learning
    /// rate and returns the step to go on from; otherwise the error to stop with, saying where
    /// the last good weights are. Steps not yet read back are dropped (they came after the
    /// diverged one).
    fn recover(&mut self, e: Error) -> Result<u64> {
        let Error::Diverged { step, what, .. } = e else { return Err(e) };
        self.unread.clear();
        self.model.release();
        let t = &self.config.train;
        let kept = match &self.good {
            Some((dir, at, _)) => format!("no checkpoint was written from it; checkpoints/latest is {} (step {at}, finite weights)", dir.display()),
            None => "no checkpoint was written from it (the run has none yet)".to_string(),
        };
        let rollbacks_left = t.on_divergence == "rollback" && self.guard.rollbacks < t.max_rollbacks;
        let Some((dir, at, guard)) = self.good.clone().filter(|_| rollbacks_left) else {
            let advice = match t.on_divergence.as_str() {
                "rollback" => format!("{} rollbacks (train.max_rollbacks) did not help", self.guard.rollbacks),
                _ => "resume with a lower train.lr, or set train.on_divergence = \"rollback\"".to_string(),
            };
            return Err(Error::Diverged { step, what, kept: format!("{kept}; {advice}") });
        };
        checkpoint::load_weights(&dir, self.model.as_mut())?;
        checkpoint::load_optimizer(&dir, self.model.as_ref(), &mut self.opt, at)?;
        self.loss_outliers = OutlierDetector::from_values(&guard.losses);
        self.norm_outliers = OutlierDetector::from_values(&guard.grad_norms);
        self.guard.rollbacks += 1;
        self.guard.lr_scale *= t.rollback_lr_factor;
        self.summary.losses.retain(|&(s, _)| s <= at);
        self.summary.val_losses.retain(|&(s, _)| s <= at);
        self.summary.steps = at;
        let rollback = Rollback {
            diverged_step: step,
            what: what.clone(),
            checkpoint: dir.clone(),
            to_step: at,
            lr_scale: self.guard.lr_scale,
            rollback: self.guard.rollbacks,
        };
        self.monitor.say(format!(
            "step {step}: {what}: rolled back to step {at} ({}), learning rate x{} from now on, skipping the data read since \
             (rollback {} of at most {}, train.on_divergence = \"rollback\")",
            dir.display(),
            self.guard.lr_scale,
            self.guard.rollbacks,
            t.max_rollbacks
        ));
        self.monitor.event("rollback", "rollback", &rollback)?;
        self.summary.rollbacks.push(rollback);
        Ok(at)
    }

    /// A checkpoint after step `done`, the sampler at `sampled` (where the next step reads).
    fn checkpoint(&mut self, done: u64, sampled: datasets::SamplerState, windows: u64) -> Result<()> {
        let guard = self.guard_state();
        let state = CheckpointState {
            format: checkpoint::FORMAT,
            step: done,
            train_loss: self.summary.losses.last().map(|&(_, l)| l),
            val_loss: self.last_val,
            vocab_size: self.vocab_size,
            config_toml: self.config.to_toml(),
            sampler: Some(SamplerCheckpoint { epoch: sampled.epoch, position: sampled.position, windows, rank: 0, world_size: 1 }),
            guard: (guard != GuardState::default()).then(|| guard.clone()),
            run_id: crate::manifest::read_run_id(&self.config.run_dir())?,
        };
        self.summary.checkpoint = checkpoint::save(&self.config.run_dir(), self.model.as_ref(), &self.opt, &state)?;
        // Every step up to `done` was read back finite before this write (a checkpoint step
        // always reads back), so these weights are good.
        self.good = Some((self.summary.checkpoint.clone(), done, guard));
        let t = &self.config.train;
        checkpoint::prune(&self.config.run_dir(), t.keep_checkpoints, t.keep_best, done)?;
        self.monitor.checkpoint(done, &self.summary.checkpoint)
    }
}

fn train_run(config: &Config, options: &TrainOptions) -> Result<TrainSummary> {
    let run_started = Instant::now();
    // Read and checked before anything is written.
    let hellaswag = hellaswag_task(config)?;
    // Before anything is written to the run directory; held (by the OS) until we return.
    let _lock = crate::lock::RunLock::acquire(&config.run_dir())?;
    let (device, precision, device_note) = resolve_device(config)?;
    let data = load_dataset(config)?;
    let run_dir = config.run_dir();
    let (previous, fallback_note) = check_run_dir(config, &run_dir, data.vocab_size, options.resume_step)?;
    check_host_memory(config, device)?;
    let budget = resolve_budget(config, device)?;
    let plan = plan_run(config, device, precision, data.vocab_size, budget)?;
    let memory_note = set_budget_line(config, device, budget);
    let t = &config.train;
    let mut model = build_model(config, data.vocab_size, device, precision)?;
    model.set_recompute(plan.policy)?;
    let mut opt = AdamW::try_new(adamw_config(config), model.as_ref())?;
    let global = plan.global_batch;
    // Training windows: a fresh permutation every epoch, one rank of one.
    let train_index = data.train.windows(t.seq_len)?;
    let mut sampler = EpochSampler::new(config.run.seed, train_index.count(), 0, 1, Order::Shuffled)?;
    let start_step = match options.resume || options.resume_step.is_some() {
        true => resume(&previous, &run_dir, model.as_mut(), &mut opt, &mut sampler, global, t.seq_len)?,
        false => {
            if let Some(dir) = &config.model.init_from {
                init_from(dir, model.as_mut(), config, data.vocab_size)?;
            }
            0
        }
    };
    crate::manifest::ensure_run_id(&run_dir, previous.as_ref().and_then(|(_, state)| state.run_id.as_deref()))?;
    write_run_files(config, &run_dir, &plan)?;
    let peak = peak_rate(config, device)?;
    let gpu = match device {
        Device::Cuda(ordinal) => Some(kernels::cuda::device(ordinal)?),
        Device::Cpu => None,
    };
    let monitor = Monitor::start(MonitorSetup {
        config,
        run_dir: &run_dir,
        gpu_pci_bus_id: gpu.as_ref().map(|g| g.pci_bus_id().to_string()),
        start_step,
        max_steps: t.max_steps,
        peak: peak.clone(),
        quiet: options.quiet,
        device: (gpu.as_ref().map_or("cpu".into(), |g| format!("{device} {}", g.name())), precision.name().to_string()),
        started: run_started,
    })?;
    let tokens_per_step = (global * t.seq_len) as u64;
    monitor.say(device_note);
    monitor.say(memory_note);
    if let Some(note) = fallback_note {
        monitor.say(note);
    }
    if plan.source == "planner" {
        monitor.say(plan.table());
    }
    if let (Some(dir), false) = (&config.model.init_from, options.resume || options.resume_step.is_some()) {
        monitor.say(format!("model: initialized from {} (model.init_from)", dir.display()));
    }
    monitor.say(format!(
        "model: {} ({} parameters); data {}: {} train / {} val tokens; {} tokens per step \
         (micro-batch {} x {} accumulation, recompute {})",
        config.model.spec().describe(),
        model.num_params(),
        data.description,
        data.train.len(),
        data.val.len(),
        tokens_per_step,
        plan.micro_batch,
        plan.grad_accum,
        plan.policy
    ));
    let windows = sampler.windows();
    // The loader hands out whole steps: the trainer cuts them into micro-batches, so a
    // change of micro-batch never changes which samples a step sees.
    let loader_config = LoaderConfig { batch_size: global, seq_len: t.seq_len, num_workers: config.data.num_workers, prefetch: config.data.prefetch };
    // On a GPU: pinned ring, copy stream and device ring (crate::staging); copy timings go
    // to copy.log beside metrics.log.
    let mut loader = Stager::new(device, Arc::clone(&data.train), train_index, sampler, loader_config)?;
    let mut copy_log = match device {
        Device::Cuda(_) => {
            // A torn last line cut, and on a resume the steps after its checkpoint (crate::journal).
            let (file, note) = crate::journal::open_for_run(&run_dir.join("copy.log"), start_step, crate::journal::column_step)?;
            if let Some(note) = note {
                monitor.say(note);
            }
            if start_step == 0 {
                file.append("# step copy_ms copy_overlap copy_stall_ms")?;
            }
            Some(file)
        }
        Device::Cpu => None,
    };
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        checkpoint: PathBuf::new(),
        steps: start_step,
        losses: Vec::new(),
        val_losses: Vec::new(),
        tokens_per_sec: 0.0,
        train_seconds: 0.0,
        data_wait_ms: Vec::new(),
        data_wait_seconds: 0.0,
        copy_timings: Vec::new(),
        memory: PoolStats::default(),
        plan: plan.clone(),
        final_plan: plan.clone(),
        plan_changes: Vec::new(),
        perf: None,
        skipped_updates: Vec::new(),
        rollbacks: Vec::new(),
    };
    // What a resumed run's checkpoint says of rollbacks and recent steps; the checkpoint it
    // resumed from is where a rollback goes until it writes one.
    let (guard, good) = match (&previous, options.resume || options.resume_step.is_some()) {
        (Some((dir, state)), true) => {
            let guard = state.guard.clone().unwrap_or_default();
            (guard.clone(), Some((dir.clone(), state.step, guard)))
        }
        _ => (GuardState::default(), None),
    };
    let mut run = Run {
        config,
        options,
        device,
        candidates: model.recompute_candidates(),
        flops_per_token: model.flops_per_token(t.seq_len),
        model,
        opt,
        plan,
        monitor,
        summary,
        unread: Vec::new(),
        run_started,
        tokens_per_step,
        peak: peak.0,
        train_time: Duration::ZERO,
        last_val: None,
        vocab_size: data.vocab_size,
        loss_outliers: OutlierDetector::from_values(&guard.losses),
        norm_outliers: OutlierDetector::from_values(&guard.grad_norms),
        guard,
        good,
    };
    // A rollback needs a checkpoint to go back to: a run that has none writes one now.
    if t.on_divergence == "rollback" && run.good.is_none() {
        run.checkpoint(start_step, loader.state(), windows)?;
    }
    let mut interrupted = None;
    // Validation always covers the same windows, whatever the micro-batch.
    let eval_windows = t.eval_batches.saturating_mul(t.batch_size);
    let zscore = t.skip_update_zscore;
    let mut step = start_step;
    let mut group_steps = Vec::new();
    // A periodic checkpoint after step k waits for step k + 1's loss, computed from its
    // weights on fresh data, and is written before step k + 1's update (which is when the
    // model still holds them): weights that are finite but already ruined (a loss of NaN
    // next) are never saved. The final and stop checkpoints have no next step: the final one
    // has its validation loss, every one its update checked.
    let mut pending: Option<(u64, datasets::SamplerState)> = None;
    // A diverged step: roll back and go on from the checkpoint's step (a pending checkpoint,
    // whose weights led here, is dropped), or stop with the error.
    macro_rules! diverged {
        ($e:expr) => {
            match run.recover($e) {
                Ok(at) => {
                    pending = None;
                    step = at;
                    continue;
                }
                Err(e) => {
                    run.monitor.finish()?;
                    return Err(e);
                }
            }
        };
    }
    while step < t.max_steps {
        let started = Instant::now();
        // Time spent writing a deferred checkpoint, left out of the step's time.
        let mut writing = Duration::ZERO;
        let lr = (learning_rate(step, t.lr, t.min_lr, t.warmup_steps, t.max_steps) * run.guard.lr_scale) as f32;
        // On the CPU a copy out of the loader's slot; on a GPU a batch already copied (or
        // being copied) by the copy stream, which the compute stream waits for.
        let staged = loader.next_batch()?;
        let data_wait = staged.waited;
        let (loss, marks) = run.forward_backward(step, &staged.inputs, &staged.targets)?;
        drop(staged);
        let done = step + 1;
        let last = done == t.max_steps;
        let evaluates = last || (t.eval_interval > 0 && done % t.eval_interval == 0);
        let signalled = options.stop.as_ref().and_then(StopFlag::requested).filter(|_| !last);
        let stopping = options.stop_after == Some(done) || signalled.is_some();
        let checkpoints = last || stopping || (t.checkpoint_interval > 0 && done % t.checkpoint_interval == 0);
        // On a GPU the loss, the gradient norm and the device times stay on the device until
        // a step that logs them (the monitor prints the first and every log_interval-th),
        // evaluates or checkpoints: only there does the host wait for the device, and the
        // steps in between are recorded then, in order. The CPU reads every step.
        // The outlier policy judges every step before its update, so it reads every step.
        let reads = device == Device::Cpu
            || zscore > 0.0
            || evaluates
            || checkpoints
            || pending.is_some()
            || done == start_step + 1
            || done % t.log_interval.max(1) == 0;
        if reads {
            // A diverged step is found before the optimizer applies its gradients.
            let result = read_back(&mut run.unread, &mut run.summary, &mut run.monitor).and_then(|()| {
                let value = loss.read()?;
                if value.is_finite() {
                    return Ok(());
                }
                run.monitor.alert(logs::nonfinite_loss_alert(done, value))?;
                Err(Error::Diverged { step: done, what: format!("the loss is {value}"), kept: String::new() })
            });
            if let Err(e) = result {
                diverged!(e);
            }
        }
        if let Some((at, sampled)) = pending.take() {
            let writing_started = Instant::now();
            run.checkpoint(at, sampled, windows)?;
            writing = writing_started.elapsed();
        }
        let optimizer_started = timing::mark(device)?;
        // On a GPU the clipping reads the norm on the device; nothing waits for it here. The
        // AdamW update may still be running when the step is recorded: the monitor reads its
        // marks once they have completed (crate::monitor). The update is guarded: NaN or
        // infinite gradients skip it, a non-finite result is flagged (read back with the norm).
        let mut judged = None;
        let grad_norm = if zscore > 0.0 {
            let loss_value = loss.read()? as f64;
            let (losses, norms) = (&mut run.loss_outliers, &mut run.norm_outliers);
            let mut gate = |norm: f32| -> Result<bool> {
                let (loss_z, norm_z) = (losses.observe(loss_value), norms.observe(norm as f64));
                judged = Some((loss_value, norm, loss_z, norm_z));
                Ok(!(loss_z.is_some_and(|z| z > zscore) || norm_z.is_some_and(|z| z > zscore)))
            };
            run.opt.step_gated(run.model.as_mut(), lr, Some(&mut gate))?
        } else {
            run.opt.step_queued(run.model.as_mut(), lr)?
        };
        if let (GradNorm::Host(_, Update::Skipped), Some((loss, grad_norm, loss_z, grad_norm_z))) = (&grad_norm, judged) {
            let z = |z: Option<f64>| z.map_or("-".to_string(), |z| format!("{z:.1}"));
            run.monitor.say(format!(
                "step {done}: update skipped as an outlier: loss {loss:.4} (z-score {}), gradient norm {grad_norm:.4} (z-score {}), \
                 above train.skip_update_zscore = {zscore}",
                z(loss_z),
                z(grad_norm_z)
            ));
            let skipped = serde_json::json!({"step": done, "loss": loss, "grad_norm": grad_norm, "loss_z": loss_z, "grad_norm_z": grad_norm_z, "threshold": zscore});
            run.monitor.event("skipped_update", "update", &skipped)?;
            run.summary.skipped_updates.push(done);
        }
        let optimizer_done = timing::mark(device)?;
        let elapsed = started.elapsed().saturating_sub(writing);
        run.train_time += elapsed;
        run.monitor.trained(done);
        run.summary.steps = done;
        let wait_ms = data_wait.as_secs_f64() * 1e3;
        run.summary.data_wait_ms.push((done, wait_ms));
        run.summary.data_wait_seconds += data_wait.as_secs_f64();
        // A step's batches are one group of copy timings; on a GPU they are read once their
        // events have completed (waiting only on steps that read back anyway), so a step's
        // line may come a few steps later, still in step order. Group g is closed by the
        // g-th call (from 0): the step it was made at is group_steps[g] (a step redone after a
        // rollback is there again).
        group_steps.push(done);
        for (group, copy) in loader.take_copy_timing(reads)? {
            let copied = group_steps[group as usize];
            if let Some(file) = copy_log.as_mut() {
                let overlap = copy.overlap().map_or("-".to_string(), |o| format!("{o:.3}"));
                file.append(&format!("{copied} {:.3} {overlap} {:.3}", copy.copy_ms, copy.stall_ms))?;
            }
            run.summary.copy_timings.push((copied, copy));
        }
        let mut val = None;
        if evaluates {
            let (v, _) = evaluate_windows(run.model.as_mut(), &data.val, eval_windows, run.plan.micro_batch, t.seq_len)?;
            if !v.is_finite() {
                let e = Error::Diverged { step: done, what: format!("the validation loss is {v}"), kept: String::new() };
                run.monitor.alert(logs::nonfinite_loss_alert(done, v))?;
                diverged!(e);
            }
            run.summary.val_losses.push((done, v));
            val = Some(v);
            run.last_val = Some(v);
        }
        if t.sample_interval > 0 && (last || done % t.sample_interval == 0) {
            run.sample(done)?;
        }
        let mut record = run.record(done, lr, elapsed, wait_ms, val);
        if let Some(task) = hellaswag.as_ref().filter(|_| last || done % t.hellaswag_interval == 0) {
            // At most the tokens of a training micro-batch per forward.
            let rows = (run.plan.micro_batch * t.seq_len / run.model.context_length().max(1)).clamp(1, crate::hellaswag::DEFAULT_ROWS);
            let s = crate::hellaswag::evaluate(run.model.as_mut(), task, t.hellaswag_examples, rows)?;
            let harness = s.acc.zip(s.acc_norm).map_or(String::new(), |(a, n)| format!("acc {a:.4} acc_norm {n:.4}, "));
            run.monitor.say(format!(
                "step {done}: hellaswag {harness}llmc_acc_norm {:.4} ({} examples)",
                s.llmc_acc_norm, s.examples
            ));
            record.hellaswag = Some((&s).into());
        }
        run.unread.push(Unread { record, loss, grad_norm, marks, optimizer: (optimizer_started, optimizer_done) });
        if reads {
            if let Err(e) = read_back(&mut run.unread, &mut run.summary, &mut run.monitor) {
                diverged!(e);
            }
        }
        if checkpoints {
            // Every batch of this step has been consumed: this is where the next step reads.
            // Every step so far was read back finite (above), so the weights are good.
            if last || stopping {
                run.checkpoint(done, loader.state(), windows)?;
            } else {
                pending = Some((done, loader.state()));
            }
        }
        if stopping {
            interrupted = signalled;
            break;
        }
        step = done;
    }
    let Run { monitor, mut summary, plan, train_time, .. } = run;
    summary.perf = monitor.finish()?;
    let trained = summary.losses.len() as u64;
    summary.memory = memory::stats(device);
    summary.final_plan = plan;
    summary.train_seconds = train_time.as_secs_f64();
    summary.tokens_per_sec = (trained * tokens_per_step) as f64 / summary.train_seconds.max(1e-9);
    if let Some(mut file) = copy_log {
        file.flush()?;
    }
    if summary.checkpoint.as_os_str().is_empty() {
        summary.checkpoint = checkpoint::resolve(&run_dir)?;
    }
    if let Some(signal) = interrupted {
        return Err(Error::Interrupted { signal, step: summary.steps, checkpoint: summary.checkpoint });
    }
    Ok(summary)
}

/// The random generator's seed of the sample after step `step` (`train.sample_interval`):
/// `run.seed + step`, its own generator, so training's draws never see it. `engine sample
/// <checkpoint of that step> --seed <it>` draws the same tokens.
pub fn sample_seed(run_seed: u64, step: u64) -> u64 {
    run_seed.wrapping_add(step)
}

impl Run<'_> {
    /// `train.sample_interval`'s sample after step `done`: `train.sample_tokens` tokens after
    /// `train.sample_prompt`, with `engine sample`'s defaults (temperature 0.8, no top-k or
    /// top-p cut, the KV cache when the model has one), as a `sample` line of events.jsonl.
    /// Only a forward without targets runs, its state released after, and the draws come from
    /// a generator of their own: the next step computes exactly what it would have.
    fn sample(&mut self, done: u64) -> Result<()> {
        let t = &self.config.train;
        let started = Instant::now();
        let tokenizer = datasets::tokenizer(&self.config.data.tokenizer)?;
        let seed = sample_seed(self.config.run.seed, done);
        let options = crate::sample::SampleOptions { prompt: t.sample_prompt.clone(), tokens: t.sample_tokens, seed, ..Default::default() };
        let prompt = crate::sample::prompt_ids(tokenizer.as_ref(), &options.prompt);
        let ids = crate::sample::sample_ids(self.model.as_mut(), tokenizer.as_ref(), &options)?;
        let generated = &ids[prompt.len()..];
        // The f32 settings as their shortest decimals (0.8, not 0.800000011920929).
        let decimal = |x: f32| x.to_string().parse::<f64>().expect("an f32's decimal form parses as an f64");
        let line = serde_json::json!({
            "step": done,
            "seed": seed,
            "prompt": options.prompt,
            "prompt_tokens": prompt.len(),
            "tokens": generated.len(),
            "temperature": decimal(options.temperature),
            "top_k": options.top_k,
            "top_p": decimal(options.top_p),
            "text": tokenizer.decode(generated),
            "token_ids": generated,
            "seconds": started.elapsed().as_secs_f64(),
        });
        self.monitor.event("sample", "sample", &line)
    }
}
