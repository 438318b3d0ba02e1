//! Matmul with optional bias, over the last dimension of `inp`.
//!
//! forward:  out (N,OC) = inp (N,IC) @ W + bias
//! backward: dinp (N,IC) = dout @ W^T          (overwrites)
//!           dW += inp^T @ dout (in W's layout), dbias += sum_rows dout   (accumulate)
//!
//! W is stored either [IC, OC] (`WeightLayout::InOut`: Hugging Face GPT-2's Conv1D) or
//! [OC, IC] (`WeightLayout::OutIn`: the tied embedding used as the classifier). The CPU path
//! reads either through strides, never transposing a copy.

use super::{rows_cols, same_device};
use crate::cuda;
use crate::{Device, Error, Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// weight is [IC, OC]: out = inp @ weight.
    InOut,
    /// weight is [OC, IC]: out = inp @ weight^T.
    OutIn,
}

const OP_FWD: &str = "matmul_forward";
const OP_BWD: &str = "matmul_backward";

fn dims(op: &'static str, inp: &Tensor, weight: &Tensor, layout: WeightLayout) -> Result<(usize, usize, usize)> {
    let (n, ic) = rows_cols(inp);
    let &[a, b] = weight.shape() else {
        return Err(Error::Invalid { op, msg: format!("weight must be 2-D, got {:?}", weight.shape()) });
    };
    let (w_ic, oc) = match layout {
        WeightLayout::InOut => (a, b),
        WeightLayout::OutIn => (b, a),
    };
    if w_ic != ic {
        return Err(Error::Invalid {
            op,
            msg: format!("inp has {ic} channels but weight {:?} ({layout:?}) expects {w_ic}", weight.shape()),
        });
    }
    Ok((n, ic, oc))
}

fn out_shape(inp: &Tensor, oc: usize) -> Vec<usize> {
    let mut s = inp.shape().to_vec();
    *s.last_mut().expect("inp has at least one dimension") = oc;
    s
}

