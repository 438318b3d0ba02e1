//! The whole GPT-2's gradients against central finite differences on a tiny config.

use kernels::{Device, Tensor};
use models::gradcheck::{check_model, GradCheckOptions};
use models::{Gpt, GptConfig, Model};

fn tiny() -> (Gpt, Tensor, Tensor) {
    // Recycled activation buffers start as NaN: an op that leaves part of its output
    // unwritten turns the loss or a gradient into NaN here.
    kernels::host_pool::set_poison(true);
    let config = GptConfig { vocab_size: 11, context_length: 8, n_layer: 2, n_head: 2, n_embd: 8, ..GptConfig::default() };
    let mut model = Gpt::new(config, Device::Cpu, 7).unwrap();
    // Move LayerNorm and biases off their trivial initial values so every gradient is exercised.
    let mut rng = fastrand::Rng::with_seed(3);
    model.visit_params_mut(&mut |p| {
        if p.name.contains("ln_") || p.name.ends_with(".bias") {
            for x in p.value.f32_mut().unwrap() {
                *x += 0.3 * (rng.f32() - 0.5);
            }
        }
    });
    let (b, t) = (2, 5);
    let inputs = Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..11)).collect()).unwrap();
    let targets = Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..11)).collect()).unwrap();
    (model, inputs, targets)
}

#[test]
fn gpt_gradients_match_finite_differences() {
    let (mut model, inputs, targets) = tiny();
    let options = GradCheckOptions { probes: 12, eps: 1e-2, tolerance: 2e-2, seed: 1 };
    let report = check_model(&mut model, &inputs, &targets, &options).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(report.tensors.len(), 2 + 2 * 12 + 2, "{report}");
    assert!(report.probes().count() > 200, "{report}");
    for t in &report.tensors {
        assert!(t.floor_limited() < t.probes.len(), "{}: every probe is below the floor\n{report}", t.name);
    }
    // The analytic gradients the check left behind: none all zero, and wte's padding rows
    // (11..128) get none.
    model.visit_params(&mut |p| {
        let grad = p.grad.to_vec();
        assert!(grad.iter().any(|&g| g != 0.0), "{}: gradient is all zeros", p.name);
        if p.name == "wte.weight" {
            assert!(grad[11 * 8..].iter().all(|&g| g == 0.0), "padding rows of wte got a gradient");
        }
    });
}

#[test]
fn backward_without_forward_is_an_error() {
    let (mut model, _, _) = tiny();
    let err = model.backward(1.0).unwrap_err().to_string();
    assert!(err.contains("backward called without a preceding forward"), "{err}");
}

#[test]
fn sequence_longer_than_context_is_an_error() {
    let (mut model, _, _) = tiny();
    let long = Tensor::from_u32(&[1, 9], vec![0; 9]).unwrap();
    let err = model.forward(&long, None).unwrap_err().to_string();
    assert!(err.contains("sequence length 9 must be in 1..=8"), "{err}");
}
