//! GPT-2: token + position embedding, L pre-LN blocks, a final LayerNorm, and the
//! classifier tied to the token embedding. Parameter names and layouts follow Hugging Face
//! (`wte.weight`, `h.{i}.attn.c_attn.weight` stored [in, out], ...), so an export loads in
//! `transformers.GPT2LMHeadModel`. The vocabulary is padded to a multiple of 128 for speed;
//! the padding is masked out of the softmax and cut from exports.

use kernels::{Device, Tensor};

use crate::layers::{Block, Embedding, Layer, LayerNorm};
use crate::lm_head::{check_batch, lm_model_methods, LmHead};
use crate::param::{Placement, Precision};
use crate::recompute::Recompute;
use crate::{Error, Model, Param, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub context_length: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
}

impl GptConfig {
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.div_ceil(128) * 128
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.n_layer == 0 {
            return bad("n_layer must be at least 1".into());
        }
        if self.n_head == 0 || self.n_embd == 0 || self.n_embd % self.n_head != 0 {
            return bad(format!("n_embd ({}) must be a positive multiple of n_head ({})", self.n_embd, self.n_head));
        }
        if self.vocab_size == 0 || self.context_length == 0 {
            return bad("vocab_size and context_length must be at least 1".into());
        }
        Ok(())
    }
}

pub struct Gpt {
    pub config: GptConfig,
    pub precision: Precision,
    pub embedding: Embedding,
    pub blocks: Vec<Block>,
    pub ln_f: LayerNorm,
    recompute: Recompute,
    head: LmHead,
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
        let embedding = Embedding::new(at, config.vocab_size, config.padded_vocab(), config.context_length, c, std, &mut rng)?;
        let blocks = (0..config.n_layer)
            .map(|i| Block::new(at, &format!("h.{i}"), c, config.n_head, std, proj_std, &mut rng))
            .collect::<Result<_>>()?;
        let ln_f = LayerNorm::new(at, "ln_f", c)?;
        Ok(Self { embedding, blocks, ln_f, recompute: Recompute::None, head: LmHead::default(), config, precision })
    }

    /// Sets the recomputation policy (see [`crate::recompute`]); it takes effect at the next
    /// forward, so a planner may switch it between any two steps. Gradients do not change.
    pub fn set_recompute(&mut self, policy: Recompute) {
        self.recompute = policy;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.set_recompute(policy.for_block(i));
        }
    }

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
}

impl Model for Gpt {
    lm_model_methods!();

    fn backward(&mut self, loss_scale: f32) -> Result<()> {
        let dx = self.head.backward(&mut self.embedding.wte, loss_scale, "Gpt (forward with targets)")?;
        let mut d = self.ln_f.backward(&dx)?;
        for block in self.blocks.iter_mut().rev() {
            d = block.backward(&d)?;
        }
        self.embedding.backward(&d)?;
        Ok(())
    }

    fn release(&mut self) {
        self.head.release();
        self.embedding.release();
        self.blocks.iter_mut().for_each(Layer::release);
        self.ln_f.release();
    }

    fn set_recompute(&mut self, policy: Recompute) -> Result<()> {
        Gpt::set_recompute(self, policy);
        Ok(())
    }

    fn recompute_candidates(&self) -> Vec<Recompute> {
        Recompute::candidates(self.config.n_layer)
    }

    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.embedding.visit_params(f);
        self.blocks.iter().for_each(|b| b.visit_params(f));
        self.ln_f.visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.embedding.visit_params_mut(f);
        self.blocks.iter_mut().for_each(|b| b.visit_params_mut(f));
        self.ln_f.visit_params_mut(f);
    }

    fn device(&self) -> Device {
        self.embedding.wte.value.device()
    }

    fn hf_config_json(&self) -> Option<String> {
        let c = &self.config;
        let v = serde_json::json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": c.vocab_size,
            "n_positions": c.context_length,
            "n_ctx": c.context_length,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": null,
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
