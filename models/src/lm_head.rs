//! What the language models share around their blocks: the checks on token ids, and the
//! classifier head (logits = x W^T over the padded vocabulary, W (Vp, C) stored [out, in],
//! the tied token embedding or a separate `lm_head`) with the fused cross-entropy, and its
//! backward.

use kernels::ops::crossentropy::{crossentropy_forward, loss_mean};
use kernels::ops::matmul::{matmul_backward, matmul_forward, WeightLayout};
use kernels::ops::residual::scale;
use kernels::{DType, Device, Tensor};

use crate::{Error, Param, Result};

/// Checks token ids `inputs` (B,T) and `targets` (same shape) against the context length
/// and the model's device.
pub(crate) fn check_batch(inputs: &Tensor, targets: Option<&Tensor>, context_length: usize, device: Device) -> Result<()> {
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
pub(crate) fn host_mean(losses: &Tensor) -> Result<f32> {
    let n = losses.numel();
    Ok((losses.try_to_vec()?.iter().map(|&l| l as f64).sum::<f64>() / n as f64) as f32)
}

/// `Model::forward_loss` from the per-row losses: the mean kept on the device.
pub(crate) fn device_mean(loss: &mut Tensor, losses: &Tensor, scale: f32, accumulate: bool) -> Result<()> {
    Ok(loss_mean(loss, losses, scale / losses.numel() as f32, accumulate)?)
}

/// The `Model` methods every language model built on [`LmHead`] shares, for its `impl Model`:
/// `forward`, `forward_loss`, `logits`, `vocab_size`, `context_length` and
/// `flops_per_token`. The model has a method `forward_rows(&mut self, inputs, targets) ->
/// Result<Option<Tensor>>` (the per-row losses with targets, from [`LmHead::forward`]), a
/// field `head: LmHead`, and a `config` with `vocab_size`, `context_length`, `n_layer` and
/// `n_embd`.
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

        fn logits(&self) -> Option<&::kernels::Tensor> {
            self.head.logits()
        }

        fn vocab_size(&self) -> usize {
            self.config.vocab_size
        }

        fn context_length(&self) -> usize {
            self.config.context_length
        }

        /// 6N + 6LCT (BRIEF §4), N counting the exported (unpadded) parameters.
        fn flops_per_token(&self, seq_len: usize) -> f64 {
            $crate::lm_head::flops_per_token(self.num_params(), self.config.n_layer, self.config.n_embd, seq_len)
        }
    };
}
pub(crate) use lm_model_methods;

/// The classifier head and what its backward needs.
#[derive(Default)]
pub(crate) struct LmHead {
    /// Set by forward: (final normalized activations (B,T,C), logits or dlogits (B,T,Vp), have_dlogits).
    state: Option<(Tensor, Tensor, bool)>,
}

impl LmHead {
    /// Logits (B,T,Vp) = x (B,T,C) @ weight^T, weight (Vp, C). Without targets they are kept
    /// for [`LmHead::logits`] and `None` returned; with targets (B,T) the per-row losses
    /// (B*T, f32, over the first `vocab` columns) are returned and the logits turned into
    /// dlogits in place, kept for backward.
    pub(crate) fn forward(&mut self, x: Tensor, weight: &Tensor, vocab: usize, targets: Option<&Tensor>) -> Result<Option<Tensor>> {
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
    pub(crate) fn backward(&mut self, weight: &mut Param, loss_scale: f32, model: &'static str) -> Result<Tensor> {
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
    pub(crate) fn logits(&self) -> Option<&Tensor> {
        match &self.state {
            Some((_, logits, false)) => Some(logits),
            _ => None,
        }
    }

    pub(crate) fn release(&mut self) {
        self.state = None;
    }
}

/// Training FLOPs per token, 6N + 6LCT (BRIEF §4), N the exported (unpadded) parameters.
pub(crate) fn flops_per_token(num_params: usize, n_layer: usize, n_embd: usize, seq_len: usize) -> f64 {
    6.0 * num_params as f64 + 6.0 * n_layer as f64 * n_embd as f64 * seq_len as f64
}
