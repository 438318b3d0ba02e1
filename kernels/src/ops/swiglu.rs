//! SwiGLU (Llama's MLP activation) on a fused [gate | up] projection:
//!
//! forward:  inp (N, 2H) = [a | b];  out (N, H) = silu(a) * b,  silu(a) = a * sigmoid(a)
//! backward: da = dout * b * s * (1 + a (1 - s)),  s = sigmoid(a);  db = dout * silu(a)
//!           (dinp (N, 2H) overwritten: an activation gradient)
//!
//! The sigmoid is 1 / (1 + exp(-a)), exact for large |a| in both directions (exp overflows to
//! inf for a very negative a, giving s = 0 and silu = -0).

use super::same_device;
use crate::{Device, Error, Result, Tensor};

const OP_FWD: &str = "swiglu_forward";
const OP_BWD: &str = "swiglu_backward";

/// (N, H) from the last dimension of `inp`, which must be even (= 2H).
fn dims(op: &'static str, inp: &Tensor) -> Result<(usize, usize)> {
    let (n, w) = super::rows_cols(inp);
    if !w.is_multiple_of(2) {
        return Err(Error::Invalid { op, msg: format!("the last dimension of inp ({w}) must be 2H: [gate | up]") });
    }
    Ok((n, w / 2))
}

fn half_shape(inp: &Tensor, h: usize) -> Vec<usize> {
    let mut shape = inp.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = h;
    }
    shape
}

/// out (..., H) = silu(gate) * up, inp (..., 2H) = [gate | up].
pub fn swiglu_forward(out: &mut Tensor, inp: &Tensor) -> Result<()> {
    let (_, h) = dims(OP_FWD, inp)?;
    out.expect_shape(OP_FWD, "out", &half_shape(inp, h))?;
    match same_device(OP_FWD, &[out, inp])? {
        Device::Cuda(_) => cuda::swiglu_forward(out, inp),
        Device::Cpu => {
            cpu::swiglu_forward(out.f32_mut()?, inp.f32()?, h);
            Ok(())
        }
    }
}

/// dinp (..., 2H) (overwritten) from dout (..., H) and the forward's inp.
pub fn swiglu_backward(dinp: &mut Tensor, dout: &Tensor, inp: &Tensor) -> Result<()> {
    let (_, h) = dims(OP_BWD, inp)?;
    dinp.expect_shape(OP_BWD, "dinp", inp.shape())?;
    dout.expect_shape(OP_BWD, "dout", &half_shape(inp, h))?;
    match same_device(OP_BWD, &[dinp, dout, inp])? {
        Device::Cuda(_) => cuda::swiglu_backward(dinp, dout, inp),
        Device::Cpu => {
            cpu::swiglu_backward(dinp.f32_mut()?, dout.f32()?, inp.f32()?, h);
            Ok(())
        }
    }
}

pub mod cpu {
    //! The reference, rows in parallel.
    use rayon::prelude::*;

    fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    /// [`super::swiglu_forward`] on host slices (N*H, N*2H).
    pub fn swiglu_forward(out: &mut [f32], inp: &[f32], h: usize) {
        if h == 0 {
            return;
        }
        out.par_chunks_mut(h).zip(inp.par_chunks(2 * h)).for_each(|(o, x)| {
            let (a, b) = x.split_at(h);
            for i in 0..h {
                o[i] = a[i] * sigmoid(a[i]) * b[i];
            }
        });
    }

    /// [`super::swiglu_backward`] on host slices (N*2H, N*H, N*2H).
    pub fn swiglu_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32], h: usize) {
        if h == 0 {
            return;
        }
        dinp.par_chunks_mut(2 * h).zip(dout.par_chunks(h)).zip(inp.par_chunks(2 * h)).for_each(|((di, d), x)| {
            let (a, b) = x.split_at(h);
            let (da, db) = di.split_at_mut(h);
            for i in 0..h {
                let s = sigmoid(a[i]);
                da[i] = d[i] * b[i] * s * (1.0 + a[i] * (1.0 - s));
                db[i] = d[i] * a[i] * s;
            }
        });
    }
}

pub mod cuda {
    //! Launchers for kernels/cuda/swiglu.cu: a grid-stride loop over the N x H outputs.
    use crate::cuda::{CudaElement, PushKernelArg};
    use crate::ops::{cuda_device, expect_dtype, rows_cols};
    use crate::{Result, Tensor};

    const OP: &str = "swiglu (cuda)";
    const BLOCK: u32 = 256;

    /// [`super::swiglu_forward`] on CUDA tensors (f32 or bf16).
    pub fn swiglu_forward(out: &mut Tensor, inp: &Tensor) -> Result<()> {
        expect_dtype(OP, "out", out, inp.dtype())?;
        dispatch_float!(inp.dtype(), OP, "inp", forward(out, inp))
    }

    fn forward<T: CudaElement>(out: &mut Tensor, inp: &Tensor) -> Result<()> {
        let (n, w) = rows_cols(inp);
        let (n, h) = (n as u64, (w / 2) as u64);
        if n * h == 0 {
            return Ok(());
        }
        let dev = cuda_device(OP, inp)?;
        let kernel = format!("swiglu_fwd_{}", T::NAME);
        let f = dev.function("swiglu", &kernel)?;
        let cfg = dev.grid_stride((n * h) as usize, BLOCK)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<T>()?).arg(inp.cuda_slice::<T>()?).arg(&n).arg(&h);
        // SAFETY: matches swiglu.cu `swiglu_fwd_<T>(T* out, const T* inp, u64 N, u64 H)`; out holds N*H
        // elements, inp N*2H (checked by the caller).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    /// [`super::swiglu_backward`] on CUDA tensors (f32 or bf16).
    pub fn swiglu_backward(dinp: &mut Tensor, dout: &Tensor, inp: &Tensor) -> Result<()> {
        expect_dtype(OP, "dinp", dinp, inp.dtype())?;
        expect_dtype(OP, "dout", dout, inp.dtype())?;
        dispatch_float!(inp.dtype(), OP, "inp", backward(dinp, dout, inp))
    }

    fn backward<T: CudaElement>(dinp: &mut Tensor, dout: &Tensor, inp: &Tensor) -> Result<()> {
        let (n, w) = rows_cols(inp);
        let (n, h) = (n as u64, (w / 2) as u64);
        if n * h == 0 {
            return Ok(());
        }
        let dev = cuda_device(OP, inp)?;
        let kernel = format!("swiglu_bwd_{}", T::NAME);
        let f = dev.function("swiglu", &kernel)?;
        let cfg = dev.grid_stride((n * h) as usize, BLOCK)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(dinp.cuda_slice_mut::<T>()?).arg(dout.cuda_slice::<T>()?).arg(inp.cuda_slice::<T>()?).arg(&n).arg(&h);
        // SAFETY: matches `swiglu_bwd_<T>(T* dinp, const T* dout, const T* inp, u64 N, u64 H)`; dinp and
        // inp hold N*2H elements, dout N*H (checked by the caller).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
