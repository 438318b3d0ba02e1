//! The step timer's GPU half (`kernels::timing`, used by the monitor for the forward /
//! backward / optimizer split): a mark is an event on the compute stream, so the time
//! between two marks is the stream's time, not the host's. The stream is held for a known
//! time with `stall_stream` (a host function on the stream), which the host does not wait
//! for when it queues it.
//!
//! Without a GPU it prints `skipped: ...` (with `ENGINE_REQUIRE_GPU=1` it fails).

mod common;

use std::time::{Duration, Instant};

use kernels::cuda::stall_stream;
use kernels::timing::{mark, total_ms};

#[test]
fn marks_measure_stream_time_not_host_time() {
    let Some(dev) = common::gpu_or_skip() else { return };
    let device = dev.device();
    dev.synchronize().unwrap();
    let queued = Instant::now();
    let a = mark(device).unwrap();
    stall_stream(dev.stream(), Duration::from_millis(200)).unwrap();
    let b = mark(device).unwrap();
    let host_ms = queued.elapsed().as_secs_f64() * 1e3;
    assert!(host_ms < 150.0, "queuing the marks and the stall blocked the host for {host_ms} ms");
    assert!(!b.is_complete().unwrap(), "the end mark completed before the stall ended");
    let ms = a.elapsed_ms(&b).unwrap();
    assert!(b.is_complete().unwrap(), "elapsed_ms waits for the later mark");
    assert!((200.0..5000.0).contains(&ms), "{ms} ms between marks around a 200 ms stall");
    // A span with nothing queued in it is short; spans add up.
    let c = mark(device).unwrap();
    let d = mark(device).unwrap();
    let quick = c.elapsed_ms(&d).unwrap();
    assert!((0.0..50.0).contains(&quick), "{quick} ms for an empty span");
    let total = total_ms([(&a, &b), (&c, &d)]).unwrap();
    assert!((total - ms - quick).abs() < 1e-6, "total {total} != {ms} + {quick}");
    // Marks of different devices do not mix.
    let cpu = mark(kernels::Device::Cpu).unwrap();
    assert!(cpu.elapsed_ms(&a).is_err());
}
