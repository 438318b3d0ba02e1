//! Causal flash attention on the GPU against the CPU reference (BRIEF §5): forward output
//! and backward dqkv (q, k and v gradients), f32 and bf16, at GPT-2 124M shape (B=4, T=1024,
//! C=768, NH=12, HS=64), at the tiny default's head size (HS=32), at HS=128, and at odd T
//! (1, 37, 65, 129, 300, 1000: partial tiles, a tile boundary +1, many dQ splits). bf16 runs
//! the tensor-core kernels, f32 the CUDA-core ones. The CPU reference keeps the (B,NH,T,T)
//! probabilities; the GPU keeps lse (B,NH,T): each device gets its own saved state from
//! `attention_saved`. Outputs and the saved state are poisoned (NaN) before each launch.
//! Tolerances: f32 <= 1e-5 relative in norm and elementwise (1e-5 * max|ref| + 1e-5 |ref|);
//! bf16 <= 6e-3 relative in norm (the bf16 rounding of the result alone is ~2e-3), the
//! reference running on the bf16-rounded inputs.
//! Without a GPU every test prints `skipped: ...` and passes.

mod common;

use common::{assert_close, assert_rel_norm, gpu_or_skip, poison};
use half::bf16;
use kernels::ops::attention::{attention_backward, attention_cached_forward, attention_forward, attention_saved, attention_saved_shape};
use kernels::ops::kv_expand::kv_expand_forward;
use kernels::{DType, Device, Tensor};

fn pair(device: Device, shape: &[usize], data: Vec<f32>, dtype: DType) -> (Tensor, Tensor) {
    let (host, seen) = match dtype {
        DType::Bf16 => {
            let b: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
            let seen = b.iter().map(|x| x.to_f32()).collect();
            (Tensor::from_bf16(shape, b).unwrap(), seen)
        }
        _ => (Tensor::from_vec(shape, data.clone()).unwrap(), data),
    };
    (host.to_device(device).unwrap(), Tensor::from_vec(shape, seen).unwrap())
}

fn random_pair(device: Device, shape: &[usize], seed: u64, scale: f32, dtype: DType) -> (Tensor, Tensor) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = shape.iter().product();
    pair(device, shape, (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * scale).collect(), dtype)
}

fn poisoned(device: Device, dtype: DType, shape: &[usize]) -> Tensor {
    let mut t = Tensor::try_zeros(device, dtype, shape).unwrap();
    poison(&mut t);
    t
}

fn check(name: &str, dtype: DType, gpu: &[f32], reference: &[f32]) {
    let rel = match dtype {
        DType::Bf16 => assert_rel_norm(name, gpu, reference, 6e-3),
        _ => {
            let max = reference.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert_close(name, gpu, reference, 1e-5 * max, 1e-5);
            assert_rel_norm(name, gpu, reference, 1e-5)
        }
    };
    eprintln!("ok   {name} (relative error {rel:.1e})");
}

/// Columns [from, to) of every row of a (rows, width) matrix (splits dqkv into dq, dk, dv).
fn columns(data: &[f32], width: usize, from: usize, to: usize) -> Vec<f32> {
    data.chunks(width).flat_map(|row| row[from..to].iter().copied()).collect()
}

