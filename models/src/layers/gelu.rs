use kernels::ops::gelu::{gelu_backward, gelu_forward};
use kernels::Tensor;

use super::{empty_like, saved, take_saved, Layer};
use crate::Result;

/// GeLU (tanh approximation). No parameters. It can rebuild its output from its kept input
/// ([`Layer::recompute_output`]).
#[derive(Default)]
pub struct Gelu {
    /// The input of the last forward.
    input: Option<Tensor>,
}

impl Gelu {
    /// Keeps `x` for backward when the forward ran fused into the op before it
    /// ([`super::Linear::forward_gelu`]), as if `forward(&x)` had run.
    pub fn keep_input(&mut self, x: Tensor) {
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

    crate::layer_fields! {
        children: [],
        saved: [input],
        config: [],
    }

    /// The last forward's output again, from its kept input.
    fn recompute_output(&self) -> Result<Option<Tensor>> {
        let x = saved(&self.input, "Gelu")?;
        let mut out = empty_like(x, x.shape())?;
        gelu_forward(&mut out, x)?;
        Ok(Some(out))
    }
}
