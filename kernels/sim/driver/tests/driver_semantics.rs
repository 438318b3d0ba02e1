//! The simulated driver's streams, events, memory and errors against what the CUDA Driver
//! API documentation says (quoted at each test). Runs on the simulator only:
//! `scripts/cuda-sim cargo test --release -p cuda-sim-driver`; elsewhere each test prints
//! `skipped:` (with `ENGINE_REQUIRE_GPU=1` it fails instead, as the GPU tests do).
//!
//! Streams are held up with host functions that sleep (`cuLaunchHostFunc`), so that "not
//! yet complete" is a state the test controls rather than a race it hopes to win.

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::sys::{self, CUresult};

/// Initialises the simulated driver and makes its context current on this thread, or
/// returns false (printing why) where the simulator is not the loaded driver. With
/// `ENGINE_REQUIRE_GPU=1` no driver at all is a failure (as in the GPU tests); a real
/// NVIDIA driver is a skip: these tests are of the simulator.
fn simulator() -> bool {
    // SAFETY: only dlopens candidate names.
    let present = unsafe { sys::is_culib_present() };
    let mut name = [0i8; 128];
    let sim = present
        // SAFETY: plain driver calls with valid out-pointers.
        && unsafe { sys::cuInit(0) } == CUresult::CUDA_SUCCESS
        && unsafe { sys::cuDeviceGetName(name.as_mut_ptr(), 128, 0) } == CUresult::CUDA_SUCCESS
        // SAFETY: the name is NUL-terminated by the driver.
        && unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().contains("cuda-sim");
    if !sim {
        assert!(present || std::env::var("ENGINE_REQUIRE_GPU").as_deref() != Ok("1"), "ENGINE_REQUIRE_GPU=1 but no libcuda is loadable");
        eprintln!("skipped: the CUDA simulator is not the loaded libcuda (run through scripts/cuda-sim)");
        return false;
    }
    let mut ctx = std::ptr::null_mut();
    // SAFETY: valid out-pointer; device 0 exists.
    unsafe {
        assert_eq!(sys::cuDevicePrimaryCtxRetain(&mut ctx, 0), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuCtxSetCurrent(ctx), CUresult::CUDA_SUCCESS);
    }
    true
}

fn stream() -> sys::CUstream {
    let mut s = std::ptr::null_mut();
    // SAFETY: valid out-pointer, context current.
    assert_eq!(unsafe { sys::cuStreamCreate(&mut s, 1) }, CUresult::CUDA_SUCCESS);
    s
}

fn event(flags: u32) -> sys::CUevent {
    let mut e = std::ptr::null_mut();
    // SAFETY: valid out-pointer, context current; the flags are the enum's bits.
    assert_eq!(unsafe { sys::cuEventCreate(&mut e, flags) }, CUresult::CUDA_SUCCESS);
    e
}

const TIMING: u32 = 0;
const NO_TIMING: u32 = 2;

struct Step {
    sleep: Duration,
    log: Arc<Mutex<Vec<&'static str>>>,
    label: &'static str,
}

unsafe extern "C" fn run_step(data: *mut c_void) {
    // SAFETY: `data` is a Box<Step> leaked by `host_step`, consumed once here.
    let step = unsafe { Box::from_raw(data as *mut Step) };
    std::thread::sleep(step.sleep);
    step.log.lock().unwrap().push(step.label);
}

/// Queues on `s` a host function that sleeps, then appends `label` to `log`.
fn host_step(s: sys::CUstream, sleep_ms: u64, log: &Arc<Mutex<Vec<&'static str>>>, label: &'static str) {
    let step = Box::new(Step { sleep: Duration::from_millis(sleep_ms), log: log.clone(), label });
    // SAFETY: run_step consumes the box exactly once.
    let r = unsafe { sys::cuLaunchHostFunc(s, Some(run_step), Box::into_raw(step) as *mut c_void) };
    assert_eq!(r, CUresult::CUDA_SUCCESS);
}

