//! Token embedding, plus a learned position embedding when there is one (GPT-2 has one;
//! Llama has none, its positions come from RoPE).
//!
//! ```text
//! forward:  out[b,t,:] = wte[tokens[b,t],:] (+ wpe[t,:])          out (B,T,C)
//! backward: dwte[tokens[b,t],:] += dout[b,t,:]; (dwpe[t,:] += sum_b dout[b,t,:])
//! ```
//!
//! Parameter gradients accumulate; token ids have no gradient.

use super::{expect_dtype, same_device};
use crate::{DType, Device, Error, Result, Tensor};

const OP_FWD: &str = "embedding_forward";
const OP_BWD: &str = "embedding_backward";

/// tokens (B,T) u32, wte (V,C), wpe (maxT,C) or `None` (no learned positions) -> out (B,T,C).
/// Errors on a token id >= V.
pub fn embedding_forward(out: &mut Tensor, tokens: &Tensor, wte: &Tensor, wpe: Option<&Tensor>) -> Result<()> {
    let (b, t, c) = check(OP_FWD, tokens, wte, wpe)?;
    out.expect_shape(OP_FWD, "out", &[b, t, c])?;
    let mut all = vec![&*out, tokens, wte];
    all.extend(wpe);
    match same_device(OP_FWD, &all)? {
        Device::Cuda(_) => cuda::embedding_forward(out, tokens, wte, wpe, b, t, c),
        Device::Cpu => {
            let wpe = wpe.map(Tensor::f32).transpose()?;
            cpu::embedding_forward(out.f32_mut()?, tokens.u32()?, wte.f32()?, wpe, t, c)
        }
    }
}

/// dout (B,T,C) -> dwte (V,C) +=, dwpe (maxT,C) += (when there is a position table).
pub fn embedding_backward(dwte: &mut Tensor, mut dwpe: Option<&mut Tensor>, dout: &Tensor, tokens: &Tensor) -> Result<()> {
    let (b, t, c) = check(OP_BWD, tokens, dwte, dwpe.as_deref())?;
    dout.expect_shape(OP_BWD, "dout", &[b, t, c])?;
    let mut all = vec![&*dwte, dout, tokens];
    all.extend(dwpe.as_deref());
    match same_device(OP_BWD, &all)? {
        Device::Cuda(_) => cuda::embedding_backward(dwte, dwpe, dout, tokens, b, t, c),
        Device::Cpu => {
            let dwpe = dwpe.as_mut().map(|d| d.f32_mut()).transpose()?;
            cpu::embedding_backward(dwte.f32_mut()?, dwpe, dout.f32()?, tokens.u32()?, t, c)
        }
    }
}

fn check(op: &'static str, tokens: &Tensor, wte: &Tensor, wpe: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    expect_dtype(op, "tokens", tokens, DType::U32)?;
    let &[b, t] = tokens.shape() else {
        return Err(Error::Invalid { op, msg: format!("tokens must be (B,T), got {:?}", tokens.shape()) });
    };
    let &[_, c] = wte.shape() else {
        return Err(Error::Invalid { op, msg: format!("wte must be (V,C), got {:?}", wte.shape()) });
    };
    let Some(wpe) = wpe else { return Ok((b, t, c)) };
    let &[max_t, c2] = wpe.shape() else {
        return Err(Error::Invalid { op, msg: format!("wpe must be (maxT,C), got {:?}", wpe.shape()) });
    };
    if c2 != c || t > max_t {
        return Err(Error::Shape { op, arg: "wpe", expected: vec![t.max(max_t), c], got: vec![max_t, c2] });
    }
    Ok((b, t, c))
}

pub mod cpu {
    //! The reference: forward rows in parallel, backward sequential (a deterministic sum).
    use rayon::prelude::*;

    use crate::{Error, Result};

    /// [`super::embedding_forward`] on host slices: out (B*T*C), tokens (B*T), wte (V*C),
    /// wpe (maxT*C) or `None`.
    pub fn embedding_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: Option<&[f32]>, t: usize, c: usize) -> Result<()> {
        let v = wte.len() / c;
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= v) {
            return Err(Error::Invalid {
                op: "embedding_forward",
                msg: format!("token id {bad} is outside the vocabulary (size {v})"),
            });
        }
        out.par_chunks_mut(c).zip(tokens.par_iter()).enumerate().for_each(|(row, (o, &id))| {
            let te = &wte[id as usize * c..][..c];
            match wpe {
                Some(wpe) => {
                    let pe = &wpe[(row % t) * c..][..c];
                    for i in 0..c {
                        o[i] = te[i] + pe[i];
                    }
                }
                None => o.copy_from_slice(te),
            }
        });
        Ok(())
    }

    /// [`super::embedding_backward`] on host slices: dwte (V*C), dwpe (maxT*C) or `None`,
    /// dout (B*T*C), tokens (B*T).
    pub fn embedding_backward(
        dwte: &mut [f32],
        mut dwpe: Option<&mut [f32]>,
        dout: &[f32],
        tokens: &[u32],
        t: usize,
        c: usize,
    ) -> Result<()> {
        // Sequential over rows: the scatter into dwte has collisions (repeated tokens), and a
        // fixed order keeps the sum deterministic. It is O(B*T*C), negligible next to matmuls.
        for (row, (d, &id)) in dout.chunks(c).zip(tokens).enumerate() {
            let te = &mut dwte[id as usize * c..][..c];
            for i in 0..c {
                te[i] += d[i];
            }
            if let Some(dwpe) = dwpe.as_deref_mut() {
                let pe = &mut dwpe[(row % t) * c..][..c];
                for i in 0..c {
                    pe[i] += d[i];
                }
            }
        }
        Ok(())
    }
}

