//! AdamW over a model's parameters, with global-norm gradient clipping, on the model's
//! device. The state (m, v, f32, same device) is kept per parameter in the model's
//! visiting order, which is stable. In bf16 precision the update writes the fp32 master
//! value and its bf16 working copy in one pass (`adamw_update_with_copy`).

use kernels::ops::adamw::{adamw_update, adamw_update_with_copy, AdamWStep};
use std::sync::Arc;

use kernels::cuda::{CudaDevice, CudaSlice};
use kernels::ops::norm::{clip_grad_norm, global_norm};
use kernels::{DType, Device, Tensor};
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
    /// (m, v) per parameter, in visiting order: f32, on the parameter's device.
    pub state: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    /// Zero state for every parameter of `model`. Panics if the device cannot allocate it;
    /// [`AdamW::try_new`] returns that as an error.
    pub fn new(config: AdamWConfig, model: &dyn Model) -> Self {
        Self::try_new(config, model).unwrap_or_else(|e| panic!("AdamW::new: {e}"))
    }

    pub fn try_new(config: AdamWConfig, model: &dyn Model) -> Result<Self> {
        let mut state = Vec::new();
        let mut result = Ok(());
        model.visit_params(&mut |p| {
            if result.is_ok() {
                let zeros = || Tensor::try_zeros(p.value.device(), DType::F32, p.value.shape());
                result = zeros().and_then(|m| Ok((m, zeros()?))).map(|mv| state.push(mv));
            }
        });
        result?;
        Ok(Self { config, step: 0, state })
    }

    /// Clips the gradients and takes one step at learning rate `lr`. Returns the gradient
    /// norm before clipping (computed on the model's device; reading it waits for the device).
    pub fn step(&mut self, model: &mut dyn Model, lr: f32) -> Result<f32> {
        self.step_queued(model, lr)?.read()
    }

    /// [`AdamW::step`] without reading the norm: on a GPU the clipping reads the norm on the
    /// device and nothing here waits for it.
    pub fn step_queued(&mut self, model: &mut dyn Model, lr: f32) -> Result<GradNorm> {
        let norm = clip_gradients(model, self.config.grad_clip)?;
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
            result = match &mut p.working {
                Some(working) => adamw_update_with_copy(&mut p.value, working, &p.grad, m, v, &hp),
                None => adamw_update(&mut p.value, &p.grad, m, v, &hp),
            };
        });
        result?;
        Ok(norm)
    }
}

/// A step's gradient norm before clipping: a value on the CPU, one f32 on the device on a GPU.
pub enum GradNorm {
    Host(f32),
    Device(Arc<CudaDevice>, CudaSlice<f32>),
}

impl GradNorm {
    /// The norm on the host (on a GPU this waits for the device to compute it).
    pub fn read(&self) -> Result<f32> {
        Ok(match self {
            GradNorm::Host(norm) => *norm,
            GradNorm::Device(dev, norm) => dev.dtoh(norm)?[0],
        })
    }
}

/// The global gradient norm; with `max_norm > 0`, also scales every gradient by
/// min(1, max_norm / (norm + 1e-6)) (on a GPU from the norm on the device, nothing waiting).
fn clip_gradients(model: &mut dyn Model, max_norm: f32) -> Result<GradNorm> {
    // The gradients are moved out for the call (not cloned: a clone shares storage and an
    // in-place write would copy it) and put back in the same order.
    let mut grads = Vec::new();
    model.visit_params_mut(&mut |p| grads.push(std::mem::replace(&mut p.grad, empty())));
    let norm = match grads.first().map(Tensor::device) {
        Some(Device::Cuda(ordinal)) => {
            let mut refs: Vec<&mut Tensor> = grads.iter_mut().collect();
            kernels::ops::norm::cuda::clip_grad_norm_device(&mut refs, max_norm)
                .and_then(|norm| Ok(GradNorm::Device(kernels::cuda::device(ordinal)?, norm)))
        }
        _ if max_norm > 0.0 => {
            let mut refs: Vec<&mut Tensor> = grads.iter_mut().collect();
            clip_grad_norm(&mut refs, max_norm).map(GradNorm::Host)
        }
        _ => global_norm(&grads.iter().collect::<Vec<_>>()).map(GradNorm::Host),
    };
    let mut back = grads.into_iter();
    model.visit_params_mut(&mut |p| p.grad = back.next().expect("same parameters, same order"));
    Ok(norm?)
}

fn empty() -> Tensor {
    Tensor::from_vec(&[0], Vec::new()).expect("empty")
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