pub fn matmul_forward(
    out: &mut Tensor,
    inp: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    layout: WeightLayout,
) -> Result<()> {
    let (n, ic, oc) = dims(OP_FWD, inp, weight, layout)?;
    out.expect_shape(OP_FWD, "out", &out_shape(inp, oc))?;
    if let Some(b) = bias {
        b.expect_shape(OP_FWD, "bias", &[oc])?;
        same_device(OP_FWD, &[out, b])?;
    }
    match same_device(OP_FWD, &[out, inp, weight])? {
        Device::Cuda(ordinal) => gpu::matmul_forward(&*cuda::device(ordinal)?, out, None, inp, weight, bias, n, ic, oc, layout, false)?,
        Device::Cpu => {
            let bias = bias.map(|b| b.f32()).transpose()?;
            cpu::matmul_forward(out.f32_mut()?, inp.f32()?, weight.f32()?, bias, n, ic, oc, layout);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: &mut Tensor,
    dweight: &mut Tensor,
    dbias: Option<&mut Tensor>,
    dout: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    layout: WeightLayout,
) -> Result<()> {
    let (n, ic, oc) = dims(OP_BWD, inp, weight, layout)?;
    dinp.expect_shape(OP_BWD, "dinp", inp.shape())?;
    dweight.expect_shape(OP_BWD, "dweight", weight.shape())?;
    dout.expect_shape(OP_BWD, "dout", &out_shape(inp, oc))?;
    match same_device(OP_BWD, &[dinp, dweight, dout, inp, weight])? {
        Device::Cuda(ordinal) => {
            if let Some(b) = &dbias {
                b.expect_shape(OP_BWD, "dbias", &[oc])?;
            }
            gpu::matmul_backward(&*cuda::device(ordinal)?, dinp, dweight, dbias, dout, inp, weight, n, ic, oc, layout)?
        }
        Device::Cpu => {
            let dbias = match dbias {
                Some(b) => {
                    b.expect_shape(OP_BWD, "dbias", &[oc])?;
                    Some(b.f32_mut()?)
                }
                None => None,
            };
            cpu::matmul_backward(dinp.f32_mut()?, dweight.f32_mut()?, dbias, dout.f32()?, inp.f32()?, weight.f32()?, n, ic, oc, layout);
        }
    }
    Ok(())
}

/// Matmul with the GeLU fused into its epilogue: out = gelu(inp @ W + bias).
///
/// `pre` (same shape as `out`), when given, receives inp @ W + bias, the input
/// `gelu_backward` needs; a caller short of memory passes `None` and recomputes it with
/// `matmul_forward` before the backward. On the CPU this is `matmul_forward` then
/// `gelu_forward` (same numbers, no fusion).
pub fn matmul_gelu_forward(
    out: &mut Tensor,
    pre: Option<&mut Tensor>,
    inp: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    layout: WeightLayout,
) -> Result<()> {
    const OP: &str = "matmul_gelu_forward";
    let (n, ic, oc) = dims(OP, inp, weight, layout)?;
    out.expect_shape(OP, "out", &out_shape(inp, oc))?;
    if let Some(p) = &pre {
        p.expect_shape(OP, "pre", &out_shape(inp, oc))?;
        same_device(OP, &[out, p])?;
    }
    match same_device(OP, &[out, inp, weight])? {
        Device::Cuda(ordinal) => gpu::matmul_forward(&*cuda::device(ordinal)?, out, pre, inp, weight, bias, n, ic, oc, layout, true),
        Device::Cpu => match pre {
            Some(pre) => {
                matmul_forward(pre, inp, weight, bias, layout)?;
                super::gelu::gelu_forward(out, pre)
            }
            None => {
                let mut pre = Tensor::try_zeros(Device::Cpu, out.dtype(), out.shape())?;
                matmul_forward(&mut pre, inp, weight, bias, layout)?;
                super::gelu::gelu_forward(out, &pre)
            }
        },
    }
}

pub mod cpu {
    use rayon::prelude::*;

    use super::WeightLayout;
    use crate::ops::cpu_math::multiversion;
    use crate::ops::cpu_util::{reduce_rows_into, sgemm, Mat};

    multiversion! {
        /// acc += x, elementwise.
        fn add_into(acc: &mut [f32], x: &[f32]) {
            let x = &x[..acc.len()];
            for (a, v) in acc.iter_mut().zip(x) {
                *a += v;
            }
        }
    }

    /// W as the (IC x OC) matrix of the product, whatever its storage layout.
    fn w_as_in_out(weight: &[f32], ic: usize, oc: usize, layout: WeightLayout) -> Mat<*const f32> {
        match layout {
            WeightLayout::InOut => Mat::rows(weight.as_ptr(), oc),
            WeightLayout::OutIn => Mat::trans(weight.as_ptr(), ic),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward(
        out: &mut [f32],
        inp: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        ic: usize,
        oc: usize,
        layout: WeightLayout,
    ) {
        if let Some(bias) = bias {
            out.par_chunks_mut(oc).for_each(|row| row.copy_from_slice(bias));
        }
        // SAFETY: out is (n x oc), inp (n x ic), weight ic*oc elements; strides stay inside them.
        unsafe {
            sgemm(
                n,
                oc,
                ic,
                Mat { ptr: out.as_mut_ptr(), rs: oc as isize, cs: 1 },
                bias.is_some(),
                Mat::rows(inp.as_ptr(), ic),
                w_as_in_out(weight, ic, oc, layout),
                1.0,
                true,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward(
        dinp: &mut [f32],
        dweight: &mut [f32],
        dbias: Option<&mut [f32]>,
        dout: &[f32],
        inp: &[f32],
        weight: &[f32],
        n: usize,
        ic: usize,
        oc: usize,
        layout: WeightLayout,
    ) {
        let w = w_as_in_out(weight, ic, oc, layout);
        // SAFETY: all matrices are within their slices: dinp (n x ic), dout (n x oc),
        // inp (n x ic), weight/dweight ic*oc elements, addressed with matching strides.
        unsafe {
            // dinp (n x ic) = dout (n x oc) @ W^T (oc x ic)
            sgemm(
                n,
                ic,
                oc,
                Mat { ptr: dinp.as_mut_ptr(), rs: ic as isize, cs: 1 },
                false,
                Mat::rows(dout.as_ptr(), oc),
                Mat { ptr: w.ptr, rs: w.cs, cs: w.rs },
                1.0,
                true,
            );
            match layout {
                // dW (ic x oc) += inp^T (ic x n) @ dout (n x oc)
                WeightLayout::InOut => sgemm(
                    ic,
                    oc,
                    n,
                    Mat { ptr: dweight.as_mut_ptr(), rs: oc as isize, cs: 1 },
                    true,
                    Mat::trans(inp.as_ptr(), ic),
                    Mat::rows(dout.as_ptr(), oc),
                    1.0,
                    true,
                ),
                // dW (oc x ic) += dout^T (oc x n) @ inp (n x ic)
                WeightLayout::OutIn => sgemm(
                    oc,
                    ic,
                    n,
                    Mat { ptr: dweight.as_mut_ptr(), rs: ic as isize, cs: 1 },
                    true,
                    Mat::trans(dout.as_ptr(), oc),
                    Mat::rows(inp.as_ptr(), ic),
                    1.0,
                    true,
                ),
            }
        }
        if let Some(dbias) = dbias {
            reduce_rows_into(dbias, n, |row, partial| add_into(partial, &dout[row * oc..][..oc]));
        }
    }
}

pub mod gpu {
    //! Launchers for kernels/cuda/matmul.cu (its header explains the tiling and the table of
    //! operand layouts used below).
    //!
    //! Dtypes: inp, weight, bias, out, dout and dinp share one dtype, f32 or bf16 (the
    //! kernel is chosen by it). Parameter gradients (dweight, dbias) may be that dtype or f32
    //! with bf16 operands (fp32 gradient accumulation); f32 operands need f32 gradients.
    //! Any M, IC, OC are supported. The bf16 fast path (cp.async) is taken when every leading
    //! dimension is a multiple of 8 elements: tensors are whole allocations (cudaMalloc
    //! aligns to 256 bytes), so that makes every 8-element chunk 16-byte aligned.
    use half::bf16;

    use super::WeightLayout;
    use crate::cuda::{CudaDevice, CudaElement, LaunchConfig, PushKernelArg};
    use crate::{DType, Error, Result, Tensor};

    const OP: &str = "matmul (cuda)";
    /// Block tile of the bf16 tensor-core kernels and of the fp32 FMA kernels (matmul.cu).
    const TC_TILE: usize = 128;
    const SIMT_TILE: usize = 64;
    const THREADS: u32 = 256;
    /// matmul.cu `tc::SMEM_BYTES`: three stages of two 128 x (32 + 8) bf16 tiles.
    pub const TC_SMEM_BYTES: usize = 3 * 2 * TC_TILE * 40 * 2;
    /// matmul.cu `tc::BK`: split-K chunks are whole k-tiles.
    const TC_BK: usize = 32;
    /// Rows per block of the bias gradient's first pass.
    const BIAS_ROWS: usize = 256;

    /// The split-K factor of a bf16 backward GEMM (M x N output, K long): 1 when the output
    /// alone has at least 264 tiles (two per SM of a 132-SM GPU); else enough splits for
    /// about 264 blocks, each at least 1024 deep in k, at most 16. A function of the shape
    /// only, so the (fixed) summation order, and every bit of the result, is the same on
    /// every GPU. Returns (splits, k per split), the latter a multiple of the k-tile.
    pub fn split_k(m: usize, n: usize, k: usize) -> (usize, usize) {
        let tiles = m.div_ceil(TC_TILE) * n.div_ceil(TC_TILE);
        let want = if tiles >= 264 { 1 } else { 264usize.div_ceil(tiles).min(k / 1024).clamp(1, 16) };
        let chunk = k.div_ceil(want).div_ceil(TC_BK) * TC_BK;
        (k.div_ceil(chunk.max(1)).max(1), chunk.max(TC_BK))
    }

    /// Raises a tensor-core kernel's dynamic shared memory limit to TC_SMEM_BYTES.
    fn allow_tc_smem(dev: &CudaDevice, f: &crate::cuda::CudaFunction, kernel: &str) -> Result<()> {
        use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, TC_SMEM_BYTES as i32).map_err(|e| Error::Cuda {
            op: format!("allowing {TC_SMEM_BYTES} bytes of shared memory for {kernel} on {}", dev.name()),
            msg: e.to_string(),
        })
    }

    fn int(what: &str, v: usize) -> Result<i32> {
        crate::ops::kernel_int(OP, what, v)
    }

    /// Grid (ceil(n / tile), ceil(m / tile), splits), 256 threads, the tensor-core kernels'
    /// dynamic shared memory when `tile` is theirs.
    fn gemm_config(m: usize, n: usize, tile: usize, splits: usize) -> Result<LaunchConfig> {
        let (gx, gy) = (n.div_ceil(tile), m.div_ceil(tile));
        if gy > 65535 || gx > i32::MAX as usize {
            return Err(Error::Invalid { op: OP, msg: format!("{m} x {n} output needs a {gx} x {gy} grid (max 2^31 x 65535)") });
        }
        let smem = if tile == TC_TILE { TC_SMEM_BYTES as u32 } else { 0 };
        Ok(LaunchConfig { grid_dim: (gx as u32, gy as u32, splits as u32), block_dim: (THREADS, 1, 1), shared_mem_bytes: smem })
    }

    fn expect_dtype(arg: &'static str, t: &Tensor, expected: DType) -> Result<()> {
        crate::ops::expect_dtype(OP, arg, t, expected)
    }

    /// out = inp @ W (+ bias) (then GeLU when `gelu`; `pre` gets the value before it).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward(
        dev: &CudaDevice,
        out: &mut Tensor,
        pre: Option<&mut Tensor>,
        inp: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        n: usize,
        ic: usize,
        oc: usize,
        layout: WeightLayout,
        gelu: bool,
    ) -> Result<()> {
        dispatch_float!(inp.dtype(), OP, "inp", forward_typed(dev, out, pre, inp, weight, bias, n, ic, oc, layout, gelu))
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_typed<T: CudaElement>(
        dev: &CudaDevice,
        out: &mut Tensor,
        pre: Option<&mut Tensor>,
        inp: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        n: usize,
        ic: usize,
        oc: usize,
        layout: WeightLayout,
        gelu: bool,
    ) -> Result<()> {
        expect_dtype("weight", weight, T::DTYPE)?;
        expect_dtype("out", out, T::DTYPE)?;
        if let Some(b) = bias {
            expect_dtype("bias", b, T::DTYPE)?;
        }
        if let Some(p) = &pre {
            expect_dtype("pre", p, T::DTYPE)?;
        }
        if n == 0 || oc == 0 {
            return Ok(());
        }
        let bf16_path = T::DTYPE == DType::Bf16;
        let cfg = gemm_config(n, oc, if bf16_path { TC_TILE } else { SIMT_TILE }, 1)?;
        let (m_i, k_i, n_i) = (int("rows", n)?, int("IC", ic)?, int("OC", oc)?);
        let outin = i32::from(layout == WeightLayout::OutIn);
        let gelu_i = i32::from(gelu);
        // B's leading dimension is K (OutIn, [OC, IC]) or N (InOut, [IC, OC]); A's is K.
        let ldb = if layout == WeightLayout::OutIn { ic } else { oc };
        let vec = i32::from(ic % 8 == 0 && ldb % 8 == 0);
        let null: u64 = 0;
        let kernel = format!("matmul_fwd_{}", T::NAME);
        let f = dev.function("matmul", &kernel)?;
        if bf16_path {
            allow_tc_smem(dev, &f, &kernel)?;
        }
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<T>()?);
        match pre {
            Some(p) => launch.arg(p.cuda_slice_mut::<T>()?),
            None => launch.arg(&null),
        };
        launch.arg(inp.cuda_slice::<T>()?).arg(weight.cuda_slice::<T>()?);
        match bias {
            Some(b) => launch.arg(b.cuda_slice::<T>()?),
            None => launch.arg(&null),
        };
        launch.arg(&m_i).arg(&k_i).arg(&n_i).arg(&outin).arg(&gelu_i);
        if bf16_path {
            launch.arg(&vec);
        }
        // SAFETY: matches matmul.cu `matmul_fwd_bf16(bf16* out, bf16* pre, const bf16* inp,
        // const bf16* weight, const bf16* bias, int M, int K, int N, int weight_outin, int gelu,
        // int vec)` and `matmul_fwd_f32(...)` (the same without vec); null pre/bias are allowed;
        // out/pre are (M,N), inp (M,K), weight K*N elements, bias N (shapes checked by the caller).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    /// dinp = dout @ W^T; dweight += inp^T @ dout (in W's layout); dbias += column sums of dout.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward(
        dev: &CudaDevice,
        dinp: &mut Tensor,
        dweight: &mut Tensor,
        dbias: Option<&mut Tensor>,
        dout: &Tensor,
        inp: &Tensor,
        weight: &Tensor,
        n: usize,
        ic: usize,
        oc: usize,
        layout: WeightLayout,
    ) -> Result<()> {
        let t = inp.dtype();
        if !matches!(t, DType::F32 | DType::Bf16) {
            return Err(Error::DType { op: OP, arg: "inp", expected: DType::Bf16, got: t });
        }
        for (arg, x) in [("dinp", &*dinp), ("dout", dout), ("weight", weight)] {
            expect_dtype(arg, x, t)?;
        }
        if n == 0 || ic == 0 || oc == 0 {
            return Ok(()); // dinp has no elements, or the product is empty: nothing to add
        }
        // dinp (n x ic) = dout (n x oc) @ B, B(k = oc, n = ic) = W(ic, oc)
        let w_kmajor = layout == WeightLayout::InOut; // W[ic][oc]: B[n][k]
        let ldw = if w_kmajor { oc } else { ic };
        gemm(dev, t, dinp, false, (dout, oc, true), (weight, ldw, w_kmajor), n, ic, oc)?;
        match layout {
            // dW [ic, oc] += inp^T @ dout: A(m = ic, k = row) = inp (M-major), B = dout (N-major)
            WeightLayout::InOut => gemm(dev, t, dweight, true, (inp, ic, false), (dout, oc, false), ic, oc, n)?,
            // dW [oc, ic] += dout^T @ inp
            WeightLayout::OutIn => gemm(dev, t, dweight, true, (dout, oc, false), (inp, ic, false), oc, ic, n)?,
        }
        if let Some(db) = dbias {
            bias_backward(dev, t, db, dout, n, oc)?;
        }
        Ok(())
    }

    /// C (m x n, leading dimension n) (= or +=) A @ B, each operand `(tensor, ld, kmajor)`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        dev: &CudaDevice,
        t: DType,
        c: &mut Tensor,
        accumulate: bool,
        a: (&Tensor, usize, bool),
        b: (&Tensor, usize, bool),
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let bf16_path = t == DType::Bf16;
        let c_f32 = match (t, c.dtype()) {
            (_, DType::F32) => 1i32,
            (DType::Bf16, DType::Bf16) => 0,
            (_, got) => return Err(Error::DType { op: OP, arg: "gradient", expected: DType::F32, got }),
        };
        let (m_i, n_i, k_i) = (int("M", m)?, int("N", n)?, int("K", k)?);
        let (lda, ldb) = (int("lda", a.1)?, int("ldb", b.1)?);
        let (a_k, b_k) = (i32::from(a.2), i32::from(b.2));
        let acc = i32::from(accumulate);
        let vec = i32::from(a.1 % 8 == 0 && b.1 % 8 == 0);
        let kernel = format!("matmul_bwd_{}", if bf16_path { "bf16" } else { "f32" });
        let f = dev.function("matmul", &kernel)?;
        if !bf16_path {
            let cfg = gemm_config(m, n, SIMT_TILE, 1)?;
            let mut launch = dev.stream().launch_builder(&f);
            launch.arg(c.cuda_slice_mut::<f32>()?).arg(&acc).arg(a.0.cuda_slice::<f32>()?).arg(&lda).arg(&a_k);
            launch.arg(b.0.cuda_slice::<f32>()?).arg(&ldb).arg(&b_k).arg(&m_i).arg(&n_i).arg(&k_i);
            // SAFETY: matches matmul.cu `matmul_bwd_f32(float* c, int accumulate, const float* a,
            // int lda, int a_kmajor, const float* b, int ldb, int b_kmajor, int M, int N, int K)`;
            // the callers pass operands whose extents match (m, n, k) and the leading dimensions
            // given (shapes checked by matmul_backward).
            unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
            return Ok(());
        }
        allow_tc_smem(dev, &f, &kernel)?;
        let (splits, chunk) = split_k(m, n, k);
        let chunk_i = int("k per split", chunk)?;
        let cfg = gemm_config(m, n, TC_TILE, splits)?;
        if splits == 1 {
            let mut launch = dev.stream().launch_builder(&f);
            match c.dtype() {
                DType::F32 => launch.arg(c.cuda_slice_mut::<f32>()?),
                _ => launch.arg(c.cuda_slice_mut::<bf16>()?),
            };
            launch.arg(&c_f32).arg(&acc).arg(a.0.cuda_slice::<bf16>()?).arg(&lda).arg(&a_k);
            launch.arg(b.0.cuda_slice::<bf16>()?).arg(&ldb).arg(&b_k).arg(&m_i).arg(&n_i).arg(&k_i).arg(&chunk_i).arg(&vec);
            // SAFETY: matches matmul.cu `matmul_bwd_bf16(void* c, int c_f32, int accumulate,
            // const bf16* a, int lda, int a_kmajor, const bf16* b, int ldb, int b_kmajor, int M,
            // int N, int K, int kchunk, int vec)`; c_f32 says which element type c is; one split
            // (gridDim.z = 1, kchunk >= K); the callers pass operands whose extents match
            // (m, n, k) and the leading dimensions given (shapes checked by matmul_backward).
            unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
            return Ok(());
        }
        // Split-K: fp32 partials (splits, m, n) from the pool, every element written by its
        // split (stored, not added), then summed in order into c.
        let mut partial = Tensor::try_empty(dev.device(), DType::F32, &[splits, m, n])?;
        let (one, zero) = (1i32, 0i32);
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(partial.cuda_slice_mut::<f32>()?).arg(&one).arg(&zero).arg(a.0.cuda_slice::<bf16>()?).arg(&lda).arg(&a_k);
        launch.arg(b.0.cuda_slice::<bf16>()?).arg(&ldb).arg(&b_k).arg(&m_i).arg(&n_i).arg(&k_i).arg(&chunk_i).arg(&vec);
        // SAFETY: as above, with c = the (splits, M, N) fp32 partials (c_f32 = 1, accumulate = 0):
        // block z writes every element of partial z for k in [z chunk, (z + 1) chunk) and
        // splits * chunk >= K > (splits - 1) * chunk, so no split is empty.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;

        let reduce = "matmul_split_reduce";
        let f = dev.function("matmul", reduce)?;
        let (mn, splits_i) = ((m * n) as i64, int("splits", splits)?);
        let mut launch = dev.stream().launch_builder(&f);
        match c.dtype() {
            DType::F32 => launch.arg(c.cuda_slice_mut::<f32>()?),
            _ => launch.arg(c.cuda_slice_mut::<bf16>()?),
        };
        launch.arg(&c_f32).arg(&acc).arg(partial.cuda_slice::<f32>()?).arg(&mn).arg(&splits_i);
        let grid = (m * n).div_ceil(256);
        // SAFETY: matches `matmul_split_reduce(void* c, int c_f32, int accumulate, const float* partial,
        // long MN, int splits)`; c holds M*N elements of the type c_f32 names, partial splits*M*N
        // floats, all written above; threads past MN return.
        unsafe { launch.launch(LaunchConfig { grid_dim: (int("grid", grid)? as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }
            .map_err(dev.launch_error(reduce))?;
        Ok(())
    }

    fn bias_backward(dev: &CudaDevice, t: DType, dbias: &mut Tensor, dout: &Tensor, m: usize, n: usize) -> Result<()> {
        let (m_i, n_i, rows_i) = (int("rows", m)?, int("OC", n)?, BIAS_ROWS as i32);
        let chunks = m.div_ceil(BIAS_ROWS);
        if chunks > 65535 {
            return Err(Error::Invalid { op: OP, msg: format!("{m} rows need {chunks} bias-gradient blocks (max 65535)") });
        }
        let d_f32 = match (t, dbias.dtype()) {
            (_, DType::F32) => 1i32,
            (DType::Bf16, DType::Bf16) => 0,
            (_, got) => return Err(Error::DType { op: OP, arg: "dbias", expected: DType::F32, got }),
        };
        // per-chunk column sums, every element written by pass 1
        let mut partial = Tensor::try_empty(dev.device(), DType::F32, &[chunks, n])?;
        let kernel = format!("matmul_bias_partial_{}", if t == DType::Bf16 { "bf16" } else { "f32" });
        let f = dev.function("matmul", &kernel)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(partial.cuda_slice_mut::<f32>()?);
        match t {
            DType::Bf16 => launch.arg(dout.cuda_slice::<bf16>()?),
            _ => launch.arg(dout.cuda_slice::<f32>()?),
        };
        launch.arg(&m_i).arg(&n_i).arg(&rows_i);
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(32) as u32, chunks as u32, 1), block_dim: (32, 16, 1), shared_mem_bytes: 0 };
        // SAFETY: matches matmul.cu `matmul_bias_partial_<T>(float* partial, const T* dout, int M, int N,
        // int rows)`; dout holds M*N elements of the input dtype, partial ceil(M/rows)*N floats; the
        // grid covers N in blocks of 32 columns and M in chunks of `rows`, block (32, 16).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;

        let reduce = "matmul_bias_reduce";
        let f = dev.function("matmul", reduce)?;
        let chunks_i = chunks as i32;
        let mut launch = dev.stream().launch_builder(&f);
        match dbias.dtype() {
            DType::F32 => launch.arg(dbias.cuda_slice_mut::<f32>()?),
            _ => launch.arg(dbias.cuda_slice_mut::<bf16>()?),
        };
        launch.arg(&d_f32).arg(partial.cuda_slice::<f32>()?).arg(&n_i).arg(&chunks_i);
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `matmul_bias_reduce(void* dbias, int dbias_f32, const float* partial, int N,
        // int chunks)`; dbias holds N elements of the type d_f32 names, partial chunks*N floats
        // written above; threads past N return.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(reduce))?;
        Ok(())
    }
}