/// "cuEventQuery: Returns CUDA_SUCCESS ... or if cuEventRecord() has not been called on this
/// event"; "CUDA_ERROR_NOT_READY if the captured work is not yet complete";
/// cuEventSynchronize "waits until the completion of all work currently captured".
#[test]
fn event_query_and_synchronize_follow_the_record() {
    if !simulator() {
        return;
    }
    let (s, e) = (stream(), event(NO_TIMING));
    let log = Arc::new(Mutex::new(Vec::new()));
    // SAFETY (whole block): live handles, context current.
    unsafe {
        assert_eq!(sys::cuEventQuery(e), CUresult::CUDA_SUCCESS, "never recorded: complete");
        host_step(s, 200, &log, "stall");
        assert_eq!(sys::cuEventRecord(e, s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuEventQuery(e), CUresult::CUDA_ERROR_NOT_READY);
        assert_eq!(sys::cuStreamQuery(s), CUresult::CUDA_ERROR_NOT_READY);
        assert_eq!(sys::cuEventSynchronize(e), CUresult::CUDA_SUCCESS);
        assert_eq!(*log.lock().unwrap(), vec!["stall"], "synchronize returned before the captured work ran");
        assert_eq!(sys::cuEventQuery(e), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuStreamQuery(s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuEventDestroy_v2(e), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuStreamDestroy_v2(s), CUresult::CUDA_SUCCESS);
    }
}

/// cuStreamWaitEvent: "Makes all future work submitted to hStream wait for all work captured
/// in hEvent"; cuEventRecord: "calls such as cuEventQuery() or cuStreamWaitEvent() use the
/// most recent call to cuEventRecord() before the API call" (a later record does not change
/// an earlier wait).
#[test]
fn a_stream_wait_captures_the_record_at_the_time_of_the_call() {
    if !simulator() {
        return;
    }
    let (slow, waiter, fast) = (stream(), stream(), stream());
    let e = event(NO_TIMING);
    let log = Arc::new(Mutex::new(Vec::new()));
    // SAFETY (whole block): live handles, context current.
    unsafe {
        host_step(slow, 300, &log, "slow");
        assert_eq!(sys::cuEventRecord(e, slow), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuStreamWaitEvent(waiter, e, 0), CUresult::CUDA_SUCCESS);
        // Re-recorded on a stream with nothing queued: completes at once.
        assert_eq!(sys::cuEventRecord(e, fast), CUresult::CUDA_SUCCESS);
        host_step(waiter, 0, &log, "after the wait");
        assert_eq!(sys::cuStreamSynchronize(waiter), CUresult::CUDA_SUCCESS);
        assert_eq!(*log.lock().unwrap(), vec!["slow", "after the wait"], "the wait followed the later record");
        // A stream that never waits is not held up by another.
        host_step(slow, 300, &log, "slow again");
        host_step(fast, 0, &log, "independent");
        assert_eq!(sys::cuStreamSynchronize(fast), CUresult::CUDA_SUCCESS);
        assert_eq!(log.lock().unwrap().last(), Some(&"independent"));
        assert_eq!(sys::cuCtxSynchronize(), CUresult::CUDA_SUCCESS);
        assert_eq!(log.lock().unwrap().len(), 4);
    }
}

/// Work on one stream runs in the order it was queued, whatever the chaos mode's delays.
#[test]
fn work_on_a_stream_runs_in_order() {
    if !simulator() {
        return;
    }
    let s = stream();
    let log = Arc::new(Mutex::new(Vec::new()));
    const LABELS: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];
    for (i, label) in LABELS.iter().enumerate() {
        host_step(s, (8 - i as u64) * 3, &log, label);
    }
    // SAFETY: live stream.
    assert_eq!(unsafe { sys::cuStreamSynchronize(s) }, CUresult::CUDA_SUCCESS);
    assert_eq!(*log.lock().unwrap(), LABELS.to_vec());
}

/// cuEventElapsedTime: "If either event was last recorded in a non-NULL stream ... or was
/// created with the CU_EVENT_DISABLE_TIMING flag, ... CUDA_ERROR_INVALID_HANDLE"; "If
/// cuEventRecord() has not been called on either event ... CUDA_ERROR_INVALID_HANDLE"; "If
/// cuEventRecord() has been called on both events but one or both of them has not yet been
/// completed ... CUDA_ERROR_NOT_READY".
#[test]
fn elapsed_time_needs_two_completed_timing_events() {
    if !simulator() {
        return;
    }
    let s = stream();
    let (a, b, untimed) = (event(TIMING), event(TIMING), event(NO_TIMING));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut ms = 0f32;
    // SAFETY (whole block): live handles, valid out-pointer.
    unsafe {
        assert_eq!(sys::cuEventElapsedTime_v2(&mut ms, a, b), CUresult::CUDA_ERROR_INVALID_HANDLE, "never recorded");
        assert_eq!(sys::cuEventRecord(a, s), CUresult::CUDA_SUCCESS);
        host_step(s, 150, &log, "work");
        assert_eq!(sys::cuEventRecord(b, s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuEventRecord(untimed, s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuEventElapsedTime_v2(&mut ms, a, b), CUresult::CUDA_ERROR_NOT_READY);
        assert_eq!(sys::cuEventSynchronize(b), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuEventSynchronize(untimed), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuEventElapsedTime_v2(&mut ms, a, untimed), CUresult::CUDA_ERROR_INVALID_HANDLE, "DISABLE_TIMING");
        assert_eq!(sys::cuEventElapsedTime_v2(&mut ms, a, b), CUresult::CUDA_SUCCESS);
        assert!((150.0..5000.0).contains(&ms), "{ms} ms for a 150 ms stall");
        let mut back = 0f32;
        assert_eq!(sys::cuEventElapsedTime_v2(&mut back, b, a), CUresult::CUDA_SUCCESS);
        assert!(back <= -150.0, "reversed events give a negative time: {back}");
    }
}

/// A destroyed handle is refused with CUDA_ERROR_INVALID_HANDLE, never a crash; cuStreamDestroy:
/// "in case the device is still doing work in the stream hStream when cuStreamDestroy() is
/// called, the function will return immediately and the resources associated with hStream
/// will be released automatically once the device has completed all work".
#[test]
fn destroyed_streams_and_events_are_invalid_handles_and_their_work_still_runs() {
    if !simulator() {
        return;
    }
    let (s, e) = (stream(), event(NO_TIMING));
    let log = Arc::new(Mutex::new(Vec::new()));
    // SAFETY (whole block): handles are live until destroyed; afterwards the driver must
    // refuse them (which is what is tested).
    unsafe {
        host_step(s, 100, &log, "queued before destroy");
        assert_eq!(sys::cuStreamDestroy_v2(s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuStreamSynchronize(s), CUresult::CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(sys::cuEventRecord(e, s), CUresult::CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(sys::cuStreamDestroy_v2(s), CUresult::CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(sys::cuEventDestroy_v2(e), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuEventQuery(e), CUresult::CUDA_ERROR_INVALID_HANDLE);
        let forged = 0xdead_beef_usize as sys::CUstream;
        assert_eq!(sys::cuStreamQuery(forged), CUresult::CUDA_ERROR_INVALID_HANDLE);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(*log.lock().unwrap(), vec!["queued before destroy"]);
    }
}

/// New device memory reads as NaN; copies are checked against the allocation; a pageable
/// source may be reused as soon as cuMemcpyHtoDAsync returns ("for transfers from pageable
/// host memory to device memory, a stream sync is performed before the copy is initiated";
/// the function returns once the pageable buffer has been copied to staging memory).
#[test]
fn device_memory_is_poisoned_bounded_and_staged() {
    if !simulator() {
        return;
    }
    let s = stream();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut d: sys::CUdeviceptr = 0;
    let n = 1000usize;
    // SAFETY (whole block): valid out-pointers and sizes; `d` holds n f32.
    unsafe {
        assert_eq!(sys::cuMemAllocAsync(&mut d, n * 4, s), CUresult::CUDA_SUCCESS);
        let mut back = vec![0f32; n];
        assert_eq!(sys::cuMemcpyDtoHAsync_v2(back.as_mut_ptr() as *mut c_void, d, n * 4, s), CUresult::CUDA_SUCCESS);
        assert!(back.iter().all(|x| x.is_nan()), "fresh device memory is NaN");
        // Out of bounds, by one element.
        let src = vec![1f32; n + 1];
        assert_eq!(sys::cuMemcpyHtoDAsync_v2(d, src.as_ptr() as *const c_void, (n + 1) * 4, s), CUresult::CUDA_ERROR_INVALID_VALUE);
        // Staged: the host buffer is overwritten right after the call, behind a stalled stream.
        host_step(s, 150, &log, "stall");
        let mut src: Vec<f32> = (0..n).map(|i| i as f32).collect();
        assert_eq!(sys::cuMemcpyHtoDAsync_v2(d, src.as_ptr() as *const c_void, n * 4, s), CUresult::CUDA_SUCCESS);
        src.iter_mut().for_each(|x| *x = -1.0);
        assert_eq!(sys::cuMemcpyDtoHAsync_v2(back.as_mut_ptr() as *mut c_void, d, n * 4, s), CUresult::CUDA_SUCCESS);
        assert!(back.iter().enumerate().all(|(i, &x)| x == i as f32), "the copy saw the buffer as it was at the call");
        // Freed memory is no longer accepted.
        assert_eq!(sys::cuMemFreeAsync(d, s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuMemFreeAsync(d, s), CUresult::CUDA_ERROR_INVALID_VALUE, "double free");
        assert_eq!(sys::cuMemsetD8Async(d, 0, 4, s), CUresult::CUDA_ERROR_INVALID_VALUE);
        assert_eq!(sys::cuStreamSynchronize(s), CUresult::CUDA_SUCCESS);
        // More than the device has.
        let (mut free, mut total) = (0usize, 0usize);
        assert_eq!(sys::cuMemGetInfo_v2(&mut free, &mut total), CUresult::CUDA_SUCCESS);
        assert!(free <= total && total > 0);
        assert_eq!(sys::cuMemAlloc_v2(&mut d, total + 1), CUresult::CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(sys::cuMemAlloc_v2(&mut d, 0), CUresult::CUDA_ERROR_INVALID_VALUE);
    }
}

/// A thread that never made the context current gets CUDA_ERROR_INVALID_CONTEXT.
#[test]
fn calls_without_a_current_context_are_refused() {
    if !simulator() {
        return;
    }
    let r = std::thread::spawn(|| {
        let mut s = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { sys::cuStreamCreate(&mut s, 0) }
    })
    .join()
    .unwrap();
    assert_eq!(r, CUresult::CUDA_ERROR_INVALID_CONTEXT);
}

/// cuGetErrorString / cuGetErrorName give the driver's texts; an unknown code is
/// CUDA_ERROR_INVALID_VALUE with a null string.
#[test]
fn error_strings_are_the_drivers() {
    if !simulator() {
        return;
    }
    let text = |r: CUresult, name: bool| {
        let mut p = std::ptr::null();
        // SAFETY: valid out-pointer.
        let rc = unsafe { if name { sys::cuGetErrorName(r, &mut p) } else { sys::cuGetErrorString(r, &mut p) } };
        assert_eq!(rc, CUresult::CUDA_SUCCESS);
        // SAFETY: the driver returns a static NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    assert_eq!(text(CUresult::CUDA_ERROR_INVALID_VALUE, false), "invalid argument");
    assert_eq!(text(CUresult::CUDA_ERROR_INVALID_HANDLE, false), "invalid resource handle");
    assert_eq!(text(CUresult::CUDA_ERROR_NOT_FOUND, true), "CUDA_ERROR_NOT_FOUND");
    assert_eq!(text(CUresult::CUDA_ERROR_OUT_OF_MEMORY, false), "out of memory");
}

/// Chaos mode really delays: with CUDA_SIM_CHAOS set, 50 empty host functions take at least
/// some milliseconds (each worker sleeps up to 3 ms before each piece of work).
#[test]
fn chaos_mode_delays_stream_work() {
    if !simulator() || std::env::var_os("CUDA_SIM_CHAOS").is_none() {
        return;
    }
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn bump(_: *mut c_void) {
        COUNT.fetch_add(1, Ordering::SeqCst);
    }
    let s = stream();
    let t = Instant::now();
    for _ in 0..50 {
        // SAFETY: `bump` ignores its argument.
        assert_eq!(unsafe { sys::cuLaunchHostFunc(s, Some(bump), std::ptr::null_mut()) }, CUresult::CUDA_SUCCESS);
    }
    // SAFETY: live stream.
    assert_eq!(unsafe { sys::cuStreamSynchronize(s) }, CUresult::CUDA_SUCCESS);
    assert_eq!(COUNT.load(Ordering::SeqCst), 50);
    assert!(t.elapsed() >= Duration::from_millis(20), "50 pieces of work in {:?}: chaos mode is not delaying", t.elapsed());
}

/// The simulator's test hook `cudasim_thread_host_syncs` (docs/SIMULATOR.md): calls that
/// return only after device work completed count once each, on the calling thread; queueing
/// work, querying and waiting on the device's side do not.
#[test]
fn host_sync_counter_counts_the_calls_that_block() {
    if !simulator() {
        return;
    }
    // SAFETY: the simulator is loaded (checked above): this finds the same library again.
    let lib = unsafe { libloading::os::unix::Library::open(Some("libcuda.so.1"), libloading::os::unix::RTLD_NOW) }.expect("the loaded libcuda.so.1");
    // SAFETY: the hooks' signature is `extern "C" fn() -> u64` (exports.rs).
    let (thread, process) = unsafe {
        (
            *lib.get::<unsafe extern "C" fn() -> u64>(b"cudasim_thread_host_syncs").unwrap(),
            *lib.get::<unsafe extern "C" fn() -> u64>(b"cudasim_host_syncs").unwrap(),
        )
    };
    let (s, e) = (stream(), event(NO_TIMING));
    let log = Arc::new(Mutex::new(Vec::new()));
    let n = 256usize;
    let (mut d, mut pinned): (sys::CUdeviceptr, *mut c_void) = (0, std::ptr::null_mut());
    let mut back = vec![0f32; n];
    let back_ptr = back.as_mut_ptr() as *mut c_void;
    let src = vec![1f32; n];
    // SAFETY (whole block): live handles, valid out-pointers; `d`, `pinned`, `back` and `src` hold n f32.
    unsafe {
        let before = thread();
        assert_eq!(sys::cuMemAllocAsync(&mut d, n * 4, s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuMemAllocHost_v2(&mut pinned, n * 4), CUresult::CUDA_SUCCESS);
        host_step(s, 20, &log, "stall");
        assert_eq!(sys::cuMemsetD32Async(d, 0, n, s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuMemcpyDtoHAsync_v2(pinned, d, n * 4, s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuMemcpyHtoDAsync_v2(d, src.as_ptr() as *const c_void, n * 4, s), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuEventRecord(e, s), CUresult::CUDA_SUCCESS);
        let _ = sys::cuEventQuery(e);
        let _ = sys::cuStreamQuery(s);
        assert_eq!(sys::cuStreamWaitEvent(s, e, 0), CUresult::CUDA_SUCCESS);
        assert_eq!(thread(), before, "queued work, queries and stream waits do not block the host");

        let blocking: [(&str, &dyn Fn() -> CUresult); 8] = [
            ("cuStreamSynchronize", &|| sys::cuStreamSynchronize(s)),
            ("cuEventSynchronize", &|| sys::cuEventSynchronize(e)),
            ("cuCtxSynchronize", &|| sys::cuCtxSynchronize()),
            ("cuMemcpyDtoHAsync into pageable memory", &|| sys::cuMemcpyDtoHAsync_v2(back_ptr, d, n * 4, s)),
            ("cuMemcpyHtoD", &|| sys::cuMemcpyHtoD_v2(d, src.as_ptr() as *const c_void, n * 4)),
            ("cuMemsetD32", &|| sys::cuMemsetD32_v2(d, 7, n)),
            ("cuMemFreeHost", &|| sys::cuMemFreeHost(pinned)),
            ("cuMemFree", &|| sys::cuMemFree_v2(d)),
        ];
        for (name, call) in blocking {
            let (at, all) = (thread(), process());
            assert_eq!(call(), CUresult::CUDA_SUCCESS, "{name}");
            assert_eq!(thread(), at + 1, "{name} blocks the host: one count on this thread");
            assert!(process() > all, "{name}: the process-wide count moves too");
        }
        // Another thread's count is its own.
        let at = thread();
        let other = std::thread::spawn(move || thread()).join().unwrap();
        assert_eq!((thread(), other), (at, 0));
        assert_eq!(sys::cuEventDestroy_v2(e), CUresult::CUDA_SUCCESS);
        assert_eq!(sys::cuStreamDestroy_v2(s), CUresult::CUDA_SUCCESS);
    }
    assert_eq!(back, vec![1f32; n]);
}
