//! Every elementwise / normalisation / loss / optimizer op on the GPU against the CPU
//! reference (BRIEF §5): embedding (with and without positions), LayerNorm (+ fused residual), GeLU, residual,
//! cross-entropy, AdamW, global norm; forward and backward; f32 and bf16; GPT-2 124M shapes
//! (B=4, T=1024, C=768, V=50257 padded to 50304) and odd sizes (C=40 and C=37 to hit the
//! scalar paths, N=37, V=300 padded to 384). Fresh random inputs, outputs poisoned (NaN)
//! before each launch, parameter-gradient outputs pre-filled with random values (they
//! accumulate). Tolerances: f32 <= 1e-5 relative in norm (and elementwise 1e-5 rel +
//! 1e-5 * max|ref| abs), bf16 <= 1e-2 relative in norm. The bf16 reference runs the CPU op
//! on the bf16-rounded inputs, so only the kernels' own rounding is measured.
//! Without a GPU every test prints `skipped: ...` and passes (ENGINE_REQUIRE_GPU=1 makes that
//! a failure).

mod common;

use common::{assert_close, assert_rel_norm, gpu_or_skip, poison};
use half::bf16;
use kernels::ops::adamw::{adamw_update, adamw_update_with_copy, AdamWStep};
use kernels::ops::crossentropy::{crossentropy_forward, loss_mean};
use kernels::ops::embedding::{embedding_backward, embedding_forward};
use kernels::ops::gelu::{gelu_backward, gelu_forward};
use kernels::ops::kv_expand::{kv_expand_backward, kv_expand_forward};
use kernels::ops::layernorm::{layernorm_backward, layernorm_forward, residual_layernorm_forward};
use kernels::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use kernels::ops::rope::{rope_backward, rope_forward, rope_forward_at, Rope};
use kernels::ops::swiglu::{swiglu_backward, swiglu_forward};
use kernels::ops::norm::{clip_coefficient, clip_grad_norm, global_norm};
use kernels::ops::residual::{accumulate, residual_forward, scale};
use kernels::{DType, Device, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::Bf16];

// ---------------------------------------------------------------------------------------------
// helpers

fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| lo + rng.f32() * (hi - lo)).collect()
}

/// `data` as the dtype the GPU computes in: (GPU tensor, CPU f32 tensor holding exactly the
/// values the GPU sees, i.e. rounded to bf16 for bf16).
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
    pair(device, shape, values(shape.iter().product(), seed, -scale, scale), dtype)
}

/// A NaN-filled output on the GPU.
fn poisoned(device: Device, dtype: DType, shape: &[usize]) -> Tensor {
    let mut t = Tensor::try_zeros(device, dtype, shape).unwrap();
    poison(&mut t);
    t
}

fn tokens(device: Device, shape: &[usize], seed: u64, below: usize) -> (Tensor, Tensor) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ids: Vec<u32> = (0..shape.iter().product()).map(|_| rng.u32(0..below as u32)).collect();
    let host = Tensor::from_u32(shape, ids).unwrap();
    (host.to_device(device).unwrap(), host)
}

/// The test criterion for `dtype`, naming the case on failure.
fn check(name: &str, dtype: DType, gpu: &Tensor, reference: &Tensor) {
    let (g, r) = (gpu.to_vec(), reference.to_vec());
    match dtype {
        DType::Bf16 => {
            assert_rel_norm(name, &g, &r, 1e-2);
        }
        _ => {
            assert_rel_norm(name, &g, &r, 1e-5);
            let max = r.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert_close(name, &g, &r, 1e-5 * max, 1e-5);
        }
    }
}

/// f32-accumulated outputs (mean, rstd, losses, fp32 master weights): f32 tolerance whatever
/// the activation dtype.
fn check_f32(name: &str, gpu: &Tensor, reference: &Tensor) {
    check(name, DType::F32, gpu, reference);
}

// ---------------------------------------------------------------------------------------------
// embedding

/// (B, T, C, V, token ids drawn below this bound: small values make long buckets)
const EMBEDDING_CASES: [(usize, usize, usize, usize, usize); 5] = [
    (4, 1024, 768, 50257, 50257),
    (4, 1024, 768, 50257, 40), // heavy repetition: 4096 positions over 40 ids
    (1, 37, 40, 300, 300),
    (3, 37, 37, 300, 7), // C % 8 != 0: scalar paths
    (2, 5, 40, 65, 65),
];

