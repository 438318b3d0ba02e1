//! The CUDA simulator's driver: a drop-in `libcuda.so.1` that runs the engine's real GPU
//! code on the CPU. `scripts/cuda-sim` puts it first on the library path, where cudarc
//! (dynamic loading) finds it by name; nothing in the engine knows it is simulated.
//!
//! What it models, and how:
//! - One device, "Simulated GPU (cuda-sim)", compute capability 9.0, with
//!   `CUDA_SIM_SMS` SMs (default 16) and `CUDA_SIM_MEMORY` bytes (default 4 GiB; suffixes
//!   K/M/G/KiB/MiB/GiB): allocations past it fail with `CUDA_ERROR_OUT_OF_MEMORY`.
//! - Device memory is host memory: every allocation is its own host allocation (so a
//!   sanitizer sees its bounds), filled with 0xFF bytes (NaN as f32 and bf16) when made.
//!   Every copy and memset is checked against the allocation table, when it is queued and
//!   again when it runs, so a copy into memory freed in between (a missing event wait) is
//!   an error naming both streams instead of silent corruption.
//! - Streams are asynchronous: each runs its work in order on its own worker thread.
//!   Events and stream waits have the driver's semantics (a wait captures the event's
//!   record at the time of the call; an event never recorded is complete). With
//!   `CUDA_SIM_CHAOS=1` (or a number, the seed) every worker sleeps a random 0-3 ms before
//!   each piece of work, so code that forgets an event wait reads wrong data instead of
//!   passing by luck.
//! - Kernels: module images made by the simulated NVRTC (a shared object, see
//!   `kernels/sim/include/cudasim/abi.h`) are loaded with `dlopen`; `cuLaunchKernel` checks
//!   the launch as the hardware would (block and grid limits, `__launch_bounds__`, dynamic
//!   shared memory against the function's attribute), copies the arguments, and queues the
//!   grid on the stream; one grid runs at a time in the process.
//! - Errors use the driver's codes. A fault inside a kernel is sticky, as on hardware: the
//!   context returns that error from then on. Whatever the code alone cannot say (which
//!   kernel, which block, which copy) is printed on stderr as one `cuda-sim:` line.
//!
//! What it does not model: timing (elapsed times are host wall-clock), concurrency between
//! kernels, hardware math and tensor-core rounding, races on silicon, register limits.
//! docs/SIMULATOR.md has the whole list.

mod context;
mod exports;
mod memory;
mod module;
mod stream;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::sys::CUresult;

/// A driver error: the code the API returns, and (for the ones worth explaining) a message
/// printed on stderr.
#[derive(Debug)]
pub(crate) struct Fail {
    pub code: CUresult,
    pub msg: Option<String>,
}

pub(crate) type Res<T = ()> = std::result::Result<T, Fail>;

/// An error with only its code (the common case: the caller knows what it passed).
pub(crate) fn code(code: CUresult) -> Fail {
    Fail { code, msg: None }
}

/// An error whose code needs a sentence to be useful.
pub(crate) fn fail(code: CUresult, msg: impl Into<String>) -> Fail {
    Fail { code, msg: Some(msg.into()) }
}

/// Prints a diagnostic line, the simulator's only channel besides the error code.
pub(crate) fn report(msg: &str) {
    eprintln!("cuda-sim: {msg}");
}

/// Entry points that blocked the calling host thread until device work completed, in the
/// whole process and on each thread (read by the test hooks `cudasim_host_syncs` and
/// `cudasim_thread_host_syncs`, exports.rs). A call counts once however many waits it made.
static HOST_SYNCS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static THREAD_HOST_SYNCS: Cell<u64> = const { Cell::new(0) };
    /// Set by [`host_blocks`] during the current entry point.
    static BLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current entry point as one that waits for the device (a stream drained, an
/// event waited for, a copy into pageable memory completed before returning).
pub(crate) fn host_blocks() {
    BLOCKED.with(|b| b.set(true));
}

pub(crate) fn host_syncs() -> u64 {
    HOST_SYNCS.load(Ordering::Relaxed)
}

pub(crate) fn thread_host_syncs() -> u64 {
    THREAD_HOST_SYNCS.with(Cell::get)
}

/// Runs an entry point's body: its result as a `CUresult`, a panic as
/// `CUDA_ERROR_UNKNOWN` (never unwinding into the caller's C frames).
pub(crate) fn entry(name: &str, body: impl FnOnce() -> Res) -> CUresult {
    BLOCKED.with(|b| b.set(false));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    if BLOCKED.with(|b| b.replace(false)) {
        HOST_SYNCS.fetch_add(1, Ordering::Relaxed);
        THREAD_HOST_SYNCS.with(|c| c.set(c.get() + 1));
    }
    match result {
        Ok(Ok(())) => CUresult::CUDA_SUCCESS,
        Ok(Err(Fail { code, msg })) => {
            if let Some(msg) = msg {
                if msg.starts_with(name) {
                    report(&msg);
                } else {
                    report(&format!("{name}: {msg}"));
                }
            }
            code
        }
        Err(_) => {
            report(&format!("{name}: internal error (a panic in the simulator); returning CUDA_ERROR_UNKNOWN"));
            CUresult::CUDA_ERROR_UNKNOWN
        }
    }
}

/// Writes `value` through an out-pointer, refusing null.
///
/// # Safety
/// `ptr` is null or valid for a write of `T`.
pub(crate) unsafe fn out<T>(ptr: *mut T, value: T) -> Res {
    if ptr.is_null() {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    // SAFETY: non-null, and valid for writes by the caller's contract.
    unsafe { ptr.write(value) };
    Ok(())
}
