//! The multi-tensor launches (kernels/cuda/multi_tensor.cu) against the per-tensor ops they
//! replace and the CPU reference: the global norm (bit-identical to the per-tensor norm),
//! AdamW with the clip factor read on the device (bit-identical to clip + per-tensor AdamW
//! for f32 gradients, close for bf16, and to the CPU for f32), and zeroing. Tensor lengths
//! hit the 16-byte packs, scalar tails and the per-tensor block cap; f32 and bf16 gradients
//! mixed in one table, with and without a bf16 working copy, decayed or not.
//! Without a GPU every test prints `skipped: ...` and passes.

mod common;

use common::{assert_close, gpu_or_skip, random};
use kernels::ops::adamw::{adamw_update, adamw_update_with_copy, AdamWStep};
use kernels::ops::multi_tensor::TensorTable;
use kernels::ops::norm::{self, cuda::clip_grad_norm_device};
use kernels::{DType, Device, Tensor};

/// Lengths: one element, a scalar tail, packs + tail, several blocks, above the 2048-block
/// cap of one tensor (2048 * 4096 elements).
const LENGTHS: [usize; 6] = [1, 7, 1000, 4099, 70_001, 2048 * 4096 + 5];

struct Param {
    value: Tensor,
    copy: Option<Tensor>,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    decays: bool,
}

/// Parameters on `device`: tensor i has LENGTHS[i] elements, a bf16 gradient when i is odd
/// (f32 otherwise; only `with_bf16`), a working copy when i % 3 == 0, decay when i is even.
fn params(device: Device, with_bf16: bool, seed: u64) -> Vec<Param> {
    LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let s = seed + 10 * i as u64;
            let value = random(&[n], s, 1.0).to_device(device).unwrap();
            let grad = random(&[n], s + 1, 0.5);
            let grad = if with_bf16 && i % 2 == 1 { grad.to_dtype(DType::Bf16).unwrap() } else { grad };
            let v_abs: Vec<f32> = random(&[n], s + 3, 0.1).to_vec().iter().map(|x| x.abs()).collect(); // v >= 0
            Param {
                copy: (i % 3 == 0).then(|| value.to_dtype(DType::Bf16).unwrap()),
                grad: grad.to_device(device).unwrap(),
                m: random(&[n], s + 2, 0.1).to_device(device).unwrap(),
                v: Tensor::from_vec(&[n], v_abs).unwrap().to_device(device).unwrap(),
                value,
                decays: i % 2 == 0,
            }
        })
        .collect()
}

fn table(ps: &[Param]) -> TensorTable {
    let mut t = TensorTable::new();
    for p in ps {
        t.push_adamw(&p.value, p.copy.as_ref(), &p.grad, &p.m, &p.v, p.decays).unwrap();
    }
    t
}

fn hp(step: u64) -> AdamWStep {
    AdamWStep { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step }
}

/// The per-tensor path: clip by the device norm, then one AdamW launch per parameter.
fn per_tensor_step(ps: &mut [Param], max_norm: f32, step: u64) -> f32 {
    let norm = {
        let mut grads: Vec<&mut Tensor> = ps.iter_mut().map(|p| &mut p.grad).collect();
        clip_grad_norm_device(&mut grads, max_norm).unwrap()
    };
    for p in ps.iter_mut() {
        let h = AdamWStep { weight_decay: if p.decays { 0.1 } else { 0.0 }, ..hp(step) };
        match &mut p.copy {
            Some(c) => adamw_update_with_copy(&mut p.value, c, &p.grad, &mut p.m, &mut p.v, &h).unwrap(),
            None => adamw_update(&mut p.value, &p.grad, &mut p.m, &mut p.v, &h).unwrap(),
        }
    }
    norm.to_vec()[0]
}

fn multi_step(ps: &[Param], max_norm: f32, step: u64) -> f32 {
    let t = table(ps);
    // SAFETY: every tensor in the table lives in `ps`, untouched until the launches finish
    // (to_vec below waits for the stream).
    let norm = unsafe { t.global_norm() }.unwrap();
    unsafe { t.adamw(&norm, max_norm, &hp(step)) }.unwrap();
    norm.to_vec()[0]
}

fn state(ps: &[Param]) -> Vec<Vec<f32>> {
    ps.iter().flat_map(|p| [p.value.to_vec(), p.m.to_vec(), p.v.to_vec()].into_iter().chain(p.copy.as_ref().map(Tensor::to_vec))).collect()
}

