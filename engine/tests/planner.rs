//! The memory planner and run-time adaptation on the CPU pool, with real training steps:
//! under a budget that fits micro-batch 8 but not 16 the planner picks 8 with the
//! accumulation that keeps the global batch; every plan it makes fits its budget in a real
//! run; an out-of-memory error forced in the middle of a run is survived by redoing that
//! step from the same samples with a smaller micro-batch, leaving the parameters exactly as
//! a run planned that way.
//!
//! The CPU pool is one per process, so the tests here take turns (`POOL`) and restore an
//! unlimited budget when done.

use std::sync::{Arc, Mutex, MutexGuard};

use engine::config::Config;
use engine::kernels::memory;
use engine::kernels::Device;
use engine::models::{Precision, Recompute};
use engine::optim::AdamW;
use engine::plan::{ModelProbe, PeakProbe};
use engine::train::{adamw_config, plan_run, train, StepHook, TrainOptions, TrainSummary};
use tempfile::TempDir;

static POOL: Mutex<()> = Mutex::new(());

/// The pool to ourselves, with no budget, until the guard drops (also after a failure).
struct Turn(#[allow(dead_code)] MutexGuard<'static, ()>);

impl Drop for Turn {
    fn drop(&mut self) {
        memory::set_budget(Device::Cpu, None);
    }
}

fn turn() -> Turn {
    let guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    memory::set_budget(Device::Cpu, None);
    Turn(guard)
}

/// A tiny GPT-2 on the embedded Tiny Shakespeare: 32 sequences of 32 tokens per step, a
/// constant learning rate (so a run resumed with another max_steps is the same run).
/// `sets` are `--set` overrides.
fn config(dir: &TempDir, name: &str, sets: &[&str]) -> Config {
    let toml = format!(
        r#"
[run]
name = "{name}"
out_dir = '{}'
device = "cpu"
[model]
n_layer = 2
n_head = 2
n_embd = 64
context_length = 32
[batch]
tokens_per_step = 1024
[train]
precision = "fp32"
seq_len = 32
max_steps = 4
lr = 1e-3
min_lr = 1e-3
warmup_steps = 0
eval_interval = 0
eval_batches = 1
"#,
        dir.path().display()
    );
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::parse(&toml, &format!("{name}.toml"), &sets).unwrap()
}

/// Measured peak of one training step at `micro` under `policy` for `config`'s model.
fn step_peak(config: &Config, policy: Recompute, micro: usize) -> usize {
    let g = config.global_batch().unwrap();
    let mut probe = ModelProbe::new(Device::Cpu, g, config.train.seq_len, 0, || {
        let model = engine::train::build_model(config, 256, Device::Cpu, Precision::Fp32)?;
        let opt = AdamW::try_new(adamw_config(config), model.as_ref())?;
        Ok((model, opt))
    })
    .unwrap();
    probe.step_peak(policy, micro).unwrap()
}

fn weights(summary: &TrainSummary) -> Vec<u32> {
    let model = engine::checkpoint::load_model(&summary.checkpoint, Device::Cpu, Precision::Fp32, &Default::default()).unwrap().model;
    let mut w = Vec::new();
    model.visit_params(&mut |p| w.extend(p.value.to_vec().iter().map(|v| v.to_bits())));
    w
}

fn bits(summary: &TrainSummary) -> Vec<u32> {
    summary.losses.iter().map(|&(_, l)| l.to_bits()).collect()
}

#[test]
fn a_budget_that_fits_8_but_not_16_gives_micro_batch_8_and_accumulation_4() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    let probe_config = config(&dir, "probe", &["train.recompute=none"]);
    let (p8, p16) = (step_peak(&probe_config, Recompute::None, 8), step_peak(&probe_config, Recompute::None, 16));
    assert!(p16 > p8, "16 sequences need more than 8: {p8} vs {p16}");
    let budget = (p8 + p16) / 2;
    let c = config(&dir, "fit8", &["train.recompute=none", &format!("memory.budget='{budget}'")]);
    let plan = plan_run(&c, Device::Cpu, Precision::Fp32, 256, Some(budget)).unwrap();
    assert_eq!((plan.policy, plan.micro_batch, plan.grad_accum, plan.global_batch), (Recompute::None, 8, 4, 32), "{}", plan.table());
    let measured = plan.measured_peak.unwrap();
    assert!(measured <= budget, "{}", plan.table());
    assert_eq!(measured, p8, "the plan's measurement is the step's peak at 8");

    // The run under that budget: the plan it records, no change of plan, and the pool's
    // peak within the budget.
    let s = train(&c, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    assert_eq!((s.plan.micro_batch, s.plan.grad_accum), (8, 4));
    assert!(s.plan_changes.is_empty(), "{:?}", s.plan_changes);
    assert!(s.memory.peak <= budget && s.memory.reserved <= budget, "peak {} reserved {} budget {budget}", s.memory.peak, s.memory.reserved);
    let recorded: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(s.run_dir.join("plan.json")).unwrap()).unwrap();
    assert_eq!((recorded["micro_batch"].as_u64(), recorded["grad_accum"].as_u64(), recorded["policy"].as_str()), (Some(8), Some(4), Some("none")));
    assert_eq!(recorded["budget"].as_u64(), Some(budget as u64));
    assert_eq!(recorded["rows"][0]["measured_peak"].as_u64(), Some(p8 as u64));
}

