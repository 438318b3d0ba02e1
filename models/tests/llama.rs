//! Llama on the CPU: the loss and logits against an independent f64 forward written from
//! Hugging Face's LlamaForCausalLM and fed the exported (HF-named) tensors; gradients against
//! central finite differences (grouped-query, multi-head and multi-query attention, tied and
//! untied classifiers); full recomputation bit-identical to none; names, shapes and config
//! checks.

use std::collections::HashMap;

use kernels::{Device, Tensor};
use models::gradcheck::{check_model, GradCheckOptions};
use models::{Error, Llama, LlamaConfig, Model, Recompute};

fn config(n_kv_head: usize, tie_embeddings: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 11,
        context_length: 8,
        n_layer: 2,
        n_head: 4,
        n_kv_head,
        n_embd: 16,
        intermediate_size: 24,
        rope_theta: 100.0,
        rms_norm_eps: 1e-5,
        tie_embeddings,
    }
}

/// The model with its RMSNorm weights moved off 1 and the other weights scaled up tenfold
/// (gradients well above the finite differences' f32 noise), and a batch (B = 2, T = 5).
fn tiny(config: LlamaConfig) -> (Llama, Tensor, Tensor) {
    // Recycled activation buffers start as NaN: an op that leaves part of its output
    // unwritten turns the loss or a gradient into NaN here.
    kernels::host_pool::set_poison(true);
    let mut model = Llama::new(config, Device::Cpu, 7).unwrap();
    let mut rng = fastrand::Rng::with_seed(3);
    model.visit_params_mut(&mut |p| {
        let norm = p.name.contains("norm");
        for x in p.value.f32_mut().unwrap() {
            *x = if norm { *x + 0.6 * (rng.f32() - 0.5) } else { *x * 10.0 };
        }
    });
    let (b, t) = (2, 5);
    let inputs = Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..11)).collect()).unwrap();
    let targets = Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..11)).collect()).unwrap();
    (model, inputs, targets)
}

/// Every exported tensor by name: (shape, values in f64).
fn exported(model: &Llama) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let mut out = HashMap::new();
    model.visit_params(&mut |p| {
        let values = p.value.to_vec();
        for e in p.exports() {
            out.insert(e.name, (e.shape, values[e.range].iter().map(|&v| v as f64).collect()));
        }
    });
    out
}

/// y (rows, out) = x (rows, in) @ w^T, w (out, in) as torch nn.Linear stores it.
fn linear(x: &[f64], w: &[f64], c_in: usize) -> Vec<f64> {
    let c_out = w.len() / c_in;
    x.chunks(c_in).flat_map(|row| (0..c_out).map(move |o| (0..c_in).map(|i| row[i] * w[o * c_in + i]).sum::<f64>())).collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    x.chunks(w.len())
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * r * g)
        })
        .collect()
}

