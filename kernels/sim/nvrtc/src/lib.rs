//! The CUDA simulator's NVRTC: a drop-in `libnvrtc.so.13` whose "cubin" is a host shared
//! object. `scripts/cuda-sim` puts it first on the library path, where cudarc (dynamic
//! loading, symbols looked up by name) finds it; the engine's NVRTC code runs unchanged.
//!
//! What it does:
//! - `nvrtcCompileProgram` translates the source (`translate.rs`: inline PTX asm, dynamic
//!   shared memory, the kernel table), compiles it with the host C++ compiler (`$CUDA_SIM_CXX`,
//!   else `c++`) against the simulator's headers (`$CUDA_SIM_INCLUDE`, else
//!   `kernels/sim/include`), in a fresh temporary directory removed afterwards (kept, and named
//!   in the program log, with `CUDA_SIM_NVRTC_KEEP=1`). `CUDA_SIM_CHECK=1` builds
//!   with AddressSanitizer and marks the image so.
//! - `nvrtcGetCUBIN` and `nvrtcGetPTX` both hand out the module image of `cudasim/abi.h` §1
//!   (PTX with a trailing NUL, as PTX text has), which only the simulated driver loads.
//! - Failures use NVRTC's codes and logs: the translator's message or the compiler's
//!   diagnostics, which name the `.cu` file and its lines; an unknown option is
//!   `NVRTC_ERROR_INVALID_OPTION` with a log naming it (`options.rs` has the accepted set).
//! - Programs are opaque ids in a registry, so a null, stale or foreign handle is
//!   `NVRTC_ERROR_INVALID_PROGRAM`, never a crash; every pointer argument is checked for
//!   null; no panic crosses the C boundary. Any number of threads may compile at once.
//!
//! What it does not do: generate PTX or cubin for a real GPU (`nvrtcVersion` says 13.0 so
//! the engine's disk cache keys stay NVRTC's, and the real driver refuses these images, so a
//! cache mixing both heals itself by recompiling); lower the names of C++-mangled or template
//! kernels (only extern "C" kernels, whose lowered name is their name); honour options that
//! steer NVIDIA's code generator (fast math, FMA contraction, debug info: accepted, ignored);
//! produce LTO or OptiX IR (their sizes are 0, as NVRTC reports when it made none).

// Each entry point's safety contract is NVRTC's documented one (valid pointers, sizes from
// the matching *Size call); restating it per function would add nothing.
#![allow(clippy::missing_safety_doc)]

mod compile;
mod lex;
mod options;
mod translate;

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::nvrtc::sys::{_nvrtcProgram, nvrtcProgram, nvrtcResult};
use nvrtcResult::*;

/// `nvrtcVersion`'s answer.
const VERSION: (c_int, c_int) = (13, 0);

struct Program {
    source: String,
    name: String,
    headers: Vec<(String, String)>,
    name_expressions: Vec<String>,
    log: String,
    state: State,
}

enum State {
    Created,
    Failed,
    Compiled {
        image: Vec<u8>,
        /// (name expression, lowered name) for every expression that names a kernel; the
        /// CStrings' buffers are what `nvrtcGetLoweredName` hands out, alive until destroy.
        lowered: Vec<(String, CString)>,
    },
}

type Shared = Arc<Mutex<Program>>;

fn registry() -> &'static Mutex<HashMap<usize, Shared>> {
    static REGISTRY: OnceLock<Mutex<HashMap<usize, Shared>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A poisoned lock only means another call panicked (and was caught); the data is whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn program(prog: nvrtcProgram) -> Result<Shared, nvrtcResult> {
    lock(registry()).get(&(prog as usize)).cloned().ok_or(NVRTC_ERROR_INVALID_PROGRAM)
}

/// Runs an entry point's body; a panic becomes `NVRTC_ERROR_INTERNAL_ERROR`.
fn entry(body: impl FnOnce() -> Result<(), nvrtcResult>) -> nvrtcResult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => NVRTC_SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => NVRTC_ERROR_INTERNAL_ERROR,
    }
}

fn non_null<T>(p: *const T) -> Result<(), nvrtcResult> {
    if p.is_null() {
        Err(NVRTC_ERROR_INVALID_INPUT)
    } else {
        Ok(())
    }
}

/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn string(p: *const c_char) -> Result<String, nvrtcResult> {
    non_null(p)?;
    Ok(CStr::from_ptr(p).to_string_lossy().into_owned())
}

