//! Incremental decoding (`Model::forward_cached`, a key/value cache) against the full
//! forward: the logits of every position, for GPT-2 (learned positions, and none) and Llama
//! (multi-head, grouped-query and multi-query attention: RoPE at the cached positions), fed
//! as a prefill then one token at a time, in uneven chunks, and after going back to an
//! earlier position; the bounds it checks; and a model without a cache says so.

use kernels::{Device, Tensor};
use models::{Gpt, GptConfig, Llama, LlamaConfig, Model};

const CTX: usize = 24;

/// Every weight scaled up (logits far from uniform, so a wrong position or key shows).
fn sharpen(model: &mut dyn Model) {
    kernels::host_pool::set_poison(true);
    let mut rng = fastrand::Rng::with_seed(5);
    model.visit_params_mut(&mut |p| {
        let norm = p.name.contains("norm") || p.name.contains("ln_");
        for x in p.value.f32_mut().unwrap() {
            *x = if norm { *x + 0.4 * (rng.f32() - 0.5) } else { *x * 8.0 };
        }
    });
}

fn gpt(learned_positions: bool) -> Gpt {
    let config = GptConfig { vocab_size: 37, context_length: CTX, n_layer: 2, n_head: 4, n_embd: 32, learned_positions, ..GptConfig::default() };
    let mut m = Gpt::new(config, Device::Cpu, 11).unwrap();
    sharpen(&mut m);
    m
}

fn llama(n_kv_head: usize) -> Llama {
    let config = LlamaConfig {
        vocab_size: 37,
        context_length: CTX,
        n_layer: 2,
        n_head: 4,
        n_kv_head,
        n_embd: 32,
        intermediate_size: 40,
        rope_theta: 100.0,
        rms_norm_eps: 1e-5,
        tie_embeddings: false,
    };
    let mut m = Llama::new(config, Device::Cpu, 11).unwrap();
    sharpen(&mut m);
    m
}

fn ids(len: usize) -> Vec<u32> {
    let mut rng = fastrand::Rng::with_seed(9);
    (0..len).map(|_| rng.u32(0..37)).collect()
}

/// The logits (first `vocab` columns) of every position of `tokens`, by a full forward.
fn full(model: &mut dyn Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    model.forward(&Tensor::from_u32(&[1, tokens.len()], tokens.to_vec()).unwrap(), None).unwrap();
    rows(model, tokens.len())
}

fn rows(model: &dyn Model, n: usize) -> Vec<Vec<f32>> {
    let logits = model.logits().unwrap().to_vec();
    let vp = logits.len() / n;
    (0..n).map(|i| logits[i * vp..][..model.vocab_size()].to_vec()).collect()
}

/// The logits of positions start..start+n through the cache.
fn cached(model: &mut dyn Model, tokens: &[u32], start: usize, n: usize) -> Vec<Vec<f32>> {
    let x = Tensor::from_u32(&[1, n], tokens[start..start + n].to_vec()).unwrap();
    assert!(model.forward_cached(&x, start).unwrap(), "this model has a KV cache on the CPU");
    rows(model, n)
}

#[track_caller]
fn assert_close(what: &str, a: &[Vec<f32>], b: &[Vec<f32>]) {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 1.0, "{what}: logits too small to compare ({scale})");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-5 * scale, "{what}: position {i} differs by {diff} (logits up to {scale})");
    }
}

/// Prefill + one token at a time, uneven chunks, a rewind, and a fresh start, each against
/// the full forward's logits.
fn check(model: &mut dyn Model, name: &str) {
    let tokens = ids(CTX);
    let reference = full(model, &tokens);
    // A prompt of 5, then single tokens to the end of the context.
    let mut got = cached(model, &tokens, 0, 5);
    for p in 5..CTX {
        got.extend(cached(model, &tokens, p, 1));
    }
    assert_close(&format!("{name}: prefill 5 + 1 at a time"), &got, &reference);
    // Uneven chunks.
    let mut got = Vec::new();
    let mut at = 0;
    for n in [1, 3, 7, 2, 11] {
        got.extend(cached(model, &tokens, at, n));
        at += n;
    }
    assert_eq!(at, CTX);
    assert_close(&format!("{name}: chunks"), &got, &reference);
    // Back to position 10 with other tokens: the cache keeps 0..10, drops the rest.
    let mut other = tokens.clone();
    other[10..].iter_mut().for_each(|t| *t = (*t + 1) % 37);
    let reference_other = full(model, &other);
    let got = cached(model, &other, 10, CTX - 10);
    assert_close(&format!("{name}: rewind to 10"), &got, &reference_other[10..]);
    // A whole prompt at once from 0 equals the full forward too.
    let got = cached(model, &tokens, 0, CTX);
    assert_close(&format!("{name}: prefill all"), &got, &reference);
}

#[test]
fn gpt2_cached_logits_match_the_full_forward() {
    check(&mut gpt(true), "gpt2");
    check(&mut gpt(false), "gpt without learned positions");
}

#[test]
fn llama_cached_logits_match_the_full_forward() {
    check(&mut llama(4), "llama MHA");
    check(&mut llama(2), "llama GQA");
    check(&mut llama(1), "llama MQA");
}

#[test]
fn cached_positions_are_checked_and_release_drops_the_cache() {
    let mut model = gpt(true);
    let tokens = ids(CTX);
    let one = |t: u32| Tensor::from_u32(&[1, 1], vec![t]).unwrap();
    // Nothing cached yet: only start 0.
    let err = model.forward_cached(&one(1), 3).unwrap_err().to_string();
    assert!(err.contains("start position 3 is past the 0 positions"), "{err}");
    cached(&mut model, &tokens, 0, CTX);
    let err = model.forward_cached(&one(1), CTX).unwrap_err().to_string();
    assert!(err.contains(&format!("positions {CTX}..{} must be within the model's context length {CTX}", CTX + 1)), "{err}");
    model.release();
    let err = model.forward_cached(&one(1), 1).unwrap_err().to_string();
    assert!(err.contains("past the 0 positions"), "release drops the cache: {err}");
}

/// A model of your own without `forward_cached` reports that it has no cache.
#[test]
fn a_model_without_a_cache_says_so() {
    struct Table(Gpt);
    impl Model for Table {
        fn forward(&mut self, inputs: &Tensor, targets: Option<&Tensor>) -> models::Result<Option<f32>> {
            self.0.forward(inputs, targets)
        }
        fn backward(&mut self, s: f32) -> models::Result<()> {
            self.0.backward(s)
        }
        fn logits(&self) -> Option<&Tensor> {
            self.0.logits()
        }
        fn visit_params(&self, f: &mut dyn FnMut(&models::Param)) {
            self.0.visit_params(f)
        }
        fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut models::Param)) {
            self.0.visit_params_mut(f)
        }
        fn vocab_size(&self) -> usize {
            self.0.vocab_size()
        }
        fn context_length(&self) -> usize {
            self.0.context_length()
        }
        fn flops_per_token(&self, t: usize) -> f64 {
            self.0.flops_per_token(t)
        }
    }
    let mut model = Table(gpt(true));
    assert!(!model.forward_cached(&Tensor::from_u32(&[1, 1], vec![1]).unwrap(), 0).unwrap());
    assert!(model.logits().is_none(), "nothing ran");
}
