//! An op written outside the engine's crates, with a CPU face, a CUDA face and a backward:
//! scaled tanh, y = A * tanh(x). The CUDA face is a `.cu` source in a string, registered
//! with the device (`CudaDevice::register_module`): it is compiled by NVRTC, cached on disk
//! and launched exactly as the built-in kernels are. The op is wrapped in a `models::Layer`,
//! whose backward is gradient-checked on the CPU; with a GPU, both faces are run on the same
//! input and compared.
//!
//!   cargo run --release -p engine --example custom_op
//!   ENGINE_REQUIRE_GPU=1 scripts/cuda-sim cargo run --release -p engine --example custom_op
//!
//! (the second on the CUDA simulator; ENGINE_REQUIRE_GPU=1 makes a missing GPU an error).
//! Exits non-zero when a check fails.

use std::process::ExitCode;

use engine::kernels::cuda::PushKernelArg;
use engine::kernels::ops::{cuda_device, same_device};
use engine::kernels::device::{select, DeviceRequest};
use engine::kernels::{DType, Device, Result, Tensor};
use engine::models::gradcheck::{check_layer, GradCheckOptions};
use engine::models::{self, Layer, Param};

// forward:  out = A * tanh(x)
// backward: dx = dout * A * (1 - tanh(x)^2)   (an activation gradient: overwritten)
// A grid-stride loop over the n elements, one thread an element.
const SOURCE: &str = r#"
#include "common.cuh"

extern "C" __global__ void scaled_tanh_fwd_f32(float* out, const float* x, float A, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = A * tanhf(x[i]);
}
extern "C" __global__ void scaled_tanh_bwd_f32(float* dx, const float* dout, const float* x, float A, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float t = tanhf(x[i]);
        dx[i] = dout[i] * A * (1.0f - t * t);
    }
}
"#;
const MODULE: &str = "example_scaled_tanh";
const KERNELS: [&str; 2] = ["scaled_tanh_fwd_f32", "scaled_tanh_bwd_f32"];

/// Launches `kernel(out, inputs.., A, n)` on the GPU of `out`; every tensor holds n f32.
fn launch(kernel: &str, out: &mut Tensor, inputs: &[&Tensor], a: f32) -> Result<()> {
    let dev = cuda_device(MODULE, out)?;
    dev.register_module(MODULE, SOURCE, &KERNELS)?; // compiles on the first call, a no-op after
    let f = dev.function(MODULE, kernel)?;
    let n = out.numel() as u64;
    let cfg = dev.grid_stride(n as usize, 256)?;
    let mut builder = dev.stream().launch_builder(&f);
    builder.arg(out.cuda_slice_mut::<f32>()?);
    for t in inputs {
        builder.arg(t.cuda_slice::<f32>()?);
    }
    builder.arg(&a).arg(&n);
    // SAFETY: matches `scaled_tanh_fwd_f32(float* out, const float* x, float A, u64 n)` and
    // `scaled_tanh_bwd_f32(float* dx, const float* dout, const float* x, float A, u64 n)`: every
    // tensor holds n f32 (checked by the callers).
    unsafe { builder.launch(cfg) }.map_err(dev.launch_error(kernel))?;
    Ok(())
}

/// out = A * tanh(x), on the device of the tensors (f32).
fn scaled_tanh_forward(out: &mut Tensor, x: &Tensor, a: f32) -> Result<()> {
    out.expect_shape("scaled_tanh_forward", "out", x.shape())?;
    match same_device("scaled_tanh_forward", &[out, x])? {
        Device::Cpu => {
            for (o, &x) in out.f32_mut()?.iter_mut().zip(x.f32()?) {
                *o = a * x.tanh();
            }
            Ok(())
        }
        Device::Cuda(_) => launch("scaled_tanh_fwd_f32", out, &[x], a),
    }
}

