//! Module images, functions and kernel launches (the Rust mirror of
//! `kernels/sim/include/cudasim/abi.h`).

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUresult;

use crate::context::{lock, Registry};
use crate::stream::Stream;
use crate::{code, fail, Res};

const ABI_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"CUDASIM1";
const HEADER_BYTES: usize = 24;
const IMAGE_ASAN: u32 = 1;
/// Dynamic shared memory a function may use without opting in (cuFuncSetAttribute).
pub(crate) const DEFAULT_DYNAMIC_SMEM: i32 = 48 * 1024;
/// sm_90's opt-in maximum per block.
pub(crate) const MAX_DYNAMIC_SMEM: i32 = 232_448;

#[repr(C)]
struct KernelDesc {
    name: *const c_char,
    entry: unsafe extern "C" fn(*mut *mut c_void),
    max_threads_per_block: u32,
    num_params: u32,
    param_sizes: *const usize,
}

#[repr(C)]
struct LaunchParams {
    kernel: *const KernelDesc,
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_smem_bytes: usize,
    params: *mut *mut c_void,
    seed: u64,
}

type AbiVersionFn = unsafe extern "C" fn() -> u32;
type KernelsFn = unsafe extern "C" fn(*mut usize) -> *const KernelDesc;
type CapacityFn = unsafe extern "C" fn() -> usize;
type LaunchFn = unsafe extern "C" fn(*const LaunchParams, *mut c_char, usize) -> i32;

pub(crate) struct Module {
    kernels: *const KernelDesc,
    count: usize,
    capacity: usize,
    launch: LaunchFn,
    // Keeps the shared object mapped as long as a function or a queued launch needs it.
    _lib: libloading::Library,
}

// SAFETY: the kernel table is immutable static data of the loaded library, which `_lib`
// keeps mapped; the functions are thread-safe given one grid at a time (LAUNCH_LOCK).
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}

pub(crate) struct Function {
    module: Arc<Module>,
    index: usize,
    pub name: String,
    pub max_threads: u32,
    pub max_dynamic_smem: Mutex<i32>,
}

static MODULES: Registry<Module> = Registry::new(0x3D00_0000);
static FUNCTIONS: Registry<Function> = Registry::new(0xF700_0000);

fn check_mode() -> bool {
    std::env::var("CUDA_SIM_CHECK").is_ok_and(|v| v.trim() == "1")
}

fn asan_loaded() -> bool {
    // SAFETY: dlsym on the global namespace with a NUL-terminated name.
    unsafe { !libc_dlsym(c"__asan_init".as_ptr()).is_null() }
}

