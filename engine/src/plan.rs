//! The memory planner: picks the micro-batch, the gradient accumulation and the
//! recomputation policy that train fastest within `memory.budget`, keeping the global batch.
//!
//! # How it decides
//! 1. **Measure**: for each recomputation policy (least recomputation first: none,
//!    selective, full:K for K = L/2 .. 2, full), the peak pool memory of one whole training
//!    step (the step's batch, forward + backward of one micro-batch, the optimizer) is
//!    measured at micro-batches 1 and 2 on a throw-away copy of the model. Memory is close
//!    to affine in the micro-batch, so `peak(b) = base + slope * b` predicts the rest.
//! 2. **Fit**: for each policy, the largest micro-batch that divides the step's sequences
//!    (so the accumulation is whole and the global batch exact) with a predicted peak within
//!    the budget.
//! 3. **Choose**: the least recomputation whose micro-batch still holds
//!    `memory.min_micro_tokens` tokens (or the whole step): past that size a bigger
//!    micro-batch gains little and recomputation costs time. If no policy gets there, the
//!    biggest micro-batch wins (less recomputation on a tie). Deterministic: it depends on
//!    measured bytes only, never on timings, so the same config gives the same plan.
//! 4. **Verify**: the chosen plan's step is measured at its real size; if it exceeds the
//!    budget after all, that policy's micro-batch steps down and the choice is made again.
//!
//! Settings the config gives explicitly (train.batch_size or train.grad_accum,
//! train.recompute) are kept; the planner chooses the rest and still checks the result
//! fits. Without a budget nothing is measured and the config's settings are used.
//!
//! At run time, [`Plan::shrink`] gives the next plan after an out-of-memory error: a smaller
//! micro-batch, or more recomputation once the micro-batch is 1.

use std::fmt::Write as _;

use kernels::memory::{self, fmt_bytes};
use kernels::{DType, Device, Tensor};
use models::{Model, Recompute};
use serde::Serialize;

use crate::optim::{zero_grad, AdamW};
use crate::Result;

/// Measures one training step's peak memory.
pub trait PeakProbe {
    /// Peak bytes in use above what was in use before, during one training step with a
    /// micro-batch of `micro` sequences under `policy`.
    fn step_peak(&mut self, policy: Recompute, micro: usize) -> Result<usize>;
}

/// What the planner works from.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// Sequences per optimizer step (the global batch; never changed).
    pub global_batch: usize,
    /// Tokens per sequence (`train.seq_len`).
    pub seq_len: usize,
    /// Bytes; `None`: unlimited (nothing is measured).
    pub budget: Option<usize>,
    /// A micro-batch fixed by the config.
    pub micro_batch: Option<usize>,
    /// A policy fixed by the config.
    pub policy: Option<Recompute>,
    /// The policies to choose from, least recomputation first.
    pub candidates: Vec<Recompute>,
    /// Tokens a micro-batch should hold before more recomputation is preferred to a bigger
    /// micro-batch (`memory.min_micro_tokens`).
    pub min_micro_tokens: usize,
}

/// One policy's line in the plan table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanRow {
    /// The recomputation policy of this row.
    #[serde(serialize_with = "serialize_policy")]
    pub policy: Recompute,
    /// The largest micro-batch that fits (`None`: not even 1).
    pub micro_batch: Option<usize>,
    /// Micro-batches per step at `micro_batch` (`None` when nothing fits).
    pub grad_accum: Option<usize>,
    /// Predicted peak bytes at `micro_batch` (at 1 when nothing fits).
    pub predicted_peak: usize,
    /// Measured peak bytes at `micro_batch`, where it was measured.
    pub measured_peak: Option<usize>,
    /// The measurements the prediction comes from, (micro-batch, peak bytes): at the two
    /// smallest allowed micro-batches, or the one a config fixes.
    pub probes: Vec<(usize, usize)>,
    /// Whether this is the row the plan chose.
    pub chosen: bool,
}