#[test]
fn embedding_forward_backward_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    for (case, &(b, t, c, v, below)) in EMBEDDING_CASES.iter().enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("embedding {what} {dtype} B={b} T={t} C={c} V={v} ids<{below}");
            if b * t >= 4096 && common::skip_full_size(&gpu, &name("forward/backward")) {
                continue;
            }
            let seed = 100 + case as u64 * 10;
            let max_t = t + 3;
            let (tok_g, tok_c) = tokens(dev, &[b, t], seed, below);
            let (wte_g, wte_c) = random_pair(dev, &[v, c], seed + 1, 1.0, dtype);
            let (wpe_g, wpe_c) = random_pair(dev, &[max_t, c], seed + 2, 1.0, dtype);

            let mut out_g = poisoned(dev, dtype, &[b, t, c]);
            embedding_forward(&mut out_g, &tok_g, &wte_g, Some(&wpe_g)).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[b, t, c]);
            embedding_forward(&mut out_c, &tok_c, &wte_c, Some(&wpe_c)).unwrap();
            check(&name("forward"), dtype, &out_g, &out_c);

            // parameter gradients accumulate onto random values
            let (dout_g, dout_c) = random_pair(dev, &[b, t, c], seed + 3, 1.0, dtype);
            let (dwte0_g, mut dwte_c) = random_pair(dev, &[v, c], seed + 4, 0.5, dtype);
            let (dwpe0_g, mut dwpe_c) = random_pair(dev, &[max_t, c], seed + 5, 0.5, dtype);
            let (mut dwte_g, mut dwpe_g) = (dwte0_g.clone(), dwpe0_g.clone());
            embedding_backward(&mut dwte_g, Some(&mut dwpe_g), &dout_g, &tok_g).unwrap();
            embedding_backward(&mut dwte_c, Some(&mut dwpe_c), &dout_c, &tok_c).unwrap();
            check(&name("dwte"), dtype, &dwte_g, &dwte_c);
            check(&name("dwpe"), dtype, &dwpe_g, &dwpe_c);

            // deterministic: the same inputs give the same bits
            let (mut dwte_2, mut dwpe_2) = (dwte0_g.clone(), dwpe0_g.clone());
            embedding_backward(&mut dwte_2, Some(&mut dwpe_2), &dout_g, &tok_g).unwrap();
            assert_eq!(bits(&dwte_g), bits(&dwte_2), "{}: not bitwise reproducible", name("dwte"));
            assert_eq!(bits(&dwpe_g), bits(&dwpe_2), "{}: not bitwise reproducible", name("dwpe"));
            if dtype == DType::F32 {
                // the CPU adds in row order; so does the GPU (stable sort): bitwise equal
                assert_eq!(bits(&dwte_g), bits(&dwte_c), "{}: f32 sum order differs from the CPU", name("dwte"));
            }
        }
    }
}

#[test]
fn embedding_without_positions_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    for (case, &(b, t, c, v, below)) in EMBEDDING_CASES.iter().enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("embedding (no positions) {what} {dtype} B={b} T={t} C={c} V={v} ids<{below}");
            if b * t >= 4096 && common::skip_full_size(&gpu, &name("forward/backward")) {
                continue;
            }
            let seed = 150 + case as u64 * 10;
            let (tok_g, tok_c) = tokens(dev, &[b, t], seed, below);
            let (wte_g, wte_c) = random_pair(dev, &[v, c], seed + 1, 1.0, dtype);

            let mut out_g = poisoned(dev, dtype, &[b, t, c]);
            embedding_forward(&mut out_g, &tok_g, &wte_g, None).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[b, t, c]);
            embedding_forward(&mut out_c, &tok_c, &wte_c, None).unwrap();
            // a gather: exact in both dtypes
            assert_eq!(bits(&out_g), bits(&out_c), "{}: not the rows of wte", name("forward"));

            // dwte accumulates onto random values
            let (dout_g, dout_c) = random_pair(dev, &[b, t, c], seed + 3, 1.0, dtype);
            let (dwte0_g, mut dwte_c) = random_pair(dev, &[v, c], seed + 4, 0.5, dtype);
            let mut dwte_g = dwte0_g.clone();
            embedding_backward(&mut dwte_g, None, &dout_g, &tok_g).unwrap();
            embedding_backward(&mut dwte_c, None, &dout_c, &tok_c).unwrap();
            check(&name("dwte"), dtype, &dwte_g, &dwte_c);
            let mut dwte_2 = dwte0_g.clone();
            embedding_backward(&mut dwte_2, None, &dout_g, &tok_g).unwrap();
            assert_eq!(bits(&dwte_g), bits(&dwte_2), "{}: not bitwise reproducible", name("dwte"));
            if dtype == DType::F32 {
                assert_eq!(bits(&dwte_g), bits(&dwte_c), "{}: f32 sum order differs from the CPU", name("dwte"));
            }
        }
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn embedding_bad_token_gives_nan_row_on_gpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    let tok = Tensor::from_u32(&[1, 3], vec![1, 300, 2]).unwrap().to_device(dev).unwrap();
    let (wte, _) = random_pair(dev, &[300, 16], 7, 1.0, DType::F32);
    let (wpe, _) = random_pair(dev, &[3, 16], 8, 1.0, DType::F32);
    let mut out = poisoned(dev, DType::F32, &[1, 3, 16]);
    embedding_forward(&mut out, &tok, &wte, Some(&wpe)).unwrap();
    let o = out.to_vec();
    assert!(o[..16].iter().all(|x| x.is_finite()) && o[32..].iter().all(|x| x.is_finite()), "valid rows written");
    assert!(o[16..32].iter().all(|x| x.is_nan()), "the row of token 300 (>= V) is NaN");
}

// ---------------------------------------------------------------------------------------------
// layernorm

/// (N, C)
const LN_CASES: [(usize, usize); 4] = [(4 * 1024, 768), (37, 40), (37, 37), (100, 1600)];

