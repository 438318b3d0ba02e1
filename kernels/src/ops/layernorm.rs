//! LayerNorm over the last dimension C, eps = 1e-5 (GPT-2).
//!
//! forward:  mean, rstd per row; out = (x - mean) * rstd * weight + bias     out (N,C)
//! backward: dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * weight
//!           dweight += sum_rows dout * norm; dbias += sum_rows dout
//! (dinp overwrites; parameter gradients accumulate). mean and rstd (N) are saved for backward.

use super::{rows_cols, same_device};
use crate::{Device, Error, Result, Tensor};

pub const EPS: f32 = 1e-5;
const OP_FWD: &str = "layernorm_forward";
const OP_BWD: &str = "layernorm_backward";

/// inp (...,C), weight (C), bias (C) -> out (...,C), mean (N), rstd (N).
pub fn layernorm_forward(
    out: &mut Tensor,
    mean: &mut Tensor,
    rstd: &mut Tensor,
    inp: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<()> {
    let (n, c) = rows_cols(inp);
    out.expect_shape(OP_FWD, "out", inp.shape())?;
    mean.expect_shape(OP_FWD, "mean", &[n])?;
    rstd.expect_shape(OP_FWD, "rstd", &[n])?;
    weight.expect_shape(OP_FWD, "weight", &[c])?;
    bias.expect_shape(OP_FWD, "bias", &[c])?;
    match same_device(OP_FWD, &[out, mean, rstd, inp, weight, bias])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: OP_FWD, device }),
        Device::Cpu => {
            cpu::layernorm_forward(out.f32_mut()?, mean.f32_mut()?, rstd.f32_mut()?, inp.f32()?, weight.f32()?, bias.f32()?);
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut Tensor,
    dweight: &mut Tensor,
    dbias: &mut Tensor,
    dout: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<()> {
    let (n, c) = rows_cols(inp);
    dinp.expect_shape(OP_BWD, "dinp", inp.shape())?;
    dout.expect_shape(OP_BWD, "dout", inp.shape())?;
    dweight.expect_shape(OP_BWD, "dweight", &[c])?;
    dbias.expect_shape(OP_BWD, "dbias", &[c])?;
    weight.expect_shape(OP_BWD, "weight", &[c])?;
    mean.expect_shape(OP_BWD, "mean", &[n])?;
    rstd.expect_shape(OP_BWD, "rstd", &[n])?;
    match same_device(OP_BWD, &[dinp, dweight, dbias, dout, inp, weight, mean, rstd])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: OP_BWD, device }),
        Device::Cpu => {
            cpu::layernorm_backward(
                dinp.f32_mut()?,
                dweight.f32_mut()?,
                dbias.f32_mut()?,
                dout.f32()?,
                inp.f32()?,
                weight.f32()?,
                mean.f32()?,
                rstd.f32()?,
            );
            Ok(())
        }
    }
}

pub mod cpu {
    use rayon::prelude::*;

    use super::EPS;
    use crate::ops::cpu_util::reduce_rows_into;

    pub fn layernorm_forward(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], weight: &[f32], bias: &[f32]) {
        let c = weight.len();
        out.par_chunks_mut(c)
            .zip(inp.par_chunks(c))
            .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
            .for_each(|((o, x), (m, r))| {
                let mu = x.iter().sum::<f32>() / c as f32;
                let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
                let rs = 1.0 / (var + EPS).sqrt();
                for i in 0..c {
                    o[i] = (x[i] - mu) * rs * weight[i] + bias[i];
                }
                *m = mu;
                *r = rs;
            });
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        dinp: &mut [f32],
        dweight: &mut [f32],
        dbias: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        weight: &[f32],
        mean: &[f32],
        rstd: &[f32],
    ) {
        let c = weight.len();
        dinp.par_chunks_mut(c).enumerate().for_each(|(row, di)| {
            let x = &inp[row * c..][..c];
            let d = &dout[row * c..][..c];
            let (mu, rs) = (mean[row], rstd[row]);
            let mut dnorm_mean = 0.0f32;
            let mut dnorm_norm_mean = 0.0f32;
            for i in 0..c {
                let norm = (x[i] - mu) * rs;
                let dnorm = d[i] * weight[i];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * norm;
            }
            dnorm_mean /= c as f32;
            dnorm_norm_mean /= c as f32;
            for i in 0..c {
                let norm = (x[i] - mu) * rs;
                let dnorm = d[i] * weight[i];
                di[i] = rs * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
            }
        });
        // dweight and dbias reduced together in one deterministic pass: [dweight | dbias].
        let rows = mean.len();
        let mut acc = vec![0.0f32; 2 * c];
        reduce_rows_into(&mut acc, rows, |row, partial| {
            let x = &inp[row * c..][..c];
            let d = &dout[row * c..][..c];
            let (mu, rs) = (mean[row], rstd[row]);
            let (pw, pb) = partial.split_at_mut(c);
            for i in 0..c {
                pw[i] += d[i] * (x[i] - mu) * rs;
                pb[i] += d[i];
            }
        });
        for i in 0..c {
            dweight[i] += acc[i];
            dbias[i] += acc[c + i];
        }
    }
}