pub mod cuda {
    //! Launchers for kernels/cuda/embedding.cu: tokens u32; wte, wpe, out, dout f32 or bf16.
    use crate::cuda::{self as cu, CudaElement, LaunchConfig, PushKernelArg};
    use crate::ops::expect_dtype;
    use crate::{DType, Error, Result, Tensor};

    const OP_FWD: &str = "embedding_forward";
    const OP_BWD: &str = "embedding_backward";
    const BLOCK: u32 = 256;
    /// embedding_bwd_place: 4 warps per block, 256 token ids per warp (PLACE_WARPS, PLACE_SLICE).
    const PLACE_TOKENS_PER_BLOCK: usize = 4 * 256;

    fn device_of(op: &'static str, t: &Tensor) -> Result<std::sync::Arc<cu::CudaDevice>> {
        crate::ops::cuda_device(op, t)
    }

    /// (N = B*T, V) within the kernels' integer ranges.
    fn ranges(op: &'static str, b: usize, t: usize, c: usize, v: usize) -> Result<()> {
        let n = b * t;
        if n >= i32::MAX as usize || v >= u32::MAX as usize - 1 || c > i32::MAX as usize || b > i32::MAX as usize {
            return Err(Error::Invalid { op, msg: format!("B*T = {n}, V = {v}, C = {c} exceed the kernels' 32-bit ranges") });
        }
        Ok(())
    }

    /// tokens (B,T) -> out (B,T,C) = `wte[tokens]` (+ `wpe[t]`). A token id >= V gives a NaN row
    /// (the CPU reference returns an error; checking here would need a device-to-host copy).
    pub fn embedding_forward(
        out: &mut Tensor,
        tokens: &Tensor,
        wte: &Tensor,
        wpe: Option<&Tensor>,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        expect_dtype(OP_FWD, "out", out, wte.dtype())?;
        if let Some(wpe) = wpe {
            expect_dtype(OP_FWD, "wpe", wpe, wte.dtype())?;
        }
        dispatch_float!(wte.dtype(), OP_FWD, "wte", forward(out, tokens, wte, wpe, b, t, c))
    }

    fn forward<T: CudaElement>(
        out: &mut Tensor,
        tokens: &Tensor,
        wte: &Tensor,
        wpe: Option<&Tensor>,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let v = wte.shape()[0];
        ranges(OP_FWD, b, t, c, v)?;
        let dev = device_of(OP_FWD, wte)?;
        let n = b * t;
        let cfg = dev.grid_stride((n * c).div_ceil(16 / std::mem::size_of::<T>()), BLOCK)?;
        let (ti, ci, vu) = (t as i32, c as i32, v as u32);
        let Some(wpe) = wpe else {
            let kernel = format!("embedding_fwd_nopos_{}", T::NAME);
            let f = dev.function("embedding", &kernel)?;
            let mut launch = dev.stream().launch_builder(&f);
            launch.arg(out.cuda_slice_mut::<T>()?).arg(tokens.cuda_slice::<u32>()?).arg(wte.cuda_slice::<T>()?).arg(&n).arg(&ci).arg(&vu);
            // SAFETY: matches embedding.cu `embedding_fwd_nopos_<T>(T* out, const unsigned* tokens, const T* wte,
            // u64 N, int C, unsigned V)`; out (N,C), tokens (N), wte (V,C) checked by the caller.
            unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
            return Ok(());
        };
        let kernel = format!("embedding_fwd_{}", T::NAME);
        let f = dev.function("embedding", &kernel)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(out.cuda_slice_mut::<T>()?)
            .arg(tokens.cuda_slice::<u32>()?)
            .arg(wte.cuda_slice::<T>()?)
            .arg(wpe.cuda_slice::<T>()?)
            .arg(&n)
            .arg(&ti)
            .arg(&ci)
            .arg(&vu);
        // SAFETY: matches embedding.cu `embedding_fwd_<T>(T* out, const unsigned* tokens, const T* wte, const T* wpe,
        // u64 N, int T, int C, unsigned V)`; out (N,C), tokens (N), wte (V,C), wpe (>=T,C) checked by the caller.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    /// dwte (V,C) +=, dwpe (maxT,C) += (when there is one) from dout (B,T,C); deterministic
    /// (see embedding.cu).
    /// Token ids >= V are skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn embedding_backward(
        dwte: &mut Tensor,
        dwpe: Option<&mut Tensor>,
        dout: &Tensor,
        tokens: &Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        if let Some(dwpe) = dwpe.as_deref() {
            expect_dtype(OP_BWD, "dwpe", dwpe, dwte.dtype())?;
        }
        expect_dtype(OP_BWD, "dout", dout, dwte.dtype())?;
        dispatch_float!(dwte.dtype(), OP_BWD, "dwte", backward(dwte, dwpe, dout, tokens, b, t, c))
    }

