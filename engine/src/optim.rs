//! AdamW over a model's parameters, with global-norm gradient clipping, on the model's
//! device. The state (m, v, f32, same device) is kept per parameter in the model's
//! visiting order, which is stable. In bf16 precision the update writes the fp32 master
//! value and its bf16 working copy in one pass (`adamw_update_with_copy`).
//!
//! On CUDA the whole step is four launches whatever the number of parameters
//! (`kernels::ops::multi_tensor`): the squares of every gradient, the norm, AdamW on every
//! parameter with the clip factor read on the device, and (in [`zero_grad`]) one zeroing.

use kernels::ops::adamw::{adamw_update_with_copy, cpu::adamw_update as adamw_cpu, AdamWStep};
use std::sync::Arc;

use kernels::cuda::CudaDevice;
use kernels::ops::multi_tensor::TensorTable;
use kernels::ops::norm::{clip_grad_norm, global_norm};
use kernels::{DType, Device, Tensor};
use models::Model;

use crate::Result;

/// AdamW's hyper-parameters (from `[train]`: [`crate::train::adamw_config`]); the
/// learning rate is given per step.
#[derive(Clone, Debug)]
pub struct AdamWConfig {
    /// Decay rate of the first moment (m), in [0, 1).
    pub beta1: f32,
    /// Decay rate of the second moment (v), in [0, 1).
    pub beta2: f32,
    /// Added to the bias-corrected sqrt(v) in the update's denominator.
    pub eps: f32,
    /// Decoupled weight decay: a decayed parameter is first scaled by `1 - lr * weight_decay`.
    pub weight_decay: f32,
    /// Decay every parameter, not only those marked for decay (matmul weights).
    pub decay_all_params: bool,
    /// Clip the global gradient norm to this; 0 disables.
    pub grad_clip: f32,
}

/// The AdamW optimizer and its state for one model.
pub struct AdamW {
    /// The hyper-parameters every step uses.
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

    /// Zero state for every parameter of `model`, on each parameter's device; an
    /// allocation failure (e.g. out of memory) is an error.
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
    ///
    /// The update is guarded: a NaN or infinite gradient norm skips it (nothing changes), and
    /// an update that makes a parameter or a moment non-finite is flagged; the returned
    /// [`GradNorm`] carries that outcome ([`GradNorm::update`]), on a GPU as a device scalar
    /// read with the norm.
    pub fn step_queued(&mut self, model: &mut dyn Model, lr: f32) -> Result<GradNorm> {
        self.step_gated(model, lr, None)
    }

    /// [`AdamW::step_queued`], with `gate` asked before the update whether to apply it,
    /// given the gradient norm (on a GPU reading it waits for the device): `false` skips the
    /// update (the optimizer's step count does not advance), reported as
    /// [`Update::Skipped`]. For outlier policies (`train.skip_update_zscore`).
    pub fn step_gated(&mut self, model: &mut dyn Model, lr: f32, gate: Option<&mut dyn FnMut(f32) -> Result<bool>>) -> Result<GradNorm> {
        if let Some(Device::Cuda(ordinal)) = first_device(model) {
            return self.step_cuda(model, lr, ordinal, gate);
        }
        let norm = clip_gradients(model, self.config.grad_clip)?;
        let value = norm.read()?;
        if !value.is_finite() {
            return Ok(GradNorm::Host(value, Update::NonFiniteGradient));
        }
        if let Some(gate) = gate {
            if !gate(value)? {
                return Ok(GradNorm::Host(value, Update::Skipped));
            }
        }
        self.step += 1;
        let c = &self.config;
        let mut result = Ok(());
        let mut i = 0;
        let mut finite = true;
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
                Some(working) => adamw_update_with_copy(&mut p.value, working, &p.grad, m, v, &hp).map(|()| {
                    finite &= [&p.value, &*m, &*v].iter().all(|t| t.f32().is_ok_and(|x| x.iter().all(|x| x.is_finite())));
                }),
                // The plain update checks what it writes as it writes it (no extra pass).
                None => (|| -> kernels::Result<()> {
                    expect_same_shapes(&p.value, &p.grad, m, v)?;
                    finite &= adamw_cpu(p.value.f32_mut()?, p.grad.f32()?, m.f32_mut()?, v.f32_mut()?, &hp);
                    Ok(())
                })(),
            };
        });
        result?;
        Ok(GradNorm::Host(value, if finite { Update::Applied } else { Update::NonFinite }))
    }
}

impl AdamW {
    /// The CUDA step: the norm, clipping and the update of every parameter in three launches
    /// (a table of the parameters, see `kernels::ops::multi_tensor`).
    fn step_cuda(&mut self, model: &mut dyn Model, lr: f32, ordinal: usize, gate: Option<&mut dyn FnMut(f32) -> Result<bool>>) -> Result<GradNorm> {
        let c = &self.config;
        let mut table = TensorTable::new();
        let mut result = Ok(());
        let mut i = 0;
        model.visit_params_mut(&mut |p| {
            if result.is_ok() {
                let (m, v) = &self.state[i];
                i += 1;
                let decays = c.weight_decay != 0.0 && (p.weight_decay || c.decay_all_params);
                result = table.push_adamw(&p.value, p.working.as_ref(), &p.grad, m, v, decays);
            }
        });
        result?;
        let hp = AdamWStep { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay, step: self.step + 1 };
        // SAFETY: the table points at this model's parameters, gradients and this optimizer's
        // state, all exclusively borrowed (`model`, `self`) until both launches are queued;
        // none is freed, moved or aliased in between (each parameter owns its tensors).
        let norm = unsafe { table.global_norm() }?;
        let device = kernels::cuda::device(ordinal)?;
        if let Some(gate) = gate {
            let value = norm.try_to_vec()?[0];
            if value.is_finite() && !gate(value)? {
                return Ok(GradNorm::Host(value, Update::Skipped));
            }
        }
        // The launch skips the update itself when the norm is not finite (status 1).
        let status = unsafe { table.adamw(&norm, c.grad_clip, &hp) }?;
        // The step count advances unless the device skipped the update; a skipped update
        // stops the run (crate::train), so the count never disagrees with what was applied.
        self.step += 1;
        Ok(GradNorm::Device(device, norm, status))
    }
}

