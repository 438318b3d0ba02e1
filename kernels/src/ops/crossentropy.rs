//! The fused classifier tail: logits -> softmax -> cross-entropy -> dlogits, in one pass
//! over each row, without keeping the probabilities.
//!
//! logits (N,Vp): only the first V columns are real; the padding (V..Vp) is ignored by the
//! softmax and gets zero gradient, so padding never changes the loss or leaks into training.
//! forward:  losses[n] = logsumexp(logits[n,:V]) - logits[n, target[n]]
//! backward (fused, optional): logits[n,:] is overwritten in place by
//!           dlogits = dloss * (softmax(logits[n,:V]) - onehot(target[n])), 0 in the padding.

use super::{expect_dtype, rows_cols, same_device};
use crate::{DType, Device, Error, Result, Tensor};

const OP: &str = "crossentropy_forward";

/// Losses per row; when `dloss` is `Some`, also turns `logits` into dlogits in place
/// (dloss is d(total loss)/d(losses[n]), e.g. 1/N for a mean).
pub fn crossentropy_forward(
    losses: &mut Tensor,
    logits: &mut Tensor,
    targets: &Tensor,
    vocab: usize,
    dloss: Option<f32>,
) -> Result<()> {
    let (n, vp) = rows_cols(logits);
    expect_dtype(OP, "targets", targets, DType::U32)?;
    if targets.numel() != n {
        return Err(Error::Shape { op: OP, arg: "targets", expected: vec![n], got: targets.shape().to_vec() });
    }
    losses.expect_shape(OP, "losses", &[n])?;
    if vocab == 0 || vocab > vp {
        return Err(Error::Invalid { op: OP, msg: format!("vocab {vocab} must be in 1..={vp} (the logits width)") });
    }
    match same_device(OP, &[losses, logits, targets])? {
        Device::Cuda(_) => cuda::crossentropy_forward(losses, logits, targets, vocab, dloss),
        Device::Cpu => cpu::crossentropy_forward(losses.f32_mut()?, logits.f32_mut()?, targets.u32()?, vp, vocab, dloss),
    }
}

/// The mean loss kept on the device: `out` (1 element, f32) = (`accumulate` ? `out` : 0) +
/// `scale` * sum(`losses` (N)), in a fixed order. A step over M micro-batches of N rows
/// each passes scale = 1 / (N M), so its loss is averaged where it was computed and only a
/// step that logs it needs to read it back.
pub fn loss_mean(out: &mut Tensor, losses: &Tensor, scale: f32, accumulate: bool) -> Result<()> {
    const OP: &str = "loss_mean";
    out.expect_shape(OP, "out", &[1])?;
    expect_dtype(OP, "out", out, DType::F32)?;
    expect_dtype(OP, "losses", losses, DType::F32)?;
    match same_device(OP, &[out, losses])? {
        Device::Cuda(_) => cuda::loss_mean(out, losses, scale, accumulate),
        Device::Cpu => {
            let total = cpu::loss_mean(losses.f32()?, scale);
            let out = out.f32_mut()?;
            out[0] = if accumulate { out[0] + total } else { total };
            Ok(())
        }
    }
}

pub mod cpu {
    use rayon::prelude::*;

    /// `scale` * the sum of `losses`, summed in f64.
    pub fn loss_mean(losses: &[f32], scale: f32) -> f32 {
        (scale as f64 * losses.iter().map(|&l| l as f64).sum::<f64>()) as f32
    }

    use crate::ops::cpu_math::{self, exp, multiversion};
    use crate::{Error, Result};

    multiversion! {
        /// One row: returns the loss; with `grad`, overwrites the row with dlogits.
        fn row_forward(row: &mut [f32], vocab: usize, target: usize, dloss: f32, grad: bool) -> f32 {
            let (real, padding) = row.split_at_mut(vocab);
            let max = cpu_math::max(real);
            let sum = cpu_math::sum_by(real.len(), |i| exp(real[i] - max));
            let loss = sum.ln() + max - real[target];
            if grad {
                let scale = dloss / sum;
                for x in real.iter_mut() {
                    *x = scale * exp(*x - max);
                }
                real[target] -= dloss;
                padding.fill(0.0);
            }
            loss
        }
    }

