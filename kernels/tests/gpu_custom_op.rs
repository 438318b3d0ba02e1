//! Kernel modules from outside the crate (`cuda::register_module`,
//! `CudaDevice::register_module`): a `.cu` source registered here compiles, caches and
//! launches through the same path as the built-in kernels, and each misuse is an error that
//! says what is wrong.
//!
//! The registration checks and the compile error need no GPU (the compile needs NVRTC: it
//! skips without, unless `ENGINE_REQUIRE_NVRTC=1`); the launches print `skipped: ...` without
//! a GPU (with `ENGINE_REQUIRE_GPU=1` they fail).

mod common;

use kernels::cuda::{self, bf16, CudaDevice, CudaElement, PushKernelArg};
use kernels::{Error, Tensor};

/// out = a * x + y, elementwise: a grid-stride loop, fp32 math, using the shared prelude.
const SCALED_ADD: &str = r#"
#include "common.cuh"

template <typename T>
static __device__ void scaled_add(T* out, const T* x, const T* y, float a, u64 n) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = from_f32<T>(a * to_f32(x[i]) + to_f32(y[i]));
    }
}

extern "C" __global__ void __launch_bounds__(256) scaled_add_f32(float* out, const float* x, const float* y, float a, u64 n) {
    scaled_add(out, x, y, a, n);
}
extern "C" __global__ void __launch_bounds__(256) scaled_add_bf16(bf16* out, const bf16* x, const bf16* y, float a, u64 n) {
    scaled_add(out, x, y, a, n);
}
"#;
const SCALED_ADD_KERNELS: [&str; 2] = ["scaled_add_f32", "scaled_add_bf16"];

/// Line 6 uses an identifier that does not exist.
const BROKEN: &str = r#"
#include "common.cuh"

extern "C" __global__ void broken_f32(float* out, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = undeclared_identifier_for_the_test;
}
"#;

fn nvrtc_or_skip() -> bool {
    match cuda::nvrtc::nvrtc() {
        Ok(_) => true,
        Err(e) if std::env::var("ENGINE_REQUIRE_NVRTC").as_deref() == Ok("1") => panic!("ENGINE_REQUIRE_NVRTC=1 but {e}"),
        Err(e) => {
            eprintln!("skipped: NVRTC not found, run scripts/test ({e})");
            false
        }
    }
}

/// The user op's launcher, written as the built-in launchers are: `function`, `grid_stride`,
/// `launch_builder`, `launch_error`.
fn scaled_add<T: CudaElement>(dev: &CudaDevice, module: &str, out: &mut Tensor, x: &Tensor, y: &Tensor, a: f32) -> kernels::Result<()> {
    let n = x.numel() as u64;
    let kernel = format!("scaled_add_{}", T::NAME);
    let f = dev.function(module, &kernel)?;
    let cfg = dev.grid_stride(n as usize, 256)?;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(out.cuda_slice_mut::<T>()?).arg(x.cuda_slice::<T>()?).arg(y.cuda_slice::<T>()?).arg(&a).arg(&n);
    // SAFETY: matches `scaled_add_<T>(T* out, const T* x, const T* y, float a, u64 n)`; the three
    // tensors hold n elements of T (same shape and dtype, made by the caller).
    unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
    Ok(())
}

/// Runs the registered kernel for dtype `T` on `n` elements and compares with the CPU.
fn check_scaled_add<T: CudaElement>(dev: &CudaDevice, module: &str, n: usize, tol: f32) {
    let (x, y, a) = (common::random(&[n], 1, 2.0), common::random(&[n], 2, 2.0), 0.75f32);
    let to_gpu = |t: &Tensor| t.to_dtype(T::DTYPE).unwrap().to_device(dev.device()).unwrap();
    let (xg, yg) = (to_gpu(&x), to_gpu(&y));
    let mut out = Tensor::try_empty(dev.device(), T::DTYPE, &[n]).unwrap();
    common::poison(&mut out);
    scaled_add::<T>(dev, module, &mut out, &xg, &yg, a).unwrap();
    // The reference from the values the GPU saw (bf16-rounded inputs in bf16).
    let (xs, ys) = (xg.to_host().unwrap().to_vec(), yg.to_host().unwrap().to_vec());
    let reference: Vec<f32> = xs.iter().zip(&ys).map(|(x, y)| a * x + y).collect();
    common::assert_close(&format!("scaled_add_{} n={n}", T::NAME), &out.to_host().unwrap().to_vec(), &reference, tol, tol);
}

#[test]
fn a_registered_module_launches_like_a_builtin() {
    let Some(dev) = common::gpu_or_skip() else { return };
    let module = "test_scaled_add";
    dev.register_module(module, SCALED_ADD, &SCALED_ADD_KERNELS).unwrap();
    for n in [1, 255, 1000, 4099] {
        check_scaled_add::<f32>(&dev, module, n, 1e-6);
        check_scaled_add::<bf16>(&dev, module, n, 1e-2);
    }
    // Registering again is a no-op; with another source, an error that says why.
    dev.register_module(module, SCALED_ADD, &SCALED_ADD_KERNELS).unwrap();
    let msg = dev.register_module(module, &SCALED_ADD.replace("a * ", "2.0f * a * "), &SCALED_ADD_KERNELS).unwrap_err().to_string();
    assert!(msg.contains("`test_scaled_add` is already registered with a different source"), "{msg}");
    check_scaled_add::<f32>(&dev, module, 300, 1e-6);
    // In the disk cache like a built-in: `<module>-<arch>-<hash>.nvrtc<version>.cubin`.
    if let Some(dir) = cuda::cache_dir().filter(|d| d.is_dir()) {
        let prefix = format!("{module}-{}-", dev.arch());
        let cached = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        assert!(cached, "no {prefix}*.cubin in {}", dir.display());
    }
}

