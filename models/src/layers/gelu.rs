use kernels::ops::gelu::{gelu_backward, gelu_forward};
use kernels::Tensor;

use super::{empty_like, saved, take_saved, Layer};
use crate::{Param, Result};

/// GeLU (tanh approximation). No parameters.
#[derive(Default)]
pub struct Gelu {
    input: Option<Tensor>,
}

impl Gelu {
    /// The last forward's output again, from its kept input (selective recomputation).
    pub(crate) fn recompute_output(&self) -> Result<Tensor> {
        let x = saved(&self.input, "Gelu")?;
        let mut out = empty_like(x, x.shape())?;
        gelu_forward(&mut out, x)?;
        Ok(out)
    }
}

impl Gelu {
    /// Keeps `x` for backward when the forward ran fused into the op before it
    /// ([`super::Linear::forward_gelu`]).
    pub(crate) fn keep_input(&mut self, x: Tensor) {
        self.input = Some(x);
    }
}

impl Layer for Gelu {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut out = empty_like(x, x.shape())?;
        gelu_forward(&mut out, x)?;
        self.input = Some(x.clone());
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let x = take_saved(&mut self.input, "Gelu")?;
        let mut dx = empty_like(&x, x.shape())?;
        gelu_backward(&mut dx, &x, dout)?;
        Ok(dx)
    }

    fn release(&mut self) {
        self.input = None;
    }
    fn visit_params(&self, _f: &mut dyn FnMut(&Param)) {}
    fn visit_params_mut(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
}