/// How the step is split and what it keeps: the planner's choice or the config's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// The recomputation policy the model runs with.
    #[serde(serialize_with = "serialize_policy")]
    pub policy: Recompute,
    /// Sequences per micro-batch (one forward and backward).
    pub micro_batch: usize,
    /// Micro-batches per optimizer step: `global_batch / micro_batch`.
    pub grad_accum: usize,
    /// Sequences per optimizer step; the same in every plan of a run.
    pub global_batch: usize,
    /// Tokens per sequence (`train.seq_len`).
    pub seq_len: usize,
    /// The pool budget planned for, bytes; `None`: unlimited.
    pub budget: Option<usize>,
    /// The affine prediction of the chosen step's peak, bytes; `None` unless `source` is
    /// "planner".
    pub predicted_peak: Option<usize>,
    /// The chosen step's peak as measured, bytes; `None` unless `source` is "planner".
    pub measured_peak: Option<usize>,
    /// "planner" (measured) or "config" (no budget: the config's settings as given);
    /// "run-time" for a plan [`Plan::shrink`] made after an out-of-memory error.
    pub source: &'static str,
    /// Every policy considered, in candidate order; empty unless `source` is "planner".
    pub rows: Vec<PlanRow>,
}

/// Serializes a policy as its config string ("none", "full:2", ...).
pub fn serialize_policy<S: serde::Serializer>(p: &Recompute, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(p)
}

/// Why no plan fits: the smallest step measured and the budget.
#[derive(Clone, Debug, PartialEq)]
pub struct NoFit {
    /// The policy of the smallest step measured.
    pub policy: Recompute,
    /// Its micro-batch (the smallest allowed: 1, or the one the config fixes).
    pub micro_batch: usize,
    /// Its measured peak, bytes.
    pub needed: usize,
    /// The budget it exceeds, bytes.
    pub budget: usize,
}

/// The affine model of one policy's peak: `base + slope * micro`.
#[derive(Clone, Copy, Debug)]
struct Fit {
    base: f64,
    slope: f64,
}

impl Fit {
    fn predict(self, micro: usize) -> usize {
        (self.base + self.slope * micro as f64).max(0.0).ceil() as usize
    }
}

impl Plan {
    /// The config's settings as given, nothing measured (no budget).
    pub fn from_settings(global_batch: usize, seq_len: usize, micro_batch: usize, policy: Recompute) -> Self {
        Plan {
            policy,
            micro_batch,
            grad_accum: global_batch / micro_batch,
            global_batch,
            seq_len,
            budget: None,
            predicted_peak: None,
            measured_peak: None,
            source: "config",
            rows: Vec::new(),
        }
    }

    /// Tokens in one micro-batch: `micro_batch * seq_len`.
    pub fn tokens_per_micro_batch(&self) -> usize {
        self.micro_batch * self.seq_len
    }

    /// The plan to try after an out-of-memory error: the next smaller micro-batch that
    /// divides the step, or, at micro-batch 1, the next policy with more recomputation
    /// (from `candidates`, least first) at micro-batch 1. `None`: nothing is left to try.
    pub fn shrink(&self, candidates: &[Recompute]) -> Option<Plan> {
        let mut next = self.clone();
        next.source = "run-time";
        next.predicted_peak = None;
        next.measured_peak = None;
        next.rows = Vec::new();
        if let Some(b) = (1..self.micro_batch).rev().find(|b| self.global_batch.is_multiple_of(*b)) {
            next.micro_batch = b;
        } else {
            let at = candidates.iter().position(|&p| p == self.policy)?;
            next.policy = *candidates.get(at + 1)?;
        }
        next.grad_accum = next.global_batch / next.micro_batch;
        Some(next)
    }

