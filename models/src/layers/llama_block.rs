use kernels::ops::residual::{accumulate, residual_forward};
use kernels::Tensor;

use super::{empty_like, AttentionShape, Layer, LlamaAttention, RmsNorm, SwigluMlp};
use crate::param::Placement;
use crate::recompute::BlockRecompute;
use crate::{Error, Result};

/// A pre-norm Llama decoder layer: x1 = x + self_attn(input_layernorm(x)), then
/// x1 + mlp(post_attention_layernorm(x1)). Recomputation: none or full (the `selective`
/// policy is GPT-2's; its children have the hooks a block of your own would build it from).
pub struct LlamaBlock {
    /// Normalizes the attention's input.
    pub input_layernorm: RmsNorm,
    /// The attention branch.
    pub self_attn: LlamaAttention,
    /// Normalizes the MLP's input.
    pub post_attention_layernorm: RmsNorm,
    /// The MLP branch.
    pub mlp: SwigluMlp,
    recompute: BlockRecompute,
    /// Full recomputation: the input of the last forward, the only thing kept.
    input: Option<Tensor>,
}

impl LlamaBlock {
    /// The layer `{name}` (Hugging Face: `model.layers.{i}`) with an MLP of `hidden` channels
    /// and RMSNorm epsilon `eps`; matrices N(0, std^2), o_proj and down_proj N(0, proj_std^2).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        at: Placement,
        name: &str,
        shape: AttentionShape,
        hidden: usize,
        eps: f32,
        std: f32,
        proj_std: f32,
        rng: &mut fastrand::Rng,
    ) -> Result<Self> {
        let c = shape.n_embd;
        Ok(Self {
            input_layernorm: RmsNorm::new(at, &format!("{name}.input_layernorm"), c, eps)?,
            self_attn: LlamaAttention::new(at, &format!("{name}.self_attn"), shape, std, proj_std, rng)?,
            post_attention_layernorm: RmsNorm::new(at, &format!("{name}.post_attention_layernorm"), c, eps)?,
            mlp: SwigluMlp::new(at, &format!("{name}.mlp"), c, hidden, std, proj_std, rng)?,
            recompute: BlockRecompute::None,
            input: None,
        })
    }

    /// Takes effect at the next forward (a pending backward uses what its forward kept).
    /// Errors on [`BlockRecompute::Selective`].
    pub fn set_recompute(&mut self, policy: BlockRecompute) -> Result<()> {
        if policy == BlockRecompute::Selective {
            return Err(Error::Config("a Llama block recomputes fully or not at all (selective recomputation is GPT-2's)".into()));
        }
        self.recompute = policy;
        Ok(())
    }

    /// The policy the next forward follows.
    pub fn recompute(&self) -> BlockRecompute {
        self.recompute
    }

    /// Incremental decoding (see [`LlamaAttention::forward_cached`]): the layer's output for
    /// `x` (B,n,C) at positions `start .. start + n`, its attention reading and extending
    /// this layer's key/value cache.
    pub fn forward_cached(&mut self, x: &Tensor, k_cache: &mut Tensor, v_cache: &mut Tensor, start: usize) -> Result<Tensor> {
        let a = self.self_attn.forward_cached(&self.input_layernorm.forward(x)?, k_cache, v_cache, start)?;
        self.residual_mlp(x, a)
    }

    /// The block after its attention: `x1 = x + a`, then `x1 + mlp(norm(x1))`.
    fn residual_mlp(&mut self, x: &Tensor, a: Tensor) -> Result<Tensor> {
        let mut x1 = empty_like(x, x.shape())?;
        residual_forward(&mut x1, x, &a)?;
        drop(a);
        let m = self.mlp.forward(&self.post_attention_layernorm.forward(&x1)?)?;
        let mut x2 = empty_like(x, x.shape())?;
        residual_forward(&mut x2, &x1, &m)?;
        Ok(x2)
    }

    /// The forward with every sublayer keeping its state.
    fn forward_saving(&mut self, x: &Tensor) -> Result<Tensor> {
        let a = self.self_attn.forward(&self.input_layernorm.forward(x)?)?;
        self.residual_mlp(x, a)
    }
}

impl Layer for LlamaBlock {
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
        // ordinary backward. The residual passes dout straight through; each branch's
        // gradient adds onto it.
        if let Some(x) = self.input.take() {
            drop(self.forward_saving(&x)?);
        }
        let mut dx1 = self.post_attention_layernorm.backward(&self.mlp.backward(dout)?)?;
        accumulate(&mut dx1, dout)?;
        let mut dx = self.input_layernorm.backward(&self.self_attn.backward(&dx1)?)?;
        accumulate(&mut dx, &dx1)?;
        Ok(dx)
    }

    crate::layer_fields! {
        children: [input_layernorm, self_attn, post_attention_layernorm, mlp],
        saved: [input],
        config: [recompute],
    }
}
