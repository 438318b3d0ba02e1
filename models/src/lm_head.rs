//! What the language models share around their blocks, public for models of your own: the
//! checks on token ids ([`check_batch`]), the classifier head ([`LmHead`]: logits = x W^T
//! over the padded vocabulary, W (Vp, C) stored [out, in], the tied token embedding or a
//! separate `lm_head`, with the fused cross-entropy and its backward), the loss's mean on the
//! host or the device ([`host_mean`], [`device_mean`]), and the `Model` methods every such
//! model shares ([`lm_model_methods!`](crate::lm_model_methods)).

use kernels::ops::crossentropy::{crossentropy_forward, loss_mean};
use kernels::ops::matmul::{matmul_backward, matmul_forward, WeightLayout};
use kernels::ops::residual::scale;
use kernels::{DType, Device, Tensor};

use crate::{Error, Param, Result};

/// Checks token ids `inputs` (B,T) and `targets` (same shape) against the context length
/// and the model's device: [`Error::Input`] naming what is wrong.
pub fn check_batch(inputs: &Tensor, targets: Option<&Tensor>, context_length: usize, device: Device) -> Result<()> {
    let check = |what: &str, t: &Tensor| {
        let &[b, len] = t.shape() else {
            return Err(Error::Input(format!("{what} must be (B,T), got shape {:?}", t.shape())));
        };
        if t.dtype() != DType::U32 {
            return Err(Error::Input(format!("{what} must be token ids (u32)")));
        }
        if len == 0 || len > context_length {
            return Err(Error::Input(format!("sequence length {len} must be in 1..={context_length} (the model's context length)")));
        }
        Ok((b, len))
    };
    let bt = check("inputs", inputs)?;
    if let Some(targets) = targets {
        if check("targets", targets)? != bt {
            return Err(Error::Input(format!("targets {:?} must match inputs {:?}", targets.shape(), inputs.shape())));
        }
    }
    if inputs.device() != device || targets.is_some_and(|t| t.device() != device) {
        return Err(Error::Input(format!("inputs and targets must be on the model's device ({device})")));
    }
    Ok(())
}

/// The mean of the per-row losses, read on the host: on a GPU the host waits for the
/// forward here (N floats come back, not the logits).
pub fn host_mean(losses: &Tensor) -> Result<f32> {
    let n = losses.numel();
    Ok((losses.try_to_vec()?.iter().map(|&l| l as f64).sum::<f64>() / n as f64) as f32)
}

/// The cross-entropy of every position from `logits` (B,T,Vp) and `targets` (B,T), computed
/// on the host in f64: -(logits[b,t,y] - logsumexp(logits[b,t,:vocab])) for y =
/// targets[b,t], as f32, row-major. The default of
/// [`Model::token_losses`](crate::Model::token_losses); a target at or past `vocab` is an
/// [`Error::Input`].
pub fn host_token_losses(logits: &Tensor, targets: &Tensor, vocab: usize) -> Result<Vec<f32>> {
    let &[b, t, vp] = logits.shape() else {
        return Err(Error::Input(format!("logits must be (B,T,V), got shape {:?}", logits.shape())));
    };
    if targets.shape() != [b, t] || vocab == 0 || vocab > vp {
        return Err(Error::Input(format!("targets {:?} and vocabulary {vocab} must fit logits {:?}", targets.shape(), logits.shape())));
    }
    let (values, ids) = (logits.try_to_vec()?, targets.to_host()?.u32()?.to_vec());
    let mut losses = Vec::with_capacity(b * t);
    for (row, &y) in values.chunks(vp).zip(&ids) {
        let y = y as usize;
        if y >= vocab {
            return Err(Error::Input(format!("target token {y} is not below the vocabulary size {vocab}")));
        }
        let row = &row[..vocab];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        losses.push((max + sum.ln() - row[y] as f64) as f32);
    }
    Ok(losses)
}

/// [`Model::forward_loss`](crate::Model::forward_loss) from the per-row losses `losses`
/// (N, f32): `loss` (1 element, on their device) becomes (`accumulate` ? `loss` : 0) +
/// `scale` * mean, without the host waiting for the device.
pub fn device_mean(loss: &mut Tensor, losses: &Tensor, scale: f32, accumulate: bool) -> Result<()> {
    Ok(loss_mean(loss, losses, scale / losses.numel() as f32, accumulate)?)
}

