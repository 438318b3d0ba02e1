//! cast: out = inp converted between f32 and bf16 (same shape, same device).
//! f32 -> bf16 rounds to nearest even (NaN stays NaN); bf16 -> f32 is exact; equal dtypes copy.
//! This is how fp32 master weights become the bf16 working copy after each optimizer step.
//! No backward of its own: mixed precision casts gradients back with the same op.

use crate::cuda;
use crate::{DType, Device, Error, Result, Tensor};

const OP: &str = "cast";

pub fn cast(out: &mut Tensor, inp: &Tensor) -> Result<()> {
    out.expect_shape(OP, "out", inp.shape())?;
    let device = super::same_device(OP, &[out, inp])?;
    match (device, inp.dtype(), out.dtype()) {
        (Device::Cpu, DType::F32, DType::Bf16) => cpu::cast_f32_bf16(out.bf16_mut()?, inp.f32()?),
        (Device::Cpu, DType::Bf16, DType::F32) => cpu::cast_bf16_f32(out.f32_mut()?, inp.bf16()?),
        (Device::Cuda(ordinal), DType::F32, DType::Bf16) => {
            gpu::cast_f32_bf16(&*cuda::device(ordinal)?, out.cuda_slice_mut()?, inp.cuda_slice()?)?
        }
        (Device::Cuda(ordinal), DType::Bf16, DType::F32) => {
            gpu::cast_bf16_f32(&*cuda::device(ordinal)?, out.cuda_slice_mut()?, inp.cuda_slice()?)?
        }
        (_, from, to) if from == to => *out = inp.clone(),
        (_, from, to) => {
            return Err(Error::Invalid { op: OP, msg: format!("no cast from {from} to {to} (f32 <-> bf16 only)") })
        }
    }
    Ok(())
}

pub mod cpu {
    use half::bf16;
    use rayon::prelude::*;

    const CHUNK: usize = 16384;

    /// Round to nearest even, as `__float2bfloat16_rn` (half's `from_f32`).
    pub fn cast_f32_bf16(out: &mut [bf16], inp: &[f32]) {
        out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = bf16::from_f32(x);
            }
        });
    }

    pub fn cast_bf16_f32(out: &mut [f32], inp: &[bf16]) {
        out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = x.to_f32();
            }
        });
    }
}

pub mod gpu {
    //! Launchers for kernels/cuda/cast.cu.
    use half::bf16;

    use crate::cuda::{CudaDevice, CudaSlice, PushKernelArg};
    use crate::{Error, Result};

    pub fn cast_f32_bf16(dev: &CudaDevice, out: &mut CudaSlice<bf16>, inp: &CudaSlice<f32>) -> Result<()> {
        let n = check_len(out.len(), inp.len())?;
        let f = dev.function("cast", "cast_f32_bf16")?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out).arg(inp).arg(&n);
        // SAFETY: matches cast.cu `cast_f32_bf16(__nv_bfloat16* out, const float* inp, size_t n)`;
        // out and inp are distinct allocations of n elements each.
        unsafe { launch.launch(dev.grid_stride(n, 256)?) }.map_err(dev.launch_error("cast_f32_bf16"))?;
        Ok(())
    }

    pub fn cast_bf16_f32(dev: &CudaDevice, out: &mut CudaSlice<f32>, inp: &CudaSlice<bf16>) -> Result<()> {
        let n = check_len(out.len(), inp.len())?;
        let f = dev.function("cast", "cast_bf16_f32")?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out).arg(inp).arg(&n);
        // SAFETY: matches cast.cu `cast_bf16_f32(float* out, const __nv_bfloat16* inp, size_t n)`;
        // out and inp are distinct allocations of n elements each.
        unsafe { launch.launch(dev.grid_stride(n, 256)?) }.map_err(dev.launch_error("cast_bf16_f32"))?;
        Ok(())
    }

    fn check_len(out: usize, inp: usize) -> Result<usize> {
        if out != inp {
            return Err(Error::Invalid { op: "cast", msg: format!("out holds {out} elements, inp {inp}") });
        }
        Ok(out)
    }
}
