//! LayerNorm over the last dimension C, eps = 1e-5 (GPT-2).
//!
//! forward:  mean, rstd per row; out = (x - mean) * rstd * weight + bias     out (N,C)
//! backward: dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * weight
//!           dweight += sum_rows dout * norm; dbias += sum_rows dout
//! (dinp overwrites; parameter gradients accumulate). mean and rstd (N) are saved for backward.

use super::{rows_cols, same_device};
use crate::{Device, Result, Tensor};

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
        Device::Cuda(_) => cuda::layernorm_forward(out, mean, rstd, inp, weight, bias),
        Device::Cpu => {
            cpu::layernorm_forward(out.f32_mut()?, mean.f32_mut()?, rstd.f32_mut()?, inp.f32()?, weight.f32()?, bias.f32()?);
            Ok(())
        }
    }
}

/// The residual add fused with the LayerNorm that follows it (one pass over the row instead
/// of two): residual = a + b, then (out, mean, rstd) = layernorm(residual). Same result as
/// `residual_forward` then `layernorm_forward`, which is what the CPU runs. Its backward is
/// the two ops' backwards (`layernorm_backward` on `residual`, then `accumulate`).
#[allow(clippy::too_many_arguments)]
pub fn residual_layernorm_forward(
    residual: &mut Tensor,
    out: &mut Tensor,
    mean: &mut Tensor,
    rstd: &mut Tensor,
    a: &Tensor,
    b: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<()> {
    const OP: &str = "residual_layernorm_forward";
    let (n, c) = rows_cols(a);
    b.expect_shape(OP, "b", a.shape())?;
    residual.expect_shape(OP, "residual", a.shape())?;
    out.expect_shape(OP, "out", a.shape())?;
    mean.expect_shape(OP, "mean", &[n])?;
    rstd.expect_shape(OP, "rstd", &[n])?;
    weight.expect_shape(OP, "weight", &[c])?;
    bias.expect_shape(OP, "bias", &[c])?;
    match same_device(OP, &[residual, out, mean, rstd, a, b, weight, bias])? {
        Device::Cuda(_) => cuda::residual_layernorm_forward(residual, out, mean, rstd, a, b, weight, bias),
        Device::Cpu => {
            crate::ops::residual::cpu::residual_forward(residual.f32_mut()?, a.f32()?, b.f32()?);
            cpu::layernorm_forward(out.f32_mut()?, mean.f32_mut()?, rstd.f32_mut()?, residual.f32()?, weight.f32()?, bias.f32()?);
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
        Device::Cuda(_) => cuda::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd),
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
    use crate::ops::cpu_math::{sum_by, multiversion};
    use crate::ops::cpu_util::{reduce_rows_into, SendPtr};

    multiversion! {
        /// One row: normalizes x into o, returns (mean, rstd).
        fn forward_row(o: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32]) -> (f32, f32) {
            let c = x.len();
            // equal lengths, visible to the compiler: no bounds checks in the vector loops
            let (o, weight, bias) = (&mut o[..c], &weight[..c], &bias[..c]);
            let mu = sum_by(c, |i| x[i]) / c as f32;
            let var = sum_by(c, |i| (x[i] - mu) * (x[i] - mu)) / c as f32;
            let rs = 1.0 / (var + EPS).sqrt();
            for i in 0..c {
                o[i] = (x[i] - mu) * rs * weight[i] + bias[i];
            }
            (mu, rs)
        }
    }

    multiversion! {
        /// One row of dinp (overwritten).
        fn backward_row(di: &mut [f32], d: &[f32], x: &[f32], weight: &[f32], mu: f32, rs: f32) {
            let c = x.len();
            let (di, d, weight) = (&mut di[..c], &d[..c], &weight[..c]);
            let dnorm_mean = sum_by(c, |i| d[i] * weight[i]) / c as f32;
            let dnorm_norm_mean = sum_by(c, |i| d[i] * weight[i] * (x[i] - mu) * rs) / c as f32;
            for i in 0..c {
                let norm = (x[i] - mu) * rs;
                let dnorm = d[i] * weight[i];
                di[i] = rs * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
            }
        }
    }

    pub fn layernorm_forward(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], weight: &[f32], bias: &[f32]) {
        let c = weight.len();
        out.par_chunks_mut(c)
            .zip(inp.par_chunks(c))
            .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
            .for_each(|((o, x), (m, r))| (*m, *r) = forward_row(o, x, weight, bias));
    }

    multiversion! {
        /// One row's share of dweight (pw) and dbias (pb).
        fn accumulate_param_grads(pw: &mut [f32], pb: &mut [f32], d: &[f32], x: &[f32], mu: f32, rs: f32) {
            let c = x.len();
            let (pw, pb, d) = (&mut pw[..c], &mut pb[..c], &d[..c]);
            for i in 0..c {
                pw[i] += d[i] * (x[i] - mu) * rs;
                pb[i] += d[i];
            }
        }
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
        // One pass over the rows: each row's dinp, and its share of [dweight | dbias]
        // summed into fixed chunks of rows, added in chunk order (deterministic).
        let rows = mean.len();
        let dinp_ptr = SendPtr(dinp.as_mut_ptr());
        let mut acc = vec![0.0f32; 2 * c];
        reduce_rows_into(&mut acc, rows, |row, partial| {
            let x = &inp[row * c..][..c];
            let d = &dout[row * c..][..c];
            let (mu, rs) = (mean[row], rstd[row]);
            // SAFETY: row `row` of dinp (rows * c elements) is written by this call only.
            let di = unsafe { std::slice::from_raw_parts_mut(dinp_ptr.get().add(row * c), c) };
            backward_row(di, d, x, weight, mu, rs);
            let (pw, pb) = partial.split_at_mut(c);
            accumulate_param_grads(pw, pb, d, x, mu, rs);
        });
        for i in 0..c {
            dweight[i] += acc[i];
            dbias[i] += acc[c + i];
        }
    }
}

