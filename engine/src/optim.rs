//! AdamW over a model's parameters, with global-norm gradient clipping. The state (m, v)
//! is kept per parameter in the model's visiting order, which is stable.

use kernels::ops::adamw::{adamw_update, AdamWStep};
use kernels::ops::norm::{clip_coefficient, global_norm};
use kernels::ops::residual::scale;
use kernels::Tensor;
use models::Model;

use crate::Result;

#[derive(Clone, Debug)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Decay every parameter, not only those marked for decay (matmul weights).
    pub decay_all_params: bool,
    /// Clip the global gradient norm to this; 0 disables.
    pub grad_clip: f32,
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far.
    pub step: u64,
    /// (m, v) per parameter, in visiting order.
    pub state: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, model: &dyn Model) -> Self {
        let mut state = Vec::new();
        model.visit_params(&mut |p| {
            state.push((Tensor::zeros(p.value.device(), p.value.shape()), Tensor::zeros(p.value.device(), p.value.shape())))
        });
        Self { config, step: 0, state }
    }

    /// Clips the gradients and takes one step at learning rate `lr`. Returns the gradient
    /// norm before clipping.
    pub fn step(&mut self, model: &mut dyn Model, lr: f32) -> Result<f32> {
        let mut grads = Vec::new();
        model.visit_params(&mut |p| grads.push(p.grad.clone()));
        let norm = global_norm(&grads.iter().collect::<Vec<_>>())?;
        drop(grads); // release the shared references so the in-place updates below do not copy
        let coef = if self.config.grad_clip > 0.0 { clip_coefficient(norm, self.config.grad_clip) } else { 1.0 };
        self.step += 1;
        let c = &self.config;
        let mut result = Ok(());
        let mut i = 0;
        model.visit_params_mut(&mut |p| {
            if result.is_err() {
                return;
            }
            let hp = AdamWStep {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: if p.weight_decay || c.decay_all_params { c.weight_decay } else { 0.0 },
                step: self.step,
            };
            let (m, v) = &mut self.state[i];
            i += 1;
            result = (|| {
                if coef < 1.0 {
                    scale(&mut p.grad, coef)?;
                }
                adamw_update(&mut p.value, &p.grad, m, v, &hp)
            })();
        });
        result?;
        Ok(norm)
    }
}

pub fn zero_grad(model: &mut dyn Model) -> Result<()> {
    let mut result = Ok(());
    model.visit_params_mut(&mut |p| {
        if result.is_ok() {
            result = p.grad.fill_zero();
        }
    });
    Ok(result?)
}
