//! GeLU, tanh approximation (GPT-2's `gelu_new`):
//! forward:  out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//! backward: dinp = dout * d out / dx    (overwrites)

use super::same_device;
use crate::{Device, Result, Tensor};

pub fn gelu_forward(out: &mut Tensor, inp: &Tensor) -> Result<()> {
    out.expect_shape("gelu_forward", "out", inp.shape())?;
    match same_device("gelu_forward", &[out, inp])? {
        Device::Cuda(_) => cuda::gelu_forward(out, inp)?,
        Device::Cpu => cpu::gelu_forward(out.f32_mut()?, inp.f32()?),
    }
    Ok(())
}

pub fn gelu_backward(dinp: &mut Tensor, inp: &Tensor, dout: &Tensor) -> Result<()> {
    dinp.expect_shape("gelu_backward", "dinp", inp.shape())?;
    dout.expect_shape("gelu_backward", "dout", inp.shape())?;
    match same_device("gelu_backward", &[dinp, inp, dout])? {
        Device::Cuda(_) => cuda::gelu_backward(dinp, inp, dout)?,
        Device::Cpu => cpu::gelu_backward(dinp.f32_mut()?, inp.f32()?, dout.f32()?),
    }
    Ok(())
}

pub mod cpu {
    //! gelu(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3):
    //! the sigmoid form is exact and vectorizes (see cpu_math).
    use rayon::prelude::*;

    use crate::ops::cpu_math::{multiversion, sigmoid};

    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF: f32 = 0.044715;
    const CHUNK: usize = 4096;

    multiversion! {
        fn forward_chunk(out: &mut [f32], inp: &[f32]) {
            for (o, &x) in out.iter_mut().zip(inp) {
                let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
                *o = x * sigmoid(2.0 * u);
            }
        }
    }

    multiversion! {
        fn backward_chunk(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
            for ((di, &x), &d) in dinp.iter_mut().zip(inp).zip(dout) {
                let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
                let s = sigmoid(2.0 * u); // = 0.5 (1 + tanh u)
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x);
                // d/dx [x s(2u)] = s + x * 2 s (1 - s) du   (2 s (1 - s) = 0.5 sech^2 u)
                *di = d * (s + 2.0 * x * s * (1.0 - s) * du);
            }
        }
    }

    pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
        out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| forward_chunk(o, x));
    }

    pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        dinp.par_chunks_mut(CHUNK)
            .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
            .for_each(|(di, (x, d))| backward_chunk(di, x, d));
    }
}

pub mod cuda {
    //! Launchers for kernels/cuda/gelu.cu (f32 and bf16; fp32 math either way).
    use crate::cuda::{self as cu, CudaElement, PushKernelArg};
    use crate::ops::expect_dtype;
    use crate::{Result, Tensor};

    const BLOCK: u32 = 256;

    pub fn gelu_forward(out: &mut Tensor, inp: &Tensor) -> Result<()> {
        expect_dtype("gelu_forward", "out", out, inp.dtype())?;
        dispatch_float!(inp.dtype(), "gelu_forward", "inp", forward(out, inp))
    }

    pub fn gelu_backward(dinp: &mut Tensor, inp: &Tensor, dout: &Tensor) -> Result<()> {
        expect_dtype("gelu_backward", "dinp", dinp, inp.dtype())?;
        expect_dtype("gelu_backward", "dout", dout, inp.dtype())?;
        dispatch_float!(inp.dtype(), "gelu_backward", "inp", backward(dinp, inp, dout))
    }

    fn device_of(t: &Tensor) -> Result<std::sync::Arc<cu::CudaDevice>> {
        crate::ops::cuda_device("gelu", t)
    }

    fn forward<T: CudaElement>(out: &mut Tensor, inp: &Tensor) -> Result<()> {
        let dev = device_of(inp)?;
        let kernel = format!("gelu_fwd_{}", T::NAME);
        let f = dev.function("gelu", &kernel)?;
        let n = inp.numel();
        // one thread per 16-byte pack
        let cfg = dev.grid_stride(n.div_ceil(16 / std::mem::size_of::<T>()), BLOCK)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<T>()?).arg(inp.cuda_slice::<T>()?).arg(&n);
        // SAFETY: matches gelu.cu `gelu_fwd_<T>(T* out, const T* inp, u64 n)`; both hold n elements (shapes checked by the caller).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    fn backward<T: CudaElement>(dinp: &mut Tensor, inp: &Tensor, dout: &Tensor) -> Result<()> {
        let dev = device_of(inp)?;
        let kernel = format!("gelu_bwd_{}", T::NAME);
        let f = dev.function("gelu", &kernel)?;
        let n = inp.numel();
        let cfg = dev.grid_stride(n.div_ceil(16 / std::mem::size_of::<T>()), BLOCK)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(dinp.cuda_slice_mut::<T>()?).arg(inp.cuda_slice::<T>()?).arg(dout.cuda_slice::<T>()?).arg(&n);
        // SAFETY: matches gelu.cu `gelu_bwd_<T>(T* dinp, const T* inp, const T* dout, u64 n)`; all hold n elements.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
