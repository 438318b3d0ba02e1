//! fill: every element of a tensor set to one value (f32 or bf16; bf16 rounds to nearest
//! even). Tests poison outputs with it (NaN) so an element a kernel forgets to write fails.
//! No backward: a constant has no inputs.

use crate::cuda::{self, bf16};
use crate::{DType, Device, Error, Result, Tensor};

const OP: &str = "fill";

pub fn fill(out: &mut Tensor, value: f32) -> Result<()> {
    match (out.device(), out.dtype()) {
        (Device::Cpu, DType::F32) => cpu::fill(out.f32_mut()?, value),
        (Device::Cpu, DType::Bf16) => cpu::fill(out.bf16_mut()?, bf16::from_f32(value)),
        (Device::Cuda(ordinal), DType::F32) => gpu::fill(&*cuda::device(ordinal)?, out.cuda_slice_mut::<f32>()?, value)?,
        (Device::Cuda(ordinal), DType::Bf16) => gpu::fill(&*cuda::device(ordinal)?, out.cuda_slice_mut::<bf16>()?, value)?,
        (_, got) => return Err(Error::DType { op: OP, arg: "out", expected: DType::F32, got }),
    }
    Ok(())
}

pub mod cpu {
    pub fn fill<T: Copy>(out: &mut [T], value: T) {
        out.fill(value);
    }
}

pub mod gpu {
    //! Launcher for kernels/cuda/fill.cu.
    use crate::cuda::{CudaDevice, CudaElement, CudaSlice, PushKernelArg};
    use crate::Result;

    /// out[i] = value for i < out.len(); `T::NAME` picks `fill_f32` or `fill_bf16`.
    pub fn fill<T: CudaElement>(dev: &CudaDevice, out: &mut CudaSlice<T>, value: f32) -> Result<()> {
        let kernel = format!("fill_{}", T::NAME);
        let f = dev.function("fill", &kernel)?;
        let n = out.len();
        let cfg = dev.grid_stride(n, 256)?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(out).arg(&value).arg(&n);
        // SAFETY: matches fill.cu `fill_<dtype>(T* out, float value, size_t n)`, T = f32/bf16 as
        // named; out holds exactly n elements and the grid-stride loop stays below n.
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
        Ok(())
    }
}
