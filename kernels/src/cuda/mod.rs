//! The CUDA backend's infrastructure: devices, the compute stream, kernel modules compiled
//! by NVRTC at first use, and the element types tensors hold on the GPU.
//!
//! # API for launcher authors
//!
//! ```text
//! cuda::device(ordinal: usize) -> Result<Arc<CudaDevice>>   // one per GPU, created on first use
//! dev.stream() -> &Arc<CudaStream>                          // THE compute stream; launch everything here
//! dev.function(module: &str, kernel: &str) -> Result<CudaFunction>
//!                                                           // module = stem of kernels/cuda/<module>.cu,
//!                                                           // or a registered one; compiled on first use,
//!                                                           // cached in memory + on disk
//! dev.register_module(module, source, &[kernel, ..]) -> Result<()>
//!                                                           // a `.cu` from outside the crate, compiled now
//! cuda::register_module(module, source, &[kernel, ..])      // the same, compiled at first use (no GPU needed)
//! dev.grid_stride(n: usize, block: u32) -> Result<LaunchConfig>  // 1-D grid for a grid-stride loop
//! dev.launch_error(kernel: &str) -> impl Fn(DriverError) -> Error
//! dev.arch() -> &str ("sm_90"), dev.name(), dev.sm_count(), dev.synchronize()
//! dev.alloc_zeros::<T>(n), dev.htod(&[T]), dev.dtoh(&CudaSlice<T>)
//!
//! Tensor side (see tensor.rs):
//!   t.device() == Device::Cuda(ordinal)
//!   t.cuda_slice::<T>() -> Result<&CudaSlice<T>>            // T: CudaElement (f32, half::bf16, u32)
//!   t.cuda_slice_mut::<T>() -> Result<&mut CudaSlice<T>>    // copies first if the storage is shared
//!   T::NAME ("f32" | "bf16" | "u32") for kernel names `<op>_<fwd|bwd>_<dtype>`
//! ```
//!
//! Every kernel goes on the device's single compute stream, so kernels run in launch order
//! and need no events between them; the host sees results after `dev.synchronize()` or a
//! device-to-host copy (which waits for the stream). cudarc's automatic per-buffer event
//! tracking is therefore turned off (it would record events around every argument of every
//! launch): code that adds a second stream (the data copy stream) orders it against the
//! compute stream itself, with `CudaStream::record_event` / `CudaStream::wait` (or the
//! `Event` / `wait_event` wrappers in staging.rs, which return `Error`), and must not let a
//! buffer be freed while the other stream still uses it.
//!
//! # A complete launcher (kernels/src/ops/fill.rs, the example to copy)
//!
//! ```ignore
//! pub fn fill<T: CudaElement>(dev: &CudaDevice, out: &mut CudaSlice<T>, value: f32) -> Result<()> {
//!     let kernel = format!("fill_{}", T::NAME);               // fill_f32, fill_bf16, fill_u32
//!     let f = dev.function("fill", &kernel)?;                  // kernels/cuda/fill.cu
//!     let n = out.len();
//!     let cfg = dev.grid_stride(n, 256)?;
//!     let mut launch = dev.stream().launch_builder(&f);
//!     launch.arg(out).arg(&value).arg(&n);
//!     // SAFETY: matches fill.cu `fill_<T>(T* out, float value, size_t n)`; out holds n elements.
//!     unsafe { launch.launch(cfg) }.map_err(dev.launch_error(&kernel))?;
//!     Ok(())
//! }
//! ```
//!
//! Arguments: `&mut CudaSlice<T>` for what the kernel writes, `&CudaSlice<T>` for what it
//! reads, `&x` for scalars (`usize` is `size_t`, `i32` is `int`, `f32` is `float`). The
//! public op (`ops::fill::fill`) checks shapes/dtypes/devices, then calls the launcher.
//!
//! # An op from outside the crate
//!
//! Its kernels come as a source string and a list of kernel names, registered once; its
//! launcher is then written exactly as above (`examples/custom_op.rs` is a complete one):
//!
//! ```ignore
//! const SOURCE: &str = r#"#include "common.cuh"
//! extern "C" __global__ void scale_f32(float* out, const float* inp, float a, size_t n) { ... }"#;
//! dev.register_module("my_scale", SOURCE, &["scale_f32"])?;   // compiled (or loaded from the cache) now
//! let f = dev.function("my_scale", "scale_f32")?;
//! ```
//!
//! A name taken by a built-in module, a kernel not in the list, or a listed kernel missing
//! from the source is an error saying so; a compile error is `Error::Compile` for
//! `my_scale.cu` with NVRTC's log. Registered modules are not in the launch table
//! (`launches.rs`), which lists the built-in kernels only.
//!
//! # Files
//! - `probe.rs`: is a GPU usable? (never panics; reasons a user can act on)
//! - `nvrtc.rs`: finds and loads NVRTC and the CUDA headers; compiles a source to a cubin
//!   (optionally with ptxas's report of each kernel's registers, shared memory and spills)
//! - `resources.rs`: reads that report, and checks every kernel against `launches.rs` (each
//!   kernel's launch configuration at the reference shape) with `occupancy.rs` (blocks per SM)
//! - `cache.rs`: the on-disk cubin cache (looked up without NVRTC; `engine kernels build`)
//! - `registered.rs`: the registry of kernel modules from outside the crate
//! - `staging.rs`: pinned host buffers, the copy stream, events (record, wait, query,
//!   elapsed time) and strided host-to-device copies: the data pipeline's half of the GPU
//! - this file: `CudaDevice`, the per-ordinal registry, module/function lookup

