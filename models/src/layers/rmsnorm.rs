use kernels::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use kernels::Tensor;

use super::{empty_f32, empty_like, saved, take_saved, Layer};
use crate::param::{constant, Placement};
use crate::{Param, Result};

/// RMSNorm over the last dimension (Llama): x / rms(x) * weight, no bias; the weight starts
/// at 1 and is not decayed. It can rebuild its output from what it keeps
/// ([`Layer::recompute_output`]).
pub struct RmsNorm {
    /// The per-channel scale (C).
    pub weight: Param,
    /// Added to the mean square before the square root.
    pub eps: f32,
    /// (input, rstd (N, f32)) of the last forward.
    cache: Option<(Tensor, Tensor)>,
}

impl RmsNorm {
    /// A weight named `{name}.weight` of `c` ones.
    pub fn new(at: Placement, name: &str, c: usize, eps: f32) -> Result<Self> {
        Ok(Self { weight: Param::new(format!("{name}.weight"), constant(&[c], 1.0), false, at)?, eps, cache: None })
    }
}

impl Layer for RmsNorm {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let n = x.numel() / self.weight.numel();
        let mut out = empty_like(x, x.shape())?;
        let mut rstd = empty_f32(x, &[n])?;
        rmsnorm_forward(&mut out, &mut rstd, x, self.weight.compute(), self.eps)?;
        self.cache = Some((x.clone(), rstd));
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let (x, rstd) = take_saved(&mut self.cache, "RmsNorm")?;
        let mut dx = empty_like(&x, x.shape())?;
        let (dweight, weight) = self.weight.grad_and_compute();
        rmsnorm_backward(&mut dx, dweight, dout, &x, weight, &rstd)?;
        Ok(dx)
    }

    crate::layer_fields! {
        children: [weight],
        saved: [cache],
        config: [eps],
    }

    /// The last forward's output again, from its kept input (the same op: the same bits).
    fn recompute_output(&self) -> Result<Option<Tensor>> {
        let (x, _) = saved(&self.cache, "RmsNorm")?;
        let n = x.numel() / self.weight.numel();
        let mut out = empty_like(x, x.shape())?;
        let mut rstd = empty_f32(x, &[n])?;
        rmsnorm_forward(&mut out, &mut rstd, x, self.weight.compute(), self.eps)?;
        Ok(Some(out))
    }
}
