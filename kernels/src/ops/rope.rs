//! Rotary position embedding (RoPE), the Hugging Face Llama convention (`rotate_half`):
//! within each rotated head of HS columns, dimension i < HS/2 pairs with i + HS/2, and at
//! position t (the index along T) with angle a = t * theta^(-2i / HS):
//!
//! ```text
//! forward:  y[i] = x[i] cos a - x[i + HS/2] sin a;   y[i + HS/2] = x[i + HS/2] cos a + x[i] sin a
//! backward: the inverse rotation of dout (dinp overwritten)
//! ```
//!
//! inp (B, T, W): the first `heads` heads of HS columns each are rotated and the rest of the
//! row is copied, so a fused [q | k | v] row rotates q and k (heads = NH + KV) and passes v.
//! The inverse frequencies are computed once on the host in f64 and rounded to f32, so the
//! CPU and the GPU use the same angles.

use super::same_device;
use crate::{Device, Error, Result, Tensor};

const OP_FWD: &str = "rope_forward";
const OP_BWD: &str = "rope_backward";

/// What RoPE rotates: `heads` heads of `head_size` columns at the start of each row, with
/// base `theta` (Llama: 10000; Llama 3: 500000).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Heads rotated, from the start of each row (q and k heads of a fused [q | k | v] row).
    pub heads: usize,
    /// Columns per head (even).
    pub head_size: usize,
    /// The frequency base (above 1).
    pub theta: f32,
}

impl Rope {
    /// theta^(-2i / HS) for i < HS/2, in f64 then rounded to f32.
    pub fn inv_freq(&self) -> Vec<f32> {
        let hs = self.head_size as f64;
        (0..self.head_size / 2).map(|i| (self.theta as f64).powf(-2.0 * i as f64 / hs) as f32).collect()
    }

    /// (B, T, W) of `inp`, checked against this rotation.
    fn dims(&self, op: &'static str, inp: &Tensor) -> Result<(usize, usize, usize)> {
        let &[b, t, w] = inp.shape() else {
            return Err(Error::Invalid { op, msg: format!("inp must be (B, T, W), got {:?}", inp.shape()) });
        };
        if self.head_size == 0 || !self.head_size.is_multiple_of(2) {
            return Err(Error::Invalid { op, msg: format!("head_size must be even and > 0, got {}", self.head_size) });
        }
        if !(self.theta.is_finite() && self.theta > 1.0) {
            return Err(Error::Invalid { op, msg: format!("theta must be a finite number above 1, got {}", self.theta) });
        }
        if self.heads.checked_mul(self.head_size).is_none_or(|cols| cols > w) {
            return Err(Error::Invalid { op, msg: format!("{} heads of {} columns do not fit rows of {w}", self.heads, self.head_size) });
        }
        Ok((b, t, w))
    }
}

/// out (B, T, W) = inp with the rotation applied to its first `rope.heads` heads.
pub fn rope_forward(out: &mut Tensor, inp: &Tensor, rope: &Rope) -> Result<()> {
    let (_, t, w) = rope.dims(OP_FWD, inp)?;
    out.expect_shape(OP_FWD, "out", inp.shape())?;
    match same_device(OP_FWD, &[out, inp])? {
        Device::Cuda(_) => cuda::rope(out, inp, rope, 0, false),
        Device::Cpu => {
            cpu::rope(out.f32_mut()?, inp.f32()?, t, w, rope, 0, false);
            Ok(())
        }
    }
}

/// [`rope_forward`] for rows at positions `start .. start + T` (incremental decoding: the
/// new tokens after `start` cached ones). `start = 0` is [`rope_forward`]. On the CPU and on
/// CUDA; `start + T` must fit an i32 on CUDA.
pub fn rope_forward_at(out: &mut Tensor, inp: &Tensor, rope: &Rope, start: usize) -> Result<()> {
    if start == 0 {
        return rope_forward(out, inp, rope);
    }
    let (_, t, w) = rope.dims(OP_FWD, inp)?;
    out.expect_shape(OP_FWD, "out", inp.shape())?;
    match same_device(OP_FWD, &[out, inp])? {
        Device::Cuda(_) => cuda::rope(out, inp, rope, start, false),
        Device::Cpu => {
            cpu::rope(out.f32_mut()?, inp.f32()?, t, w, rope, start, false);
            Ok(())
        }
    }
}