/// The [`Model`](crate::Model) methods every language model built on [`LmHead`] shares,
/// for its `impl Model` block: `forward`, `forward_loss` (the mean kept on the device),
/// `token_losses` (the per-row losses, on the device), `logits`, `vocab_size`,
/// `context_length` and `flops_per_token`. The model provides:
///
/// - a method `fn forward_rows(&mut self, inputs: &Tensor, targets: Option<&Tensor>) ->
///   Result<Option<Tensor>>`: the forward pass, ending in [`LmHead::forward`], whose per-row
///   losses it returns;
/// - a field `head: LmHead`;
/// - a field `config` with `usize` fields `vocab_size`, `context_length`, `n_layer` and
///   `n_embd` (for [`flops_per_token`]).
///
/// The rest of `Model` is `backward` (from [`LmHead::backward`]), the parameter visiting
/// and `release` ([`layer_fields!`](crate::layer_fields)), and what the model overrides.
///
/// ```
/// use kernels::Tensor;
/// use models::layers::{Embedding, Layer, RmsNorm};
/// use models::lm_head::{check_batch, LmHead};
/// use models::{layer_fields, lm_model_methods, Model, Placement, Result};
///
/// struct Config {
///     vocab_size: usize,
///     context_length: usize,
///     n_layer: usize,
///     n_embd: usize,
/// }
///
/// /// A bigram model: a token embedding, a norm, the tied classifier.
/// struct Bigram {
///     config: Config,
///     embedding: Embedding,
///     norm: RmsNorm,
///     head: LmHead,
/// }
///
/// impl Bigram {
///     fn forward_rows(&mut self, inputs: &Tensor, targets: Option<&Tensor>) -> Result<Option<Tensor>> {
///         check_batch(inputs, targets, self.config.context_length, self.device())?;
///         let x = self.norm.forward(&self.embedding.forward(inputs)?)?;
///         self.head.forward(x, self.embedding.wte.compute(), self.config.vocab_size, targets)
///     }
/// }
///
/// impl Model for Bigram {
///     lm_model_methods!();
///
///     fn backward(&mut self, loss_scale: f32) -> Result<()> {
///         let dx = self.head.backward(&mut self.embedding.wte, loss_scale, "Bigram")?;
///         let dx = self.norm.backward(&dx)?;
///         self.embedding.backward(&dx)?;
///         Ok(())
///     }
///
///     layer_fields! { children: [embedding, norm], saved: [head], config: [config] }
/// }
///
/// let (at, mut rng) = (Placement::cpu(), fastrand::Rng::with_seed(1));
/// let config = Config { vocab_size: 10, context_length: 4, n_layer: 0, n_embd: 8 };
/// let embedding = Embedding::tokens_only(at, "wte.weight", 10, 128, 8, 0.5, &mut rng)?;
/// let norm = RmsNorm::new(at, "norm", 8, 1e-5)?;
/// let mut model = Bigram { config, embedding, norm, head: LmHead::default() };
/// let ids = Tensor::from_u32(&[1, 4], vec![1, 2, 3, 4])?;
/// let loss = model.forward(&ids, Some(&ids))?.expect("a loss with targets");
/// assert!(loss > 0.0);
/// model.backward(1.0)?;
/// # Ok::<(), models::Error>(())
/// ```
#[macro_export]
macro_rules! lm_model_methods {
    () => {
        fn forward(&mut self, inputs: &::kernels::Tensor, targets: Option<&::kernels::Tensor>) -> $crate::Result<Option<f32>> {
            let Some(losses) = self.forward_rows(inputs, targets)? else { return Ok(None) };
            Ok(Some($crate::lm_head::host_mean(&losses)?))
        }

        fn forward_loss(
            &mut self,
            inputs: &::kernels::Tensor,
            targets: &::kernels::Tensor,
            loss: &mut ::kernels::Tensor,
            scale: f32,
            accumulate: bool,
        ) -> $crate::Result<()> {
            let losses = self.forward_rows(inputs, Some(targets))?.expect("targets given");
            $crate::lm_head::device_mean(loss, &losses, scale, accumulate)
        }

        fn token_losses(&mut self, inputs: &::kernels::Tensor, targets: &::kernels::Tensor) -> $crate::Result<::kernels::Tensor> {
            Ok(self.forward_rows(inputs, Some(targets))?.expect("targets given"))
        }

        fn logits(&self) -> Option<&::kernels::Tensor> {
            self.head.logits()
        }

        fn vocab_size(&self) -> usize {
            self.config.vocab_size
        }

        fn context_length(&self) -> usize {
            self.config.context_length
        }

        fn flops_per_token(&self, seq_len: usize) -> f64 {
            $crate::lm_head::flops_per_token(self.num_params(), self.config.n_layer, self.config.n_embd, seq_len)
        }
    };
}