/// The mean cross-entropy and the logits (B*T, V) of HF's LlamaForCausalLM, in f64, from the
/// exported tensors.
fn reference(c: &LlamaConfig, w: &HashMap<String, (Vec<usize>, Vec<f64>)>, inputs: &[u32], targets: &[u32], t_len: usize) -> (f64, Vec<f64>) {
    let (ce, nh, kv, hs, h) = (c.n_embd, c.n_head, c.n_kv_head, c.head_size(), c.intermediate_size);
    let eps = c.rms_norm_eps as f64;
    let get = |name: &str| &w.get(name).unwrap_or_else(|| panic!("no export named {name}")).1;
    let rotate = |x: &mut [f64], heads: usize, row_len: usize| {
        let inv: Vec<f64> = (0..hs / 2).map(|i| (c.rope_theta as f64).powf(-2.0 * i as f64 / hs as f64)).collect();
        for (r, row) in x.chunks_mut(row_len).enumerate() {
            let pos = (r % t_len) as f64;
            for head in row[..heads * hs].chunks_mut(hs) {
                let orig = head.to_vec();
                for i in 0..hs / 2 {
                    // inverse frequencies rounded to f32 as the engine (and torch's float32) has them
                    let a = pos * (inv[i] as f32) as f64;
                    head[i] = orig[i] * a.cos() - orig[i + hs / 2] * a.sin();
                    head[i + hs / 2] = orig[i + hs / 2] * a.cos() + orig[i] * a.sin();
                }
            }
        }
    };
    let n = inputs.len();
    let embed = get("model.embed_tokens.weight");
    let mut x: Vec<f64> = inputs.iter().flat_map(|&t| embed[t as usize * ce..][..ce].to_vec()).collect();
    for l in 0..c.n_layer {
        let p = |s: &str| get(&format!("model.layers.{l}.{s}.weight"));
        let hn = rms_norm(&x, p("input_layernorm"), eps);
        let mut q = linear(&hn, p("self_attn.q_proj"), ce);
        let mut k = linear(&hn, p("self_attn.k_proj"), ce);
        let v = linear(&hn, p("self_attn.v_proj"), ce);
        rotate(&mut q, nh, nh * hs);
        rotate(&mut k, kv, kv * hs);
        let mut y = vec![0.0; n * nh * hs];
        for b in 0..n / t_len {
            for head in 0..nh {
                let g = head / (nh / kv); // HF repeat_kv: query head h reads kv head h / G
                for i in 0..t_len {
                    let qi = &q[(b * t_len + i) * nh * hs + head * hs..][..hs];
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            let kj = &k[(b * t_len + j) * kv * hs + g * hs..][..hs];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (hs as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for (j, s) in scores.iter().enumerate() {
                        let vj = &v[(b * t_len + j) * kv * hs + g * hs..][..hs];
                        for d in 0..hs {
                            y[(b * t_len + i) * nh * hs + head * hs + d] += (s - m).exp() / z * vj[d];
                        }
                    }
                }
            }
        }
        let o = linear(&y, p("self_attn.o_proj"), nh * hs);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let hn = rms_norm(&x, p("post_attention_layernorm"), eps);
        let (gate, up) = (linear(&hn, p("mlp.gate_proj"), ce), linear(&hn, p("mlp.up_proj"), ce));
        let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        let m = linear(&act, p("mlp.down_proj"), h);
        x.iter_mut().zip(&m).for_each(|(a, b)| *a += b);
    }
    let x = rms_norm(&x, get("model.norm.weight"), eps);
    let head = if c.tie_embeddings { embed } else { get("lm_head.weight") };
    let logits = linear(&x, head, ce);
    let v = c.vocab_size;
    let loss = logits
        .chunks(v)
        .zip(targets)
        .map(|(row, &t)| {
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            m + row.iter().map(|l| (l - m).exp()).sum::<f64>().ln() - row[t as usize]
        })
        .sum::<f64>()
        / n as f64;
    (loss, logits)
}

#[test]
fn loss_and_logits_match_an_independent_hf_llama_forward() {
    for (kv, tied) in [(2, false), (2, true), (4, false), (1, true)] {
        let (mut model, inputs, targets) = tiny(config(kv, tied));
        let c = model.config.clone();
        let (want_loss, want_logits) = reference(&c, &exported(&model), inputs.u32().unwrap(), targets.u32().unwrap(), 5);
        let loss = model.forward(&inputs, Some(&targets)).unwrap().unwrap() as f64;
        assert!((loss - want_loss).abs() < 1e-5 * want_loss, "KV={kv} tied={tied}: loss {loss} vs the reference's {want_loss}");
        assert!(model.forward(&inputs, None).unwrap().is_none());
        let logits = model.logits().unwrap().to_vec();
        let vp = c.padded_vocab();
        assert_eq!(logits.len(), 10 * vp);
        for (row, want) in want_logits.chunks(c.vocab_size).enumerate() {
            for (col, w) in want.iter().enumerate() {
                let got = logits[row * vp + col] as f64;
                assert!((got - w).abs() < 1e-5, "KV={kv} tied={tied}: logits[{row}, {col}] = {got} vs the reference's {w}");
            }
        }
    }
}

fn gradients_match_finite_differences(n_kv_head: usize, tied: bool) {
    let (mut model, inputs, targets) = tiny(config(n_kv_head, tied));
    let options = GradCheckOptions { probes: 12, eps: 1e-2, tolerance: 2e-2, seed: 1 };
    let report = check_model(&mut model, &inputs, &targets, &options).unwrap();
    assert!(report.passed(), "KV={n_kv_head} tied={tied}:\n{report}");
    assert_eq!(report.tensors.len(), 1 + 2 * 6 + 1 + usize::from(!tied), "{report}");
    assert!(report.probes().count() > 150, "{report}");
    for t in &report.tensors {
        assert!(t.floor_limited() < t.probes.len(), "KV={n_kv_head} tied={tied}: {}: every probe is below the floor\n{report}", t.name);
    }
    // The analytic gradients the check left behind: none all zero, and the padding rows
    // (11..128) of the embedding and the classifier get none.
    let padded = ["model.embed_tokens.weight", "lm_head.weight"];
    model.visit_params(&mut |p| {
        let grad = p.grad.to_vec();
        assert!(grad.iter().any(|&g| g != 0.0), "{}: gradient is all zeros", p.name);
        let limit = if padded.contains(&p.name.as_str()) { 11 * 16 } else { grad.len() };
        assert!(grad[limit..].iter().all(|&g| g == 0.0), "{}: padding rows got a gradient", p.name);
    });
}

#[test]
fn gqa_gradients_match_finite_differences_untied() {
    gradients_match_finite_differences(2, false);
}

#[test]
fn gqa_gradients_match_finite_differences_tied() {
    gradients_match_finite_differences(2, true);
}

#[test]
fn mha_and_mqa_gradients_match_finite_differences() {
    gradients_match_finite_differences(4, false);
    gradients_match_finite_differences(1, true);
}

/// Two micro-batches accumulated (the second at loss scale 0.5) under `policy`:
/// (losses, every gradient as bits).
fn grads(policy: Recompute) -> (Vec<u32>, Vec<(String, Vec<u32>)>) {
    kernels::host_pool::set_poison(true);
    let config = LlamaConfig { vocab_size: 50, context_length: 16, n_layer: 4, n_head: 4, n_kv_head: 2, n_embd: 32, intermediate_size: 48, ..config(2, false) };
    let mut model = Llama::new(config, Device::Cpu, 11).unwrap();
    model.set_recompute(policy).unwrap();
    let mut losses = Vec::new();
    for (seed, scale) in [(1, 1.0), (2, 0.5)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut ids = || Tensor::from_u32(&[3, 16], (0..48).map(|_| rng.u32(0..50)).collect()).unwrap();
        let (x, y) = (ids(), ids());
        losses.push(model.forward(&x, Some(&y)).unwrap().unwrap().to_bits());
        model.backward(scale).unwrap();
    }
    assert_eq!(model.recompute(), policy);
    let mut out = Vec::new();
    model.visit_params(&mut |p| out.push((p.name.clone(), p.grad.to_vec().iter().map(|g| g.to_bits()).collect())));
    (losses, out)
}

#[test]
fn full_recomputation_gives_gradients_bit_identical_to_none() {
    let reference = grads(Recompute::None);
    assert!(reference.1.iter().all(|(_, g)| g.iter().any(|&b| f32::from_bits(b) != 0.0)));
    for policy in [Recompute::Full { every: 1 }, Recompute::Full { every: 2 }, Recompute::Full { every: 3 }] {
        let got = grads(policy);
        assert_eq!(got.0, reference.0, "{policy}: losses differ from none");
        for ((name, g), (_, w)) in got.1.iter().zip(&reference.1) {
            if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
                panic!("{policy}: {name}[{i}] = {} differs from none's {}", f32::from_bits(g[i]), f32::from_bits(w[i]));
            }
        }
    }
}