#[test]
fn layernorm_forward_backward_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    for (case, &(n, c)) in LN_CASES.iter().enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("layernorm {what} {dtype} N={n} C={c}");
            if n * c >= 4096 * 768 && common::skip_full_size(&gpu, &name("forward/backward")) {
                continue;
            }
            let seed = 200 + case as u64 * 10;
            // an offset and a spread, so mean and variance both matter
            let (x_g, x_c) = pair(dev, &[n, c], values(n * c, seed, -1.0, 3.0), dtype);
            let (w_g, w_c) = pair(dev, &[c], values(c, seed + 1, 0.5, 1.5), dtype);
            let (b_g, b_c) = random_pair(dev, &[c], seed + 2, 0.5, dtype);

            let mut out_g = poisoned(dev, dtype, &[n, c]);
            let mut mean_g = poisoned(dev, DType::F32, &[n]);
            let mut rstd_g = poisoned(dev, DType::F32, &[n]);
            layernorm_forward(&mut out_g, &mut mean_g, &mut rstd_g, &x_g, &w_g, &b_g).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[n, c]);
            let mut mean_c = Tensor::zeros(Device::Cpu, &[n]);
            let mut rstd_c = Tensor::zeros(Device::Cpu, &[n]);
            layernorm_forward(&mut out_c, &mut mean_c, &mut rstd_c, &x_c, &w_c, &b_c).unwrap();
            check(&name("out"), dtype, &out_g, &out_c);
            check_f32(&name("mean"), &mean_g, &mean_c);
            check_f32(&name("rstd"), &rstd_g, &rstd_c);

            // backward from the CPU's saved statistics on both sides (same inputs)
            let (mean_in, rstd_in) = (mean_c.to_device(dev).unwrap(), rstd_c.to_device(dev).unwrap());
            let (dout_g, dout_c) = random_pair(dev, &[n, c], seed + 3, 1.0, dtype);
            let mut dinp_g = poisoned(dev, dtype, &[n, c]);
            let (dw0_g, mut dw_c) = random_pair(dev, &[c], seed + 4, 1.0, dtype);
            let (db0_g, mut db_c) = random_pair(dev, &[c], seed + 5, 1.0, dtype);
            let (mut dw_g, mut db_g) = (dw0_g.clone(), db0_g.clone());
            layernorm_backward(&mut dinp_g, &mut dw_g, &mut db_g, &dout_g, &x_g, &w_g, &mean_in, &rstd_in).unwrap();
            let mut dinp_c = Tensor::zeros(Device::Cpu, &[n, c]);
            layernorm_backward(&mut dinp_c, &mut dw_c, &mut db_c, &dout_c, &x_c, &w_c, &mean_c, &rstd_c).unwrap();
            check(&name("dinp"), dtype, &dinp_g, &dinp_c);
            check(&name("dweight"), dtype, &dw_g, &dw_c);
            check(&name("dbias"), dtype, &db_g, &db_c);

            let mut dinp_2 = poisoned(dev, dtype, &[n, c]);
            let (mut dw_2, mut db_2) = (dw0_g.clone(), db0_g.clone());
            layernorm_backward(&mut dinp_2, &mut dw_2, &mut db_2, &dout_g, &x_g, &w_g, &mean_in, &rstd_in).unwrap();
            assert_eq!(bits(&dw_g), bits(&dw_2), "{}: not bitwise reproducible", name("dweight"));
            assert_eq!(bits(&db_g), bits(&db_2), "{}: not bitwise reproducible", name("dbias"));
        }
    }
}

// rmsnorm

#[test]
fn rmsnorm_forward_backward_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    // LN_CASES, plus Llama widths: 2048 (TinyLlama), 4096 rows of 8 (many weight chunks)
    let cases = LN_CASES.iter().copied().chain([(3, 2048), (4096, 8)]);
    for (case, (n, c)) in cases.enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("rmsnorm {what} {dtype} N={n} C={c}");
            if n * c >= 4096 * 768 && common::skip_full_size(&gpu, &name("forward/backward")) {
                continue;
            }
            let seed = 700 + case as u64 * 10;
            let (x_g, x_c) = pair(dev, &[n, c], values(n * c, seed, -1.0, 3.0), dtype);
            let (w_g, w_c) = pair(dev, &[c], values(c, seed + 1, 0.5, 1.5), dtype);
            let eps = 1e-6;

            let mut out_g = poisoned(dev, dtype, &[n, c]);
            let mut rstd_g = poisoned(dev, DType::F32, &[n]);
            rmsnorm_forward(&mut out_g, &mut rstd_g, &x_g, &w_g, eps).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[n, c]);
            let mut rstd_c = Tensor::zeros(Device::Cpu, &[n]);
            rmsnorm_forward(&mut out_c, &mut rstd_c, &x_c, &w_c, eps).unwrap();
            check(&name("out"), dtype, &out_g, &out_c);
            check_f32(&name("rstd"), &rstd_g, &rstd_c);

            // backward from the CPU's rstd on both sides; dweight accumulates onto random values
            let rstd_in = rstd_c.to_device(dev).unwrap();
            let (dout_g, dout_c) = random_pair(dev, &[n, c], seed + 3, 1.0, dtype);
            let mut dinp_g = poisoned(dev, dtype, &[n, c]);
            let (dw0_g, mut dw_c) = random_pair(dev, &[c], seed + 4, 1.0, dtype);
            let mut dw_g = dw0_g.clone();
            rmsnorm_backward(&mut dinp_g, &mut dw_g, &dout_g, &x_g, &w_g, &rstd_in).unwrap();
            let mut dinp_c = Tensor::zeros(Device::Cpu, &[n, c]);
            rmsnorm_backward(&mut dinp_c, &mut dw_c, &dout_c, &x_c, &w_c, &rstd_c).unwrap();
            check(&name("dinp"), dtype, &dinp_g, &dinp_c);
            check(&name("dweight"), dtype, &dw_g, &dw_c);

            let mut dinp_2 = poisoned(dev, dtype, &[n, c]);
            let mut dw_2 = dw0_g.clone();
            rmsnorm_backward(&mut dinp_2, &mut dw_2, &dout_g, &x_g, &w_g, &rstd_in).unwrap();
            assert_eq!(bits(&dw_g), bits(&dw_2), "{}: not bitwise reproducible", name("dweight"));
        }
    }
}

