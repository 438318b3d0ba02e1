//! Grouped-query attention's key/value head sharing (Hugging Face's `repeat_kv`) on a fused
//! [q | k | v] row: NH query heads share KV key/value heads, G = NH / KV queries per group.
//!
//! ```text
//! forward:  inp (N, (NH + 2KV) HS) = [q | k | v];  out (N, 3 NH HS) = [q | k' | v']:
//!           q copied; k'[h] = k[h / G], v'[h] = v[h / G]  (head j copied to heads jG .. jG + G - 1)
//! backward: dq = dout's q;  dk[j] = sum over r = 0 .. G - 1 of dout's k'[jG + r], same for dv
//! ```
//!
//! The backward sums in f32 in order r = 0, 1, ..., starting from the r = 0 term:
//! deterministic and, for G = 1, an exact copy. dinp is overwritten (an activation gradient).
//!
//! HS is derived from the row width: (NH + 2KV) HS. KV = NH is plain multi-head attention (a
//! copy), KV = 1 multi-query attention.

use super::same_device;
use crate::{Device, Error, Result, Tensor};

const OP_FWD: &str = "kv_expand_forward";
const OP_BWD: &str = "kv_expand_backward";

/// HS from `inp` (..., (NH + 2KV) HS) and the head counts, checked.
fn head_size(op: &'static str, inp: &Tensor, n_head: usize, n_kv_head: usize) -> Result<usize> {
    if n_kv_head == 0 || n_head == 0 || !n_head.is_multiple_of(n_kv_head) {
        return Err(Error::Invalid {
            op,
            msg: format!("n_head ({n_head}) must be a positive multiple of n_kv_head ({n_kv_head}), and n_kv_head >= 1"),
        });
    }
    let (_, w) = super::rows_cols(inp);
    let heads = n_head + 2 * n_kv_head;
    if !w.is_multiple_of(heads) {
        return Err(Error::Invalid {
            op,
            msg: format!(
                "the last dimension of the fused rows ({w}) is not (n_head + 2 * n_kv_head) * HS = ({n_head} + 2 * {n_kv_head}) * HS"
            ),
        });
    }
    Ok(w / heads)
}

fn with_last(t: &Tensor, last: usize) -> Vec<usize> {
    let mut shape = t.shape().to_vec();
    if let Some(l) = shape.last_mut() {
        *l = last;
    }
    shape
}

/// out (..., 3 NH HS) = [q | k expanded | v expanded] from inp (..., (NH + 2KV) HS) =
/// [q heads | k heads | v heads]: q copied; k head j (and v head j) copied to heads
/// jG .. (j + 1)G - 1, G = NH / KV.
pub fn kv_expand_forward(out: &mut Tensor, inp: &Tensor, n_head: usize, n_kv_head: usize) -> Result<()> {
    let hs = head_size(OP_FWD, inp, n_head, n_kv_head)?;
    out.expect_shape(OP_FWD, "out", &with_last(inp, 3 * n_head * hs))?;
    match same_device(OP_FWD, &[out, inp])? {
        Device::Cuda(_) => cuda::kv_expand_forward(out, inp, n_head, n_kv_head),
        Device::Cpu => {
            cpu::kv_expand_forward(out.f32_mut()?, inp.f32()?, n_head, n_kv_head, hs);
            Ok(())
        }
    }
}

/// dinp (..., (NH + 2KV) HS) (overwritten) from dout (..., 3 NH HS): dq copied, dk head j =
/// the sum over r in 0..G of dout's k head jG + r (in f32, in order r = 0, 1, ...:
/// deterministic), the same for v.
pub fn kv_expand_backward(dinp: &mut Tensor, dout: &Tensor, n_head: usize, n_kv_head: usize) -> Result<()> {
    let hs = head_size(OP_BWD, dinp, n_head, n_kv_head)?;
    dout.expect_shape(OP_BWD, "dout", &with_last(dinp, 3 * n_head * hs))?;
    match same_device(OP_BWD, &[dinp, dout])? {
        Device::Cuda(_) => cuda::kv_expand_backward(dinp, dout, n_head, n_kv_head),
        Device::Cpu => {
            cpu::kv_expand_backward(dinp.f32_mut()?, dout.f32()?, n_head, n_kv_head, hs);
            Ok(())
        }
    }
}

pub mod cpu {
    //! The reference, rows in parallel.
    use rayon::prelude::*;

    /// [`super::kv_expand_forward`] on host slices (N * 3 NH HS, N * (NH + 2KV) HS).
    pub fn kv_expand_forward(out: &mut [f32], inp: &[f32], nh: usize, kv: usize, hs: usize) {
        let (w_in, w_out) = ((nh + 2 * kv) * hs, 3 * nh * hs);
        if w_in == 0 {
            return;
        }
        let g = nh / kv;
        out.par_chunks_mut(w_out).zip(inp.par_chunks(w_in)).for_each(|(o, x)| {
            let (q, kv_in) = x.split_at(nh * hs);
            o[..nh * hs].copy_from_slice(q);
            // part 0: k, part 1: v
            for part in 0..2 {
                let src = &kv_in[part * kv * hs..][..kv * hs];
                let dst = &mut o[(1 + part) * nh * hs..][..nh * hs];
                for h in 0..nh {
                    dst[h * hs..][..hs].copy_from_slice(&src[(h / g) * hs..][..hs]);
                }
            }
        });
    }