mod cache;
pub mod launches;
pub mod nvrtc;
pub mod occupancy;
pub mod probe;
mod registered;
pub mod resources;
pub mod staging;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
    DeviceRepr, DeviceSlice, DriverError, LaunchArgs, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
pub use half::bf16;
/// cuBLASLt, only as a reference to beat (`engine bench kernels` times it on our GEMM
/// shapes); no op uses it.
pub use cudarc::cublaslt;
/// Device attributes for `CudaContext::attribute` (e.g. the L2 cache size).
pub use cudarc::driver::sys::CUdevice_attribute;

use crate::{DType, Device, Error, Result};

pub use cache::{build_into as build_kernel_cache, cache_dir};
pub use probe::{probe, probe_driver, ProbeInfo};
pub use registered::register_module;
pub use staging::{copy_rows_htod, stall_stream, wait_event, Event, EventKind, PinnedBuffer};

/// `(file stem, CUDA C source)` of every embedded `kernels/cuda/*.cu` (generated by build.rs).
pub mod sources {
    include!(concat!(env!("OUT_DIR"), "/cuda_sources.rs"));
}

/// The embedded source of `kernels/cuda/<module>.cu`.
pub fn source(module: &str) -> Option<&'static str> {
    sources::SOURCES.iter().find(|(stem, _)| *stem == module).map(|(_, src)| *src)
}

/// Compiles an embedded or registered module for `arch` (e.g. "sm_90") without a GPU; used
/// by the NVRTC compile test. Does not touch the disk cache.
pub fn compile_module(module: &str, arch: &str) -> Result<Vec<u8>> {
    nvrtc::compile_cubin(module, &module_source(module)?, arch)
}

/// [`compile_module`] with ptxas's report of every kernel in it (`nvrtc::compile_with_resources`).
pub fn compile_module_with_resources(module: &str, arch: &str) -> Result<(Vec<u8>, resources::ModuleResources)> {
    nvrtc::compile_with_resources(module, &module_source(module)?, arch)
}

/// The source of a built-in or a registered module.
fn module_source(module: &str) -> Result<Arc<str>> {
    match source(module) {
        Some(src) => Ok(Arc::from(src)),
        None => registered::get(module).map(|m| m.source).ok_or_else(|| unknown_module(module)),
    }
}