// rope

#[test]
fn rope_forward_backward_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    // (B, T, W, rope): TinyLlama's fused qkv (32 q + 4 k heads of 64 rotated, 4 v heads
    // copied) at T = 1024; HS = 128 at Llama 3's theta; odd T and a two-column head
    let cases = [
        (1, 1024, 40 * 64, Rope { heads: 36, head_size: 64, theta: 10000.0 }),
        (2, 37, 3 * 128, Rope { heads: 2, head_size: 128, theta: 500000.0 }),
        (3, 5, 7, Rope { heads: 3, head_size: 2, theta: 10000.0 }),
    ];
    for (case, &(b, t, w, rope)) in cases.iter().enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("rope {what} {dtype} B={b} T={t} W={w} HS={}", rope.head_size);
            let seed = 900 + case as u64 * 10;
            let (x_g, x_c) = random_pair(dev, &[b, t, w], seed, 1.0, dtype);
            let mut out_g = poisoned(dev, dtype, &[b, t, w]);
            rope_forward(&mut out_g, &x_g, &rope).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[b, t, w]);
            rope_forward(&mut out_c, &x_c, &rope).unwrap();
            check(&name("out"), dtype, &out_g, &out_c);

            let (dout_g, dout_c) = random_pair(dev, &[b, t, w], seed + 1, 1.0, dtype);
            let mut dinp_g = poisoned(dev, dtype, &[b, t, w]);
            rope_backward(&mut dinp_g, &dout_g, &rope).unwrap();
            let mut dinp_c = Tensor::zeros(Device::Cpu, &[b, t, w]);
            rope_backward(&mut dinp_c, &dout_c, &rope).unwrap();
            check(&name("dinp"), dtype, &dinp_g, &dinp_c);
        }
    }
}

/// Incremental decoding's RoPE: rows at positions start .. start + T on the GPU against the
/// CPU (which the model tests check against the full rotation), and the rows of a full
/// rotation from 0 equal to the same rows rotated from their offset.
#[test]
fn rope_forward_at_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    // (B, T, W, rope, start): a Llama GQA qkv row decoding one token late in the context,
    // a prefill chunk, HS = 128 at Llama 3's theta
    let cases = [
        (1, 1, 8 * 64, Rope { heads: 6, head_size: 64, theta: 10000.0 }, 1023),
        (2, 7, 4 * 32, Rope { heads: 3, head_size: 32, theta: 10000.0 }, 9),
        (1, 3, 3 * 128, Rope { heads: 2, head_size: 128, theta: 500000.0 }, 500),
    ];
    for (case, &(b, t, w, rope, start)) in cases.iter().enumerate() {
        for dtype in DTYPES {
            let name = format!("rope_forward_at {dtype} B={b} T={t} W={w} HS={} start={start}", rope.head_size);
            let (x_g, x_c) = random_pair(dev, &[b, t, w], 950 + case as u64, 1.0, dtype);
            let mut out_g = poisoned(dev, dtype, &[b, t, w]);
            rope_forward_at(&mut out_g, &x_g, &rope, start).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[b, t, w]);
            rope_forward_at(&mut out_c, &x_c, &rope, start).unwrap();
            check(&name, dtype, &out_g, &out_c);
        }
    }
    // The last row of a full rotation over 0 ..= start is the one row rotated at `start`.
    let (rope, start, w) = (Rope { heads: 2, head_size: 64, theta: 10000.0 }, 40, 3 * 64);
    let (full_g, _) = random_pair(dev, &[1, start + 1, w], 990, 1.0, DType::F32);
    let mut all = poisoned(dev, DType::F32, &[1, start + 1, w]);
    rope_forward(&mut all, &full_g, &rope).unwrap();
    let last = full_g.to_vec()[start * w..].to_vec();
    let one = Tensor::from_vec(&[1, 1, w], last).unwrap().to_device(dev).unwrap();
    let mut at = poisoned(dev, DType::F32, &[1, 1, w]);
    rope_forward_at(&mut at, &one, &rope, start).unwrap();
    assert_eq!(at.to_vec(), all.to_vec()[start * w..].to_vec(), "row {start} rotated alone differs from the full rotation");
}

// kv_expand

/// `reference` (the CPU op on the values the GPU saw) rounded to `dtype`, as the GPU stores it.
fn rounded(reference: &Tensor, dtype: DType) -> Vec<u32> {
    let r = reference.to_vec();
    match dtype {
        DType::Bf16 => r.iter().map(|&x| bf16::from_f32(x).to_f32().to_bits()).collect(),
        _ => r.iter().map(|x| x.to_bits()).collect(),
    }
}

