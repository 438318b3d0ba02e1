//! The whole GPT-2's gradients against central finite differences on a tiny config.

use kernels::{Device, Tensor};
use models::{Gpt, GptConfig, Model};

fn tiny() -> (Gpt, Tensor, Tensor) {
    // Recycled activation buffers start as NaN: an op that leaves part of its output
    // unwritten turns the loss or a gradient into NaN here.
    kernels::host_pool::set_poison(true);
    let config = GptConfig { vocab_size: 11, context_length: 8, n_layer: 2, n_head: 2, n_embd: 8 };
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
    model.forward(&inputs, Some(&targets)).unwrap();
    model.backward(1.0).unwrap();
    let mut names = Vec::new();
    model.visit_params(&mut |p| names.push(p.name.clone()));
    assert_eq!(names.len(), 2 + 2 * 12 + 2);
    let h = 1e-2f32;
    let mut checked = 0;
    for name in names {
        let mut grad = Vec::new();
        let mut n = 0;
        model.visit_params(&mut |p| {
            if p.name == name {
                grad = p.grad.to_vec();
                n = p.numel();
            }
        });
        let scale = grad.iter().fold(0.0f32, |m, g| m.max(g.abs())) as f64;
        if name != "wte.weight" {
            assert!(scale > 0.0, "{name}: gradient is all zeros");
        }
        // wte's padding rows (11..128) must get no gradient
        let limit = if name == "wte.weight" { 11 * 8 } else { n };
        if name == "wte.weight" {
            assert!(grad[limit..].iter().all(|&g| g == 0.0), "padding rows of wte got a gradient");
        }
        for i in (0..limit).step_by((limit / 12).max(1)) {
            let mut loss_at = |delta: f32| {
                model.visit_params_mut(&mut |p| {
                    if p.name == name {
                        p.value.f32_mut().unwrap()[i] += delta;
                    }
                });
                let l = model.forward(&inputs, Some(&targets)).unwrap().unwrap() as f64;
                model.visit_params_mut(&mut |p| {
                    if p.name == name {
                        p.value.f32_mut().unwrap()[i] -= delta;
                    }
                });
                l
            };
            let num = (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
            let ana = grad[i] as f64;
            assert!(
                (num - ana).abs() <= 2e-3 * scale + 2e-2 * ana.abs() + 1e-5,
                "{name}[{i}]: numeric {num} analytic {ana} (scale {scale})"
            );
            checked += 1;
        }
    }
    assert!(checked > 200);
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