/// dx = dout * A * (1 - tanh(x)^2) (overwritten), on the device of the tensors (f32).
fn scaled_tanh_backward(dx: &mut Tensor, dout: &Tensor, x: &Tensor, a: f32) -> Result<()> {
    dx.expect_shape("scaled_tanh_backward", "dx", x.shape())?;
    dout.expect_shape("scaled_tanh_backward", "dout", x.shape())?;
    match same_device("scaled_tanh_backward", &[dx, dout, x])? {
        Device::Cpu => {
            for ((d, &g), &x) in dx.f32_mut()?.iter_mut().zip(dout.f32()?).zip(x.f32()?) {
                *d = g * a * (1.0 - x.tanh() * x.tanh());
            }
            Ok(())
        }
        Device::Cuda(_) => launch("scaled_tanh_bwd_f32", dx, &[dout, x], a),
    }
}

/// y = A * tanh(x) as a layer: keeps its input for backward; no parameters.
struct ScaledTanh {
    a: f32,
    input: Option<Tensor>,
}

impl Layer for ScaledTanh {
    fn forward(&mut self, x: &Tensor) -> models::Result<Tensor> {
        let mut out = Tensor::try_empty(x.device(), DType::F32, x.shape())?;
        scaled_tanh_forward(&mut out, x, self.a)?;
        self.input = Some(x.clone());
        Ok(out)
    }
    fn backward(&mut self, dout: &Tensor) -> models::Result<Tensor> {
        let x = self.input.take().ok_or(models::Error::NoForward { layer: "ScaledTanh" })?;
        let mut dx = Tensor::try_empty(x.device(), DType::F32, x.shape())?;
        scaled_tanh_backward(&mut dx, dout, &x, self.a)?;
        Ok(dx)
    }
    fn release(&mut self) {
        self.input = None;
    }
    fn visit_params(&self, _f: &mut dyn FnMut(&Param)) {}
    fn visit_params_mut(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
}

/// A deterministic input: 2.5 * sin(k * i), i = 0, 1, ...
fn wave(shape: &[usize], k: f32) -> Result<Tensor> {
    Tensor::from_vec(shape, (0..shape.iter().product()).map(|i| 2.5 * (k * i as f32).sin()).collect())
}

fn run() -> std::result::Result<bool, Box<dyn std::error::Error>> {
    let mut layer = ScaledTanh { a: 1.7, input: None };
    // Small: the check's loss sums every output, and its f32 rounding bounds what a central
    // difference resolves (the report's floor).
    let report = check_layer(&mut layer, &wave(&[3, 7], 0.37)?, &GradCheckOptions::default())?;
    println!("{report}\n");
    let mut passed = report.passed();

    let require_gpu = std::env::var("ENGINE_REQUIRE_GPU").as_deref() == Ok("1");
    let (device, note) = select(if require_gpu { DeviceRequest::Cuda(0) } else { DeviceRequest::Auto })?;
    println!("{note}");
    if device != Device::Cpu {
        let (shape, n) = ([4, 333], 4 * 333); // more than a block, not a multiple of one
        let (x, dout) = (wave(&shape, 0.37)?, wave(&shape, 0.11)?);
        let cpu = (layer.forward(&x)?, layer.backward(&dout)?);
        let gpu = (layer.forward(&x.to_device(device)?)?, layer.backward(&dout.to_device(device)?)?);
        for (name, c, g) in [("forward", &cpu.0, &gpu.0), ("backward", &cpu.1, &gpu.1)] {
            let diffs = c.to_vec().into_iter().zip(g.to_host()?.to_vec()).map(|(c, g)| (c - g).abs());
            let worst = diffs.fold(0.0f32, |m, d| if d > m || d.is_nan() { d } else { m }); // a NaN sticks
            let ok = worst <= 1e-5; // CUDA's tanhf is within 2 ulp of exact
            println!("{name} on {device} vs cpu: max |diff| {worst:.2e} over {n} elements: {}", if ok { "ok" } else { "FAILED" });
            passed &= ok;
        }
    }
    Ok(passed)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
