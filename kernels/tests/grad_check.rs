//! Every CPU op's backward against central finite differences of its forward, on fresh
//! random inputs. The scalar probed is L = sum(out * R) for a random R (accumulated in f64),
//! so dout = R and the analytic gradient of each input must match dL/dinput.

use kernels::ops::adamw::{adamw_update, AdamWStep};
use kernels::ops::attention::{attention_backward, attention_forward};
use kernels::ops::crossentropy::crossentropy_forward;
use kernels::ops::embedding::{embedding_backward, embedding_forward};
use kernels::ops::gelu::{gelu_backward, gelu_forward};
use kernels::ops::kv_expand::{kv_expand_backward, kv_expand_forward};
use kernels::ops::layernorm::{layernorm_backward, layernorm_forward};
use kernels::ops::matmul::{matmul_backward, matmul_forward, WeightLayout};
use kernels::ops::norm::{clip_coefficient, global_norm};
use kernels::ops::residual::{accumulate, residual_forward};
use kernels::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use kernels::ops::rope::{rope_backward, rope_forward, Rope};
use kernels::ops::swiglu::{swiglu_backward, swiglu_forward};
use kernels::{Device, Tensor};

const CPU: Device = Device::Cpu;

fn randn(rng: &mut fastrand::Rng, shape: &[usize], std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            // Box-Muller
            let u1 = rng.f32().max(1e-7);
            let u2 = rng.f32();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    Tensor::from_vec(shape, data).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Compares `analytic` with central differences of `loss` around `x`, on up to `max_checks`
/// elements spread over the tensor. Passes when |num - ana| <= atol + rtol * |ana| with
/// atol scaled to the gradient's largest element; reports the worst element.
fn check_grad(what: &str, x: &Tensor, analytic: &Tensor, loss: impl Fn(&Tensor) -> f64) {
    let ana = analytic.to_vec();
    assert!(ana.iter().any(|&g| g != 0.0), "{what}: analytic gradient is all zeros");
    let scale = ana.iter().fold(0.0f32, |m, &g| m.max(g.abs())) as f64;
    let n = x.numel();
    let max_checks = 300;
    let stride = (n / max_checks).max(1);
    let h = 1e-2f32;
    let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f64);
    for i in (0..n).step_by(stride) {
        let mut xp = x.clone();
        xp.f32_mut().unwrap()[i] += h;
        let lp = loss(&xp);
        let mut xm = x.clone();
        xm.f32_mut().unwrap()[i] -= h;
        let lm = loss(&xm);
        let num = (lp - lm) / (2.0 * h as f64);
        let a = ana[i] as f64;
        let excess = (num - a).abs() / (2e-3 * scale + 1e-2 * a.abs());
        if excess > worst.0 {
            worst = (excess, i, num, a);
        }
    }
    assert!(
        worst.0 <= 1.0,
        "{what}: worst element {} numeric {} analytic {} (scale {scale})",
        worst.1,
        worst.2,
        worst.3
    );
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let mut rng = fastrand::Rng::with_seed(1);
    let (b, t, c, v, max_t) = (3, 7, 16, 11, 9);
    let tokens = Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..v as u32)).collect()).unwrap();
    let wte = randn(&mut rng, &[v, c], 1.0);
    let wpe = randn(&mut rng, &[max_t, c], 1.0);
    let r = randn(&mut rng, &[b, t, c], 1.0);
    let fwd = |wte: &Tensor, wpe: &Tensor| {
        let mut out = Tensor::zeros(CPU, &[b, t, c]);
        embedding_forward(&mut out, &tokens, wte, Some(wpe)).unwrap();
        dot(out.f32().unwrap(), r.f32().unwrap())
    };
    let mut dwte = Tensor::zeros(CPU, &[v, c]);
    let mut dwpe = Tensor::zeros(CPU, &[max_t, c]);
    embedding_backward(&mut dwte, Some(&mut dwpe), &r, &tokens).unwrap();
    check_grad("embedding dwte", &wte, &dwte, |x| fwd(x, &wpe));
    check_grad("embedding dwpe", &wpe, &dwpe, |x| fwd(&wte, x));
}

