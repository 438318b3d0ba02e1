//! The [`Model`] trait: what the trainer drives.

use kernels::{Device, Tensor};

use crate::recompute::Recompute;
use crate::{Error, Param, Result};

/// What the trainer drives. GPT-2 and Llama implement it; so can any model a library user
/// builds from the engine's layers.
///
/// The least a model writes: `forward`, `backward`, `logits`, the parameter visiting and
/// `release` (from [`layer_fields!`](crate::layer_fields)), `vocab_size`, `context_length`
/// and `flops_per_token`. A language model built on [`crate::lm_head::LmHead`] gets most of
/// them from [`lm_model_methods!`](crate::lm_model_methods). Here, the smallest one there
/// is, a table of next-token logits:
///
/// ```
/// use kernels::ops::residual::scale;
/// use kernels::Tensor;
/// use models::layers::{Embedding, Layer};
/// use models::lm_head::check_batch;
/// use models::{layer_fields, Error, Model, Placement, Result};
///
/// struct Bigram {
///     /// The logits of the next token, one row per token (V, V).
///     table: Embedding,
///     vocab: usize,
///     /// The last forward's logits (B,T,V) without targets, its dlogits with.
///     logits: Option<Tensor>,
///     dlogits: Option<Tensor>,
/// }
///
/// impl Model for Bigram {
///     fn forward(&mut self, inputs: &Tensor, targets: Option<&Tensor>) -> Result<Option<f32>> {
///         check_batch(inputs, targets, self.context_length(), self.device())?;
///         let logits = self.table.forward(inputs)?; // (B,T,V)
///         let Some(targets) = targets else {
///             self.logits = Some(logits);
///             return Ok(None);
///         };
///         // The mean cross-entropy and d loss / d logits, on the host for brevity.
///         let (v, n) = (self.vocab, inputs.numel() as f32);
///         let (mut loss, mut d) = (0.0, logits.to_vec());
///         for (row, &t) in d.chunks_mut(v).zip(targets.u32()?) {
///             let m = row.iter().fold(f32::MIN, |a, &b| a.max(b));
///             let z: f32 = row.iter().map(|l| (l - m).exp()).sum();
///             loss += (m + z.ln() - row[t as usize]) / n;
///             row.iter_mut().for_each(|l| *l = (*l - m).exp() / z / n);
///             row[t as usize] -= 1.0 / n;
///         }
///         self.dlogits = Some(Tensor::from_vec(logits.shape(), d)?);
///         Ok(Some(loss))
///     }
///
///     fn backward(&mut self, loss_scale: f32) -> Result<()> {
///         let mut d = self.dlogits.take().ok_or(Error::NoForward { layer: "Bigram" })?;
///         scale(&mut d, loss_scale)?;
///         self.table.backward(&d)?;
///         Ok(())
///     }
///
///     fn logits(&self) -> Option<&Tensor> {
///         self.logits.as_ref()
///     }
///
///     layer_fields! { children: [table], saved: [logits, dlogits], config: [vocab] }
///
///     fn vocab_size(&self) -> usize {
///         self.vocab
///     }
///     fn context_length(&self) -> usize {
///         1024
///     }
///     fn flops_per_token(&self, _seq_len: usize) -> f64 {
///         6.0 * self.num_params() as f64
///     }
/// }
///
/// let mut rng = fastrand::Rng::with_seed(1);
/// let table = Embedding::tokens_only(Placement::cpu(), "table", 5, 5, 5, 0.1, &mut rng)?;
/// let mut model = Bigram { table, vocab: 5, logits: None, dlogits: None };
/// let (ids, next) = (Tensor::from_u32(&[1, 3], vec![0, 1, 2])?, Tensor::from_u32(&[1, 3], vec![1, 2, 3])?);
/// let loss = model.forward(&ids, Some(&next))?.unwrap();
/// assert!((loss - 5f32.ln()).abs() < 0.1, "about ln V at initialisation");
/// model.backward(1.0)?;
/// assert_eq!(model.num_params(), 25);
///
/// // The gradient checker agrees with that backward.
/// let options = models::gradcheck::GradCheckOptions { eps: 1e-2, tolerance: 2e-2, ..Default::default() };
/// let report = models::gradcheck::check_model(&mut model, &ids, &next, &options)?;
/// assert!(report.passed(), "{report}");
/// # Ok::<(), models::Error>(())
/// ```
pub trait Model {
    /// Runs the model on token ids `inputs` (B,T), on the model's device. With `targets`
    /// (B,T) returns the mean cross-entropy loss and keeps what `backward` needs; without,
    /// keeps the logits for [`Model::logits`] and returns `None`.
    fn forward(&mut self, inputs: &Tensor, targets: Option<&Tensor>) -> Result<Option<f32>>;

    /// The forward with targets (B,T), its mean loss left on the model's device:
    /// `loss` (1 element, f32, on the model's device) becomes (`accumulate` ? `loss` : 0) +
    /// `scale` * mean loss, so a trainer averages a step's micro-batches (scale = 1/M) without
    /// the host waiting for the device. Keeps what `backward` needs, as `forward` does. The
    /// default goes through [`Model::forward`] (the host reads the loss); GPT-2 keeps it on the
    /// device.
    fn forward_loss(&mut self, inputs: &Tensor, targets: &Tensor, loss: &mut Tensor, scale: f32, accumulate: bool) -> Result<()> {
        let value = self.forward(inputs, Some(targets))?.ok_or_else(|| Error::Input("forward with targets returned no loss".into()))?;
        let before = if accumulate { loss.try_to_vec()?[0] } else { 0.0 };
        *loss = Tensor::from_vec(&[1], vec![before + scale * value])?.to_device(loss.device())?;
        Ok(())
    }

