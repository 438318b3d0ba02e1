use kernels::ops::layernorm::{layernorm_backward, layernorm_forward, residual_layernorm_forward};
use kernels::Tensor;

use super::{empty_f32, empty_like, saved, take_saved, Layer};
use crate::param::{constant, Placement};
use crate::{Param, Result};

/// LayerNorm over the last dimension, weight 1 and bias 0 at initialisation (neither
/// decayed). It can rebuild its output from what it keeps ([`Layer::recompute_output`]),
/// which selective recomputation uses.
pub struct LayerNorm {
    /// `{name}.weight` (C).
    pub weight: Param,
    /// `{name}.bias` (C).
    pub bias: Param,
    /// (input, mean, rstd) of the last forward.
    cache: Option<(Tensor, Tensor, Tensor)>,
}

impl LayerNorm {
    /// `{name}.weight` and `{name}.bias` of `c` channels.
    pub fn new(at: Placement, name: &str, c: usize) -> Result<Self> {
        Ok(Self {
            weight: Param::new(format!("{name}.weight"), constant(&[c], 1.0), false, at)?,
            bias: Param::new(format!("{name}.bias"), constant(&[c], 0.0), false, at)?,
            cache: None,
        })
    }

    /// residual = a + b, then this LayerNorm of it, as one op (one pass over each row instead
    /// of a residual add and a LayerNorm reading its result back): returns (residual, output),
    /// both (.., C), and keeps (residual, mean, rstd) exactly as `forward(&residual)` would,
    /// so the backward and `recompute_output` are unchanged.
    pub fn forward_residual(&mut self, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = a.numel() / self.weight.numel();
        let (mut residual, mut out) = (empty_like(a, a.shape())?, empty_like(a, a.shape())?);
        let (mut mean, mut rstd) = (empty_f32(a, &[n])?, empty_f32(a, &[n])?);
        residual_layernorm_forward(&mut residual, &mut out, &mut mean, &mut rstd, a, b, self.weight.compute(), self.bias.compute())?;
        self.cache = Some((residual.clone(), mean, rstd));
        Ok((residual, out))
    }
}

impl Layer for LayerNorm {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let n = x.numel() / self.weight.numel();
        let mut out = empty_like(x, x.shape())?;
        let (mut mean, mut rstd) = (empty_f32(x, &[n])?, empty_f32(x, &[n])?);
        layernorm_forward(&mut out, &mut mean, &mut rstd, x, self.weight.compute(), self.bias.compute())?;
        self.cache = Some((x.clone(), mean, rstd));
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let (x, mean, rstd) = take_saved(&mut self.cache, "LayerNorm")?;
        let mut dx = empty_like(&x, x.shape())?;
        let (dweight, weight) = self.weight.grad_and_compute();
        layernorm_backward(&mut dx, dweight, &mut self.bias.grad, dout, &x, weight, &mean, &rstd)?;
        Ok(dx)
    }

    crate::layer_fields! {
        children: [weight, bias],
        saved: [cache],
        config: [],
    }

    /// The last forward's output again, from its kept input: the same op on the same input
    /// and weights, so the same bits. The statistics it writes again are discarded (the kept
    /// ones are identical).
    fn recompute_output(&self) -> Result<Option<Tensor>> {
        let (x, _, _) = saved(&self.cache, "LayerNorm")?;
        let n = x.numel() / self.weight.numel();
        let mut out = empty_like(x, x.shape())?;
        let (mut mean, mut rstd) = (empty_f32(x, &[n])?, empty_f32(x, &[n])?);
        layernorm_forward(&mut out, &mut mean, &mut rstd, x, self.weight.compute(), self.bias.compute())?;
        Ok(Some(out))
    }
}
