//! Performance logs: one JSON record per step (`metrics.jsonl`), the end-of-run summary
//! (`summary.json`) with mean/min/max/std/p50/p95 per metric, and MFU from a table of
//! devices' peak bf16 rates. Field by field in docs/CONFIG.md ("metrics.jsonl",
//! "summary.json").

use std::collections::BTreeMap;

use serde::Serialize;

/// Memory of the run's device pool after a step (kernels::memory), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MemoryRecord {
    /// Bytes held by live tensors.
    pub in_use: usize,
    /// The most in use since the run started.
    pub peak: usize,
    /// Bytes the pool holds: in use plus cached free blocks.
    pub reserved: usize,
    /// The pool's budget (`memory.budget` resolved); `None`: unlimited.
    pub budget: Option<usize>,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRecord {
    /// Steps completed (1-based, as in metrics.log).
    pub step: u64,
    /// Seconds since the run (this invocation) started, at the end of the step.
    pub time_s: f64,
    /// Training loss of the step, the mean over its micro-batches.
    pub loss: f32,
    /// Validation loss after this step, when evaluated.
    pub val_loss: Option<f32>,
    /// Learning rate the step used.
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens trained on in this step.
    pub tokens: u64,
    /// `tokens` / the step's wall time (`step_ms`).
    pub tokens_per_s: f64,
    /// Model FLOPs utilization in [0, 1]; `None` when the device's peak rate is unknown.
    pub mfu: Option<f64>,
    /// Wall time of the step (data wait, forward, backward, optimizer), milliseconds.
    pub step_ms: f64,
    /// Milliseconds of the step the host waited for the data loader; part of `step_ms`.
    pub data_wait_ms: f64,
    /// Milliseconds in the forward passes of all micro-batches: host timers on the CPU, CUDA
    /// events on the compute stream on a GPU (GPU time, not the time to queue the kernels).
    pub forward_ms: Option<f64>,
    /// Milliseconds in the backward passes of all micro-batches, timed as `forward_ms`.
    pub backward_ms: Option<f64>,
    /// Milliseconds in the AdamW step (clipping included), timed as `forward_ms`.
    pub optimizer_ms: Option<f64>,
    /// The device pool after the step.
    pub memory: MemoryRecord,
    /// Sequences per micro-batch the step ran with (after any out-of-memory change).
    pub micro_batch: usize,
    /// Micro-batches the step ran.
    pub grad_accum: usize,
    /// The recomputation policy the step ran with ("none", "selective", "full", "full:K").
    pub recompute: String,
    /// HellaSwag after this step (`train.hellaswag_interval`); its fields are left out of
    /// the line when not evaluated.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub hellaswag: Option<HellaSwagRecord>,
}

/// HellaSwag accuracies in a `metrics.jsonl` line (crate::hellaswag has the definitions).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HellaSwagRecord {
    /// lm-eval-harness's `acc`; left out for an llm.c `.bin` (llm.c's rendering only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hellaswag_acc: Option<f64>,
    /// lm-eval-harness's `acc_norm` (log-likelihood per character); left out for a `.bin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hellaswag_acc_norm: Option<f64>,
    /// `acc` on llm.c's rendering.
    pub hellaswag_llmc_acc: f64,
    /// llm.c's `acc_norm` (mean token loss) on its rendering.
    pub hellaswag_llmc_acc_norm: f64,
    /// Examples scored.
    pub hellaswag_examples: usize,
}

impl From<&crate::hellaswag::Summary> for HellaSwagRecord {
    fn from(s: &crate::hellaswag::Summary) -> Self {
        Self {
            hellaswag_acc: s.acc,
            hellaswag_acc_norm: s.acc_norm,
            hellaswag_llmc_acc: s.llmc_acc,
            hellaswag_llmc_acc_norm: s.llmc_acc_norm,
            hellaswag_examples: s.examples,
        }
    }
}

