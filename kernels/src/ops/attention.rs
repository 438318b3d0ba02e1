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
use crate::cuda;
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

/// The shape of the state `attention_forward` saves for the backward (`att`), which
/// depends on the device: the CPU keeps the probabilities (B, NH, T, T); CUDA keeps, per
/// row, the logsumexp and the fp32 output (B, NH, T, HS + 1), and never a T x T matrix.
/// Always f32. Treat it as opaque: [`attention_saved`] allocates it.
pub fn attention_saved_shape(device: Device, b: usize, t: usize, c: usize, n_head: usize) -> Vec<usize> {
    match device {
        Device::Cpu => vec![b, n_head, t, t],
        Device::Cuda(_) => vec![b, n_head, t, c / n_head.max(1) + 1],
    }
}

/// A zeroed saved-state tensor for `attention_forward(out, att, qkv, n_head)` on qkv's device.
pub fn attention_saved(qkv: &Tensor, n_head: usize) -> Result<Tensor> {
    let (b, t, c) = dims("attention_saved", qkv, n_head)?;
    Tensor::try_zeros(qkv.device(), crate::DType::F32, &attention_saved_shape(qkv.device(), b, t, c, n_head))
}

pub fn attention_forward(out: &mut Tensor, att: &mut Tensor, qkv: &Tensor, n_head: usize) -> Result<()> {
    let (b, t, c) = dims(OP_FWD, qkv, n_head)?;
    out.expect_shape(OP_FWD, "out", &[b, t, c])?;
    let device = same_device(OP_FWD, &[out, att, qkv])?;
    att.expect_shape(OP_FWD, "att", &attention_saved_shape(device, b, t, c, n_head))?;
    match device {
        Device::Cuda(ordinal) => gpu::attention_forward(&*cuda::device(ordinal)?, out, att, qkv, b, t, c, n_head)?,
        Device::Cpu => cpu::attention_forward(out.f32_mut()?, att.f32_mut()?, qkv.f32()?, b, t, c, n_head),
    }
    Ok(())
}

pub fn attention_backward(dqkv: &mut Tensor, dout: &Tensor, qkv: &Tensor, att: &Tensor, n_head: usize) -> Result<()> {
    let (b, t, c) = dims(OP_BWD, qkv, n_head)?;
    dqkv.expect_shape(OP_BWD, "dqkv", qkv.shape())?;
    dout.expect_shape(OP_BWD, "dout", &[b, t, c])?;
    let device = same_device(OP_BWD, &[dqkv, dout, qkv, att])?;
    att.expect_shape(OP_BWD, "att", &attention_saved_shape(device, b, t, c, n_head))?;
    match device {
        Device::Cuda(ordinal) => gpu::attention_backward(&*cuda::device(ordinal)?, dqkv, dout, qkv, att, b, t, c, n_head)?,
        Device::Cpu => cpu::attention_backward(dqkv.f32_mut()?, dout.f32()?, qkv.f32()?, att.f32()?, b, t, c, n_head),
    }
    Ok(())
}

pub mod cpu {
    use super::*;
    use crate::ops::cpu_math::{self, exp, multiversion};

    multiversion! {
        /// Softmax over row[..=i] (the positions query i may see); zero after it.
        fn causal_softmax_row(row: &mut [f32], i: usize) {
            let (seen, future) = row.split_at_mut(i + 1);
            let max = cpu_math::max(seen);
            seen.iter_mut().for_each(|x| *x = exp(*x - max));
            let inv = 1.0 / cpu_math::sum_by(seen.len(), |j| seen[j]);
            seen.iter_mut().for_each(|x| *x *= inv);
            future.fill(0.0);
        }
    }

