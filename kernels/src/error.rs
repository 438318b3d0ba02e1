use crate::{DType, Device};

/// Every failure of the compute substrate. Launchers return these; only `main` turns
/// one into a message and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch for `{arg}`: expected {expected:?}, got {got:?}")]
    Shape {
        op: &'static str,
        arg: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{op}: `{arg}` must be {expected:?}, got {got:?}")]
    DType {
        op: &'static str,
        arg: &'static str,
        expected: DType,
        got: DType,
    },
    #[error("{op}: tensors on different devices ({a} and {b})")]
    DeviceMismatch { op: &'static str, a: Device, b: Device },
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    #[error("device `{requested}` is not available: {reason}")]
    DeviceUnavailable { requested: String, reason: String },
    #[error("{op}: no kernel for {device} yet")]
    NoKernel { op: &'static str, device: Device },
    #[error("NVRTC is not usable: {reason}")]
    Nvrtc { reason: String },
    #[error("NVRTC failed to compile {file} for {arch}:\n{log}")]
    Compile { file: String, arch: String, log: String },
    /// ptxas's verbose report (`--ptxas-options=-v`) does not read as expected; `msg` names
    /// the line of NVRTC's program log (1-based) and quotes it.
    #[error("cannot read ptxas's report for {file} ({arch}): {msg}")]
    PtxasReport { file: String, arch: String, msg: String },
    /// Kernels that spill, cannot launch, break their budget, or are missing from (or stale
    /// in) the launch table (`cuda::resources::check`): one message per problem.
    #[error("{} kernel resource check(s) failed:\n  {}", problems.len(), problems.join("\n  "))]
    KernelResources { problems: Vec<String> },
    #[error("launching `{kernel}` failed: {msg}")]
    Launch { kernel: String, msg: String },
    /// A request past the pool's budget (or refused by the device). Byte counts are size-class
    /// rounded; `largest_free` is the largest request that would succeed now.
    #[error("out of memory on {device}: {}", crate::memory::Oom { requested: *.requested, in_use: *.in_use, budget: *.budget, largest_free: *.largest_free })]
    OutOfMemory { device: Device, requested: usize, in_use: usize, budget: Option<usize>, largest_free: usize },
    #[error("{op}: CUDA error: {msg}")]
    Cuda { op: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;
