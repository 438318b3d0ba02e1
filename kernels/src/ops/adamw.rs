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
        Device::Cuda(_) => cuda::adamw_update(param, None, grad, m, v, hp)?,
        Device::Cpu => {
            cpu::adamw_update(param.f32_mut()?, grad.f32()?, m.f32_mut()?, v.f32_mut()?, hp);
        }
    }
    Ok(())
}

/// The same update, also writing `param_copy` (bf16, same shape): the working copy of the
/// fp32 master `param` that the forward reads in mixed precision. On the GPU this is one pass
/// (kernels/cuda/adamw.cu); on the CPU the update then a rounding copy.
pub fn adamw_update_with_copy(
    param: &mut Tensor,
    param_copy: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    hp: &AdamWStep,
) -> Result<()> {
    let op = "adamw_update_with_copy";
    param_copy.expect_shape(op, "param_copy", param.shape())?;
    grad.expect_shape(op, "grad", param.shape())?;
    m.expect_shape(op, "m", param.shape())?;
    v.expect_shape(op, "v", param.shape())?;
    if hp.step == 0 {
        return Err(Error::Invalid { op, msg: "step counts from 1".into() });
    }
    match same_device(op, &[param, param_copy, grad, m, v])? {
        Device::Cuda(_) => cuda::adamw_update(param, Some(param_copy), grad, m, v, hp),
        Device::Cpu => {
            cpu::adamw_update(param.f32_mut()?, grad.f32()?, m.f32_mut()?, v.f32_mut()?, hp);
            let master = param.f32()?;
            for (c, &p) in param_copy.bf16_mut()?.iter_mut().zip(master) {
                *c = half::bf16::from_f32(p);
            }
            Ok(())
        }
    }
}

pub mod cpu {
    use rayon::prelude::*;

    use super::AdamWStep;

    const CHUNK: usize = 4096;

    /// The update in place; returns whether every new parameter and moment is finite (the
    /// trainer's guard, checked on the values as they are written).
    pub fn adamw_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamWStep) -> bool {
        let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
        let bc2_sqrt = (1.0 - hp.beta2.powi(hp.step as i32)).sqrt();
        let step_size = hp.lr / bc1;
        let decay = 1.0 - hp.lr * hp.weight_decay;
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .map(|((p, g), (m, v))| {
                // x - x is 0 for a finite x, NaN for NaN and infinities.
                let mut finite = true;
                for i in 0..p.len() {
                    let g = g[i];
                    m[i] += (1.0 - hp.beta1) * (g - m[i]);
                    v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
                    p[i] *= decay;
                    p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + hp.eps);
                    finite &= (p[i] - p[i]) + (m[i] - m[i]) + (v[i] - v[i]) == 0.0;
                }
                finite
            })
            .reduce(|| true, |a, b| a && b)
    }
}

pub mod cuda {
    //! Launcher for kernels/cuda/adamw.cu: fp32 param (master), m, v; f32 or bf16 gradient;
    //! optionally the bf16 working copy of the parameter written in the same pass.
    use super::AdamWStep;
    use crate::cuda::{bf16, CudaElement, CudaSlice, PushKernelArg};
    use crate::ops::expect_dtype;
    use crate::{DType, Result, Tensor};

    const OP: &str = "adamw_update";
    const BLOCK: u32 = 256;

    pub fn adamw_update(
        param: &mut Tensor,
        param_copy: Option<&mut Tensor>,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hp: &AdamWStep,
    ) -> Result<()> {
        expect_dtype(OP, "param", param, DType::F32)?;
        expect_dtype(OP, "m", m, DType::F32)?;
        expect_dtype(OP, "v", v, DType::F32)?;
        if let Some(copy) = &param_copy {
            expect_dtype(OP, "param_copy", copy, DType::Bf16)?;
        }
        dispatch_float!(grad.dtype(), OP, "grad", update(param, param_copy, grad, m, v, hp))
    }

    fn update<G: CudaElement>(
        param: &mut Tensor,
        param_copy: Option<&mut Tensor>,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hp: &AdamWStep,
    ) -> Result<()> {
        let dev = crate::ops::cuda_device(OP, param)?;
        let kernel = format!("adamw_step_{}", G::NAME);
        let f = dev.function("adamw", &kernel)?;
        let n = param.numel();
        let cfg = dev.grid_stride(n, BLOCK)?;
        // The step constants, computed in f32 exactly as cpu::adamw_update does.
        let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
        let bc2_sqrt = (1.0 - hp.beta2.powi(hp.step as i32)).sqrt();
        let step_size = hp.lr / bc1;
        let decay = 1.0 - hp.lr * hp.weight_decay;
        let (one_minus_beta1, one_minus_beta2) = (1.0 - hp.beta1, 1.0 - hp.beta2);
        let copy: Option<&mut CudaSlice<bf16>> = match param_copy {
            Some(t) => Some(t.cuda_slice_mut::<bf16>()?),
            None => None,
        };
        // Without a copy, a null device pointer (8 bytes, like any pointer argument) skips it.
        let null_ptr: u64 = 0;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(param.cuda_slice_mut::<f32>()?);
        match copy {
            Some(copy) => launch.arg(copy),
            None => launch.arg(&null_ptr),
        };
        launch
            .arg(grad.cuda_slice::<G>()?)
            .arg(m.cuda_slice_mut::<f32>()?)
            .arg(v.cuda_slice_mut::<f32>()?)
            .arg(&n)
            .arg(&one_minus_beta1)
            .arg(&hp.beta2)
            .arg(&one_minus_beta2)
            .arg(&step_size)
            .arg(&bc2_sqrt)
            .arg(&hp.eps)
            .arg(&decay);
        // SAFETY: matches adamw.cu `adamw_step_<G>(float* param, bf16* param_copy, const G* grad, float* m,
        // float* v, u64 n, float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
        // float bc2_sqrt, float eps, float decay)`; every array holds n elements (shapes checked by the caller)
        // or param_copy is null; the tensors are distinct (uniquely borrowed), so nothing aliases.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