    /// Rows per block of the causal blocking: row block [r0, r1) only sees keys [0, r1), so
    /// each GEMM covers the lower block triangle instead of the full T x T square (about
    /// 60% of the work at T = 128). Small enough to skip most of the upper triangle, large
    /// enough for the GEMM micro-kernels to run on full tiles.
    fn row_block(t: usize) -> usize {
        if t <= 256 { 32 } else { 64 }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, nh: usize) {
        debug_assert_eq!(att.len(), b * nh * t * t);
        let hs = c / nh;
        let scale = 1.0 / (hs as f32).sqrt();
        let rb = row_block(t);
        let out_ptr = SendPtr(out.as_mut_ptr());
        att.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
            let (bi, h) = (bh / nh, bh % nh);
            let q = qkv[bi * t * 3 * c + h * hs..].as_ptr();
            let k = q.wrapping_add(c);
            let v = q.wrapping_add(2 * c);
            let o = out_ptr.get().wrapping_add(bi * t * c + h * hs);
            for r0 in (0..t).step_by(rb) {
                let r1 = (r0 + rb).min(t);
                let pr = p[r0 * t..].as_mut_ptr();
                // SAFETY: q/k/v address (t x hs) blocks inside qkv with row stride 3c, of
                // which rows < r1 are read; pr is rows [r0, r1) of this task's own (t x t)
                // slice; o is this (b, h)'s column stripe of out, disjoint from every other
                // task's.
                unsafe {
                    // S[r0..r1, 0..r1] = scale * Q[r0..r1] K[0..r1]^T
                    sgemm(r1 - r0, r1, hs, Mat { ptr: pr, rs: t as isize, cs: 1 }, false, Mat::rows(q.wrapping_add(r0 * 3 * c), 3 * c), Mat::trans(k, 3 * c), scale, false);
                }
                for i in r0..r1 {
                    causal_softmax_row(&mut p[i * t..][..t], i);
                }
                // SAFETY: as above; P's columns >= r1 in these rows are zero and skipped.
                unsafe {
                    // O[r0..r1] = P[r0..r1, 0..r1] V[0..r1]
                    sgemm(r1 - r0, hs, r1, Mat { ptr: o.wrapping_add(r0 * c), rs: c as isize, cs: 1 }, false, Mat::rows(p[r0 * t..].as_ptr(), t), Mat::rows(v, 3 * c), 1.0, false);
                }
            }
        });
    }

    multiversion! {
        /// dS = P * (dP - rowsum(P * dP)) for row i (columns <= i), zero after it; in place.
        fn softmax_backward_row(ds: &mut [f32], p: &[f32], i: usize) {
            let dot = cpu_math::dot(&p[..=i], &ds[..=i]);
            let (seen, future) = ds.split_at_mut(i + 1);
            for (d, &pj) in seen.iter_mut().zip(p) {
                *d = pj * (*d - dot);
            }
            future.fill(0.0);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], att: &[f32], b: usize, t: usize, c: usize, nh: usize) {
        let hs = c / nh;
        let scale = 1.0 / (hs as f32).sqrt();
        let rb = row_block(t);
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
                let (ld3, ldo) = (3 * c, c);
                // Row blocks [r0, r1): dP and dS for the keys [0, r1) these rows see.
                for r0 in (0..t).step_by(rb) {
                    let r1 = (r0 + rb).min(t);
                    // SAFETY: every block is inside its buffer with the strides given (rows
                    // < t of (t x hs) blocks with stride 3c or c, rows [r0, r1) of ds).
                    unsafe {
                        // dP[r0..r1, 0..r1] = dO[r0..r1] V[0..r1]^T
                        sgemm(r1 - r0, r1, hs, Mat { ptr: ds[r0 * t..].as_mut_ptr(), rs: t as isize, cs: 1 }, false, Mat::rows(d_o.wrapping_add(r0 * ldo), ldo), Mat::trans(v, ld3), 1.0, false);
                    }
                    for i in r0..r1 {
                        softmax_backward_row(&mut ds[i * t..][..t], &p[i * t..][..t], i);
                    }
                    // SAFETY: as above; dq rows [r0, r1) belong to this (b, h) only.
                    unsafe {
                        // dQ[r0..r1] = scale * dS[r0..r1, 0..r1] K[0..r1]
                        sgemm(r1 - r0, hs, r1, Mat { ptr: dq.wrapping_add(r0 * ld3), rs: ld3 as isize, cs: 1 }, false, Mat::rows(ds[r0 * t..].as_ptr(), t), Mat::rows(k, ld3), scale, false);
                    }
                }
                // Key blocks [c0, c1): only queries i >= c0 attend to them.
                for c0 in (0..t).step_by(rb) {
                    let c1 = (c0 + rb).min(t);
                    // SAFETY: as above; dk/dv rows [c0, c1) belong to this (b, h) only.
                    unsafe {
                        // dV[c0..c1] = P[c0..t, c0..c1]^T dO[c0..t]
                        sgemm(c1 - c0, hs, t - c0, Mat { ptr: dv.wrapping_add(c0 * ld3), rs: ld3 as isize, cs: 1 }, false, Mat::trans(p[c0 * t + c0..].as_ptr(), t), Mat::rows(d_o.wrapping_add(c0 * ldo), ldo), 1.0, false);
                        // dK[c0..c1] = scale * dS[c0..t, c0..c1]^T Q[c0..t]
                        sgemm(c1 - c0, hs, t - c0, Mat { ptr: dk.wrapping_add(c0 * ld3), rs: ld3 as isize, cs: 1 }, false, Mat::trans(ds[c0 * t + c0..].as_ptr(), t), Mat::rows(q.wrapping_add(c0 * ld3), ld3), scale, false);
                    }
                }
            },
        );
    }
}

