use kernels::ops::residual::{accumulate, residual_forward};
use kernels::Tensor;

use super::{empty_like, CausalSelfAttention, Layer, LayerNorm, Mlp};
use crate::param::Placement;
use crate::recompute::BlockRecompute;
use crate::{Param, Result};

/// A pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.)). The first residual
/// add and ln_2 run as one op, and so do the MLP's c_fc and GeLU (under every recomputation
/// policy, see [`Mlp`]).
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
    recompute: BlockRecompute,
    /// Full recomputation: the input of the last forward, the only thing kept.
    input: Option<Tensor>,
}

impl Block {
    pub fn new(at: Placement, name: &str, c: usize, n_head: usize, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::new(at, &format!("{name}.ln_1"), c)?,
            attn: CausalSelfAttention::new(at, &format!("{name}.attn"), c, n_head, std, proj_std, rng)?,
            ln_2: LayerNorm::new(at, &format!("{name}.ln_2"), c)?,
            mlp: Mlp::new(at, &format!("{name}.mlp"), c, std, proj_std, rng)?,
            recompute: BlockRecompute::None,
            input: None,
        })
    }

    /// Takes effect at the next forward (a pending backward uses what its forward kept).
    pub fn set_recompute(&mut self, policy: BlockRecompute) {
        self.recompute = policy;
        self.mlp.recompute_gelu = policy == BlockRecompute::Selective;
    }

    pub fn recompute(&self) -> BlockRecompute {
        self.recompute
    }

    /// The block's forward with every sublayer keeping its state (minus the LayerNorm and
    /// GeLU outputs under selective recomputation, which backward puts back).
    fn forward_saving(&mut self, x: &Tensor) -> Result<Tensor> {
        let selective = self.recompute == BlockRecompute::Selective;
        let a = self.attn.forward(&self.ln_1.forward(x)?)?;
        if selective {
            self.attn.c_attn.forget_input();
        }
        let (x1, h) = self.ln_2.forward_residual(x, &a)?; // x1 = x + a, h = ln_2(x1), (B,T,C)
        drop(a);
        let m = self.mlp.forward(&h)?;
        drop(h);
        if selective {
            self.mlp.c_fc.forget_input();
        }
        let mut x2 = empty_like(x, x.shape())?;
        residual_forward(&mut x2, &x1, &m)?;
        Ok(x2)
    }
}

impl Layer for Block {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        self.input = None;
        let out = self.forward_saving(x)?;
        if self.recompute == BlockRecompute::Full {
            self.ln_1.release();
            self.attn.release();
            self.ln_2.release();
            self.mlp.release();
            self.input = Some(x.clone());
        }
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        // Full recomputation: the same forward again (the output is not needed), then the
        // ordinary backward. Selective recomputation happens just before each use.
        if let Some(x) = self.input.take() {
            drop(self.forward_saving(&x)?);
        }
        // The residual passes dout straight through; each branch's gradient adds onto it.
        if !self.mlp.c_fc.has_input() {
            self.mlp.c_fc.restore_input(self.ln_2.recompute_output()?);
        }
        let mut dx1 = self.ln_2.backward(&self.mlp.backward(dout)?)?;
        accumulate(&mut dx1, dout)?;
        if !self.attn.c_attn.has_input() {
            self.attn.c_attn.restore_input(self.ln_1.recompute_output()?);
        }
        let mut dx = self.ln_1.backward(&self.attn.backward(&dx1)?)?;
        accumulate(&mut dx, &dx1)?;
        Ok(dx)
    }

    fn release(&mut self) {
        self.ln_1.release();
        self.attn.release();
        self.ln_2.release();
        self.mlp.release();
        self.input = None;
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
