//! Causal multi-head self-attention (the part between the qkv and output projections).
//!
//! inp qkv (B,T,3C) holds [q | k | v], each C = NH * HS wide, head h in columns h*HS..(h+1)*HS.
//! forward:  per (b, h): S = Q K^T / sqrt(HS), masked to j <= i, P = softmax_rows(S), O = P V
//!           out (B,T,C) gets O in the head's columns; att (B,NH,T,T) saves P for backward.
//! backward: dP = dO V^T, dV = P^T dO, dS = P * (dP - rowsum(P * dP)), dQ = dS K / sqrt(HS),
//!           dK = dS^T Q / sqrt(HS); dqkv (B,T,3C) overwritten.
//!
//! The CPU path keeps the T x T probabilities (this is the reference; the CUDA kernel is
//! flash-style and keeps none). Work is split over the B*NH (batch, head) pairs, each a
//! handful of small GEMMs reading Q, K, V in place through strides.

use rayon::prelude::*;

use super::cpu_util::{sgemm, Mat, SendPtr};
use super::same_device;
use crate::{Device, Error, Result, Tensor};

const OP_FWD: &str = "attention_forward";
const OP_BWD: &str = "attention_backward";

fn dims(op: &'static str, qkv: &Tensor, n_head: usize) -> Result<(usize, usize, usize)> {
    let &[b, t, c3] = qkv.shape() else {
        return Err(Error::Invalid { op, msg: format!("qkv must be (B,T,3C), got {:?}", qkv.shape()) });
    };
    if n_head == 0 || c3 % 3 != 0 || (c3 / 3) % n_head != 0 {
        return Err(Error::Invalid { op, msg: format!("qkv width {c3} is not 3 * n_head ({n_head}) * head size") });
    }
    Ok((b, t, c3 / 3))
}

pub fn attention_forward(out: &mut Tensor, att: &mut Tensor, qkv: &Tensor, n_head: usize) -> Result<()> {
    let (b, t, c) = dims(OP_FWD, qkv, n_head)?;
    out.expect_shape(OP_FWD, "out", &[b, t, c])?;
    att.expect_shape(OP_FWD, "att", &[b, n_head, t, t])?;
    match same_device(OP_FWD, &[out, att, qkv])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: OP_FWD, device }),
        Device::Cpu => cpu::attention_forward(out.f32_mut()?, att.f32_mut()?, qkv.f32()?, b, t, c, n_head),
    }
    Ok(())
}

pub fn attention_backward(dqkv: &mut Tensor, dout: &Tensor, qkv: &Tensor, att: &Tensor, n_head: usize) -> Result<()> {
    let (b, t, c) = dims(OP_BWD, qkv, n_head)?;
    dqkv.expect_shape(OP_BWD, "dqkv", qkv.shape())?;
    dout.expect_shape(OP_BWD, "dout", &[b, t, c])?;
    att.expect_shape(OP_BWD, "att", &[b, n_head, t, t])?;
    match same_device(OP_BWD, &[dqkv, dout, qkv, att])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: OP_BWD, device }),
        Device::Cpu => cpu::attention_backward(dqkv.f32_mut()?, dout.f32()?, qkv.f32()?, att.f32()?, b, t, c, n_head),
    }
    Ok(())
}

pub mod cpu {
    use super::*;
    use crate::ops::cpu_math::{exp, multiversion};