#[test]
fn multi_tensor_norm_is_the_per_tensor_norm() {
    let Some(dev) = gpu_or_skip() else { return };
    let ps = params(dev.device(), true, 1);
    let t = table(&ps);
    // SAFETY: the tensors live in `ps`, unchanged.
    let multi = unsafe { t.global_norm() }.unwrap().to_vec()[0];
    let grads: Vec<&Tensor> = ps.iter().map(|p| &p.grad).collect();
    let per_tensor = norm::global_norm(&grads).unwrap();
    assert_eq!(multi.to_bits(), per_tensor.to_bits(), "multi {multi} vs per-tensor {per_tensor}");
    let host: Vec<Tensor> = ps.iter().map(|p| p.grad.to_dtype(DType::F32).unwrap().to_host().unwrap()).collect();
    let cpu = norm::global_norm(&host.iter().collect::<Vec<_>>()).unwrap();
    assert!(((multi - cpu) / cpu).abs() < 1e-5, "multi {multi} vs CPU {cpu}");
}

#[test]
fn multi_tensor_adamw_matches_clip_then_per_tensor_adamw() {
    let Some(dev) = gpu_or_skip() else { return };
    let device = dev.device();
    // f32 gradients: bit for bit; clipping active (max_norm 1 < norm), off (0), and inactive
    // (max_norm above the norm); two steps each, with fresh gradients for the second (the
    // per-tensor path clips the gradients in place, the multi-tensor one leaves them).
    for max_norm in [1.0f32, 0.0, 1e6] {
        let mut a = params(device, false, 7);
        let mut b = params(device, false, 7);
        for step in 1..=2 {
            if step == 2 {
                for (pa, pb) in a.iter_mut().zip(b.iter_mut()) {
                    pa.grad = random(pa.grad.shape(), 99 + pa.grad.numel() as u64, 0.5).to_device(device).unwrap();
                    pb.grad = pa.grad.to_host().unwrap().to_device(device).unwrap();
                }
            }
            let na = per_tensor_step(&mut a, max_norm, step);
            let nb = multi_step(&b, max_norm, step);
            assert_eq!(na.to_bits(), nb.to_bits(), "max_norm {max_norm} step {step}: norms differ");
        }
        let (sa, sb) = (state(&a), state(&b));
        for (i, (x, y)) in sa.iter().zip(&sb).enumerate() {
            assert!(x == y, "max_norm {max_norm}: array {i} differs from the per-tensor path");
        }
        eprintln!("ok   f32 max_norm {max_norm}: bit-identical to clip + per-tensor AdamW");
    }
    // bf16 gradients: the per-tensor path rounds the clipped gradient to bf16 again; the
    // multi-tensor one scales in fp32, so close, not equal.
    let mut a = params(device, true, 9);
    let b = params(device, true, 9);
    per_tensor_step(&mut a, 1.0, 1);
    multi_step(&b, 1.0, 1);
    for (i, (x, y)) in state(&a).iter().zip(&state(&b)).enumerate() {
        assert_close(&format!("bf16 array {i}"), y, x, 1e-4, 1e-2);
    }
    eprintln!("ok   mixed bf16/f32 gradients: close to the per-tensor path");
}

#[test]
fn multi_tensor_adamw_matches_the_cpu() {
    let Some(dev) = gpu_or_skip() else { return };
    let mut cpu = params(Device::Cpu, false, 11);
    let gpu = params(dev.device(), false, 11);
    let max_norm = 1.0;
    let mut grads: Vec<&mut Tensor> = cpu.iter_mut().map(|p| &mut p.grad).collect();
    let cpu_norm = norm::clip_grad_norm(&mut grads, max_norm).unwrap();
    for p in cpu.iter_mut() {
        let h = AdamWStep { weight_decay: if p.decays { 0.1 } else { 0.0 }, ..hp(1) };
        match &mut p.copy {
            Some(c) => adamw_update_with_copy(&mut p.value, c, &p.grad, &mut p.m, &mut p.v, &h).unwrap(),
            None => adamw_update(&mut p.value, &p.grad, &mut p.m, &mut p.v, &h).unwrap(),
        }
    }
    let gpu_norm = multi_step(&gpu, max_norm, 1);
    assert!(((gpu_norm - cpu_norm) / cpu_norm).abs() < 1e-5, "norm: GPU {gpu_norm} vs CPU {cpu_norm}");
    for (i, (g, c)) in state(&gpu).iter().zip(&state(&cpu)).enumerate() {
        assert_close(&format!("array {i}"), g, c, 1e-6, 1e-5);
    }
}

