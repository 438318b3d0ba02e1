//! Matmul on the GPU against the CPU reference (BRIEF §5): forward (with bias, without,
//! with the fused GeLU epilogue), backward (dinp overwritten, dweight and dbias accumulated
//! onto random initial values), both weight layouts, f32 and bf16 (bf16 operands with bf16
//! or f32 parameter gradients). Shapes: every GPT-2 124M matmul at B=4, T=1024 (c_attn,
//! attn c_proj, c_fc, mlp c_proj), the tied classifier (wte [Vp=50304, C]) at 512 rows, and
//! odd sizes that hit partial tiles, the cp.async path with ragged edges (K, N multiples of
//! 8) and the element-wise loader (K, N not multiples of 8). Outputs are poisoned (NaN)
//! before each launch. Tolerances: f32 <= 1e-5 relative in norm and elementwise
//! (1e-5 * max|ref| + 1e-5 |ref|); bf16 <= 1e-2 relative in norm; the bf16 reference runs
//! on the bf16-rounded inputs, so only the kernels' own rounding is measured.
//! Without a GPU every test prints `skipped: ...` and passes.

mod common;

use common::{assert_close, assert_rel_norm, gpu_or_skip, poison};
use half::bf16;
use kernels::ops::gelu::gelu_forward;
use kernels::ops::matmul::{matmul_backward, matmul_forward, matmul_gelu_forward, WeightLayout};
use kernels::{DType, Device, Tensor};

// ---------------------------------------------------------------------------------------------
// helpers

/// `data` as the GPU sees it: (GPU tensor of `dtype`, CPU f32 tensor of exactly the values
/// the GPU holds, i.e. rounded to bf16 for bf16).
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

/// The criterion for results computed from `dtype` operands.
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
    eprintln!("ok   {name}");
}

struct Case {
    name: &'static str,
    rows: (usize, usize), // (B, T): inp is (B, T, IC)
    ic: usize,
    oc: usize,
    layout: WeightLayout,
    bias: bool,
}

/// Forward and backward of one case on `device` in `dtype` (parameter gradients in
/// `grad_dtype`) against the CPU reference.
fn run_case(device: Device, case: &Case, dtype: DType, grad_dtype: DType, seed: u64) {
    let Case { name, rows: (b, t), ic, oc, layout, bias } = *case;
    let tag = format!("{name} {dtype:?} (grads {grad_dtype:?}) B={b} T={t} IC={ic} OC={oc} {layout:?}");
    let w_shape = match layout {
        WeightLayout::InOut => [ic, oc],
        WeightLayout::OutIn => [oc, ic],
    };
    let (inp, inp_ref) = random_pair(device, &[b, t, ic], seed, 1.0, dtype);
    let (weight, weight_ref) = random_pair(device, &w_shape, seed + 1, 0.1, dtype);
    let (bias_t, bias_ref) = random_pair(device, &[oc], seed + 2, 0.5, dtype);
    let (bias_t, bias_ref) = if bias { (Some(bias_t), Some(bias_ref)) } else { (None, None) };

    // forward
    let mut out = poisoned(device, dtype, &[b, t, oc]);
    matmul_forward(&mut out, &inp, &weight, bias_t.as_ref(), layout).unwrap();
    let mut out_ref = Tensor::zeros(Device::Cpu, &[b, t, oc]);
    matmul_forward(&mut out_ref, &inp_ref, &weight_ref, bias_ref.as_ref(), layout).unwrap();
    check(&format!("{tag}: out"), dtype, &out, &out_ref);

    // backward: dinp overwritten (poisoned first), dweight/dbias accumulate onto random values
    let (dout, dout_ref) = random_pair(device, &[b, t, oc], seed + 3, 1.0, dtype);
    let mut dinp = poisoned(device, dtype, &[b, t, ic]);
    let (mut dweight, dweight0) = random_pair(device, &w_shape, seed + 4, 0.5, grad_dtype);
    let (mut dbias, dbias0) = random_pair(device, &[oc], seed + 5, 0.5, grad_dtype);
    matmul_backward(&mut dinp, &mut dweight, if bias { Some(&mut dbias) } else { None }, &dout, &inp, &weight, layout).unwrap();
    let mut dinp_ref = Tensor::zeros(Device::Cpu, &[b, t, ic]);
    let (mut dweight_ref, mut dbias_ref) = (dweight0.clone(), dbias0.clone());
    matmul_backward(&mut dinp_ref, &mut dweight_ref, if bias { Some(&mut dbias_ref) } else { None }, &dout_ref, &inp_ref, &weight_ref, layout)
        .unwrap();
    check(&format!("{tag}: dinp"), dtype, &dinp, &dinp_ref);
    // bf16 gradients are rounded when stored; f32 gradients from bf16 operands are as exact as
    // the f32 accumulation, but the products came from bf16 operands: judge by `dtype`.
    let grad_crit = if grad_dtype == DType::Bf16 { DType::Bf16 } else { dtype };
    check(&format!("{tag}: dweight"), grad_crit, &dweight, &dweight_ref);
    if bias {
        check(&format!("{tag}: dbias"), grad_crit, &dbias, &dbias_ref);
    } else {
        assert_eq!(dbias.to_vec(), dbias0.to_vec(), "{tag}: dbias touched without a bias");
    }
}