/// Forward and backward on `device` in `dtype` against the CPU; returns the GPU dqkv.
fn run_case(device: Device, dtype: DType, b: usize, t: usize, c: usize, nh: usize, seed: u64) -> Vec<f32> {
    let tag = format!("attention {dtype:?} B={b} T={t} C={c} NH={nh} HS={}", c / nh);
    // scale 1.5: scores of std ~1 for HS=64, so the softmax is neither flat nor one-hot
    let (qkv, qkv_ref) = random_pair(device, &[b, t, 3 * c], seed, 1.5, dtype);
    let (dout, dout_ref) = random_pair(device, &[b, t, c], seed + 1, 1.0, dtype);

    let mut out_ref = Tensor::zeros(Device::Cpu, &[b, t, c]);
    let mut att_ref = attention_saved(&qkv_ref, nh).unwrap();
    attention_forward(&mut out_ref, &mut att_ref, &qkv_ref, nh).unwrap();
    let mut dqkv_ref = Tensor::zeros(Device::Cpu, &[b, t, 3 * c]);
    attention_backward(&mut dqkv_ref, &dout_ref, &qkv_ref, &out_ref, &att_ref, nh).unwrap();

    let mut out = poisoned(device, dtype, &[b, t, c]);
    let mut att = attention_saved(&qkv, nh).unwrap();
    assert_eq!(att.shape(), attention_saved_shape(device, b, t, c, nh).as_slice());
    poison(&mut att);
    attention_forward(&mut out, &mut att, &qkv, nh).unwrap();
    check(&format!("{tag}: out"), dtype, &out.to_vec(), &out_ref.to_vec());

    let mut dqkv = poisoned(device, dtype, &[b, t, 3 * c]);
    attention_backward(&mut dqkv, &dout, &qkv, &out, &att, nh).unwrap();
    let (g, r) = (dqkv.to_vec(), dqkv_ref.to_vec());
    for (name, k) in [("dq", 0), ("dk", 1), ("dv", 2)] {
        let (gk, rk) = (columns(&g, 3 * c, k * c, (k + 1) * c), columns(&r, 3 * c, k * c, (k + 1) * c));
        if t == 1 && k < 2 {
            // One visible key: dS = P (dP - D) is exactly 0 on the CPU, but the GPU forms dP
            // and D = dO . O in different summation orders, so allow rounding residue there.
            let scale = columns(&r, 3 * c, 2 * c, 3 * c).iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert_close(&format!("{tag}: {name} (all zero)"), &gk, &rk, 1e-5 * scale, 0.0);
        } else {
            check(&format!("{tag}: {name}"), dtype, &gk, &rk);
        }
    }
    g
}

#[test]
fn attention_gpt2_124m_shape_matches_cpu() {
    let Some(dev) = gpu_or_skip() else { return };
    if common::skip_full_size(&dev, "attention at B=4 T=1024 C=768 NH=12") {
        return;
    }
    for dtype in [DType::F32, DType::Bf16] {
        run_case(dev.device(), dtype, 4, 1024, 768, 12, 100);
    }
}

#[test]
fn attention_head_sizes_and_odd_lengths_match_cpu() {
    let Some(dev) = gpu_or_skip() else { return };
    // (B, T, C, NH): HS = 32 (the tiny default: 128 wide, 4 heads), 64, 128
    let shapes = [
        (2, 256, 128, 4),
        (1, 1, 128, 4),
        (3, 37, 128, 4),
        (2, 65, 128, 4),
        (1, 129, 192, 3),
        (2, 300, 256, 2),
        (1, 33, 256, 2),
        (1, 1, 256, 2),
        (1, 1000, 128, 1),
    ];
    for (i, &(b, t, c, nh)) in shapes.iter().enumerate() {
        for dtype in [DType::F32, DType::Bf16] {
            run_case(dev.device(), dtype, b, t, c, nh, 200 + i as u64);
        }
    }
}

#[test]
fn attention_backward_is_deterministic() {
    let Some(dev) = gpu_or_skip() else { return };
    // (2, 300, 128, 2): HS = 64, 5 key tiles over 3 dQ splits (zig-zag, one block with a
    // skipped round); the GPT-2 shape where the device is fast enough
    let mut shapes = vec![(2, 300, 128, 2, 310)];
    if !common::skip_full_size(&dev, "attention backward determinism at B=2 T=512 C=768 NH=12") {
        shapes.push((2, 512, 768, 12, 300));
    }
    for (b, t, c, nh, seed) in shapes {
        for dtype in [DType::F32, DType::Bf16] {
            let first = run_case(dev.device(), dtype, b, t, c, nh, seed);
            let second = run_case(dev.device(), dtype, b, t, c, nh, seed);
            assert!(first == second, "{dtype:?} B={b} T={t} C={c}: two identical backward passes differ");
        }
    }
}

#[test]
fn attention_rejects_unsupported_head_size_on_gpu() {
    let Some(dev) = gpu_or_skip() else { return };
    let device = dev.device();
    let (qkv, _) = random_pair(device, &[1, 8, 3 * 48], 1, 1.0, DType::F32); // HS = 48
    let mut out = poisoned(device, DType::F32, &[1, 8, 48]);
    let mut att = attention_saved(&qkv, 1).unwrap();
    let err = attention_forward(&mut out, &mut att, &qkv, 1).unwrap_err();
    assert!(err.to_string().contains("head size 48"), "unexpected error: {err}");
}

