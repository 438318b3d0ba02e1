//! RMSNorm over the last dimension C (Llama): no mean subtraction, no bias.
//!
//! forward:  rstd = 1 / sqrt(mean(x^2) + eps) per row; out = x * rstd * weight     out (N,C)
//! backward: g = dout * weight, xhat = x * rstd;
//!           dinp = rstd * (g - xhat * mean(g * xhat))                              (overwrites)
//!           dweight += sum_rows dout * xhat                                         (accumulates)
//! rstd (N, f32) is saved for the backward. On CUDA the activations are f32 or bf16 (fp32
//! math), the weight gradient f32 or the activations' dtype, summed in a fixed order.

use super::{rows_cols, same_device};
use crate::{Device, Error, Result, Tensor};

const OP_FWD: &str = "rmsnorm_forward";
const OP_BWD: &str = "rmsnorm_backward";

fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::Invalid { op, msg: format!("eps must be a positive finite number, got {eps}") });
    }
    Ok(())
}

/// inp (...,C), weight (C) -> out (...,C), rstd (N).
pub fn rmsnorm_forward(out: &mut Tensor, rstd: &mut Tensor, inp: &Tensor, weight: &Tensor, eps: f32) -> Result<()> {
    let (n, c) = rows_cols(inp);
    check_eps(OP_FWD, eps)?;
    out.expect_shape(OP_FWD, "out", inp.shape())?;
    rstd.expect_shape(OP_FWD, "rstd", &[n])?;
    weight.expect_shape(OP_FWD, "weight", &[c])?;
    match same_device(OP_FWD, &[out, rstd, inp, weight])? {
        Device::Cuda(_) => cuda::rmsnorm_forward(out, rstd, inp, weight, eps),
        Device::Cpu => {
            cpu::rmsnorm_forward(out.f32_mut()?, rstd.f32_mut()?, inp.f32()?, weight.f32()?, eps);
            Ok(())
        }
    }
}

/// dinp (...,C) overwritten, dweight (C) accumulated, from dout (...,C), the forward's input,
/// weight and saved rstd (N).
pub fn rmsnorm_backward(dinp: &mut Tensor, dweight: &mut Tensor, dout: &Tensor, inp: &Tensor, weight: &Tensor, rstd: &Tensor) -> Result<()> {
    let (n, c) = rows_cols(inp);
    dinp.expect_shape(OP_BWD, "dinp", inp.shape())?;
    dout.expect_shape(OP_BWD, "dout", inp.shape())?;
    dweight.expect_shape(OP_BWD, "dweight", &[c])?;
    weight.expect_shape(OP_BWD, "weight", &[c])?;
    rstd.expect_shape(OP_BWD, "rstd", &[n])?;
    match same_device(OP_BWD, &[dinp, dweight, dout, inp, weight, rstd])? {
        Device::Cuda(_) => cuda::rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd),
        Device::Cpu => {
            cpu::rmsnorm_backward(dinp.f32_mut()?, dweight.f32_mut()?, dout.f32()?, inp.f32()?, weight.f32()?, rstd.f32()?);
            Ok(())
        }
    }
}

pub mod cpu {
    //! The reference: one row at a time, rows in parallel; dweight summed over fixed row
    //! chunks added in order (deterministic).
    use rayon::prelude::*;

    use crate::ops::cpu_math::{multiversion, sum_by};
    use crate::ops::cpu_util::{reduce_rows_into, SendPtr};

    multiversion! {
        /// One row: normalizes x into o, returns rstd.
        fn forward_row(o: &mut [f32], x: &[f32], weight: &[f32], eps: f32) -> f32 {
            let c = x.len();
            let (o, weight) = (&mut o[..c], &weight[..c]);
            let ms = sum_by(c, |i| x[i] * x[i]) / c as f32;
            let rs = 1.0 / (ms + eps).sqrt();
            for i in 0..c {
                o[i] = x[i] * rs * weight[i];
            }
            rs
        }
    }

    multiversion! {
        /// One row of dinp (overwritten).
        fn backward_row(di: &mut [f32], d: &[f32], x: &[f32], weight: &[f32], rs: f32) {
            let c = x.len();
            let (di, d, weight) = (&mut di[..c], &d[..c], &weight[..c]);
            let dot = sum_by(c, |i| d[i] * weight[i] * x[i] * rs) / c as f32;
            for i in 0..c {
                di[i] = rs * (d[i] * weight[i] - x[i] * rs * dot);
            }
        }
    }

