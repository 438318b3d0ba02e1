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
/// depends on the device: the CPU keeps the probabilities (B, NH, T, T); CUDA keeps only the
/// logsumexp of each row (B, NH, T), and never a T x T matrix (the backward recomputes the
/// probabilities from it and takes the forward's output `out` for D = rowsum(dO * O)).
/// Always f32. Treat it as opaque: [`attention_saved`] allocates it.
pub fn attention_saved_shape(device: Device, b: usize, t: usize, _c: usize, n_head: usize) -> Vec<usize> {
    match device {
        Device::Cpu => vec![b, n_head, t, t],
        Device::Cuda(_) => vec![b, n_head, t],
    }
}

/// A zeroed saved-state tensor for `attention_forward(out, att, qkv, n_head)` on qkv's device.
pub fn attention_saved(qkv: &Tensor, n_head: usize) -> Result<Tensor> {
    let (b, t, c) = dims("attention_saved", qkv, n_head)?;
    Tensor::try_zeros(qkv.device(), crate::DType::F32, &attention_saved_shape(qkv.device(), b, t, c, n_head))
}

/// Causal attention forward: `out` (B,T,C) from `qkv` (B,T,3C), and the state the backward
/// needs into `att` (shaped by [`attention_saved_shape`]). f32 on the CPU; f32 or bf16 on CUDA
/// (bf16 runs on tensor cores), head size 32, 64 or 128 on CUDA.
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

/// Causal attention backward: `dqkv` (B,T,3C, overwritten) from `dout` (B,T,C), given the
/// forward's input `qkv`, its output `out` and its saved state `att`.
pub fn attention_backward(dqkv: &mut Tensor, dout: &Tensor, qkv: &Tensor, out: &Tensor, att: &Tensor, n_head: usize) -> Result<()> {
    let (b, t, c) = dims(OP_BWD, qkv, n_head)?;
    dqkv.expect_shape(OP_BWD, "dqkv", qkv.shape())?;
    dout.expect_shape(OP_BWD, "dout", &[b, t, c])?;
    out.expect_shape(OP_BWD, "out", &[b, t, c])?;
    let device = same_device(OP_BWD, &[dqkv, dout, qkv, out, att])?;
    att.expect_shape(OP_BWD, "att", &attention_saved_shape(device, b, t, c, n_head))?;
    match device {
        Device::Cuda(ordinal) => gpu::attention_backward(&*cuda::device(ordinal)?, dqkv, dout, qkv, out, att, b, t, c, n_head)?,
        Device::Cpu => cpu::attention_backward(dqkv.f32_mut()?, dout.f32()?, qkv.f32()?, att.f32()?, b, t, c, n_head),
    }
    Ok(())
}

const OP_CACHED: &str = "attention_cached_forward";

