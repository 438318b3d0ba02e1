use kernels::ops::matmul::WeightLayout;
use kernels::ops::swiglu::{swiglu_backward, swiglu_forward};
use kernels::Tensor;

use super::{empty_like, saved, take_saved, Layer, Linear};
use crate::param::Placement;
use crate::Result;

/// Llama's MLP: down_proj(silu(gate_proj(x)) * up_proj(x)), C -> H -> C, weights stored
/// [out, in]. gate_proj and up_proj run as one matmul, `gate_up_proj` (2H, C), whose weight
/// (and bias, if any) exports as Hugging Face's `gate_proj` and `up_proj` (its first and last
/// H rows). Its input is kept by `gate_up_proj` ([`Layer::forget_input`] drops it);
/// [`Layer::forget_activations`] drops the SwiGLU output (down_proj's input, (B,T,H)), which
/// backward recomputes from the kept [gate | up].
pub struct SwigluMlp {
    /// The fused [gate | up] projection, C -> 2H.
    pub gate_up_proj: Linear,
    /// H -> C.
    pub down_proj: Linear,
    /// [gate | up] (.., 2H) of the last forward, what the SwiGLU backward reads.
    gate_up: Option<Tensor>,
}

impl SwigluMlp {
    /// Llama's: no biases. Parameters `{name}.gate_up_proj.weight` (exported as
    /// `{name}.gate_proj.weight` and `{name}.up_proj.weight`) ~ N(0, std^2) and
    /// `{name}.down_proj.weight` ~ N(0, proj_std^2).
    pub fn new(at: Placement, name: &str, c: usize, hidden: usize, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        Self::with_bias(at, name, c, hidden, false, std, proj_std, rng)
    }

    /// The same, with zero biases on both projections when `bias` (`gate_up_proj.bias`
    /// exported as `gate_proj.bias` and `up_proj.bias`).
    #[allow(clippy::too_many_arguments)]
    pub fn with_bias(at: Placement, name: &str, c: usize, hidden: usize, bias: bool, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        let mut gate_up_proj = Linear::with_layout(at, &format!("{name}.gate_up_proj"), c, 2 * hidden, WeightLayout::OutIn, bias, std, rng)?;
        gate_up_proj.weight.export_parts = vec![(format!("{name}.gate_proj.weight"), hidden), (format!("{name}.up_proj.weight"), hidden)];
        if let Some(b) = &mut gate_up_proj.bias {
            b.export_parts = vec![(format!("{name}.gate_proj.bias"), hidden), (format!("{name}.up_proj.bias"), hidden)];
        }
        let down_proj = Linear::with_layout(at, &format!("{name}.down_proj"), hidden, c, WeightLayout::OutIn, bias, proj_std, rng)?;
        Ok(Self { gate_up_proj, down_proj, gate_up: None })
    }

    /// silu(gate) * up (.., H) of [gate | up] (.., 2H).
    fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
        let mut shape = gate_up.shape().to_vec();
        *shape.last_mut().expect("(B,T,2H)") /= 2;
        let mut h = empty_like(gate_up, &shape)?; // (B,T,H)
        swiglu_forward(&mut h, gate_up)?;
        Ok(h)
    }
}

impl Layer for SwigluMlp {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(x)?; // (B,T,2H)
        let h = Self::swiglu(&gate_up)?;
        self.gate_up = Some(gate_up);
        self.down_proj.forward(&h)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        // What forward kept decides: a dropped SwiGLU output is rebuilt by the same op.
        if self.down_proj.input_forgotten() {
            let h = Self::swiglu(saved(&self.gate_up, "SwigluMlp")?)?;
            self.down_proj.restore_input(h)?;
        }
        let dh = self.down_proj.backward(dout)?;
        let gate_up = take_saved(&mut self.gate_up, "SwigluMlp")?;
        let mut dgate_up = empty_like(&gate_up, gate_up.shape())?;
        swiglu_backward(&mut dgate_up, &dh, &gate_up)?;
        drop((gate_up, dh));
        self.gate_up_proj.backward(&dgate_up)
    }

    crate::layer_fields! {
        children: [gate_up_proj, down_proj],
        saved: [gate_up],
        config: [],
    }

    fn forget_input(&mut self) -> bool {
        self.gate_up_proj.forget_input()
    }

    fn input_forgotten(&self) -> bool {
        self.gate_up_proj.input_forgotten()
    }

    fn restore_input(&mut self, x: Tensor) -> Result<()> {
        self.gate_up_proj.restore_input(x)
    }

    /// Drops the SwiGLU output kept by down_proj; backward recomputes it from [gate | up].
    fn forget_activations(&mut self) -> bool {
        self.down_proj.forget_input()
    }
}
