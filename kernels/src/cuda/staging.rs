//! Host-to-device staging: pinned host buffers, the per-device copy stream, and events to
//! order the copy stream against the compute stream by hand (event tracking is off, see the
//! module docs of `cuda`).
//!
//! ```text
//! dev.alloc_pinned::<T>(n) -> Result<PinnedBuffer<T>>   // page-locked, zeroed; as_slice / as_mut_slice
//! dev.copy_stream() -> Result<Arc<CudaStream>>         // the device's one copy stream, made on first use
//! dev.new_event(EventKind::Sync | EventKind::Timing) -> Result<Event>
//! event.record(&stream)                                // marks the work queued on `stream` so far
//! wait_event(&stream, &event)                          // `stream`'s later work waits for that mark
//! event.is_complete() / event.synchronize()            // host side: poll / block (never spins for Sync)
//! start.elapsed_ms(&end)                               // GPU time between two Timing events
//! copy_rows_htod(&stream, &pinned, offset, pitch, &mut dst, width, height)
//!                                                      // strided rows -> packed rows, asynchronous
//! stall_stream(&stream, duration)                      // tests: hold a stream on the host for a while
//! ```
//!
//! The protocol a user of these follows (engine/src/staging.rs): fill a pinned buffer on the
//! host; on the copy stream wait for the compute stream to be done with the destination
//! (`wait_event` on an event recorded on the compute stream), copy, record an event; make
//! the compute stream `wait_event` on it before the kernels that read the destination; block
//! on that same event (`synchronize`) before the host writes the pinned buffer again. Device
//! memory allocated on the compute stream and written on the copy stream must outlive the
//! copy: synchronize the copy stream before dropping it, or free it only after the compute
//! stream has waited on the copy.
//!
//! Nothing here panics: every driver failure is an [`Error::Cuda`] naming what was being done.

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{sys, PinnedHostSlice};

use super::{lock, CudaDevice, CudaElement, CudaEvent, CudaSlice, CudaStream, DevicePtrMut, DriverError};
use crate::{Error, Result};

fn cuda_error(op: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let op = op.into();
    move |e| Error::Cuda { op, msg: e.to_string() }
}

/// Page-locked host memory of `len` elements: the DMA engine reads it directly, so a
/// host-to-device copy from it is asynchronous with respect to the host (a copy from
/// pageable memory is staged through a driver buffer and blocks the host thread).
///
/// Plain cacheable pinned memory (no `CU_MEMHOSTALLOC_WRITECOMBINED`, cudarc's default),
/// because the data workers' gather and tests read it back at normal speed.
pub struct PinnedBuffer<T> {
    /// Owns the allocation (freed with `cuMemFreeHost` on drop).
    slice: PinnedHostSlice<T>,
    /// `slice`'s base pointer, taken once: cudarc's accessors synchronize an internal event
    /// (and bind the context) on every call, which would cost a driver call per access.
    ptr: *mut T,
    len: usize,
}

// SAFETY: the buffer is plain host memory owned by this value (cudarc marks the
// `PinnedHostSlice` Send + Sync); `ptr` points into it and is only dereferenced through
// `&self`/`&mut self`, so Rust's borrow rules keep accesses exclusive or shared-read.
unsafe impl<T: Send> Send for PinnedBuffer<T> {}
// SAFETY: as above; shared access only reads.
unsafe impl<T: Sync> Sync for PinnedBuffer<T> {}

