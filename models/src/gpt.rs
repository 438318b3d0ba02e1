//! GPT-2: token + position embedding, L pre-LN blocks, a final LayerNorm, and the
//! classifier tied to the token embedding. Parameter names and layouts follow Hugging Face
//! (`wte.weight`, `h.{i}.attn.c_attn.weight` stored [in, out], ...), so an export loads in
//! `transformers.GPT2LMHeadModel`. The vocabulary is padded to a multiple of 128 for speed;
//! the padding is masked out of the softmax and cut from exports.
//!
//! The blocks are configurable beyond GPT-2 ([`GptConfig`]: biases, the MLP's width and
//! activation, learned positions); the defaults are GPT-2 exactly.

use kernels::ops::embedding::embedding_forward;
use kernels::{Device, Tensor};

use crate::kv_cache::KvCache;
use crate::layers::{empty_like, Block, Embedding, Layer, LayerNorm};
use crate::lm_head::{check_batch, LmHead};
use crate::param::{Placement, Precision};
use crate::recompute::Recompute;
use crate::{Error, Model, Result};

/// The MLP activation of a [`Gpt`] block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// GPT-2's: c_fc (C -> H), GeLU (tanh approximation), c_proj (H -> C).
    #[default]
    Gelu,
    /// SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)), C -> H -> C, the two input
    /// projections fused as `gate_up_proj` ([`crate::layers::SwigluMlp`]).
    Swiglu,
}

/// A GPT model's shape and block options. [`GptConfig::default`] is GPT-2 small (124M); the
/// block options' defaults are GPT-2's, so
/// `GptConfig { vocab_size, context_length, n_layer, n_head, n_embd, ..GptConfig::default() }`
/// is a GPT-2 of that shape.
#[derive(Clone, Debug, PartialEq)]
pub struct GptConfig {
    /// Tokens V.
    pub vocab_size: usize,
    /// The longest sequence (and the rows of the position table).
    pub context_length: usize,
    /// Blocks L.
    pub n_layer: usize,
    /// Heads NH.
    pub n_head: usize,
    /// Width C, NH heads of C / NH columns.
    pub n_embd: usize,
    /// Whether the attention and MLP projections have biases (GPT-2: yes). LayerNorms keep
    /// theirs either way.
    pub bias: bool,
    /// The MLP's hidden width H (Hugging Face's `n_inner`); `None`: 4C, GPT-2's.
    pub n_inner: Option<usize>,
    /// The MLP's activation (GPT-2: GeLU).
    pub activation: Activation,
    /// Whether a learned position table `wpe` is added to the token embedding (GPT-2: yes).
    /// Without it nothing tells the model positions but the causal mask.
    pub learned_positions: bool,
}

impl Default for GptConfig {
    /// GPT-2 small: V 50257, context 1024, 12 layers, 12 heads, C 768, with GPT-2's blocks.
    fn default() -> Self {
        Self {
            vocab_size: 50257,
            context_length: 1024,
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            bias: true,
            n_inner: None,
            activation: Activation::Gelu,
            learned_positions: true,
        }
    }
}

impl GptConfig {
    /// V rounded up to a multiple of 128, the rows the embedding stores.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.div_ceil(128) * 128
    }

    /// The MLP's hidden width H: `n_inner`, or 4C.
    pub fn mlp_width(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Whether the blocks are GPT-2's (biases, GeLU, learned positions; any `n_inner`), so
    /// that an export is a `GPT2LMHeadModel`.
    pub fn is_gpt2(&self) -> bool {
        self.bias && self.activation == Activation::Gelu && self.learned_positions
    }

    /// Errors naming what makes no model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.n_layer == 0 {
            return bad("n_layer must be at least 1".into());
        }
        if self.n_head == 0 || self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("n_embd ({}) must be a positive multiple of n_head ({})", self.n_embd, self.n_head));
        }
        if self.vocab_size == 0 || self.context_length == 0 {
            return bad("vocab_size and context_length must be at least 1".into());
        }
        if self.n_inner == Some(0) {
            return bad("n_inner (0) must be at least 1".into());
        }
        Ok(())
    }
}

/// A GPT-2 style causal language model (see the module docs).
pub struct Gpt {
    /// The shape and block options it was built with.
    pub config: GptConfig,
    /// How it computes.
    pub precision: Precision,
    /// `wte.weight` (Vp, C), exported (V, C), and `wpe.weight` (context, C) if learned.
    pub embedding: Embedding,
    /// `h.{i}`.
    pub blocks: Vec<Block>,
    /// `ln_f`, before the classifier.
    pub ln_f: LayerNorm,
    recompute: Recompute,
    head: LmHead,
    /// Incremental decoding's keys and values ([`Model::forward_cached`]).
    kv: Option<KvCache>,
}

impl Gpt {
    /// GPT-2 initialisation from `seed`: weights N(0, 0.02), residual projections
    /// N(0, 0.02/sqrt(2L)), biases 0, LayerNorm 1 and 0. In fp32 on `device`.
    pub fn new(config: GptConfig, device: Device, seed: u64) -> Result<Self> {
        Self::with_precision(config, device, Precision::Fp32, seed)
    }