fn run_all(cases: &[Case], seed: u64) {
    let Some(dev) = gpu_or_skip() else { return };
    let device = dev.device();
    for (i, case) in cases.iter().enumerate() {
        let s = seed + 100 * i as u64;
        run_case(device, case, DType::F32, DType::F32, s);
        run_case(device, case, DType::Bf16, DType::Bf16, s + 10);
        run_case(device, case, DType::Bf16, DType::F32, s + 20);
    }
}

const fn case(name: &'static str, rows: (usize, usize), ic: usize, oc: usize, layout: WeightLayout, bias: bool) -> Case {
    Case { name, rows, ic, oc, layout, bias }
}

// ---------------------------------------------------------------------------------------------
// tests

#[test]
fn matmul_odd_sizes_match_cpu() {
    use WeightLayout::*;
    run_all(
        &[
            // M=37, K=40, N=72: multiples of 8 in K and N, one partial tile in every direction
            case("odd", (1, 37), 40, 72, InOut, true),
            case("odd", (1, 37), 40, 72, OutIn, true),
            // K, N not multiples of 8: the element-wise loader
            case("ragged", (1, 37), 37, 50, InOut, true),
            case("ragged", (3, 11), 50, 37, OutIn, false),
            // one row; K below one k-step
            case("one row", (1, 1), 8, 24, InOut, true),
            case("short k", (2, 5), 3, 5, OutIn, true),
            // several tiles with ragged edges on the cp.async path (M=130, K=136, N=200)
            case("multi-tile", (2, 65), 136, 200, InOut, true),
            case("multi-tile", (2, 65), 136, 200, OutIn, false),
        ],
        1000,
    );
}

#[test]
fn matmul_split_k_weight_gradients_match_cpu() {
    use kernels::ops::matmul::gpu::split_k;
    use WeightLayout::*;
    // The weight gradient's K is the row count: few output tiles and a long K split it (bf16),
    // and the bias gradient sums over several row chunks of 256.
    assert_eq!(split_k(64, 96, 4096), (4, 1024));
    assert_eq!(split_k(40, 72, 3000), (2, 1504));
    assert_eq!(split_k(37, 50, 2500), (2, 1280));
    assert_eq!(split_k(768, 2304, 16384), (3, 5472)); // GPT-2 c_attn at B*T = 16384
    assert_eq!(split_k(50304, 768, 16384).0, 1); // enough tiles already
    run_all(
        &[
            case("split-k", (1, 4096), 64, 96, InOut, true),
            // a shorter last split, the other layout
            case("split-k ragged", (3, 1000), 72, 40, OutIn, true),
            // leading dimensions not multiples of 8: the element-wise loader, split
            case("split-k element-wise", (1, 2500), 37, 50, InOut, true),
        ],
        1500,
    );
}

#[test]
fn matmul_gpt2_124m_shapes_match_cpu() {
    use WeightLayout::*;
    if common::gpu_or_skip().is_some_and(|dev| common::skip_full_size(&dev, "matmul at GPT-2 124M shapes")) {
        return;
    }
    run_all(
        &[
            case("c_attn", (4, 1024), 768, 3 * 768, InOut, true),
            case("attn.c_proj", (4, 1024), 768, 768, InOut, true),
            case("mlp.c_fc", (4, 1024), 768, 4 * 768, InOut, true),
            case("mlp.c_proj", (4, 1024), 4 * 768, 768, InOut, true),
        ],
        2000,
    );
}

#[test]
fn matmul_tied_classifier_matches_cpu() {
    if common::gpu_or_skip().is_some_and(|dev| common::skip_full_size(&dev, "the tied classifier matmul (512 x 768 x 50304)")) {
        return;
    }
    // logits (B*T, Vp) = x (B*T, C) @ wte^T, wte [Vp, C] = WeightLayout::OutIn, no bias
    run_all(&[case("classifier", (4, 128), 768, 50304, WeightLayout::OutIn, false)], 3000);
}