/// Summary statistics of one metric over the summarized steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// Values summarized (NaNs left out).
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Population standard deviation (divides by `count`).
    pub std: f64,
    /// Percentiles by linear interpolation between the closest ranks (numpy's default).
    pub p50: f64,
    /// 95th percentile, interpolated as `p50`.
    pub p95: f64,
}

/// Statistics of `values` (`None` when empty; NaNs are skipped).
pub fn stats(values: &[f64]) -> Option<Stats> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    Some(Stats { count: v.len(), mean, min: v[0], max: v[v.len() - 1], std: var.sqrt(), p50: percentile(&v, 50.0), p95: percentile(&v, 95.0) })
}

/// The `q`-th percentile of sorted `v`: linear interpolation at rank `q/100 * (n - 1)`.
fn percentile(v: &[f64], q: f64) -> f64 {
    let rank = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The device the run trained on (`cpu`, or `cuda:N <GPU name>`) and its precision.
    pub device: String,
    /// "fp32" or "bf16".
    pub precision: String,
    /// Steps this invocation trained, and the first ones left out of `metrics` (warm-up:
    /// compilation, first allocations).
    pub steps: u64,
    /// `logs.warmup_steps`, or 0 when the invocation trained no more steps than that.
    pub warmup_steps_excluded: u64,
    /// The first step of this invocation (1-based, as in metrics.log); 0 if none trained.
    pub first_step: u64,
    /// The last step of this invocation; 0 if none trained.
    pub last_step: u64,
    /// Tokens trained in this invocation, warm-up steps included.
    pub tokens: u64,
    /// Wall time of the run from start to the last step's end, and of the steps alone.
    pub wall_seconds: f64,
    /// The sum of the steps' `step_ms`, in seconds.
    pub train_seconds: f64,
    /// Training loss of the last step; `None` if no step was trained.
    pub final_loss: Option<f32>,
    /// The latest validation loss of this invocation; `None` if it never evaluated.
    pub final_val_loss: Option<f32>,
    /// Per metric over the summarized steps: loss, grad_norm, tokens_per_s, mfu, step_ms,
    /// data_wait_ms, forward_ms, backward_ms, optimizer_ms, memory_in_use, memory_peak.
    pub metrics: BTreeMap<String, Stats>,
    /// The device's peak bf16 rate used for MFU, TFLOP/s, and where it came from.
    pub peak_tflops: Option<f64>,
    /// `"logs.peak_tflops"`, `"table: <GPU name>"` or `"unknown: <device> ..."` (no MFU).
    pub peak_tflops_source: String,
    /// Every alert raised during the run, in order.
    pub alerts: Vec<Alert>,
    /// What the logs themselves cost (crate::monitor fills it in).
    pub logging: LoggingCost,
}

/// The time the performance logs took during the run, host wall time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LoggingCost {
    /// In the trainer's thread, after each step: metrics.log and metrics.jsonl lines,
    /// alerts, the terminal. Milliseconds, all steps together.
    pub step_logging_ms: f64,
    /// In the telemetry thread: samples taken, and milliseconds taking and writing them.
    pub telemetry_samples: u64,
    /// Milliseconds the telemetry thread spent taking and writing its samples.
    pub telemetry_ms: f64,
    /// (step_logging_ms + telemetry_ms) / the steps' time (`train_seconds`): an upper bound
    /// of the share of step time the logs took (the telemetry thread runs beside training
    /// and only slows it where it competes for a core).
    pub share_of_step_time: f64,
}

/// Thresholds of the alerts (`[logs]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlertThresholds {
    /// Data stall: data wait above this fraction of the step time.
    pub data_stall: f64,
    /// Memory: the pool's peak above this fraction of the budget.
    pub memory: f64,
    /// Loss spike: a loss above this multiple of the median of the previous steps' losses
    /// (the last [`SPIKE_WINDOW`], at least [`SPIKE_MIN_STEPS`] of them).
    pub loss_spike: f64,
    /// Steps at the start of the run that raise no data-stall alert (the loader starting).
    pub warmup_steps: u64,
}

