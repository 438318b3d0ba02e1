//! The `kernels` suite: the ops of one GPT-2 124M layer, plus the embedding, the LM head,
//! the loss and the optimizer step, forward and backward as separate entries, at the model's
//! shapes and dtypes (bf16 activations and f32 master weights, gradients and optimizer state
//! on a GPU; f32 everywhere on the CPU), against ceilings measured in the same run.
//!
//! Method, per pass: warm-up passes (GPU 3, CPU 1), then repeats (GPU 20, CPU 5, `--quick` on
//! the CPU 3), each timed alone between two [`timing::mark`]s (CUDA events on a GPU, host
//! instants on the CPU). The inputs rotate over `buffer_sets` independent sets of seeded
//! random tensors, enough sets that one pass over them touches more bytes than the cache
//! holds (the L2 on a GPU, read from the device; 32 MiB assumed on the CPU), at most
//! [`MAX_SETS`], so a repeat does not find the previous repeats' data in cache. (The CPU's
//! last-level cache may be larger than assumed: this machine's reports 480 MiB, so CPU rates
//! of small ops can exceed the copy ceiling.)
//!
//! Entries: `kernels/<op>_<pass>/time_ms`; a rate, `tflops` for GEMMs and attention (FLOPs
//! below) or `gbps` for memory-bound ops (the minimum bytes the op must read and write, by
//! dtype size, see ops.rs); and `fraction_of_ceiling`, the rate over
//! `kernels/ceiling/gemm_tflops` (a large GEMM through our matmul) or
//! `kernels/ceiling/copy_gbps` (a large device-to-device copy, read + write bytes; streaming
//! stores on the CPU, see `stream_copy`). Rates come
//! from the time entry (median rate = work / median time; min from the slowest repeat, max
//! from the fastest), so rate x time = work exactly. On a GPU, cuBLASLt on the same GEMM
//! shapes (cublaslt.rs).
//!
//! FLOPs: 2*M*N*K per GEMM (matmul forward one GEMM, backward two: dinp and dweight);
//! attention forward 4*B*NH*T*T*HS halved for the causal mask (2*B*NH*T*T*HS: the kernels
//! skip the masked half), backward 2x forward.

mod cublaslt;
mod ops;

pub use ops::{attention_forward_flops, OPS};

use std::time::Duration;

use kernels::ops::matmul::{matmul_forward, WeightLayout};
use kernels::timing;
use kernels::{DType, Device, Tensor};

use super::{BenchOptions, Better, Entry, Results, Workload};
use crate::Result;

/// The seed of every random input (each tensor draws from its own stream of it).
pub const SEED: u64 = 1337;
/// The most buffer sets an op rotates over. Memory needs no cap of its own: sets multiply
/// only while a set is smaller than the cache, so all of them take at most the cache plus
/// one set. A cap of 8 would leave the CPU's small ops (a 2 MiB set at T=256) in cache; 64
/// covers a set down to 1/64 of the cache (0.5 MiB on the CPU, ~1 MiB of a GPU's L2).
pub const MAX_SETS: usize = 64;
/// The cache the CPU's buffer sets must exceed: assumed, not read (last-level caches vary
/// and the OS does not report what one process may use); 32 MiB is a common L3 slice.
pub const CPU_CACHE_BYTES: usize = 32 << 20;

/// The shapes and dtypes measured: GPT-2 124M, one layer's ops.
#[derive(Clone, Copy, Debug)]
pub struct Shapes {
    /// Batch size (B): sequences per pass.
    pub b: usize,
    /// Sequence length (T): tokens per sequence.
    pub t: usize,
    /// Model width (C): 768.
    pub c: usize,
    /// Attention heads (NH): 12.
    pub nh: usize,
    /// GPT-2's vocabulary (V), 50257, without padding.
    pub v: usize,
    /// The vocabulary padded as the model pads it (a multiple of 128): 50304.
    pub vp: usize,
    /// The context length (rows of wpe).
    pub max_t: usize,
    /// Activations and the weights forward reads: bf16 on a GPU, f32 on the CPU.
    pub dtype: DType,
}

