//! Timing the work of a device: a [`Mark`] is a point in the device's stream of work. On the
//! CPU, where ops run synchronously on the calling thread (and its rayon pool), it is a host
//! instant; on a GPU, a CUDA timing event recorded on the compute stream, so the time
//! between two marks is GPU time, not the time it took the host to queue the kernels.
//!
//! ```text
//! let a = timing::mark(device)?;   // record
//! ... ops ...
//! let b = timing::mark(device)?;
//! a.elapsed_ms(&b)?                // on a GPU: waits for `b` to complete
//! ```

use std::time::Instant;

use crate::cuda::{Event, EventKind};
use crate::{Device, Result};

/// A point in a device's work (see the module docs).
#[derive(Debug)]
pub struct Mark(Inner);

#[derive(Debug)]
enum Inner {
    Host(Instant),
    Cuda(Event),
}

/// Marks the work queued on `device` so far.
pub fn mark(device: Device) -> Result<Mark> {
    match device {
        Device::Cpu => Ok(Mark(Inner::Host(Instant::now()))),
        Device::Cuda(ordinal) => {
            let dev = crate::cuda::device(ordinal)?;
            let event = dev.new_event(EventKind::Timing)?;
            event.record(dev.stream())?;
            Ok(Mark(Inner::Cuda(event)))
        }
    }
}

impl Mark {
    /// Whether the work before this mark has completed (without waiting); always on the CPU.
    pub fn is_complete(&self) -> Result<bool> {
        match &self.0 {
            Inner::Host(_) => Ok(true),
            Inner::Cuda(e) => e.is_complete(),
        }
    }

    /// Milliseconds of the device's work from `self` to `later`; on a GPU this waits until
    /// `later` has completed. Marks of different devices are an error.
    pub fn elapsed_ms(&self, later: &Mark) -> Result<f64> {
        match (&self.0, &later.0) {
            (Inner::Host(a), Inner::Host(b)) => Ok(b.saturating_duration_since(*a).as_secs_f64() * 1e3),
            (Inner::Cuda(a), Inner::Cuda(b)) => {
                b.synchronize()?;
                Ok(a.elapsed_ms(b)? as f64)
            }
            _ => Err(crate::Error::Invalid { op: "elapsed time between marks", msg: "the marks are of different devices".into() }),
        }
    }
}

/// Milliseconds summed over (start, end) pairs of marks.
pub fn total_ms<'a>(spans: impl IntoIterator<Item = (&'a Mark, &'a Mark)>) -> Result<f64> {
    spans.into_iter().map(|(a, b)| a.elapsed_ms(b)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_marks_measure_host_time_in_order() {
        let a = mark(Device::Cpu).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = mark(Device::Cpu).unwrap();
        let ms = a.elapsed_ms(&b).unwrap();
        assert!((20.0..2000.0).contains(&ms), "{ms}");
        // Backwards is zero, not negative.
        assert_eq!(b.elapsed_ms(&a).unwrap(), 0.0);
        let c = mark(Device::Cpu).unwrap();
        let d = mark(Device::Cpu).unwrap();
        let total = total_ms([(&a, &b), (&d, &c)]).unwrap();
        assert!(total >= ms, "{total} < {ms}");
    }
}
