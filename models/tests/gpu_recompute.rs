//! Recomputation on the GPU, in fp32 and in bf16 mixed precision. The block runs fused
//! kernels there (the matmul with its GeLU epilogue, the residual add with the LayerNorm
//! after it), and a recomputation must reproduce what they saved:
//!
//! - `full` and `full:K` re-run the same fused forward: losses and gradients bit-identical
//!   to `none`, as on the CPU (`recompute.rs`);
//! - `selective` rebuilds the GeLU output with `gelu_forward` from the kept pre-GeLU values;
//!   the fused epilogue computes its GeLU from the stored (rounded) pre-GeLU value with
//!   gelu.cu's expression, so the rebuilt output, and every loss and gradient, is also
//!   bit-identical to `none`.
//!
//! - SwiGLU blocks (without biases) likewise: `selective` rebuilds the SwiGLU output with
//!   the SwiGLU op from the kept [gate | up].
//!
//! Without a GPU the tests print `skipped: no usable CUDA device (...)` and pass (with
//! ENGINE_REQUIRE_GPU=1 they fail instead); CI runs them on the CUDA simulator.

mod common;

use common::gpu_or_skip;
use kernels::{Device, Tensor};
use models::{Activation, Gpt, GptConfig, Model, Precision, Recompute};

const POLICIES: [&str; 4] = ["selective", "full", "full:2", "full:3"];

/// 4 layers, HS = 32 (a head size the CUDA attention supports), C = 64 (the bf16 matmul's
/// vector path), LayerNorm parameters and biases off their trivial initial values.
fn gpt2() -> GptConfig {
    GptConfig { vocab_size: 100, context_length: 32, n_layer: 4, n_head: 2, n_embd: 64, ..GptConfig::default() }
}

fn model_of(config: GptConfig, device: Device, precision: Precision, policy: Recompute) -> Gpt {
    let mut model = Gpt::with_precision(config, device, precision, 11).unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    model.visit_params_mut(&mut |p| {
        if p.name.contains("ln_") || p.name.ends_with(".bias") {
            let mut host = p.value.try_to_vec().unwrap();
            for x in &mut host {
                *x += 0.3 * (rng.f32() - 0.5);
            }
            p.set_value(&Tensor::from_vec(p.value.shape(), host).unwrap()).unwrap();
        }
    });
    model.set_recompute(policy);
    model
}

/// Two micro-batches accumulated (the second at loss scale 0.5): (losses, every gradient as bits).
fn grads(model: &mut Gpt, device: Device) -> (Vec<u32>, Vec<(String, Vec<u32>)>) {
    let mut losses = Vec::new();
    for (seed, scale) in [(1, 1.0), (2, 0.5)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (b, t) = (3, 24);
        let mut ids = || Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..100)).collect()).unwrap().to_device(device).unwrap();
        let (x, y) = (ids(), ids());
        losses.push(model.forward(&x, Some(&y)).unwrap().unwrap().to_bits());
        model.backward(scale).unwrap();
    }
    let mut out = Vec::new();
    model.visit_params(&mut |p| out.push((p.name.clone(), p.grad.try_to_vec().unwrap().iter().map(|g| g.to_bits()).collect())));
    (losses, out)
}

/// ||got - want|| / ||want|| in f64, over gradients given as bits.
fn rel_norm(got: &[u32], want: &[u32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (f32::from_bits(*g) as f64, f32::from_bits(*w) as f64);
        d += (g - w) * (g - w);
        n += w * w;
    }
    if d.is_nan() { f64::INFINITY } else { (d / n.max(f64::MIN_POSITIVE)).sqrt() }
}

fn every_policy_matches_none(precision: Precision) {
    every_policy_matches_none_for(gpt2(), precision);
}

fn every_policy_matches_none_for(config: GptConfig, precision: Precision) {
    let Some(device) = gpu_or_skip() else { return };
    let reference = grads(&mut model_of(config.clone(), device, precision, Recompute::None), device);
    assert!(reference.1.iter().filter(|(n, _)| n != "wte.weight").all(|(_, g)| g.iter().any(|&b| f32::from_bits(b) != 0.0)));
    assert!(grads(&mut model_of(config.clone(), device, precision, Recompute::None), device) == reference, "{precision:?}: two runs of none differ");
    for policy in POLICIES {
        let (losses, got) = grads(&mut model_of(config.clone(), device, precision, policy.parse().unwrap()), device);
        for ((name, g), (_, w)) in got.iter().zip(&reference.1) {
            assert!(g.iter().all(|b| f32::from_bits(*b).is_finite()), "{precision:?} {policy}: {name} has a non-finite gradient");
            if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
                let rel = rel_norm(g, w);
                panic!("{precision:?} {policy}: {name}[{i}] = {} differs from none's {} ({rel:e} relative in norm)", f32::from_bits(g[i]), f32::from_bits(w[i]));
            }
        }
        assert!(losses == reference.0, "{precision:?} {policy}: losses {losses:?} vs none's {:?}", reference.0);
    }
}

#[test]
fn fp32_recomputation_is_bit_identical_to_none() {
    every_policy_matches_none(Precision::Fp32);
}

#[test]
fn bf16_recomputation_is_bit_identical_to_none() {
    every_policy_matches_none(Precision::Bf16);
}

/// SwiGLU blocks without biases: selective recomputation rebuilds the SwiGLU output with the
/// op that made it.
#[test]
fn swiglu_recomputation_is_bit_identical_to_none() {
    let config = GptConfig { activation: Activation::Swiglu, bias: false, n_inner: Some(128), ..gpt2() };
    every_policy_matches_none_for(config.clone(), Precision::Fp32);
    every_policy_matches_none_for(config, Precision::Bf16);
}
