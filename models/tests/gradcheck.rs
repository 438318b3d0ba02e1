//! The gradient checker itself: it fails a backward that is 10% off (in the input gradient,
//! in a parameter gradient), it passes every layer and both models here, and it restores
//! every value it perturbs.

use kernels::{Device, Tensor};
use models::gradcheck::{check_layer, check_model, GradCheckOptions, GradCheckReport};
use models::layers::{AttentionShape, Block, LayerNorm, Linear, LlamaAttention, RmsNorm};
use models::{Gpt, GptConfig, Layer, Llama, LlamaConfig, Model, Param, Placement, Result};

/// y = x * w per channel (C), with a backward whose input gradient (`dx_factor`) or weight
/// gradient (`dw_factor`) is scaled: 1.0 is the correct backward.
struct Scale {
    w: Param,
    dx_factor: f32,
    dw_factor: f32,
    input: Option<Tensor>,
}

impl Scale {
    fn new(c: usize, dx_factor: f32, dw_factor: f32) -> Self {
        let w = Tensor::from_vec(&[c], (0..c).map(|i| 0.5 + 0.25 * i as f32).collect()).unwrap();
        Self { w: Param::new("scale.w", w, false, Placement::cpu()).unwrap(), dx_factor, dw_factor, input: None }
    }
}

impl Layer for Scale {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let w = self.w.value.f32()?;
        let y: Vec<f32> = x.f32()?.iter().enumerate().map(|(i, v)| v * w[i % w.len()]).collect();
        self.input = Some(x.clone());
        Ok(Tensor::from_vec(x.shape(), y)?)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let x = self.input.take().expect("forward first");
        let w = self.w.value.f32()?.to_vec();
        let (x, d) = (x.f32()?, dout.f32()?);
        let dx: Vec<f32> = d.iter().enumerate().map(|(i, g)| g * w[i % w.len()] * self.dx_factor).collect();
        let dw = self.w.grad.f32_mut()?;
        for (i, (g, v)) in d.iter().zip(x).enumerate() {
            dw[i % w.len()] += g * v * self.dw_factor;
        }
        Ok(Tensor::from_vec(dout.shape(), dx)?)
    }

    fn release(&mut self) {
        self.input = None;
    }

    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.w);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.w);
    }
}

fn input(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = fastrand::Rng::with_seed(seed);
    Tensor::from_vec(shape, (0..shape.iter().product()).map(|_| rng.f32() * 2.0 - 1.0).collect()).unwrap()
}

/// Every parameter moved off its initial value (LayerNorm weights off 1, biases off 0).
fn jitter(layer: &mut dyn Layer, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    layer.visit_params_mut(&mut |p| {
        for v in p.value.f32_mut().unwrap() {
            *v += 0.4 * (rng.f32() - 0.5);
        }
    });
}

/// Calls its argument with a visitor of parameters (a layer's or a model's `visit_params`).
type Visit<'a> = dyn FnMut(&mut dyn FnMut(&Param)) + 'a;

fn values(visit: &mut Visit) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    visit(&mut |p| out.push(p.value.to_vec().iter().map(|v| v.to_bits()).collect()));
    out
}

#[track_caller]
fn assert_passes(what: &str, report: &GradCheckReport, tensors: usize) {
    eprintln!("{what}:\n{report}\n");
    assert!(report.passed(), "{what}:\n{report}");
    assert_eq!(report.tensors.len(), tensors, "{what}: probed tensors\n{report}");
    // Every tensor checked for real: at least one probe above the floor.
    for t in &report.tensors {
        assert!(t.floor_limited() < t.probes.len(), "{what}: every probe of {} is below the floor\n{report}", t.name);
        assert!(t.probes.iter().any(|p| p.analytic != 0.0), "{what}: {} has an all-zero gradient at its probes", t.name);
    }
}