extern "C" {
    #[link_name = "dlsym"]
    fn dlsym_raw(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

unsafe fn libc_dlsym(name: *const c_char) -> *mut c_void {
    // RTLD_DEFAULT is the null handle on glibc.
    // SAFETY: forwarded to dlsym with a valid C string.
    unsafe { dlsym_raw(std::ptr::null_mut(), name) }
}

/// Loads a module image (cuModuleLoadData). Anything but a simulator image is
/// `CUDA_ERROR_INVALID_IMAGE`.
///
/// # Safety
/// `image` points to a readable module image (the header tells its length), as for the
/// real driver.
pub(crate) unsafe fn load(image: *const u8) -> Res<usize> {
    if image.is_null() {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    // SAFETY: every image, ours or a real cubin/PTX, is longer than 8 bytes.
    let magic = unsafe { std::slice::from_raw_parts(image, 8) };
    if magic != MAGIC {
        return Err(fail(
            CUresult::CUDA_ERROR_INVALID_IMAGE,
            "cuModuleLoadData: not a simulator module image (a real cubin or PTX?); kernels must be compiled by the simulated NVRTC",
        ));
    }
    // SAFETY: the magic says this is our header, which is HEADER_BYTES long.
    let header = unsafe { std::slice::from_raw_parts(image, HEADER_BYTES) };
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    let (abi, flags) = (word(8), word(12));
    let so_bytes = u64::from_le_bytes(header[16..24].try_into().unwrap()) as usize;
    if abi != ABI_VERSION {
        return Err(fail(CUresult::CUDA_ERROR_INVALID_IMAGE, format!("cuModuleLoadData: image of simulator ABI {abi}, this driver is ABI {ABI_VERSION}")));
    }
    let asan_image = flags & IMAGE_ASAN != 0;
    if asan_image != check_mode() {
        // Not an error to report: the engine recompiles a cached image the driver refuses.
        return Err(code(CUresult::CUDA_ERROR_INVALID_IMAGE));
    }
    if asan_image && !asan_loaded() {
        return Err(fail(
            CUresult::CUDA_ERROR_INVALID_IMAGE,
            "CUDA_SIM_CHECK=1 modules need the AddressSanitizer runtime in the process: run through `scripts/cuda-sim --check`",
        ));
    }
    // SAFETY: the header says `so_bytes` follow it.
    let so = unsafe { std::slice::from_raw_parts(image.add(HEADER_BYTES), so_bytes) };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!("cudasim-module-{}-{}.so", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, so).map_err(|e| fail(CUresult::CUDA_ERROR_INVALID_IMAGE, format!("cuModuleLoadData: writing {}: {e}", path.display())))?;
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: the object was built by the simulated NVRTC from kernel sources; loading it
    // runs only its static initialisers.
    let lib = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) };
    // In check mode the file stays (in the temp directory) so that AddressSanitizer can
    // name the functions of a report's stack frames from it.
    if !asan_image {
        let _ = std::fs::remove_file(&path);
    }
    let lib: libloading::Library =
        lib.map_err(|e| fail(CUresult::CUDA_ERROR_INVALID_IMAGE, format!("cuModuleLoadData: the module does not load: {e}")))?.into();
    // SAFETY: the symbols have the types abi.h declares.
    let module = unsafe {
        let sym = |name: &[u8]| -> Res<*const c_void> {
            lib.get::<*const c_void>(name).map(|s| *s).map_err(|_| {
                fail(CUresult::CUDA_ERROR_INVALID_IMAGE, format!("cuModuleLoadData: the module lacks {}", String::from_utf8_lossy(name)))
            })
        };
        let version: AbiVersionFn = std::mem::transmute(sym(b"cudasim_abi_version\0")?);
        let kernels: KernelsFn = std::mem::transmute(sym(b"cudasim_kernels\0")?);
        let capacity: CapacityFn = std::mem::transmute(sym(b"cudasim_dynamic_smem_capacity\0")?);
        let launch: LaunchFn = std::mem::transmute(sym(b"cudasim_launch\0")?);
        if version() != ABI_VERSION {
            return Err(fail(CUresult::CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: the module's runtime is of another simulator ABI"));
        }
        let mut count = 0usize;
        let table = kernels(&mut count);
        Module { kernels: table, count, capacity: capacity(), launch, _lib: lib }
    };
    Ok(MODULES.insert(Arc::new(module)))
}

/// Checks that a module handle is live.
pub(crate) fn check(handle: usize) -> Res {
    MODULES.get(handle).map(|_| ()).ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_HANDLE))
}

pub(crate) fn unload(handle: usize) -> Res {
    MODULES.remove(handle).map(|_| ()).ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_HANDLE))
}

/// cuModuleGetFunction: `CUDA_ERROR_NOT_FOUND` for a name the module does not have.
pub(crate) fn function(module: usize, name: &CStr) -> Res<usize> {
    let m = MODULES.get(module).ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_HANDLE))?;
    for i in 0..m.count {
        // SAFETY: the table has `count` entries with NUL-terminated names (abi.h).
        let desc = unsafe { &*m.kernels.add(i) };
        // SAFETY: as above.
        if unsafe { CStr::from_ptr(desc.name) } == name {
            let f = Function {
                module: m.clone(),
                index: i,
                name: name.to_string_lossy().into_owned(),
                max_threads: desc.max_threads_per_block.min(1024),
                max_dynamic_smem: Mutex::new(DEFAULT_DYNAMIC_SMEM.min(m.capacity as i32)),
            };
            return Ok(FUNCTIONS.insert(Arc::new(f)));
        }
    }
    Err(code(CUresult::CUDA_ERROR_NOT_FOUND))
}

pub(crate) fn get_function(handle: usize) -> Res<Arc<Function>> {
    FUNCTIONS.get(handle).ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_HANDLE))
}

impl Function {
    fn desc(&self) -> &KernelDesc {
        // SAFETY: `index` < count, checked when the function was looked up; `module` keeps
        // the table mapped.
        unsafe { &*self.module.kernels.add(self.index) }
    }

    pub fn capacity(&self) -> usize {
        self.module.capacity
    }
}

/// A checked launch configuration.
pub(crate) struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
}

