//! Global gradient norm and clipping.
//! global_norm = sqrt(sum over tensors of sum x^2), accumulated in f64 in a fixed order.
//! Clipping (as `torch.nn.utils.clip_grad_norm_`): every gradient is scaled by
//! min(1, max_norm / (norm + 1e-6)); see `clip_coefficient`.

use crate::{Device, Error, Result, Tensor};

/// On a GPU: fp32 accumulation in a fixed two-pass order (see kernels/cuda/norm.cu for the
/// error bound against this f64 CPU sum, <= ~1e-5 relative).
pub fn global_norm(tensors: &[&Tensor]) -> Result<f32> {
    if let Some(Device::Cuda(_)) = tensors.first().map(|t| t.device()) {
        return cuda::global_norm(tensors);
    }
    let mut total = 0.0f64;
    for t in tensors {
        total += match t.device() {
            device @ Device::Cuda(_) => return Err(Error::DeviceMismatch { op: "global_norm", a: Device::Cpu, b: device }),
            Device::Cpu => cpu::sum_squares(t.f32()?),
        };
    }
    Ok(total.sqrt() as f32)
}

/// The factor gradients are multiplied by when clipping to `max_norm`.
pub fn clip_coefficient(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// Clips gradients in place to a global norm of at most `max_norm` (every tensor scaled by
/// `clip_coefficient(norm, max_norm)`) and returns the norm before clipping. On a GPU the
/// coefficient is computed on the device, so the scaling is queued before the host waits.
pub fn clip_grad_norm(tensors: &mut [&mut Tensor], max_norm: f32) -> Result<f32> {
    if let Some(Device::Cuda(_)) = tensors.first().map(|t| t.device()) {
        return cuda::clip_grad_norm(tensors, max_norm);
    }
    let norm = {
        let shared: Vec<&Tensor> = tensors.iter().map(|t| &**t).collect();
        global_norm(&shared)?
    };
    let s = clip_coefficient(norm, max_norm);
    if s < 1.0 {
        for t in tensors.iter_mut() {
            crate::ops::residual::scale(t, s)?;
        }
    }
    Ok(norm)
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

pub mod cuda {
    //! Launchers for kernels/cuda/norm.cu: the global norm of f32/bf16 tensors in two
    //! deterministic passes, and clipping by a norm that stays on the device.
    use std::sync::Arc;

    use crate::cuda::{self as cu, bf16, CudaDevice, CudaElement, LaunchConfig, PushKernelArg};
    use crate::{DType, Device, Error, Result, Tensor};

    const BLOCK: u32 = 256;
    /// Blocks per tensor are min(MAX_BLOCKS, ceil(n / (BLOCK * MIN_PER_THREAD))): a function of
    /// the tensor's length only, so the summation order (and every bit of the norm) does not
    /// depend on the GPU. The cap bounds the per-thread fp32 chain (precision, see norm.cu).
    const MAX_BLOCKS: usize = 2048;
    const MIN_PER_THREAD: usize = 16;

    fn blocks_for(n: usize) -> usize {
        n.div_ceil(BLOCK as usize * MIN_PER_THREAD).clamp(1, MAX_BLOCKS)
    }

    fn device_of(op: &'static str, tensors: &[&Tensor]) -> Result<Arc<CudaDevice>> {
        let Some(first) = tensors.first() else {
            return Err(Error::Invalid { op, msg: "no tensors".into() });
        };
        let Device::Cuda(ordinal) = first.device() else {
            return Err(Error::Invalid { op, msg: format!("CUDA launcher called with a tensor on {}", first.device()) });
        };
        for t in tensors {
            if t.device() != first.device() {
                return Err(Error::DeviceMismatch { op, a: first.device(), b: t.device() });
            }
            if !matches!(t.dtype(), DType::F32 | DType::Bf16) {
                return Err(Error::DType { op, arg: "tensors", expected: DType::F32, got: t.dtype() });
            }
        }
        cu::device(ordinal)
    }

    /// The global norm, as a one-element f32 tensor on the device (nothing waits for it).
    /// The partial sums and the norm come from the pool.
    pub fn global_norm_device(tensors: &[&Tensor]) -> Result<(Arc<CudaDevice>, Tensor)> {
        let dev = device_of("global_norm", tensors)?;
        let total: usize = tensors.iter().map(|t| blocks_for(t.numel())).sum();
        if total > i32::MAX as usize {
            return Err(Error::Invalid { op: "global_norm", msg: format!("{} tensors is too many", tensors.len()) });
        }
        // every partial is written by its block
        let mut partials = Tensor::try_empty(dev.device(), DType::F32, &[total])?;
        let mut offset = 0;
        for t in tensors {
            let n = t.numel();
            let blocks = blocks_for(n);
            let mut slot = partials.cuda_slice_mut::<f32>()?.slice_mut(offset..offset + blocks);
            match t.dtype() {
                DType::F32 => squares::<f32>(&dev, &mut slot, t, blocks)?,
                _ => squares::<bf16>(&dev, &mut slot, t, blocks)?,
            }
            offset += blocks;
        }
        let mut norm = Tensor::try_empty(dev.device(), DType::F32, &[1])?;
        let f = dev.function("norm", "norm_finalize")?;
        let count = total as i32;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(norm.cuda_slice_mut::<f32>()?).arg(partials.cuda_slice::<f32>()?).arg(&count);
        // SAFETY: matches norm.cu `norm_finalize(float* norm, const float* partials, int count)`; norm holds 1
        // float, partials `count`; one block of 1024 threads.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error("norm_finalize"))?;
        Ok((dev, norm))
    }

    fn squares<T: CudaElement>(
        dev: &CudaDevice,
        slot: &mut cu::CudaViewMut<'_, f32>,
        t: &Tensor,
        blocks: usize,
    ) -> Result<()> {
        let kernel = format!("norm_squares_{}", T::NAME);
        let f = dev.function("norm", &kernel)?;
        let n = t.numel();
        let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(slot).arg(t.cuda_slice::<T>()?).arg(&n);
        // SAFETY: matches norm.cu `norm_squares_<T>(float* partials, const T* x, u64 n)`; the partials view holds
        // exactly `blocks` = gridDim.x floats, x holds n elements.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    /// Scales every tensor by min(1, max_norm / (norm + 1e-6)) with the norm computed and
    /// read on the device, and returns the norm there (a one-element f32 tensor): nothing
    /// waits for the device. `max_norm = 0` only measures.
    pub fn clip_grad_norm_device(tensors: &mut [&mut Tensor], max_norm: f32) -> Result<Tensor> {
        let (dev, norm) = {
            let shared: Vec<&Tensor> = tensors.iter().map(|t| &**t).collect();
            global_norm_device(&shared)?
        };
        if max_norm > 0.0 {
            for t in tensors.iter_mut() {
                match t.dtype() {
                    DType::F32 => clip::<f32>(&dev, t, &norm, max_norm)?,
                    _ => clip::<bf16>(&dev, t, &norm, max_norm)?,
                }
            }
        }
        Ok(norm)
    }

    pub fn global_norm(tensors: &[&Tensor]) -> Result<f32> {
        let (_, norm) = global_norm_device(tensors)?;
        Ok(norm.try_to_vec()?[0])
    }

    /// Scales every tensor by min(1, max_norm / (norm + 1e-6)) with the norm read on the
    /// device, then returns the norm (the only wait for the host, after the launches).
    pub fn clip_grad_norm(tensors: &mut [&mut Tensor], max_norm: f32) -> Result<f32> {
        device_of("clip_grad_norm", &tensors.iter().map(|t| &**t).collect::<Vec<_>>())?;
        let norm = clip_grad_norm_device(tensors, max_norm)?;
        Ok(norm.try_to_vec()?[0])
    }

    fn clip<T: CudaElement>(dev: &CudaDevice, t: &mut Tensor, norm: &Tensor, max_norm: f32) -> Result<()> {
        let kernel = format!("norm_clip_{}", T::NAME);
        let f = dev.function("norm", &kernel)?;
        let n = t.numel();
        let cfg = dev.grid_stride(n.div_ceil(16 / std::mem::size_of::<T>()), BLOCK)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(t.cuda_slice_mut::<T>()?).arg(&n).arg(norm.cuda_slice::<f32>()?).arg(&max_norm);
        // SAFETY: matches norm.cu `norm_clip_<T>(T* x, u64 n, const float* norm, float max_norm)`; x holds n
        // elements, norm 1 float.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