/// For budgets from tight to generous, with the policy free: every plan keeps the global
/// batch, its measured step fits, and training under it never needs a change of plan.
#[test]
fn every_plan_fits_its_budget_in_a_real_run() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    let free = config(&dir, "free", &[]);
    let smallest = step_peak(&free, Recompute::Full { every: 1 }, 1);
    let largest = step_peak(&free, Recompute::None, 32);
    let mut chosen = Vec::new();
    for k in 0..5 {
        let budget = smallest + (largest - smallest) * k / 4 + 1;
        let c = config(&dir, &format!("b{k}"), &["train.max_steps=2", &format!("memory.budget='{budget}'")]);
        let plan = plan_run(&c, Device::Cpu, Precision::Fp32, 256, Some(budget)).unwrap();
        assert_eq!(plan.micro_batch * plan.grad_accum, 32, "{}", plan.table());
        assert!(plan.measured_peak.unwrap() <= budget, "{}", plan.table());
        let s = train(&c, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
        assert!(s.plan_changes.is_empty(), "budget {budget}: {:?}", s.plan_changes);
        assert!(s.memory.peak <= budget, "budget {budget}: run peak {}", s.memory.peak);
        chosen.push((plan.policy.to_string(), plan.micro_batch));
    }
    // The tightest budget needs recomputation; the most generous takes the whole step at once
    // without it.
    assert_eq!(chosen[0], ("full".to_string(), 1), "{chosen:?}");
    assert_eq!(chosen[4], ("none".to_string(), 32), "{chosen:?}");
}

/// A run planned at micro-batch 16 (2 per step) whose budget drops, before the second
/// micro-batch of step `oom_step` (counting from 0), to one that fits 8 but not 16: that
/// step runs out of memory with the first micro-batch's gradients accumulated, and is redone
/// at 8.
fn run_with_oom(dir: &TempDir, name: &str, oom_step: u64, budget: usize) -> TrainSummary {
    let c = config(dir, name, &["train.batch_size=16", "train.recompute=none"]);
    let hook = StepHook(Arc::new(move |step, micro| {
        if step == oom_step && micro == 1 {
            memory::set_budget(Device::Cpu, Some(budget));
        }
    }));
    train(&c, &TrainOptions { quiet: true, before_micro_batch: Some(hook), ..Default::default() }).unwrap()
}

