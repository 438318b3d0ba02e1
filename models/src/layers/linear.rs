use kernels::ops::matmul::{matmul_backward, matmul_forward, matmul_gelu_forward, WeightLayout};
use kernels::Tensor;

use super::{empty_like, take_saved, Layer};
use crate::param::{constant, normal, Placement};
use crate::{Error, Param, Result};

/// y = x @ W + b, with W stored [in, out] ([`WeightLayout::InOut`], Hugging Face GPT-2's
/// Conv1D) or [out, in] ([`WeightLayout::OutIn`], torch `nn.Linear`, Hugging Face Llama).
///
/// Under selective recomputation its saved input may be dropped
/// ([`Layer::forget_input`]) and given back before backward ([`Layer::restore_input`]).
pub struct Linear {
    /// `{name}.weight`, (in, out) or (out, in) as [`Linear::layout`] says; decayed.
    pub weight: Param,
    /// `{name}.bias` (out), if the layer has one; not decayed.
    pub bias: Option<Param>,
    layout: WeightLayout,
    /// The input of the last forward, what backward needs for the weight gradient.
    input: Option<Tensor>,
    /// Whether `forget_input` dropped `input` (recomputation gives it back).
    forgotten: bool,
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
            forgotten: false,
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

    /// The forward with a GeLU after it, as one op (on CUDA the GeLU runs in the matmul's
    /// epilogue, so the pre-GeLU activations are written once and never read back):
    /// returns (pre-GeLU x @ W + b, gelu of it), both (.., OC). Keeps `x` like `forward`; the
    /// pre-GeLU tensor is what `gelu_backward` needs, so the caller keeps it for that (in a
    /// [`super::Gelu`] with [`super::Gelu::keep_input`], as [`super::Mlp`] does). The GeLU
    /// output equals, bit for bit, `gelu_forward` of the pre-GeLU tensor.
    pub fn forward_gelu(&mut self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let shape = self.out_shape(x);
        let (mut pre, mut out) = (empty_like(x, &shape)?, empty_like(x, &shape)?);
        matmul_gelu_forward(&mut out, Some(&mut pre), x, self.weight.compute(), self.bias.as_ref().map(|b| b.compute()), self.layout)?;
        self.input = Some(x.clone());
        self.forgotten = false;
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
        self.forgotten = false;
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let x = take_saved(&mut self.input, "Linear")?;
        self.forgotten = false;
        let mut dx = empty_like(&x, x.shape())?;
        let (dweight, weight) = self.weight.grad_and_compute();
        matmul_backward(&mut dx, dweight, self.bias.as_mut().map(|b| &mut b.grad), dout, &x, weight, self.layout)?;
        Ok(dx)
    }

    crate::layer_fields! {
        children: [weight, bias],
        saved: [input, forgotten],
        config: [layout],
    }

    fn forget_input(&mut self) -> bool {
        self.forgotten = self.input.take().is_some();
        self.forgotten
    }

    fn input_forgotten(&self) -> bool {
        self.forgotten
    }

    fn restore_input(&mut self, x: Tensor) -> Result<()> {
        if !self.forgotten {
            return Err(Error::Recompute(format!("{}: restore_input without forget_input", self.weight.name)));
        }
        self.input = Some(x);
        self.forgotten = false;
        Ok(())
    }
}