/// How errors name a module: its file, or that it was registered.
fn describe(module: &str) -> String {
    match source(module) {
        Some(_) => format!("kernels/cuda/{module}.cu"),
        None => format!("the registered module `{module}`"),
    }
}

fn unknown_module(module: &str) -> Error {
    let known: Vec<&str> = sources::SOURCES.iter().map(|(s, _)| *s).collect();
    let registered: Vec<String> = registered::all().into_iter().map(|(name, _)| name).collect();
    let registered = if registered.is_empty() { "none".to_string() } else { registered.join(", ") };
    Error::Invalid {
        op: "cuda::function",
        msg: format!("no kernel file kernels/cuda/{module}.cu and no registered module `{module}` (embedded: {}; registered: {registered})", known.join(", ")),
    }
}

/// An element type a tensor can hold on the GPU.
pub trait CudaElement: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    const DTYPE: DType;
    /// The dtype suffix of kernel names: `<op>_<fwd|bwd>_<NAME>`.
    const NAME: &'static str;
}

impl CudaElement for f32 {
    const DTYPE: DType = DType::F32;
    const NAME: &'static str = "f32";
}

impl CudaElement for bf16 {
    const DTYPE: DType = DType::Bf16;
    const NAME: &'static str = "bf16";
}

impl CudaElement for u32 {
    const DTYPE: DType = DType::U32;
    const NAME: &'static str = "u32";
}

/// One GPU: its context, its compute stream, and the kernel modules loaded so far.
pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    name: String,
    sm_count: u32,
    driver_version: i32,
    pci_bus_id: String,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(String, String), CudaFunction>>,
    /// The copy stream for host-to-device batch copies, made on first use (staging.rs).
    copy_stream: Mutex<Option<Arc<CudaStream>>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice(cuda:{} {} {}, driver CUDA {})", self.ordinal, self.name, self.arch, self.driver_version)
    }
}

static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();

