//! Recomputation policies give gradients bit-identical to `none` (fp32, CPU): the same ops
//! on the same inputs in the same order, with recycled buffers poisoned with NaN so a
//! recomputed tensor that is read before it is written shows up.

use kernels::{Device, Tensor};
use models::{Activation, Gpt, GptConfig, Model, Recompute};

const POLICIES: [&str; 5] = ["none", "selective", "full", "full:2", "full:3"];

fn gpt2() -> GptConfig {
    GptConfig { vocab_size: 50, context_length: 16, n_layer: 4, n_head: 4, n_embd: 32, ..GptConfig::default() }
}

/// Blocks unlike GPT-2's: SwiGLU (whose output selective recomputation rebuilds), no biases,
/// a narrower MLP, no position table.
fn variant() -> GptConfig {
    GptConfig { activation: Activation::Swiglu, bias: false, n_inner: Some(48), learned_positions: false, ..gpt2() }
}

fn model(policy: Recompute) -> Gpt {
    model_of(gpt2(), policy)
}

fn model_of(config: GptConfig, policy: Recompute) -> Gpt {
    kernels::host_pool::set_poison(true);
    let mut model = Gpt::new(config, Device::Cpu, 11).unwrap();
    // LayerNorm parameters and biases off their trivial initial values, so every gradient
    // and every recomputed LayerNorm output depends on them.
    let mut rng = fastrand::Rng::with_seed(5);
    model.visit_params_mut(&mut |p| {
        if p.name.contains("ln_") || p.name.ends_with(".bias") {
            for x in p.value.f32_mut().unwrap() {
                *x += 0.3 * (rng.f32() - 0.5);
            }
        }
    });
    model.set_recompute(policy);
    model
}

fn batch(seed: u64) -> (Tensor, Tensor) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (b, t) = (3, 16);
    let mut ids = || Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..50)).collect()).unwrap();
    (ids(), ids())
}

/// Two micro-batches accumulated (the second at loss scale 0.5): (losses, every gradient as bits).
fn grads(model: &mut Gpt) -> (Vec<u32>, Vec<(String, Vec<u32>)>) {
    let mut losses = Vec::new();
    for (seed, scale) in [(1, 1.0), (2, 0.5)] {
        let (x, y) = batch(seed);
        losses.push(model.forward(&x, Some(&y)).unwrap().unwrap().to_bits());
        model.backward(scale).unwrap();
    }
    let mut out = Vec::new();
    model.visit_params(&mut |p| out.push((p.name.clone(), p.grad.to_vec().iter().map(|g| g.to_bits()).collect())));
    (losses, out)
}

#[track_caller]
fn assert_bit_identical(policy: &str, got: &(Vec<u32>, Vec<(String, Vec<u32>)>), want: &(Vec<u32>, Vec<(String, Vec<u32>)>)) {
    assert_eq!(got.0, want.0, "{policy}: losses differ from none");
    assert_eq!(got.1.len(), want.1.len());
    for ((name, g), (_, w)) in got.1.iter().zip(&want.1) {
        assert!(g.iter().all(|b| f32::from_bits(*b).is_finite()), "{policy}: {name} has a non-finite gradient");
        if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
            panic!("{policy}: {name}[{i}] = {} differs from none's {}", f32::from_bits(g[i]), f32::from_bits(w[i]));
        }
    }
}

#[test]
fn every_policy_gives_gradients_bit_identical_to_none() {
    let reference = grads(&mut model(Recompute::None));
    assert_eq!(reference.1.len(), 2 + 4 * 12 + 2);
    assert!(reference.1.iter().filter(|(n, _)| n != "wte.weight").all(|(_, g)| g.iter().any(|&b| f32::from_bits(b) != 0.0)));
    for policy in POLICIES {
        let got = grads(&mut model(policy.parse().unwrap()));
        assert_bit_identical(policy, &got, &reference);
    }
}

#[test]
fn every_policy_is_bit_identical_with_swiglu_blocks_without_biases() {
    let reference = grads(&mut model_of(variant(), Recompute::None));
    assert_eq!(reference.1.len(), 1 + 4 * 8 + 2);
    assert!(reference.1.iter().all(|(n, _)| !n.ends_with(".bias") || n.contains("ln_")), "{:?}", reference.1.iter().map(|p| &p.0).collect::<Vec<_>>());
    assert!(reference.1.iter().filter(|(n, _)| n != "wte.weight").all(|(_, g)| g.iter().any(|&b| f32::from_bits(b) != 0.0)));
    for policy in POLICIES {
        let got = grads(&mut model_of(variant(), policy.parse().unwrap()));
        assert_bit_identical(policy, &got, &reference);
    }
}

#[test]
fn switching_policy_between_steps_and_mid_step_keeps_gradients() {
    let reference = grads(&mut model(Recompute::None));
    // A new policy applies from the next forward; a backward uses what its forward kept,
    // so switching between forward and backward is safe too.
    let mut m = model(Recompute::Full { every: 1 });
    let mut losses = Vec::new();
    for (seed, scale, before, after) in [(1, 1.0, "full", "selective"), (2, 0.5, "selective", "none")] {
        m.set_recompute(before.parse().unwrap());
        let (x, y) = batch(seed);
        losses.push(m.forward(&x, Some(&y)).unwrap().unwrap().to_bits());
        m.set_recompute(after.parse().unwrap());
        m.backward(scale).unwrap();
    }
    let mut out = Vec::new();
    m.visit_params(&mut |p| out.push((p.name.clone(), p.grad.to_vec().iter().map(|g| g.to_bits()).collect())));
    assert_bit_identical("switched", &(losses, out), &reference);
    assert_eq!(m.recompute(), Recompute::None);
}

#[test]
fn backward_twice_after_one_forward_is_an_error_under_every_policy() {
    for policy in POLICIES {
        let mut m = model(policy.parse().unwrap());
        let (x, y) = batch(1);
        m.forward(&x, Some(&y)).unwrap();
        m.backward(1.0).unwrap();
        let err = m.backward(1.0).unwrap_err().to_string();
        assert!(err.contains("backward called without a preceding forward"), "{policy}: {err}");
    }
}