pub mod cuda {
    //! Launchers for kernels/cuda/layernorm.cu. Activations and parameters are f32 or bf16
    //! (all the same dtype); mean and rstd are always f32. The parameter gradients (dweight,
    //! dbias) are that dtype too, or f32 with bf16 activations (mixed precision's f32
    //! gradients): the backward's block partials are f32 either way, and the reduce kernel
    //! that adds them into the gradients is picked by the gradients' dtype.
    use crate::cuda::{self as cu, CudaElement, LaunchConfig, PushKernelArg};
    use crate::ops::{expect_dtype, rows_cols};
    use crate::{DType, Error, Result, Tensor};

    /// Forward: 8 warps per block, one row per warp.
    const FWD_BLOCK: u32 = 256;
    /// Backward: rows per block (partial sums per block, <= 64 = MAX_ROWS_PER_BLOCK in the .cu).
    const BWD_ROWS: usize = 32;
    const BWD_BLOCK: u32 = 256;

    fn device_of(t: &Tensor) -> Result<std::sync::Arc<cu::CudaDevice>> {
        crate::ops::cuda_device("layernorm", t)
    }

    fn check_c(op: &'static str, c: usize) -> Result<i32> {
        if c == 0 || c > i32::MAX as usize {
            return Err(Error::Invalid { op, msg: format!("C = {c} must be in 1..=i32::MAX") });
        }
        Ok(c as i32)
    }

    fn fwd_config(dev: &cu::CudaDevice, n: usize) -> Result<LaunchConfig> {
        // grid_stride counts threads; one row needs a warp
        dev.grid_stride(n.max(1) * 32, FWD_BLOCK)
    }