#[test]
fn kv_expand_forward_backward_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    // (B, T, NH, KV, HS): TinyLlama's attention (32 query heads of 64 over 4 kv heads) at
    // T = 256, an odd head size, KV = NH (a copy), KV = 1 (multi-query)
    let cases = [(1, 256, 32, 4, 64), (2, 37, 8, 2, 5), (3, 5, 6, 6, 3), (1, 7, 4, 1, 7)];
    for (case, &(b, t, nh, kv, hs)) in cases.iter().enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("kv_expand {what} {dtype} B={b} T={t} NH={nh} KV={kv} HS={hs}");
            let seed = 950 + case as u64 * 10;
            let (w_in, w_out) = ((nh + 2 * kv) * hs, 3 * nh * hs);
            let (x_g, x_c) = random_pair(dev, &[b, t, w_in], seed, 1.0, dtype);
            let mut out_g = poisoned(dev, dtype, &[b, t, w_out]);
            kv_expand_forward(&mut out_g, &x_g, nh, kv).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[b, t, w_out]);
            kv_expand_forward(&mut out_c, &x_c, nh, kv).unwrap();
            // copies: exact in both dtypes
            assert_eq!(bits(&out_g), rounded(&out_c, dtype), "{}", name("out"));

            // the same f32 sums in the same order, rounded once: bitwise equal in both dtypes
            let (dout_g, dout_c) = random_pair(dev, &[b, t, w_out], seed + 1, 1.0, dtype);
            let mut dinp_g = poisoned(dev, dtype, &[b, t, w_in]);
            kv_expand_backward(&mut dinp_g, &dout_g, nh, kv).unwrap();
            let mut dinp_c = Tensor::zeros(Device::Cpu, &[b, t, w_in]);
            kv_expand_backward(&mut dinp_c, &dout_c, nh, kv).unwrap();
            check(&name("dinp"), dtype, &dinp_g, &dinp_c);
            assert_eq!(bits(&dinp_g), rounded(&dinp_c, dtype), "{}: not the CPU's sums rounded once", name("dinp"));
        }
    }
}

// swiglu

// swiglu

#[test]
fn swiglu_forward_backward_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    // (N, H): TinyLlama's MLP at 64 rows, odd sizes, one element
    for (case, &(n, h)) in [(64, 5632), (37, 40), (3, 37), (1, 1)].iter().enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("swiglu {what} {dtype} N={n} H={h}");
            let seed = 800 + case as u64 * 10;
            // wide enough that the sigmoid saturates at both ends
            let (x_g, x_c) = pair(dev, &[n, 2 * h], values(n * 2 * h, seed, -12.0, 12.0), dtype);
            let mut out_g = poisoned(dev, dtype, &[n, h]);
            swiglu_forward(&mut out_g, &x_g).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[n, h]);
            swiglu_forward(&mut out_c, &x_c).unwrap();
            check(&name("out"), dtype, &out_g, &out_c);

            let (dout_g, dout_c) = random_pair(dev, &[n, h], seed + 1, 1.0, dtype);
            let mut dinp_g = poisoned(dev, dtype, &[n, 2 * h]);
            swiglu_backward(&mut dinp_g, &dout_g, &x_g).unwrap();
            let mut dinp_c = Tensor::zeros(Device::Cpu, &[n, 2 * h]);
            swiglu_backward(&mut dinp_c, &dout_c, &x_c).unwrap();
            check(&name("dinp"), dtype, &dinp_g, &dinp_c);
        }
    }
}

#[test]
fn fused_residual_layernorm_matches_composition() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    for (case, &(n, c)) in LN_CASES.iter().enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("residual_layernorm {what} {dtype} N={n} C={c}");
            let seed = 300 + case as u64 * 10;
            let (a_g, a_c) = pair(dev, &[n, c], values(n * c, seed, -1.0, 2.0), dtype);
            let (b_g, b_c) = random_pair(dev, &[n, c], seed + 1, 1.0, dtype);
            let (w_g, w_c) = pair(dev, &[c], values(c, seed + 2, 0.5, 1.5), dtype);
            let (bias_g, bias_c) = random_pair(dev, &[c], seed + 3, 0.5, dtype);

            let mut res_g = poisoned(dev, dtype, &[n, c]);
            let mut out_g = poisoned(dev, dtype, &[n, c]);
            let mut mean_g = poisoned(dev, DType::F32, &[n]);
            let mut rstd_g = poisoned(dev, DType::F32, &[n]);
            residual_layernorm_forward(&mut res_g, &mut out_g, &mut mean_g, &mut rstd_g, &a_g, &b_g, &w_g, &bias_g).unwrap();

            // the reference: residual_forward then layernorm_forward on the CPU
            let mut res_c = Tensor::zeros(Device::Cpu, &[n, c]);
            residual_forward(&mut res_c, &a_c, &b_c).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[n, c]);
            let mut mean_c = Tensor::zeros(Device::Cpu, &[n]);
            let mut rstd_c = Tensor::zeros(Device::Cpu, &[n]);
            layernorm_forward(&mut out_c, &mut mean_c, &mut rstd_c, &res_c, &w_c, &bias_c).unwrap();
            check(&name("residual"), dtype, &res_g, &res_c);
            check(&name("out"), dtype, &out_g, &out_c);
            // bf16 normalises the rounded residual: its statistics carry bf16 error
            let stat_check = |what: &str, g: &Tensor, r: &Tensor| match dtype {
                DType::F32 => check_f32(&name(what), g, r),
                _ => check(&name(what), dtype, g, r),
            };
            stat_check("mean", &mean_g, &mean_c);
            stat_check("rstd", &rstd_g, &rstd_c);

            // and the CPU path of the fused op is the same composition
            let mut res_f = Tensor::zeros(Device::Cpu, &[n, c]);
            let mut out_f = Tensor::zeros(Device::Cpu, &[n, c]);
            let mut mean_f = Tensor::zeros(Device::Cpu, &[n]);
            let mut rstd_f = Tensor::zeros(Device::Cpu, &[n]);
            residual_layernorm_forward(&mut res_f, &mut out_f, &mut mean_f, &mut rstd_f, &a_c, &b_c, &w_c, &bias_c).unwrap();
            assert_eq!(out_f.to_vec(), out_c.to_vec(), "{}: CPU fused path differs from the composition", name("out"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gelu, residual

/// element counts: GPT-2's MLP activation (B*T*4C), odd sizes around the pack width
const ELEMENTWISE_SIZES: [usize; 4] = [4 * 1024 * 4 * 768, 37 * 40 * 4, 37 * 37 + 3, 1];

#[test]
fn gelu_forward_backward_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    for (case, &n) in ELEMENTWISE_SIZES.iter().enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("gelu {what} {dtype} n={n}");
            if n == ELEMENTWISE_SIZES[0] && common::skip_full_size(&gpu, &name("forward/backward")) {
                continue;
            }
            let seed = 400 + case as u64 * 10;
            // wide range: the far negative tail is where the tanh form would cancel
            let (x_g, x_c) = pair(dev, &[n], values(n, seed, -12.0, 6.0), dtype);
            let mut out_g = poisoned(dev, dtype, &[n]);
            gelu_forward(&mut out_g, &x_g).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[n]);
            gelu_forward(&mut out_c, &x_c).unwrap();
            check(&name("forward"), dtype, &out_g, &out_c);

            let (dout_g, dout_c) = random_pair(dev, &[n], seed + 1, 1.0, dtype);
            let mut dinp_g = poisoned(dev, dtype, &[n]);
            gelu_backward(&mut dinp_g, &x_g, &dout_g).unwrap();
            let mut dinp_c = Tensor::zeros(Device::Cpu, &[n]);
            gelu_backward(&mut dinp_c, &x_c, &dout_c).unwrap();
            check(&name("backward"), dtype, &dinp_g, &dinp_c);
        }
    }
}