    /// The table people read: one line per policy, the chosen one marked.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let budget = self.budget.map_or("unlimited".to_string(), fmt_bytes);
        let _ = writeln!(
            out,
            "memory plan ({}): budget {budget}; {} sequences x {} tokens per step",
            self.source, self.global_batch, self.seq_len
        );
        let _ = writeln!(out, "  {:<10} {:>6} {:>6} {:>12} {:>12} {:>20}", "policy", "micro", "accum", "predicted", "measured", "headroom");
        for row in &self.rows {
            let dash = || "-".to_string();
            let micro = row.micro_batch.map_or_else(dash, |b| b.to_string());
            let accum = row.grad_accum.map_or_else(dash, |a| a.to_string());
            let measured = row.measured_peak.map_or_else(dash, fmt_bytes);
            let used = row.measured_peak.unwrap_or(row.predicted_peak);
            let headroom = match (self.budget, row.micro_batch) {
                (Some(b), Some(_)) if used <= b => format!("{} ({:.1}%)", fmt_bytes(b - used), 100.0 * (b - used) as f64 / b as f64),
                (Some(_), None) => "does not fit at 1".to_string(),
                _ => dash(),
            };
            let mark = if row.chosen { "  <- chosen" } else { "" };
            let _ = writeln!(
                out,
                "  {:<10} {micro:>6} {accum:>6} {:>12} {measured:>12} {headroom:>20}{mark}",
                row.policy.to_string(),
                fmt_bytes(row.predicted_peak)
            );
        }
        let _ = write!(
            out,
            "plan: recompute {}, micro-batch {} x {} accumulation = {} sequences per step",
            self.policy, self.micro_batch, self.grad_accum, self.global_batch
        );
        out
    }
}

/// Plans `request` by measuring with `probe` (module docs). `Err(NoFit)` when no policy
/// allowed fits the budget even at the smallest micro-batch allowed.
pub fn plan(probe: &mut dyn PeakProbe, request: &PlanRequest) -> Result<std::result::Result<Plan, NoFit>> {
    let g = request.global_batch;
    let budget = request.budget.unwrap_or(usize::MAX);
    let divisors: Vec<usize> = match request.micro_batch {
        Some(b) => vec![b],
        None => (1..=g).filter(|b| g.is_multiple_of(*b)).collect(),
    };
    let policies: Vec<Recompute> = match request.policy {
        Some(p) => vec![p],
        None => request.candidates.clone(),
    };
    // Measure at the two smallest allowed sizes (one if only one is allowed).
    let mut rows = Vec::new();
    let mut fits = Vec::new();
    for &policy in &policies {
        let sizes: Vec<usize> = divisors.iter().copied().take(2).collect();
        let mut probes = Vec::new();
        for &b in &sizes {
            probes.push((b, probe.step_peak(policy, b)?));
        }
        let fit = match probes[..] {
            [(b1, p1), (b2, p2)] => {
                let slope = (p2 as f64 - p1 as f64).max(0.0) / (b2 - b1) as f64;
                Fit { base: p1 as f64 - slope * b1 as f64, slope }
            }
            // One size allowed: proportional (only that size is ever asked for).
            [(b1, p1)] => Fit { base: 0.0, slope: p1 as f64 / b1 as f64 },
            _ => unreachable!("at least one allowed micro-batch"),
        };
        fits.push(fit);
        rows.push(PlanRow {
            policy,
            micro_batch: None,
            grad_accum: None,
            predicted_peak: probes[0].1,
            measured_peak: None,
            probes,
            chosen: false,
        });
    }
    // The largest allowed micro-batch each policy fits (by prediction; by measurement
    // where measured).
    let mut limit: Vec<Option<usize>> = vec![None; policies.len()];
    for (i, row) in rows.iter_mut().enumerate() {
        limit[i] = divisors
            .iter()
            .rev()
            .copied()
            .find(|&b| row.probes.iter().find(|p| p.0 == b).map_or(fits[i].predict(b), |p| p.1) <= budget);
    }
    let target = g.min(request.min_micro_tokens.div_ceil(request.seq_len)).max(1);
    loop {
        let preferred = (0..policies.len()).find(|&i| limit[i].is_some_and(|b| b >= target));
        let best = preferred.or_else(|| {
            // The biggest micro-batch; the earlier (less recomputation) policy on a tie.
            (0..policies.len()).filter(|&i| limit[i].is_some()).fold(None, |acc: Option<usize>, i| match acc {
                Some(a) if limit[a] >= limit[i] => Some(a),
                _ => Some(i),
            })
        });
        let Some(i) = best else {
            // Nothing fits: report the smallest step measured (the last policy at the
            // smallest size is the most recomputation at micro-batch 1).
            let (policy, (micro, needed)) = rows.iter().map(|r| (r.policy, r.probes[0])).min_by_key(|&(_, (_, peak))| peak).expect("a row");
            return Ok(Err(NoFit { policy, micro_batch: micro, needed, budget }));
        };
        let b = limit[i].expect("fits");
        let measured = match rows[i].probes.iter().find(|p| p.0 == b) {
            Some(&(_, peak)) => peak,
            None => probe.step_peak(policies[i], b)?,
        };
        rows[i].measured_peak = Some(measured);
        if measured <= budget {
            for (k, row) in rows.iter_mut().enumerate() {
                row.micro_batch = limit[k];
                row.grad_accum = limit[k].map(|b| g / b);
                if let Some(b) = limit[k] {
                    row.predicted_peak = fits[k].predict(b);
                }
                if row.measured_peak.is_some() && k != i {
                    // A rejected measurement belonged to a bigger micro-batch than shown.
                    row.measured_peak = row.probes.iter().find(|p| Some(p.0) == limit[k]).map(|p| p.1);
                }
                if k == i {
                    row.chosen = true;
                    row.measured_peak = Some(measured);
                }
            }
            let predicted = fits[i].predict(b);
            return Ok(Ok(Plan {
                policy: policies[i],
                micro_batch: b,
                grad_accum: g / b,
                global_batch: g,
                seq_len: request.seq_len,
                budget: request.budget,
                predicted_peak: Some(predicted),
                measured_peak: Some(measured),
                source: "planner",
                rows,
            }));
        }
        // The prediction was optimistic: this policy steps down one size.
        limit[i] = divisors.iter().rev().copied().find(|&d| d < b);
    }
}