    /// [`super::kv_expand_backward`] on host slices (N * (NH + 2KV) HS, N * 3 NH HS).
    pub fn kv_expand_backward(dinp: &mut [f32], dout: &[f32], nh: usize, kv: usize, hs: usize) {
        let (w_in, w_out) = ((nh + 2 * kv) * hs, 3 * nh * hs);
        if w_in == 0 {
            return;
        }
        let g = nh / kv;
        dinp.par_chunks_mut(w_in).zip(dout.par_chunks(w_out)).for_each(|(di, d)| {
            let (dq, dkv) = di.split_at_mut(nh * hs);
            dq.copy_from_slice(&d[..nh * hs]);
            for part in 0..2 {
                let src = &d[(1 + part) * nh * hs..][..nh * hs];
                let dst = &mut dkv[part * kv * hs..][..kv * hs];
                for j in 0..kv {
                    let acc = &mut dst[j * hs..][..hs];
                    acc.copy_from_slice(&src[j * g * hs..][..hs]);
                    for r in 1..g {
                        for (a, &x) in acc.iter_mut().zip(&src[(j * g + r) * hs..][..hs]) {
                            *a += x;
                        }
                    }
                }
            }
        });
    }
}

pub mod cuda {
    //! Launchers for kernels/cuda/kv_expand.cu: grid-stride loops, a thread per output element
    //! (forward) or per input element (backward).
    use crate::cuda::{CudaElement, PushKernelArg};
    use crate::ops::{cuda_device, expect_dtype, rows_cols};
    use crate::{Result, Tensor};

    const OP: &str = "kv_expand (cuda)";
    const BLOCK: u32 = 256;

    /// [`super::kv_expand_forward`] on CUDA tensors (f32 or bf16).
    pub fn kv_expand_forward(out: &mut Tensor, inp: &Tensor, n_head: usize, n_kv_head: usize) -> Result<()> {
        expect_dtype(OP, "out", out, inp.dtype())?;
        dispatch_float!(inp.dtype(), OP, "inp", forward(out, inp, n_head, n_kv_head))
    }

    /// (N, NH, KV, HS) as the kernels' u64 arguments, from the fused (..., (NH + 2KV) HS) tensor.
    fn kernel_dims(fused: &Tensor, n_head: usize, n_kv_head: usize) -> (u64, u64, u64, u64) {
        let (n, w) = rows_cols(fused);
        (n as u64, n_head as u64, n_kv_head as u64, (w / (n_head + 2 * n_kv_head)) as u64)
    }

    fn forward<T: CudaElement>(out: &mut Tensor, inp: &Tensor, n_head: usize, n_kv_head: usize) -> Result<()> {
        let (n, nh, kv, hs) = kernel_dims(inp, n_head, n_kv_head);
        let total = n * 3 * nh * hs;
        if total == 0 {
            return Ok(());
        }
        let dev = cuda_device(OP, inp)?;
        let kernel = format!("kv_expand_fwd_{}", T::NAME);
        let f = dev.function("kv_expand", &kernel)?;
        let cfg = dev.grid_stride(total as usize, BLOCK)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out.cuda_slice_mut::<T>()?).arg(inp.cuda_slice::<T>()?).arg(&n).arg(&nh).arg(&kv).arg(&hs);
        // SAFETY: matches kv_expand.cu `kv_expand_fwd_<T>(T* out, const T* inp, u64 N, u64 NH, u64 KV, u64 HS)`;
        // out holds N*3*NH*HS elements, inp N*(NH+2KV)*HS, NH % KV == 0 (checked by the caller).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }

    /// [`super::kv_expand_backward`] on CUDA tensors (f32 or bf16; bf16 sums in f32, rounded once).
    pub fn kv_expand_backward(dinp: &mut Tensor, dout: &Tensor, n_head: usize, n_kv_head: usize) -> Result<()> {
        expect_dtype(OP, "dinp", dinp, dout.dtype())?;
        dispatch_float!(dout.dtype(), OP, "dout", backward(dinp, dout, n_head, n_kv_head))
    }

    fn backward<T: CudaElement>(dinp: &mut Tensor, dout: &Tensor, n_head: usize, n_kv_head: usize) -> Result<()> {
        let (n, nh, kv, hs) = kernel_dims(dinp, n_head, n_kv_head);
        let total = n * (nh + 2 * kv) * hs;
        if total == 0 {
            return Ok(());
        }
        let dev = cuda_device(OP, dout)?;
        let kernel = format!("kv_expand_bwd_{}", T::NAME);
        let f = dev.function("kv_expand", &kernel)?;
        let cfg = dev.grid_stride(total as usize, BLOCK)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(dinp.cuda_slice_mut::<T>()?).arg(dout.cuda_slice::<T>()?).arg(&n).arg(&nh).arg(&kv).arg(&hs);
        // SAFETY: matches kv_expand.cu `kv_expand_bwd_<T>(T* dinp, const T* dout, u64 N, u64 NH, u64 KV, u64 HS)`;
        // dinp holds N*(NH+2KV)*HS elements, dout N*3*NH*HS, NH % KV == 0 (checked by the caller).
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
