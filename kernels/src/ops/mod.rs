//! Every op the models need, forward and backward, each in its own file with its faces
//! side by side: the public launcher (checks shapes and dispatches on the device) and the
//! CPU implementation in a `cpu` submodule, which is also the reference the CUDA kernels
//! are tested against.
//!
//! Dimension names: B batch, T time, C channels, NH heads, HS head size, V vocab,
//! Vp padded vocab, N rows (= B*T), IC/OC matmul in/out channels.
//! Gradient rule: parameter gradients accumulate (`+=`), activation gradients overwrite (`=`).

/// The one dtype dispatch of the CUDA launchers: `f::<f32>(args)` or `f::<bf16>(args)` by
/// `dtype`; any other dtype is `Error::DType` for argument `arg` of `op`.
macro_rules! dispatch_float {
    ($dtype:expr, $op:expr, $arg:expr, $f:ident($($a:expr),* $(,)?)) => {
        match $dtype {
            $crate::DType::F32 => $f::<f32>($($a),*),
            $crate::DType::Bf16 => $f::<half::bf16>($($a),*),
            got => Err($crate::Error::DType { op: $op, arg: $arg, expected: $crate::DType::F32, got }),
        }
    };
}

pub mod adamw;
pub mod attention;
pub mod cast;
pub mod crossentropy;
pub mod embedding;
pub mod fill;
pub mod gelu;
pub mod kv_expand;
pub mod layernorm;
pub mod matmul;
pub mod multi_tensor;
pub mod norm;
pub mod residual;
pub mod rope;
pub mod rmsnorm;
pub mod swiglu;

mod cpu_math;
mod cpu_util;

use crate::{DType, Device, Error, Result, Tensor};

// The launcher convention, public so that an op written outside this crate (with a CUDA face
// registered by `cuda::register_module`, examples/custom_op.rs) follows it too.

/// Errors unless every tensor is on the same device (naming `op`); returns that device: an
/// op's first check, choosing its CPU or CUDA face.
pub fn same_device(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let first = tensors[0].device();
    for t in &tensors[1..] {
        if t.device() != first {
            return Err(Error::DeviceMismatch { op, a: first, b: t.device() });
        }
    }
    Ok(first)
}

/// Errors unless `t` (argument `arg` of `op`) has dtype `expected`.
pub fn expect_dtype(op: &'static str, arg: &'static str, t: &Tensor, expected: DType) -> Result<()> {
    if t.dtype() != expected {
        return Err(Error::DType { op, arg, expected, got: t.dtype() });
    }
    Ok(())
}

/// The CUDA device a launcher runs on, `t`'s: the launcher convention (every CUDA launcher
/// gets its device this way; a CPU tensor is an error naming `op`).
pub fn cuda_device(op: &'static str, t: &Tensor) -> Result<std::sync::Arc<crate::cuda::CudaDevice>> {
    match t.device() {
        Device::Cuda(ordinal) => crate::cuda::device(ordinal),
        device => Err(Error::Invalid { op, msg: format!("CUDA launcher called with a tensor on {device}") }),
    }
}

/// `v` as a kernel's `int` argument, or an error naming `op` and what `v` is.
pub fn kernel_int(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Invalid { op, msg: format!("{what} = {v} does not fit the kernel's int") })
}

/// Splits `t`'s shape into (rows, last dimension): the (N, C) of a row-wise op.
pub fn rows_cols(t: &Tensor) -> (usize, usize) {
    let c = *t.shape().last().unwrap_or(&1);
    let n = if c == 0 { 0 } else { t.numel() / c };
    (n, c)
}

/// Threads the CPU backend runs on (rayon's pool; `RAYON_NUM_THREADS` sets it).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// The CPU backend's worker pool (rayon's default size: `RAYON_NUM_THREADS` or one per core).
fn cpu_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().thread_name(|i| format!("cpu-op-{i}")).build().ok()).as_ref()
}

/// Runs `f` on a worker of the CPU backend's pool. Every parallel op then starts from
/// inside the pool: the caller's thread takes part in the work instead of handing each
/// op to the pool and sleeping until it is done. A training step runs a few hundred
/// parallel ops; from outside the pool each cost a sleep and a wake-up on both sides
/// (about 3,000 context switches per step on the default model, 20x fewer from inside).
/// Falls back to running `f` here if the pool cannot be built.
pub fn on_cpu_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match cpu_pool() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}