#[test]
fn matmul_fused_gelu_matches_matmul_then_gelu() {
    let Some(dev) = gpu_or_skip() else { return };
    let device = dev.device();
    for (dtype, (b, t, ic, oc)) in [(DType::F32, (1, 37, 40, 72)), (DType::Bf16, (1, 37, 40, 72)), (DType::F32, (2, 50, 37, 45)), (DType::Bf16, (4, 1024, 768, 3072)), (DType::F32, (4, 256, 768, 3072))] {
        let tag = format!("fused GeLU {dtype:?} B={b} T={t} IC={ic} OC={oc}");
        if ic == 768 && common::skip_full_size(&dev, &tag) {
            continue;
        }
        let (inp, inp_ref) = random_pair(device, &[b, t, ic], 7, 1.0, dtype);
        let (weight, weight_ref) = random_pair(device, &[ic, oc], 8, 0.1, dtype);
        let (bias, bias_ref) = random_pair(device, &[oc], 9, 0.5, dtype);
        let mut pre_ref = Tensor::zeros(Device::Cpu, &[b, t, oc]);
        matmul_forward(&mut pre_ref, &inp_ref, &weight_ref, Some(&bias_ref), WeightLayout::InOut).unwrap();
        let mut out_ref = Tensor::zeros(Device::Cpu, &[b, t, oc]);
        gelu_forward(&mut out_ref, &pre_ref).unwrap();

        let mut out = poisoned(device, dtype, &[b, t, oc]);
        let mut pre = poisoned(device, dtype, &[b, t, oc]);
        matmul_gelu_forward(&mut out, Some(&mut pre), &inp, &weight, Some(&bias), WeightLayout::InOut).unwrap();
        check(&format!("{tag}: out"), dtype, &out, &out_ref);
        check(&format!("{tag}: pre"), dtype, &pre, &pre_ref);

        let mut out2 = poisoned(device, dtype, &[b, t, oc]);
        matmul_gelu_forward(&mut out2, None, &inp, &weight, Some(&bias), WeightLayout::InOut).unwrap();
        assert_eq!(out.to_vec(), out2.to_vec(), "{tag}: writing pre changed out");
    }
}

#[test]
fn matmul_backward_is_deterministic() {
    let Some(dev) = gpu_or_skip() else { return };
    let device = dev.device();
    // a split-K shape (4 splits, 16 bias chunks) everywhere; GPT-2's attn.c_proj where the
    // device is fast enough
    let mut shapes = vec![(1, 4096, 64, 96)];
    if !common::skip_full_size(&dev, "matmul backward determinism at B=4 T=1024 C=768") {
        shapes.push((4, 1024, 768, 768));
    }
    for (dtype, (b, t, ic, oc)) in [DType::F32, DType::Bf16].into_iter().flat_map(|d| shapes.iter().map(move |&s| (d, s))) {
        let (inp, _) = random_pair(device, &[b, t, ic], 11, 1.0, dtype);
        let (weight, _) = random_pair(device, &[ic, oc], 12, 0.1, dtype);
        let (dout, _) = random_pair(device, &[b, t, oc], 13, 1.0, dtype);
        let run = || {
            let mut dinp = poisoned(device, dtype, &[b, t, ic]);
            let mut dweight = Tensor::try_zeros(device, DType::F32, &[ic, oc]).unwrap();
            let mut dbias = Tensor::try_zeros(device, DType::F32, &[oc]).unwrap();
            matmul_backward(&mut dinp, &mut dweight, Some(&mut dbias), &dout, &inp, &weight, WeightLayout::InOut).unwrap();
            (dinp.to_vec(), dweight.to_vec(), dbias.to_vec())
        };
        let (first, second) = (run(), run());
        assert!(first == second, "{dtype:?} B={b} T={t} IC={ic} OC={oc}: two identical backward passes differ");
    }
}

#[test]
fn matmul_rejects_mixed_dtypes_on_gpu() {
    let Some(dev) = gpu_or_skip() else { return };
    let device = dev.device();
    let (inp, _) = random_pair(device, &[4, 16], 1, 1.0, DType::Bf16);
    let (weight, _) = random_pair(device, &[16, 8], 2, 1.0, DType::F32);
    let mut out = poisoned(device, DType::Bf16, &[4, 8]);
    let err = matmul_forward(&mut out, &inp, &weight, None, WeightLayout::InOut).unwrap_err();
    assert!(err.to_string().contains("weight"), "unexpected error: {err}");
}