    pub fn crossentropy_forward(
        losses: &mut [f32],
        logits: &mut [f32],
        targets: &[u32],
        vp: usize,
        vocab: usize,
        dloss: Option<f32>,
    ) -> Result<()> {
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid { op: "crossentropy_forward", msg: format!("target {bad} is outside the vocabulary (size {vocab})") });
        }
        logits.par_chunks_mut(vp).zip(losses.par_iter_mut().zip(targets.par_iter())).for_each(|(row, (loss, &target))| {
            *loss = row_forward(row, vocab, target as usize, dloss.unwrap_or(0.0), dloss.is_some());
        });
        Ok(())
    }
}

pub mod cuda {
    //! Launcher for kernels/cuda/crossentropy.cu: logits f32 or bf16, losses f32, targets u32.
    use crate::cuda::{CudaElement, LaunchConfig, PushKernelArg};
    use crate::ops::{expect_dtype, rows_cols};
    use crate::{DType, Error, Result, Tensor};

    const OP: &str = "crossentropy_forward";

    pub fn loss_mean(out: &mut Tensor, losses: &Tensor, scale: f32, accumulate: bool) -> Result<()> {
        let n = losses.numel();
        if n > i32::MAX as usize {
            return Err(Error::Invalid { op: "loss_mean", msg: format!("{n} rows exceed the kernel's int range") });
        }
        let dev = crate::ops::cuda_device("loss_mean", out)?;
        let kernel = "crossentropy_mean_f32";
        let f = dev.function("crossentropy", kernel)?;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        let (n, accumulate) = (n as i32, accumulate as i32);
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<f32>()?).arg(losses.cuda_slice::<f32>()?).arg(&n).arg(&scale).arg(&accumulate);
        // SAFETY: matches crossentropy.cu `crossentropy_mean_f32(float* out, const float* losses, int N, float scale,
        // int accumulate)`; out holds 1 float, losses N (checked by the caller); one block of 1024 threads.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(kernel))?;
        Ok(())
    }

    pub fn crossentropy_forward(
        losses: &mut Tensor,
        logits: &mut Tensor,
        targets: &Tensor,
        vocab: usize,
        dloss: Option<f32>,
    ) -> Result<()> {
        expect_dtype(OP, "losses", losses, DType::F32)?;
        dispatch_float!(logits.dtype(), OP, "logits", forward(losses, logits, targets, vocab, dloss))
    }

    fn forward<T: CudaElement>(
        losses: &mut Tensor,
        logits: &mut Tensor,
        targets: &Tensor,
        vocab: usize,
        dloss: Option<f32>,
    ) -> Result<()> {
        let (n, vp) = rows_cols(logits);
        if n == 0 {
            return Ok(());
        }
        if vp > i32::MAX as usize || n > i32::MAX as usize {
            return Err(Error::Invalid { op: OP, msg: format!("logits ({n}, {vp}) exceed the kernel's int ranges") });
        }
        let dev = crate::ops::cuda_device(OP, logits)?;
        let kernel = format!("crossentropy_fwd_{}", T::NAME);
        let f = dev.function("crossentropy", &kernel)?;
        // One block per row. A full block for real vocabularies; small rows get a smaller one
        // (each thread still handles >= 1 pack of 16 bytes).
        let packs = vp.div_ceil(16 / std::mem::size_of::<T>());
        let block = packs.div_ceil(32).clamp(1, 32) as u32 * 32;
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        let (vp, v) = (vp as i32, vocab as i32);
        let write_grad = dloss.is_some() as i32;
        let dloss = dloss.unwrap_or(0.0);
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(losses.cuda_slice_mut::<f32>()?)
            .arg(logits.cuda_slice_mut::<T>()?)
            .arg(targets.cuda_slice::<u32>()?)
            .arg(&vp)
            .arg(&v)
            .arg(&dloss)
            .arg(&write_grad);
        // SAFETY: matches crossentropy.cu `crossentropy_fwd_<T>(float* losses, T* logits, const unsigned* targets,
        // int Vp, int V, float dloss, int write_grad)`; grid = N rows, block a multiple of 32 <= 1024, losses and
        // targets hold N, logits N*Vp, 1 <= V <= Vp (checked by the caller).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
