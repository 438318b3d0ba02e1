//! The device, its primary context, and the per-thread current context.
//!
//! There is one device and one (primary) context. Handles given to the caller are opaque
//! numbers, never pointers to our state, so a stale or forged handle is looked up and
//! refused instead of dereferenced.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::driver::sys::CUresult;

use crate::{code, fail, Res};

/// The context handle's value (opaque to the caller).
pub(crate) const CONTEXT_HANDLE: usize = 0xC0_0000;

/// What the simulated device reports.
#[derive(Debug)]
pub(crate) struct DeviceProps {
    pub name: &'static str,
    pub sm_count: i32,
    pub total_memory: usize,
}

fn parse_bytes(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits.parse().ok()?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

pub(crate) fn props() -> &'static DeviceProps {
    static PROPS: OnceLock<DeviceProps> = OnceLock::new();
    PROPS.get_or_init(|| {
        let sm_count = std::env::var("CUDA_SIM_SMS").ok().and_then(|v| v.trim().parse::<i32>().ok()).filter(|&n| n > 0);
        let memory = std::env::var("CUDA_SIM_MEMORY").ok().and_then(|v| parse_bytes(&v)).filter(|&n| n > 0);
        if std::env::var_os("CUDA_SIM_SMS").is_some() && sm_count.is_none() {
            crate::report("CUDA_SIM_SMS is not a positive integer; using 16");
        }
        if std::env::var_os("CUDA_SIM_MEMORY").is_some() && memory.is_none() {
            crate::report("CUDA_SIM_MEMORY is not a size like 4GiB or 512MiB; using 4GiB");
        }
        DeviceProps { name: "Simulated GPU (cuda-sim)", sm_count: sm_count.unwrap_or(16), total_memory: memory.unwrap_or(4 << 30) }
    })
}

static INITIALIZED: AtomicBool = AtomicBool::new(false);

pub(crate) fn init(flags: u32) -> Res {
    if flags != 0 {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    INITIALIZED.store(true, Ordering::Release);
    Ok(())
}

pub(crate) fn initialized() -> Res {
    if INITIALIZED.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(code(CUresult::CUDA_ERROR_NOT_INITIALIZED))
    }
}

/// Checks a device ordinal (the only device is 0).
pub(crate) fn device(dev: i32) -> Res {
    initialized()?;
    if dev != 0 {
        return Err(code(CUresult::CUDA_ERROR_INVALID_DEVICE));
    }
    Ok(())
}

/// The primary context: its reference count, and the sticky error of a kernel fault.
pub(crate) struct Context {
    retained: Mutex<u32>,
    /// 0 while healthy; the `CUresult` of the first fault inside a kernel otherwise.
    sticky: AtomicU32,
    pub limits: Mutex<HashMap<u32, usize>>,
}

pub(crate) fn context() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| Context { retained: Mutex::new(0), sticky: AtomicU32::new(0), limits: Mutex::new(HashMap::new()) })
}

impl Context {
    pub fn retain(&self) {
        *lock(&self.retained) += 1;
    }

    pub fn release(&self) -> Res {
        let mut n = lock(&self.retained);
        if *n == 0 {
            return Err(code(CUresult::CUDA_ERROR_INVALID_CONTEXT));
        }
        *n -= 1;
        Ok(())
    }

    pub fn is_active(&self) -> bool {
        *lock(&self.retained) > 0
    }