#[test]
fn selective_recomputation_is_rejected_and_not_offered() {
    let (mut model, _, _) = tiny(config(2, false));
    let err = model.set_recompute(Recompute::Selective).unwrap_err().to_string();
    assert!(err.contains("Llama supports recomputation none, full and full:K, not selective"), "{err}");
    assert_eq!(model.recompute(), Recompute::None);
    let four = Llama::new(LlamaConfig { n_layer: 4, ..config(2, false) }, Device::Cpu, 1).unwrap();
    assert_eq!(four.recompute_candidates(), [Recompute::None, Recompute::Full { every: 2 }, Recompute::Full { every: 1 }]);
    for policy in four.recompute_candidates() {
        model.set_recompute(policy).unwrap();
    }
}

#[test]
fn exports_carry_hugging_face_names_and_shapes() {
    for tied in [false, true] {
        let (model, _, _) = tiny(config(2, tied));
        let mut exports = Vec::new();
        let mut decayed = Vec::new();
        model.visit_params(&mut |p| {
            exports.extend(p.exports().into_iter().map(|e| (e.name, e.shape)));
            decayed.extend(p.weight_decay.then(|| p.name.clone()));
        });
        let mut want: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![11, 16])];
        for i in 0..2 {
            let l = format!("model.layers.{i}");
            for (part, shape) in [
                ("input_layernorm", vec![16]),
                ("self_attn.q_proj", vec![16, 16]),
                ("self_attn.k_proj", vec![8, 16]),
                ("self_attn.v_proj", vec![8, 16]),
                ("self_attn.o_proj", vec![16, 16]),
                ("post_attention_layernorm", vec![16]),
                ("mlp.gate_proj", vec![24, 16]),
                ("mlp.up_proj", vec![24, 16]),
                ("mlp.down_proj", vec![16, 24]),
            ] {
                want.push((format!("{l}.{part}.weight"), shape));
            }
        }
        want.push(("model.norm.weight".into(), vec![16]));
        if !tied {
            want.push(("lm_head.weight".into(), vec![11, 16]));
        }
        assert_eq!(exports, want, "tied={tied}");
        let mut want_decayed: Vec<String> =
            (0..2).flat_map(|i| ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"].map(|p| format!("model.layers.{i}.{p}.weight"))).collect();
        if !tied {
            want_decayed.push("lm_head.weight".into());
        }
        assert_eq!(decayed, want_decayed, "tied={tied}");
        let n: usize = want.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(model.num_params(), n);
        assert_eq!(model.flops_per_token(5), 6.0 * n as f64 + 6.0 * 2.0 * 16.0 * 5.0);
    }
}

