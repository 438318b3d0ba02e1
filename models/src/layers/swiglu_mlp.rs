use kernels::ops::matmul::WeightLayout;
use kernels::ops::swiglu::{swiglu_backward, swiglu_forward};
use kernels::Tensor;

use super::{empty_like, take_saved, Layer, Linear};
use crate::param::Placement;
use crate::{Param, Result};

/// Llama's MLP: down_proj(silu(gate_proj(x)) * up_proj(x)), C -> H -> C, no biases, weights
/// stored [out, in]. gate_proj and up_proj run as one matmul, `gate_up_proj` (2H, C), whose
/// weight exports as Hugging Face's `gate_proj` and `up_proj` (its first and last H rows).
pub struct SwigluMlp {
    /// The fused [gate | up] projection, C -> 2H.
    pub gate_up_proj: Linear,
    /// H -> C.
    pub down_proj: Linear,
    /// [gate | up] (.., 2H) of the last forward, what the SwiGLU backward reads.
    gate_up: Option<Tensor>,
}

impl SwigluMlp {
    /// Parameters `{name}.gate_up_proj.weight` (exported as `{name}.gate_proj.weight` and
    /// `{name}.up_proj.weight`) ~ N(0, std^2) and `{name}.down_proj.weight` ~ N(0, proj_std^2).
    pub fn new(at: Placement, name: &str, c: usize, hidden: usize, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        let mut gate_up_proj = Linear::with_layout(at, &format!("{name}.gate_up_proj"), c, 2 * hidden, WeightLayout::OutIn, false, std, rng)?;
        gate_up_proj.weight.export_parts = vec![(format!("{name}.gate_proj.weight"), hidden), (format!("{name}.up_proj.weight"), hidden)];
        let down_proj = Linear::with_layout(at, &format!("{name}.down_proj"), hidden, c, WeightLayout::OutIn, false, proj_std, rng)?;
        Ok(Self { gate_up_proj, down_proj, gate_up: None })
    }
}

impl Layer for SwigluMlp {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(x)?; // (B,T,2H)
        let mut shape = gate_up.shape().to_vec();
        *shape.last_mut().expect("(B,T,2H)") /= 2;
        let mut h = empty_like(&gate_up, &shape)?; // (B,T,H)
        swiglu_forward(&mut h, &gate_up)?;
        self.gate_up = Some(gate_up);
        self.down_proj.forward(&h)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let dh = self.down_proj.backward(dout)?;
        let gate_up = take_saved(&mut self.gate_up, "SwigluMlp")?;
        let mut dgate_up = empty_like(&gate_up, gate_up.shape())?;
        swiglu_backward(&mut dgate_up, &dh, &gate_up)?;
        drop((gate_up, dh));
        self.gate_up_proj.backward(&dgate_up)
    }

    fn release(&mut self) {
        self.gate_up_proj.release();
        self.down_proj.release();
        self.gate_up = None;
    }

    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.gate_up_proj.visit_params(f);
        self.down_proj.visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.gate_up_proj.visit_params_mut(f);
        self.down_proj.visit_params_mut(f);
    }
}
