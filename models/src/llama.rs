//! Llama: a token embedding (no position table: RoPE rotates q and k), L pre-norm blocks of
//! grouped-query attention and a SwiGLU MLP, a final RMSNorm, and the classifier, tied to the
//! token embedding or not. Parameter names and layouts follow Hugging Face
//! (`model.layers.{i}.self_attn.q_proj.weight`, ..., all matrices stored [out, in]), so an
//! export loads in `transformers.LlamaForCausalLM`; q|k|v and gate|up are stored fused and
//! exported as their parts ([`Param::export_parts`]). The vocabulary is padded to a multiple
//! of 128 as GPT-2's is (the padding is masked out of the softmax and cut from exports).

use kernels::{Device, Tensor};

use crate::kv_cache::KvCache;
use crate::layers::{AttentionShape, Embedding, Layer, LlamaBlock, RmsNorm};
use crate::lm_head::{check_batch, LmHead};
use crate::param::{vocab_rows, Placement, Precision};
use crate::recompute::Recompute;
use crate::{Error, Model, Param, Result};

/// A Llama model's shape, as in a Hugging Face `LlamaConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Tokens V (`vocab_size`).
    pub vocab_size: usize,
    /// The longest sequence (`max_position_embeddings`).
    pub context_length: usize,
    /// Blocks L (`num_hidden_layers`).
    pub n_layer: usize,
    /// Query heads NH (`num_attention_heads`).
    pub n_head: usize,
    /// Key/value heads KV, dividing NH (`num_key_value_heads`; NH: multi-head attention).
    pub n_kv_head: usize,
    /// Width C (`hidden_size`), NH heads of HS = C / NH columns.
    pub n_embd: usize,
    /// The MLP's hidden width H (`intermediate_size`).
    pub intermediate_size: usize,
    /// RoPE's frequency base (`rope_theta`: Llama 2 10000, Llama 3 500000).
    pub rope_theta: f32,
    /// RMSNorm's epsilon (`rms_norm_eps`).
    pub rms_norm_eps: f32,
    /// Whether the classifier is the token embedding (`tie_word_embeddings`).
    pub tie_embeddings: bool,
}

impl LlamaConfig {
    /// V rounded up to a multiple of 128, the rows the embedding and the classifier store.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.div_ceil(128) * 128
    }

    /// Columns per head, C / NH.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// Errors naming the first field (and its value) that makes no model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_kv_head", self.n_kv_head),
            ("intermediate_size", self.intermediate_size),
        ] {
            if value == 0 {
                return bad(format!("{field} ({value}) must be at least 1"));
            }
        }
        if self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("n_embd ({}) must be a positive multiple of n_head ({})", self.n_embd, self.n_head));
        }
        if !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad(format!("n_head ({}) must be a multiple of n_kv_head ({})", self.n_head, self.n_kv_head));
        }
        if !self.head_size().is_multiple_of(2) {
            return bad(format!("the head size n_embd / n_head ({} / {} = {}) must be even for RoPE", self.n_embd, self.n_head, self.head_size()));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(format!("rope_theta ({}) must be a finite number above 1", self.rope_theta));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!("rms_norm_eps ({}) must be a positive finite number", self.rms_norm_eps));
        }
        Ok(())
    }

    fn attention(&self) -> AttentionShape {
        AttentionShape { n_embd: self.n_embd, n_head: self.n_head, n_kv_head: self.n_kv_head, rope_theta: self.rope_theta }
    }
}

/// A Llama-family causal language model (see the module docs).
pub struct Llama {
    /// The shape it was built with.
    pub config: LlamaConfig,
    /// How it computes.
    pub precision: Precision,
    /// `model.embed_tokens.weight` (Vp, C), exported (V, C); no position table.
    pub embed_tokens: Embedding,
    /// `model.layers.{i}`.
    pub layers: Vec<LlamaBlock>,
    /// `model.norm`, before the classifier.
    pub norm: RmsNorm,
    /// `lm_head.weight` (Vp, C), exported (V, C), when the embeddings are untied; tied, the
    /// classifier reads `model.embed_tokens.weight`.
    pub lm_head: Option<Param>,
    recompute: Recompute,
    head: LmHead,
    /// Incremental decoding's keys and values ([`Model::forward_cached`]).
    kv: Option<KvCache>,
}

impl Llama {
    /// The initialisation from `seed` in fp32 on `device` (see [`Llama::with_precision`]).
    pub fn new(config: LlamaConfig, device: Device, seed: u64) -> Result<Self> {
        Self::with_precision(config, device, Precision::Fp32, seed)
    }

    /// Weights drawn on the host from `seed` (the same initial weights on every device) and
    /// placed in `precision` (bf16 needs a CUDA device): the embedding and the matrices
    /// N(0, 0.02), the residual projections (o_proj, down_proj) N(0, 0.02/sqrt(2L)), RMSNorm
    /// weights 1, padding rows 0.
    pub fn with_precision(config: LlamaConfig, device: Device, precision: Precision, seed: u64) -> Result<Self> {
        config.validate()?;
        let at = Placement::new(device, precision)?;
        let mut rng = fastrand::Rng::with_seed(seed);
        let (c, v, vp, std) = (config.n_embd, config.vocab_size, config.padded_vocab(), 0.02f32);
        let proj_std = std / (2.0 * config.n_layer as f32).sqrt();
        let embed_tokens = Embedding::tokens_only(at, "model.embed_tokens.weight", v, vp, c, std, &mut rng)?;
        let layers = (0..config.n_layer)
            .map(|i| {
                let name = format!("model.layers.{i}");
                LlamaBlock::new(at, &name, config.attention(), config.intermediate_size, config.rms_norm_eps, std, proj_std, &mut rng)
            })
            .collect::<Result<_>>()?;
        let norm = RmsNorm::new(at, "model.norm", c, config.rms_norm_eps)?;
        let lm_head = if config.tie_embeddings {
            None
        } else {
            let mut w = vocab_rows(at, "lm_head.weight", v, vp, c, std, &mut rng)?;
            w.weight_decay = true;
            Some(w)
        };
        Ok(Self { embed_tokens, layers, norm, lm_head, recompute: Recompute::None, head: LmHead::default(), kv: None, config, precision })
    }