/// A [`PeakProbe`] that runs real training steps on a throw-away model and optimizer: the
/// step's whole batch of token ids on the device, one micro-batch cut from it, forward,
/// backward, and an optimizer step at learning rate 0. Peaks count from what was in use
/// before the model was built, so they include its parameters, gradients and optimizer
/// state.
pub struct ModelProbe {
    model: Box<dyn Model>,
    opt: AdamW,
    device: Device,
    global_batch: usize,
    seq_len: usize,
    /// What the run holds beside one step (the device ring's other batches on a GPU).
    extra_bytes: usize,
    baseline: usize,
}

impl ModelProbe {
    /// Builds the model and its optimizer with `build` on `device`, which must be where
    /// `build` puts them.
    pub fn new(
        device: Device,
        global_batch: usize,
        seq_len: usize,
        extra_bytes: usize,
        build: impl FnOnce() -> Result<(Box<dyn Model>, AdamW)>,
    ) -> Result<Self> {
        let baseline = memory::in_use(device);
        let (model, opt) = build()?;
        Ok(Self { model, opt, device, global_batch, seq_len, extra_bytes, baseline })
    }

    /// The recomputation policies the probed model accepts, least recomputation first
    /// ([`Model::recompute_candidates`]).
    pub fn candidates(&self) -> Vec<Recompute> {
        self.model.recompute_candidates()
    }
}

