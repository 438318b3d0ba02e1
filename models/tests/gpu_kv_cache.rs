//! Incremental decoding (`Model::forward_cached`, the key/value cache) on the GPU: GPT-2
//! (HS = 32, learned positions) and a grouped-query Llama (4 query heads over 2 KV heads,
//! HS = 32, RoPE at the cached positions), fed as a 5-token prefill then one token at a time,
//! and after a rewind. In fp32 the cached logits must match both the GPU's full forward and
//! the CPU's full forward closely; in bf16 mixed precision (bf16 activations and a bf16 cache)
//! they must match the GPU's full forward loosely (the full forward's flash attention rounds
//! its probabilities to bf16, the cached one keeps them in f32).
//!
//! Without a GPU the tests print `skipped: no usable CUDA device (...)` and pass (with
//! ENGINE_REQUIRE_GPU=1 they fail instead); CI runs them on the CUDA simulator.

mod common;

use common::gpu_or_skip;
use kernels::{Device, Tensor};
use models::{Gpt, GptConfig, Llama, LlamaConfig, Model, Precision};

const CTX: usize = 24;

/// Every weight scaled up (logits far from uniform, so a wrong position or key shows), the
/// same on every device: the values come from the same seed.
fn sharpen(model: &mut dyn Model) {
    let mut rng = fastrand::Rng::with_seed(5);
    model.visit_params_mut(&mut |p| {
        let norm = p.name.contains("norm") || p.name.contains("ln_");
        let host: Vec<f32> = p.value.try_to_vec().unwrap().iter().map(|&x| if norm { x + 0.4 * (rng.f32() - 0.5) } else { x * 8.0 }).collect();
        p.set_value(&Tensor::from_vec(p.value.shape(), host).unwrap()).unwrap();
    });
}

fn gpt(device: Device, precision: Precision) -> Gpt {
    let config = GptConfig { vocab_size: 37, context_length: CTX, n_layer: 2, n_head: 2, n_embd: 64, ..GptConfig::default() };
    let mut m = Gpt::with_precision(config, device, precision, 11).unwrap();
    sharpen(&mut m);
    m
}

fn llama(device: Device, precision: Precision) -> Llama {
    let config = LlamaConfig {
        vocab_size: 37,
        context_length: CTX,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 128,
        intermediate_size: 96,
        rope_theta: 100.0,
        rms_norm_eps: 1e-5,
        tie_embeddings: false,
    };
    let mut m = Llama::with_precision(config, device, precision, 11).unwrap();
    sharpen(&mut m);
    m
}

fn ids(len: usize, seed: u64) -> Vec<u32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u32(0..37)).collect()
}

fn input(model: &dyn Model, tokens: &[u32]) -> Tensor {
    let device = model.device();
    Tensor::from_u32(&[1, tokens.len()], tokens.to_vec()).unwrap().to_device(device).unwrap()
}

/// The logits (first `vocab` columns) of the n positions the last forward ran.
fn rows(model: &dyn Model, n: usize) -> Vec<Vec<f32>> {
    let logits = model.logits().unwrap().try_to_vec().unwrap();
    let vp = logits.len() / n;
    (0..n).map(|i| logits[i * vp..][..model.vocab_size()].to_vec()).collect()
}

fn full(model: &mut dyn Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let x = input(model, tokens);
    model.forward(&x, None).unwrap();
    rows(model, tokens.len())
}

fn cached(model: &mut dyn Model, tokens: &[u32], start: usize, n: usize) -> Vec<Vec<f32>> {
    let x = input(model, &tokens[start..start + n]);
    assert!(model.forward_cached(&x, start).unwrap(), "GPT-2 and Llama have a KV cache on CUDA");
    rows(model, n)
}

/// A 5-token prefill, then one token at a time to the end of the context.
fn decode(model: &mut dyn Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut got = cached(model, tokens, 0, 5);
    for p in 5..tokens.len() {
        got.extend(cached(model, tokens, p, 1));
    }
    got
}

/// The largest |a - b| over every logit, over the largest |b|; panics past `tol`.
#[track_caller]
fn assert_close(what: &str, a: &[Vec<f32>], b: &[Vec<f32>], tol: f32) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 1.0, "{what}: logits too small to compare ({scale})");
    let mut worst = 0f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= tol * scale, "{what}: position {i} differs by {diff} (logits up to {scale}, tolerance {tol} of that)");
        worst = worst.max(diff / scale);
    }
    eprintln!("ok   {what}: largest difference {worst:.1e} of the largest logit");
}

fn check(name: &str, make: &dyn Fn(Device, Precision) -> Box<dyn Model>) {
    let Some(device) = gpu_or_skip() else { return };
    let tokens = ids(CTX, 9);
    let mut other = tokens.clone();
    other[10..].iter_mut().for_each(|t| *t = (*t + 1) % 37);

    let cpu_reference = full(&mut *make(Device::Cpu, Precision::Fp32), &tokens);
    for (precision, tol) in [(Precision::Fp32, 1e-5), (Precision::Bf16, 4e-2)] {
        let mut model = make(device, precision);
        let reference = full(&mut *model, &tokens);
        let reference_other = full(&mut *model, &other);
        let got = decode(&mut *model, &tokens);
        assert_close(&format!("{name} {precision:?}: cached vs the GPU's full forward"), &got, &reference, tol);
        if precision == Precision::Fp32 {
            assert_close(&format!("{name} {precision:?}: cached vs the CPU's full forward"), &got, &cpu_reference, tol);
        }
        // Back to position 10 with other tokens: the cache keeps 0..10 and drops the rest.
        let got = cached(&mut *model, &other, 10, CTX - 10);
        assert_close(&format!("{name} {precision:?}: rewind to 10"), &got, &reference_other[10..], tol);
    }
}

#[test]
fn gpt2_cached_logits_match_the_full_forward_on_gpu() {
    check("gpt2", &|device, precision| Box::new(gpt(device, precision)));
}

#[test]
fn llama_gqa_cached_logits_match_the_full_forward_on_gpu() {
    check("llama GQA", &|device, precision| Box::new(llama(device, precision)));
}