    /// The recomputation policy the next forward follows.
    pub fn recompute(&self) -> Recompute {
        self.recompute
    }

    /// The forward pass; with targets, the per-row losses (B*T) on the model's device, the
    /// logits turned into dlogits and kept for backward.
    fn forward_rows(&mut self, inputs: &Tensor, targets: Option<&Tensor>) -> Result<Option<Tensor>> {
        check_batch(inputs, targets, self.config.context_length, self.device())?;
        let mut x = self.embed_tokens.forward(inputs)?;
        for layer in &mut self.layers {
            x = layer.forward(&x)?;
        }
        let x = self.norm.forward(&x)?;
        let classifier = self.lm_head.as_ref().unwrap_or(&self.embed_tokens.wte);
        self.head.forward(x, classifier.compute(), self.config.vocab_size, targets)
    }

    /// [`Model::forward_cached`]: the token embedding, each layer's cached
    /// attention (RoPE at the new positions, the KV heads cached as they are), the logits
    /// of the new positions.
    fn forward_cached_rows(&mut self, inputs: &Tensor, start: usize) -> Result<()> {
        let c = &self.config;
        let (l, ctx, width) = (c.n_layer, c.context_length, c.n_kv_head * c.head_size());
        let device = self.device();
        let dtype = self.embed_tokens.wte.compute().dtype();
        let cache = KvCache::prepare(&mut self.kv, inputs, start, device, dtype, l, ctx, width)?;
        let n = inputs.shape()[1];
        let mut x = self.embed_tokens.forward(inputs)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            x = layer.forward_cached(&x, &mut cache.k[i], &mut cache.v[i], start)?;
        }
        cache.len = start + n;
        let x = self.norm.forward(&x)?;
        let classifier = self.lm_head.as_ref().unwrap_or(&self.embed_tokens.wte);
        self.head.forward(x, classifier.compute(), self.config.vocab_size, None)?;
        Ok(())
    }
}

impl Model for Llama {
    crate::lm_model_methods!();

    fn backward(&mut self, loss_scale: f32) -> Result<()> {
        let classifier = self.lm_head.as_mut().unwrap_or(&mut self.embed_tokens.wte);
        let dx = self.head.backward(classifier, loss_scale, "Llama (forward with targets)")?;
        let mut d = self.norm.backward(&dx)?;
        for layer in self.layers.iter_mut().rev() {
            d = layer.backward(&d)?;
        }
        self.embed_tokens.backward(&d)?;
        Ok(())
    }

    crate::layer_fields! {
        children: [embed_tokens, layers, norm, lm_head],
        saved: [head, kv],
        config: [config, precision, recompute],
    }

    /// On the CPU and on CUDA, in the model's activation dtype (the cache too).
    fn forward_cached(&mut self, inputs: &Tensor, start: usize) -> Result<bool> {
        self.forward_cached_rows(inputs, start)?;
        Ok(true)
    }

    /// [`Recompute::None`] and [`Recompute::Full`]; selective recomputation is GPT-2's.
    fn set_recompute(&mut self, policy: Recompute) -> Result<()> {
        if policy == Recompute::Selective {
            return Err(Error::Config(format!(
                "Llama supports recomputation none, full and full:K, not {policy} (which recomputes GPT-2's LayerNorm and GeLU outputs)"
            )));
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.set_recompute(policy.for_block(i))?;
        }
        self.recompute = policy;
        Ok(())
    }

    fn recompute_candidates(&self) -> Vec<Recompute> {
        Recompute::candidates(self.config.n_layer).into_iter().filter(|&p| p != Recompute::Selective).collect()
    }

    fn device(&self) -> Device {
        self.embed_tokens.wte.value.device()
    }

    fn hf_config_json(&self) -> Option<String> {
        let c = &self.config;
        let v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "max_position_embeddings": c.context_length,
            "hidden_size": c.n_embd,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head,
            "head_dim": c.head_size(),
            "hidden_act": "silu",
            "rms_norm_eps": decimal(c.rms_norm_eps),
            "rope_theta": decimal(c.rope_theta),
            "rope_scaling": null,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "tie_word_embeddings": c.tie_embeddings,
            "bos_token_id": null,
            "eos_token_id": null,
            "torch_dtype": "float32",
        });
        Some(serde_json::to_string_pretty(&v).expect("json"))
    }
}

/// `x` as the f64 of its shortest decimal form (1e-5f32 is written 1e-5, not as the f64
/// nearest the f32, 9.999999747378752e-6).
fn decimal(x: f32) -> f64 {
    x.to_string().parse().expect("an f32's decimal form parses as an f64")
}