#[test]
fn a_backward_ten_percent_off_fails() {
    let x = input(&[3, 4], 1);
    let options = GradCheckOptions::default();
    let good = check_layer(&mut Scale::new(4, 1.0, 1.0), &x, &options).unwrap();
    assert_passes("correct Scale", &good, 2);
    assert!(good.worst() < 1e-3, "{good}");

    for (what, dx, dw, bad_tensor) in [("input gradient", 1.1, 1.0, "input"), ("weight gradient", 1.0, 0.9, "scale.w")] {
        let report = check_layer(&mut Scale::new(4, dx, dw), &x, &options).unwrap();
        eprintln!("{what} 10% off:\n{report}\n");
        assert!(!report.passed(), "a {what} 10% off passed:\n{report}");
        assert!(report.worst() > 0.05 && report.worst() < 0.15, "{report}");
        for t in &report.tensors {
            let failed = t.worst().unwrap().error > options.tolerance;
            assert_eq!(failed, t.name == bad_tensor, "{what}: {}\n{report}", t.name);
        }
        let text = report.to_string();
        assert!(text.contains("FAILED") && text.contains(bad_tensor), "{text}");
    }
}

#[test]
fn options_and_devices_are_checked() {
    let x = input(&[2, 4], 1);
    let bad = GradCheckOptions { eps: 0.0, ..Default::default() };
    let err = check_layer(&mut Scale::new(4, 1.0, 1.0), &x, &bad).unwrap_err().to_string();
    assert!(err.contains("eps (0) and tolerance (0.01) must be positive"), "{err}");
}

#[test]
fn values_are_restored_bit_for_bit_and_gradients_zeroed_first() {
    let mut rng = fastrand::Rng::with_seed(4);
    let mut layer = Linear::new(Placement::cpu(), "fc", 5, 3, true, 0.5, &mut rng).unwrap();
    jitter(&mut layer, 2);
    let before = values(&mut |f| layer.visit_params(f));
    let x = input(&[2, 3, 5], 3);
    // A stale gradient must not leak into the analytic one.
    layer.visit_params_mut(&mut |p| p.grad.f32_mut().unwrap().fill(100.0));
    let options = GradCheckOptions { probes: 100, ..Default::default() };
    let report = check_layer(&mut layer, &x, &options).unwrap();
    assert_passes("Linear, every element", &report, 3);
    assert_eq!(values(&mut |f| layer.visit_params(f)), before);
    assert_eq!(report.tensors.iter().map(|t| t.probes.len()).collect::<Vec<_>>(), [15, 3, 30]);
    // The gradients left behind are the analytic ones.
    layer.visit_params(&mut |p| assert!(p.grad.to_vec().iter().all(|g| g.abs() < 50.0), "{}", p.name));
}

#[test]
fn linear_in_both_layouts_passes() {
    let mut rng = fastrand::Rng::with_seed(1);
    let x = input(&[2, 3, 6], 5);
    let mut layer = Linear::new(Placement::cpu(), "fc", 6, 4, true, 0.5, &mut rng).unwrap();
    jitter(&mut layer, 1);
    assert_passes("Linear [in, out]", &check_layer(&mut layer, &x, &GradCheckOptions::default()).unwrap(), 3);
    let mut layer = Linear::with_layout(Placement::cpu(), "fc", 6, 4, kernels::ops::matmul::WeightLayout::OutIn, false, 0.5, &mut rng).unwrap();
    assert_passes("Linear [out, in]", &check_layer(&mut layer, &x, &GradCheckOptions::default()).unwrap(), 2);
}

#[test]
fn norms_pass() {
    let x = input(&[2, 3, 8], 6);
    let mut ln = LayerNorm::new(Placement::cpu(), "ln", 8).unwrap();
    jitter(&mut ln, 3);
    assert_passes("LayerNorm", &check_layer(&mut ln, &x, &GradCheckOptions::default()).unwrap(), 3);
    let mut rms = RmsNorm::new(Placement::cpu(), "rms", 8, 1e-5).unwrap();
    jitter(&mut rms, 4);
    assert_passes("RmsNorm", &check_layer(&mut rms, &x, &GradCheckOptions::default()).unwrap(), 2);
}