    pub fn layernorm_forward(
        out: &mut Tensor,
        mean: &mut Tensor,
        rstd: &mut Tensor,
        inp: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<()> {
        let op = "layernorm_forward";
        for (arg, t) in [("out", &*out), ("weight", weight), ("bias", bias)] {
            expect_dtype(op, arg, t, inp.dtype())?;
        }
        expect_dtype(op, "mean", mean, DType::F32)?;
        expect_dtype(op, "rstd", rstd, DType::F32)?;
        dispatch_float!(inp.dtype(), op, "inp", forward(out, mean, rstd, inp, weight, bias))
    }

    fn forward<T: CudaElement>(
        out: &mut Tensor,
        mean: &mut Tensor,
        rstd: &mut Tensor,
        inp: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<()> {
        let (n, c) = rows_cols(inp);
        let c = check_c("layernorm_forward", c)?;
        let dev = device_of(inp)?;
        let kernel = format!("layernorm_fwd_{}", T::NAME);
        let f = dev.function("layernorm", &kernel)?;
        let cfg = fwd_config(&dev, n)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(out.cuda_slice_mut::<T>()?)
            .arg(mean.cuda_slice_mut::<f32>()?)
            .arg(rstd.cuda_slice_mut::<f32>()?)
            .arg(inp.cuda_slice::<T>()?)
            .arg(weight.cuda_slice::<T>()?)
            .arg(bias.cuda_slice::<T>()?)
            .arg(&n)
            .arg(&c);
        // SAFETY: matches layernorm.cu `layernorm_fwd_<T>(T* out, float* mean, float* rstd, const T* inp,
        // const T* weight, const T* bias, u64 N, int C)`; shapes (N,C), (N), (C) checked by the caller; block = 256.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn residual_layernorm_forward(
        residual: &mut Tensor,
        out: &mut Tensor,
        mean: &mut Tensor,
        rstd: &mut Tensor,
        a: &Tensor,
        b: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<()> {
        let op = "residual_layernorm_forward";
        for (arg, t) in [("residual", &*residual), ("out", &*out), ("b", b), ("weight", weight), ("bias", bias)] {
            expect_dtype(op, arg, t, a.dtype())?;
        }
        expect_dtype(op, "mean", mean, DType::F32)?;
        expect_dtype(op, "rstd", rstd, DType::F32)?;
        dispatch_float!(a.dtype(), op, "a", fused_forward(residual, out, mean, rstd, a, b, weight, bias))
    }

    #[allow(clippy::too_many_arguments)]
    fn fused_forward<T: CudaElement>(
        residual: &mut Tensor,
        out: &mut Tensor,
        mean: &mut Tensor,
        rstd: &mut Tensor,
        a: &Tensor,
        b: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<()> {
        let (n, c) = rows_cols(a);
        let c = check_c("residual_layernorm_forward", c)?;
        let dev = device_of(a)?;
        let kernel = format!("residual_layernorm_fwd_{}", T::NAME);
        let f = dev.function("layernorm", &kernel)?;
        let cfg = fwd_config(&dev, n)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(residual.cuda_slice_mut::<T>()?)
            .arg(out.cuda_slice_mut::<T>()?)
            .arg(mean.cuda_slice_mut::<f32>()?)
            .arg(rstd.cuda_slice_mut::<f32>()?)
            .arg(a.cuda_slice::<T>()?)
            .arg(b.cuda_slice::<T>()?)
            .arg(weight.cuda_slice::<T>()?)
            .arg(bias.cuda_slice::<T>()?)
            .arg(&n)
            .arg(&c);
        // SAFETY: matches layernorm.cu `residual_layernorm_fwd_<T>(T* residual, T* out, float* mean, float* rstd,
        // const T* a, const T* b, const T* weight, const T* bias, u64 N, int C)`; shapes checked by the caller.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
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
        let op = "layernorm_backward";
        for (arg, t) in [("dinp", &*dinp), ("dout", dout), ("weight", weight)] {
            expect_dtype(op, arg, t, inp.dtype())?;
        }
        // f32 gradients are accepted with either activation dtype; bf16 ones only with bf16.
        let grad_dtype = if dweight.dtype() == DType::F32 { DType::F32 } else { inp.dtype() };
        expect_dtype(op, "dweight", dweight, grad_dtype)?;
        expect_dtype(op, "dbias", dbias, grad_dtype)?;
        expect_dtype(op, "mean", mean, DType::F32)?;
        expect_dtype(op, "rstd", rstd, DType::F32)?;
        dispatch_float!(inp.dtype(), op, "inp", backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd))
    }

    #[allow(clippy::too_many_arguments)]
    fn backward<T: CudaElement>(
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
        let ci = check_c("layernorm_backward", c)?;
        if n == 0 {
            return Ok(());
        }
        let dev = device_of(inp)?;
        let blocks = n.div_ceil(BWD_ROWS);
        if blocks > i32::MAX as usize {
            return Err(Error::Invalid { op: "layernorm_backward", msg: format!("{n} rows is too many") });
        }
        // Per-block [dweight | dbias] partial sums, fully overwritten by the first kernel, so
        // not cleared. Taken from the pool (and back when dropped, safe without a sync: the
        // next user queues on the same stream) so the budget sees it and steps reuse it.
        let mut partials = Tensor::try_empty(dev.device(), DType::F32, &[blocks * 2 * c])?;

        let kernel = format!("layernorm_bwd_{}", T::NAME);
        let f = dev.function("layernorm", &kernel)?;
        let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BWD_BLOCK, 1, 1), shared_mem_bytes: 0 };
        let rows = BWD_ROWS as i32;
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(dinp.cuda_slice_mut::<T>()?)
            .arg(partials.cuda_slice_mut::<f32>()?)
            .arg(dout.cuda_slice::<T>()?)
            .arg(inp.cuda_slice::<T>()?)
            .arg(weight.cuda_slice::<T>()?)
            .arg(mean.cuda_slice::<f32>()?)
            .arg(rstd.cuda_slice::<f32>()?)
            .arg(&n)
            .arg(&ci)
            .arg(&rows);
        // SAFETY: matches layernorm.cu `layernorm_bwd_<T>(T* dinp, float* partials, const T* dout, const T* inp,
        // const T* weight, const float* mean, const float* rstd, u64 N, int C, int R)`; grid = ceil(N/R) blocks
        // exactly, partials holds grid * 2C floats, R = 32 <= 64.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;

        let partials = partials.cuda_slice::<f32>()?;
        match dweight.dtype() {
            DType::F32 => reduce::<f32>(&dev, dweight, dbias, partials, blocks, ci),
            _ => reduce::<T>(&dev, dweight, dbias, partials, blocks, ci),
        }
    }

    /// dweight, dbias (G = their dtype) += the column sums of the per-block partials.
    fn reduce<G: CudaElement>(
        dev: &cu::CudaDevice,
        dweight: &mut Tensor,
        dbias: &mut Tensor,
        partials: &cu::CudaSlice<f32>,
        blocks: usize,
        ci: i32,
    ) -> Result<()> {
        let c = ci as usize;
        let kernel = format!("layernorm_bwd_reduce_{}", G::NAME);
        let f = dev.function("layernorm", &kernel)?;
        let cfg = LaunchConfig { grid_dim: ((2 * c).div_ceil(32) as u32, 1, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
        let nblocks = blocks as i32;
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(dweight.cuda_slice_mut::<G>()?)
            .arg(dbias.cuda_slice_mut::<G>()?)
            .arg(partials)
            .arg(&nblocks)
            .arg(&ci);
        // SAFETY: matches layernorm.cu `layernorm_bwd_reduce_<G>(G* dweight, G* dbias, const float* partials,
        // int nblocks, int C)` for G = f32 or bf16, the dtype of dweight and dbias (checked by
        // layernorm_backward); partials holds nblocks * 2C floats written by layernorm_bwd_<T>, which
        // does not depend on G; block (32, 8) as the kernel's shared array assumes, grid covers 2C columns.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
