//! Global gradient norm and clipping.
//! global_norm = sqrt(sum over tensors of sum x^2), accumulated in f64 in a fixed order.
//! Clipping (as `torch.nn.utils.clip_grad_norm_`): every gradient is scaled by
//! min(1, max_norm / (norm + 1e-6)); see `clip_coefficient`.

use crate::{Device, Error, Result, Tensor};

pub fn global_norm(tensors: &[&Tensor]) -> Result<f32> {
    let mut total = 0.0f64;
    for t in tensors {
        total += match t.device() {
            device @ Device::Cuda(_) => return Err(Error::NoKernel { op: "global_norm", device }),
            Device::Cpu => cpu::sum_squares(t.f32()?),
        };
    }
    Ok(total.sqrt() as f32)
}

/// The factor gradients are multiplied by when clipping to `max_norm`.
pub fn clip_coefficient(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

pub mod cpu {
    use rayon::prelude::*;

    const CHUNK: usize = 16384;

    /// Sum of squares in f64, over fixed chunks summed in order (deterministic).
    pub fn sum_squares(x: &[f32]) -> f64 {
        let partials: Vec<f64> = x.par_chunks(CHUNK).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
        partials.iter().sum()
    }
}
