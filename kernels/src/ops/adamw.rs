//! AdamW with decoupled weight decay, matching `torch.optim.AdamW`:
//!   param *= 1 - lr * weight_decay
//!   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//!   param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
//! `step` counts from 1. Which parameters decay is the caller's choice (weight_decay = 0).

use super::same_device;
use crate::{Device, Error, Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step number, for the bias corrections.
    pub step: u64,
}

pub fn adamw_update(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, hp: &AdamWStep) -> Result<()> {
    let op = "adamw_update";
    grad.expect_shape(op, "grad", param.shape())?;
    m.expect_shape(op, "m", param.shape())?;
    v.expect_shape(op, "v", param.shape())?;
    if hp.step == 0 {
        return Err(Error::Invalid { op, msg: "step counts from 1".into() });
    }
    match same_device(op, &[param, grad, m, v])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op, device }),
        Device::Cpu => cpu::adamw_update(param.f32_mut()?, grad.f32()?, m.f32_mut()?, v.f32_mut()?, hp),
    }
    Ok(())
}

pub mod cpu {
    use rayon::prelude::*;

    use super::AdamWStep;

    const CHUNK: usize = 4096;

    pub fn adamw_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamWStep) {
        let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
        let bc2_sqrt = (1.0 - hp.beta2.powi(hp.step as i32)).sqrt();
        let step_size = hp.lr / bc1;
        let decay = 1.0 - hp.lr * hp.weight_decay;
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    let g = g[i];
                    m[i] += (1.0 - hp.beta1) * (g - m[i]);
                    v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
                    p[i] *= decay;
                    p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + hp.eps);
                }
            });
    }
}