/// The shape checks of `kernels::ops::adamw::adamw_update`, for the CPU path that calls its
/// slice kernel directly.
fn expect_same_shapes(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor) -> kernels::Result<()> {
    let op = "adamw_update";
    grad.expect_shape(op, "grad", param.shape())?;
    m.expect_shape(op, "m", param.shape())?;
    v.expect_shape(op, "v", param.shape())
}

fn first_device(model: &dyn Model) -> Option<Device> {
    let mut device = None;
    model.visit_params(&mut |p| {
        device.get_or_insert(p.value.device());
    });
    device
}

/// A step's gradient norm before clipping and what became of its update: values on the CPU
/// (or when the step was gated), one f32 each on the device on a GPU.
pub enum GradNorm {
    /// The norm and the update's outcome, already on the host.
    Host(f32, Update),
    /// One-element f32 tensors on the device: the norm, and the update's status
    /// (`kernels::ops::multi_tensor::UPDATE_*`, see [`Update::from_status`]).
    Device(Arc<CudaDevice>, Tensor, Tensor),
}

/// What the optimizer did with a step's gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Applied; every parameter and moment it wrote is finite.
    Applied,
    /// Not applied: the step's gradient norm was NaN or infinite (nothing changed).
    NonFiniteGradient,
    /// Not applied: the gate of [`AdamW::step_gated`] refused it (an outlier).
    Skipped,
    /// Applied, and some parameter or moment became NaN or infinite: the model is poisoned.
    NonFinite,
}

impl Update {
    /// The outcome from the device status of `TensorTable::adamw`.
    pub fn from_status(status: f32) -> Self {
        use kernels::ops::multi_tensor::{UPDATE_APPLIED, UPDATE_SKIPPED};
        match status {
            s if s == UPDATE_APPLIED => Update::Applied,
            s if s == UPDATE_SKIPPED => Update::NonFiniteGradient,
            _ => Update::NonFinite,
        }
    }
}

impl GradNorm {
    /// The norm on the host (on a GPU this waits for the device to compute it).
    pub fn read(&self) -> Result<f32> {
        Ok(match self {
            GradNorm::Host(norm, _) => *norm,
            GradNorm::Device(_, norm, _) => norm.try_to_vec()?[0],
        })
    }

    /// The update's outcome (on a GPU this waits for the device).
    pub fn update(&self) -> Result<Update> {
        Ok(match self {
            GradNorm::Host(_, update) => *update,
            GradNorm::Device(_, _, status) => Update::from_status(status.try_to_vec()?[0]),
        })
    }
}

/// The global gradient norm; with `max_norm > 0`, also scales every gradient by
/// min(1, max_norm / (norm + 1e-6)). The CPU path (CUDA clips inside its AdamW launch).
fn clip_gradients(model: &mut dyn Model, max_norm: f32) -> Result<GradNorm> {
    // The gradients are moved out for the call (not cloned: a clone shares storage and an
    // in-place write would copy it) and put back in the same order.
    let mut grads = Vec::new();
    model.visit_params_mut(&mut |p| grads.push(std::mem::replace(&mut p.grad, empty())));
    let norm = match grads.first().map(Tensor::device) {
        _ if max_norm > 0.0 => {
            let mut refs: Vec<&mut Tensor> = grads.iter_mut().collect();
            clip_grad_norm(&mut refs, max_norm).map(|n| GradNorm::Host(n, Update::Applied))
        }
        _ => global_norm(&grads.iter().collect::<Vec<_>>()).map(|n| GradNorm::Host(n, Update::Applied)),
    };
    let mut back = grads.into_iter();
    model.visit_params_mut(&mut |p| p.grad = back.next().expect("same parameters, same order"));
    Ok(norm?)
}

fn empty() -> Tensor {
    Tensor::from_vec(&[0], Vec::new()).expect("empty")
}

/// Zeroes every gradient of `model` (on CUDA in one launch).
pub fn zero_grad(model: &mut dyn Model) -> Result<()> {
    let mut result = Ok(());
    if let Some(Device::Cuda(_)) = first_device(model) {
        let mut table = TensorTable::new();
        model.visit_params_mut(&mut |p| {
            if result.is_ok() {
                result = table.push_grad(&p.grad);
            }
        });
        result?;
        // SAFETY: the table points at the model's gradients, exclusively borrowed until the
        // launch is queued.
        return Ok(unsafe { table.zero() }?);
    }
    model.visit_params_mut(&mut |p| {
        if result.is_ok() {
            result = p.grad.fill_zero();
        }
    });
    Ok(result?)
}