impl Shapes {
    /// B=16, T=1024 on a GPU; B=1 and T=1024 (T=256 with `quick`) on the CPU.
    pub fn new(device: Device, quick: bool) -> Shapes {
        let gpu = matches!(device, Device::Cuda(_));
        let (b, t) = match (gpu, quick) {
            (true, _) => (16, 1024),
            (false, false) => (1, 1024),
            (false, true) => (1, 256),
        };
        let config = models::GptConfig::default();
        Shapes {
            b,
            t,
            c: config.n_embd,
            nh: config.n_head,
            v: config.vocab_size,
            vp: config.padded_vocab(),
            max_t: config.context_length,
            dtype: if gpu { DType::Bf16 } else { DType::F32 },
        }
    }

    /// Rows of the activations, B*T.
    pub fn n(&self) -> usize {
        self.b * self.t
    }

    /// Parameters of GPT-2 124M as the engine stores them (padded vocabulary, 12 layers):
    /// 124,475,904.
    pub fn gpt2_params(&self) -> usize {
        let c = self.c;
        let layer = 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c);
        self.vp * c + self.max_t * c + 12 * layer + 2 * c
    }

    fn settings(&self, op: &str) -> serde_json::Value {
        serde_json::json!({
            "suite": "kernels", "op": op, "B": self.b, "T": self.t, "C": self.c, "NH": self.nh, "V": self.v, "Vp": self.vp,
            "dtype": self.dtype.to_string().to_lowercase(),
        })
    }
}

/// A GEMM shape of the model: out (rows, oc) = inp (rows, ic) @ W (+ bias).
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    /// The entry name's part: "qkv", "fc", "lm_head" or "ceiling".
    pub name: &'static str,
    /// Rows of the input and output (B*T for the model's GEMMs).
    pub rows: usize,
    /// Input channels (the reduced dimension, K).
    pub ic: usize,
    /// Output channels.
    pub oc: usize,
    /// How W is stored: [ic, oc] (`InOut`, GPT-2's linears) or [oc, ic] (`OutIn`, the tied
    /// LM head).
    pub layout: WeightLayout,
    /// Whether a bias of `oc` values is added.
    pub bias: bool,
}

impl Gemm {
    /// FLOPs of one forward GEMM: 2 * rows * ic * oc.
    pub fn flops(&self) -> f64 {
        2.0 * self.rows as f64 * self.ic as f64 * self.oc as f64
    }
}

/// The model's three GEMM shapes: the QKV projection C -> 3C, the MLP up C -> 4C, the LM head
/// C -> Vp (the tied embedding, stored [Vp, C]).
pub fn gemms(s: &Shapes) -> [Gemm; 3] {
    let (n, c) = (s.n(), s.c);
    [
        Gemm { name: "qkv", rows: n, ic: c, oc: 3 * c, layout: WeightLayout::InOut, bias: true },
        Gemm { name: "fc", rows: n, ic: c, oc: 4 * c, layout: WeightLayout::InOut, bias: true },
        Gemm { name: "lm_head", rows: n, ic: c, oc: s.vp, layout: WeightLayout::OutIn, bias: false },
    ]
}

/// The ceiling GEMM: bf16 8192^3 on a GPU, f32 1024^3 on the CPU.
pub fn ceiling_gemm(device: Device) -> Gemm {
    let n = if matches!(device, Device::Cuda(_)) { 8192 } else { 1024 };
    Gemm { name: "ceiling", rows: n, ic: n, oc: n, layout: WeightLayout::InOut, bias: false }
}

/// How many buffer sets of `set_bytes` each one pass must rotate over to exceed
/// `cache_bytes`: one more than fit in it, at most [`MAX_SETS`].
pub fn buffer_sets(cache_bytes: usize, set_bytes: usize) -> usize {
    (cache_bytes / set_bytes.max(1) + 1).min(MAX_SETS)
}

