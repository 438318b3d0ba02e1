use kernels::ops::residual::{accumulate, residual_forward};
use kernels::Tensor;

use super::{empty_like, CausalSelfAttention, Layer, LayerNorm, Mlp};
use crate::param::Placement;
use crate::{Param, Result};

/// A pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.)).
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn new(at: Placement, name: &str, c: usize, n_head: usize, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::new(at, &format!("{name}.ln_1"), c)?,
            attn: CausalSelfAttention::new(at, &format!("{name}.attn"), c, n_head, std, proj_std, rng)?,
            ln_2: LayerNorm::new(at, &format!("{name}.ln_2"), c)?,
            mlp: Mlp::new(at, &format!("{name}.mlp"), c, std, proj_std, rng)?,
        })
    }
}

impl Layer for Block {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let a = self.attn.forward(&self.ln_1.forward(x)?)?;
        let mut x1 = empty_like(x, x.shape())?;
        residual_forward(&mut x1, x, &a)?;
        let m = self.mlp.forward(&self.ln_2.forward(&x1)?)?;
        let mut x2 = empty_like(x, x.shape())?;
        residual_forward(&mut x2, &x1, &m)?;
        Ok(x2)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        // The residual passes dout straight through; each branch's gradient adds onto it.
        let mut dx1 = self.ln_2.backward(&self.mlp.backward(dout)?)?;
        accumulate(&mut dx1, dout)?;
        let mut dx = self.ln_1.backward(&self.attn.backward(&dx1)?)?;
        accumulate(&mut dx, &dx1)?;
        Ok(dx)
    }

    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.ln_1.visit_params(f);
        self.attn.visit_params(f);
        self.ln_2.visit_params(f);
        self.mlp.visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.ln_1.visit_params_mut(f);
        self.attn.visit_params_mut(f);
        self.ln_2.visit_params_mut(f);
        self.mlp.visit_params_mut(f);
    }
}
