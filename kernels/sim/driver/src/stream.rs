//! Streams and events.
//!
//! A stream is a queue of work run in order by its own worker thread. Every piece of work
//! gets a sequence number when it is queued; the stream counts how many have completed.
//! An event record is a piece of work too: the event remembers (stream, sequence number)
//! of its last record, and it is complete once that stream has completed that many. A
//! stream wait captures the event's record at the time of the call and queues work that
//! blocks the worker until it is complete: exactly the driver's semantics, including that a
//! later re-record does not affect an earlier wait.
//!
//! The legacy default stream (handle 0 or `CU_STREAM_LEGACY`) and the per-thread stream
//! are one extra stream; work on it first waits for all work queued on blocking streams
//! (created without `CU_STREAM_NON_BLOCKING`), and work on a blocking stream first waits for
//! it, as the legacy stream's implicit synchronization says.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUresult;

use crate::context::{lock, Registry};
use crate::{code, Fail, Res};

/// Work queued on a stream. It returns an error only for a fault that poisons the context.
pub(crate) type Work = Box<dyn FnOnce() -> Res + Send>;

struct Queue {
    work: VecDeque<(u64, Work)>,
    submitted: u64,
    completed: u64,
    /// Set by cuStreamDestroy: the worker finishes what is queued, then exits.
    closing: bool,
}

pub(crate) struct Stream {
    pub id: usize,
    pub non_blocking: bool,
    pub priority: i32,
    queue: Mutex<Queue>,
    /// Signalled when work is queued (for the worker) and when work completes (for waiters).
    changed: Condvar,
}

static STREAMS: Registry<Stream> = Registry::new(0x5700_0000);

/// The legacy default stream, made on first use.
fn legacy() -> &'static Arc<Stream> {
    static LEGACY: OnceLock<Arc<Stream>> = OnceLock::new();
    LEGACY.get_or_init(|| Stream::spawn(0, false, 0))
}

/// The chaos mode's seed, if on (`CUDA_SIM_CHAOS=1` or `=<seed>`).
fn chaos_seed() -> Option<u64> {
    static SEED: OnceLock<Option<u64>> = OnceLock::new();
    *SEED.get_or_init(|| {
        let v = std::env::var("CUDA_SIM_CHAOS").ok()?;
        let v = v.trim();
        if v.is_empty() || v == "0" {
            return None;
        }
        Some(v.parse::<u64>().unwrap_or(1))
    })
}

impl Stream {
    fn spawn(id: usize, non_blocking: bool, priority: i32) -> Arc<Stream> {
        let stream = Arc::new(Stream {
            id,
            non_blocking,
            priority,
            queue: Mutex::new(Queue { work: VecDeque::new(), submitted: 0, completed: 0, closing: false }),
            changed: Condvar::new(),
        });
        let worker = stream.clone();
        std::thread::Builder::new()
            .name(format!("cuda-sim-stream-{id:x}"))
            .spawn(move || worker.run())
            .expect("the simulator could not start a stream worker thread");
        stream
    }