/// dinp (B, T, W) (overwritten) from dout: the inverse rotation.
pub fn rope_backward(dinp: &mut Tensor, dout: &Tensor, rope: &Rope) -> Result<()> {
    let (_, t, w) = rope.dims(OP_BWD, dout)?;
    dinp.expect_shape(OP_BWD, "dinp", dout.shape())?;
    match same_device(OP_BWD, &[dinp, dout])? {
        Device::Cuda(_) => cuda::rope(dinp, dout, rope, 0, true),
        Device::Cpu => {
            cpu::rope(dinp.f32_mut()?, dout.f32()?, t, w, rope, 0, true);
            Ok(())
        }
    }
}

pub mod cpu {
    //! The reference: one element at a time, exactly the kernel's formula; rows in parallel.
    use rayon::prelude::*;

    use super::Rope;

    /// `inverse`: the backward (rotation by -a). Row r of each sequence is at position
    /// `start + r`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(out: &mut [f32], inp: &[f32], t_len: usize, w: usize, rope: &Rope, start: usize, inverse: bool) {
        if w == 0 {
            return;
        }
        let inv_freq = rope.inv_freq();
        let (hs, half, cols) = (rope.head_size, rope.head_size / 2, rope.heads * rope.head_size);
        out.par_chunks_mut(w).zip(inp.par_chunks(w)).enumerate().for_each(|(row, (o, x))| {
            let pos = (start + row % t_len) as f32;
            for col in 0..w {
                if col >= cols {
                    o[col] = x[col];
                    continue;
                }
                let d = col % hs;
                let (i, first) = if d < half { (d, true) } else { (d - half, false) };
                let a = pos * inv_freq[i];
                let (s, c) = a.sin_cos();
                let s = if inverse { -s } else { s };
                o[col] = if first { x[col] * c - x[col + half] * s } else { x[col] * c + x[col - half] * s };
            }
        });
    }
}

pub mod cuda {
    //! Launcher for kernels/cuda/rope.cu: a grid-stride loop over every element; the inverse
    //! frequencies go to the device per call (a pool buffer of HS/2 floats).
    use super::Rope;
    use crate::cuda::{CudaElement, PushKernelArg};
    use crate::ops::{cuda_device, expect_dtype, kernel_int};
    use crate::{Result, Tensor};

    const OP: &str = "rope (cuda)";

    /// The rotation (`inverse`: the backward) on CUDA tensors (f32 or bf16), rows at
    /// positions `start .. start + T`.
    pub fn rope(out: &mut Tensor, inp: &Tensor, rope: &Rope, start: usize, inverse: bool) -> Result<()> {
        expect_dtype(OP, "out", out, inp.dtype())?;
        dispatch_float!(inp.dtype(), OP, "inp", typed(out, inp, rope, start, inverse))
    }

    fn typed<T: CudaElement>(out: &mut Tensor, inp: &Tensor, rope: &Rope, start: usize, inverse: bool) -> Result<()> {
        let (t, w) = (inp.shape()[1], inp.shape()[2]);
        let total = inp.numel() as u64;
        if total == 0 {
            return Ok(());
        }
        let dev = cuda_device(OP, inp)?;
        let inv_freq = Tensor::from_vec(&[rope.head_size / 2], rope.inv_freq())?.to_device(dev.device())?;
        let (t_i, w_i) = (kernel_int(OP, "T", t)?, kernel_int(OP, "W", w)?);
        let start_i = kernel_int(OP, "start + T", start + t).map(|_| start as i32)?;
        let (cols, hs) = (kernel_int(OP, "rotated columns", rope.heads * rope.head_size)?, kernel_int(OP, "HS", rope.head_size)?);
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        let kernel = format!("rope_{}", T::NAME);
        let f = dev.function("rope", &kernel)?;
        let cfg = dev.grid_stride(total as usize, 256)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<T>()?).arg(inp.cuda_slice::<T>()?).arg(inv_freq.cuda_slice::<f32>()?);
        launch.arg(&total).arg(&t_i).arg(&w_i).arg(&cols).arg(&hs).arg(&sign).arg(&start_i);
        // SAFETY: matches rope.cu `rope_<T>(T* out, const T* inp, const float* inv_freq, u64 total, int T,
        // int W, int cols, int HS, float sign, int start)`; out/inp hold total = B*T*W elements, inv_freq HS/2
        // floats; cols <= W and HS even (checked by Rope::dims).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