#[test]
fn multi_tensor_zero_clears_every_gradient() {
    let Some(dev) = gpu_or_skip() else { return };
    let ps = params(dev.device(), true, 13);
    let mut t = TensorTable::new();
    for p in &ps {
        t.push_grad(&p.grad).unwrap();
    }
    assert_eq!(t.len(), LENGTHS.len());
    // SAFETY: the gradients live in `ps`, untouched until to_vec waits for the stream.
    unsafe { t.zero() }.unwrap();
    for (p, n) in ps.iter().zip(LENGTHS) {
        let g = p.grad.to_vec();
        assert_eq!(g.len(), n);
        assert!(g.iter().all(|&x| x.to_bits() == 0), "a gradient of {n} elements was not zeroed");
    }
    // the value tensors were not touched
    assert!(ps[0].value.to_vec().iter().all(|x| x.is_finite()));
}

#[test]
fn multi_tensor_rejects_cpu_tensors_and_mismatches() {
    let mut t = TensorTable::new();
    let err = t.push_grad(&Tensor::zeros(Device::Cpu, &[4])).unwrap_err();
    assert!(err.to_string().contains("run on CUDA"), "{err}");
    let Some(dev) = gpu_or_skip() else { return };
    let d = dev.device();
    let p = Tensor::zeros(Device::Cpu, &[4]).to_device(d).unwrap();
    let short = Tensor::zeros(Device::Cpu, &[3]).to_device(d).unwrap();
    let err = t.push_adamw(&p, None, &short, &p, &p, false).unwrap_err();
    assert!(err.to_string().contains("grad"), "{err}");
    // a table of gradients only cannot run AdamW
    let mut grads = TensorTable::new();
    grads.push_grad(&p).unwrap();
    // SAFETY: `p` lives until the end of the test.
    let norm = unsafe { grads.global_norm() }.unwrap();
    let err = unsafe { grads.adamw(&norm, 0.0, &hp(1)) }.unwrap_err();
    assert!(err.to_string().contains("push_adamw"), "{err}");
}

/// The trainer's guard: a NaN or infinite gradient anywhere skips the whole update (status 1,
/// every parameter, moment and working copy unchanged); an update that overflows (here an
/// absurd learning rate) is applied but flagged (status 2); a normal one reports 0.
#[test]
fn multi_tensor_adamw_guard_skips_nonfinite_gradients_and_flags_nonfinite_updates() {
    use kernels::ops::multi_tensor::{UPDATE_APPLIED, UPDATE_NONFINITE, UPDATE_SKIPPED};
    let Some(dev) = gpu_or_skip() else { return };
    let device = dev.device();
    let small = |seed: u64| -> Vec<Param> {
        [5usize, 1000, 4099]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let s = seed + 10 * i as u64;
                let value = random(&[n], s, 1.0).to_device(device).unwrap();
                let v: Vec<f32> = random(&[n], s + 3, 0.1).to_vec().iter().map(|x| x.abs()).collect();
                Param {
                    copy: (i == 1).then(|| value.to_dtype(DType::Bf16).unwrap()),
                    grad: random(&[n], s + 1, 0.5).to_device(device).unwrap(),
                    m: random(&[n], s + 2, 0.1).to_device(device).unwrap(),
                    v: Tensor::from_vec(&[n], v).unwrap().to_device(device).unwrap(),
                    value,
                    decays: i != 0,
                }
            })
            .collect()
    };
    let status = |ps: &[Param], hp: &AdamWStep| -> f32 {
        let t = table(ps);
        // SAFETY: the tensors live in `ps` until the status is read (which waits for the stream).
        let norm = unsafe { t.global_norm() }.unwrap();
        unsafe { t.adamw(&norm, 1.0, hp) }.unwrap().to_vec()[0]
    };
    for bad in [f32::NAN, f32::INFINITY] {
        let ps = small(3);
        let mut g = ps[2].grad.to_vec();
        g[4000] = bad;
        let ps: Vec<Param> = ps.into_iter().enumerate().map(|(i, mut p)| {
            if i == 2 {
                p.grad = Tensor::from_vec(&[g.len()], g.clone()).unwrap().to_device(device).unwrap();
            }
            p
        }).collect();
        let before = state(&ps);
        assert_eq!(status(&ps, &hp(1)), UPDATE_SKIPPED, "a {bad} gradient");
        assert_eq!(state(&ps), before, "a skipped update changed nothing");
    }
    let ps = small(4);
    let before = state(&ps);
    assert_eq!(status(&ps, &hp(1)), UPDATE_APPLIED);
    assert_ne!(state(&ps), before, "a normal update is applied");
    let ps = small(5);
    assert_eq!(status(&ps, &AdamWStep { lr: 3e38, ..hp(1) }), UPDATE_NONFINITE, "an overflowing update is flagged");
}