#[test]
fn embedding_rejects_token_outside_vocab() {
    let tokens = Tensor::from_u32(&[1, 2], vec![0, 5]).unwrap();
    let (wte, wpe) = (Tensor::zeros(CPU, &[5, 4]), Tensor::zeros(CPU, &[2, 4]));
    let mut out = Tensor::zeros(CPU, &[1, 2, 4]);
    let err = embedding_forward(&mut out, &tokens, &wte, Some(&wpe)).unwrap_err().to_string();
    assert!(err.contains("token id 5 is outside the vocabulary (size 5)"), "{err}");
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let mut rng = fastrand::Rng::with_seed(2);
    let (n, c) = (37, 24);
    let inp = randn(&mut rng, &[n, c], 2.0);
    let w = randn(&mut rng, &[c], 1.0);
    let bias = randn(&mut rng, &[c], 1.0);
    let r = randn(&mut rng, &[n, c], 1.0);
    let fwd = |inp: &Tensor, w: &Tensor, bias: &Tensor| {
        let (mut out, mut mean, mut rstd) = (Tensor::zeros(CPU, &[n, c]), Tensor::zeros(CPU, &[n]), Tensor::zeros(CPU, &[n]));
        layernorm_forward(&mut out, &mut mean, &mut rstd, inp, w, bias).unwrap();
        (dot(out.f32().unwrap(), r.f32().unwrap()), mean, rstd)
    };
    let (_, mean, rstd) = fwd(&inp, &w, &bias);
    let mut dinp = Tensor::zeros(CPU, &[n, c]);
    let mut dw = Tensor::zeros(CPU, &[c]);
    let mut db = Tensor::zeros(CPU, &[c]);
    layernorm_backward(&mut dinp, &mut dw, &mut db, &r, &inp, &w, &mean, &rstd).unwrap();
    check_grad("layernorm dinp", &inp, &dinp, |x| fwd(x, &w, &bias).0);
    check_grad("layernorm dweight", &w, &dw, |x| fwd(&inp, x, &bias).0);
    check_grad("layernorm dbias", &bias, &db, |x| fwd(&inp, &w, x).0);
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let mut rng = fastrand::Rng::with_seed(21);
    let (n, c) = (37, 24);
    // an offset, so the rows' mean square is not ~ their variance
    let mut inp = randn(&mut rng, &[n, c], 2.0);
    inp.f32_mut().unwrap().iter_mut().for_each(|x| *x += 0.5);
    let w = randn(&mut rng, &[c], 1.0);
    let r = randn(&mut rng, &[n, c], 1.0);
    let eps = 1e-5;
    let fwd = |inp: &Tensor, w: &Tensor| {
        let (mut out, mut rstd) = (Tensor::zeros(CPU, &[n, c]), Tensor::zeros(CPU, &[n]));
        rmsnorm_forward(&mut out, &mut rstd, inp, w, eps).unwrap();
        (dot(out.f32().unwrap(), r.f32().unwrap()), rstd)
    };
    let (_, rstd) = fwd(&inp, &w);
    let mut dinp = Tensor::zeros(CPU, &[n, c]);
    let mut dw = Tensor::zeros(CPU, &[c]);
    rmsnorm_backward(&mut dinp, &mut dw, &r, &inp, &w, &rstd).unwrap();
    check_grad("rmsnorm dinp", &inp, &dinp, |x| fwd(x, &w).0);
    check_grad("rmsnorm dweight", &w, &dw, |x| fwd(&inp, x).0);
    let err = rmsnorm_forward(&mut Tensor::zeros(CPU, &[n, c]), &mut Tensor::zeros(CPU, &[n]), &inp, &w, 0.0).unwrap_err();
    assert!(err.to_string().contains("eps must be a positive finite number"), "{err}");
}