/// Checks a launch as the hardware does.
pub(crate) fn check_launch(f: &Function, l: &Launch) -> Res {
    let [bx, by, bz] = l.block;
    let [gx, gy, gz] = l.grid;
    let threads = bx as u64 * by as u64 * bz as u64;
    let name = &f.name;
    if l.block.contains(&0) || l.grid.contains(&0) {
        return Err(fail(CUresult::CUDA_ERROR_INVALID_VALUE, format!("cuLaunchKernel `{name}`: a grid or block dimension is 0 (grid {:?}, block {:?})", l.grid, l.block)));
    }
    if bx > 1024 || by > 1024 || bz > 64 || threads > 1024 {
        return Err(fail(
            CUresult::CUDA_ERROR_INVALID_VALUE,
            format!("cuLaunchKernel `{name}`: block ({bx}, {by}, {bz}) = {threads} threads; the limits are 1024 x 1024 x 64 and 1024 threads"),
        ));
    }
    if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return Err(fail(CUresult::CUDA_ERROR_INVALID_VALUE, format!("cuLaunchKernel `{name}`: grid ({gx}, {gy}, {gz}) is past (2^31-1, 65535, 65535)")));
    }
    if threads > f.max_threads as u64 {
        return Err(fail(
            CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            format!("cuLaunchKernel `{name}`: {threads} threads per block, but the kernel is compiled for at most {} (__launch_bounds__)", f.max_threads),
        ));
    }
    let allowed = *lock(&f.max_dynamic_smem);
    if l.smem as i64 > allowed as i64 {
        return Err(fail(
            CUresult::CUDA_ERROR_INVALID_VALUE,
            format!(
                "cuLaunchKernel `{name}`: {} bytes of dynamic shared memory, but the function allows {allowed} \
                 (raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, up to {MAX_DYNAMIC_SMEM})",
                l.smem
            ),
        ));
    }
    Ok(())
}

/// One grid at a time in the process: a module's `__shared__` variables are its statics.
static LAUNCH_LOCK: Mutex<()> = Mutex::new(());

fn next_seed() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| std::env::var("CUDA_SIM_SEED").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0x5EED));
    base.wrapping_add(COUNT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Copies the argument values (the caller's may be gone when the launch runs) and queues
/// the grid on `stream`.
///
/// # Safety
/// `params` holds `f.num_params()` pointers to values of the kernel's parameter types.
pub(crate) unsafe fn enqueue(f: Arc<Function>, l: Launch, stream: &Arc<Stream>, params: *mut *mut c_void) -> Res {
    let desc = f.desc();
    let n = desc.num_params as usize;
    if n > 0 && params.is_null() {
        return Err(fail(CUresult::CUDA_ERROR_INVALID_VALUE, format!("cuLaunchKernel `{}`: kernelParams is null but the kernel takes {n} parameters", f.name)));
    }
    // Each value in its own 16-byte-aligned slot.
    let mut storage: Vec<u128> = Vec::new();
    let mut offsets = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: param_sizes has num_params entries (abi.h).
        let size = unsafe { *desc.param_sizes.add(i) };
        // SAFETY: the caller passes `n` valid pointers.
        let src = unsafe { *params.add(i) } as *const u8;
        if src.is_null() {
            return Err(fail(CUresult::CUDA_ERROR_INVALID_VALUE, format!("cuLaunchKernel `{}`: kernelParams[{i}] is null", f.name)));
        }
        let slots = size.div_ceil(16).max(1);
        let at = storage.len();
        storage.resize(at + slots, 0);
        // SAFETY: `src` points to `size` readable bytes (the parameter's value); the slot
        // range holds at least `size` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src, storage.as_mut_ptr().add(at) as *mut u8, size) };
        offsets.push(at);
    }
    let seed = next_seed();
    stream.push(Box::new(move || {
        let mut storage = storage;
        let base = storage.as_mut_ptr();
        // SAFETY: each offset is within `storage`, which outlives the call.
        let mut ptrs: Vec<*mut c_void> = offsets.iter().map(|&o| unsafe { base.add(o) } as *mut c_void).collect();
        let desc = f.desc();
        let p = LaunchParams {
            kernel: desc,
            grid: l.grid,
            block: l.block,
            dynamic_smem_bytes: l.smem as usize,
            params: if ptrs.is_empty() { std::ptr::null_mut() } else { ptrs.as_mut_ptr() },
            seed,
        };
        let mut msg = vec![0 as c_char; 4096];
        let rc = {
            let _one_grid = lock(&LAUNCH_LOCK);
            // SAFETY: the launch parameters follow abi.h; the module stays loaded (`f`).
            unsafe { (f.module.launch)(&p, msg.as_mut_ptr(), msg.len()) }
        };
        if rc == 0 {
            return Ok(());
        }
        let result = crate::context::result_from_raw(rc as u32).unwrap_or(CUresult::CUDA_ERROR_LAUNCH_FAILED);
        // SAFETY: the runtime writes a NUL-terminated message into `msg`.
        let text = unsafe { CStr::from_ptr(msg.as_ptr()) }.to_string_lossy().into_owned();
        Err(fail(result, format!("kernel `{}` failed ({}): {text}", f.name, crate::context::describe(result).0)))
    }));
    Ok(())
}