/// The work one pass does.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Floating-point operations (GEMMs, attention): reported in TFLOP/s against the GEMM
    /// ceiling.
    Flops(f64),
    /// The least bytes the op must read and write (memory-bound ops): reported in GB/s
    /// against the copy ceiling.
    Bytes(f64),
}

/// A run of the suite: the device, the method, the ceilings measured so far.
pub struct Bench<'r> {
    results: &'r mut Results,
    device: Device,
    shapes: Shapes,
    warmup: usize,
    repeats: usize,
    cache_bytes: usize,
    quiet: bool,
    /// Tensors drawn so far: each draws from its own seed, SEED + this count.
    drawn: u64,
    copy_gbps: f64,
    gemm_tflops: f64,
    /// Our ceiling GEMM's time, for the cuBLASLt comparison.
    gemm_ceiling_ms: Option<Entry>,
}

/// The `kernels` suite on `device`: the copy and GEMM ceilings, then every op of
/// [`OPS`], each pass (forward, backward) its own entries (module docs), then on a GPU
/// cuBLASLt on the same GEMMs.
pub fn run(results: &mut Results, device: Device, options: &BenchOptions) -> Result<()> {
    let gpu = matches!(device, Device::Cuda(_));
    let cache_bytes = match device {
        Device::Cuda(ordinal) => {
            let dev = kernels::cuda::device(ordinal)?;
            let l2 = dev.context().attribute(kernels::cuda::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE);
            let l2 = l2.map_err(|e| kernels::Error::Cuda { op: "reading the L2 cache size".into(), msg: e.to_string() })?;
            l2.max(0) as usize
        }
        Device::Cpu => CPU_CACHE_BYTES,
    };
    let mut bench = Bench {
        results,
        device,
        shapes: Shapes::new(device, options.quick),
        warmup: if gpu { 3 } else { 1 },
        repeats: match (gpu, options.quick) {
            (true, _) => 20,
            (false, false) => 5,
            (false, true) => 3,
        },
        cache_bytes,
        quiet: options.quiet,
        drawn: 0,
        copy_gbps: 0.0,
        gemm_tflops: 0.0,
        gemm_ceiling_ms: None,
    };
    bench.copy_ceiling()?;
    bench.gemm_ceiling()?;
    ops::run_all(&mut bench)?;
    if let Device::Cuda(ordinal) = device {
        cublaslt::compare(&mut bench, ordinal);
    }
    Ok(())
}