fn matmul_case(layout: WeightLayout) {
    let mut rng = fastrand::Rng::with_seed(3);
    let (b, t, ic, oc) = (2, 5, 19, 13);
    let inp = randn(&mut rng, &[b, t, ic], 1.0);
    let wshape = match layout {
        WeightLayout::InOut => [ic, oc],
        WeightLayout::OutIn => [oc, ic],
    };
    let w = randn(&mut rng, &wshape, 1.0);
    let bias = randn(&mut rng, &[oc], 1.0);
    let r = randn(&mut rng, &[b, t, oc], 1.0);
    let fwd = |inp: &Tensor, w: &Tensor, bias: &Tensor| {
        let mut out = Tensor::zeros(CPU, &[b, t, oc]);
        matmul_forward(&mut out, inp, w, Some(bias), layout).unwrap();
        dot(out.f32().unwrap(), r.f32().unwrap())
    };
    let mut dinp = Tensor::zeros(CPU, &[b, t, ic]);
    let mut dw = Tensor::zeros(CPU, &wshape);
    let mut db = Tensor::zeros(CPU, &[oc]);
    matmul_backward(&mut dinp, &mut dw, Some(&mut db), &r, &inp, &w, layout).unwrap();
    check_grad("matmul dinp", &inp, &dinp, |x| fwd(x, &w, &bias));
    check_grad("matmul dweight", &w, &dw, |x| fwd(&inp, x, &bias));
    check_grad("matmul dbias", &bias, &db, |x| fwd(&inp, &w, x));
}

#[test]
fn matmul_backward_matches_finite_differences_in_out_layout() {
    matmul_case(WeightLayout::InOut);
}

#[test]
fn matmul_backward_matches_finite_differences_out_in_layout() {
    matmul_case(WeightLayout::OutIn);
}

