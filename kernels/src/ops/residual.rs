//! Residual add and gradient accumulation.
//! forward:  out = a + b
//! backward: da = db = dout: the gradient flows unchanged into both branches, so backward is
//!           `accumulate` (dst += src) where two branches meet, and a plain copy elsewhere.

use super::same_device;
use crate::{Device, Error, Result, Tensor};

pub fn residual_forward(out: &mut Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
    out.expect_shape("residual_forward", "out", a.shape())?;
    b.expect_shape("residual_forward", "b", a.shape())?;
    match same_device("residual_forward", &[out, a, b])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: "residual_forward", device }),
        Device::Cpu => cpu::residual_forward(out.f32_mut()?, a.f32()?, b.f32()?),
    }
    Ok(())
}

/// dst += src (where the gradients of two branches meet).
pub fn accumulate(dst: &mut Tensor, src: &Tensor) -> Result<()> {
    src.expect_shape("accumulate", "src", dst.shape())?;
    match same_device("accumulate", &[dst, src])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: "accumulate", device }),
        Device::Cpu => cpu::accumulate(dst.f32_mut()?, src.f32()?),
    }
    Ok(())
}

/// t *= s.
pub fn scale(t: &mut Tensor, s: f32) -> Result<()> {
    match t.device() {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: "scale", device }),
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