impl Bench<'_> {
    /// The number of buffer sets for sets a pass touches `set_bytes` of.
    fn sets(&self, set_bytes: f64) -> usize {
        buffer_sets(self.cache_bytes, set_bytes as usize)
    }

    /// Registers the workload of `op` (the shapes plus `extra`) and returns its hash.
    fn workload(&mut self, op: &str, sets: usize, extra: serde_json::Value) -> String {
        let mut settings = self.shapes.settings(op);
        let map = settings.as_object_mut().expect("settings are an object");
        map.insert("buffer_sets".into(), sets.into());
        map.insert("seed".into(), SEED.into());
        map.insert("warmup".into(), self.warmup.into());
        map.insert("repeats".into(), self.repeats.into());
        if let serde_json::Value::Object(extra) = extra {
            map.extend(extra);
        }
        self.results.workload(Workload::new(settings))
    }

    /// A tensor of `dtype` on the device, uniform in [lo, hi), from its own seed.
    fn random(&mut self, dtype: DType, shape: &[usize], lo: f32, hi: f32) -> Result<Tensor> {
        self.drawn += 1;
        let n = shape.iter().product();
        let host = Tensor::from_vec(shape, uniform(n, lo, hi, SEED.wrapping_add(self.drawn)))?;
        Ok(host.to_device(self.device)?.to_dtype(dtype)?)
    }

    /// Token ids (u32) below `below`, from their own seed.
    fn tokens(&mut self, shape: &[usize], below: usize) -> Result<Tensor> {
        self.drawn += 1;
        let mut rng = fastrand::Rng::with_seed(SEED.wrapping_add(self.drawn));
        let ids = (0..shape.iter().product()).map(|_| rng.u32(..below as u32)).collect();
        Ok(Tensor::from_u32(shape, ids)?.to_device(self.device)?)
    }

    fn zeros(&self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::try_zeros(self.device, dtype, shape)?)
    }

    /// Milliseconds of each repeat of `pass` (called with the buffer set to use), after the
    /// warm-up; the sets rotate across warm-up and repeats alike.
    fn time(&self, sets: usize, mut pass: impl FnMut(usize) -> Result<()>) -> Result<Vec<f64>> {
        for i in 0..self.warmup {
            pass(i % sets)?;
        }
        if let Device::Cuda(ordinal) = self.device {
            // The GPU waits while the host queues every repeat, so the repeats run back to back
            // and no repeat's time includes the host's launch latency (cuBLASLt's algorithm
            // query is tens of microseconds, the QKV GEMM at B=16 about a hundred).
            let dev = kernels::cuda::device(ordinal)?;
            kernels::cuda::stall_stream(dev.stream(), Duration::from_millis(20))?;
        }
        let mut marks = Vec::with_capacity(self.repeats);
        for r in 0..self.repeats {
            let start = timing::mark(self.device)?;
            pass((self.warmup + r) % sets)?;
            marks.push((start, timing::mark(self.device)?));
        }
        Ok(marks.iter().map(|(a, b)| a.elapsed_ms(b)).collect::<kernels::Result<_>>()?)
    }

    /// The time, rate and fraction-of-ceiling entries of `name` (`matmul_qkv_forward`);
    /// returns the time entry.
    fn record(&mut self, name: &str, hash: &str, times: &[f64], work: Work) -> Result<Entry> {
        let time = time_entry(format!("kernels/{name}/time_ms"), hash, times)?;
        let (metric, unit, amount, ceiling) = match work {
            Work::Flops(f) => ("tflops", "TFLOP/s", f / 1e12, self.gemm_tflops),
            Work::Bytes(b) => ("gbps", "GB/s", b / 1e9, self.copy_gbps),
        };
        let rate = rate_entry(format!("kernels/{name}/{metric}"), unit, &time, amount);
        let fraction = scaled(&rate, format!("kernels/{name}/fraction_of_ceiling"), "fraction", 1.0 / ceiling);
        if !self.quiet {
            eprintln!(
                "bench kernels: {name:<28} {:>10.4} ms {:>10.3} {unit:<7} {:.3} of ceiling",
                time.median, rate.median, fraction.median
            );
        }
        self.results.entries.extend([time.clone(), rate, fraction]);
        Ok(time)
    }

    /// `kernels/ceiling/copy_gbps`: a device-to-device copy of 1 GiB on a GPU, 256 MiB on the
    /// CPU (all threads, each a contiguous share), counting read + write bytes.
    fn copy_ceiling(&mut self) -> Result<()> {
        let bytes: usize = if matches!(self.device, Device::Cuda(_)) { 1 << 30 } else { 256 << 20 };
        let n = bytes / 4;
        let sets = self.sets(2.0 * bytes as f64);
        let mut data = Vec::with_capacity(sets);
        for _ in 0..sets {
            data.push((self.random(DType::F32, &[n], -1.0, 1.0)?, self.zeros(DType::F32, &[n])?));
        }
        let device = self.device;
        let times = self.time(sets, |i| {
            let (src, dst) = &mut data[i];
            copy(device, src, dst)
        })?;
        let hash = self.workload("ceiling_copy", sets, serde_json::json!({"bytes": bytes}));
        let time = time_entry("kernels/ceiling/copy_ms".into(), &hash, &times)?;
        let rate = rate_entry("kernels/ceiling/copy_gbps".into(), "GB/s", &time, 2.0 * bytes as f64 / 1e9);
        self.copy_gbps = rate.median;
        if !self.quiet {
            eprintln!("bench kernels: ceiling copy {} MiB: {:.3} ms, {:.1} GB/s (read + write)", bytes >> 20, time.median, rate.median);
        }
        self.results.push(Some(rate));
        drop(data);
        kernels::memory::empty_cache(self.device);
        Ok(())
    }

    /// `kernels/ceiling/gemm_tflops`: [`ceiling_gemm`] through our `matmul_forward`.
    fn gemm_ceiling(&mut self) -> Result<()> {
        let g = ceiling_gemm(self.device);
        let dt = self.shapes.dtype;
        let set_bytes = dt.size_in_bytes() as f64 * (g.rows * g.ic + g.ic * g.oc + g.rows * g.oc) as f64;
        let sets = self.sets(set_bytes);
        let mut data = Vec::with_capacity(sets);
        for _ in 0..sets {
            let inp = self.random(dt, &[g.rows, g.ic], -1.0, 1.0)?;
            let w = self.random(dt, &[g.ic, g.oc], -1.0, 1.0)?;
            data.push((inp, w, self.zeros(dt, &[g.rows, g.oc])?));
        }
        let times = self.time(sets, |i| {
            let (inp, w, out) = &mut data[i];
            Ok(matmul_forward(out, inp, w, None, WeightLayout::InOut)?)
        })?;
        let extra = serde_json::json!({"M": g.rows, "K": g.ic, "N": g.oc});
        let hash = self.workload("ceiling_gemm", sets, extra);
        let time = time_entry("kernels/ceiling/gemm_ms".into(), &hash, &times)?;
        let rate = rate_entry("kernels/ceiling/gemm_tflops".into(), "TFLOP/s", &time, g.flops() / 1e12);
        self.gemm_tflops = rate.median;
        if !self.quiet {
            eprintln!("bench kernels: ceiling GEMM {}^3 {}: {:.3} ms, {:.2} TFLOP/s", g.rows, dt, time.median, rate.median);
        }
        self.results.push(Some(rate));
        self.gemm_ceiling_ms = Some(time);
        drop(data);
        kernels::memory::empty_cache(self.device);
        Ok(())
    }
}