#[test]
fn matmul_forward_matches_naive_product() {
    let mut rng = fastrand::Rng::with_seed(4);
    let (n, ic, oc) = (33, 70, 45);
    let inp = randn(&mut rng, &[n, ic], 1.0);
    let w = randn(&mut rng, &[ic, oc], 1.0);
    let bias = randn(&mut rng, &[oc], 1.0);
    let mut out = Tensor::zeros(CPU, &[n, oc]);
    matmul_forward(&mut out, &inp, &w, Some(&bias), WeightLayout::InOut).unwrap();
    let (x, wv, bv, o) = (inp.f32().unwrap(), w.f32().unwrap(), bias.f32().unwrap(), out.f32().unwrap());
    for i in 0..n {
        for j in 0..oc {
            let want: f64 = bv[j] as f64 + (0..ic).map(|k| x[i * ic + k] as f64 * wv[k * oc + j] as f64).sum::<f64>();
            assert!((o[i * oc + j] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "({i},{j}): {} vs {want}", o[i * oc + j]);
        }
    }
}

/// NaN everywhere: an op that leaves any element of its output unwritten fails the check.
fn poisoned(shape: &[usize]) -> Tensor {
    Tensor::from_vec(shape, vec![f32::NAN; shape.iter().product()]).unwrap()
}

#[test]
fn attention_backward_matches_finite_differences() {
    // T = 6 fits one causal row block; T = 77 spans three, the last one partial.
    for (seed, (b, t, nh, hs)) in [(2, 6, 3, 4), (1, 77, 2, 8)].into_iter().enumerate() {
        let mut rng = fastrand::Rng::with_seed(5 + seed as u64);
        let c = nh * hs;
        let qkv = randn(&mut rng, &[b, t, 3 * c], 1.0);
        let r = randn(&mut rng, &[b, t, c], 1.0);
        let fwd = |qkv: &Tensor| {
            let mut out = poisoned(&[b, t, c]);
            let mut att = poisoned(&[b, nh, t, t]);
            attention_forward(&mut out, &mut att, qkv, nh).unwrap();
            (dot(out.f32().unwrap(), r.f32().unwrap()), att, out)
        };
        let (loss, att, out) = fwd(&qkv);
        assert!(loss.is_finite(), "T={t}: attention output has unwritten (NaN) elements");
        // causality: a probability above the diagonal would let a position see the future
        let p = att.f32().unwrap();
        for bh in 0..b * nh {
            for i in 0..t {
                let row = &p[(bh * t + i) * t..][..t];
                assert!(row[i + 1..].iter().all(|&x| x == 0.0), "T={t}: row {i} sees the future");
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        let mut dqkv = poisoned(&[b, t, 3 * c]);
        attention_backward(&mut dqkv, &r, &qkv, &out, &att, nh).unwrap();
        assert!(dqkv.f32().unwrap().iter().all(|x| x.is_finite()), "T={t}: dqkv has unwritten (NaN) elements");
        check_grad(&format!("attention dqkv (T={t})"), &qkv, &dqkv, |x| fwd(x).0);
    }
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let mut rng = fastrand::Rng::with_seed(6);
    let inp = randn(&mut rng, &[5000], 2.0);
    let r = randn(&mut rng, &[5000], 1.0);
    let fwd = |x: &Tensor| {
        let mut out = Tensor::zeros(CPU, &[5000]);
        gelu_forward(&mut out, x).unwrap();
        dot(out.f32().unwrap(), r.f32().unwrap())
    };
    let mut dinp = Tensor::zeros(CPU, &[5000]);
    gelu_backward(&mut dinp, &inp, &r).unwrap();
    check_grad("gelu dinp", &inp, &dinp, fwd);
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let mut rng = fastrand::Rng::with_seed(22);
    let (n, h) = (50, 40);
    let inp = randn(&mut rng, &[n, 2 * h], 2.0);
    let r = randn(&mut rng, &[n, h], 1.0);
    let fwd = |x: &Tensor| {
        let mut out = Tensor::zeros(CPU, &[n, h]);
        swiglu_forward(&mut out, x).unwrap();
        dot(out.f32().unwrap(), r.f32().unwrap())
    };
    let mut dinp = Tensor::zeros(CPU, &[n, 2 * h]);
    swiglu_backward(&mut dinp, &r, &inp).unwrap();
    check_grad("swiglu dinp", &inp, &dinp, fwd);
    let err = swiglu_forward(&mut Tensor::zeros(CPU, &[n, h]), &Tensor::zeros(CPU, &[n, 7])).unwrap_err();
    assert!(err.to_string().contains("must be 2H"), "{err}");
}

#[test]
fn rope_backward_matches_finite_differences_and_keeps_the_norm() {
    let mut rng = fastrand::Rng::with_seed(23);
    // (B, T, W): 2 rotated heads of 8 and 8 copied columns, T = 9 positions
    let (b, t, w) = (2, 9, 24);
    let rope = Rope { heads: 2, head_size: 8, theta: 10000.0 };
    let inp = randn(&mut rng, &[b, t, w], 1.0);
    let r = randn(&mut rng, &[b, t, w], 1.0);
    let fwd = |x: &Tensor| {
        let mut out = Tensor::zeros(CPU, &[b, t, w]);
        rope_forward(&mut out, x, &rope).unwrap();
        out
    };
    let out = fwd(&inp);
    let mut dinp = Tensor::zeros(CPU, &[b, t, w]);
    rope_backward(&mut dinp, &r, &rope).unwrap();
    check_grad("rope dinp", &inp, &dinp, |x| dot(fwd(x).f32().unwrap(), r.f32().unwrap()));
    // a rotation: every head keeps its norm; position 0 and the copied columns are unchanged
    let (x, y) = (inp.f32().unwrap(), out.f32().unwrap());
    for row in 0..b * t {
        for head in 0..3 {
            let span = row * w + head * 8..row * w + head * 8 + 8;
            let (nx, ny) = (dot(&x[span.clone()], &x[span.clone()]), dot(&y[span.clone()], &y[span.clone()]));
            assert!((nx - ny).abs() < 1e-4 * nx.max(1.0), "row {row} head {head}: norm {nx} -> {ny}");
            if head == 2 || row % t == 0 {
                assert_eq!(&x[span.clone()], &y[span], "row {row} head {head} changed");
            }
        }
    }
    let bad = Rope { head_size: 7, ..rope };
    let err = rope_forward(&mut Tensor::zeros(CPU, &[b, t, w]), &inp, &bad).unwrap_err();
    assert!(err.to_string().contains("head_size must be even"), "{err}");
    let wide = Rope { heads: 4, ..rope };
    let err = rope_forward(&mut Tensor::zeros(CPU, &[b, t, w]), &inp, &wide).unwrap_err();
    assert!(err.to_string().contains("do not fit rows of 24"), "{err}");
}

#[test]
fn kv_expand_backward_matches_finite_differences() {
    let mut rng = fastrand::Rng::with_seed(24);
    // (B, T) = (2, 5), NH = 8 query heads of 4 sharing KV = 2 key/value heads (G = 4)
    let (b, t, nh, kv, hs) = (2, 5, 8, 2, 4);
    let inp = randn(&mut rng, &[b, t, (nh + 2 * kv) * hs], 1.0);
    let r = randn(&mut rng, &[b, t, 3 * nh * hs], 1.0);
    let fwd = |x: &Tensor| {
        let mut out = poisoned(&[b, t, 3 * nh * hs]);
        kv_expand_forward(&mut out, x, nh, kv).unwrap();
        dot(out.f32().unwrap(), r.f32().unwrap())
    };
    let mut dinp = poisoned(&[b, t, (nh + 2 * kv) * hs]);
    kv_expand_backward(&mut dinp, &r, nh, kv).unwrap();
    assert!(dinp.f32().unwrap().iter().all(|x| x.is_finite()), "dinp has unwritten (NaN) elements");
    check_grad("kv_expand dinp", &inp, &dinp, fwd);
}

/// out[row] = [q | k' | v'] with k' head h = k head h / G, written element by element.
fn kv_expand_reference(inp: &[f32], nh: usize, kv: usize, hs: usize) -> Vec<f32> {
    let (w_in, g) = ((nh + 2 * kv) * hs, nh / kv);
    let mut out = Vec::new();
    for row in inp.chunks(w_in) {
        out.extend_from_slice(&row[..nh * hs]);
        for part in 0..2 {
            for h in 0..nh {
                for d in 0..hs {
                    out.push(row[nh * hs + part * kv * hs + (h / g) * hs + d]);
                }
            }
        }
    }
    out
}

#[test]
fn kv_expand_matches_a_direct_reference_and_sums_groups_in_order() {
    let mut rng = fastrand::Rng::with_seed(25);
    let (n, nh, hs) = (7, 8, 6);
    for kv in [2, nh, 1] {
        let (w_in, w_out, g) = ((nh + 2 * kv) * hs, 3 * nh * hs, nh / kv);
        let inp = randn(&mut rng, &[n, w_in], 1.0);
        let mut out = poisoned(&[n, w_out]);
        kv_expand_forward(&mut out, &inp, nh, kv).unwrap();
        assert_eq!(out.f32().unwrap(), &kv_expand_reference(inp.f32().unwrap(), nh, kv, hs)[..], "forward, KV = {kv}");
        // backward: dq copied, dk/dv head j = dout's heads jG .. jG + G - 1 added in order
        let dout = randn(&mut rng, &[n, w_out], 1.0);
        let mut dinp = poisoned(&[n, w_in]);
        kv_expand_backward(&mut dinp, &dout, nh, kv).unwrap();
        let (d, di) = (dout.f32().unwrap(), dinp.f32().unwrap());
        for row in 0..n {
            let (d, di) = (&d[row * w_out..][..w_out], &di[row * w_in..][..w_in]);
            assert_eq!(&di[..nh * hs], &d[..nh * hs], "dq, KV = {kv}, row {row}");
            for part in 0..2 {
                for j in 0..kv {
                    for c in 0..hs {
                        let terms = (0..g).map(|r| d[(1 + part) * nh * hs + (j * g + r) * hs + c]);
                        let want = terms.reduce(|a, x| a + x).unwrap();
                        let got = di[nh * hs + part * kv * hs + j * hs + c];
                        assert_eq!(got.to_bits(), want.to_bits(), "KV = {kv}, row {row}, part {part}, head {j}, column {c}");
                    }
                }
            }
        }
        if kv == nh {
            assert_eq!(out.f32().unwrap(), inp.f32().unwrap(), "KV = NH is a copy");
        }
    }
}

#[test]
fn kv_expand_rejects_bad_head_counts() {
    let inp = Tensor::zeros(CPU, &[3, 48]);
    let mut out = Tensor::zeros(CPU, &[3, 72]);
    for (nh, kv) in [(8, 3), (8, 0), (0, 2)] {
        let err = kv_expand_forward(&mut out, &inp, nh, kv).unwrap_err().to_string();
        assert!(err.contains(&format!("n_head ({nh}) must be a positive multiple of n_kv_head ({kv})")), "{err}");
    }
    // 8 + 2*2 = 12 heads do not divide rows of 50
    let err = kv_expand_forward(&mut out, &Tensor::zeros(CPU, &[3, 50]), 8, 2).unwrap_err().to_string();
    assert!(err.contains("(50) is not (n_head + 2 * n_kv_head) * HS = (8 + 2 * 2) * HS"), "{err}");
    let err = kv_expand_backward(&mut Tensor::zeros(CPU, &[3, 50]), &out, 8, 2).unwrap_err().to_string();
    assert!(err.contains("kv_expand_backward") && err.contains("(50)"), "{err}");
    // rows of 48 = 12 heads of 4: out must be (3, 3 * 8 * 4)
    let err = kv_expand_forward(&mut Tensor::zeros(CPU, &[3, 48]), &inp, 8, 2).unwrap_err().to_string();
    assert!(err.contains("out"), "{err}");
    kv_expand_forward(&mut Tensor::zeros(CPU, &[3, 96]), &inp, 8, 2).unwrap();
}

#[test]
fn embedding_without_positions_matches_finite_differences() {
    let mut rng = fastrand::Rng::with_seed(26);
    let (b, t, c, v) = (3, 7, 16, 11);
    let tokens = Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..v as u32)).collect()).unwrap();
    let wte = randn(&mut rng, &[v, c], 1.0);
    let r = randn(&mut rng, &[b, t, c], 1.0);
    let fwd = |wte: &Tensor| {
        let mut out = poisoned(&[b, t, c]);
        embedding_forward(&mut out, &tokens, wte, None).unwrap();
        (dot(out.f32().unwrap(), r.f32().unwrap()), out)
    };
    let (_, out) = fwd(&wte);
    let (o, w, ids) = (out.f32().unwrap(), wte.f32().unwrap(), tokens.u32().unwrap());
    for (row, &id) in ids.iter().enumerate() {
        assert_eq!(&o[row * c..][..c], &w[id as usize * c..][..c], "row {row} is wte[{id}]");
    }
    let mut dwte = Tensor::zeros(CPU, &[v, c]);
    embedding_backward(&mut dwte, None, &r, &tokens).unwrap();
    check_grad("embedding (no positions) dwte", &wte, &dwte, |x| fwd(x).0);
}