#[test]
fn out_of_memory_mid_run_redoes_the_step_with_the_same_samples() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    let probe_config = config(&dir, "probe", &["train.recompute=none"]);
    let budget = (step_peak(&probe_config, Recompute::None, 8) + step_peak(&probe_config, Recompute::None, 16)) / 2;

    // Forced at step 3 of 4.
    let a = run_with_oom(&dir, "oom", 2, budget);
    memory::set_budget(Device::Cpu, None);
    assert_eq!(a.plan_changes.len(), 1, "{:?}", a.plan_changes);
    let change = &a.plan_changes[0];
    assert_eq!((change.step, change.from_micro_batch, change.to_micro_batch, change.to_grad_accum), (3, 16, 8, 4));
    assert!(change.error.contains("out of memory on cpu"), "{}", change.error);
    assert_eq!((a.final_plan.micro_batch, a.final_plan.grad_accum), (8, 4));
    let events = std::fs::read_to_string(a.run_dir.join("events.jsonl")).unwrap();
    let event: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!((event["event"].as_str(), event["change"]["step"].as_u64(), event["change"]["to_micro_batch"].as_u64()), (Some("plan_change"), Some(3), Some(8)));

    // The same run planned at 8 from step 3 on: 2 steps at 16, then resumed at 8.
    let c2 = config(&dir, "planned", &["train.batch_size=16", "train.recompute=none", "train.max_steps=2"]);
    let first = train(&c2, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let c4 = config(&dir, "planned", &["train.batch_size=8", "train.recompute=none"]);
    let rest = train(&c4, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap();
    assert!(rest.plan_changes.is_empty());
    let planned: Vec<u32> = bits(&first).into_iter().chain(bits(&rest)).collect();
    assert_eq!(bits(&a), planned, "losses: {:?} vs {:?}", a.losses, [first.losses, rest.losses.clone()].concat());
    assert!(weights(&a) == weights(&rest), "parameters after the redone step differ from the run planned at micro-batch 8");

    // And against a run at micro-batch 8 from the very start: the same samples every step,
    // so the losses agree up to the order of floating-point sums.
    let b = train(&config(&dir, "eight", &["train.batch_size=8", "train.recompute=none"]), &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    for ((_, la), (_, lb)) in a.losses.iter().zip(&b.losses) {
        assert!((la - lb).abs() <= 1e-5 * lb.abs(), "{:?} vs {:?}", a.losses, b.losses);
    }

    // Forced in the first step: bit-identical to the run planned at 8 from the start.
    let a0 = run_with_oom(&dir, "oom0", 0, budget);
    memory::set_budget(Device::Cpu, None);
    assert_eq!(a0.plan_changes.len(), 1);
    assert_eq!(bits(&a0), bits(&b), "losses: {:?} vs {:?}", a0.losses, b.losses);
    assert!(weights(&a0) == weights(&b), "parameters differ from the run planned at micro-batch 8");
}

#[test]
fn nothing_left_to_shrink_stops_with_the_numbers() {
    let _turn = turn();
    let dir = TempDir::new().unwrap();
    let c = config(&dir, "tiny", &["train.batch_size=16", "train.recompute=full", "train.max_steps=2"]);
    // From step 2 on, a budget just below a step at micro-batch 1 with full recomputation
    // (the step's batch still fits: the steps run out of memory in forward or backward).
    let budget = step_peak(&c, Recompute::Full { every: 1 }, 1) - 1;
    let hook = StepHook(Arc::new(move |step, _| {
        if step == 1 {
            memory::set_budget(Device::Cpu, Some(budget));
        }
    }));
    let err = train(&c, &TrainOptions { quiet: true, before_micro_batch: Some(hook), ..Default::default() }).unwrap_err().to_string();
    for needle in ["step 2: out of memory on cpu", "no smaller plan is left", "micro-batch 1 with recompute full", "raise memory.budget"] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

#[test]
fn global_batch_keys_are_checked() {
    let parse = |sets: &[&str]| Config::parse("", "b.toml", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let c = parse(&["batch.tokens_per_step=4096", "train.seq_len=128"]).unwrap();
    assert_eq!((c.global_batch().unwrap(), c.fixed_micro_batch()), (32, None));
    let c = parse(&["batch.tokens_per_step=4096", "train.seq_len=128", "train.grad_accum=4"]).unwrap();
    assert_eq!(c.fixed_micro_batch(), Some(8));
    let c = parse(&["batch.tokens_per_step=4096", "train.seq_len=128", "train.batch_size=16"]).unwrap();
    assert_eq!((c.fixed_micro_batch(), c.default_micro_batch()), (Some(16), 16));
    // Unset: the step is train.batch_size x train.grad_accum.
    let c = parse(&["train.batch_size=4", "train.grad_accum=3"]).unwrap();
    assert_eq!((c.global_batch().unwrap(), c.fixed_micro_batch()), (12, Some(4)));
    for (sets, needles) in [
        (&["batch.tokens_per_step=1000", "train.seq_len=128"][..], &["key `batch.tokens_per_step`", "1000", "train.seq_len (128)"][..]),
        (&["batch.tokens_per_step=4096", "train.seq_len=128", "train.batch_size=5"], &["key `train.batch_size`", "5 does not divide the step's 32 sequences"]),
        (&["batch.tokens_per_step=4096", "train.seq_len=128", "train.batch_size=8", "train.grad_accum=2"], &["key `batch.tokens_per_step`", "8 x 2 = 16", "set only one"]),
        (&["memory.min_micro_tokens=0"], &["key `memory.min_micro_tokens`"]),
    ] {
        let err = parse(sets).unwrap_err().to_string();
        for n in needles {
            assert!(err.contains(n), "{sets:?}: {n:?} not in {err}");
        }
    }
}