/// `dst = src`: on a GPU one `cuMemcpyDtoDAsync` on the compute stream; on the CPU each
/// thread of the CPU backend copies a contiguous share.
fn copy(device: Device, src: &Tensor, dst: &mut Tensor) -> Result<()> {
    match device {
        Device::Cuda(ordinal) => {
            let dev = kernels::cuda::device(ordinal)?;
            let err = |e: kernels::cuda::DriverError| kernels::Error::Cuda { op: "device-to-device copy".into(), msg: e.to_string() };
            dev.stream().memcpy_dtod(src.cuda_slice::<f32>()?, dst.cuda_slice_mut::<f32>()?).map_err(err)?;
        }
        Device::Cpu => {
            let (src, dst) = (src.f32()?, dst.f32_mut()?);
            let share = src.len().div_ceil(kernels::ops::num_threads().max(1)).max(1);
            std::thread::scope(|s| {
                for (d, from) in dst.chunks_mut(share).zip(src.chunks(share)) {
                    s.spawn(move || stream_copy(d, from));
                }
            });
        }
    }
    Ok(())
}

/// `dst = src` with non-temporal (streaming) stores on x86_64. A plain store first reads the
/// destination line into cache (write-allocate), so a plain copy moves 3 bytes for the 2 it
/// counts and its GB/s would understate what in-place ops (AdamW, `accumulate`) reach: they
/// came out at 1.5x such a ceiling. A GPU's copy has no such read.
fn stream_copy(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_sfence, _mm_stream_ps};
        let head = dst.as_ptr().align_offset(16).min(n);
        dst[..head].copy_from_slice(&src[..head]);
        let body = (n - head) / 4 * 4;
        // SAFETY: SSE is part of x86_64's baseline. dst + head is 16-byte aligned (as
        // _mm_stream_ps needs); every access i..i + 4 lies below head + body <= n, inside both
        // slices; the fence orders the streaming stores before the thread's later stores.
        unsafe {
            let (d, s) = (dst.as_mut_ptr().add(head), src.as_ptr().add(head));
            for i in (0..body).step_by(4) {
                _mm_stream_ps(d.add(i), _mm_loadu_ps(s.add(i)));
            }
            _mm_sfence();
        }
        dst[head + body..n].copy_from_slice(&src[head + body..n]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst[..n].copy_from_slice(&src[..n]);
}

