//! Layers a library user writes from the public API: a pre-norm block with selective
//! recomputation through the `Layer` hooks of its direct children only, a stack of boxed
//! layers, checked with the gradient checker; recomputation bit-identical to none; the hooks'
//! misuse is an error.

use kernels::ops::residual::{accumulate, residual_forward};
use kernels::Tensor;
use models::gradcheck::{check_layer, GradCheckOptions};
use models::layers::{empty_like, AttentionShape, Layer, Linear, LlamaAttention, RmsNorm, SwigluMlp};
use models::{layer_fields, Error, Param, Placement, Result};

/// x + mixer(norm(x)). Under `selective` the mixer drops its copy of norm's output after
/// forward and gets it back, recomputed by norm, before backward.
struct PreNorm<M> {
    norm: RmsNorm,
    mixer: M,
    selective: bool,
}

impl<M: Layer> Layer for PreNorm<M> {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let m = self.mixer.forward(&self.norm.forward(x)?)?;
        if self.selective {
            assert!(self.mixer.forget_input(), "the mixer keeps its input: it can drop it");
            self.mixer.forget_activations();
        }
        let mut y = empty_like(x, x.shape())?;
        residual_forward(&mut y, x, &m)?;
        Ok(y)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        self.mixer.restore_input_from(&self.norm)?;
        let mut dx = self.norm.backward(&self.mixer.backward(dout)?)?;
        accumulate(&mut dx, dout)?;
        Ok(dx)
    }

    layer_fields! { children: [norm, mixer], saved: [], config: [selective] }
}

/// Layers applied in turn.
struct Stack {
    layers: Vec<Box<dyn Layer>>,
}

impl Layer for Stack {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &mut self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let mut d = dout.clone();
        for layer in self.layers.iter_mut().rev() {
            d = layer.backward(&d)?;
        }
        Ok(d)
    }

    layer_fields! { children: [layers], saved: [], config: [] }
}

const C: usize = 16;

fn stack(selective: bool) -> Stack {
    let (at, mut rng) = (Placement::cpu(), fastrand::Rng::with_seed(9));
    let shape = AttentionShape { n_embd: C, n_head: 4, n_kv_head: 2, rope_theta: 100.0 };
    let attn = LlamaAttention::new(at, "0.attn", shape, 0.3, 0.3, &mut rng).unwrap();
    let mlp = SwigluMlp::new(at, "1.mlp", C, 24, 0.3, 0.3, &mut rng).unwrap();
    let proj = Linear::new(at, "2.proj", C, C, true, 0.3, &mut rng).unwrap();
    let mut s = Stack {
        layers: vec![
            Box::new(PreNorm { norm: RmsNorm::new(at, "0.norm", C, 1e-5).unwrap(), mixer: attn, selective }),
            Box::new(PreNorm { norm: RmsNorm::new(at, "1.norm", C, 1e-5).unwrap(), mixer: mlp, selective }),
            Box::new(PreNorm { norm: RmsNorm::new(at, "2.norm", C, 1e-5).unwrap(), mixer: proj, selective }),
        ],
    };
    let mut rng = fastrand::Rng::with_seed(4);
    s.visit_params_mut(&mut |p| {
        for v in p.value.f32_mut().unwrap() {
            *v += 0.3 * (rng.f32() - 0.5);
        }
    });
    s
}

fn input() -> Tensor {
    let mut rng = fastrand::Rng::with_seed(2);
    Tensor::from_vec(&[2, 5, C], (0..2 * 5 * C).map(|_| rng.f32() * 2.0 - 1.0).collect()).unwrap()
}

/// (output, input gradient, every parameter gradient) as bits, after one forward and backward.
fn run(layer: &mut dyn Layer, x: &Tensor) -> Vec<Vec<u32>> {
    let bits = |t: &Tensor| t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let out = layer.forward(x).unwrap();
    let dout = Tensor::from_vec(out.shape(), (0..out.numel()).map(|i| (i as f32 * 0.1).sin()).collect()).unwrap();
    let mut all = vec![bits(&out), bits(&layer.backward(&dout).unwrap())];
    layer.visit_params(&mut |p: &Param| all.push(bits(&p.grad)));
    all
}

#[test]
fn a_user_block_visits_every_child_and_passes_the_gradient_check() {
    let s = stack(false);
    let mut names = Vec::new();
    s.visit_params(&mut |p| names.push(p.name.clone()));
    assert_eq!(
        names,
        ["0.norm.weight", "0.attn.qkv_proj.weight", "0.attn.o_proj.weight", "1.norm.weight", "1.mlp.gate_up_proj.weight", "1.mlp.down_proj.weight", "2.norm.weight", "2.proj.weight", "2.proj.bias"]
    );
    for selective in [false, true] {
        let report = check_layer(&mut stack(selective), &input(), &GradCheckOptions { probes: 8, ..Default::default() }).unwrap();
        assert!(report.passed(), "selective={selective}:\n{report}");
        assert_eq!(report.tensors.len(), 10);
    }
}

#[test]
fn selective_recomputation_through_the_hooks_is_bit_identical() {
    kernels::host_pool::set_poison(true);
    let x = input();
    let none = run(&mut stack(false), &x);
    let selective = run(&mut stack(true), &x);
    assert_eq!(none.len(), 2 + 9);
    assert!(none == selective, "selective recomputation changed an output or a gradient");
}

#[test]
fn release_drops_what_forward_saved() {
    let mut s = stack(true);
    s.forward(&input()).unwrap();
    s.release();
    let err = s.backward(&input()).unwrap_err();
    assert!(err.to_string().contains("backward called without a preceding forward"), "{err}");
}

#[test]
fn the_hooks_misused_are_errors() {
    let (at, mut rng) = (Placement::cpu(), fastrand::Rng::with_seed(1));
    let mut fc = Linear::new(at, "fc", 4, 4, false, 0.1, &mut rng).unwrap();
    let x = Tensor::from_vec(&[1, 4], vec![1.0; 4]).unwrap();
    fc.forward(&x).unwrap();
    let err = fc.restore_input(x.clone()).unwrap_err();
    assert!(matches!(err, Error::Recompute(_)) && err.to_string().contains("fc.weight: restore_input without forget_input"), "{err}");
    assert!(!fc.input_forgotten());
    assert!(fc.forget_input() && fc.input_forgotten());
    // A producer that cannot rebuild its output (a Linear) cannot give it back.
    let producer = Linear::new(at, "p", 4, 4, false, 0.1, &mut rng).unwrap();
    let err = fc.restore_input_from(&producer).unwrap_err();
    assert!(err.to_string().contains("cannot recompute its output"), "{err}");
    // A layer without the hooks keeps everything.
    let mut norm = RmsNorm::new(at, "n", 4, 1e-5).unwrap();
    norm.forward(&x).unwrap();
    assert!(!norm.forget_input() && !norm.forget_activations());
    assert!(norm.restore_input(x).is_err());
    assert!(norm.recompute_output().unwrap().is_some());
}