    /// Makes `result` the context's error from now on (the first fault wins).
    pub fn poison(&self, result: CUresult) {
        let _ = self.sticky.compare_exchange(0, result as u32, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The sticky error, if a kernel has faulted.
    pub fn health(&self) -> Res {
        match self.sticky.load(Ordering::Acquire) {
            0 => Ok(()),
            raw => Err(code(result_from_raw(raw).unwrap_or(CUresult::CUDA_ERROR_UNKNOWN))),
        }
    }
}

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    static STACK: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks a context handle passed by the caller.
pub(crate) fn check_handle(handle: usize) -> Res {
    if handle != CONTEXT_HANDLE || !context().is_active() {
        return Err(code(CUresult::CUDA_ERROR_INVALID_CONTEXT));
    }
    Ok(())
}

pub(crate) fn set_current(handle: usize) -> Res {
    initialized()?;
    if handle != 0 {
        check_handle(handle)?;
    }
    CURRENT.with(|c| c.set(handle));
    Ok(())
}

pub(crate) fn current_handle() -> usize {
    CURRENT.with(|c| c.get())
}

pub(crate) fn push_current(handle: usize) -> Res {
    check_handle(handle)?;
    STACK.with(|s| s.borrow_mut().push(current_handle()));
    CURRENT.with(|c| c.set(handle));
    Ok(())
}

pub(crate) fn pop_current() -> Res<usize> {
    let popped = current_handle();
    if popped == 0 {
        return Err(code(CUresult::CUDA_ERROR_INVALID_CONTEXT));
    }
    let previous = STACK.with(|s| s.borrow_mut().pop()).unwrap_or(0);
    CURRENT.with(|c| c.set(previous));
    Ok(popped)
}

/// What almost every call needs: the driver initialised, a current context on this thread,
/// and no earlier kernel fault.
pub(crate) fn current() -> Res<&'static Context> {
    initialized()?;
    let handle = current_handle();
    if handle == 0 {
        return Err(fail(
            CUresult::CUDA_ERROR_INVALID_CONTEXT,
            "no current context on this thread (cuCtxSetCurrent was not called on it)",
        ));
    }
    check_handle(handle)?;
    let ctx = context();
    ctx.health()?;
    Ok(ctx)
}

/// What calls on an explicit stream or event handle need: the driver initialised and no
/// earlier kernel fault. The handle names its context, so none need be current (the driver
/// accepts these from any thread; a data worker polling an event does exactly that).
pub(crate) fn live() -> Res<&'static Context> {
    initialized()?;
    let ctx = context();
    if !ctx.is_active() {
        return Err(code(CUresult::CUDA_ERROR_INVALID_CONTEXT));
    }
    ctx.health()?;
    Ok(ctx)
}

/// The context check for a call on `stream`: the default stream belongs to the current
/// context, an explicit stream to its own.
pub(crate) fn for_stream(stream: usize) -> Res<&'static Context> {
    if stream == 0 || stream == crate::stream::STREAM_LEGACY || stream == crate::stream::STREAM_PER_THREAD {
        current()
    } else {
        live()
    }
}

/// A `CUresult` from its number, if it is one.
pub(crate) fn result_from_raw(raw: u32) -> Option<CUresult> {
    use CUresult::*;
    const ALL: &[CUresult] = &[
        CUDA_SUCCESS,
        CUDA_ERROR_INVALID_VALUE,
        CUDA_ERROR_OUT_OF_MEMORY,
        CUDA_ERROR_NOT_INITIALIZED,
        CUDA_ERROR_DEINITIALIZED,
        CUDA_ERROR_NO_DEVICE,
        CUDA_ERROR_INVALID_DEVICE,
        CUDA_ERROR_INVALID_IMAGE,
        CUDA_ERROR_INVALID_CONTEXT,
        CUDA_ERROR_INVALID_HANDLE,
        CUDA_ERROR_NOT_FOUND,
        CUDA_ERROR_NOT_READY,
        CUDA_ERROR_ILLEGAL_ADDRESS,
        CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
        CUDA_ERROR_LAUNCH_TIMEOUT,
        CUDA_ERROR_ASSERT,
        CUDA_ERROR_ILLEGAL_INSTRUCTION,
        CUDA_ERROR_MISALIGNED_ADDRESS,
        CUDA_ERROR_INVALID_ADDRESS_SPACE,
        CUDA_ERROR_INVALID_PC,
        CUDA_ERROR_LAUNCH_FAILED,
        CUDA_ERROR_NOT_SUPPORTED,
        CUDA_ERROR_UNKNOWN,
    ];
    ALL.iter().copied().find(|r| *r as u32 == raw)
}