    fn backward<T: CudaElement>(
        dwte: &mut Tensor,
        dwpe: Option<&mut Tensor>,
        dout: &Tensor,
        tokens: &Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let v = dwte.shape()[0];
        ranges(OP_BWD, b, t, c, v)?;
        let n = b * t;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let dev = device_of(OP_BWD, dout)?;
        let pack = 16 / std::mem::size_of::<T>();
        let (bi, ti, ci, vu) = (b as i32, t as i32, c as i32, v as u32);

        // Scratch for dwte's counting sort, from the pool, so the budget sees it and steps reuse
        // it; taken before the first launch, so a refusal (OutOfMemory) leaves both gradients
        // untouched. offsets is cleared (a memset on the stream: step 1 counts into it); sorted
        // is not, as step 4 reads only sorted[0 .. offsets[V]), which step 3 writes.
        let mut offsets_t = Tensor::try_zeros(dev.device(), DType::U32, &[v + 1])?;
        let mut sorted_t = Tensor::try_empty(dev.device(), DType::U32, &[n])?;
        let offsets = offsets_t.cuda_slice_mut::<u32>()?;
        let sorted = sorted_t.cuda_slice_mut::<u32>()?;
        let toks = tokens.cuda_slice::<u32>()?;

        // dwpe: one thread per (t, pack of columns), b in order
        if let Some(dwpe) = dwpe {
            let kernel = format!("embedding_bwd_dwpe_{}", T::NAME);
            let f = dev.function("embedding", &kernel)?;
            let cfg = dev.grid_stride((t * c).div_ceil(pack), BLOCK)?;
            let mut launch = dev.stream().launch_builder(&f);
            launch.arg(dwpe.cuda_slice_mut::<T>()?).arg(dout.cuda_slice::<T>()?).arg(&bi).arg(&ti).arg(&ci);
            // SAFETY: matches embedding.cu `embedding_bwd_dwpe_<T>(T* dwpe, const T* dout, int B, int T, int C)`;
            // dwpe holds >= T*C elements, dout B*T*C.
            unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        }

        // dwte: stable counting sort of positions by token, then one in-order owner per token.
        let f = dev.function("embedding", "embedding_bwd_count")?;
        let cfg = dev.grid_stride(n, BLOCK)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(&mut *offsets).arg(toks).arg(&n).arg(&vu);
        // SAFETY: matches embedding.cu `embedding_bwd_count(unsigned* offsets, const unsigned* tokens, u64 N,
        // unsigned V)`; offsets holds V+1 zeroed counters, tokens N ids.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error("embedding_bwd_count"))?;

        let f = dev.function("embedding", "embedding_bwd_scan")?;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(&mut *offsets).arg(&vu);
        // SAFETY: matches embedding.cu `embedding_bwd_scan(unsigned* offsets, unsigned V)`; offsets holds V+1;
        // one block of 1024 threads.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error("embedding_bwd_scan"))?;

        let f = dev.function("embedding", "embedding_bwd_place")?;
        let cfg = LaunchConfig {
            grid_dim: (v.div_ceil(PLACE_TOKENS_PER_BLOCK) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(&mut *sorted).arg(&*offsets).arg(toks).arg(&n).arg(&vu);
        // SAFETY: matches embedding.cu `embedding_bwd_place(unsigned* sorted, const unsigned* offsets,
        // const unsigned* tokens, u64 N, unsigned V)`; sorted holds N, offsets V+1; 128 threads = 4 warps per
        // block and ceil(V / 1024) blocks, as the kernel's slices assume.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error("embedding_bwd_place"))?;

        let kernel = format!("embedding_bwd_dwte_{}", T::NAME);
        let f = dev.function("embedding", &kernel)?;
        let packs = c.div_ceil(pack);
        let block = packs.div_ceil(32).clamp(1, 4) * 32;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, packs.div_ceil(block) as u32, 1),
            block_dim: (block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(dwte.cuda_slice_mut::<T>()?)
            .arg(dout.cuda_slice::<T>()?)
            .arg(&*sorted)
            .arg(&*offsets)
            .arg(toks)
            .arg(&ci)
            .arg(&vu);
        // SAFETY: matches embedding.cu `embedding_bwd_dwte_<T>(T* dwte, const T* dout, const unsigned* sorted,
        // const unsigned* offsets, const unsigned* tokens, int C, unsigned V)`; grid (N, ceil(ceil(C/P)/block))
        // with P = 16 / sizeof(T), dwte (V,C), dout (N,C), sorted N, offsets V+1.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