    /// The same initialisation in `precision` (bf16 needs a CUDA device). The weights are
    /// drawn on the host and uploaded, so a seed gives the same initial weights everywhere.
    pub fn with_precision(config: GptConfig, device: Device, precision: Precision, seed: u64) -> Result<Self> {
        config.validate()?;
        let at = Placement::new(device, precision)?;
        let mut rng = fastrand::Rng::with_seed(seed);
        let (c, std) = (config.n_embd, 0.02f32);
        let proj_std = std / (2.0 * config.n_layer as f32).sqrt();
        let (v, vp) = (config.vocab_size, config.padded_vocab());
        let embedding = if config.learned_positions {
            Embedding::new(at, v, vp, config.context_length, c, std, &mut rng)?
        } else {
            Embedding::tokens_only(at, "wte.weight", v, vp, c, std, &mut rng)?
        };
        let blocks = (0..config.n_layer).map(|i| Block::new(at, &format!("h.{i}"), &config, std, proj_std, &mut rng)).collect::<Result<_>>()?;
        let ln_f = LayerNorm::new(at, "ln_f", c)?;
        Ok(Self { embedding, blocks, ln_f, recompute: Recompute::None, head: LmHead::default(), kv: None, config, precision })
    }

    /// Sets the recomputation policy (see [`crate::recompute`]); it takes effect at the next
    /// forward, so a planner may switch it between any two steps. Gradients do not change.
    pub fn set_recompute(&mut self, policy: Recompute) {
        self.recompute = policy;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.set_recompute(policy.for_block(i));
        }
    }

    /// The policy the next forward follows.
    pub fn recompute(&self) -> Recompute {
        self.recompute
    }
}

impl Gpt {
    /// The forward pass; with targets, the per-row losses (B*T) on the model's device, the
    /// logits turned into dlogits and kept for backward.
    fn forward_rows(&mut self, inputs: &Tensor, targets: Option<&Tensor>) -> Result<Option<Tensor>> {
        check_batch(inputs, targets, self.config.context_length, self.device())?;
        let mut x = self.embedding.forward(inputs)?;
        for block in &mut self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.ln_f.forward(&x)?;
        self.head.forward(x, self.embedding.wte.compute(), self.config.vocab_size, targets)
    }

    /// [`Model::forward_cached`]: the token embedding plus the position rows
    /// `start .. start + n`, each block's cached attention, the logits of the new positions.
    fn forward_cached_rows(&mut self, inputs: &Tensor, start: usize) -> Result<()> {
        let (c, l, ctx) = (self.config.n_embd, self.config.n_layer, self.config.context_length);
        let device = self.device();
        let dtype = self.embedding.wte.compute().dtype();
        let cache = KvCache::prepare(&mut self.kv, inputs, start, device, dtype, l, ctx, c)?;
        let (b, n) = (inputs.shape()[0], inputs.shape()[1]);
        let wte = self.embedding.wte.compute();
        let mut x = empty_like(wte, &[b, n, c])?;
        let wpe = self.embedding.wpe.as_ref().map(|p| p.compute().rows(start, n)).transpose()?;
        embedding_forward(&mut x, inputs, wte, wpe.as_ref())?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            x = block.forward_cached(&x, &mut cache.k[i], &mut cache.v[i], start)?;
        }
        cache.len = start + n;
        let x = self.ln_f.forward(&x)?;
        self.head.forward(x, self.embedding.wte.compute(), self.config.vocab_size, None)?;
        Ok(())
    }
}

impl Model for Gpt {
    crate::lm_model_methods!();

    fn backward(&mut self, loss_scale: f32) -> Result<()> {
        let dx = self.head.backward(&mut self.embedding.wte, loss_scale, "Gpt (forward with targets)")?;
        let mut d = self.ln_f.backward(&dx)?;
        for block in self.blocks.iter_mut().rev() {
            d = block.backward(&d)?;
        }
        self.embedding.backward(&d)?;
        Ok(())
    }

    crate::layer_fields! {
        children: [embedding, blocks, ln_f],
        saved: [head, kv],
        config: [config, precision, recompute],
    }

    /// On the CPU and on CUDA, in the model's activation dtype (the cache too).
    fn forward_cached(&mut self, inputs: &Tensor, start: usize) -> Result<bool> {
        self.forward_cached_rows(inputs, start)?;
        Ok(true)
    }

    fn set_recompute(&mut self, policy: Recompute) -> Result<()> {
        Gpt::set_recompute(self, policy);
        Ok(())
    }

    fn recompute_candidates(&self) -> Vec<Recompute> {
        Recompute::candidates(self.config.n_layer)
    }

    fn device(&self) -> Device {
        self.embedding.wte.value.device()
    }

    /// A `GPT2LMHeadModel` config for GPT-2 blocks ([`GptConfig::is_gpt2`]); `None` for
    /// blocks Hugging Face's GPT-2 cannot represent (no biases, SwiGLU, no learned
    /// positions), whose exports load in no `transformers` class as they are.
    fn hf_config_json(&self) -> Option<String> {
        let c = &self.config;
        if !c.is_gpt2() {
            return None;
        }
        let v = serde_json::json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": c.vocab_size,
            "n_positions": c.context_length,
            "n_ctx": c.context_length,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": c.n_inner,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": kernels::ops::layernorm::EPS,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "tie_word_embeddings": true,
            "bos_token_id": null,
            "eos_token_id": null,
            "scale_attn_weights": true,
            "torch_dtype": "float32",
        });
        Some(serde_json::to_string_pretty(&v).expect("json"))
    }
}