/// Causal attention of new queries against a key/value cache (incremental decoding).
///
/// `qkv` (B, n, (NH + 2 KV) HS) holds the fused [q | k | v] rows of the n new positions
/// `start .. start + n`: NH query heads, KV key/value heads (KV divides NH; query head h reads
/// key/value head h / (NH / KV): grouped-query attention; KV = NH is GPT-2's multi-head
/// attention). Their k and v rows are first written into `k_cache` and `v_cache`
/// (B, Tmax, KV HS) at rows `start .. start + n`; then `out` (B, n, NH HS) gets, for new
/// position i, the softmax over the keys 0 ..= start + i of q k^T / sqrt(HS) applied to the
/// values: the rows [`attention_forward`] computes for those positions over the whole
/// sequence, up to float rounding. Rows of the cache past `start + n` are neither read nor
/// written. f32 on the CPU; f32 or bf16 on CUDA (every tensor of one dtype; scores and
/// softmax in f32; any head size; the `start + n` scores of a row must fit the kernel's
/// shared memory, about 12,000 positions).
#[allow(clippy::too_many_arguments)]
pub fn attention_cached_forward(
    out: &mut Tensor,
    qkv: &Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    start: usize,
    n_head: usize,
    n_kv_head: usize,
) -> Result<()> {
    let op = OP_CACHED;
    let &[b, n, w] = qkv.shape() else {
        return Err(Error::Invalid { op, msg: format!("qkv must be (B,n,(NH+2KV)HS), got {:?}", qkv.shape()) });
    };
    if n_head == 0 || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) || !w.is_multiple_of(n_head + 2 * n_kv_head) {
        return Err(Error::Invalid {
            op,
            msg: format!("qkv width {w} is not (n_head + 2 n_kv_head) * HS with n_head ({n_head}) a multiple of n_kv_head ({n_kv_head})"),
        });
    }
    let hs = w / (n_head + 2 * n_kv_head);
    let &[kb, t_max, kw] = k_cache.shape() else {
        return Err(Error::Invalid { op, msg: format!("k_cache must be (B,Tmax,KV*HS), got {:?}", k_cache.shape()) });
    };
    if kb != b || kw != n_kv_head * hs {
        return Err(Error::Shape { op, arg: "k_cache", expected: vec![b, t_max, n_kv_head * hs], got: k_cache.shape().to_vec() });
    }
    v_cache.expect_shape(op, "v_cache", &[b, t_max, n_kv_head * hs])?;
    out.expect_shape(op, "out", &[b, n, n_head * hs])?;
    if start + n > t_max {
        return Err(Error::Invalid { op, msg: format!("positions {start}..{} do not fit a cache of {t_max}", start + n) });
    }
    match same_device(op, &[out, qkv, k_cache, v_cache])? {
        Device::Cuda(ordinal) => {
            let dims = cpu::CachedDims { b, n, t_max, start, nh: n_head, kv: n_kv_head, hs };
            gpu::attention_cached_forward(&*cuda::device(ordinal)?, out, qkv, k_cache, v_cache, &dims)
        }
        Device::Cpu => {
            let dims = cpu::CachedDims { b, n, t_max, start, nh: n_head, kv: n_kv_head, hs };
            cpu::attention_cached_forward(out.f32_mut()?, qkv.f32()?, k_cache.f32_mut()?, v_cache.f32_mut()?, &dims);
            Ok(())
        }
    }
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

    /// The sizes of [`super::attention_cached_forward`]: batch B, n new positions from
    /// `start`, a cache of `t_max` rows, NH query and KV key/value heads of HS columns.
    pub struct CachedDims {
        pub b: usize,
        pub n: usize,
        pub t_max: usize,
        pub start: usize,
        pub nh: usize,
        pub kv: usize,
        pub hs: usize,
    }

    /// [`super::attention_cached_forward`] on host slices: out (B,n,NH HS), qkv
    /// (B,n,(NH+2KV)HS), the caches (B,Tmax,KV HS). The same steps as the full forward's
    /// row blocks (scaled Q K^T by GEMM, the causal softmax, P V by GEMM), over the keys
    /// 0 .. start + n; parallel over the (batch, head) pairs.
    pub fn attention_cached_forward(out: &mut [f32], qkv: &[f32], k_cache: &mut [f32], v_cache: &mut [f32], d: &CachedDims) {
        let CachedDims { b, n, t_max, start, nh, kv, hs } = *d;
        let (w, kvw, c) = ((nh + 2 * kv) * hs, kv * hs, nh * hs);
        for bi in 0..b {
            for i in 0..n {
                let row = &qkv[(bi * n + i) * w..][..w];
                let at = (bi * t_max + start + i) * kvw;
                k_cache[at..at + kvw].copy_from_slice(&row[c..c + kvw]);
                v_cache[at..at + kvw].copy_from_slice(&row[c + kvw..c + 2 * kvw]);
            }
        }
        let len = start + n;
        let scale = 1.0 / (hs as f32).sqrt();
        let group = nh / kv;
        let out_ptr = SendPtr(out.as_mut_ptr());
        let (k_cache, v_cache) = (&*k_cache, &*v_cache);
        (0..b * nh).into_par_iter().for_each_init(
            || vec![0.0f32; n * len],
            |p, bh| {
                let (bi, h) = (bh / nh, bh % nh);
                let q = qkv[bi * n * w + h * hs..].as_ptr();
                let k = k_cache[bi * t_max * kvw + (h / group) * hs..].as_ptr();
                let v = v_cache[bi * t_max * kvw + (h / group) * hs..].as_ptr();
                let o = out_ptr.get().wrapping_add(bi * n * c + h * hs);
                // SAFETY: q addresses n rows of hs with stride w inside qkv, k and v len rows
                // of hs with stride kvw inside this batch's cache (len <= t_max), p is this
                // task's own n x len buffer, o this (b, h)'s column stripe of out.
                unsafe {
                    // S = scale * Q K[0..len]^T
                    sgemm(n, len, hs, Mat { ptr: p.as_mut_ptr(), rs: len as isize, cs: 1 }, false, Mat::rows(q, w), Mat::trans(k, kvw), scale, false);
                }
                for i in 0..n {
                    causal_softmax_row(&mut p[i * len..][..len], start + i);
                }
                // SAFETY: as above.
                unsafe {
                    // O = P V[0..len]
                    sgemm(n, hs, len, Mat { ptr: o, rs: c as isize, cs: 1 }, false, Mat::rows(p.as_ptr(), len), Mat::rows(v, kvw), 1.0, false);
                }
            },
        );
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
    //! qkv, out, dout and dqkv share one dtype, which picks the implementation: bf16 runs the
    //! tensor-core kernels (one per head size), f32 the CUDA-core ones. The saved state is
    //! always f32: lse (B, NH, T). Preconditions checked here: HS in {32, 64, 128}; every size
    //! the kernels index with an int fits one; the dynamic shared memory each kernel needs is
    //! allowed (the limit is raised per kernel). The bf16 backward takes two scratch buffers
    //! from the pool (inside the budget): D (B, NH, T) and the dQ partials
    //! ([`dq_splits`] x B x NH x T x HS), both f32 and fully written before they are read.
    use half::bf16;

    use crate::cuda::{CudaDevice, CudaFunction, LaunchConfig, PushKernelArg};
    use crate::{DType, Error, Result, Tensor};

    const OP: &str = "attention (cuda)";
    const FLOAT: usize = std::mem::size_of::<f32>();

    /// attention.cu `tc`: threads per block, query rows per forward block (= keys per tile),
    /// keys per backward block tile, bf16 padding per shared-memory row.
    const TC_THREADS: u32 = 128;
    const TC_BR: usize = 64;
    const TC_BKT: usize = 64;
    const TC_PAD: usize = 8;

    /// Rows per tile of the fp32 kernels (R = 64 for HS <= 64, 32 for HS = 128).
    fn simt_rows(hs: usize) -> Result<usize> {
        match hs {
            32 | 64 => Ok(64),
            128 => Ok(32),
            _ => Err(Error::Invalid { op: OP, msg: format!("head size {hs} is not supported on CUDA (32, 64 or 128)") }),
        }
    }

    /// attention.cu `tc::bwd_bq`: queries per backward chunk.
    const fn tc_bq(hs: usize) -> usize {
        if hs == 32 { 32 } else { 16 }
    }

    /// Dynamic shared memory of the bf16 forward: Q, and K and V twice (attention.cu `fwd_smem_bytes`).
    pub const fn tc_fwd_smem_bytes(hs: usize) -> usize {
        (TC_BR + 4 * TC_BR) * (hs + TC_PAD) * 2
    }

    /// Dynamic shared memory of the bf16 backward: K, V; Q and dO twice; dS^T; lse and D
    /// twice (attention.cu `bwd_smem_bytes`).
    pub const fn tc_bwd_smem_bytes(hs: usize) -> usize {
        let bq = tc_bq(hs);
        (2 * TC_BKT + 4 * bq) * (hs + TC_PAD) * 2 + TC_BKT * (bq + TC_PAD) * 2 + 2 * 2 * bq * FLOAT
    }

    /// How many dQ partials the bf16 backward keeps (its grid's x): enough blocks to fill a
    /// large GPU (about 1536 in all), at most half the key tiles (each block takes a pair
    /// of them), at least 1. A function of the shape only, so the summation order, and with
    /// it every bit of dQ, is the same on every GPU.
    pub fn dq_splits(b: usize, t: usize, nh: usize) -> usize {
        let pairs = t.div_ceil(TC_BKT).div_ceil(2).max(1);
        1536usize.div_ceil((b * nh).max(1)).clamp(1, pairs)
    }

    fn int(what: &str, v: usize) -> Result<i32> {
        crate::ops::kernel_int(OP, what, v)
    }

    fn check_sizes(b: usize, t: usize, c: usize, nh: usize) -> Result<(i32, i32, i32, i32)> {
        let hs = c / nh;
        if !matches!(hs, 32 | 64 | 128) {
            return Err(Error::Invalid { op: OP, msg: format!("head size {hs} is not supported on CUDA (32, 64 or 128)") });
        }
        if nh > 65535 || 2 * b > 65535 {
            return Err(Error::Invalid { op: OP, msg: format!("grid ({nh} heads, batch {b}) exceeds 65535") });
        }
        int("B*T*3C", b.checked_mul(t).and_then(|n| n.checked_mul(3 * c)).unwrap_or(usize::MAX))?;
        Ok((int("B", b)?, int("T", t)?, int("NH", nh)?, int("HS", hs)?))
    }

    /// Raises `f`'s dynamic shared memory limit to `bytes` (above the 48 KB default).
    fn allow_smem(f: &CudaFunction, dev: &CudaDevice, kernel: &str, bytes: usize) -> Result<()> {
        use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32).map_err(|e| Error::Cuda {
            op: format!("allowing {bytes} bytes of shared memory for {kernel} on {}", dev.name()),
            msg: e.to_string(),
        })
    }

    fn launch_cfg(grid: (usize, usize, usize), threads: u32, smem: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32), block_dim: (threads, 1, 1), shared_mem_bytes: smem as u32 }
    }

    fn check_saved(att: &Tensor) -> Result<()> {
        crate::ops::expect_dtype(OP, "att", att, DType::F32)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward(dev: &CudaDevice, out: &mut Tensor, att: &mut Tensor, qkv: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        check_saved(att)?;
        match qkv.dtype() {
            DType::F32 => forward_f32(dev, out, att, qkv, b, t, c, nh),
            DType::Bf16 => forward_bf16(dev, out, att, qkv, b, t, c, nh),
            got => Err(Error::DType { op: OP, arg: "qkv", expected: DType::Bf16, got }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_f32(dev: &CudaDevice, out: &mut Tensor, att: &mut Tensor, qkv: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        crate::ops::expect_dtype(OP, "out", out, DType::F32)?;
        let (_, t_i, nh_i, hs_i) = check_sizes(b, t, c, nh)?;
        let (hs, r) = (c / nh, simt_rows(c / nh)?);
        if b == 0 || t == 0 {
            return Ok(());
        }
        let kernel = "attention_fwd_f32";
        let f = dev.function("attention", kernel)?;
        let smem = 3 * r * (hs + 4) * FLOAT;
        allow_smem(&f, dev, kernel, smem)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<f32>()?).arg(att.cuda_slice_mut::<f32>()?).arg(qkv.cuda_slice::<f32>()?);
        launch.arg(&t_i).arg(&nh_i).arg(&hs_i);
        // SAFETY: matches attention.cu `attention_fwd_f32(float* out, float* lse, const float* qkv,
        // int T, int NH, int HS)`; out (B,T,C), lse (B,NH,T), qkv (B,T,3C) (checked by
        // attention_forward); grid (ceil(T/R), NH, B), 4R threads and 3R(HS+4) floats of shared
        // memory for the R the kernel picks for this HS.
        unsafe { launch.launch(launch_cfg((t.div_ceil(r), nh, b), 4 * r as u32, smem)) }.map_err(dev.launch_error(kernel))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_bf16(dev: &CudaDevice, out: &mut Tensor, att: &mut Tensor, qkv: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        crate::ops::expect_dtype(OP, "out", out, DType::Bf16)?;
        let (_, t_i, nh_i, _) = check_sizes(b, t, c, nh)?;
        let hs = c / nh;
        if b == 0 || t == 0 {
            return Ok(());
        }
        let kernel = format!("attention_fwd_bf16_hs{hs}");
        let f = dev.function("attention", &kernel)?;
        let smem = tc_fwd_smem_bytes(hs);
        allow_smem(&f, dev, &kernel, smem)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<bf16>()?).arg(att.cuda_slice_mut::<f32>()?).arg(qkv.cuda_slice::<bf16>()?);
        launch.arg(&t_i).arg(&nh_i);
        // SAFETY: matches attention.cu `attention_fwd_bf16_hs<HS>(bf16* out, float* lse, const bf16* qkv,
        // int T, int NH)` for this HS; out (B,T,C), lse (B,NH,T), qkv (B,T,3C) (checked by
        // attention_forward); grid (ceil(T/BR), NH, B), tc::THREADS threads, fwd_smem_bytes<HS>().
        unsafe { launch.launch(launch_cfg((t.div_ceil(TC_BR), nh, b), TC_THREADS, smem)) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(dev: &CudaDevice, dqkv: &mut Tensor, dout: &Tensor, qkv: &Tensor, out: &Tensor, att: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        check_saved(att)?;
        match qkv.dtype() {
            DType::F32 => backward_f32(dev, dqkv, dout, qkv, out, att, b, t, c, nh),
            DType::Bf16 => backward_bf16(dev, dqkv, dout, qkv, out, att, b, t, c, nh),
            got => Err(Error::DType { op: OP, arg: "qkv", expected: DType::Bf16, got }),
        }
    }

    fn expect_all(dtype: DType, dqkv: &Tensor, dout: &Tensor, out: &Tensor) -> Result<()> {
        crate::ops::expect_dtype(OP, "dqkv", dqkv, dtype)?;
        crate::ops::expect_dtype(OP, "dout", dout, dtype)?;
        crate::ops::expect_dtype(OP, "out", out, dtype)
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_f32(dev: &CudaDevice, dqkv: &mut Tensor, dout: &Tensor, qkv: &Tensor, out: &Tensor, att: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        expect_all(DType::F32, dqkv, dout, out)?;
        let (_, t_i, nh_i, hs_i) = check_sizes(b, t, c, nh)?;
        let (hs, r) = (c / nh, simt_rows(c / nh)?);
        if b == 0 || t == 0 {
            return Ok(());
        }
        let kernel = "attention_bwd_f32";
        let f = dev.function("attention", kernel)?;
        let smem = (4 * r * (hs + 4) + 2 * r) * FLOAT;
        allow_smem(&f, dev, kernel, smem)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(dqkv.cuda_slice_mut::<f32>()?).arg(dout.cuda_slice::<f32>()?).arg(qkv.cuda_slice::<f32>()?);
        launch.arg(out.cuda_slice::<f32>()?).arg(att.cuda_slice::<f32>()?);
        launch.arg(&t_i).arg(&nh_i).arg(&hs_i);
        // SAFETY: matches attention.cu `attention_bwd_f32(float* dqkv, const float* dout, const float* qkv,
        // const float* out, const float* lse, int T, int NH, int HS)`; dqkv/qkv (B,T,3C), dout/out
        // (B,T,C), lse (B,NH,T) written by attention_fwd_f32 (shapes checked by attention_backward);
        // grid (ceil(T/R), NH, 2B): one dq and one dkdv block per tile; every element of dqkv is
        // written (rows < T, all 3C columns).
        unsafe { launch.launch(launch_cfg((t.div_ceil(r), nh, 2 * b), 4 * r as u32, smem)) }.map_err(dev.launch_error(kernel))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_bf16(dev: &CudaDevice, dqkv: &mut Tensor, dout: &Tensor, qkv: &Tensor, out: &Tensor, att: &Tensor, b: usize, t: usize, c: usize, nh: usize) -> Result<()> {
        expect_all(DType::Bf16, dqkv, dout, out)?;
        let (b_i, t_i, nh_i, hs_i) = check_sizes(b, t, c, nh)?;
        let hs = c / nh;
        if b == 0 || t == 0 {
            return Ok(());
        }
        let splits = dq_splits(b, t, nh);
        let splits_i = int("dQ splits", splits)?;
        let rows = b * t * nh;
        // Scratch from the pool, fully written before it is read, so not cleared; back to
        // the pool when dropped (safe without a sync: its next user queues on this stream).
        let mut delta = Tensor::try_empty(dev.device(), DType::F32, &[rows])?;
        let mut dq_part = Tensor::try_empty(dev.device(), DType::F32, &[splits, b, nh, t, hs])?;

        let kernel = "attention_bwd_delta_bf16";
        let f = dev.function("attention", kernel)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(delta.cuda_slice_mut::<f32>()?).arg(out.cuda_slice::<bf16>()?).arg(dout.cuda_slice::<bf16>()?);
        launch.arg(&b_i).arg(&t_i).arg(&nh_i).arg(&hs_i);
        // SAFETY: matches `attention_bwd_delta_bf16(float* delta, const bf16* out, const bf16* dout, int B,
        // int T, int NH, int HS)`; delta holds B*T*NH floats, out/dout (B,T,C); one warp per row,
        // 8 rows per 256-thread block, rows past the end return.
        unsafe { launch.launch(launch_cfg((rows.div_ceil(8), 1, 1), 256, 0)) }.map_err(dev.launch_error(kernel))?;

        let kernel = format!("attention_bwd_bf16_hs{hs}");
        let f = dev.function("attention", &kernel)?;
        let smem = tc_bwd_smem_bytes(hs);
        allow_smem(&f, dev, &kernel, smem)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(dqkv.cuda_slice_mut::<bf16>()?).arg(dq_part.cuda_slice_mut::<f32>()?).arg(dout.cuda_slice::<bf16>()?);
        launch.arg(qkv.cuda_slice::<bf16>()?).arg(att.cuda_slice::<f32>()?).arg(delta.cuda_slice::<f32>()?);
        launch.arg(&b_i).arg(&t_i).arg(&nh_i);
        // SAFETY: matches `attention_bwd_bf16_hs<HS>(bf16* dqkv, float* dq_part, const bf16* dout,
        // const bf16* qkv, const float* lse, const float* delta, int B, int T, int NH)` for this HS;
        // dq_part holds gridDim.x = splits partials of (B,NH,T,HS); lse (B,NH,T) from the forward,
        // delta (B,NH,T) from the launch above; grid (splits, NH, B) with splits <= ceil(tiles/2)
        // so every block owns a first key tile; bwd_smem_bytes<HS>() of shared memory. It writes
        // the dk and dv columns of every row < T; the dq columns come from the reduce below.
        unsafe { launch.launch(launch_cfg((splits, nh, b), TC_THREADS, smem)) }.map_err(dev.launch_error(&kernel))?;

        let kernel = "attention_dq_reduce_bf16";
        let f = dev.function("attention", kernel)?;
        let threads = rows * (hs / 8);
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(dqkv.cuda_slice_mut::<bf16>()?).arg(dq_part.cuda_slice::<f32>()?);
        launch.arg(&b_i).arg(&t_i).arg(&nh_i).arg(&hs_i).arg(&splits_i);
        // SAFETY: matches `attention_dq_reduce_bf16(bf16* dqkv, const float* dq_part, int B, int T, int NH,
        // int HS, int nsplit)`; one thread per 8 d of each (b, t, h), threads past the end return;
        // reads only the partials the main kernel wrote (s <= t / BKT).
        unsafe { launch.launch(launch_cfg((threads.div_ceil(256), 1, 1), 256, 0)) }.map_err(dev.launch_error(kernel))?;
        Ok(())
    }

    /// Threads of kv_cache.cu's `attention_cached_fwd_*` (its `CACHED_THREADS`).
    pub const CACHED_THREADS: u32 = 128;

    /// Dynamic shared memory of `attention_cached_fwd_*` for `len` = start + n cached
    /// positions at head size `hs`: q and the scores, in f32.
    pub const fn cached_smem_bytes(hs: usize, len: usize) -> usize {
        (hs + len) * FLOAT
    }

    /// The shared memory every CUDA device grants a block without opting in (48 KiB).
    const DEFAULT_SMEM: usize = 48 * 1024;

    /// [`super::attention_cached_forward`] on CUDA (kernels/cuda/kv_cache.cu): the append
    /// kernel writes the new k and v rows into the caches, then one block per (new row,
    /// head, batch) attends over the cached keys. Every tensor f32, or every tensor bf16.
    pub fn attention_cached_forward(dev: &CudaDevice, out: &mut Tensor, qkv: &Tensor, k_cache: &mut Tensor, v_cache: &mut Tensor, d: &super::cpu::CachedDims) -> Result<()> {
        const OP: &str = "attention_cached_forward (cuda)";
        let dtype = qkv.dtype();
        if !matches!(dtype, DType::F32 | DType::Bf16) {
            return Err(Error::DType { op: OP, arg: "qkv", expected: DType::Bf16, got: dtype });
        }
        crate::ops::expect_dtype(OP, "out", out, dtype)?;
        crate::ops::expect_dtype(OP, "k_cache", k_cache, dtype)?;
        crate::ops::expect_dtype(OP, "v_cache", v_cache, dtype)?;
        let super::cpu::CachedDims { b, n, t_max, start, nh, kv, hs } = *d;
        if b == 0 || n == 0 {
            return Ok(());
        }
        let len = start + n;
        let smem = cached_smem_bytes(hs, len);
        if smem > DEFAULT_SMEM {
            return Err(Error::Invalid {
                op: OP,
                msg: format!("{len} cached positions at head size {hs} need {smem} bytes of shared memory, more than the kernel's {DEFAULT_SMEM}"),
            });
        }
        if nh > 65535 || b > 65535 {
            return Err(Error::Invalid { op: OP, msg: format!("grid ({nh} heads, batch {b}) exceeds 65535") });
        }
        let int = |what: &str, v: usize| crate::ops::kernel_int(OP, what, v);
        let (n_i, t_i, start_i, nh_i, kv_i, hs_i) = (int("n", n)?, int("Tmax", t_max)?, int("start", start)?, int("NH", nh)?, int("KV", kv)?, int("HS", hs)?);
        int("B*Tmax*KV*HS", b.saturating_mul(t_max * kv * hs))?;
        let scale = 1.0 / (hs as f32).sqrt();
        let suffix = if dtype == DType::Bf16 { "bf16" } else { "f32" };

        let kernel = format!("kv_cache_append_{suffix}");
        let f = dev.function("kv_cache", &kernel)?;
        let rows = (b * n) as u64;
        let cfg = dev.grid_stride(b * n * kv * hs, 256)?;
        let (n64, t64, s64, nh64, kv64, hs64) = (n as u64, t_max as u64, start as u64, nh as u64, kv as u64, hs as u64);
        let mut launch = dev.stream().launch_builder(&f);
        if dtype == DType::Bf16 {
            launch.arg(k_cache.cuda_slice_mut::<bf16>()?).arg(v_cache.cuda_slice_mut::<bf16>()?).arg(qkv.cuda_slice::<bf16>()?);
        } else {
            launch.arg(k_cache.cuda_slice_mut::<f32>()?).arg(v_cache.cuda_slice_mut::<f32>()?).arg(qkv.cuda_slice::<f32>()?);
        }
        launch.arg(&rows).arg(&n64).arg(&t64).arg(&s64).arg(&nh64).arg(&kv64).arg(&hs64);
        // SAFETY: matches kv_cache.cu `kv_cache_append_<T>(T* kc, T* vc, const T* qkv, u64 rows, u64 n,
        // u64 t_max, u64 start, u64 NH, u64 KV, u64 HS)`; qkv (B,n,(NH+2KV)HS), the caches
        // (B,Tmax,KV HS) with start + n <= Tmax (checked by attention_cached_forward); the
        // kernel writes cache rows start .. start + n only.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;

        let kernel = format!("attention_cached_fwd_{suffix}");
        let f = dev.function("kv_cache", &kernel)?;
        let mut launch = dev.stream().launch_builder(&f);
        if dtype == DType::Bf16 {
            launch.arg(out.cuda_slice_mut::<bf16>()?).arg(qkv.cuda_slice::<bf16>()?).arg(k_cache.cuda_slice::<bf16>()?).arg(v_cache.cuda_slice::<bf16>()?);
        } else {
            launch.arg(out.cuda_slice_mut::<f32>()?).arg(qkv.cuda_slice::<f32>()?).arg(k_cache.cuda_slice::<f32>()?).arg(v_cache.cuda_slice::<f32>()?);
        }
        launch.arg(&n_i).arg(&t_i).arg(&start_i).arg(&nh_i).arg(&kv_i).arg(&hs_i).arg(&scale);
        // SAFETY: matches kv_cache.cu `attention_cached_fwd_<T>(T* out, const T* qkv, const T* kc,
        // const T* vc, int n, int t_max, int start, int NH, int KV, int HS, float scale)`; out
        // (B,n,NH HS), qkv and the caches as above, NH % KV == 0; grid (n, NH, B), CACHED_THREADS
        // threads, (HS + start + n) floats of dynamic shared memory (within the default 48 KiB,
        // checked above); it reads cache rows 0 .. start + n, all written by now (the append
        // above runs first on this stream).
        unsafe { launch.launch(launch_cfg((n, nh, b), CACHED_THREADS, smem)) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
