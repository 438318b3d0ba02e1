use kernels::ops::residual::{accumulate, residual_forward};
use kernels::Tensor;

use super::{empty_like, CausalSelfAttention, Layer, LayerNorm, Mlp, SwigluMlp};
use crate::gpt::{Activation, GptConfig};
use crate::param::Placement;
use crate::recompute::BlockRecompute;
use crate::{Param, Result};

/// A pre-LN transformer block (GPT-2): x + attn(ln_1(x)), then + mlp(ln_2(.)). The first
/// residual add and ln_2 run as one op, and so do the GeLU MLP's c_fc and GeLU (under every
/// recomputation policy, see [`Mlp`]).
///
/// Recomputation ([`BlockRecompute`]): `Selective` drops the LayerNorm outputs (kept by
/// attn and mlp as their inputs) and the MLP's activation output, and rebuilds each right
/// before the backward that reads it; `Full` keeps only the block's input and re-runs the
/// forward in backward. Both through the [`Layer`] hooks of the direct children.
pub struct Block {
    /// Normalizes the attention's input.
    pub ln_1: LayerNorm,
    /// The attention branch.
    pub attn: CausalSelfAttention,
    /// Normalizes the MLP's input (fused with the first residual add).
    pub ln_2: LayerNorm,
    /// The MLP branch.
    pub mlp: BlockMlp,
    recompute: BlockRecompute,
    /// Full recomputation: the input of the last forward, the only thing kept.
    input: Option<Tensor>,
}

/// The MLP of a [`Block`]: GPT-2's GeLU MLP, or a SwiGLU one ([`Activation`]).
pub enum BlockMlp {
    /// c_fc, GeLU, c_proj.
    Gelu(Mlp),
    /// gate_up_proj, SwiGLU, down_proj.
    Swiglu(SwigluMlp),
}

impl BlockMlp {
    fn inner(&self) -> &dyn Layer {
        match self {
            BlockMlp::Gelu(m) => m,
            BlockMlp::Swiglu(m) => m,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Layer {
        match self {
            BlockMlp::Gelu(m) => m,
            BlockMlp::Swiglu(m) => m,
        }
    }
}

/// Every method goes to the variant's MLP.
impl Layer for BlockMlp {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        self.inner_mut().forward(x)
    }
    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        self.inner_mut().backward(dout)
    }
    fn release(&mut self) {
        self.inner_mut().release()
    }
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.inner().visit_params(f)
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.inner_mut().visit_params_mut(f)
    }
    fn forget_input(&mut self) -> bool {
        self.inner_mut().forget_input()
    }
    fn input_forgotten(&self) -> bool {
        self.inner().input_forgotten()
    }
    fn restore_input(&mut self, x: Tensor) -> Result<()> {
        self.inner_mut().restore_input(x)
    }
    fn recompute_output(&self) -> Result<Option<Tensor>> {
        self.inner().recompute_output()
    }
    fn forget_activations(&mut self) -> bool {
        self.inner_mut().forget_activations()
    }
}

impl Block {
    /// Block `name` (`h.{i}`) of a model shaped by `config` (width, heads, biases, MLP width
    /// and activation): projections N(0, std^2), the residual projections (attn.c_proj and
    /// the MLP's output projection) N(0, proj_std^2), biases 0, LayerNorms 1 and 0.
    pub fn new(at: Placement, name: &str, config: &GptConfig, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        let (c, bias, hidden) = (config.n_embd, config.bias, config.mlp_width());
        let ln_1 = LayerNorm::new(at, &format!("{name}.ln_1"), c)?;
        let attn = CausalSelfAttention::new(at, &format!("{name}.attn"), c, config.n_head, bias, std, proj_std, rng)?;
        let ln_2 = LayerNorm::new(at, &format!("{name}.ln_2"), c)?;
        let mlp_name = format!("{name}.mlp");
        let mlp = match config.activation {
            Activation::Gelu => BlockMlp::Gelu(Mlp::new(at, &mlp_name, c, hidden, bias, std, proj_std, rng)?),
            Activation::Swiglu => BlockMlp::Swiglu(SwigluMlp::with_bias(at, &mlp_name, c, hidden, bias, std, proj_std, rng)?),
        };
        Ok(Self { ln_1, attn, ln_2, mlp, recompute: BlockRecompute::None, input: None })
    }

    /// Takes effect at the next forward (a pending backward uses what its forward kept).
    pub fn set_recompute(&mut self, policy: BlockRecompute) {
        self.recompute = policy;
    }

    /// The policy the next forward follows.
    pub fn recompute(&self) -> BlockRecompute {
        self.recompute
    }

    /// Incremental decoding (see [`CausalSelfAttention::forward_cached`]): the block's
    /// output for `x` (B,n,C) at positions `start .. start + n`, its attention reading and
    /// extending this layer's key/value cache.
    pub fn forward_cached(&mut self, x: &Tensor, k_cache: &mut Tensor, v_cache: &mut Tensor, start: usize) -> Result<Tensor> {
        let a = self.attn.forward_cached(&self.ln_1.forward(x)?, k_cache, v_cache, start)?;
        let (x1, h) = self.ln_2.forward_residual(x, &a)?;
        drop(a);
        let m = self.mlp.forward(&h)?;
        let mut x2 = empty_like(x, x.shape())?;
        residual_forward(&mut x2, &x1, &m)?;
        Ok(x2)
    }

    /// The block's forward with every sublayer keeping its state (minus the LayerNorm and
    /// activation outputs under selective recomputation, which backward puts back).
    fn forward_saving(&mut self, x: &Tensor) -> Result<Tensor> {
        let selective = self.recompute == BlockRecompute::Selective;
        let a = self.attn.forward(&self.ln_1.forward(x)?)?;
        if selective {
            self.attn.forget_input();
        }
        let (x1, h) = self.ln_2.forward_residual(x, &a)?; // x1 = x + a, h = ln_2(x1), (B,T,C)
        drop(a);
        let m = self.mlp.forward(&h)?;
        drop(h);
        if selective {
            self.mlp.forget_input();
            self.mlp.forget_activations();
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
            self.release();
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
        self.mlp.restore_input_from(&self.ln_2)?;
        let mut dx1 = self.ln_2.backward(&self.mlp.backward(dout)?)?;
        accumulate(&mut dx1, dout)?;
        self.attn.restore_input_from(&self.ln_1)?;
        let mut dx = self.ln_1.backward(&self.attn.backward(&dx1)?)?;
        accumulate(&mut dx, &dx1)?;
        Ok(dx)
    }

    crate::layer_fields! {
        children: [ln_1, attn, ln_2, mlp],
        saved: [input],
        config: [recompute],
    }
}