#[test]
fn residual_forward_and_backward() {
    let mut rng = fastrand::Rng::with_seed(7);
    let a = randn(&mut rng, &[3, 10000], 1.0);
    let b = randn(&mut rng, &[3, 10000], 1.0);
    let mut out = Tensor::zeros(CPU, &[3, 10000]);
    residual_forward(&mut out, &a, &b).unwrap();
    for ((o, x), y) in out.f32().unwrap().iter().zip(a.f32().unwrap()).zip(b.f32().unwrap()) {
        assert_eq!(*o, x + y);
    }
    // backward: both branches receive dout; where they meet, gradients add.
    let r = randn(&mut rng, &[3, 10000], 1.0);
    let fwd = |a: &Tensor| {
        let mut out = Tensor::zeros(CPU, &[3, 10000]);
        residual_forward(&mut out, a, &b).unwrap();
        dot(out.f32().unwrap(), r.f32().unwrap())
    };
    let mut da = Tensor::zeros(CPU, &[3, 10000]);
    accumulate(&mut da, &r).unwrap();
    check_grad("residual da", &a, &da, fwd);
}

#[test]
fn crossentropy_dlogits_match_finite_differences_and_ignore_padding() {
    let mut rng = fastrand::Rng::with_seed(8);
    let (n, v, vp) = (9, 13, 16);
    let mut logits = randn(&mut rng, &[n, vp], 2.0);
    let targets = Tensor::from_u32(&[n], (0..n).map(|_| rng.u32(0..v as u32)).collect()).unwrap();
    let wts = randn(&mut rng, &[n], 1.0);
    let fwd = |logits: &Tensor| {
        let mut losses = Tensor::zeros(CPU, &[n]);
        let mut l = logits.clone();
        crossentropy_forward(&mut losses, &mut l, &targets, v, None).unwrap();
        dot(losses.f32().unwrap(), wts.f32().unwrap())
    };
    let base = fwd(&logits);
    // padding columns must not change the loss
    {
        let mut padded = logits.clone();
        padded.f32_mut().unwrap()[vp - 1] = 1e4;
        assert_eq!(fwd(&padded), base);
    }
    let original = logits.clone();
    // dlogits for L = sum_n w_n loss_n, fused: row n scaled by w_n through a per-row pass.
    let mut losses = Tensor::zeros(CPU, &[n]);
    let mut dlogits_rows = Vec::new();
    for row in 0..n {
        let mut one = Tensor::from_vec(&[1, vp], original.f32().unwrap()[row * vp..][..vp].to_vec()).unwrap();
        let tgt = Tensor::from_u32(&[1], vec![targets.u32().unwrap()[row]]).unwrap();
        let mut l1 = Tensor::zeros(CPU, &[1]);
        crossentropy_forward(&mut l1, &mut one, &tgt, v, Some(wts.f32().unwrap()[row])).unwrap();
        dlogits_rows.extend_from_slice(one.f32().unwrap());
    }
    crossentropy_forward(&mut losses, &mut logits, &targets, v, Some(0.5)).unwrap();
    let dlogits = Tensor::from_vec(&[n, vp], dlogits_rows).unwrap();
    for row in 0..n {
        assert!(dlogits.f32().unwrap()[row * vp + v..(row + 1) * vp].iter().all(|&g| g == 0.0));
    }
    check_grad("crossentropy dlogits", &original, &dlogits, fwd);
    // fused pass on the whole batch: dloss scales every row's gradient
    let expect_half: Vec<f32> = (0..n * vp).map(|i| 0.5 * dlogits.f32().unwrap()[i] / wts.f32().unwrap()[i / vp]).collect();
    for (a, b) in logits.f32().unwrap().iter().zip(&expect_half) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let mut l2 = Tensor::zeros(CPU, &[n]);
    let mut again = original.clone();
    crossentropy_forward(&mut l2, &mut again, &targets, v, None).unwrap();
    assert_eq!(l2.f32().unwrap(), losses.f32().unwrap(), "the fused pass must report the same losses");
}