    /// The cross-entropy of every position: `targets` (B,T) given `inputs` (B,T), as B*T
    /// f32 values on the model's device, row-major (b, t), each -log softmax(logits[b,t,:V])
    /// [targets[b,t]] over the first [`Model::vocab_size`] columns. What evaluations that
    /// score spans of tokens need (the HellaSwag task of `engine eval`); a mean loss is not
    /// enough. Like a forward with targets it may keep what `backward` needs: call
    /// [`Model::release`] after it.
    ///
    /// The default runs [`Model::forward`] without targets and computes the log-softmax of
    /// [`Model::logits`] on the host in f64 (on a GPU the whole (B,T,V) logits come back to
    /// the host). Models built on [`LmHead`](crate::lm_head::LmHead) with
    /// [`lm_model_methods!`](crate::lm_model_methods) compute it on their device with the
    /// fused cross-entropy, the training loss's own kernel.
    fn token_losses(&mut self, inputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        if inputs.shape() != targets.shape() {
            return Err(Error::Input(format!("targets {:?} must match inputs {:?}", targets.shape(), inputs.shape())));
        }
        if self.forward(inputs, None)?.is_some() {
            return Err(Error::Input("forward without targets returned a loss".into()));
        }
        let logits = self.logits().ok_or_else(|| Error::Input("forward without targets kept no logits".into()))?;
        let (vocab, device) = (self.vocab_size(), self.device());
        let losses = crate::lm_head::host_token_losses(logits, targets, vocab)?;
        Ok(Tensor::from_vec(&[losses.len()], losses)?.to_device(device)?)
    }

    /// Incremental decoding with a key/value cache: runs token ids `inputs` (B, n) as the
    /// positions `start .. start + n` of sequences whose first `start` positions an earlier
    /// call ran (`start` = 0 begins new sequences; a `start` below the positions cached
    /// drops the rest first), extends the cache with theirs, and keeps the logits (B, n, V_stored)
    /// of the n new positions for [`Model::logits`], as a forward without targets over the
    /// whole sequences would (up to float rounding). `start + n` must not exceed
    /// [`Model::context_length`]. [`Model::release`] drops the cache.
    ///
    /// Returns `Ok(false)`, having run nothing, when the model has no KV cache: the default,
    /// so a model of your own works unchanged, and a caller (`engine sample`) runs
    /// [`Model::forward`] over the whole window instead. GPT-2 and Llama have one, on the
    /// CPU and on CUDA (the cache on the model's device in its activation dtype: bf16 in
    /// mixed precision).
    fn forward_cached(&mut self, inputs: &Tensor, start: usize) -> Result<bool> {
        let _ = (inputs, start);
        Ok(false)
    }

    /// Backward from the last forward's loss, times `loss_scale` (e.g. 1/accumulation
    /// steps). Parameter gradients accumulate.
    fn backward(&mut self, loss_scale: f32) -> Result<()>;

    /// Drops everything the last forward kept for backward (activations, logits), so that
    /// memory is free again without a backward: the trainer calls it after a step failed
    /// (out of memory) before redoing the step, and after evaluation. The next forward
    /// starts afresh. Models that keep nothing between calls need not implement it.
    fn release(&mut self) {}

    /// Sets the recomputation (activation checkpointing) policy from the next forward on.
    /// Models without recomputation accept only [`Recompute::None`].
    fn set_recompute(&mut self, policy: Recompute) -> Result<()> {
        match policy {
            Recompute::None => Ok(()),
            other => Err(Error::Config(format!("this model does not support recomputation ({other})"))),
        }
    }

    /// The policies a planner may choose from, least recomputation first (see
    /// [`Recompute::candidates`]); each must be accepted by [`Model::set_recompute`]. The
    /// default: only [`Recompute::None`].
    fn recompute_candidates(&self) -> Vec<Recompute> {
        vec![Recompute::None]
    }

    /// Logits (B,T,V_stored) of the last forward run without targets, on the model's device
    /// in its compute dtype. Columns at and past [`Model::vocab_size`] are padding and must
    /// be ignored.
    fn logits(&self) -> Option<&Tensor>;

    /// Calls `f` on every parameter in a fixed order: the order of checkpoints, exports and
    /// the optimizer's state.
    fn visit_params(&self, f: &mut dyn FnMut(&Param));
    /// The same, mutably (the optimizer's update, loading a checkpoint).
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param));

    /// Tokens V the model predicts (logits columns past it are padding).
    fn vocab_size(&self) -> usize;
    /// The longest sequence the model accepts.
    fn context_length(&self) -> usize;
    /// Training FLOPs per token at sequence length `seq_len` (forward + backward).
    fn flops_per_token(&self, seq_len: usize) -> f64;

    /// A Hugging Face `config.json` describing the exported checkpoint, if the model has one.
    fn hf_config_json(&self) -> Option<String> {
        None
    }

    /// Where the model's parameters live (inputs go there too): the device of its first
    /// parameter, the CPU for a model without any.
    fn device(&self) -> Device {
        let mut device = None;
        self.visit_params(&mut |p| {
            device.get_or_insert(p.value.device());
        });
        device.unwrap_or(Device::Cpu)
    }

    /// Parameters counted as exported (padding excluded).
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |p| n += p.export_shape.iter().product::<usize>());
        n
    }
}
