//! GPT-2: token + position embedding, L pre-LN blocks, a final LayerNorm, and the
//! classifier tied to the token embedding. Parameter names and layouts follow Hugging Face
//! (`wte.weight`, `h.{i}.attn.c_attn.weight` stored [in, out], ...), so an export loads in
//! `transformers.GPT2LMHeadModel`. The vocabulary is padded to a multiple of 128 for speed;
//! the padding is masked out of the softmax and cut from exports.

use kernels::ops::crossentropy::{crossentropy_forward, loss_mean};
use kernels::ops::matmul::{matmul_backward, matmul_forward, WeightLayout};
use kernels::ops::residual::scale;
use kernels::{DType, Device, Tensor};

use crate::layers::{Block, Embedding, Layer, LayerNorm};
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
    /// Set by forward: (final normalized activations (B,T,C), logits or dlogits (B,T,Vp), have_dlogits).
    head: Option<(Tensor, Tensor, bool)>,
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
        Ok(Self { embedding, blocks, ln_f, recompute: Recompute::None, head: None, config, precision })
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

    fn check_tokens(&self, what: &str, t: &Tensor) -> Result<(usize, usize)> {
        let &[b, len] = t.shape() else {
            return Err(Error::Input(format!("{what} must be (B,T), got shape {:?}", t.shape())));
        };
        if t.dtype() != DType::U32 {
            return Err(Error::Input(format!("{what} must be token ids (u32)")));
        }
        if len == 0 || len > self.config.context_length {
            return Err(Error::Input(format!(
                "sequence length {len} must be in 1..={} (the model's context length)",
                self.config.context_length
            )));
        }
        Ok((b, len))
    }
}

impl Gpt {
    /// The forward pass; with targets, the per-row losses (B*T) on the model's device, the
    /// logits turned into dlogits and kept for backward.
    fn forward_rows(&mut self, inputs: &Tensor, targets: Option<&Tensor>) -> Result<Option<Tensor>> {
        let (b, t) = self.check_tokens("inputs", inputs)?;
        if let Some(targets) = targets {
            if self.check_tokens("targets", targets)? != (b, t) {
                return Err(Error::Input(format!("targets {:?} must match inputs {:?}", targets.shape(), inputs.shape())));
            }
        }
        let device = self.device();
        if inputs.device() != device || targets.is_some_and(|t| t.device() != device) {
            return Err(Error::Input(format!("inputs and targets must be on the model's device ({device})")));
        }
        let mut x = self.embedding.forward(inputs)?;
        for block in &mut self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.ln_f.forward(&x)?;
        let vp = self.config.padded_vocab();
        let mut logits = Tensor::try_empty(x.device(), x.dtype(), &[b, t, vp])?;
        matmul_forward(&mut logits, &x, self.embedding.wte.compute(), None, WeightLayout::OutIn)?;
        let Some(targets) = targets else {
            self.head = Some((x, logits, false));
            return Ok(None);
        };
        // Loss and dlogits in one fused pass; the logits buffer becomes dlogits.
        let n = b * t;
        let mut losses = Tensor::try_empty(x.device(), DType::F32, &[n])?;
        let targets = targets.reshape(&[n])?;
        let mut logits2d = logits.reshape(&[n, vp])?;
        drop(logits);
        crossentropy_forward(&mut losses, &mut logits2d, &targets, self.config.vocab_size, Some(1.0 / n as f32))?;
        self.head = Some((x, logits2d.reshape(&[b, t, vp])?, true));
        Ok(Some(losses))
    }
}

impl Model for Gpt {
    fn forward(&mut self, inputs: &Tensor, targets: Option<&Tensor>) -> Result<Option<f32>> {
        let Some(losses) = self.forward_rows(inputs, targets)? else { return Ok(None) };
        // The per-row losses (N floats, not the logits) come to the host for the mean: on a
        // GPU the host waits for the forward here (`forward_loss` keeps the mean on the device).
        let n = losses.numel();
        Ok(Some((losses.try_to_vec()?.iter().map(|&l| l as f64).sum::<f64>() / n as f64) as f32))
    }

    fn forward_loss(&mut self, inputs: &Tensor, targets: &Tensor, loss: &mut Tensor, scale: f32, accumulate: bool) -> Result<()> {
        let losses = self.forward_rows(inputs, Some(targets))?.expect("targets given");
        loss_mean(loss, &losses, scale / losses.numel() as f32, accumulate)?;
        Ok(())
    }

    fn backward(&mut self, loss_scale: f32) -> Result<()> {
        let Some((x, mut dlogits, true)) = self.head.take() else {
            return Err(Error::NoForward { layer: "Gpt (forward with targets)" });
        };
        if loss_scale != 1.0 {
            scale(&mut dlogits, loss_scale)?;
        }
        let mut dx = Tensor::try_empty(x.device(), x.dtype(), x.shape())?;
        let (dwte, wte) = self.embedding.wte.grad_and_compute();
        matmul_backward(&mut dx, dwte, None, &dlogits, &x, wte, WeightLayout::OutIn)?;
        drop(dlogits);
        let mut d = self.ln_f.backward(&dx)?;
        for block in self.blocks.iter_mut().rev() {
            d = block.backward(&d)?;
        }
        self.embedding.backward(&d)?;
        Ok(())
    }

    fn release(&mut self) {
        self.head = None;
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

    fn logits(&self) -> Option<&Tensor> {
        match &self.head {
            Some((_, logits, false)) => Some(logits),
            _ => None,
        }
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

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_length(&self) -> usize {
        self.config.context_length
    }

    /// 6N + 6LCT (BRIEF §4), N counting the exported (unpadded) parameters.
    fn flops_per_token(&self, seq_len: usize) -> f64 {
        let (l, c) = (self.config.n_layer as f64, self.config.n_embd as f64);
        6.0 * self.num_params() as f64 + 6.0 * l * c * seq_len as f64
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