    /// [`super::rmsnorm_forward`] on host slices (N*C, N, N*C, C).
    pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], inp: &[f32], weight: &[f32], eps: f32) {
        let c = weight.len();
        if c == 0 {
            rstd.fill(1.0 / eps.sqrt());
            return;
        }
        out.par_chunks_mut(c).zip(inp.par_chunks(c)).zip(rstd.par_iter_mut()).for_each(|((o, x), r)| *r = forward_row(o, x, weight, eps));
    }

    /// [`super::rmsnorm_backward`] on host slices; dweight accumulates.
    pub fn rmsnorm_backward(dinp: &mut [f32], dweight: &mut [f32], dout: &[f32], inp: &[f32], weight: &[f32], rstd: &[f32]) {
        let c = weight.len();
        let rows = rstd.len();
        if c == 0 {
            return;
        }
        let dinp_ptr = SendPtr(dinp.as_mut_ptr());
        let mut acc = vec![0.0f32; c];
        reduce_rows_into(&mut acc, rows, |row, partial| {
            let x = &inp[row * c..][..c];
            let d = &dout[row * c..][..c];
            let rs = rstd[row];
            // SAFETY: row `row` of dinp (rows * c elements) is written by this call only.
            let di = unsafe { std::slice::from_raw_parts_mut(dinp_ptr.get().add(row * c), c) };
            backward_row(di, d, x, weight, rs);
            for i in 0..c {
                partial[i] += d[i] * x[i] * rs;
            }
        });
        for (w, a) in dweight.iter_mut().zip(&acc) {
            *w += a;
        }
    }
}

pub mod cuda {
    //! Launchers for kernels/cuda/rmsnorm.cu: a warp per row (8 rows per 256-thread block)
    //! for the forward and dinp; dweight in two passes (256-row chunks of 32 columns, then
    //! the chunks in order).
    use crate::cuda::{CudaElement, LaunchConfig, PushKernelArg};
    use crate::ops::{cuda_device, expect_dtype, kernel_int, rows_cols};
    use crate::{DType, Error, Result, Tensor};

    const OP: &str = "rmsnorm (cuda)";
    const ROWS_PER_BLOCK: usize = 8;
    const DW_ROWS: usize = 256;