    fn run(&self) {
        let mut rng = chaos_seed().map(|seed| fastrand::Rng::with_seed(seed ^ (self.id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        loop {
            let (seq, work) = {
                let mut q = lock(&self.queue);
                loop {
                    if let Some(item) = q.work.pop_front() {
                        break item;
                    }
                    if q.closing {
                        return;
                    }
                    q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            if let Some(rng) = rng.as_mut() {
                std::thread::sleep(Duration::from_micros(rng.u64(0..3000)));
            }
            if let Err(Fail { code, msg }) = work() {
                if let Some(msg) = msg {
                    crate::report(&msg);
                }
                crate::context::context().poison(code);
            }
            let mut q = lock(&self.queue);
            q.completed = seq;
            self.changed.notify_all();
        }
    }

    /// Queues `work`; returns its sequence number.
    pub fn push(self: &Arc<Self>, work: Work) -> u64 {
        // The legacy stream's implicit synchronization with blocking streams.
        let before = if self.id == 0 {
            STREAMS.values().into_iter().filter(|s| !s.non_blocking).map(|s| (s.clone(), s.submitted())).collect()
        } else if !self.non_blocking {
            vec![(legacy().clone(), legacy().submitted())]
        } else {
            Vec::new()
        };
        let mut q = lock(&self.queue);
        if !before.is_empty() {
            q.submitted += 1;
            let seq = q.submitted;
            q.work.push_back((
                seq,
                Box::new(move || {
                    for (stream, seq) in before {
                        stream.wait_for(seq);
                    }
                    Ok(())
                }),
            ));
        }
        q.submitted += 1;
        let seq = q.submitted;
        q.work.push_back((seq, work));
        self.changed.notify_all();
        seq
    }

    pub fn submitted(&self) -> u64 {
        lock(&self.queue).submitted
    }

    pub fn is_done(&self, seq: u64) -> bool {
        lock(&self.queue).completed >= seq
    }

    /// Blocks until work `seq` has completed.
    pub fn wait_for(&self, seq: u64) {
        let mut q = lock(&self.queue);
        while q.completed < seq {
            q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Blocks until everything queued so far has completed.
    pub fn drain(&self) {
        let seq = self.submitted();
        self.wait_for(seq);
    }

    fn close(&self) {
        lock(&self.queue).closing = true;
        self.changed.notify_all();
    }
}

pub(crate) const STREAM_LEGACY: usize = 0x1;
pub(crate) const STREAM_PER_THREAD: usize = 0x2;

/// The stream a handle names (0, `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` are the
/// default stream); a destroyed or unknown handle is `CUDA_ERROR_INVALID_HANDLE`.
pub(crate) fn get(handle: usize) -> Res<Arc<Stream>> {
    if handle == 0 || handle == STREAM_LEGACY || handle == STREAM_PER_THREAD {
        return Ok(legacy().clone());
    }
    STREAMS.get(handle).ok_or_else(|| {
        crate::fail(CUresult::CUDA_ERROR_INVALID_HANDLE, format!("stream handle {handle:#x} is not a live stream (destroyed, or never created)"))
    })
}

pub(crate) fn create(flags: u32, priority: i32) -> Res<usize> {
    const NON_BLOCKING: u32 = 0x1;
    if flags & !NON_BLOCKING != 0 {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Ok(STREAMS.insert(Stream::spawn(id, flags & NON_BLOCKING != 0, priority)))
}

/// Destroys a stream: the handle is invalid at once; queued work still runs.
pub(crate) fn destroy(handle: usize) -> Res {
    if handle == 0 || handle == STREAM_LEGACY || handle == STREAM_PER_THREAD {
        return Err(code(CUresult::CUDA_ERROR_INVALID_HANDLE));
    }
    let stream = STREAMS.remove(handle).ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_HANDLE))?;
    stream.close();
    Ok(())
}

/// Every stream, the default one included.
pub(crate) fn all() -> Vec<Arc<Stream>> {
    let mut v = STREAMS.values();
    v.push(legacy().clone());
    v
}

// ---- events -----------------------------------------------------------------------------

struct Record {
    stream: Arc<Stream>,
    seq: u64,
    /// Which record this is, so a stale record's completion does not stamp a newer one.
    generation: u64,
}

struct EventState {
    record: Option<Record>,
    generation: u64,
    /// When the last record's work ran (timing events).
    time: Option<(u64, Instant)>,
}

pub(crate) struct Event {
    pub timing: bool,
    state: Mutex<EventState>,
}

static EVENTS: Registry<Event> = Registry::new(0xE700_0000);

pub(crate) fn event_create(flags: u32) -> Res<usize> {
    const BLOCKING_SYNC: u32 = 0x1;
    const DISABLE_TIMING: u32 = 0x2;
    const INTERPROCESS: u32 = 0x4;
    if flags & !(BLOCKING_SYNC | DISABLE_TIMING | INTERPROCESS) != 0 {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    if flags & INTERPROCESS != 0 && flags & DISABLE_TIMING == 0 {
        return Err(code(CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    Ok(EVENTS.insert(Arc::new(Event {
        timing: flags & DISABLE_TIMING == 0,
        state: Mutex::new(EventState { record: None, generation: 0, time: None }),
    })))
}

pub(crate) fn event(handle: usize) -> Res<Arc<Event>> {
    EVENTS.get(handle).ok_or_else(|| {
        crate::fail(CUresult::CUDA_ERROR_INVALID_HANDLE, format!("event handle {handle:#x} is not a live event (destroyed, or never created)"))
    })
}

pub(crate) fn event_destroy(handle: usize) -> Res {
    // Records already queued keep their event alive until they run.
    EVENTS.remove(handle).map(|_| ()).ok_or_else(|| code(CUresult::CUDA_ERROR_INVALID_HANDLE))
}

impl Event {
    pub fn record(self: &Arc<Self>, stream: &Arc<Stream>) {
        // Held across the push so that two concurrent records get generations in queue order.
        let mut st = lock(&self.state);
        st.generation += 1;
        let generation = st.generation;
        let me = self.clone();
        let seq = stream.push(Box::new(move || {
            let mut st = lock(&me.state);
            if st.time.is_none_or(|(g, _)| g < generation) {
                st.time = Some((generation, Instant::now()));
            }
            Ok(())
        }));
        st.record = Some(Record { stream: stream.clone(), seq, generation });
    }

    /// The stream and sequence number the last record waits for.
    pub fn target(&self) -> Option<(Arc<Stream>, u64)> {
        lock(&self.state).record.as_ref().map(|r| (r.stream.clone(), r.seq))
    }

    pub fn is_complete(&self) -> bool {
        self.target().is_none_or(|(s, seq)| s.is_done(seq))
    }

    pub fn synchronize(&self) {
        if let Some((s, seq)) = self.target() {
            s.wait_for(seq);
        }
    }

    /// The time the last record completed, if it has.
    fn completed_at(&self) -> Option<Instant> {
        let st = lock(&self.state);
        let r = st.record.as_ref()?;
        if !r.stream.is_done(r.seq) {
            return None;
        }
        st.time.filter(|(g, _)| *g == r.generation).map(|(_, t)| t)
    }

    fn was_recorded(&self) -> bool {
        lock(&self.state).record.is_some()
    }
}

/// Milliseconds from `start` to `end` (cuEventElapsedTime).
pub(crate) fn elapsed_ms(start: &Event, end: &Event) -> Res<f32> {
    if !start.timing || !end.timing || !start.was_recorded() || !end.was_recorded() {
        return Err(code(CUresult::CUDA_ERROR_INVALID_HANDLE));
    }
    match (start.completed_at(), end.completed_at()) {
        (Some(a), Some(b)) => {
            let ms = if b >= a { b.duration_since(a).as_secs_f64() * 1e3 } else { -(a.duration_since(b).as_secs_f64() * 1e3) };
            Ok(ms as f32)
        }
        _ => Err(code(CUresult::CUDA_ERROR_NOT_READY)),
    }
}

/// Makes `stream`'s later work wait for `event`'s current record (cuStreamWaitEvent).
pub(crate) fn wait_event(stream: &Arc<Stream>, event: &Event) {
    if let Some((target, seq)) = event.target() {
        if Arc::ptr_eq(&target, stream) {
            return; // in-order already
        }
        stream.push(Box::new(move || {
            target.wait_for(seq);
            Ok(())
        }));
    }
}