#[test]
fn attention_saved_state_shape_depends_on_device() {
    // runs everywhere: the CPU keeps probabilities, CUDA keeps the lse of each row
    assert_eq!(attention_saved_shape(Device::Cpu, 2, 5, 12, 3), vec![2, 3, 5, 5]);
    assert_eq!(attention_saved_shape(Device::Cuda(0), 2, 5, 12, 3), vec![2, 3, 5]);
    assert_eq!(attention_saved_shape(Device::Cuda(0), 4, 1024, 768, 12), vec![4, 12, 1024]);
    let qkv = Tensor::zeros(Device::Cpu, &[2, 5, 36]);
    assert_eq!(attention_saved(&qkv, 3).unwrap().shape(), &[2, 3, 5, 5]);
}

// ---- incremental decoding: attention_cached_forward ------------------------------------------

/// The reference for cached attention, independent of the op's CPU face: the KV heads
/// repeated per query head (kv_expand), the full causal attention over all `len` positions of
/// `qkv_ref` (B, len, (NH + 2KV) HS) on the CPU; its out (B, len, NH HS) as rows.
fn full_reference(qkv_ref: &Tensor, nh: usize, kv: usize) -> Vec<f32> {
    let &[b, len, w] = qkv_ref.shape() else { unreachable!() };
    let hs = w / (nh + 2 * kv);
    let mut expanded = Tensor::zeros(Device::Cpu, &[b, len, 3 * nh * hs]);
    kv_expand_forward(&mut expanded, qkv_ref, nh, kv).unwrap();
    let mut out = Tensor::zeros(Device::Cpu, &[b, len, nh * hs]);
    let mut att = attention_saved(&expanded, nh).unwrap();
    attention_forward(&mut out, &mut att, &expanded, nh).unwrap();
    out.to_vec()
}

/// Rows `from .. to` of each batch of a (B, len, width) matrix.
fn rows_of(data: &[f32], len: usize, width: usize, from: usize, to: usize) -> Vec<f32> {
    data.chunks(len * width).flat_map(|seq| seq[from * width..to * width].iter().copied()).collect()
}

/// A (B, Tmax, KV HS) cache on `device` holding the k (part 0) or v (part 1) columns of
/// `qkv_seen` (the values the GPU sees) for rows < `filled`, NaN after.
fn cache_from(device: Device, dtype: DType, qkv_seen: &[f32], dims: (usize, usize, usize, usize, usize), filled: usize, part: usize) -> Tensor {
    let (b, len, t_max, nh, kv) = dims;
    let w = qkv_seen.len() / (b * len);
    let hs = w / (nh + 2 * kv);
    let kw = kv * hs;
    let mut host = vec![f32::NAN; b * t_max * kw];
    for bi in 0..b {
        for r in 0..filled {
            let src = &qkv_seen[(bi * len + r) * w + nh * hs + part * kw..][..kw];
            host[(bi * t_max + r) * kw..][..kw].copy_from_slice(src);
        }
    }
    let t = match dtype {
        DType::Bf16 => Tensor::from_bf16(&[b, t_max, kw], host.iter().map(|&x| bf16::from_f32(x)).collect()).unwrap(),
        _ => Tensor::from_vec(&[b, t_max, kw], host).unwrap(),
    };
    t.to_device(device).unwrap()
}

/// One decoding step at (B, start, n, NH, KV, HS): the cache holds positions 0 .. start
/// (uploaded; NaN from there on, so a read past start + n shows), the op appends n rows and
/// attends. out against the full attention's rows start .. start + n; the cache rows
/// start .. start + n equal qkv's k and v bit for bit, and every row past them stays NaN.
fn cached_case(device: Device, dtype: DType, (b, start, n, nh, kv, hs): (usize, usize, usize, usize, usize, usize), seed: u64) {
    let tag = format!("attention_cached {dtype:?} B={b} start={start} n={n} NH={nh} KV={kv} HS={hs}");
    let (len, t_max, w, kw) = (start + n, start + n + 3, (nh + 2 * kv) * hs, kv * hs);
    let (_, qkv_ref) = random_pair(device, &[b, len, w], seed, 1.5, dtype);
    let seen = qkv_ref.to_vec();
    let reference = rows_of(&full_reference(&qkv_ref, nh, kv), len, nh * hs, start, len);
    let new_rows = rows_of(&seen, len, w, start, len);
    let (qkv, _) = pair(device, &[b, n, w], new_rows, dtype);
    let dims = (b, len, t_max, nh, kv);
    let mut k_cache = cache_from(device, dtype, &seen, dims, start, 0);
    let mut v_cache = cache_from(device, dtype, &seen, dims, start, 1);
    let mut out = poisoned(device, dtype, &[b, n, nh * hs]);
    attention_cached_forward(&mut out, &qkv, &mut k_cache, &mut v_cache, start, nh, kv).unwrap();
    check(&format!("{tag}: out"), dtype, &out.to_vec(), &reference);
    for (name, cache, part) in [("k_cache", &k_cache, 0), ("v_cache", &v_cache, 1)] {
        let want = cache_from(Device::Cpu, DType::F32, &seen, dims, len, part).to_vec();
        let got = cache.to_vec();
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            let ok = if r.is_nan() { g.is_nan() } else { g.to_bits() == r.to_bits() };
            assert!(ok, "{tag}: {name} element {i} (row {}) is {g}, expected {r}", (i / kw) % t_max);
        }
    }
}

