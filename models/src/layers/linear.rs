use kernels::ops::matmul::{matmul_backward, matmul_forward, matmul_gelu_forward, WeightLayout};
use kernels::Tensor;

use super::{empty_like, take_saved, Layer};
use crate::param::{constant, normal, Placement};
use crate::{Param, Result};

/// y = x @ W + b, with W stored [in, out] ([`WeightLayout::InOut`], Hugging Face GPT-2's
/// Conv1D) or [out, in] ([`WeightLayout::OutIn`], torch `nn.Linear`, Hugging Face Llama).
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    layout: WeightLayout,
    input: Option<Tensor>,
}

impl Linear {
    /// W ~ N(0, std^2) stored [in, out] (decayed by AdamW), b = 0; drawn on the host, then placed.
    pub fn new(at: Placement, name: &str, c_in: usize, c_out: usize, bias: bool, std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        Self::with_layout(at, name, c_in, c_out, WeightLayout::InOut, bias, std, rng)
    }

    /// W ~ N(0, std^2) stored in `layout` (drawn in storage order), b = 0 when `bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn with_layout(
        at: Placement,
        name: &str,
        c_in: usize,
        c_out: usize,
        layout: WeightLayout,
        bias: bool,
        std: f32,
        rng: &mut fastrand::Rng,
    ) -> Result<Self> {
        let shape = match layout {
            WeightLayout::InOut => [c_in, c_out],
            WeightLayout::OutIn => [c_out, c_in],
        };
        let w = Tensor::from_vec(&shape, normal(rng, c_in * c_out, std))?;
        Ok(Self {
            weight: Param::new(format!("{name}.weight"), w, true, at)?,
            bias: bias.then(|| Param::new(format!("{name}.bias"), constant(&[c_out], 0.0), false, at)).transpose()?,
            layout,
            input: None,
        })
    }

    /// How `weight` is stored.
    pub fn layout(&self) -> WeightLayout {
        self.layout
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        let shape = self.weight.value.shape();
        match self.layout {
            WeightLayout::InOut => shape[1],
            WeightLayout::OutIn => shape[0],
        }
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
        matmul_gelu_forward(&mut out, Some(&mut pre), x, self.weight.compute(), self.bias.as_ref().map(|b| b.compute()), self.layout)?;
        self.input = Some(x.clone());
        Ok((pre, out))
    }

    fn out_shape(&self, x: &Tensor) -> Vec<usize> {
        let mut s = x.shape().to_vec();
        *s.last_mut().expect("input has a channel dimension") = self.c_out();
        s
    }
}

impl Layer for Linear {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut out = empty_like(x, &self.out_shape(x))?;
        matmul_forward(&mut out, x, self.weight.compute(), self.bias.as_ref().map(|b| b.compute()), self.layout)?;
        self.input = Some(x.clone());
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let x = take_saved(&mut self.input, "Linear")?;
        let mut dx = empty_like(&x, x.shape())?;
        let (dweight, weight) = self.weight.grad_and_compute();
        matmul_backward(&mut dx, dweight, self.bias.as_mut().map(|b| &mut b.grad), dout, &x, weight, self.layout)?;
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
