use kernels::ops::attention::{attention_backward, attention_forward};
use kernels::{Device, Tensor};

use super::{empty_like, saved, Layer, Linear};
use crate::{Param, Result};

/// Causal multi-head self-attention: c_attn (C -> 3C), attention, c_proj (C -> C).
pub struct CausalSelfAttention {
    pub c_attn: Linear,
    pub c_proj: Linear,
    pub n_head: usize,
    /// (qkv, attention probabilities) of the last forward.
    cache: Option<(Tensor, Tensor)>,
}

impl CausalSelfAttention {
    /// `proj_std`: initial std of c_proj (GPT-2 scales residual projections by 1/sqrt(2L)).
    pub fn new(device: Device, name: &str, c: usize, n_head: usize, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Self {
        Self {
            c_attn: Linear::new(device, &format!("{name}.c_attn"), c, 3 * c, true, std, rng),
            c_proj: Linear::new(device, &format!("{name}.c_proj"), c, c, true, proj_std, rng),
            n_head,
            cache: None,
        }
    }
}

impl Layer for CausalSelfAttention {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.c_attn.forward(x)?; // (B,T,3C)
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let mut y = empty_like(x, x.shape())?;
        let mut att = empty_like(x, &[b, self.n_head, t, t])?;
        attention_forward(&mut y, &mut att, &qkv, self.n_head)?;
        self.cache = Some((qkv, att));
        self.c_proj.forward(&y)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let dy = self.c_proj.backward(dout)?;
        let (qkv, att) = saved(&self.cache, "CausalSelfAttention")?;
        let mut dqkv = empty_like(qkv, qkv.shape())?;
        attention_backward(&mut dqkv, &dy, qkv, att, self.n_head)?;
        self.c_attn.backward(&dqkv)
    }

    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.c_attn.visit_params(f);
        self.c_proj.visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.c_attn.visit_params_mut(f);
        self.c_proj.visit_params_mut(f);
    }
}