/// The device for `ordinal`, created on first use (context + compute stream) and shared
/// afterwards. Errors (never panics) when no usable driver or device is present.
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    let registry = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut devices = registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(dev) = devices.get(&ordinal) {
        return Ok(dev.clone());
    }
    let unavailable = |reason: String| Error::DeviceUnavailable { requested: format!("cuda:{ordinal}"), reason };
    probe_driver(ordinal).map_err(unavailable)?;
    let driver = |what: &'static str| move |e: DriverError| unavailable(format!("{what}: {e}"));
    let ctx = CudaContext::new(ordinal).map_err(driver("creating the CUDA context"))?;
    // SAFETY: called before any buffer or second stream exists on this context; all work goes
    // on the one compute stream, which orders it (see the module docs for a second stream).
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(driver("creating the compute stream"))?;
    let (major, minor) = ctx.compute_capability().map_err(driver("reading the compute capability"))?;
    let name = ctx.name().map_err(driver("reading the device name"))?;
    let mut driver_version = 0;
    // SAFETY: a valid out-pointer; the driver library is present (probe_driver checked it).
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) }.result().map_err(driver("reading the driver version"))?;
    let sm_count = ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(driver("reading the SM count"))?;
    let pci = |attrib| ctx.attribute(attrib).map_err(driver("reading the PCI address"));
    use cudarc::driver::sys::CUdevice_attribute as A;
    let pci_bus_id = format!(
        "{:08x}:{:02x}:{:02x}.0",
        pci(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
        pci(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
        pci(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?
    );
    let dev = Arc::new(CudaDevice {
        ordinal,
        ctx,
        stream,
        arch: format!("sm_{major}{minor}"),
        name,
        sm_count: sm_count.max(1) as u32,
        driver_version,
        pci_bus_id,
        modules: Mutex::new(HashMap::new()),
        functions: Mutex::new(HashMap::new()),
        copy_stream: Mutex::new(None),
    });
    devices.insert(ordinal, dev.clone());
    Ok(dev)
}

impl CudaDevice {
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// This GPU as a [`Device`].
    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The compute stream: every kernel and every tensor allocation of this device.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The exact architecture kernels are compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PCI address, `domain:bus:device.function` in hex as NVML writes it
    /// (`00000000:65:00.0`): how telemetry finds this GPU in NVML, whose device order
    /// need not be CUDA's.
    pub fn pci_bus_id(&self) -> &str {
        &self.pci_bus_id
    }

    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// The CUDA version the driver supports, as `major * 1000 + minor * 10` (13000 = 13.0).
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }

    /// `kernel` from `kernels/cuda/<module>.cu`, or from a registered module (one of the
    /// kernels it declared). The module is compiled for this device's architecture on first
    /// use (or loaded from the disk cache) and kept loaded.
    pub fn function(&self, module: &str, kernel: &str) -> Result<CudaFunction> {
        let key = (module.to_string(), kernel.to_string());
        if let Some(f) = lock(&self.functions).get(&key) {
            return Ok(f.clone());
        }
        if let Some(m) = registered::get(module).filter(|_| source(module).is_none()) {
            if !m.kernels.iter().any(|k| k == kernel) {
                return Err(registered::undeclared(module, kernel, &m.kernels));
            }
        }
        let f = load_function(&self.module(module)?, module, kernel)?;
        lock(&self.functions).insert(key, f.clone());
        Ok(f)
    }

    /// Registers a kernel module from outside the crate ([`register_module`]: `module` names
    /// it, `kernels` are its `extern "C" __global__` functions) and loads it on this device
    /// now: compiled by NVRTC with the built-ins' options and headers, or taken from the disk
    /// cache. Then [`function`](Self::function) hands out its kernels on every device. A
    /// compile error (`Error::Compile` for `<module>.cu`, with NVRTC's log) or a declared
    /// kernel missing from the source leaves nothing registered. Registering the same module
    /// again (same source, same kernels) does nothing.
    pub fn register_module(&self, module: &str, source: &str, kernels: &[&str]) -> Result<()> {
        let mut modules = lock(&self.modules);
        if registered::check(module, source, kernels)? && modules.contains_key(module) {
            return Ok(());
        }
        let m = self.load_module(module, source)?;
        let functions = kernels.iter().map(|k| load_function(&m, module, k)).collect::<Result<Vec<_>>>()?;
        registered::register_module(module, source, kernels)?;
        modules.insert(module.to_string(), m);
        let mut loaded = lock(&self.functions);
        for (kernel, f) in kernels.iter().zip(functions) {
            loaded.insert((module.to_string(), kernel.to_string()), f);
        }
        Ok(())
    }

    fn module(&self, module: &str) -> Result<Arc<CudaModule>> {
        // Held while compiling so two threads never compile the same module twice.
        let mut modules = lock(&self.modules);
        if let Some(m) = modules.get(module) {
            return Ok(m.clone());
        }
        let m = self.load_module(module, &module_source(module)?)?;
        modules.insert(module.to_string(), m.clone());
        Ok(m)
    }

    /// `src` (module `module`) on this device: from the disk cache, else compiled.
    fn load_module(&self, module: &str, src: &str) -> Result<Arc<CudaModule>> {
        let load = |cubin: Vec<u8>| self.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin));
        // Cached cubins first, with no NVRTC involved: a driver-only machine runs from them. One
        // the driver rejects (corrupt, or made for another driver) falls through to the next,
        // then to a fresh compile.
        let mut rejected = None;
        let mut loaded = None;
        for entry in cache::lookup(module, src, &self.arch) {
            match std::fs::read(&entry.path) {
                Ok(bytes) if !bytes.is_empty() => match load(bytes) {
                    Ok(m) => {
                        loaded = Some(m);
                        break;
                    }
                    Err(e) => rejected = Some(format!("the driver rejected the cached {} ({e})", entry.path.display())),
                },
                _ => {}
            }
        }
        if let Some(m) = loaded {
            return Ok(m);
        }
        let cubin = cache::compile(module, src, &self.arch).map_err(|e| match e {
            Error::Nvrtc { reason } => self.missing_kernel(module, rejected.as_deref(), &reason),
            other => other,
        })?;
        load(cubin).map_err(|e| Error::Cuda { op: format!("loading the cubin of {} for {}", describe(module), self.arch), msg: e.to_string() })
    }

    /// The error for a kernel file that neither the cache nor NVRTC can provide.
    fn missing_kernel(&self, module: &str, rejected: Option<&str>, nvrtc_reason: &str) -> Error {
        let arch = &self.arch;
        let cache = cache_dir().map(|d| d.display().to_string()).unwrap_or_else(|| "none: set ENGINE_KERNEL_CACHE".into());
        let found = rejected.map(|r| format!("{r}, ")).unwrap_or_else(|| "it has no entry for it, ".into());
        let build = match source(module) {
            Some(_) => format!("run `engine kernels build --arch {arch} --out DIR`"),
            // `engine kernels build` knows only the built-ins; the program that registers the
            // module fills the cache as it runs.
            None => format!("run this program on a {arch} GPU with ENGINE_KERNEL_CACHE=DIR"),
        };
        Error::Nvrtc {
            reason: format!(
                "{} for {arch} is not in the kernel cache ({cache}): {found}and compiling it needs NVRTC: {nvrtc_reason}. \
                 Or, on a machine with NVRTC, {build}, copy DIR here and set ENGINE_KERNEL_CACHE=DIR",
                describe(module)
            ),
        }
    }

    /// A 1-D launch for a grid-stride loop over `n` elements: enough blocks to fill the
    /// GPU (32 per SM), fewer when `n` is small. Errors if `block` is 0 or above 1024.
    pub fn grid_stride(&self, n: usize, block: u32) -> Result<LaunchConfig> {
        if block == 0 || block > 1024 {
            return Err(Error::Invalid { op: "grid_stride", msg: format!("block size {block} must be in 1..=1024") });
        }
        let needed = n.div_ceil(block as usize).max(1);
        let grid = needed.min(self.sm_count as usize * 32) as u32;
        Ok(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 })
    }

    /// Maps a launch failure to `Error::Launch` naming the kernel and device.
    pub fn launch_error(&self, kernel: &str) -> impl Fn(DriverError) -> Error {
        let kernel = kernel.to_string();
        let device = format!("cuda:{} ({})", self.ordinal, self.name);
        move |e| Error::Launch { kernel: kernel.clone(), msg: format!("{e} on {device}") }
    }

    /// Waits for everything queued on the compute stream; surfaces asynchronous errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(self.error("synchronize"))
    }

    /// Maps a driver error to `Error::Cuda` with what was being done.
    pub fn error(&self, op: &str) -> impl Fn(DriverError) -> Error {
        let op = format!("{op} on cuda:{}", self.ordinal);
        move |e| Error::Cuda { op: op.clone(), msg: e.to_string() }
    }

    pub fn alloc_zeros<T: CudaElement>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(n).map_err(self.error(&format!("allocating {n} x {}", T::NAME)))
    }

    pub fn htod<T: CudaElement>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(data).map_err(self.error(&format!("copying {} x {} to the GPU", data.len(), T::NAME)))
    }

    /// Copies to the host, waiting for the compute stream.
    pub fn dtoh<T: CudaElement>(&self, data: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(data).map_err(self.error(&format!("copying {} x {} to the host", data.len(), T::NAME)))
    }
}

/// `kernel` from the loaded `module`.
fn load_function(m: &Arc<CudaModule>, module: &str, kernel: &str) -> Result<CudaFunction> {
    m.load_function(kernel).map_err(|e| Error::Cuda {
        op: format!("loading kernel `{kernel}` from {}", describe(module)),
        msg: format!("{e} (is it declared extern \"C\" __global__?)"),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
