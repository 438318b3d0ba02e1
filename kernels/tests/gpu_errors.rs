//! Misuse of the driver gets the driver's error code and the engine's normal error
//! message, never a crash: a kernel name that does not exist, a launch on a destroyed
//! stream, launch shapes the hardware refuses. These hold on any GPU; on the CUDA
//! simulator they check that it refuses what the hardware refuses.
//!
//! Without a GPU every test prints `skipped: ...` (with `ENGINE_REQUIRE_GPU=1` it fails).

mod common;

use kernels::cuda::{DriverError, LaunchConfig, PushKernelArg};

#[test]
fn an_unknown_kernel_name_is_the_drivers_not_found() {
    let Some(dev) = common::gpu_or_skip() else { return };
    let msg = dev.function("fill", "fill_nonexistent").unwrap_err().to_string();
    assert!(msg.contains("fill_nonexistent") && msg.contains("kernels/cuda/fill.cu") && msg.contains("CUDA_ERROR_NOT_FOUND"), "{msg}");
}

#[test]
fn a_launch_on_a_destroyed_stream_is_an_invalid_handle() {
    let Some(dev) = common::gpu_or_skip() else { return };
    let f = dev.function("fill", "fill_f32").unwrap();
    let mut out = dev.alloc_zeros::<f32>(4).unwrap();
    let raw = {
        let stream = dev.context().new_stream().unwrap();
        // Only the handle's value is kept: it is used below after the stream is gone, which
        // the driver must refuse.
        stream.cu_stream()
    };
    let (n, value) = (4usize, 1.0f32);
    let (out_ptr, _guard) = kernels::cuda::DevicePtrMut::device_ptr_mut(&mut out, dev.stream());
    let mut params = [
        &out_ptr as *const _ as *mut std::ffi::c_void,
        &value as *const _ as *mut std::ffi::c_void,
        &n as *const _ as *mut std::ffi::c_void,
    ];
    // SAFETY: fill.cu `fill_f32(float* out, float value, size_t n)`, one block of 32 threads;
    // the stream handle is deliberately stale.
    let result = unsafe {
        cudarc::driver::sys::cuLaunchKernel(f.cu_function(), 1, 1, 1, 32, 1, 1, 0, raw, params.as_mut_ptr(), std::ptr::null_mut())
    };
    let err = result.result().unwrap_err();
    assert_eq!(err, DriverError(cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_HANDLE));
    let msg = dev.launch_error("fill_f32")(err).to_string();
    assert!(msg.contains("fill_f32") && msg.contains("CUDA_ERROR_INVALID_HANDLE"), "{msg}");
    drop(_guard);
    // The device is still usable afterwards.
    kernels::ops::fill::gpu::fill(&dev, &mut out, 2.0).unwrap();
    assert_eq!(dev.dtoh(&out).unwrap(), vec![2.0; 4]);
}

#[test]
fn launch_shapes_the_hardware_refuses_are_refused() {
    let Some(dev) = common::gpu_or_skip() else { return };
    let f = dev.function("fill", "fill_f32").unwrap();
    let mut out = dev.alloc_zeros::<f32>(2048).unwrap();
    let (n, value) = (2048usize, 1.0f32);
    let launch = |cfg: LaunchConfig, out: &mut kernels::cuda::CudaSlice<f32>| {
        let mut b = dev.stream().launch_builder(&f);
        b.arg(out).arg(&value).arg(&n);
        // SAFETY: matches fill.cu `fill_f32(float* out, float value, size_t n)`; out holds n.
        unsafe { b.launch(cfg) }.map_err(dev.launch_error("fill_f32")).map(|_| ())
    };
    let cfg = |grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32| LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: smem };
    for (what, c) in [
        ("1025 threads", cfg((1, 1, 1), (1025, 1, 1), 0)),
        ("block z of 65", cfg((1, 1, 1), (1, 1, 65), 0)),
        ("32 x 33 threads", cfg((1, 1, 1), (32, 33, 1), 0)),
        ("a zero grid", cfg((0, 1, 1), (32, 1, 1), 0)),
        ("grid y of 65536", cfg((1, 65536, 1), (32, 1, 1), 0)),
        ("64 KiB of dynamic shared memory without opting in", cfg((1, 1, 1), (32, 1, 1), 64 * 1024)),
    ] {
        let msg = launch(c, &mut out).unwrap_err().to_string();
        assert!(msg.contains("fill_f32") && msg.contains("CUDA_ERROR_INVALID_VALUE"), "{what}: {msg}");
    }
    // After all that, a good launch works.
    launch(cfg((2, 1, 1), (1024, 1, 1), 0), &mut out).unwrap();
    assert!(dev.dtoh(&out).unwrap().iter().all(|&x| x == 1.0));
}