    fn rows_cfg(n: usize) -> Result<LaunchConfig> {
        let blocks = kernel_int(OP, "row blocks", n.div_ceil(ROWS_PER_BLOCK))?;
        Ok(LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
    }

    /// [`super::rmsnorm_forward`] on CUDA tensors (f32 or bf16 activations, f32 rstd).
    pub fn rmsnorm_forward(out: &mut Tensor, rstd: &mut Tensor, inp: &Tensor, weight: &Tensor, eps: f32) -> Result<()> {
        expect_dtype(OP, "out", out, inp.dtype())?;
        expect_dtype(OP, "weight", weight, inp.dtype())?;
        expect_dtype(OP, "rstd", rstd, DType::F32)?;
        dispatch_float!(inp.dtype(), OP, "inp", forward(out, rstd, inp, weight, eps))
    }

    fn forward<T: CudaElement>(out: &mut Tensor, rstd: &mut Tensor, inp: &Tensor, weight: &Tensor, eps: f32) -> Result<()> {
        let (n, c) = rows_cols(inp);
        if n == 0 {
            return Ok(());
        }
        let dev = cuda_device(OP, inp)?;
        let (n_i, c_i) = (kernel_int(OP, "rows", n)?, kernel_int(OP, "C", c)?);
        kernel_int(OP, "N*C", n * c)?;
        let kernel = format!("rmsnorm_fwd_{}", T::NAME);
        let f = dev.function("rmsnorm", &kernel)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<T>()?).arg(rstd.cuda_slice_mut::<f32>()?).arg(inp.cuda_slice::<T>()?).arg(weight.cuda_slice::<T>()?);
        launch.arg(&n_i).arg(&c_i).arg(&eps);
        // SAFETY: matches rmsnorm.cu `rmsnorm_fwd_<T>(T* out, float* rstd, const T* inp, const T* weight,
        // int N, int C, float eps)`; out/inp hold N*C elements, rstd N, weight C (checked by the
        // caller); one warp per row, rows past N return.
        unsafe { launch.launch(rows_cfg(n)?) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    /// [`super::rmsnorm_backward`] on CUDA tensors (dweight f32 or the activations' dtype).
    pub fn rmsnorm_backward(dinp: &mut Tensor, dweight: &mut Tensor, dout: &Tensor, inp: &Tensor, weight: &Tensor, rstd: &Tensor) -> Result<()> {
        for (arg, t) in [("dinp", &*dinp), ("dout", dout), ("weight", weight)] {
            expect_dtype(OP, arg, t, inp.dtype())?;
        }
        expect_dtype(OP, "rstd", rstd, DType::F32)?;
        if dweight.dtype() != DType::F32 && dweight.dtype() != inp.dtype() {
            return Err(Error::DType { op: OP, arg: "dweight", expected: DType::F32, got: dweight.dtype() });
        }
        dispatch_float!(inp.dtype(), OP, "inp", backward(dinp, dweight, dout, inp, weight, rstd))
    }

    fn backward<T: CudaElement>(dinp: &mut Tensor, dweight: &mut Tensor, dout: &Tensor, inp: &Tensor, weight: &Tensor, rstd: &Tensor) -> Result<()> {
        let (n, c) = rows_cols(inp);
        if n == 0 || c == 0 {
            return Ok(());
        }
        let dev = cuda_device(OP, inp)?;
        let (n_i, c_i) = (kernel_int(OP, "rows", n)?, kernel_int(OP, "C", c)?);
        kernel_int(OP, "N*C", n * c)?;
        let kernel = format!("rmsnorm_bwd_{}", T::NAME);
        let f = dev.function("rmsnorm", &kernel)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(dinp.cuda_slice_mut::<T>()?).arg(dout.cuda_slice::<T>()?).arg(inp.cuda_slice::<T>()?);
        launch.arg(weight.cuda_slice::<T>()?).arg(rstd.cuda_slice::<f32>()?).arg(&n_i).arg(&c_i);
        // SAFETY: matches `rmsnorm_bwd_<T>(T* dinp, const T* dout, const T* inp, const T* weight,
        // const float* rstd, int N, int C)`; shapes checked by the caller; a warp per row.
        unsafe { launch.launch(rows_cfg(n)?) }.map_err(dev.launch_error(&kernel))?;

        // dweight: per-chunk column sums (every element written), then the chunks in order
        let chunks = n.div_ceil(DW_ROWS);
        if chunks > 65535 {
            return Err(Error::Invalid { op: OP, msg: format!("{n} rows need {chunks} weight-gradient blocks (max 65535)") });
        }
        let mut partial = Tensor::try_empty(dev.device(), DType::F32, &[chunks, c])?;
        let kernel = format!("rmsnorm_dweight_partial_{}", T::NAME);
        let f = dev.function("rmsnorm", &kernel)?;
        let rows_i = DW_ROWS as i32;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(partial.cuda_slice_mut::<f32>()?).arg(dout.cuda_slice::<T>()?).arg(inp.cuda_slice::<T>()?).arg(rstd.cuda_slice::<f32>()?);
        launch.arg(&n_i).arg(&c_i).arg(&rows_i);
        let cfg = LaunchConfig { grid_dim: (c.div_ceil(32) as u32, chunks as u32, 1), block_dim: (32, 16, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `rmsnorm_dweight_partial_<T>(float* partial, const T* dout, const T* inp,
        // const float* rstd, int N, int C, int rows)`; partial holds ceil(N/rows)*C floats; the
        // grid covers C in blocks of 32 columns and N in chunks of `rows`, block (32, 16).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;

        let reduce = "rmsnorm_dweight_reduce";
        let f = dev.function("rmsnorm", reduce)?;
        let (chunks_i, dw_f32) = (chunks as i32, i32::from(dweight.dtype() == DType::F32));
        let mut launch = dev.stream().launch_builder(&f);
        match dweight.dtype() {
            DType::F32 => launch.arg(dweight.cuda_slice_mut::<f32>()?),
            _ => launch.arg(dweight.cuda_slice_mut::<half::bf16>()?),
        };
        launch.arg(&dw_f32).arg(partial.cuda_slice::<f32>()?).arg(&c_i).arg(&chunks_i);
        let cfg = LaunchConfig { grid_dim: (c.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `rmsnorm_dweight_reduce(void* dweight, int dweight_f32, const float* partial,
        // int C, int chunks)`; dweight holds C elements of the type dw_f32 names, partial chunks*C
        // floats written above; threads past C return.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(reduce))?;
        Ok(())
    }
}