    multiversion! {
        /// Softmax over row[..=i] (the positions query i may see); zero after it.
        fn causal_softmax_row(row: &mut [f32], i: usize) {
            let (seen, future) = row.split_at_mut(i + 1);
            let max = seen.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0.0f32;
            for x in seen.iter_mut() {
                *x = exp(*x - max);
                sum += *x;
            }
            let inv = 1.0 / sum;
            seen.iter_mut().for_each(|x| *x *= inv);
            future.fill(0.0);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, nh: usize) {
        debug_assert_eq!(att.len(), b * nh * t * t);
        let hs = c / nh;
        let scale = 1.0 / (hs as f32).sqrt();
        let out_ptr = SendPtr(out.as_mut_ptr());
        att.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
            let (bi, h) = (bh / nh, bh % nh);
            let q = qkv[bi * t * 3 * c + h * hs..].as_ptr();
            let k = q.wrapping_add(c);
            let v = q.wrapping_add(2 * c);
            let o = out_ptr.get().wrapping_add(bi * t * c + h * hs);
            // SAFETY: q/k/v address (t x hs) blocks inside qkv with row stride 3c; p is this
            // task's own (t x t) slice; o is this (b, h)'s column stripe of out, disjoint
            // from every other task's.
            unsafe {
                sgemm(t, t, hs, Mat { ptr: p.as_mut_ptr(), rs: t as isize, cs: 1 }, false, Mat::rows(q, 3 * c), Mat::trans(k, 3 * c), scale, false);
            }
            for (i, row) in p.chunks_mut(t).enumerate() {
                causal_softmax_row(row, i);
            }
            // SAFETY: as above.
            unsafe {
                sgemm(t, hs, t, Mat { ptr: o, rs: c as isize, cs: 1 }, false, Mat::rows(p.as_ptr(), t), Mat::rows(v, 3 * c), 1.0, false);
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], att: &[f32], b: usize, t: usize, c: usize, nh: usize) {
        let hs = c / nh;
        let scale = 1.0 / (hs as f32).sqrt();
        let dqkv_ptr = SendPtr(dqkv.as_mut_ptr());
        (0..b * nh).into_par_iter().for_each_init(
            || vec![0.0f32; t * t],
            |ds, bh| {
                let (bi, h) = (bh / nh, bh % nh);
                let base = bi * t * 3 * c + h * hs;
                let q = qkv[base..].as_ptr();
                let k = q.wrapping_add(c);
                let v = q.wrapping_add(2 * c);
                let dq = dqkv_ptr.get().wrapping_add(base);
                let dk = dq.wrapping_add(c);
                let dv = dq.wrapping_add(2 * c);
                let d_o = dout[bi * t * c + h * hs..].as_ptr();
                let p = &att[bh * t * t..][..t * t];
                // SAFETY: every block is (t x hs) or (t x t) inside its buffer with the strides
                // given; dq/dk/dv are this (b, h)'s column stripes of dqkv, disjoint across tasks.
                unsafe {
                    // dP (t x t) = dO (t x hs) @ V^T
                    sgemm(t, t, hs, Mat { ptr: ds.as_mut_ptr(), rs: t as isize, cs: 1 }, false, Mat::rows(d_o, c), Mat::trans(v, 3 * c), 1.0, false);
                    // dV (t x hs) = P^T @ dO
                    sgemm(t, hs, t, Mat { ptr: dv, rs: 3 * c as isize, cs: 1 }, false, Mat::trans(p.as_ptr(), t), Mat::rows(d_o, c), 1.0, false);
                }
                for i in 0..t {
                    let pr = &p[i * t..][..=i];
                    let dr = &mut ds[i * t..][..t];
                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(p, d)| p * d).sum();
                    for j in 0..=i {
                        dr[j] = pr[j] * (dr[j] - dot);
                    }
                    dr[i + 1..].fill(0.0);
                }
                // SAFETY: as above.
                unsafe {
                    // dQ = dS K * scale; dK = dS^T Q * scale
                    sgemm(t, hs, t, Mat { ptr: dq, rs: 3 * c as isize, cs: 1 }, false, Mat::rows(ds.as_ptr(), t), Mat::rows(k, 3 * c), scale, false);
                    sgemm(t, hs, t, Mat { ptr: dk, rs: 3 * c as isize, cs: 1 }, false, Mat::trans(ds.as_ptr(), t), Mat::rows(q, 3 * c), scale, false);
                }
            },
        );
    }
}