/// The classifier head of a language model and what its backward needs: the logits of the
/// last forward without targets, or the dlogits of the last forward with targets. It holds no
/// parameters (the classifier weight belongs to the model: the tied token embedding or its
/// own `lm_head`); list it among a model's `saved` fields (`release` resets it).
#[derive(Default)]
pub struct LmHead {
    /// Set by forward: (final normalized activations (B,T,C), logits or dlogits (B,T,Vp), have_dlogits).
    state: Option<(Tensor, Tensor, bool)>,
}

impl LmHead {
    /// Logits (B,T,Vp) = x (B,T,C) @ weight^T, weight (Vp, C). Without targets they are kept
    /// for [`LmHead::logits`] and `None` returned; with targets (B,T) the per-row losses
    /// (B*T, f32, over the first `vocab` columns) are returned and the logits turned into
    /// dlogits in place, kept for backward.
    pub fn forward(&mut self, x: Tensor, weight: &Tensor, vocab: usize, targets: Option<&Tensor>) -> Result<Option<Tensor>> {
        self.state = None;
        let (b, t, vp) = (x.shape()[0], x.shape()[1], weight.shape()[0]);
        let mut logits = Tensor::try_empty(x.device(), x.dtype(), &[b, t, vp])?;
        matmul_forward(&mut logits, &x, weight, None, WeightLayout::OutIn)?;
        let Some(targets) = targets else {
            self.state = Some((x, logits, false));
            return Ok(None);
        };
        // Loss and dlogits in one fused pass; the logits buffer becomes dlogits.
        let n = b * t;
        let mut losses = Tensor::try_empty(x.device(), DType::F32, &[n])?;
        let targets = targets.reshape(&[n])?;
        let mut logits2d = logits.reshape(&[n, vp])?;
        drop(logits);
        crossentropy_forward(&mut losses, &mut logits2d, &targets, vocab, Some(1.0 / n as f32))?;
        self.state = Some((x, logits2d.reshape(&[b, t, vp])?, true));
        Ok(Some(losses))
    }

    /// From the last forward with targets, times `loss_scale`: accumulates the gradient of
    /// `weight` and returns d loss / d x (B,T,C). `model` names the model in the error
    /// raised without such a forward.
    pub fn backward(&mut self, weight: &mut Param, loss_scale: f32, model: &'static str) -> Result<Tensor> {
        let Some((x, mut dlogits, true)) = self.state.take() else {
            return Err(Error::NoForward { layer: model });
        };
        if loss_scale != 1.0 {
            scale(&mut dlogits, loss_scale)?;
        }
        let mut dx = Tensor::try_empty(x.device(), x.dtype(), x.shape())?;
        let (dweight, weight) = weight.grad_and_compute();
        matmul_backward(&mut dx, dweight, None, &dlogits, &x, weight, WeightLayout::OutIn)?;
        Ok(dx)
    }

    /// The logits of the last forward without targets.
    pub fn logits(&self) -> Option<&Tensor> {
        match &self.state {
            Some((_, logits, false)) => Some(logits),
            _ => None,
        }
    }

    /// Drops the kept logits or dlogits.
    pub fn release(&mut self) {
        self.state = None;
    }
}

/// Training FLOPs per token at sequence length `seq_len`, 6N + 6LCT (N the exported,
/// unpadded, parameters; L blocks of width C; T = `seq_len`): the matmuls' forward and
/// backward, plus attention.
pub fn flops_per_token(num_params: usize, n_layer: usize, n_embd: usize, seq_len: usize) -> f64 {
    6.0 * num_params as f64 + 6.0 * n_layer as f64 * n_embd as f64 * seq_len as f64
}