/// The driver's own name and description of each code the simulator returns.
pub(crate) fn describe(result: CUresult) -> (&'static str, &'static str) {
    use CUresult::*;
    match result {
        CUDA_SUCCESS => ("CUDA_SUCCESS", "no error"),
        CUDA_ERROR_INVALID_VALUE => ("CUDA_ERROR_INVALID_VALUE", "invalid argument"),
        CUDA_ERROR_OUT_OF_MEMORY => ("CUDA_ERROR_OUT_OF_MEMORY", "out of memory"),
        CUDA_ERROR_NOT_INITIALIZED => ("CUDA_ERROR_NOT_INITIALIZED", "initialization error"),
        CUDA_ERROR_DEINITIALIZED => ("CUDA_ERROR_DEINITIALIZED", "driver shutting down"),
        CUDA_ERROR_NO_DEVICE => ("CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"),
        CUDA_ERROR_INVALID_DEVICE => ("CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"),
        CUDA_ERROR_INVALID_IMAGE => ("CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"),
        CUDA_ERROR_INVALID_CONTEXT => ("CUDA_ERROR_INVALID_CONTEXT", "invalid device context"),
        CUDA_ERROR_INVALID_HANDLE => ("CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"),
        CUDA_ERROR_NOT_FOUND => ("CUDA_ERROR_NOT_FOUND", "named symbol not found"),
        CUDA_ERROR_NOT_READY => ("CUDA_ERROR_NOT_READY", "device not ready"),
        CUDA_ERROR_ILLEGAL_ADDRESS => ("CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"),
        CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES => ("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"),
        CUDA_ERROR_LAUNCH_TIMEOUT => ("CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated"),
        CUDA_ERROR_ASSERT => ("CUDA_ERROR_ASSERT", "device-side assert triggered"),
        CUDA_ERROR_ILLEGAL_INSTRUCTION => ("CUDA_ERROR_ILLEGAL_INSTRUCTION", "an illegal instruction was encountered"),
        CUDA_ERROR_MISALIGNED_ADDRESS => ("CUDA_ERROR_MISALIGNED_ADDRESS", "misaligned address"),
        CUDA_ERROR_INVALID_ADDRESS_SPACE => ("CUDA_ERROR_INVALID_ADDRESS_SPACE", "operation not supported on global/shared address space"),
        CUDA_ERROR_INVALID_PC => ("CUDA_ERROR_INVALID_PC", "invalid program counter"),
        CUDA_ERROR_LAUNCH_FAILED => ("CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"),
        CUDA_ERROR_NOT_SUPPORTED => ("CUDA_ERROR_NOT_SUPPORTED", "operation not supported"),
        _ => ("CUDA_ERROR_UNKNOWN", "unknown error"),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands out opaque handle numbers for one kind of object.
pub(crate) struct Registry<T> {
    base: usize,
    next: Mutex<usize>,
    live: Mutex<BTreeMap<usize, Arc<T>>>,
}

impl<T> Registry<T> {
    pub const fn new(base: usize) -> Self {
        Self { base, next: Mutex::new(0), live: Mutex::new(BTreeMap::new()) }
    }

    pub fn insert(&self, value: Arc<T>) -> usize {
        let mut next = lock(&self.next);
        *next += 1;
        // Spaced by 16 so that handles look like aligned pointers to whoever prints them.
        let handle = self.base + *next * 16;
        lock(&self.live).insert(handle, value);
        handle
    }

    pub fn get(&self, handle: usize) -> Option<Arc<T>> {
        lock(&self.live).get(&handle).cloned()
    }

    pub fn remove(&self, handle: usize) -> Option<Arc<T>> {
        lock(&self.live).remove(&handle)
    }

    pub fn values(&self) -> Vec<Arc<T>> {
        lock(&self.live).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("4GiB"), Some(4 << 30));
        assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("12 parsecs"), None);
        assert_eq!(parse_bytes(""), None);
    }

    #[test]
    fn every_describable_code_round_trips() {
        for raw in 0..1000u32 {
            if let Some(r) = result_from_raw(raw) {
                assert_eq!(r as u32, raw);
                assert_eq!(describe(r).0, format!("{r:?}"));
            }
        }
    }
}
