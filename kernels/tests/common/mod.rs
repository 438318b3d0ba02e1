//! Shared helpers for GPU tests (BRIEF §5): `mod common;` at the top of a test file.
//!
//! - [`gpu_or_skip`]: the CUDA device, or `None` after printing
//!   `skipped: no usable CUDA device (<reason>)`. With `ENGINE_REQUIRE_GPU=1` (set by
//!   `scripts/gpu-check run`) a missing GPU is a failure instead, so a GPU machine can
//!   never pass by skipping.
//! - [`skip_full_size`]: on the CUDA simulator (`scripts/cuda-sim`), skips a GPT-2
//!   124M-shape case with a printed reason; real GPUs run it.
//! - [`random`]: a CPU tensor of uniform values in [-scale, scale), never zeros.
//! - [`poison`]: fills a tensor with NaN before a launch, so unwritten elements fail.
//! - [`assert_close`]: `|gpu - ref| <= atol + rtol * |ref|` elementwise, reporting the worst
//!   element; [`assert_rel_norm`]: `||gpu - ref|| / ||ref|| <= tol` (the bf16 criterion).
#![allow(dead_code)]

use std::sync::Arc;

use kernels::cuda::{self, CudaDevice};
use kernels::{Device, Tensor};

/// The GPU to test on, or `None` (with a printed reason) where there is none.
pub fn gpu_or_skip() -> Option<Arc<CudaDevice>> {
    let found = cuda::probe(0)
        .map_err(|reason| reason.to_string())
        .and_then(|_| cuda::device(0).map_err(|e| e.to_string()));
    match found {
        Ok(dev) => Some(dev),
        Err(reason) if std::env::var("ENGINE_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("ENGINE_REQUIRE_GPU=1 but there is no usable CUDA device ({reason})")
        }
        Err(reason) => {
            eprintln!("skipped: no usable CUDA device ({reason})");
            None
        }
    }
}

/// Whether `dev` is the CUDA simulator (`scripts/cuda-sim`), which runs kernels on the CPU,
/// thousands of times slower than a GPU.
pub fn on_simulator(dev: &CudaDevice) -> bool {
    dev.name().contains("cuda-sim")
}

/// True, after printing why, when `case` (a GPT-2 124M-shape case) should not run here: on
/// the simulator such a case takes many minutes of CPU time, and its small and odd-sized
/// siblings already cover the same code paths; real GPUs run it (`scripts/gpu-check`).
pub fn skip_full_size(dev: &CudaDevice, case: &str) -> bool {
    let skip = on_simulator(dev);
    if skip {
        eprintln!("skipped on the CUDA simulator: {case} (a GPT-2 124M shape, for real GPUs: scripts/gpu-check)");
    }
    skip
}

/// Every device a test body should run on: the CPU, then the GPU when there is one.
pub fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    if let Some(dev) = gpu_or_skip() {
        devices.push(dev.device());
    }
    devices
}

/// A CPU f32 tensor of uniform values in [-scale, scale) from `seed`.
pub fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = shape.iter().product();
    let data = (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * scale).collect();
    Tensor::from_vec(shape, data).unwrap()
}

/// Fills `t` with NaN (any device, f32 or bf16), so elements a kernel fails to write
/// show up in the comparison.
pub fn poison(t: &mut Tensor) {
    kernels::ops::fill::fill(t, f32::NAN).unwrap();
}

/// Elementwise `|gpu - reference| <= atol + rtol * |reference|`; NaN anywhere in `gpu`
/// fails. Panics naming the worst element (by how far past its bound it is).
pub fn assert_close(name: &str, gpu: &[f32], reference: &[f32], atol: f32, rtol: f32) {
    assert_eq!(gpu.len(), reference.len(), "{name}: length differs");
    let mut worst = (0usize, f32::NEG_INFINITY); // (index, excess over the bound)
    let mut failures = 0usize;
    for (i, (&g, &r)) in gpu.iter().zip(reference).enumerate() {
        let bound = atol + rtol * r.abs();
        let excess = if g.is_nan() != r.is_nan() { f32::INFINITY } else if r.is_nan() { 0.0 } else { (g - r).abs() - bound };
        if excess > 0.0 || excess.is_nan() {
            failures += 1;
        }
        if excess > worst.1 || excess.is_nan() {
            worst = (i, excess);
        }
    }
    if failures > 0 {
        let i = worst.0;
        panic!(
            "{name}: {failures} of {} elements outside atol {atol:e} + rtol {rtol:e} * |ref|; worst at [{i}]: gpu {} vs ref {} (|diff| {:e})",
            gpu.len(),
            gpu[i],
            reference[i],
            (gpu[i] - reference[i]).abs()
        );
    }
}

/// `||gpu - reference||_2 / ||reference||_2 <= tol` (computed in f64), with the worst
/// element named on failure; returns the relative error.
pub fn assert_rel_norm(name: &str, gpu: &[f32], reference: &[f32], tol: f64) -> f64 {
    assert_eq!(gpu.len(), reference.len(), "{name}: length differs");
    let (mut diff2, mut ref2, mut worst) = (0.0f64, 0.0f64, (0usize, -1.0f64));
    for (i, (&g, &r)) in gpu.iter().zip(reference).enumerate() {
        let d = if g.is_nan() || r.is_nan() { f64::INFINITY } else { (g as f64 - r as f64).abs() };
        diff2 += d * d;
        ref2 += (r as f64) * (r as f64);
        if d > worst.1 {
            worst = (i, d);
        }
    }
    let rel = diff2.sqrt() / ref2.sqrt().max(f64::MIN_POSITIVE);
    assert!(
        rel <= tol,
        "{name}: relative error {rel:e} in norm > {tol:e}; worst at [{}]: gpu {} vs ref {}",
        worst.0,
        gpu[worst.0],
        reference[worst.0]
    );
    rel
}
