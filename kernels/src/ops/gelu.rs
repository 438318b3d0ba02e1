//! GeLU, tanh approximation (GPT-2's `gelu_new`):
//! forward:  out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//! backward: dinp = dout * d out / dx    (overwrites)

use super::same_device;
use crate::{Device, Result, Tensor};

pub fn gelu_forward(out: &mut Tensor, inp: &Tensor) -> Result<()> {
    out.expect_shape("gelu_forward", "out", inp.shape())?;
    match same_device("gelu_forward", &[out, inp])? {
        Device::Cpu => cpu::gelu_forward(out.f32_mut()?, inp.f32()?),
    }
    Ok(())
}

pub fn gelu_backward(dinp: &mut Tensor, inp: &Tensor, dout: &Tensor) -> Result<()> {
    dinp.expect_shape("gelu_backward", "dinp", inp.shape())?;
    dout.expect_shape("gelu_backward", "dout", inp.shape())?;
    match same_device("gelu_backward", &[dinp, inp, dout])? {
        Device::Cpu => cpu::gelu_backward(dinp.f32_mut()?, inp.f32()?, dout.f32()?),
    }
    Ok(())
}

pub mod cpu {
    use rayon::prelude::*;

    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF: f32 = 0.044715;
    const CHUNK: usize = 4096;

    pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
        out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
                *o = 0.5 * x * (1.0 + u.tanh());
            }
        });
    }

    pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        dinp.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK))).for_each(|(di, (x, d))| {
            for ((di, &x), &d) in di.iter_mut().zip(x).zip(d) {
                let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
                let th = u.tanh();
                let sech2 = 1.0 - th * th;
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x);
                *di = d * (0.5 * (1.0 + th) + 0.5 * x * sech2 * du);
            }
        });
    }
}