/// Registered without a device, compiled at the first `function` call on one.
#[test]
fn a_module_registered_without_a_device_compiles_at_first_use() {
    let module = "test_scaled_add_lazy";
    cuda::register_module(module, SCALED_ADD, &SCALED_ADD_KERNELS).unwrap();
    let Some(dev) = common::gpu_or_skip() else { return };
    check_scaled_add::<f32>(&dev, module, 777, 1e-6);
}

#[test]
fn a_compile_error_names_the_module_and_carries_nvrtcs_log() {
    cuda::register_module("test_broken", BROKEN, &["broken_f32"]).unwrap();
    if !nvrtc_or_skip() {
        return;
    }
    let check = |module: &str, e: Error| match e {
        Error::Compile { ref file, ref log, .. } => {
            let file_name = format!("{module}.cu");
            assert_eq!(file, &file_name);
            assert!(log.contains("undeclared_identifier_for_the_test"), "the log lacks the culprit: {log}");
            // NVRTC writes `<module>.cu(6): error: ...`; the simulator's keeps the line too.
            assert!(log.contains(&format!("{file_name}(6)")) || log.contains(&format!("{file_name}:6:")), "the log lacks the file and line: {log}");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("NVRTC failed to compile {file_name} for sm_")), "{msg}");
        }
        other => panic!("expected Error::Compile, got {other:?}"),
    };
    check("test_broken", cuda::compile_module("test_broken", "sm_80").unwrap_err());
    // The good module compiles without a GPU too.
    cuda::register_module("test_scaled_add_nogpu", SCALED_ADD, &SCALED_ADD_KERNELS).unwrap();
    assert!(!cuda::compile_module("test_scaled_add_nogpu", "sm_90").unwrap().is_empty());

    let Some(dev) = common::gpu_or_skip() else { return };
    check("test_broken", dev.function("test_broken", "broken_f32").unwrap_err());
    // Compiled now on a device, and a failure registers nothing.
    check("test_broken_now", dev.register_module("test_broken_now", BROKEN, &["broken_f32"]).unwrap_err());
    let msg = dev.function("test_broken_now", "broken_f32").unwrap_err().to_string();
    assert!(msg.contains("no registered module `test_broken_now`"), "{msg}");
}

#[test]
fn kernels_not_declared_or_not_in_the_source_are_errors() {
    let Some(dev) = common::gpu_or_skip() else { return };
    // Declared but not in the source: refused at registration, naming it; nothing registered.
    let msg = dev.register_module("test_missing_kernel", SCALED_ADD, &["scaled_add_f32", "scaled_add_f64"]).unwrap_err().to_string();
    assert!(
        msg.contains("`scaled_add_f64`") && msg.contains("the registered module `test_missing_kernel`") && msg.contains("CUDA_ERROR_NOT_FOUND"),
        "{msg}"
    );
    let msg = dev.function("test_missing_kernel", "scaled_add_f32").unwrap_err().to_string();
    assert!(msg.contains("no registered module `test_missing_kernel`"), "{msg}");
    // In the source but not declared: `function` does not hand it out.
    dev.register_module("test_declared", SCALED_ADD, &["scaled_add_f32"]).unwrap();
    assert!(dev.function("test_declared", "scaled_add_f32").is_ok());
    let msg = dev.function("test_declared", "scaled_add_bf16").unwrap_err().to_string();
    assert!(msg.contains("kernel `scaled_add_bf16` is not declared by the registered module `test_declared` (declared: scaled_add_f32)"), "{msg}");
    // Built-ins are found as before, beside registered modules.
    assert!(dev.function("fill", "fill_f32").is_ok());
}

#[test]
fn a_name_taken_or_malformed_is_refused() {
    let err = |module: &str, kernels: &[&str]| cuda::register_module(module, SCALED_ADD, kernels).unwrap_err().to_string();
    let msg = err("fill", &["scaled_add_f32"]);
    assert!(msg.contains("module name `fill` is taken by the built-in kernels/cuda/fill.cu"), "{msg}");
    let msg = err("my-op", &["scaled_add_f32"]);
    assert!(msg.contains("module name \"my-op\" must be letters, digits and `_`"), "{msg}");
    assert!(err("", &["scaled_add_f32"]).contains("module name \"\""));
    assert!(err("test_no_kernels", &[]).contains("module `test_no_kernels` declares no kernels"));
    assert!(err("test_bad_kernel", &["1st"]).contains("kernel name \"1st\" is not a C identifier"));
    assert!(err("test_twice", &["scaled_add_f32", "scaled_add_f32"]).contains("kernel `scaled_add_f32` is declared twice"));
    cuda::register_module("test_kernels_change", SCALED_ADD, &["scaled_add_f32"]).unwrap();
    let msg = err("test_kernels_change", &SCALED_ADD_KERNELS);
    assert!(msg.contains("already registered with a different list of kernels (kernels: scaled_add_f32)"), "{msg}");
    // An unknown module names both places it was looked for.
    let msg = cuda::compile_module("test_never_registered", "sm_90").unwrap_err().to_string();
    assert!(msg.contains("no kernel file kernels/cuda/test_never_registered.cu and no registered module") && msg.contains("test_kernels_change"), "{msg}");
}
