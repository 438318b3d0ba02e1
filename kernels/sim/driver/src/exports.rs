//! The driver API's entry points, with the signatures of cudarc's declarations
//! (`cudarc::driver::sys`). Enum arguments are taken as their integer values, so that an
//! out-of-range value from a caller is refused rather than undefined behaviour.
//!
//! Each function is a thin shell over the modules beside this one, run through
//! [`crate::entry`] (a panic becomes `CUDA_ERROR_UNKNOWN`, never an unwind into C).
#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute as A, CUfunction_attribute as F, CUresult};

use crate::context::{self, current, describe, props, result_from_raw, CONTEXT_HANDLE};
use crate::memory::{self, check_device, host_region, Kind, Region};
use crate::module::{self, Launch, MAX_DYNAMIC_SMEM};
use crate::stream::{self, Stream};
use crate::{code, entry, fail, host_blocks, out, Res};

type Ptr = *mut c_void;
type DevPtr = u64;

fn stream_of(handle: Ptr) -> Res<Arc<Stream>> {
    stream::get(handle as usize)
}

// ---- initialisation, errors, device -------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    entry("cuInit", || context::init(flags))
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    entry("cuDriverGetVersion", || out(version, 13000))
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: c_uint, text: *mut *const c_char) -> CUresult {
    entry("cuGetErrorName", || error_text(error, text, true))
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: c_uint, text: *mut *const c_char) -> CUresult {
    entry("cuGetErrorString", || error_text(error, text, false))
}

