//! Residual add and gradient accumulation.
//! forward:  out = a + b
//! backward: da = db = dout: the gradient flows unchanged into both branches, so backward is
//!           `accumulate` (dst += src) where two branches meet, and a plain copy elsewhere.

use super::same_device;
use crate::{Device, Result, Tensor};

pub fn residual_forward(out: &mut Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
    out.expect_shape("residual_forward", "out", a.shape())?;
    b.expect_shape("residual_forward", "b", a.shape())?;
    match same_device("residual_forward", &[out, a, b])? {
        Device::Cuda(_) => cuda::residual_forward(out, a, b)?,
        Device::Cpu => cpu::residual_forward(out.f32_mut()?, a.f32()?, b.f32()?),
    }
    Ok(())
}

/// dst += src (where the gradients of two branches meet).
pub fn accumulate(dst: &mut Tensor, src: &Tensor) -> Result<()> {
    src.expect_shape("accumulate", "src", dst.shape())?;
    match same_device("accumulate", &[dst, src])? {
        Device::Cuda(_) => cuda::accumulate(dst, src)?,
        Device::Cpu => cpu::accumulate(dst.f32_mut()?, src.f32()?),
    }
    Ok(())
}

/// t *= s.
pub fn scale(t: &mut Tensor, s: f32) -> Result<()> {
    match t.device() {
        Device::Cuda(_) => cuda::scale(t, s)?,
        Device::Cpu => cpu::scale(t.f32_mut()?, s),
    }
    Ok(())
}

pub mod cpu {
    use rayon::prelude::*;

    const CHUNK: usize = 8192;

    pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
        out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
    }

    pub fn accumulate(dst: &mut [f32], src: &[f32]) {
        dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                *d += s;
            }
        });
    }

    pub fn scale(t: &mut [f32], s: f32) {
        t.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= s));
    }
}

pub mod cuda {
    //! Launchers for kernels/cuda/residual.cu (f32 and bf16; fp32 math, one rounding per store).
    use crate::cuda::{self as cu, CudaElement, PushKernelArg};
    use crate::ops::expect_dtype;
    use crate::{Result, Tensor};

    const BLOCK: u32 = 256;

    pub fn residual_forward(out: &mut Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
        expect_dtype("residual_forward", "out", out, a.dtype())?;
        expect_dtype("residual_forward", "b", b, a.dtype())?;
        dispatch_float!(a.dtype(), "residual_forward", "a", forward(out, a, b))
    }

    pub fn accumulate(dst: &mut Tensor, src: &Tensor) -> Result<()> {
        expect_dtype("accumulate", "src", src, dst.dtype())?;
        dispatch_float!(dst.dtype(), "accumulate", "dst", accumulate_typed(dst, src))
    }

    pub fn scale(t: &mut Tensor, s: f32) -> Result<()> {
        dispatch_float!(t.dtype(), "scale", "t", scale_typed(t, s))
    }

    fn device_of(t: &Tensor) -> Result<std::sync::Arc<cu::CudaDevice>> {
        crate::ops::cuda_device("residual", t)
    }

    /// One thread per 16-byte pack.
    fn config<T: CudaElement>(dev: &cu::CudaDevice, n: usize) -> Result<cu::LaunchConfig> {
        dev.grid_stride(n.div_ceil(16 / std::mem::size_of::<T>()), BLOCK)
    }

    fn forward<T: CudaElement>(out: &mut Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
        let dev = device_of(a)?;
        let kernel = format!("residual_fwd_{}", T::NAME);
        let f = dev.function("residual", &kernel)?;
        let n = a.numel();
        let cfg = config::<T>(&dev, n)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<T>()?).arg(a.cuda_slice::<T>()?).arg(b.cuda_slice::<T>()?).arg(&n);
        // SAFETY: matches residual.cu `residual_fwd_<T>(T* out, const T* a, const T* b, u64 n)`; all hold n elements.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    fn accumulate_typed<T: CudaElement>(dst: &mut Tensor, src: &Tensor) -> Result<()> {
        let dev = device_of(src)?;
        let kernel = format!("residual_accumulate_{}", T::NAME);
        let f = dev.function("residual", &kernel)?;
        let n = src.numel();
        let cfg = config::<T>(&dev, n)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(dst.cuda_slice_mut::<T>()?).arg(src.cuda_slice::<T>()?).arg(&n);
        // SAFETY: matches residual.cu `residual_accumulate_<T>(T* dst, const T* src, u64 n)`; both hold n elements,
        // and dst is uniquely owned (cuda_slice_mut copies shared storage), so it cannot overlap src.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    fn scale_typed<T: CudaElement>(t: &mut Tensor, s: f32) -> Result<()> {
        let dev = device_of(t)?;
        let kernel = format!("residual_scale_{}", T::NAME);
        let f = dev.function("residual", &kernel)?;
        let n = t.numel();
        let cfg = config::<T>(&dev, n)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(t.cuda_slice_mut::<T>()?).arg(&s).arg(&n);
        // SAFETY: matches residual.cu `residual_scale_<T>(T* x, float s, u64 n)`; x holds n elements.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