/// # Safety
/// `p` is null or points to `n` readable pointers.
unsafe fn strings(p: *const *const c_char, n: c_int) -> Result<Vec<String>, nvrtcResult> {
    if n < 0 {
        return Err(NVRTC_ERROR_INVALID_INPUT);
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    non_null(p)?;
    (0..n as usize).map(|i| string(*p.add(i))).collect()
}

/// # Safety
/// `out` is null or valid for writes.
unsafe fn put<T>(out: *mut T, v: T) -> Result<(), nvrtcResult> {
    non_null(out)?;
    out.write(v);
    Ok(())
}

/// # Safety
/// `out` is null or valid for `bytes.len()` bytes of writes.
unsafe fn put_bytes(out: *mut c_char, bytes: &[u8]) -> Result<(), nvrtcResult> {
    non_null(out)?;
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.cast::<u8>(), bytes.len());
    Ok(())
}

/// The image of a compiled program.
fn with_image<R>(prog: nvrtcProgram, f: impl FnOnce(&[u8]) -> Result<R, nvrtcResult>) -> Result<R, nvrtcResult> {
    let p = program(prog)?;
    let p = lock(&p);
    match &p.state {
        State::Compiled { image, .. } => f(image),
        _ => Err(NVRTC_ERROR_INVALID_PROGRAM),
    }
}

fn sim_include_dir() -> std::path::PathBuf {
    // Tests compile against a stand-in runtime header; changing the environment instead
    // would race with the other test threads reading it.
    #[cfg(test)]
    if let Some(dir) = tests::STAND_IN_INCLUDE.get() {
        return dir.clone();
    }
    compile::sim_include_dir()
}