#[test]
fn residual_add_accumulate_scale_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    for (case, &n) in ELEMENTWISE_SIZES.iter().enumerate() {
        for dtype in DTYPES {
            let name = |what: &str| format!("residual {what} {dtype} n={n}");
            if n == ELEMENTWISE_SIZES[0] && common::skip_full_size(&gpu, &name("add/accumulate/scale")) {
                continue;
            }
            let seed = 500 + case as u64 * 10;
            let (a_g, a_c) = random_pair(dev, &[n], seed, 2.0, dtype);
            let (b_g, b_c) = random_pair(dev, &[n], seed + 1, 2.0, dtype);

            let mut out_g = poisoned(dev, dtype, &[n]);
            residual_forward(&mut out_g, &a_g, &b_g).unwrap();
            let mut out_c = Tensor::zeros(Device::Cpu, &[n]);
            residual_forward(&mut out_c, &a_c, &b_c).unwrap();
            check(&name("forward"), dtype, &out_g, &out_c);

            let (mut dst_g, mut dst_c) = (a_g.clone(), a_c.clone());
            accumulate(&mut dst_g, &b_g).unwrap();
            accumulate(&mut dst_c, &b_c).unwrap();
            check(&name("accumulate"), dtype, &dst_g, &dst_c);
            assert_eq!(a_g.to_vec(), a_c.to_vec(), "{}: the shared source was written", name("accumulate"));

            scale(&mut dst_g, -0.37).unwrap();
            scale(&mut dst_c, -0.37).unwrap();
            check(&name("scale"), dtype, &dst_g, &dst_c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cross-entropy

/// (N, V, Vp)
const CE_CASES: [(usize, usize, usize); 4] = [(4 * 1024, 50257, 50304), (37, 300, 384), (37, 300, 301), (5, 1, 8)];

#[test]
fn crossentropy_forward_and_dlogits_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    for (case, &(n, v, vp)) in CE_CASES.iter().enumerate() {
        for dtype in DTYPES {
            for dloss in [None, Some(1.0 / n as f32)] {
                let name = |what: &str| format!("crossentropy {what} {dtype} N={n} V={v} Vp={vp} dloss={dloss:?}");
                if v == 50257 && common::skip_full_size(&gpu, &name("forward")) {
                    continue;
                }
                let seed = 600 + case as u64 * 10;
                // real columns in [-4, 4); the padding holds huge values that must be ignored
                let mut data = values(n * vp, seed, -4.0, 4.0);
                for row in data.chunks_mut(vp) {
                    row[v..].fill(1e4);
                }
                let (mut logits_g, mut logits_c) = pair(dev, &[n, vp], data, dtype);
                let (tgt_g, tgt_c) = tokens(dev, &[n], seed + 1, v);
                let mut losses_g = poisoned(dev, DType::F32, &[n]);
                crossentropy_forward(&mut losses_g, &mut logits_g, &tgt_g, v, dloss).unwrap();
                let mut losses_c = Tensor::zeros(Device::Cpu, &[n]);
                crossentropy_forward(&mut losses_c, &mut logits_c, &tgt_c, v, dloss).unwrap();
                check_f32(&name("losses"), &losses_g, &losses_c);
                // without dloss the logits are untouched, with it they are dlogits (0 in the padding)
                check(&name("logits/dlogits"), dtype, &logits_g, &logits_c);
                if dloss.is_some() {
                    let g = logits_g.to_vec();
                    assert!(g.chunks(vp).all(|row| row[v..].iter().all(|&x| x == 0.0)), "{}: padding gradient not 0", name("dlogits"));
                }
            }
        }
    }
}

#[test]
fn crossentropy_bad_target_gives_nan_loss_on_gpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    let (mut logits, _) = random_pair(dev, &[2, 16], 9, 1.0, DType::F32);
    let tgt = Tensor::from_u32(&[2], vec![3, 10]).unwrap().to_device(dev).unwrap();
    let mut losses = poisoned(dev, DType::F32, &[2]);
    crossentropy_forward(&mut losses, &mut logits, &tgt, 10, Some(0.5)).unwrap();
    let l = losses.to_vec();
    assert!(l[0].is_finite() && l[1].is_nan(), "losses {l:?}: row 1's target 10 >= V = 10 must give NaN");
    let g = logits.to_vec();
    assert!(g[..16].iter().all(|x| x.is_finite()) && g[16..].iter().all(|x| x.is_nan()), "dlogits {g:?}");
}

/// The device-side mean loss over micro-batches: replaced on the first call, accumulated on
/// the next, against the f64 CPU sum (odd row counts, some below one block, some spanning
/// several strides of it; the output poisoned first).
#[test]
fn loss_mean_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    for (case, &n) in [1usize, 37, 1023, 1025, 3001].iter().enumerate() {
        let seed = 650 + case as u64;
        let (first_g, first_c) = pair(dev, &[n], values(n, seed, 0.0, 8.0), DType::F32);
        let (second_g, second_c) = pair(dev, &[n], values(n, seed + 1, 0.0, 8.0), DType::F32);
        let scale = 1.0 / (2 * n) as f32;
        let mut out_g = poisoned(dev, DType::F32, &[1]);
        let mut out_c = Tensor::zeros(Device::Cpu, &[1]);
        loss_mean(&mut out_g, &first_g, scale, false).unwrap();
        loss_mean(&mut out_c, &first_c, scale, false).unwrap();
        check_f32(&format!("loss_mean N={n} (first micro-batch)"), &out_g, &out_c);
        loss_mean(&mut out_g, &second_g, scale, true).unwrap();
        loss_mean(&mut out_c, &second_c, scale, true).unwrap();
        check_f32(&format!("loss_mean N={n} (accumulated)"), &out_g, &out_c);
        let expected = (first_c.to_vec().iter().chain(&second_c.to_vec()).map(|&l| l as f64).sum::<f64>() * scale as f64) as f32;
        assert!((out_c.to_vec()[0] - expected).abs() <= 1e-6 * expected, "CPU reference {:?} vs {expected}", out_c.to_vec());
    }
}

