//! fill and cast on every available device (the CPU always; the GPU when present, checked
//! against the CPU), plus the tensor plumbing the GPU tests rely on: host <-> device
//! copies, zeros, copy-on-write of shared GPU storage.

mod common;

use common::{assert_close, devices, gpu_or_skip, poison, random};
use half::bf16;
use kernels::ops::{cast::cast, fill::fill};
use kernels::{DType, Device, Tensor};

/// Sizes around the block size and one past a multiple of the grid cap.
const SIZES: [usize; 5] = [1, 255, 257, 4099, (1 << 20) + 3];

#[test]
fn fill_sets_every_element() {
    for device in devices() {
        for dtype in [DType::F32, DType::Bf16] {
            for n in SIZES {
                let mut t = Tensor::try_zeros(device, dtype, &[n]).unwrap();
                fill(&mut t, 1.25).unwrap();
                let v = t.to_vec();
                assert!(v.iter().all(|&x| x == 1.25), "fill {device} {dtype} n={n}: {:?}", first_not(&v, 1.25));
                poison(&mut t);
                assert!(t.to_vec().iter().all(|x| x.is_nan()), "poison {device} {dtype} n={n}");
            }
        }
    }
}

fn first_not(v: &[f32], want: f32) -> Option<(usize, f32)> {
    v.iter().copied().enumerate().find(|&(_, x)| x != want)
}

/// Values whose bf16 rounding is known: ties go to even, overflow to inf, NaN stays NaN.
fn rounding_cases() -> (Vec<f32>, Vec<f32>) {
    let ulp = 2f32.powi(-8); // half of bf16's ulp at 1.0
    let cases = [
        (1.0 + ulp, 1.0),                        // tie, rounds down to even
        (1.0 + 3.0 * ulp, 1.0 + 4.0 * ulp),      // tie, rounds up to even
        (1.0 + 1.5 * ulp, 1.0 + 2.0 * ulp),      // above the tie
        (-(1.0 + 3.0 * ulp), -(1.0 + 4.0 * ulp)),
        (f32::MAX, f32::INFINITY),
        (f32::INFINITY, f32::INFINITY),
        (-0.0, -0.0),
        (1e-40, bf16::from_f32(1e-40).to_f32()), // subnormals kept (no flush to zero), as the CPU reference
    ];
    (cases.iter().map(|c| c.0).collect(), cases.iter().map(|c| c.1).collect())
}

#[test]
fn cast_f32_to_bf16_rounds_to_nearest_even() {
    let (inp, want) = rounding_cases();
    for device in devices() {
        let x = Tensor::from_vec(&[inp.len()], inp.clone()).unwrap().to_device(device).unwrap();
        let mut y = Tensor::try_zeros(device, DType::Bf16, x.shape()).unwrap();
        poison(&mut y);
        cast(&mut y, &x).unwrap();
        let got = y.to_vec();
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits(), "{device}: cast({:e}) = {g:e}, want {w:e} (case {i})", inp[i]);
        }
        let x = Tensor::from_vec(&[1], vec![f32::NAN]).unwrap().to_device(device).unwrap();
        assert!(x.to_dtype(DType::Bf16).unwrap().to_vec()[0].is_nan(), "{device}: NaN must stay NaN");
    }
}

