use kernels::ops::layernorm::{layernorm_backward, layernorm_forward};
use kernels::{Device, Tensor};

use super::{empty_like, saved, Layer};
use crate::param::constant;
use crate::{Param, Result};

/// LayerNorm over the last dimension, weight 1 and bias 0 at initialisation.
pub struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
    /// (input, mean, rstd) of the last forward.
    cache: Option<(Tensor, Tensor, Tensor)>,
}

impl LayerNorm {
    pub fn new(device: Device, name: &str, c: usize) -> Self {
        Self {
            weight: Param::new(format!("{name}.weight"), constant(device, &[c], 1.0), false),
            bias: Param::new(format!("{name}.bias"), constant(device, &[c], 0.0), false),
            cache: None,
        }
    }
}

impl Layer for LayerNorm {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let n = x.numel() / self.weight.numel();
        let mut out = empty_like(x, x.shape())?;
        let (mut mean, mut rstd) = (empty_like(x, &[n])?, empty_like(x, &[n])?);
        layernorm_forward(&mut out, &mut mean, &mut rstd, x, &self.weight.value, &self.bias.value)?;
        self.cache = Some((x.clone(), mean, rstd));
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let (x, mean, rstd) = saved(&self.cache, "LayerNorm")?;
        let mut dx = empty_like(x, x.shape())?;
        layernorm_backward(&mut dx, &mut self.weight.grad, &mut self.bias.grad, dout, x, &self.weight.value, mean, rstd)?;
        Ok(dx)
    }

    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.weight);
        f(&self.bias);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}