#[test]
fn hf_config_describes_a_llama_for_causal_lm() {
    let (model, _, _) = tiny(config(2, true));
    let v: serde_json::Value = serde_json::from_str(&model.hf_config_json().unwrap()).unwrap();
    let want = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 11,
        "max_position_embeddings": 8, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 100.0, "rope_scaling": null,
        "attention_bias": false, "attention_dropout": 0.0, "mlp_bias": false, "initializer_range": 0.02,
        "tie_word_embeddings": true, "bos_token_id": null, "eos_token_id": null, "torch_dtype": "float32",
    });
    assert_eq!(v, want);
}

#[test]
fn config_errors_name_the_field_and_value() {
    let base = config(2, false);
    for (bad, message) in [
        (LlamaConfig { vocab_size: 0, ..base.clone() }, "vocab_size (0) must be at least 1"),
        (LlamaConfig { n_layer: 0, ..base.clone() }, "n_layer (0) must be at least 1"),
        (LlamaConfig { n_kv_head: 0, ..base.clone() }, "n_kv_head (0) must be at least 1"),
        (LlamaConfig { intermediate_size: 0, ..base.clone() }, "intermediate_size (0) must be at least 1"),
        (LlamaConfig { n_embd: 18, ..base.clone() }, "n_embd (18) must be a positive multiple of n_head (4)"),
        (LlamaConfig { n_kv_head: 3, ..base.clone() }, "n_head (4) must be a multiple of n_kv_head (3)"),
        (LlamaConfig { n_embd: 12, ..base.clone() }, "the head size n_embd / n_head (12 / 4 = 3) must be even for RoPE"),
        (LlamaConfig { rope_theta: 1.0, ..base.clone() }, "rope_theta (1) must be a finite number above 1"),
        (LlamaConfig { rms_norm_eps: 0.0, ..base.clone() }, "rms_norm_eps (0) must be a positive finite number"),
    ] {
        let err = bad.validate().unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(err.to_string().contains(message), "{err} (wanted {message})");
        let err = Llama::new(bad, Device::Cpu, 1).err().expect("an invalid config builds no model").to_string();
        assert!(err.contains(message), "{err}");
    }
    assert_eq!(base.padded_vocab(), 128);
}

#[test]
fn misuse_is_an_error() {
    let (mut model, inputs, _) = tiny(config(2, false));
    let err = model.backward(1.0).unwrap_err().to_string();
    assert!(err.contains("Llama (forward with targets): backward called without a preceding forward"), "{err}");
    model.forward(&inputs, None).unwrap();
    assert!(model.backward(1.0).is_err(), "backward after a forward without targets");
    let long = Tensor::from_u32(&[1, 9], vec![0; 9]).unwrap();
    let err = model.forward(&long, None).unwrap_err().to_string();
    assert!(err.contains("sequence length 9 must be in 1..=8"), "{err}");
}