/// The loss-spike alert compares with the median of at most this many previous losses.
pub const SPIKE_WINDOW: usize = 20;

/// A data wait shorter than this is no stall, whatever its share: a model whose step takes
/// 0.1 ms waits a few microseconds on any loader (timer noise, a thread wake-up).
pub const MIN_STALL_MS: f64 = 1.0;
/// Previous (finite) losses needed before the loss-spike alert is checked at all.
pub const SPIKE_MIN_STEPS: usize = 5;

/// Something a user should look at, raised at one step (events.jsonl, the terminal,
/// summary.json).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// The step it was raised at, 1-based as in metrics.log; for the telemetry alerts, the
    /// steps completed when the sample was taken.
    pub step: u64,
    /// "data_stall", "memory_near_budget", "nonfinite_loss", "nonfinite_update" (the trainer's
    /// guard) or "loss_spike"; from telemetry
    /// ([`crate::telemetry`]), "gpu_throttling" or "low_gpu_utilization".
    pub kind: &'static str,
    /// The line printed on the terminal (after `alert: step N: `), with what to do.
    pub message: String,
    /// The measured value and the threshold it crossed (in the unit the message gives).
    pub value: f64,
    /// The threshold from `[logs]` (0 for `nonfinite_loss`).
    pub threshold: f64,
}

/// The alert for a step whose loss is NaN or infinite.
pub fn nonfinite_loss_alert(step: u64, loss: f32) -> Alert {
    Alert { step, kind: "nonfinite_loss", message: format!("the loss is {loss}: training diverged"), value: loss as f64, threshold: 0.0 }
}