#[test]
fn attention_cached_matches_the_full_attention_on_gpu() {
    let Some(dev) = gpu_or_skip() else { return };
    // (B, start, n, NH, KV, HS): GPT-2 124M decoding its 1001st token (MHA, HS = 64); a
    // prefill from 0; grouped-query (4 query heads a KV head, HS = 32) and multi-query
    // attention at HS = 128; a chunk; HS = 48 (any head size works here)
    let shapes = [
        (2, 1000, 1, 12, 12, 64),
        (1, 0, 37, 4, 2, 32),
        (2, 300, 1, 8, 2, 32),
        (3, 17, 5, 4, 1, 128),
        (1, 9, 4, 2, 2, 48),
    ];
    for (i, &shape) in shapes.iter().enumerate() {
        for dtype in [DType::F32, DType::Bf16] {
            cached_case(dev.device(), dtype, shape, 400 + i as u64);
        }
    }
}

/// Prefill then one token at a time through the GPU's own appends (no cache uploaded), a
/// Llama GQA shape: every step's out against the full attention's rows.
#[test]
fn attention_cached_decodes_token_by_token_on_gpu() {
    let Some(dev) = gpu_or_skip() else { return };
    let device = dev.device();
    let (b, len, nh, kv, hs) = (2, 24, 4, 2, 32);
    let w = (nh + 2 * kv) * hs;
    for dtype in [DType::F32, DType::Bf16] {
        let (_, qkv_ref) = random_pair(device, &[b, len, w], 450, 1.5, dtype);
        let seen = qkv_ref.to_vec();
        let reference = full_reference(&qkv_ref, nh, kv);
        let mut k_cache = poisoned(device, dtype, &[b, len, kv * hs]);
        let mut v_cache = poisoned(device, dtype, &[b, len, kv * hs]);
        let mut steps = vec![(0, 5)];
        steps.extend((5..len).map(|p| (p, 1)));
        for (start, n) in steps {
            let (qkv, _) = pair(device, &[b, n, w], rows_of(&seen, len, w, start, start + n), dtype);
            let mut out = poisoned(device, dtype, &[b, n, nh * hs]);
            attention_cached_forward(&mut out, &qkv, &mut k_cache, &mut v_cache, start, nh, kv).unwrap();
            let want = rows_of(&reference, len, nh * hs, start, start + n);
            check(&format!("attention_cached {dtype:?} step {start}+{n}"), dtype, &out.to_vec(), &want);
        }
    }
}

#[test]
fn attention_cached_checks_dtypes_and_shared_memory_on_gpu() {
    let Some(dev) = gpu_or_skip() else { return };
    let device = dev.device();
    let (nh, kv, hs) = (2, 1, 64);
    let w = (nh + 2 * kv) * hs;
    let (qkv, _) = random_pair(device, &[1, 1, w], 1, 1.0, DType::Bf16);
    let mut out = poisoned(device, DType::Bf16, &[1, 1, nh * hs]);
    let mut k32 = poisoned(device, DType::F32, &[1, 8, kv * hs]);
    let mut v32 = poisoned(device, DType::F32, &[1, 8, kv * hs]);
    let err = attention_cached_forward(&mut out, &qkv, &mut k32, &mut v32, 0, nh, kv).unwrap_err().to_string();
    assert!(err.contains("k_cache"), "a cache of another dtype is named: {err}");
    // 20000 positions do not fit the kernel's shared memory: one clear error, nothing launched.
    let mut k = poisoned(device, DType::Bf16, &[1, 20000, kv * hs]);
    let mut v = poisoned(device, DType::Bf16, &[1, 20000, kv * hs]);
    let err = attention_cached_forward(&mut out, &qkv, &mut k, &mut v, 19999, nh, kv).unwrap_err().to_string();
    assert!(err.contains("20000 cached positions at head size 64"), "{err}");
}
