//! What the GPU suites share.

use kernels::Device;

/// CUDA device 0, or `None` after printing `skipped: no usable CUDA device (<reason>)`; with
/// ENGINE_REQUIRE_GPU=1 (CI on the simulator, `scripts/gpu-check`) no device is a failure.
pub fn gpu_or_skip() -> Option<Device> {
    let found = kernels::cuda::probe(0)
        .map_err(|reason| reason.to_string())
        .and_then(|_| kernels::cuda::device(0).map_err(|e| e.to_string()));
    match found {
        Ok(dev) => Some(dev.device()),
        Err(reason) if std::env::var("ENGINE_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("ENGINE_REQUIRE_GPU=1 but there is no usable CUDA device ({reason})")
        }
        Err(reason) => {
            eprintln!("skipped: no usable CUDA device ({reason})");
            None
        }
    }
}