#[test]
fn adamw_matches_f64_reference_over_several_steps() {
    let mut rng = fastrand::Rng::with_seed(9);
    let n = 10007;
    let mut p = randn(&mut rng, &[n], 1.0);
    let (mut m, mut v) = (Tensor::zeros(CPU, &[n]), Tensor::zeros(CPU, &[n]));
    let mut pr: Vec<f64> = p.f32().unwrap().iter().map(|&x| x as f64).collect();
    let (mut mr, mut vr) = (vec![0.0f64; n], vec![0.0f64; n]);
    for step in 1..=4u64 {
        let g = randn(&mut rng, &[n], 0.1);
        let hp = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step };
        adamw_update(&mut p, &g, &mut m, &mut v, &hp).unwrap();
        let (b1, b2, lr) = (0.9f64, 0.95f64, 1e-2f64);
        for i in 0..n {
            let gi = g.f32().unwrap()[i] as f64;
            pr[i] *= 1.0 - lr * 0.1;
            mr[i] = b1 * mr[i] + (1.0 - b1) * gi;
            vr[i] = b2 * vr[i] + (1.0 - b2) * gi * gi;
            let mhat = mr[i] / (1.0 - b1.powi(step as i32));
            let vhat = vr[i] / (1.0 - b2.powi(step as i32));
            pr[i] -= lr * mhat / (vhat.sqrt() + 1e-8);
        }
    }
    for (i, (&a, &b)) in p.f32().unwrap().iter().zip(&pr).enumerate() {
        assert!((a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "element {i}: {a} vs {b}");
    }
}

#[test]
fn global_norm_and_clip() {
    let mut rng = fastrand::Rng::with_seed(10);
    let a = randn(&mut rng, &[1000], 1.0);
    let b = randn(&mut rng, &[33, 7], 3.0);
    let want: f64 = a.f32().unwrap().iter().chain(b.f32().unwrap()).map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let got = global_norm(&[&a, &b]).unwrap() as f64;
    assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
    assert!((clip_coefficient(4.0, 1.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-9);
}