#[test]
fn llama_attention_passes() {
    let mut rng = fastrand::Rng::with_seed(2);
    let shape = AttentionShape { n_embd: 16, n_head: 4, n_kv_head: 2, rope_theta: 100.0 };
    let mut attn = LlamaAttention::new(Placement::cpu(), "attn", shape, 0.3, 0.3, &mut rng).unwrap();
    let x = input(&[2, 5, 16], 7);
    assert_passes("LlamaAttention", &check_layer(&mut attn, &x, &GradCheckOptions { probes: 10, ..Default::default() }).unwrap(), 3);
}

#[test]
fn gpt_block_passes() {
    let mut rng = fastrand::Rng::with_seed(3);
    let config = GptConfig { n_head: 2, n_embd: 8, ..GptConfig::default() };
    let mut block = Block::new(Placement::cpu(), "h.0", &config, 0.3, 0.3, &mut rng).unwrap();
    jitter(&mut block, 5);
    let x = input(&[2, 4, 8], 8);
    assert_passes("Block", &check_layer(&mut block, &x, &GradCheckOptions::default()).unwrap(), 13);
}

fn tokens(shape: [usize; 2], vocab: u32, seed: u64) -> Tensor {
    let mut rng = fastrand::Rng::with_seed(seed);
    Tensor::from_u32(&shape, (0..shape[0] * shape[1]).map(|_| rng.u32(0..vocab)).collect()).unwrap()
}

/// A model's loss is one number of order 1: steps of 1e-2 (not 1e-3) lift most gradients
/// of a tiny model above the floor, at the price of a truncation error (h^2) near 1%, so
/// the tolerance is 2% (as `gpt_grad.rs` and `llama.rs` have it).
fn model_options() -> GradCheckOptions {
    GradCheckOptions { probes: 12, eps: 1e-2, tolerance: 2e-2, ..Default::default() }
}

#[test]
fn tiny_gpt_passes() {
    let config = GptConfig { vocab_size: 11, context_length: 8, n_layer: 2, n_head: 2, n_embd: 8, ..GptConfig::default() };
    let mut model = Gpt::new(config, Device::Cpu, 7).unwrap();
    let mut rng = fastrand::Rng::with_seed(3);
    model.visit_params_mut(&mut |p| {
        for x in p.value.f32_mut().unwrap() {
            *x = if p.name.contains("ln_") || p.name.ends_with(".bias") { *x + 0.3 * (rng.f32() - 0.5) } else { *x * 5.0 };
        }
    });
    let before = values(&mut |f| model.visit_params(f));
    // A stale gradient must not leak into the analytic one.
    model.visit_params_mut(&mut |p| p.grad.f32_mut().unwrap().fill(100.0));
    let report = check_model(&mut model, &tokens([2, 5], 11, 1), &tokens([2, 5], 11, 2), &model_options()).unwrap();
    assert_passes("tiny Gpt", &report, 2 + 2 * 12 + 2);
    assert_eq!(values(&mut |f| model.visit_params(f)), before);
}

#[test]
fn tiny_llama_passes() {
    for tied in [false, true] {
        let config = LlamaConfig {
            vocab_size: 11,
            context_length: 8,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            n_embd: 16,
            intermediate_size: 24,
            rope_theta: 100.0,
            rms_norm_eps: 1e-5,
            tie_embeddings: tied,
        };
        let mut model = Llama::new(config, Device::Cpu, 7).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        model.visit_params_mut(&mut |p| {
            for x in p.value.f32_mut().unwrap() {
                *x = if p.name.contains("norm") { *x + 0.6 * (rng.f32() - 0.5) } else { *x * 10.0 };
            }
        });
        let report = check_model(&mut model, &tokens([2, 5], 11, 1), &tokens([2, 5], 11, 2), &model_options()).unwrap();
        assert_passes(&format!("tiny Llama tied={tied}"), &report, 1 + 2 * 6 + 1 + usize::from(!tied));
    }
}