impl PeakProbe for ModelProbe {
    fn step_peak(&mut self, policy: Recompute, micro: usize) -> Result<usize> {
        let (g, t) = (self.global_batch, self.seq_len);
        self.model.set_recompute(policy)?;
        self.model.release();
        zero_grad(self.model.as_mut())?;
        memory::reset_peak(self.device);
        let step = (|| -> Result<()> {
            let inputs = Tensor::try_zeros(self.device, DType::U32, &[g, t])?;
            let targets = Tensor::try_zeros(self.device, DType::U32, &[g, t])?;
            let (x, y) = (inputs.rows(0, micro)?, targets.rows(0, micro)?);
            self.model.forward(&x, Some(&y))?;
            self.model.backward(1.0 / (g / micro) as f32)?;
            drop((x, y));
            self.opt.step(self.model.as_mut(), 0.0)?;
            Ok(())
        })();
        let peak = memory::peak(self.device);
        self.model.release();
        step?;
        Ok(peak.saturating_sub(self.baseline) + self.extra_bytes)
    }
}

/// The message for a budget no plan fits, naming what was measured and the keys to change.
pub fn no_fit_message(no_fit: &NoFit, budget_text: &str, fixed_micro: bool, fixed_policy: bool) -> String {
    let what = match (fixed_micro, fixed_policy) {
        (false, false) => format!("even micro-batch {} with full recomputation", no_fit.micro_batch),
        (true, false) => format!("micro-batch {} (as the config fixes it) with full recomputation", no_fit.micro_batch),
        (false, true) => format!("micro-batch {} with train.recompute = \"{}\" (as the config sets it)", no_fit.micro_batch, no_fit.policy),
        (true, true) => format!("micro-batch {} with train.recompute = \"{}\" (both as the config sets them)", no_fit.micro_batch, no_fit.policy),
    };
    let fixed = if fixed_micro || fixed_policy { ", unset train.batch_size/train.grad_accum/train.recompute to let the planner choose" } else { "" };
    format!(
        "memory.budget = \"{budget_text}\" ({}) is too small: {what} needs {} (measured peak of one training step: parameters, \
         gradients, optimizer state and activations); raise memory.budget to at least {}{fixed}, or make the model or train.seq_len smaller",
        fmt_bytes(no_fit.budget),
        fmt_bytes(no_fit.needed),
        fmt_bytes(no_fit.needed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peaks from a formula: `base[policy] + per_seq[policy] * micro`, rounded up to a
    /// 4 KiB multiple at sizes above 8 (a mild non-affinity, as size classes give).
    struct FakeProbe {
        calls: Vec<(Recompute, usize)>,
    }

    const NONE: Recompute = Recompute::None;
    const SEL: Recompute = Recompute::Selective;
    const FULL: Recompute = Recompute::Full { every: 1 };

    fn peak(policy: Recompute, micro: usize) -> usize {
        let (base, per) = match policy {
            Recompute::None => (1000, 1000),
            Recompute::Selective => (1000, 700),
            _ => (1000, 200),
        };
        let p = base + per * micro;
        if micro > 8 {
            p.div_ceil(4096) * 4096
        } else {
            p
        }
    }

    impl PeakProbe for FakeProbe {
        fn step_peak(&mut self, policy: Recompute, micro: usize) -> Result<usize> {
            self.calls.push((policy, micro));
            Ok(peak(policy, micro))
        }
    }

    fn request(budget: usize) -> PlanRequest {
        PlanRequest {
            global_batch: 32,
            seq_len: 128,
            budget: Some(budget),
            micro_batch: None,
            policy: None,
            candidates: vec![NONE, SEL, FULL],
            min_micro_tokens: 1024,
        }
    }

    fn run(req: &PlanRequest) -> (std::result::Result<Plan, NoFit>, Vec<(Recompute, usize)>) {
        let mut probe = FakeProbe { calls: Vec::new() };
        let out = plan(&mut probe, req).unwrap();
        (out, probe.calls)
    }

    #[test]
    fn least_recomputation_while_the_micro_batch_is_big_enough() {
        // none fits 8 (9000 <= 9500), which holds 8 x 128 = 1024 tokens: chosen over
        // selective or full with bigger micro-batches.
        let (plan, calls) = run(&request(9500));
        let plan = plan.unwrap();
        assert_eq!((plan.policy, plan.micro_batch, plan.grad_accum), (NONE, 8, 4));
        assert_eq!(plan.measured_peak, Some(9000));
        assert_eq!(calls.last(), Some(&(NONE, 8)), "the choice is measured at its size");
        let table = plan.table();
        assert!(table.contains("<- chosen") && table.contains("none") && table.contains("8 x 4 accumulation = 32"), "{table}");
    }

    #[test]
    fn more_recomputation_when_the_micro_batch_would_be_too_small() {
        // none fits only 4 (< 8 sequences = 1024 tokens); selective fits 8.
        let (plan, _) = run(&request(6800));
        let plan = plan.unwrap();
        assert_eq!((plan.policy, plan.micro_batch, plan.grad_accum), (SEL, 8, 4));
        // Only full reaches 8.
        let (plan, _) = run(&request(3100));
        let plan = plan.unwrap();
        assert_eq!((plan.policy, plan.micro_batch), (FULL, 8));
        // No policy reaches 8: the biggest micro-batch wins (full at 4; none, selective at 1).
        let (plan, _) = run(&request(2300));
        let plan = plan.unwrap();
        assert_eq!((plan.policy, plan.micro_batch, plan.grad_accum), (FULL, 4, 8));
    }

    #[test]
    fn an_optimistic_prediction_steps_down_after_measuring() {
        // Predicted from 1 and 2: none at 16 = 17000 <= 17500, but measured 20480 (4 KiB
        // classes): the planner falls back to the next size.
        let mut req = request(17500);
        req.min_micro_tokens = 2048;
        let (plan, calls) = run(&req);
        let plan = plan.unwrap();
        assert!(calls.contains(&(NONE, 16)), "{calls:?}");
        assert_eq!((plan.policy, plan.micro_batch), (SEL, 16), "selective fits 16 by measurement: {}", plan.table());
        assert!(plan.measured_peak.unwrap() <= 17500);
    }

    #[test]
    fn fixed_settings_are_kept() {
        let mut req = request(6800);
        req.policy = Some(NONE);
        let plan = run(&req).0.unwrap();
        assert_eq!((plan.policy, plan.micro_batch, plan.grad_accum), (NONE, 4, 8));
        assert_eq!(plan.rows.len(), 1);
        let mut req = request(1_000_000);
        req.micro_batch = Some(2);
        let plan = run(&req).0.unwrap();
        assert_eq!((plan.policy, plan.micro_batch, plan.grad_accum), (NONE, 2, 16));
    }

    #[test]
    fn nothing_fits_names_the_smallest_step() {
        let (out, _) = run(&request(1100));
        assert_eq!(out.unwrap_err(), NoFit { policy: FULL, micro_batch: 1, needed: 1200, budget: 1100 });
        let msg = no_fit_message(&NoFit { policy: FULL, micro_batch: 1, needed: 1200, budget: 1100 }, "1100", false, false);
        assert!(msg.contains("memory.budget = \"1100\" (1.07 KiB)") && msg.contains("micro-batch 1 with full recomputation needs 1.17 KiB"), "{msg}");
    }

    #[test]
    fn shrink_halves_then_recomputes_more() {
        let p = Plan::from_settings(12, 64, 12, NONE);
        let steps: Vec<(Recompute, usize, usize)> = std::iter::successors(Some(p), |p| p.shrink(&[NONE, SEL, FULL])).map(|p| (p.policy, p.micro_batch, p.grad_accum)).collect();
        assert_eq!(steps, [(NONE, 12, 1), (NONE, 6, 2), (NONE, 4, 3), (NONE, 3, 4), (NONE, 2, 6), (NONE, 1, 12), (SEL, 1, 12), (FULL, 1, 12)]);
    }
}