pub mod gpu {
    //! Launchers for kernels/cuda/attention.cu (flash style; its header has the algorithm).
    //!
    //! qkv, out, dout and dqkv share one dtype (f32 or bf16, which picks the kernel); the
    //! saved state is always f32: lse (B, NH, T) followed by the output o (B, NH, T, HS).
    //! Preconditions checked here: HS in {32, 64, 128}; the dynamic shared memory the tile
    //! size needs must be allowed by the device (the limit is raised per kernel).
    use half::bf16;

    use crate::cuda::{CudaDevice, CudaElement, CudaFunction, LaunchConfig, PushKernelArg};
    use crate::{DType, Error, Result, Tensor};

    const OP: &str = "attention (cuda)";
    const FLOAT: usize = std::mem::size_of::<f32>();

    /// Rows per tile for a head size (attention.cu: R = 64 for HS <= 64, 32 for HS = 128).
    fn tile_rows(hs: usize) -> Result<usize> {
        match hs {
            32 | 64 => Ok(64),
            128 => Ok(32),
            _ => Err(Error::Invalid { op: OP, msg: format!("head size {hs} is not supported on CUDA (32, 64 or 128)") }),
        }
    }

    fn int(what: &str, v: usize) -> Result<i32> {
        i32::try_from(v).map_err(|_| Error::Invalid { op: OP, msg: format!("{what} = {v} does not fit the kernel's int") })
    }