impl<T: CudaElement> PinnedBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host view. The caller orders it against copies in flight (an event per buffer).
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` is the start of `len` initialized elements (zeroed at allocation)
        // owned by `self.slice`, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The host view for writing. Wait for the event of the last copy out of this buffer first.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The context the memory is registered with.
    pub fn context(&self) -> &Arc<super::CudaContext> {
        self.slice.context()
    }
}

impl<T> std::fmt::Debug for PinnedBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedBuffer({} x {})", self.len, std::any::type_name::<T>())
    }
}

/// What an [`Event`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Ordering only: a host thread blocked in [`Event::synchronize`] sleeps instead of
    /// spinning (`CU_EVENT_BLOCKING_SYNC`), which matters for data workers sharing the
    /// cores with the trainer. Not for [`Event::elapsed_ms`].
    Sync,
    /// Carries a GPU timestamp for [`Event::elapsed_ms`]; `synchronize` may spin.
    Timing,
}

/// A CUDA event on one device. Re-recording it later does not affect a `wait_event` that
/// already captured an earlier record.
#[derive(Debug)]
pub struct Event {
    inner: CudaEvent,
    kind: EventKind,
    ordinal: usize,
    /// Whether it was ever recorded: elapsed time needs both ends recorded.
    recorded: std::sync::atomic::AtomicBool,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// Marks the work queued on `stream` so far; the event completes when that work has.
    pub fn record(&self, stream: &CudaStream) -> Result<()> {
        self.inner.record(stream).map_err(cuda_error(format!("recording an event on cuda:{}", self.ordinal)))?;
        self.recorded.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Whether the work of the last record has completed (true for an event never recorded),
    /// without blocking. An asynchronous error of earlier work is returned as an error.
    pub fn is_complete(&self) -> Result<bool> {
        self.inner.try_is_complete().map_err(cuda_error(format!("querying an event on cuda:{}", self.ordinal)))
    }

    /// Blocks the host until the work of the last record has completed.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.synchronize().map_err(cuda_error(format!("waiting for an event on cuda:{}", self.ordinal)))
    }

    /// Milliseconds of GPU time from `self` to `end` (negative if `end` completed first),
    /// after waiting for both; when both have already completed the host does not block
    /// (cudarc's `elapsed_ms` would synchronize on both regardless). Both must be
    /// [`EventKind::Timing`] events, recorded.
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        let op = "elapsed time between events";
        if self.kind != EventKind::Timing || end.kind != EventKind::Timing {
            return Err(Error::Invalid { op, msg: "both events must be EventKind::Timing".into() });
        }
        let recorded = |e: &Event| e.recorded.load(std::sync::atomic::Ordering::Acquire);
        if !recorded(self) || !recorded(end) {
            return Err(Error::Invalid { op, msg: "both events must have been recorded".into() });
        }
        let err = || cuda_error(format!("{op} on cuda:{}", self.ordinal));
        if self.is_complete()? && end.is_complete()? {
            self.inner.context().bind_to_thread().map_err(err())?;
            // SAFETY: both events are live (owned by `self` and `end`), of one context,
            // recorded and complete, and created with timing (EventKind::Timing).
            return unsafe { cudarc::driver::result::event::elapsed(self.inner.cu_event(), end.inner.cu_event()) }.map_err(err());
        }
        self.inner.elapsed_ms(&end.inner).map_err(err())
    }
}

/// Makes the work queued on `stream` from now on wait until `event`'s last record completes
/// (`cuStreamWaitEvent`; the host does not block).
pub fn wait_event(stream: &CudaStream, event: &Event) -> Result<()> {
    stream.wait(&event.inner).map_err(cuda_error(format!("making a stream wait for an event on cuda:{}", event.ordinal)))
}

/// Queues on `stream` the copy of `height` rows of `width` elements from `src` (row `r`
/// starting at element `src_offset + r * src_pitch`) into the first `width * height`
/// elements of `dst`, rows packed. Asynchronous: `src` must not be rewritten, nor `dst`
/// freed or read on another stream, until an event recorded after it on `stream` completes.
///
/// With `src_pitch = T + 1` and offsets 0 and 1 this cuts a (B, T+1) batch of windows into
/// inputs (B, T) and targets (B, T) with two copies and no staging kernel.
pub fn copy_rows_htod<T: CudaElement>(
    stream: &CudaStream,
    src: &PinnedBuffer<T>,
    src_offset: usize,
    src_pitch: usize,
    dst: &mut CudaSlice<T>,
    width: usize,
    height: usize,
) -> Result<()> {
    let op = "copy_rows_htod";
    if height == 0 || width == 0 {
        return Ok(());
    }
    let src_end = (height - 1).checked_mul(src_pitch).and_then(|n| n.checked_add(src_offset + width));
    if width > src_pitch || src_end.is_none_or(|end| end > src.len()) {
        return Err(Error::Invalid {
            op,
            msg: format!(
                "{height} rows of {width} at offset {src_offset}, pitch {src_pitch}, do not fit the {}-element pinned buffer",
                src.len()
            ),
        });
    }
    if width * height > dst.len() {
        return Err(Error::Invalid { op, msg: format!("{height} x {width} elements do not fit the {}-element destination", dst.len()) });
    }
    let size = std::mem::size_of::<T>();
    let ordinal = dst.ordinal();
    stream.context().bind_to_thread().map_err(cuda_error(format!("{op}: binding cuda:{ordinal}")))?;
    let (dst_ptr, _record) = dst.device_ptr_mut(stream);
    let copy = sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_HOST,
        // SAFETY: in bounds: src_offset + (height - 1) * src_pitch + width <= src.len() (checked).
        srcHost: unsafe { src.ptr.add(src_offset) } as *const std::ffi::c_void,
        srcDevice: 0,
        srcArray: std::ptr::null_mut(),
        srcPitch: src_pitch * size,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: dst_ptr,
        dstArray: std::ptr::null_mut(),
        dstPitch: width * size,
        WidthInBytes: width * size,
        Height: height,
    };
    // SAFETY: source rows lie inside the pinned allocation and the destination holds
    // width * height elements (both checked above); the context is bound; the caller keeps
    // both alive and unwritten until the copy's event completes (documented contract).
    unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }
        .result()
        .map_err(cuda_error(format!("{op}: {height} x {width} {} to cuda:{ordinal}", T::NAME)))
}

/// Queues on `stream` a host function that sleeps for `duration`: later work on the
/// stream starts only after it. For tests that need a copy still in flight when the host
/// moves on (the pinned-ring refill test).
pub fn stall_stream(stream: &CudaStream, duration: Duration) -> Result<()> {
    unsafe extern "C" fn sleep_for(data: *mut std::ffi::c_void) {
        // SAFETY: `data` is the Box<Duration> leaked below, handed to exactly this call.
        let duration = unsafe { Box::from_raw(data as *mut Duration) };
        std::thread::sleep(*duration);
    }
    let data = Box::into_raw(Box::new(duration)) as *mut std::ffi::c_void;
    stream.context().bind_to_thread().map_err(cuda_error("stall_stream: binding the context"))?;
    // SAFETY: `sleep_for` makes no CUDA calls (a host function must not) and frees `data`
    // exactly once; if queuing fails the function never runs and the box is freed here.
    let queued = unsafe { sys::cuLaunchHostFunc(stream.cu_stream(), Some(sleep_for), data) }.result();
    if let Err(e) = queued {
        // SAFETY: not queued, so this is the only owner.
        drop(unsafe { Box::from_raw(data as *mut Duration) });
        return Err(cuda_error("stall_stream: cuLaunchHostFunc")(e));
    }
    Ok(())
}

impl CudaDevice {
    /// `n` elements of zeroed, page-locked host memory registered with this device's context.
    pub fn alloc_pinned<T: CudaElement>(&self, n: usize) -> Result<PinnedBuffer<T>> {
        let bytes = n.checked_mul(std::mem::size_of::<T>()).filter(|&b| b < isize::MAX as usize);
        if bytes.is_none() {
            return Err(Error::Invalid { op: "alloc_pinned", msg: format!("{n} x {} overflows", T::NAME) });
        }
        let what = format!("allocating {n} x {} of pinned host memory", T::NAME);
        // SAFETY: the memory is uninitialized until zeroed below, before anyone can read it.
        // Flags 0: portable to this context only, cacheable (see `PinnedBuffer`).
        let mut slice = unsafe { self.ctx.alloc_pinned_with_flags::<T>(n, 0) }.map_err(self.error(&what))?;
        let ptr = slice.as_mut_ptr().map_err(self.error(&what))?;
        // SAFETY: `ptr` is the start of a fresh allocation of n elements; all-zero bytes are
        // a valid T (CudaElement: ValidAsZeroBits).
        unsafe { std::ptr::write_bytes(ptr, 0, n) };
        Ok(PinnedBuffer { slice, ptr, len: n })
    }

    /// The device's copy stream (created on first use, then shared): host-to-device batch
    /// copies go here so they overlap kernels on the compute stream. Nothing orders it
    /// against the compute stream except the events its user records and waits on.
    pub fn copy_stream(&self) -> Result<Arc<CudaStream>> {
        let mut copy = lock(&self.copy_stream);
        if let Some(stream) = copy.as_ref() {
            return Ok(stream.clone());
        }
        let stream = self.ctx.new_stream().map_err(self.error("creating the copy stream"))?;
        *copy = Some(stream.clone());
        Ok(stream)
    }

    /// A new, unrecorded event of `kind` on this device.
    pub fn new_event(&self, kind: EventKind) -> Result<Event> {
        // One flag each: cudarc takes a single `CUevent_flags` variant, not a bit set, so the
        // Sync kind keeps timestamps (a little more work per record than DISABLE_TIMING).
        let flags = match kind {
            EventKind::Sync => sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC,
            EventKind::Timing => sys::CUevent_flags::CU_EVENT_DEFAULT,
        };
        let inner = self.ctx.new_event(Some(flags)).map_err(self.error("creating an event"))?;
        Ok(Event { inner, kind, ordinal: self.ordinal, recorded: std::sync::atomic::AtomicBool::new(false) })
    }
}