/// GPU against CPU at a real size: f32 -> bf16 bit-exact, bf16 -> f32 exact.
#[test]
fn gpu_cast_matches_cpu() {
    let Some(dev) = gpu_or_skip() else { return };
    let n = 768 * 3072 + 5;
    let x = random(&[n], 1, 4.0);
    let want_bf16 = x.to_dtype(DType::Bf16).unwrap();

    let xg = x.to_device(dev.device()).unwrap();
    let mut yg = Tensor::try_zeros(dev.device(), DType::Bf16, &[n]).unwrap();
    poison(&mut yg);
    cast(&mut yg, &xg).unwrap();
    let got = yg.to_host().unwrap();
    assert_eq!(got.dtype(), DType::Bf16);
    let mismatches = got.bf16().unwrap().iter().zip(want_bf16.bf16().unwrap()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(mismatches, 0, "f32 -> bf16 must be bit-identical to the CPU's round-to-nearest-even");

    let mut back = Tensor::try_zeros(dev.device(), DType::F32, &[n]).unwrap();
    poison(&mut back);
    cast(&mut back, &yg).unwrap();
    assert_close("cast_bf16_f32", &back.to_vec(), &want_bf16.to_vec(), 0.0, 0.0);
    // And the round trip is within bf16's half-ulp of the original.
    assert_close("f32 -> bf16 -> f32", &back.to_vec(), &x.to_vec(), 0.0, 2f32.powi(-8));
}

#[test]
fn gpu_tensors_round_trip_and_copy_on_write() {
    let Some(dev) = gpu_or_skip() else { return };
    let x = random(&[3, 5, 7], 2, 1.0);
    let g = x.to_device(dev.device()).unwrap();
    assert_eq!((g.device(), g.dtype(), g.shape()), (Device::Cuda(0), DType::F32, &[3, 5, 7][..]));
    assert_eq!(g.to_vec(), x.to_vec());
    let tokens = Tensor::from_u32(&[4], vec![0, 1, 50256, u32::MAX]).unwrap().to_device(dev.device()).unwrap();
    assert_eq!(tokens.to_host().unwrap().u32().unwrap(), [0, 1, 50256, u32::MAX]);

    // A clone shares storage until written; the write copies first.
    let mut h = g.clone();
    fill(&mut h, 7.0).unwrap();
    assert_eq!(g.to_vec(), x.to_vec(), "writing a clone must not change the original");
    assert!(h.to_vec().iter().all(|&v| v == 7.0));

    let mut z = g.clone();
    z.fill_zero().unwrap();
    assert!(z.to_vec().iter().all(|&v| v == 0.0));
    assert_eq!(Tensor::zeros(dev.device(), &[9]).to_vec(), [0.0; 9]);
    assert!(g.f32().is_err(), "a GPU tensor has no host view");
}

#[test]
fn gpu_launch_errors_are_errors() {
    let Some(dev) = gpu_or_skip() else { return };
    let msg = dev.function("fill", "fill_nonexistent").unwrap_err().to_string();
    assert!(msg.contains("fill_nonexistent") && msg.contains("kernels/cuda/fill.cu"), "{msg}");
    let msg = dev.function("no_such_file", "k").unwrap_err().to_string();
    assert!(msg.contains("no kernel file kernels/cuda/no_such_file.cu"), "{msg}");
    let mut u = Tensor::try_zeros(dev.device(), DType::U32, &[4]).unwrap();
    assert!(fill(&mut u, 1.0).is_err(), "fill has no u32 kernel and must say so, not launch");
}

// ---- the comparison helpers themselves ----

#[test]
fn assert_close_accepts_within_tolerance() {
    assert_close("ok", &[1.0, 2.0 + 1e-6, -3.0], &[1.0, 2.0, -3.0], 0.0, 1e-5);
}

#[test]
#[should_panic(expected = "worst at [1]: gpu NaN vs ref 2")]
fn assert_close_catches_unwritten_elements() {
    assert_close("poisoned", &[1.0, f32::NAN, 3.0], &[1.0, 2.0, 3.0], 1e-3, 1e-3);
}

#[test]
#[should_panic(expected = "2 of 3 elements outside")]
fn assert_close_reports_the_worst_element() {
    assert_close("off", &[1.1, 2.0, 3.5], &[1.0, 2.0, 3.0], 0.0, 1e-2);
}

#[test]
#[should_panic(expected = "relative error")]
fn assert_rel_norm_catches_a_wrong_result() {
    common::assert_rel_norm("off", &[1.0, 2.0, 4.0], &[1.0, 2.0, 3.0], 1e-2);
}

#[test]
fn read_scalars_gathers_in_order_on_every_device() {
    // CPU only, then mixed with GPU scalars where a GPU is there
    let mut scalars: Vec<Tensor> = (0..5).map(|i| Tensor::from_vec(&[1], vec![i as f32 + 0.5]).unwrap()).collect();
    if let Some(dev) = gpu_or_skip() {
        for i in [1, 3, 4] {
            scalars[i] = scalars[i].to_device(dev.device()).unwrap();
        }
    }
    let refs: Vec<&Tensor> = scalars.iter().collect();
    assert_eq!(Tensor::read_scalars(&refs).unwrap(), vec![0.5, 1.5, 2.5, 3.5, 4.5]);
    assert_eq!(Tensor::read_scalars(&[]).unwrap(), Vec::<f32>::new());
    let two = Tensor::from_vec(&[2], vec![1.0, 2.0]).unwrap();
    let err = Tensor::read_scalars(&[&two]).unwrap_err();
    assert!(err.to_string().contains("scalar"), "{err}");
}