    /// Grid (ceil(T / R), NH, B * z_per_batch), block 4R, `floats` of dynamic shared memory
    /// (raising the kernel's limit above the 48 KB default).
    fn config(f: &CudaFunction, dev: &CudaDevice, b: usize, t: usize, nh: usize, hs: usize, z_per_batch: usize, floats: usize) -> Result<LaunchConfig> {
        let r = tile_rows(hs)?;
        let z = b * z_per_batch;
        if nh > 65535 || z > 65535 {
            return Err(Error::Invalid { op: OP, msg: format!("grid ({nh} heads, {z} batch blocks) exceeds 65535") });
        }
        let bytes = floats * FLOAT;
        use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32).map_err(|e| Error::Cuda {
            op: format!("allowing {bytes} bytes of shared memory for attention (HS = {hs}) on {}", dev.name()),
            msg: e.to_string(),
        })?;
        Ok(LaunchConfig { grid_dim: (t.div_ceil(r) as u32, nh as u32, z as u32), block_dim: (4 * r as u32, 1, 1), shared_mem_bytes: bytes as u32 })
    }

    fn check_saved(att: &Tensor) -> Result<()> {
        crate::ops::expect_dtype(OP, "att", att, DType::F32)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward(dev: &CudaDevice, out: &mut Tensor, att: &mut Tensor, qkv: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        check_saved(att)?;
        match qkv.dtype() {
            DType::F32 => forward_typed::<f32>(dev, out, att, qkv, b, t, c, nh),
            DType::Bf16 => forward_typed::<bf16>(dev, out, att, qkv, b, t, c, nh),
            got => Err(Error::DType { op: OP, arg: "qkv", expected: DType::Bf16, got }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_typed<T: CudaElement>(dev: &CudaDevice, out: &mut Tensor, att: &mut Tensor, qkv: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        crate::ops::expect_dtype(OP, "out", out, T::DTYPE)?;
        let hs = c / nh;
        let r = tile_rows(hs)?;
        if b == 0 || t == 0 {
            return Ok(());
        }
        let kernel = format!("attention_fwd_{}", T::NAME);
        let f = dev.function("attention", &kernel)?;
        let cfg = config(&f, dev, b, t, nh, hs, 1, 3 * r * (hs + 4))?;
        let (b_i, t_i, nh_i, hs_i) = (int("B", b)?, int("T", t)?, int("NH", nh)?, int("HS", hs)?);
        int("B*T*3C", b * t * 3 * c)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<T>()?).arg(att.cuda_slice_mut::<f32>()?).arg(qkv.cuda_slice::<T>()?);
        launch.arg(&b_i).arg(&t_i).arg(&nh_i).arg(&hs_i);
        // SAFETY: matches attention.cu `attention_fwd_<dtype>(T* out, float* saved, const T* qkv,
        // int B, int T, int NH, int HS)`; out is (B,T,C), saved B*NH*T*(HS+1) floats, qkv
        // (B,T,3C) (checked by attention_forward); grid/block/shared memory from `config` match
        // the R the kernel picks for this HS.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(dev: &CudaDevice, dqkv: &mut Tensor, dout: &Tensor, qkv: &Tensor, att: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        check_saved(att)?;
        match qkv.dtype() {
            DType::F32 => backward_typed::<f32>(dev, dqkv, dout, qkv, att, b, t, c, nh),
            DType::Bf16 => backward_typed::<bf16>(dev, dqkv, dout, qkv, att, b, t, c, nh),
            got => Err(Error::DType { op: OP, arg: "qkv", expected: DType::Bf16, got }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_typed<T: CudaElement>(dev: &CudaDevice, dqkv: &mut Tensor, dout: &Tensor, qkv: &Tensor, att: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        crate::ops::expect_dtype(OP, "dqkv", dqkv, T::DTYPE)?;
        crate::ops::expect_dtype(OP, "dout", dout, T::DTYPE)?;
        let hs = c / nh;
        let r = tile_rows(hs)?;
        if b == 0 || t == 0 {
            return Ok(());
        }
        let kernel = format!("attention_bwd_{}", T::NAME);
        let f = dev.function("attention", &kernel)?;
        // two blocks per (tile, head, batch): one computes dQ, the other dK and dV
        let cfg = config(&f, dev, b, t, nh, hs, 2, 4 * r * (hs + 4) + 2 * r)?;
        let (b_i, t_i, nh_i, hs_i) = (int("B", b)?, int("T", t)?, int("NH", nh)?, int("HS", hs)?);
        int("B*T*3C", b * t * 3 * c)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(dqkv.cuda_slice_mut::<T>()?).arg(dout.cuda_slice::<T>()?).arg(qkv.cuda_slice::<T>()?).arg(att.cuda_slice::<f32>()?);
        launch.arg(&b_i).arg(&t_i).arg(&nh_i).arg(&hs_i);
        // SAFETY: matches attention.cu `attention_bwd_<dtype>(T* dqkv, const T* dout, const T* qkv,
        // const float* saved, int B, int T, int NH, int HS)`; dqkv/qkv (B,T,3C), dout (B,T,C),
        // saved B*NH*T*(HS+1) floats written by attention_fwd (shapes checked by
        // attention_backward); every element of dqkv is written (rows < T, all 3C columns).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