/// An entry over per-repeat times in ms.
fn time_entry(name: String, hash: &str, times: &[f64]) -> Result<Entry> {
    Entry::from_values(name.clone(), "ms", Better::Lower, hash, times)
        .ok_or_else(|| crate::Error::Usage(format!("{name}: no finite time was measured")))
}

/// `amount` per second at the time entry's median (median), slowest (min) and fastest (max)
/// repeat: rate x median time = amount exactly.
fn rate_entry(name: String, unit: &str, time: &Entry, amount: f64) -> Entry {
    Entry {
        name,
        unit: unit.into(),
        better: Better::Higher,
        median: amount / (time.median / 1e3),
        min: amount / (time.max / 1e3),
        max: amount / (time.min / 1e3),
        samples: time.samples,
        workload: time.workload.clone(),
    }
}

/// `entry` scaled by `factor` (> 0), renamed.
fn scaled(entry: &Entry, name: String, unit: &str, factor: f64) -> Entry {
    Entry {
        name,
        unit: unit.into(),
        median: entry.median * factor,
        min: entry.min * factor,
        max: entry.max * factor,
        ..entry.clone()
    }
}

/// `n` values uniform in [lo, hi) from `seed`: chunk i of 2^16 values comes from its own
/// generator (seeded from `seed` and i), so the values do not depend on the thread count;
/// the chunks are spread over the host's threads (a GPU run fills gigabytes).
fn uniform(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut v = vec![0.0f32; n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(32);
    let mut shares: Vec<Vec<(usize, &mut [f32])>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, chunk) in v.chunks_mut(CHUNK).enumerate() {
        shares[i % threads].push((i, chunk));
    }
    std::thread::scope(|s| {
        for share in shares {
            s.spawn(move || {
                for (i, chunk) in share {
                    let mut rng = fastrand::Rng::with_seed(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    chunk.iter_mut().for_each(|x| *x = lo + (hi - lo) * rng.f32());
                }
            });
        }
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_sets_exceed_the_cache_up_to_the_cap() {
        assert_eq!(buffer_sets(32 << 20, 12 << 20), 3); // 36 MiB > 32 MiB, 24 MiB would not be
        assert_eq!(buffer_sets(32 << 20, 32 << 20), 2);
        assert_eq!(buffer_sets(32 << 20, 1 << 30), 1);
        assert_eq!(buffer_sets(32 << 20, 1 << 10), MAX_SETS);
    }

    #[test]
    fn stream_copy_copies_every_element_at_any_alignment() {
        let src: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        for start in 0..5 {
            let mut dst = vec![-1.0f32; 1000 - start];
            stream_copy(&mut dst[..], &src[start..]);
            assert_eq!(dst[..], src[start..]);
            let mut odd = [-1.0f32; 7];
            stream_copy(&mut odd[start..], &src[..7 - start]);
            assert_eq!(odd[start..], src[..7 - start]);
        }
    }

    #[test]
    fn uniform_values_do_not_depend_on_threads_and_stay_in_range() {
        let a = uniform(200_000, -1.0, 1.0, 7);
        assert!(a.iter().all(|x| (-1.0..1.0).contains(x)));
        let b = uniform(200_000, -1.0, 1.0, 7);
        assert_eq!(a, b);
        assert_ne!(a, uniform(200_000, -1.0, 1.0, 8));
        // chunks differ from each other (not one seed repeated)
        assert_ne!(a[..1000], a[1 << 16..(1 << 16) + 1000]);
    }

    #[test]
    fn gpt2_124m_parameter_count() {
        let s = Shapes::new(Device::Cpu, true);
        assert_eq!(s.vp, 50304);
        // 124,439,808 (Hugging Face's count) + the 47 padding rows of wte
        assert_eq!(s.gpt2_params(), 124_439_808 + 47 * 768);
    }
}