/// Edge triggering of alerts by kind: an alert rises when its condition starts to hold and
/// not again until it has stopped holding.
#[derive(Clone, Debug, Default)]
pub struct Edges(BTreeMap<&'static str, bool>);

impl Edges {
    /// Records whether `kind`'s condition holds now; true when it just started to.
    pub fn rises(&mut self, kind: &'static str, holds: bool) -> bool {
        let was = self.0.insert(kind, holds).unwrap_or(false);
        holds && !was
    }
}

/// Checks each step's record against the thresholds. An alert is raised when its condition
/// starts to hold and not again until it has stopped holding (no alert per step during a
/// long stall).
#[derive(Clone, Debug)]
pub struct Alerter {
    thresholds: AlertThresholds,
    losses: std::collections::VecDeque<f64>,
    edges: Edges,
    seen: u64,
}

impl Alerter {
    /// An alerter that has seen no step yet.
    pub fn new(thresholds: AlertThresholds) -> Self {
        Self { thresholds, losses: Default::default(), edges: Edges::default(), seen: 0 }
    }

    /// The alerts this step raises.
    pub fn check(&mut self, r: &StepRecord) -> Vec<Alert> {
        let th = self.thresholds;
        self.seen += 1;
        let mut found: Vec<(&'static str, bool, f64, f64, String)> = Vec::new();
        let stall = r.data_wait_ms / r.step_ms.max(1e-9);
        found.push((
            "data_stall",
            self.seen > th.warmup_steps && stall > th.data_stall && r.data_wait_ms >= MIN_STALL_MS,
            stall,
            th.data_stall,
            format!(
                "data stall: the step waited {:.1} ms of {:.1} ms ({:.1}%, threshold {:.1}%) for the data loader; raise data.num_workers or data.prefetch",
                r.data_wait_ms,
                r.step_ms,
                100.0 * stall,
                100.0 * th.data_stall
            ),
        ));
        if let Some(budget) = r.memory.budget {
            let share = r.memory.peak as f64 / budget as f64;
            found.push((
                "memory_near_budget",
                share > th.memory,
                share,
                th.memory,
                format!(
                    "memory near the budget: peak {} of {} ({:.1}%, threshold {:.1}%); an out-of-memory error would shrink the micro-batch",
                    kernels::memory::fmt_bytes(r.memory.peak),
                    kernels::memory::fmt_bytes(budget),
                    100.0 * share,
                    100.0 * th.memory
                ),
            ));
        }
        let loss = r.loss as f64;
        let nonfinite = nonfinite_loss_alert(r.step, r.loss);
        found.push(("nonfinite_loss", !loss.is_finite(), loss, 0.0, nonfinite.message));
        if loss.is_finite() {
            if self.losses.len() >= SPIKE_MIN_STEPS && th.loss_spike > 0.0 {
                let mut recent: Vec<f64> = self.losses.iter().copied().collect();
                recent.sort_by(f64::total_cmp);
                let median = percentile(&recent, 50.0);
                let ratio = loss / median;
                found.push((
                    "loss_spike",
                    ratio > th.loss_spike,
                    ratio,
                    th.loss_spike,
                    format!(
                        "loss spike: {loss:.4} is {ratio:.2}x the median {median:.4} of the last {} steps (threshold {:.2}x)",
                        recent.len(),
                        th.loss_spike
                    ),
                ));
            }
            self.losses.push_back(loss);
            if self.losses.len() > SPIKE_WINDOW {
                self.losses.pop_front();
            }
        }
        let mut raised = Vec::new();
        for (kind, holds, value, threshold, message) in found {
            if self.edges.rises(kind, holds) {
                raised.push(Alert { step: r.step, kind, message, value, threshold });
            }
        }
        raised
    }
}

/// The summary of `records` (this invocation's steps, in order), leaving out the first
/// `warmup` of them from the statistics (all of them are counted when there are no more).
/// `device` names the (device, precision) the run trained on.
pub fn summarize(
    records: &[StepRecord],
    warmup: u64,
    wall_seconds: f64,
    peak: (Option<f64>, String),
    alerts: Vec<Alert>,
    (device, precision): (String, String),
) -> Summary {
    let skip = if (records.len() as u64) > warmup { warmup as usize } else { 0 };
    let kept = &records[skip..];
    let mut metrics = BTreeMap::new();
    let mut add = |name: &str, f: &dyn Fn(&StepRecord) -> Option<f64>| {
        let v: Vec<f64> = kept.iter().filter_map(f).collect();
        if let Some(s) = stats(&v) {
            metrics.insert(name.to_string(), s);
        }
    };
    add("loss", &|r| Some(r.loss as f64));
    add("grad_norm", &|r| Some(r.grad_norm as f64));
    add("tokens_per_s", &|r| Some(r.tokens_per_s));
    add("mfu", &|r| r.mfu);
    add("step_ms", &|r| Some(r.step_ms));
    add("data_wait_ms", &|r| Some(r.data_wait_ms));
    add("forward_ms", &|r| r.forward_ms);
    add("backward_ms", &|r| r.backward_ms);
    add("optimizer_ms", &|r| r.optimizer_ms);
    add("memory_in_use", &|r| Some(r.memory.in_use as f64));
    add("memory_peak", &|r| Some(r.memory.peak as f64));
    Summary {
        device,
        precision,
        steps: records.len() as u64,
        warmup_steps_excluded: skip as u64,
        first_step: records.first().map_or(0, |r| r.step),
        last_step: records.last().map_or(0, |r| r.step),
        tokens: records.iter().map(|r| r.tokens).sum(),
        wall_seconds,
        train_seconds: records.iter().map(|r| r.step_ms).sum::<f64>() / 1e3,
        final_loss: records.last().map(|r| r.loss),
        final_val_loss: records.iter().rev().find_map(|r| r.val_loss),
        metrics,
        peak_tflops: peak.0,
        peak_tflops_source: peak.1,
        alerts,
        logging: LoggingCost::default(),
    }
}

/// Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) by GPU name, from the vendors'
/// data sheets; the first entry whose every word is in the name wins, so more specific
/// names come first.
const PEAK_BF16_TFLOPS: [(&str, f64); 10] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
];

/// The peak bf16 rate of a device named `name` (`None`: unknown, e.g. a CPU).
pub fn peak_tflops_for(name: &str) -> Option<f64> {
    PEAK_BF16_TFLOPS.iter().find(|(key, _)| key.split(' ').all(|w| name.split([' ', '-']).any(|n| n == w))).map(|&(_, t)| t)
}

/// MFU = FLOPs per token x tokens/s / peak FLOP/s.
pub fn mfu(flops_per_token: f64, tokens_per_s: f64, peak_tflops: Option<f64>) -> Option<f64> {
    peak_tflops.filter(|p| *p > 0.0).map(|p| flops_per_token * tokens_per_s / (p * 1e12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_known_values() {
        // 1..=10: mean 5.5, population variance 8.25, p50 5.5, p95 at rank 8.55 -> 9.55.
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = stats(&v).unwrap();
        assert_eq!((s.count, s.mean, s.min, s.max, s.p50), (10, 5.5, 1.0, 10.0, 5.5));
        assert!((s.std - 8.25f64.sqrt()).abs() < 1e-12, "{}", s.std);
        assert!((s.p95 - 9.55).abs() < 1e-12, "{}", s.p95);
        // Order does not matter, NaNs are skipped, one value is its own everything.
        let s = stats(&[3.0, f64::NAN, 1.0, 2.0]).unwrap();
        assert_eq!((s.count, s.mean, s.p50, s.std), (3, 2.0, 2.0, (2.0f64 / 3.0).sqrt()));
        let s = stats(&[7.0]).unwrap();
        assert_eq!((s.mean, s.std, s.p50, s.p95), (7.0, 0.0, 7.0, 7.0));
        assert!(stats(&[]).is_none() && stats(&[f64::NAN]).is_none());
    }

    fn record(step: u64, step_ms: f64) -> StepRecord {
        StepRecord {
            step,
            time_s: step as f64,
            loss: 10.0 - step as f32,
            val_loss: (step == 3).then_some(7.5),
            lr: 1e-3,
            grad_norm: 1.0,
            tokens: 100,
            tokens_per_s: 100.0 / (step_ms / 1e3),
            mfu: None,
            step_ms,
            data_wait_ms: 0.0,
            forward_ms: Some(step_ms / 2.0),
            backward_ms: Some(step_ms / 2.0),
            optimizer_ms: Some(0.0),
            memory: MemoryRecord::default(),
            micro_batch: 1,
            grad_accum: 1,
            recompute: "none".into(),
            hellaswag: None,
        }
    }

    #[test]
    fn summary_leaves_out_the_warm_up() {
        let records: Vec<StepRecord> = [500.0, 10.0, 20.0, 30.0].iter().enumerate().map(|(i, &ms)| record(i as u64 + 1, ms)).collect();
        let s = summarize(&records, 1, 2.0, (None, "unknown".into()), Vec::new(), ("cpu".into(), "fp32".into()));
        assert_eq!((s.device.as_str(), s.precision.as_str()), ("cpu", "fp32"));
        assert_eq!((s.steps, s.warmup_steps_excluded, s.first_step, s.last_step, s.tokens), (4, 1, 1, 4, 400));
        assert_eq!(s.metrics["step_ms"].mean, 20.0, "the 500 ms first step is left out");
        assert_eq!(s.metrics["loss"].min, 6.0);
        assert!((s.train_seconds - 0.56).abs() < 1e-12);
        assert_eq!((s.final_loss, s.final_val_loss), (Some(6.0), Some(7.5)));
        assert!(!s.metrics.contains_key("mfu"), "no MFU without a peak rate");
        // Fewer steps than the warm-up: all are counted.
        assert_eq!(summarize(&records[..1], 5, 1.0, (None, String::new()), Vec::new(), Default::default()).metrics["step_ms"].mean, 500.0);
    }

    fn thresholds() -> AlertThresholds {
        AlertThresholds { data_stall: 0.05, memory: 0.95, loss_spike: 2.0, warmup_steps: 1 }
    }

    #[test]
    fn data_stall_is_raised_once_per_stall_after_the_warm_up() {
        let mut a = Alerter::new(thresholds());
        let mut r = record(1, 100.0);
        r.data_wait_ms = 50.0;
        assert!(a.check(&r).is_empty(), "the first step is warm-up");
        r.step = 2;
        let raised = a.check(&r);
        assert_eq!(raised.len(), 1);
        assert_eq!((raised[0].kind, raised[0].step, raised[0].value, raised[0].threshold), ("data_stall", 2, 0.5, 0.05));
        assert!(raised[0].message.contains("50.0 ms of 100.0 ms (50.0%, threshold 5.0%)"), "{}", raised[0].message);
        r.step = 3;
        assert!(a.check(&r).is_empty(), "still stalled: not raised again");
        r.data_wait_ms = 1.0;
        assert!(a.check(&r).is_empty());
        r.data_wait_ms = 6.0;
        assert_eq!(a.check(&r).len(), 1, "a new stall");
        // A tiny model's step: 0.05 of 0.1 ms is half the step, but no stall.
        let mut tiny = Alerter::new(thresholds());
        let mut r = record(1, 0.1);
        r.data_wait_ms = 0.05;
        assert!((1..10).all(|step| {
            r.step = step;
            tiny.check(&r).is_empty()
        }));
    }

    #[test]
    fn memory_near_the_budget() {
        let mut a = Alerter::new(thresholds());
        let mut r = record(1, 10.0);
        r.memory = MemoryRecord { in_use: 90, peak: 94, reserved: 95, budget: Some(100) };
        assert!(a.check(&r).is_empty());
        r.memory.peak = 96;
        let raised = a.check(&r);
        assert_eq!((raised.len(), raised[0].kind), (1, "memory_near_budget"));
        assert!(raised[0].message.contains("peak 96 B of 100 B (96.0%, threshold 95.0%)"), "{}", raised[0].message);
        r.memory.budget = None;
        assert!(a.check(&r).is_empty(), "no budget, no alert");
    }

    #[test]
    fn loss_spike_against_the_recent_median_and_nonfinite_loss() {
        let mut a = Alerter::new(thresholds());
        for (i, loss) in [4.0f32, 3.9, 3.8, 3.7, 3.6].iter().enumerate() {
            let mut r = record(i as u64 + 1, 10.0);
            r.loss = *loss;
            assert!(a.check(&r).is_empty());
        }
        let mut r = record(6, 10.0);
        r.loss = 7.0; // median 3.8: 1.84x, under 2x
        assert!(a.check(&r).is_empty());
        r.step = 7;
        r.loss = 8.0; // median of 3.6, 3.7, 3.8, 3.9, 4.0, 7.0 = 3.85: 2.08x
        let raised = a.check(&r);
        assert_eq!((raised.len(), raised[0].kind), (1, "loss_spike"), "{raised:?}");
        assert!(raised[0].message.contains("8.0000 is 2.08x the median 3.8500 of the last 6 steps"), "{}", raised[0].message);
        r.step = 8;
        r.loss = f32::NAN;
        let raised = a.check(&r);
        assert_eq!((raised.len(), raised[0].kind), (1, "nonfinite_loss"));
        assert!(raised[0].message.contains("the loss is NaN"), "{}", raised[0].message);
    }

    #[test]
    fn peak_rates_by_name() {
        assert_eq!(peak_tflops_for("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(peak_tflops_for("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(peak_tflops_for("NVIDIA H200"), Some(989.0));
        assert_eq!(peak_tflops_for("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(peak_tflops_for("NVIDIA L40S"), Some(362.0));
        assert_eq!(peak_tflops_for("NVIDIA L4"), Some(121.0));
        assert_eq!(peak_tflops_for("NVIDIA A10"), Some(125.0));
        assert_eq!(peak_tflops_for("NVIDIA A10G"), None, "not guessed from a prefix");
        assert_eq!(peak_tflops_for("cpu"), None);
        assert_eq!(mfu(6.0e9, 1.0e5, Some(1000.0)), Some(0.6));
        assert_eq!(mfu(6.0e9, 1.0e5, None), None);
    }
}
