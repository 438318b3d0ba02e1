use kernels::ops::matmul::{matmul_backward, matmul_forward, matmul_gelu_forward, WeightLayout};
use kernels::Tensor;

use super::{empty_like, take_saved, Layer};
use crate::param::{constant, normal, Placement};
use crate::{Param, Result};

/// y = x @ W + b with W stored [in, out] (Hugging Face GPT-2's Conv1D layout).
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    input: Option<Tensor>,
}

impl Linear {
    /// W ~ N(0, std^2) (decayed by AdamW), b = 0; drawn on the host, then placed.
    pub fn new(at: Placement, name: &str, c_in: usize, c_out: usize, bias: bool, std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        let w = Tensor::from_vec(&[c_in, c_out], normal(rng, c_in * c_out, std))?;
        Ok(Self {
            weight: Param::new(format!("{name}.weight"), w, true, at)?,
            bias: bias.then(|| Param::new(format!("{name}.bias"), constant(&[c_out], 0.0), false, at)).transpose()?,
            input: None,
        })
    }

    /// Drops the kept input (selective recomputation: it is recomputed before backward).
    pub(crate) fn forget_input(&mut self) {
        self.input = None;
    }

    /// Whether an input is kept for backward.
    pub(crate) fn has_input(&self) -> bool {
        self.input.is_some()
    }

    /// Puts back a recomputed input before backward.
    pub(crate) fn restore_input(&mut self, x: Tensor) {
        self.input = Some(x);
    }

    /// The forward with a GeLU after it, as one op (on CUDA the GeLU runs in the matmul's
    /// epilogue, so the pre-GeLU activations are written once and never read back):
    /// returns (pre-GeLU x @ W + b, gelu of it), both (.., OC). Keeps `x` like `forward`; the
    /// pre-GeLU tensor is what `gelu_backward` needs, so the caller keeps it for that.
    pub(crate) fn forward_gelu(&mut self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let shape = self.out_shape(x);
        let (mut pre, mut out) = (empty_like(x, &shape)?, empty_like(x, &shape)?);
        matmul_gelu_forward(&mut out, Some(&mut pre), x, self.weight.compute(), self.bias.as_ref().map(|b| b.compute()), WeightLayout::InOut)?;
        self.input = Some(x.clone());
        Ok((pre, out))
    }

    fn out_shape(&self, x: &Tensor) -> Vec<usize> {
        let mut s = x.shape().to_vec();
        *s.last_mut().expect("input has a channel dimension") = self.weight.value.shape()[1];
        s
    }
}

impl Layer for Linear {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut out = empty_like(x, &self.out_shape(x))?;
        matmul_forward(&mut out, x, self.weight.compute(), self.bias.as_ref().map(|b| b.compute()), WeightLayout::InOut)?;
        self.input = Some(x.clone());
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let x = take_saved(&mut self.input, "Linear")?;
        let mut dx = empty_like(&x, x.shape())?;
        let (dweight, weight) = self.weight.grad_and_compute();
        matmul_backward(&mut dx, dweight, self.bias.as_mut().map(|b| &mut b.grad), dout, &x, weight, WeightLayout::InOut)?;
        Ok(dx)
    }

    fn release(&mut self) {
        self.input = None;
    }
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.weight);
        if let Some(b) = &self.bias {
            f(b);
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}