unsafe fn error_text(error: c_uint, text: *mut *const c_char, name: bool) -> Res {
    if text.is_null() {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    let Some(result) = result_from_raw(error) else {
        // SAFETY: checked non-null above.
        unsafe { *text = std::ptr::null() };
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    };
    // Static C strings, one per code, built once.
    static TEXTS: std::sync::OnceLock<Vec<(u32, std::ffi::CString, std::ffi::CString)>> = std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        (0..1000u32)
            .filter_map(result_from_raw)
            .map(|r| {
                let (n, s) = describe(r);
                (r as u32, std::ffi::CString::new(n).unwrap(), std::ffi::CString::new(s).unwrap())
            })
            .collect()
    });
    let (_, n, s) = texts.iter().find(|(raw, _, _)| *raw == result as u32).expect("every known code has a text");
    // SAFETY: checked non-null above; the strings live for the process.
    unsafe { *text = if name { n.as_ptr() } else { s.as_ptr() } };
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    entry("cuDeviceGetCount", || {
        context::initialized()?;
        out(count, 1)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut c_int, ordinal: c_int) -> CUresult {
    entry("cuDeviceGet", || {
        context::device(ordinal)?;
        out(device, ordinal)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: c_int) -> CUresult {
    entry("cuDeviceGetName", || {
        context::device(dev)?;
        if name.is_null() || len <= 0 {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        let bytes = props().name.as_bytes();
        let n = bytes.len().min(len as usize - 1);
        // SAFETY: `name` holds `len` bytes; n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name as *mut u8, n);
            *name.add(n) = 0;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: c_int) -> CUresult {
    entry("cuDeviceGetUuid", || {
        context::device(dev)?;
        out(uuid, *b"cuda-sim-device0")
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: c_int) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuDeviceGetUuid(uuid, dev) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(bus: *mut c_char, len: c_int, dev: c_int) -> CUresult {
    entry("cuDeviceGetPCIBusId", || {
        context::device(dev)?;
        let id = b"0000:1A:00.0\0";
        if bus.is_null() || (len as usize) < id.len() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        // SAFETY: `bus` holds at least id.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(id.as_ptr(), bus as *mut u8, id.len()) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: c_int) -> CUresult {
    entry("cuDeviceTotalMem", || {
        context::device(dev)?;
        out(bytes, props().total_memory)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceComputeCapability(major: *mut c_int, minor: *mut c_int, dev: c_int) -> CUresult {
    entry("cuDeviceComputeCapability", || {
        context::device(dev)?;
        out(major, 9)?;
        out(minor, 0)
    })
}

/// The attribute table of the simulated device (an H100-like sm_90 part, with the SM count
/// and memory of [`props`]). Attributes not listed read 0.
fn attribute(attrib: u32) -> Option<c_int> {
    let p = props();
    let known: &[(A, c_int)] = &[
        (A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 1024),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, 1024),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, 1024),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, 64),
        (A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, i32::MAX),
        (A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, 65535),
        (A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z, 65535),
        (A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, 49152),
        (A::CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY, 65536),
        (A::CU_DEVICE_ATTRIBUTE_WARP_SIZE, 32),
        (A::CU_DEVICE_ATTRIBUTE_MAX_PITCH, i32::MAX),
        (A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, 65536),
        (A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE, 1_980_000),
        (A::CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT, 512),
        (A::CU_DEVICE_ATTRIBUTE_GPU_OVERLAP, 1),
        (A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, p.sm_count),
        (A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, 1),
        (A::CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS, 1),
        (A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, 0x1A),
        (A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, 2_619_000),
        (A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, 5120),
        (A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, 50 << 20),
        (A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 2048),
        (A::CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT, 2),
        (A::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, 1),
        (A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 9),
        (A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0),
        (A::CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, 233_472),
        (A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR, 65536),
        (A::CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, MAX_DYNAMIC_SMEM),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR, 32),
        (A::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK, 1024),
    ];
    if attrib >= A::CU_DEVICE_ATTRIBUTE_MAX as u32 || attrib == 0 {
        return None;
    }
    Some(known.iter().find(|(a, _)| *a as u32 == attrib).map(|(_, v)| *v).unwrap_or(0))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(value: *mut c_int, attrib: c_uint, dev: c_int) -> CUresult {
    entry("cuDeviceGetAttribute", || {
        context::device(dev)?;
        let v = attribute(attrib).ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_VALUE))?;
        out(value, v)
    })
}

// ---- contexts -------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut Ptr, dev: c_int) -> CUresult {
    entry("cuDevicePrimaryCtxRetain", || {
        context::device(dev)?;
        out(ctx, CONTEXT_HANDLE as Ptr)?;
        context::context().retain();
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: c_int) -> CUresult {
    entry("cuDevicePrimaryCtxRelease", || {
        context::device(dev)?;
        context::context().release()
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(dev: c_int, flags: *mut c_uint, active: *mut c_int) -> CUresult {
    entry("cuDevicePrimaryCtxGetState", || {
        context::device(dev)?;
        out(flags, 0)?;
        out(active, context::context().is_active() as c_int)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Ptr) -> CUresult {
    entry("cuCtxSetCurrent", || context::set_current(ctx as usize))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut Ptr) -> CUresult {
    entry("cuCtxGetCurrent", || {
        context::initialized()?;
        out(ctx, context::current_handle() as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: Ptr) -> CUresult {
    entry("cuCtxPushCurrent", || context::push_current(ctx as usize))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(ctx: *mut Ptr) -> CUresult {
    entry("cuCtxPopCurrent", || {
        let popped = context::pop_current()?;
        if !ctx.is_null() {
            out(ctx, popped as Ptr)?;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(device: *mut c_int) -> CUresult {
    entry("cuCtxGetDevice", || {
        current()?;
        out(device, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetApiVersion(ctx: Ptr, version: *mut c_uint) -> CUresult {
    entry("cuCtxGetApiVersion", || {
        context::check_handle(ctx as usize)?;
        out(version, 13000)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    entry("cuCtxSynchronize", || {
        current()?;
        host_blocks();
        for s in stream::all() {
            s.drain();
        }
        context::context().health()
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetLimit(value: *mut usize, limit: c_uint) -> CUresult {
    entry("cuCtxGetLimit", || {
        let ctx = current()?;
        let v = context::lock(&ctx.limits).get(&limit).copied().unwrap_or(0);
        out(value, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetLimit(limit: c_uint, value: usize) -> CUresult {
    entry("cuCtxSetLimit", || {
        let ctx = current()?;
        context::lock(&ctx.limits).insert(limit, value);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetFlags(flags: *mut c_uint) -> CUresult {
    entry("cuCtxGetFlags", || {
        current()?;
        out(flags, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetFlags(_flags: c_uint) -> CUresult {
    entry("cuCtxSetFlags", || current().map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCacheConfig(config: *mut c_uint) -> CUresult {
    entry("cuCtxGetCacheConfig", || {
        current()?;
        out(config, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCacheConfig(_config: c_uint) -> CUresult {
    entry("cuCtxSetCacheConfig", || current().map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int) -> CUresult {
    entry("cuCtxGetStreamPriorityRange", || {
        current()?;
        if !least.is_null() {
            out(least, 0)?;
        }
        if !greatest.is_null() {
            out(greatest, -5)?;
        }
        Ok(())
    })
}

// ---- streams and events -----------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut Ptr, flags: c_uint) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuStreamCreateWithPriority(stream, flags, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(stream: *mut Ptr, flags: c_uint, priority: c_int) -> CUresult {
    entry("cuStreamCreate", || {
        current()?;
        if stream.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        let handle = stream::create(flags, priority.clamp(-5, 0))?;
        out(stream, handle as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: Ptr) -> CUresult {
    entry("cuStreamDestroy", || {
        context::initialized()?;
        stream::destroy(stream as usize)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetFlags(stream: Ptr, flags: *mut c_uint) -> CUresult {
    entry("cuStreamGetFlags", || {
        context::for_stream(stream as usize)?;
        let s = stream_of(stream)?;
        out(flags, s.non_blocking as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetPriority(stream: Ptr, priority: *mut c_int) -> CUresult {
    entry("cuStreamGetPriority", || {
        context::for_stream(stream as usize)?;
        let s = stream_of(stream)?;
        out(priority, s.priority)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCtx(stream: Ptr, ctx: *mut Ptr) -> CUresult {
    entry("cuStreamGetCtx", || {
        context::for_stream(stream as usize)?;
        stream_of(stream)?;
        out(ctx, CONTEXT_HANDLE as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: Ptr) -> CUresult {
    entry("cuStreamSynchronize", || {
        context::for_stream(stream as usize)?;
        let s = stream_of(stream)?;
        host_blocks();
        s.drain();
        context::context().health()
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(stream: Ptr) -> CUresult {
    entry("cuStreamQuery", || {
        context::for_stream(stream as usize)?;
        let s = stream_of(stream)?;
        if s.is_done(s.submitted()) {
            Ok(())
        } else {
            Err(code(CUresult::CUDA_ERROR_NOT_READY))
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(stream: Ptr, event: Ptr, flags: c_uint) -> CUresult {
    entry("cuStreamWaitEvent", || {
        context::for_stream(stream as usize)?;
        if flags & !1 != 0 {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        let s = stream_of(stream)?;
        let e = stream::event(event as usize)?;
        stream::wait_event(&s, &e);
        Ok(())
    })
}

/// A caller's pointer carried to a stream worker.
struct SendPtr(Ptr);
// SAFETY: the driver API hands userData to the host function on another thread by contract.
unsafe impl Send for SendPtr {}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchHostFunc(stream: Ptr, func: Option<unsafe extern "C" fn(Ptr)>, data: Ptr) -> CUresult {
    entry("cuLaunchHostFunc", || {
        context::for_stream(stream as usize)?;
        let s = stream_of(stream)?;
        let func = func.ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_VALUE))?;
        let data = SendPtr(data);
        s.push(Box::new(move || {
            let data = data;
            // SAFETY: the caller's host function, called with its own userData, on a thread
            // other than the caller's, as the driver does.
            unsafe { func(data.0) };
            Ok(())
        }));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut Ptr, flags: c_uint) -> CUresult {
    entry("cuEventCreate", || {
        current()?;
        if event.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        let handle = stream::event_create(flags)?;
        out(event, handle as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(event: Ptr, stream: Ptr) -> CUresult {
    entry("cuEventRecord", || {
        context::for_stream(stream as usize)?;
        let e = stream::event(event as usize)?;
        let s = stream_of(stream)?;
        e.record(&s);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags(event: Ptr, stream: Ptr, flags: c_uint) -> CUresult {
    if flags & !1 != 0 {
        return CUresult::CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: same contract.
    unsafe { cuEventRecord(event, stream) }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(event: Ptr) -> CUresult {
    entry("cuEventQuery", || {
        context::live()?;
        let e = stream::event(event as usize)?;
        if e.is_complete() {
            Ok(())
        } else {
            Err(code(CUresult::CUDA_ERROR_NOT_READY))
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: Ptr) -> CUresult {
    entry("cuEventSynchronize", || {
        context::live()?;
        let e = stream::event(event as usize)?;
        host_blocks();
        e.synchronize();
        context::context().health()
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, start: Ptr, end: Ptr) -> CUresult {
    entry("cuEventElapsedTime", || {
        context::live()?;
        if ms.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        let (a, b) = (stream::event(start as usize)?, stream::event(end as usize)?);
        out(ms, stream::elapsed_ms(&a, &b)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: Ptr, end: Ptr) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuEventElapsedTime_v2(ms, start, end) }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(event: Ptr) -> CUresult {
    entry("cuEventDestroy", || {
        context::initialized()?;
        stream::event_destroy(event as usize)
    })
}

// ---- memory -----------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut DevPtr, bytes: usize) -> CUresult {
    entry("cuMemAlloc", || {
        current()?;
        if dptr.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        out(dptr, memory::alloc(bytes, Kind::Device)? as DevPtr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut DevPtr, bytes: usize, stream: Ptr) -> CUresult {
    entry("cuMemAllocAsync", || {
        current()?;
        stream_of(stream)?;
        if dptr.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        // Made at once: it is usable in stream order, and earlier is still in order.
        out(dptr, memory::alloc(bytes, Kind::Device)? as DevPtr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: DevPtr) -> CUresult {
    entry("cuMemFree", || {
        current()?;
        memory::begin_free(dptr as usize, Kind::Device)?;
        // cuMemFree synchronizes: nothing queued may still use the memory.
        host_blocks();
        for s in stream::all() {
            s.drain();
        }
        memory::release(dptr as usize);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: DevPtr, stream: Ptr) -> CUresult {
    entry("cuMemFreeAsync", || {
        current()?;
        let s = stream_of(stream)?;
        memory::begin_free(dptr as usize, Kind::Device)?;
        s.push(Box::new(move || {
            memory::release(dptr as usize);
            Ok(())
        }));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(pp: *mut Ptr, bytes: usize, flags: c_uint) -> CUresult {
    entry("cuMemHostAlloc", || {
        current()?;
        if flags & !0xF != 0 || pp.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        out(pp, memory::alloc(bytes, Kind::PinnedHost)? as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut Ptr, bytes: usize) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuMemHostAlloc(pp, bytes, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: Ptr) -> CUresult {
    entry("cuMemFreeHost", || {
        current()?;
        memory::begin_free(p as usize, Kind::PinnedHost)?;
        host_blocks();
        for s in stream::all() {
            s.drain();
        }
        memory::release(p as usize);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    entry("cuMemGetInfo", || {
        current()?;
        let t = props().total_memory;
        out(free, t.saturating_sub(memory::device_bytes_in_use()))?;
        out(total, t)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(pool: *mut Ptr, dev: c_int) -> CUresult {
    entry("cuDeviceGetDefaultMemPool", || {
        context::device(dev)?;
        out(pool, 0x900D as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolSetAttribute(pool: Ptr, _attr: c_uint, value: Ptr) -> CUresult {
    entry("cuMemPoolSetAttribute", || {
        if pool as usize != 0x900D || value.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolTrimTo(pool: Ptr, _keep: usize) -> CUresult {
    entry("cuMemPoolTrimTo", || if pool as usize == 0x900D { Ok(()) } else { Err(code(CUresult::CUDA_ERROR_INVALID_VALUE)) })
}

/// A host-visible address range given to a copy: where it is, and how the copy must treat it.
fn host_side(ptr: usize, bytes: usize) -> Region {
    host_region(ptr, bytes)
}

/// Queues a copy of `bytes` from `src` to `dst` on `s`, checking device sides when queued
/// and when run. A pageable host source is read now (the driver stages it before
/// returning); a pageable host destination makes the call wait for the copy.
fn copy(what: &'static str, s: &Arc<Stream>, dst: (usize, bool), src: (usize, bool), bytes: usize) -> Res {
    let ((dst, dst_dev), (src, src_dev)) = (dst, src);
    if bytes == 0 {
        return Ok(());
    }
    if (!dst_dev && dst == 0) || (!src_dev && src == 0) {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    if dst_dev {
        check_device(dst, bytes, &format!("{what} destination"), false)?;
    }
    if src_dev {
        check_device(src, bytes, &format!("{what} source"), false)?;
    }
    let staged: Option<Vec<u8>> = (!src_dev && host_side(src, bytes) == Region::Pageable).then(|| {
        // SAFETY: the caller's host buffer holds `bytes` readable bytes (API contract).
        unsafe { std::slice::from_raw_parts(src as *const u8, bytes) }.to_vec()
    });
    let wait = !dst_dev && host_side(dst, bytes) == Region::Pageable;
    let seq = s.push(Box::new(move || {
        if dst_dev {
            check_device(dst, bytes, &format!("{what} destination (when the copy ran)"), true)?;
        }
        if src_dev {
            check_device(src, bytes, &format!("{what} source (when the copy ran)"), true)?;
        }
        let from = staged.as_ref().map_or(src as *const u8, |v| v.as_ptr());
        // SAFETY: both ranges are checked live device memory or caller host memory of
        // `bytes` bytes; `copy` (memmove) allows overlap as cuMemcpyDtoD does for one buffer.
        unsafe { std::ptr::copy(from, dst as *mut u8, bytes) };
        Ok(())
    }));
    if wait {
        host_blocks();
        s.wait_for(seq);
        context::context().health()?;
    }
    Ok(())
}

fn memset(what: &'static str, s: &Arc<Stream>, dst: usize, pattern: Vec<u8>, count: usize) -> Res {
    let bytes = count.checked_mul(pattern.len()).ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_VALUE))?;
    if bytes == 0 {
        return Ok(());
    }
    if !dst.is_multiple_of(pattern.len()) {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    check_device(dst, bytes, what, false)?;
    s.push(Box::new(move || {
        check_device(dst, bytes, &format!("{what} (when it ran)"), true)?;
        // SAFETY: checked live device memory of `bytes` bytes.
        let d = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, bytes) };
        for chunk in d.chunks_exact_mut(pattern.len()) {
            chunk.copy_from_slice(&pattern);
        }
        Ok(())
    }));
    Ok(())
}

/// Runs `f` on the default stream and waits for it (the synchronous copies and memsets).
fn sync_on_default(f: impl FnOnce(&Arc<Stream>) -> Res) -> Res {
    let s = stream::get(0)?;
    f(&s)?;
    host_blocks();
    s.drain();
    context::context().health()
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(dst: DevPtr, src: *const c_void, bytes: usize, stream: Ptr) -> CUresult {
    entry("cuMemcpyHtoDAsync", || {
        current()?;
        copy("cuMemcpyHtoDAsync", &stream_of(stream)?, (dst as usize, true), (src as usize, false), bytes)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(dst: Ptr, src: DevPtr, bytes: usize, stream: Ptr) -> CUresult {
    entry("cuMemcpyDtoHAsync", || {
        current()?;
        copy("cuMemcpyDtoHAsync", &stream_of(stream)?, (dst as usize, false), (src as usize, true), bytes)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(dst: DevPtr, src: DevPtr, bytes: usize, stream: Ptr) -> CUresult {
    entry("cuMemcpyDtoDAsync", || {
        current()?;
        copy("cuMemcpyDtoDAsync", &stream_of(stream)?, (dst as usize, true), (src as usize, true), bytes)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: DevPtr, src: *const c_void, bytes: usize) -> CUresult {
    entry("cuMemcpyHtoD", || {
        current()?;
        sync_on_default(|s| copy("cuMemcpyHtoD", s, (dst as usize, true), (src as usize, false), bytes))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: Ptr, src: DevPtr, bytes: usize) -> CUresult {
    entry("cuMemcpyDtoH", || {
        current()?;
        sync_on_default(|s| copy("cuMemcpyDtoH", s, (dst as usize, false), (src as usize, true), bytes))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: DevPtr, src: DevPtr, bytes: usize) -> CUresult {
    entry("cuMemcpyDtoD", || {
        current()?;
        sync_on_default(|s| copy("cuMemcpyDtoD", s, (dst as usize, true), (src as usize, true), bytes))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(dst: DevPtr, value: u8, n: usize, stream: Ptr) -> CUresult {
    entry("cuMemsetD8Async", || {
        current()?;
        memset("cuMemsetD8Async", &stream_of(stream)?, dst as usize, vec![value], n)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(dst: DevPtr, value: c_uint, n: usize, stream: Ptr) -> CUresult {
    entry("cuMemsetD32Async", || {
        current()?;
        memset("cuMemsetD32Async", &stream_of(stream)?, dst as usize, value.to_le_bytes().to_vec(), n)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: DevPtr, value: u8, n: usize) -> CUresult {
    entry("cuMemsetD8", || {
        current()?;
        sync_on_default(|s| memset("cuMemsetD8", s, dst as usize, vec![value], n))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: DevPtr, value: c_uint, n: usize) -> CUresult {
    entry("cuMemsetD32", || {
        current()?;
        sync_on_default(|s| memset("cuMemsetD32", s, dst as usize, value.to_le_bytes().to_vec(), n))
    })
}

/// `CUDA_MEMCPY2D` with its memory types as plain integers.
#[repr(C)]
pub struct Memcpy2D {
    src_x_in_bytes: usize,
    src_y: usize,
    src_memory_type: c_uint,
    src_host: *const c_void,
    src_device: DevPtr,
    src_array: Ptr,
    src_pitch: usize,
    dst_x_in_bytes: usize,
    dst_y: usize,
    dst_memory_type: c_uint,
    dst_host: Ptr,
    dst_device: DevPtr,
    dst_array: Ptr,
    dst_pitch: usize,
    width_in_bytes: usize,
    height: usize,
}

unsafe fn memcpy_2d(what: &'static str, p: *const Memcpy2D, s: &Arc<Stream>) -> Res {
    if p.is_null() {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    // SAFETY: non-null, and a CUDA_MEMCPY2D by the API contract.
    let p = unsafe { &*p };
    const HOST: c_uint = 1;
    const DEVICE: c_uint = 2;
    const UNIFIED: c_uint = 4;
    let side = |ty: c_uint, host: usize, dev: DevPtr, x: usize, y: usize, pitch: usize| -> Res<(usize, bool)> {
        let (base, is_dev) = match ty {
            HOST => (host, false),
            DEVICE | UNIFIED => (dev as usize, true),
            _ => return Err(fail(CUresult::CUDA_ERROR_INVALID_VALUE, format!("{what}: memory type {ty} (arrays are not simulated)"))),
        };
        if p.height > 1 && pitch < p.width_in_bytes + x {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        let start = y.checked_mul(pitch).and_then(|o| o.checked_add(x)).and_then(|o| o.checked_add(base));
        Ok((start.ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_VALUE))?, is_dev))
    };
    let src = side(p.src_memory_type, p.src_host as usize, p.src_device, p.src_x_in_bytes, p.src_y, p.src_pitch)?;
    let dst = side(p.dst_memory_type, p.dst_host as usize, p.dst_device, p.dst_x_in_bytes, p.dst_y, p.dst_pitch)?;
    for row in 0..p.height {
        let at = |(base, dev): (usize, bool), pitch: usize| (base + row * pitch, dev);
        copy(what, s, at(dst, p.dst_pitch), at(src, p.src_pitch), p.width_in_bytes)?;
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy2DAsync_v2(p: *const Memcpy2D, stream: Ptr) -> CUresult {
    entry("cuMemcpy2DAsync", || {
        current()?;
        // SAFETY: forwarded contract.
        unsafe { memcpy_2d("cuMemcpy2DAsync", p, &stream_of(stream)?) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy2D_v2(p: *const Memcpy2D) -> CUresult {
    entry("cuMemcpy2D", || {
        current()?;
        // SAFETY: forwarded contract.
        sync_on_default(|s| unsafe { memcpy_2d("cuMemcpy2D", p, s) })
    })
}

// ---- modules, functions, launches -------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Ptr, image: *const c_void) -> CUresult {
    entry("cuModuleLoadData", || {
        current()?;
        if module.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        // SAFETY: the caller passes a module image.
        let handle = unsafe { module::load(image as *const u8)? };
        out(module, handle as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoad(module: *mut Ptr, path: *const c_char) -> CUresult {
    entry("cuModuleLoad", || {
        current()?;
        if module.is_null() || path.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        // SAFETY: a NUL-terminated path by contract.
        let path = unsafe { CStr::from_ptr(path) }.to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).map_err(|_| code(CUresult::CUDA_ERROR_FILE_NOT_FOUND))?;
        if bytes.len() < 24 {
            return Err(code(CUresult::CUDA_ERROR_INVALID_IMAGE));
        }
        // SAFETY: `bytes` is the whole image.
        let handle = unsafe { module::load(bytes.as_ptr())? };
        out(module, handle as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: Ptr) -> CUresult {
    entry("cuModuleUnload", || {
        context::initialized()?;
        module::unload(module as usize)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(func: *mut Ptr, module: Ptr, name: *const c_char) -> CUresult {
    entry("cuModuleGetFunction", || {
        context::live()?;
        if func.is_null() || name.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        // SAFETY: a NUL-terminated name by contract.
        let name = unsafe { CStr::from_ptr(name) };
        let handle = module::function(module as usize, name)?;
        out(func, handle as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetGlobal_v2(_dptr: *mut DevPtr, _bytes: *mut usize, module: Ptr, name: *const c_char) -> CUresult {
    entry("cuModuleGetGlobal", || {
        context::live()?;
        if name.is_null() {
            return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        module::check(module as usize)?;
        // __device__ globals are not exported by simulated modules.
        Err(code(CUresult::CUDA_ERROR_NOT_FOUND))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(value: *mut c_int, attrib: c_uint, func: Ptr) -> CUresult {
    entry("cuFuncGetAttribute", || {
        context::live()?;
        let f = module::get_function(func as usize)?;
        let v = match attrib {
            a if a == F::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK as u32 => f.max_threads as c_int,
            a if a == F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as u32 => *context::lock(&f.max_dynamic_smem),
            a if a == F::CU_FUNC_ATTRIBUTE_NUM_REGS as u32 => 32,
            a if a == F::CU_FUNC_ATTRIBUTE_PTX_VERSION as u32 || a == F::CU_FUNC_ATTRIBUTE_BINARY_VERSION as u32 => 90,
            a if a == F::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT as u32 => -1,
            a if a < F::CU_FUNC_ATTRIBUTE_MAX as u32 => 0,
            _ => return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE)),
        };
        out(value, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(func: Ptr, attrib: c_uint, value: c_int) -> CUresult {
    entry("cuFuncSetAttribute", || {
        context::live()?;
        let f = module::get_function(func as usize)?;
        match attrib {
            a if a == F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as u32 => {
                let limit = MAX_DYNAMIC_SMEM.min(f.capacity() as c_int);
                if !(0..=limit).contains(&value) {
                    return Err(fail(
                        CUresult::CUDA_ERROR_INVALID_VALUE,
                        format!("cuFuncSetAttribute `{}`: {value} bytes of dynamic shared memory; the device allows at most {limit}", f.name),
                    ));
                }
                *context::lock(&f.max_dynamic_smem) = value;
                Ok(())
            }
            a if a == F::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT as u32 => {
                if (-1..=100).contains(&value) {
                    Ok(())
                } else {
                    Err(code(CUresult::CUDA_ERROR_INVALID_VALUE))
                }
            }
            _ => Err(code(CUresult::CUDA_ERROR_INVALID_VALUE)),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetCacheConfig(func: Ptr, _config: c_uint) -> CUresult {
    entry("cuFuncSetCacheConfig", || {
        context::live()?;
        module::get_function(func as usize).map(|_| ())
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchKernel(
    func: Ptr,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_mem_bytes: c_uint,
    stream: Ptr,
    params: *mut Ptr,
    extra: *mut Ptr,
) -> CUresult {
    entry("cuLaunchKernel", || {
        context::for_stream(stream as usize)?;
        let f = module::get_function(func as usize)?;
        let s = stream_of(stream)?;
        if !extra.is_null() {
            return Err(fail(CUresult::CUDA_ERROR_NOT_SUPPORTED, "cuLaunchKernel: `extra` (packed parameter buffers) is not simulated; pass kernelParams"));
        }
        let l = Launch { grid: [grid_x, grid_y, grid_z], block: [block_x, block_y, block_z], smem: shared_mem_bytes };
        module::check_launch(&f, &l)?;
        // SAFETY: kernelParams holds the kernel's arguments by the API contract.
        unsafe { module::enqueue(f, l, &s, params) }
    })
}

// ---- simulator-only test hooks (no such symbol in NVIDIA's libcuda) -------------------------

/// How many driver calls have blocked a host thread of this process until device work
/// completed: cuCtxSynchronize, cuStreamSynchronize, cuEventSynchronize, cuMemFree,
/// cuMemFreeHost, the synchronous copies and memsets, and asynchronous copies into pageable
/// host memory (which return only after the copy). A test finds it with `dlsym`; its absence
/// means the process is not on the simulator.
#[no_mangle]
pub extern "C" fn cudasim_host_syncs() -> u64 {
    crate::host_syncs()
}

/// The same count for the calling thread only (a loader thread waiting for its own pinned
/// buffer's copy does not block the thread that queues the training step).
#[no_mangle]
pub extern "C" fn cudasim_thread_host_syncs() -> u64 {
    crate::thread_host_syncs()
}