// ---------------------------------------------------------------------------------------------
// adamw

#[test]
fn adamw_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    for (case, &n) in [(1usize << 22) + 3, 1001, 1].iter().enumerate() {
        for grad_dtype in DTYPES {
            for (step, weight_decay) in [(1u64, 0.1f32), (7, 0.0)] {
                let name = |what: &str| format!("adamw {what} grad {grad_dtype} n={n} step={step} wd={weight_decay}");
                let seed = 700 + case as u64 * 10 + step;
                let hp = AdamWStep { lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay, step };
                let (mut p_g, mut p_c) = random_pair(dev, &[n], seed, 1.0, DType::F32);
                let (g_g, g_c) = random_pair(dev, &[n], seed + 1, 0.1, grad_dtype);
                let (mut m_g, mut m_c) = random_pair(dev, &[n], seed + 2, 0.01, DType::F32);
                let (mut v_g, mut v_c) = pair(dev, &[n], values(n, seed + 3, 0.0, 1e-4), DType::F32);
                let mut copy_g = poisoned(dev, DType::Bf16, &[n]);
                let mut copy_c = Tensor::try_zeros(Device::Cpu, DType::Bf16, &[n]).unwrap();
                if grad_dtype == DType::Bf16 {
                    adamw_update_with_copy(&mut p_g, &mut copy_g, &g_g, &mut m_g, &mut v_g, &hp).unwrap();
                    adamw_update_with_copy(&mut p_c, &mut copy_c, &g_c, &mut m_c, &mut v_c, &hp).unwrap();
                    check(&name("bf16 copy"), DType::Bf16, &copy_g, &copy_c);
                } else {
                    adamw_update(&mut p_g, &g_g, &mut m_g, &mut v_g, &hp).unwrap();
                    adamw_update(&mut p_c, &g_c, &mut m_c, &mut v_c, &hp).unwrap();
                }
                check_f32(&name("param"), &p_g, &p_c);
                check_f32(&name("m"), &m_g, &m_c);
                check_f32(&name("v"), &v_g, &v_c);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// global norm and clipping

#[test]
fn global_norm_and_clip_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dev = gpu.device();
    // GPT-2 124M's largest gradient (wte, padded), a block's matrices, and odd sizes
    let mut sizes = vec![50304 * 768, 768 * 3072, 768, 37, 1, (1 << 20) + 5];
    if common::skip_full_size(&gpu, "global_norm of wte's gradient (50304 x 768)") {
        sizes.remove(0);
    }
    for dtype in DTYPES {
        let pairs: Vec<(Tensor, Tensor)> =
            sizes.iter().enumerate().map(|(i, &n)| random_pair(dev, &[n], 800 + i as u64, 0.01, dtype)).collect();
        let gpu_ts: Vec<&Tensor> = pairs.iter().map(|p| &p.0).collect();
        let cpu_ts: Vec<&Tensor> = pairs.iter().map(|p| &p.1).collect();
        let norm_g = global_norm(&gpu_ts).unwrap();
        let norm_c = global_norm(&cpu_ts).unwrap();
        // fp32 accumulation vs the CPU's f64: bound documented in kernels/cuda/norm.cu
        let rel = ((norm_g - norm_c) / norm_c).abs();
        assert!(rel <= 1e-5, "global_norm {dtype}: gpu {norm_g} vs cpu (f64) {norm_c}: relative error {rel:e} > 1e-5");
        assert_eq!(norm_g.to_bits(), global_norm(&gpu_ts).unwrap().to_bits(), "global_norm {dtype}: not reproducible");

        // clip to half the norm: every tensor scaled by clip_coefficient
        let max_norm = norm_c * 0.5;
        let mut gpu_owned: Vec<Tensor> = pairs.iter().map(|p| p.0.clone()).collect();
        let mut cpu_owned: Vec<Tensor> = pairs.iter().map(|p| p.1.clone()).collect();
        let mut gpu_refs: Vec<&mut Tensor> = gpu_owned.iter_mut().collect();
        let mut cpu_refs: Vec<&mut Tensor> = cpu_owned.iter_mut().collect();
        let before_g = clip_grad_norm(&mut gpu_refs, max_norm).unwrap();
        let before_c = clip_grad_norm(&mut cpu_refs, max_norm).unwrap();
        assert!(((before_g - before_c) / before_c).abs() <= 1e-5, "clip_grad_norm returns the norm before clipping");
        assert!(clip_coefficient(before_c, max_norm) < 1.0);
        for (i, (g, c)) in gpu_owned.iter().zip(&cpu_owned).enumerate() {
            check(&format!("clip_grad_norm {dtype} tensor {i} (n={})", sizes[i]), dtype, g, c);
        }
        // the unclipped originals were shared, not written
        assert_eq!(pairs[2].0.to_vec(), pairs[2].1.to_vec(), "clip wrote through a shared tensor");
    }
}

// ---------------------------------------------------------------------------------------------
// the CPU faces of the ops added with the CUDA backend (run everywhere, CI included)

#[test]
fn cpu_fused_residual_layernorm_is_the_composition() {
    let (n, c) = (7, 12);
    let a = Tensor::from_vec(&[n, c], values(n * c, 1, -1.0, 2.0)).unwrap();
    let b = Tensor::from_vec(&[n, c], values(n * c, 2, -1.0, 1.0)).unwrap();
    let w = Tensor::from_vec(&[c], values(c, 3, 0.5, 1.5)).unwrap();
    let bias = Tensor::from_vec(&[c], values(c, 4, -0.5, 0.5)).unwrap();
    let z = |shape: &[usize]| Tensor::zeros(Device::Cpu, shape);
    let (mut res, mut out, mut mean, mut rstd) = (z(&[n, c]), z(&[n, c]), z(&[n]), z(&[n]));
    residual_layernorm_forward(&mut res, &mut out, &mut mean, &mut rstd, &a, &b, &w, &bias).unwrap();
    let mut res_c = z(&[n, c]);
    residual_forward(&mut res_c, &a, &b).unwrap();
    let (mut out_c, mut mean_c, mut rstd_c) = (z(&[n, c]), z(&[n]), z(&[n]));
    layernorm_forward(&mut out_c, &mut mean_c, &mut rstd_c, &res_c, &w, &bias).unwrap();
    assert_eq!(res.to_vec(), res_c.to_vec());
    assert_eq!(out.to_vec(), out_c.to_vec());
    assert_eq!(rstd.to_vec(), rstd_c.to_vec());
    let err = residual_layernorm_forward(&mut res, &mut out, &mut mean, &mut rstd, &a, &bias, &w, &bias).unwrap_err();
    assert!(err.to_string().contains("`b`"), "{err}");
}

#[test]
fn cpu_adamw_with_copy_writes_the_rounded_master() {
    let n = 33;
    let hp = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 2 };
    let mut p = Tensor::from_vec(&[n], values(n, 5, -1.0, 1.0)).unwrap();
    let g = Tensor::from_vec(&[n], values(n, 6, -1.0, 1.0)).unwrap();
    let (mut m, mut v) = (Tensor::zeros(Device::Cpu, &[n]), Tensor::zeros(Device::Cpu, &[n]));
    let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
    let mut copy = Tensor::try_zeros(Device::Cpu, DType::Bf16, &[n]).unwrap();
    adamw_update_with_copy(&mut p, &mut copy, &g, &mut m, &mut v, &hp).unwrap();
    adamw_update(&mut p2, &g, &mut m2, &mut v2, &hp).unwrap();
    assert_eq!(p.to_vec(), p2.to_vec(), "same update as adamw_update");
    let want: Vec<f32> = p.to_vec().iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    assert_eq!(copy.to_vec(), want);
}

#[test]
fn cpu_clip_grad_norm_scales_by_the_clip_coefficient() {
    let a0 = Tensor::from_vec(&[3], vec![3.0, 0.0, 0.0]).unwrap();
    let b0 = Tensor::from_vec(&[1], vec![4.0]).unwrap();
    let (mut a, mut b) = (a0.clone(), b0.clone());
    let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0).unwrap();
    assert_eq!(norm, 5.0);
    let s = clip_coefficient(5.0, 1.0);
    assert_eq!(a.to_vec(), [3.0 * s, 0.0, 0.0]);
    assert_eq!(b.to_vec(), [4.0 * s]);
    assert_eq!(a0.to_vec(), [3.0, 0.0, 0.0], "shared originals untouched");
    // under the limit: unchanged
    let norm = clip_grad_norm(&mut [&mut a, &mut b], 10.0).unwrap();
    assert!((norm - 5.0 * s).abs() < 1e-6);
    assert_eq!(b.to_vec(), [4.0 * s]);
}