/// `name` without the `&` and `::` a name expression may spell it with.
fn bare_name(expr: &str) -> &str {
    let e = expr.trim();
    let e = e.strip_prefix('&').unwrap_or(e).trim_start();
    e.strip_prefix("::").unwrap_or(e)
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcVersion(major: *mut c_int, minor: *mut c_int) -> nvrtcResult {
    entry(|| {
        non_null(major)?;
        non_null(minor)?;
        put(major, VERSION.0)?;
        put(minor, VERSION.1)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetNumSupportedArchs(num_archs: *mut c_int) -> nvrtcResult {
    entry(|| put(num_archs, options::SUPPORTED_ARCHS.len() as c_int))
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetSupportedArchs(supported_archs: *mut c_int) -> nvrtcResult {
    entry(|| {
        non_null(supported_archs)?;
        for (i, a) in options::SUPPORTED_ARCHS.iter().enumerate() {
            supported_archs.add(i).write(*a);
        }
        Ok(())
    })
}

/// Takes the code as a plain integer: a caller passing a value NVRTC never returns must get
/// a string, not undefined behaviour (`nvrtcResult` is a `repr(u32)` enum: the same ABI).
#[no_mangle]
pub unsafe extern "C" fn nvrtcGetErrorString(result: u32) -> *const c_char {
    const NAMES: [&CStr; 18] = [
        c"NVRTC_SUCCESS",
        c"NVRTC_ERROR_OUT_OF_MEMORY",
        c"NVRTC_ERROR_PROGRAM_CREATION_FAILURE",
        c"NVRTC_ERROR_INVALID_INPUT",
        c"NVRTC_ERROR_INVALID_PROGRAM",
        c"NVRTC_ERROR_INVALID_OPTION",
        c"NVRTC_ERROR_COMPILATION",
        c"NVRTC_ERROR_BUILTIN_OPERATION_FAILURE",
        c"NVRTC_ERROR_NO_NAME_EXPRESSIONS_AFTER_COMPILATION",
        c"NVRTC_ERROR_NO_LOWERED_NAMES_BEFORE_COMPILATION",
        c"NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID",
        c"NVRTC_ERROR_INTERNAL_ERROR",
        c"NVRTC_ERROR_TIME_FILE_WRITE_FAILED",
        c"NVRTC_ERROR_NO_PCH_CREATE_ATTEMPTED",
        c"NVRTC_ERROR_PCH_CREATE_HEAP_EXHAUSTED",
        c"NVRTC_ERROR_PCH_CREATE",
        c"NVRTC_ERROR_CANCELLED",
        c"NVRTC_ERROR_TIME_TRACE_FILE_WRITE_FAILED",
    ];
    NAMES.get(result as usize).copied().unwrap_or(c"NVRTC_ERROR unknown").as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcCreateProgram(
    prog: *mut nvrtcProgram,
    src: *const c_char,
    name: *const c_char,
    num_headers: c_int,
    headers: *const *const c_char,
    include_names: *const *const c_char,
) -> nvrtcResult {
    entry(|| {
        non_null(prog)?;
        let source = string(src)?;
        let name = if name.is_null() { "default_program".to_string() } else { string(name)? };
        let contents = strings(headers, num_headers)?;
        let names = strings(include_names, num_headers)?;
        let program = Program {
            source,
            name,
            headers: names.into_iter().zip(contents).collect(),
            name_expressions: Vec::new(),
            log: String::new(),
            state: State::Created,
        };
        // Odd, non-zero and far from small integers, so a stray int is never a live handle.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0x5eed_0001);
        let id = NEXT.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        lock(registry()).insert(id, Arc::new(Mutex::new(program)));
        put(prog, id as *mut _nvrtcProgram)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcDestroyProgram(prog: *mut nvrtcProgram) -> nvrtcResult {
    entry(|| {
        if prog.is_null() {
            return Err(NVRTC_ERROR_INVALID_PROGRAM);
        }
        // A compile still running on another thread keeps its own reference to the program.
        lock(registry()).remove(&(*prog as usize)).ok_or(NVRTC_ERROR_INVALID_PROGRAM)?;
        *prog = std::ptr::null_mut();
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcCompileProgram(prog: nvrtcProgram, num_options: c_int, options: *const *const c_char) -> nvrtcResult {
    entry(|| {
        let shared = program(prog)?;
        let opts = strings(options, num_options)?;
        let parsed = match options::parse(&opts) {
            Ok(parsed) => parsed,
            Err(log) => {
                let mut p = lock(&shared);
                p.log = log;
                p.state = State::Failed;
                return Err(NVRTC_ERROR_INVALID_OPTION);
            }
        };
        // The compile runs without the lock, so a log query or destroy from another thread
        // does not wait seconds for the host compiler.
        let (source, name, headers, exprs) = {
            let p = lock(&shared);
            (p.source.clone(), p.name.clone(), p.headers.clone(), p.name_expressions.clone())
        };
        let cxx = compile::compiler();
        let sim_include = sim_include_dir();
        let input = compile::Input {
            source: &source,
            file_name: &name,
            headers: &headers,
            options: &parsed,
            cxx: &cxx,
            sim_include: &sim_include,
            asan: compile::asan_requested(),
        };
        let result = compile::compile(&input);
        let mut p = lock(&shared);
        match result {
            Ok(out) => {
                let mut log = out.log;
                let mut lowered = Vec::new();
                for e in exprs {
                    let bare = bare_name(&e);
                    match out.kernels.iter().find(|k| *k == bare) {
                        Some(k) => lowered.push((e, CString::new(k.as_str()).map_err(|_| NVRTC_ERROR_INTERNAL_ERROR)?)),
                        None => log.push_str(&format!(
                            "nvrtc (cuda-sim): warning: name expression `{e}` is not an extern \"C\" __global__ function of \
                             this program; the simulator lowers only those (nvrtcGetLoweredName will refuse it)\n"
                        )),
                    }
                }
                p.log = log;
                p.state = State::Compiled { image: out.image, lowered };
                Ok(())
            }
            Err(log) => {
                p.log = log;
                p.state = State::Failed;
                Err(NVRTC_ERROR_COMPILATION)
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetProgramLogSize(prog: nvrtcProgram, log_size_ret: *mut usize) -> nvrtcResult {
    entry(|| {
        let p = program(prog)?;
        let size = lock(&p).log.len() + 1;
        put(log_size_ret, size)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetProgramLog(prog: nvrtcProgram, log: *mut c_char) -> nvrtcResult {
    entry(|| {
        let p = program(prog)?;
        let p = lock(&p);
        non_null(log)?;
        put_bytes(log, p.log.as_bytes())?;
        put(log.add(p.log.len()), 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetCUBINSize(prog: nvrtcProgram, cubin_size_ret: *mut usize) -> nvrtcResult {
    entry(|| {
        non_null(cubin_size_ret)?;
        let size = with_image(prog, |image| Ok(image.len()))?;
        put(cubin_size_ret, size)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetCUBIN(prog: nvrtcProgram, cubin: *mut c_char) -> nvrtcResult {
    entry(|| {
        non_null(cubin)?;
        with_image(prog, |image| put_bytes(cubin, image))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetPTXSize(prog: nvrtcProgram, ptx_size_ret: *mut usize) -> nvrtcResult {
    entry(|| {
        non_null(ptx_size_ret)?;
        let size = with_image(prog, |image| Ok(image.len() + 1))?;
        put(ptx_size_ret, size)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetPTX(prog: nvrtcProgram, ptx: *mut c_char) -> nvrtcResult {
    entry(|| {
        non_null(ptx)?;
        with_image(prog, |image| {
            put_bytes(ptx, image)?;
            put(ptx.add(image.len()), 0)
        })
    })
}

/// No LTO IR is ever made: size 0, as NVRTC reports for a compile without `-dlto`.
#[no_mangle]
pub unsafe extern "C" fn nvrtcGetLTOIRSize(prog: nvrtcProgram, ltoir_size_ret: *mut usize) -> nvrtcResult {
    entry(|| {
        non_null(ltoir_size_ret)?;
        with_image(prog, |_| Ok(()))?;
        put(ltoir_size_ret, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetLTOIR(prog: nvrtcProgram, ltoir: *mut c_char) -> nvrtcResult {
    entry(|| {
        non_null(ltoir)?;
        with_image(prog, |_| Ok(()))
    })
}

/// No OptiX IR is ever made: size 0, as for a compile whose options exclude it.
#[no_mangle]
pub unsafe extern "C" fn nvrtcGetOptiXIRSize(prog: nvrtcProgram, optixir_size_ret: *mut usize) -> nvrtcResult {
    entry(|| {
        non_null(optixir_size_ret)?;
        with_image(prog, |_| Ok(()))?;
        put(optixir_size_ret, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetOptiXIR(prog: nvrtcProgram, optixir: *mut c_char) -> nvrtcResult {
    entry(|| {
        non_null(optixir)?;
        with_image(prog, |_| Ok(()))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcAddNameExpression(prog: nvrtcProgram, name_expression: *const c_char) -> nvrtcResult {
    entry(|| {
        let p = program(prog)?;
        let expr = string(name_expression)?;
        let mut p = lock(&p);
        if !matches!(p.state, State::Created) {
            return Err(NVRTC_ERROR_NO_NAME_EXPRESSIONS_AFTER_COMPILATION);
        }
        p.name_expressions.push(expr);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetLoweredName(
    prog: nvrtcProgram,
    name_expression: *const c_char,
    lowered_name: *mut *const c_char,
) -> nvrtcResult {
    entry(|| {
        let p = program(prog)?;
        let expr = string(name_expression)?;
        non_null(lowered_name)?;
        let p = lock(&p);
        let State::Compiled { lowered, .. } = &p.state else {
            return Err(NVRTC_ERROR_NO_LOWERED_NAMES_BEFORE_COMPILATION);
        };
        let (_, name) = lowered.iter().find(|(e, _)| *e == expr).ok_or(NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID)?;
        put(lowered_name, name.as_ptr())
    })
}

// The exported functions have exactly the types cudarc looks them up with (its `_F` aliases).
const _: () = {
    type P = nvrtcProgram;
    type R = nvrtcResult;
    let _: unsafe extern "C" fn(*mut c_int, *mut c_int) -> R = nvrtcVersion;
    let _: unsafe extern "C" fn(*mut c_int) -> R = nvrtcGetNumSupportedArchs;
    let _: unsafe extern "C" fn(*mut c_int) -> R = nvrtcGetSupportedArchs;
    let _: unsafe extern "C" fn(*mut P, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> R =
        nvrtcCreateProgram;
    let _: unsafe extern "C" fn(*mut P) -> R = nvrtcDestroyProgram;
    let _: unsafe extern "C" fn(P, c_int, *const *const c_char) -> R = nvrtcCompileProgram;
    let _: unsafe extern "C" fn(P, *mut usize) -> R = nvrtcGetProgramLogSize;
    let _: unsafe extern "C" fn(P, *mut c_char) -> R = nvrtcGetProgramLog;
    let _: unsafe extern "C" fn(P, *mut usize) -> R = nvrtcGetCUBINSize;
    let _: unsafe extern "C" fn(P, *mut c_char) -> R = nvrtcGetCUBIN;
    let _: unsafe extern "C" fn(P, *mut usize) -> R = nvrtcGetPTXSize;
    let _: unsafe extern "C" fn(P, *mut c_char) -> R = nvrtcGetPTX;
    let _: unsafe extern "C" fn(P, *mut usize) -> R = nvrtcGetLTOIRSize;
    let _: unsafe extern "C" fn(P, *mut c_char) -> R = nvrtcGetLTOIR;
    let _: unsafe extern "C" fn(P, *mut usize) -> R = nvrtcGetOptiXIRSize;
    let _: unsafe extern "C" fn(P, *mut c_char) -> R = nvrtcGetOptiXIR;
    let _: unsafe extern "C" fn(P, *const c_char) -> R = nvrtcAddNameExpression;
    let _: unsafe extern "C" fn(P, *const c_char, *mut *const c_char) -> R = nvrtcGetLoweredName;
};

#[cfg(test)]
mod tests;
