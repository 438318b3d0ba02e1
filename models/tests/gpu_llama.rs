//! Llama on the GPU against the CPU reference: the same seed gives the same initial weights,
//! so the CUDA loss and every gradient (two accumulated micro-batches) must match the CPU's,
//! closely in fp32 and loosely in bf16 mixed precision; full recomputation on the GPU is
//! bit-identical to none, as on the CPU (`llama.rs`).
//!
//! Without a GPU the tests print `skipped: no usable CUDA device (...)` and pass (with
//! ENGINE_REQUIRE_GPU=1 they fail instead); CI runs them on the CUDA simulator.

mod common;

use common::gpu_or_skip;
use kernels::{Device, Tensor};
use models::{Llama, LlamaConfig, Model, Precision, Recompute};

/// Grouped-query (NH = 2, KV = 1) with HS = 32 (a head size the CUDA attention supports),
/// C = 64, RMSNorm weights off 1.
fn model(device: Device, precision: Precision, tied: bool, policy: Recompute) -> Llama {
    let config = LlamaConfig {
        vocab_size: 100,
        context_length: 16,
        n_layer: 2,
        n_head: 2,
        n_kv_head: 1,
        n_embd: 64,
        intermediate_size: 128,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tie_embeddings: tied,
    };
    let mut model = Llama::with_precision(config, device, precision, 11).unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    model.visit_params_mut(&mut |p| {
        if p.name.contains("norm") {
            let host: Vec<f32> = p.value.try_to_vec().unwrap().iter().map(|x| x + 0.6 * (rng.f32() - 0.5)).collect();
            p.set_value(&Tensor::from_vec(p.value.shape(), host).unwrap()).unwrap();
        }
    });
    model.set_recompute(policy).unwrap();
    model
}

/// Two micro-batches accumulated (the second at loss scale 0.5): (losses, every gradient).
fn grads(model: &mut Llama) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let device = model.device();
    let mut losses = Vec::new();
    for (seed, scale) in [(1, 1.0), (2, 0.5)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (b, t) = (2, 16);
        let mut ids = || Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..100)).collect()).unwrap().to_device(device).unwrap();
        let (x, y) = (ids(), ids());
        losses.push(model.forward(&x, Some(&y)).unwrap().unwrap());
        model.backward(scale).unwrap();
    }
    let mut out = Vec::new();
    model.visit_params(&mut |p| out.push((p.name.clone(), p.grad.try_to_vec().unwrap())));
    (losses, out)
}

/// ||got - want|| / ||want|| in f64.
fn rel_norm(got: &[f32], want: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        d += (g as f64 - w as f64).powi(2);
        n += (w as f64).powi(2);
    }
    if d.is_nan() { f64::INFINITY } else { (d / n.max(f64::MIN_POSITIVE)).sqrt() }
}

fn matches_cpu(precision: Precision, tied: bool, loss_tol: f64, grad_tol: f64) {
    let Some(device) = gpu_or_skip() else { return };
    let (want_losses, want) = grads(&mut model(Device::Cpu, Precision::Fp32, tied, Recompute::None));
    let (losses, got) = grads(&mut model(device, precision, tied, Recompute::None));
    for (l, w) in losses.iter().zip(&want_losses) {
        assert!(((l - w) as f64).abs() <= loss_tol * *w as f64, "{precision:?}: loss {l} vs the CPU's {w}");
    }
    assert_eq!(got.len(), want.len());
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        let rel = rel_norm(g, w);
        assert!(rel <= grad_tol, "{precision:?} tied={tied}: {name} is {rel:e} off the CPU's in norm");
    }
}

#[test]
fn fp32_matches_the_cpu_and_full_recomputation_is_bit_identical() {
    matches_cpu(Precision::Fp32, false, 1e-5, 1e-5);
    let Some(device) = gpu_or_skip() else { return };
    let bits = |(losses, grads): (Vec<f32>, Vec<(String, Vec<f32>)>)| -> Vec<u32> {
        losses.iter().chain(grads.iter().flat_map(|(_, g)| g)).map(|v| v.to_bits()).collect()
    };
    let none = bits(grads(&mut model(device, Precision::Fp32, false, Recompute::None)));
    let full = bits(grads(&mut model(device, Precision::Fp32, false, Recompute::Full { every: 1 })));
    assert!(none == full, "full recomputation changed a loss or a gradient on the GPU");
}

#[test]
fn bf16_matches_the_cpu_loosely() {
    matches_cpu(Precision::Bf16, true, 2e-3, 5e-2);
}
