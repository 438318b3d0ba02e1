//! A training step on CUDA does not make the host wait for the device: the loss and the
//! gradient norm stay on the device until a step that logs them, evaluates or checkpoints
//! reads them back; clipping and AdamW read the clip factor from device memory.
//!
//! The CUDA simulator counts the driver calls that block a host thread until device work
//! completes (synchronizations, synchronous copies, copies into pageable memory, frees),
//! per thread, behind the simulator-only symbol `cudasim_thread_host_syncs`
//! (docs/SIMULATOR.md). This test runs the trainer for a few steps of a tiny GPT and reads
//! the training thread's count before every step (`TrainOptions::before_micro_batch`): from
//! one step's start to the next, the count moves across steps that log (every
//! `train.log_interval`-th and the first), evaluate or checkpoint, and otherwise only by the
//! loader's copy timing (`COPY_TIMING_SYNCS`). The loader's workers wait
//! for their own pinned buffers' copies on their own threads, which does not hold up the
//! training thread, so they are not counted.
//!
//! Without a GPU it prints `skipped: ...` (with ENGINE_REQUIRE_GPU=1 it fails instead); on a
//! real GPU, whose driver has no such counter, it prints why it skips.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use engine::config::Config;
use engine::train::{StepHook, TrainOptions};

fn gpu_or_skip() -> bool {
    let found = kernels::cuda::probe(0)
        .map_err(|reason| reason.to_string())
        .and_then(|_| kernels::cuda::device(0).map_err(|e| e.to_string()));
    match found {
        Ok(_) => true,
        Err(reason) if std::env::var("ENGINE_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("ENGINE_REQUIRE_GPU=1 but there is no usable CUDA device ({reason})")
        }
        Err(reason) => {
            eprintln!("skipped: no usable CUDA device ({reason})");
            false
        }
    }
}

extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}
const RTLD_NOW: c_int = 2;
const RTLD_NOLOAD: c_int = 4;

type Counter = unsafe extern "C" fn() -> u64;

/// The loaded libcuda's per-thread host-sync counter, if it is the simulator's.
fn sync_counter() -> Option<Counter> {
    for name in [c"libcuda.so.1", c"libcuda.so"] {
        // SAFETY: RTLD_NOLOAD only returns a library already loaded (by cudarc), never loads one.
        let lib = unsafe { dlopen(name.as_ptr(), RTLD_NOW | RTLD_NOLOAD) };
        if lib.is_null() {
            continue;
        }
        // SAFETY: a live handle and a NUL-terminated name.
        let sym = unsafe { dlsym(lib, c"cudasim_thread_host_syncs".as_ptr()) };
        if !sym.is_null() {
            // SAFETY: the simulator exports it as `extern "C" fn() -> u64` (kernels/sim/driver/src/exports.rs).
            return Some(unsafe { std::mem::transmute::<*mut c_void, Counter>(sym) });
        }
    }
    None
}

/// What a step that does not log may wait for: nothing. The loss, the gradient norm,
/// clipping, AdamW, the forward/backward/optimizer times and the loader's copy timings
/// (read once their events have completed) are all queued or read without a wait; before
/// that work a step made 17 such calls.
const NON_LOGGING_STEP_SYNCS: u64 = 0;

#[test]
fn steps_that_do_not_log_do_not_wait_for_the_device() {
    if !gpu_or_skip() {
        return;
    }
    let Some(counter) = sync_counter() else {
        eprintln!("skipped: the loaded libcuda has no cudasim_thread_host_syncs (not the CUDA simulator: run through scripts/cuda-sim)");
        return;
    };
    let dir = tempfile::TempDir::new().unwrap();
    // 10 steps: logged at 1, 4, 8 (log_interval) and 10 (the end: evaluation and checkpoint).
    let (max_steps, log_interval) = (10u64, 4u64);
    let toml = format!(
        r#"
[run]
name = "sync"
out_dir = '{}'
device = "cuda"
[model]
n_layer = 2
n_head = 2
n_embd = 64
context_length = 32
[train]
precision = "bf16"
batch_size = 4
seq_len = 32
max_steps = {max_steps}
log_interval = {log_interval}
eval_interval = 0
eval_batches = 1
checkpoint_interval = 0
grad_clip = 1.0
"#,
        dir.path().display()
    );
    let config = Config::parse(&toml, "sync.toml", &[]).unwrap();
    // (step, micro-batch, this thread's host syncs so far), before each micro-batch.
    let seen: Arc<Mutex<Vec<(u64, usize, u64)>>> = Arc::default();
    let hook = {
        let seen = seen.clone();
        // SAFETY: the simulator's counter takes no arguments and only reads a thread-local.
        StepHook(Arc::new(move |step, micro| seen.lock().unwrap().push((step, micro, unsafe { counter() }))))
    };
    let options = TrainOptions { quiet: true, before_micro_batch: Some(hook), ..Default::default() };
    let summary = engine::train::train(&config, &options).unwrap();
    assert_eq!(summary.steps, max_steps);
    assert!(summary.losses.iter().all(|(_, l)| l.is_finite()), "{:?}", summary.losses);

    let seen = seen.lock().unwrap().clone();
    let starts: Vec<(u64, u64)> = seen.iter().filter(|s| s.1 == 0).map(|&(step, _, count)| (step, count)).collect();
    assert_eq!(starts.len() as u64, max_steps, "one attempt per step, one micro-batch each: {seen:?}");
    // From the start of step k (0-based) to the start of step k + 1: step k + 1 (1-based) ran
    // to its end, then the loader handed out the next batch.
    let mut per_step = Vec::new();
    for w in starts.windows(2) {
        let (done, syncs) = (w[0].0 + 1, w[1].1 - w[0].1);
        per_step.push((done, syncs));
    }
    eprintln!("host syncs on the training thread, per step (step, count): {per_step:?}");
    for &(done, syncs) in &per_step {
        let logs = done == 1 || done.is_multiple_of(log_interval);
        if logs {
            assert!(syncs >= 1, "step {done} logs its loss, which needs it on the host: no sync counted ({per_step:?})");
        } else {
            assert!(
                syncs == NON_LOGGING_STEP_SYNCS,
                "step {done} neither logs, evaluates nor checkpoints, yet blocked the host {syncs} times ({per_step:?})"
            );
        }
    }

    // Every step's metrics are still recorded, with the loss it had.
    let jsonl = std::fs::read_to_string(summary.run_dir.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len() as u64, max_steps);
    for (r, &(step, loss)) in records.iter().zip(&summary.losses) {
        assert_eq!(r["step"].as_u64(), Some(step));
        assert_eq!(r["loss"].as_f64().map(|l| l as f32), Some(loss), "step {step}");
        assert!(r["grad_norm"].as_f64().is_some_and(|g| g.is_finite() && g > 0.0), "step {step}: {r}");
    }
}
