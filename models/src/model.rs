use kernels::{Device, Tensor};

use crate::recompute::Recompute;
use crate::{Error, Param, Result};

/// What the trainer drives. GPT-2 and Llama implement it; so can any model a library user
/// builds from the engine's layers.
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

    fn visit_params(&self, f: &mut dyn FnMut(&Param));
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param));

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

    fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |p| n += p.export_shape.iter().product::<usize>());
        n
    }
}
