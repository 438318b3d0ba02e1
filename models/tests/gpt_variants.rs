//! GPT blocks beyond GPT-2's: without biases, with a SwiGLU MLP, another MLP width, without
//! a position table. Each is checked against finite differences, names its parameters as
//! its layers do, and says whether Hugging Face's GPT-2 can load it; the defaults are GPT-2.

use kernels::{Device, Tensor};
use models::gradcheck::{check_model, GradCheckOptions};
use models::{Activation, Error, Gpt, GptConfig, Model};

fn tiny() -> GptConfig {
    GptConfig { vocab_size: 11, context_length: 8, n_layer: 2, n_head: 2, n_embd: 8, ..GptConfig::default() }
}

fn variants() -> Vec<(&'static str, GptConfig)> {
    vec![
        ("gpt2", tiny()),
        ("no bias", GptConfig { bias: false, ..tiny() }),
        ("n_inner 12", GptConfig { n_inner: Some(12), ..tiny() }),
        ("swiglu", GptConfig { activation: Activation::Swiglu, n_inner: Some(12), ..tiny() }),
        ("swiglu no bias", GptConfig { activation: Activation::Swiglu, bias: false, ..tiny() }),
        ("no positions", GptConfig { learned_positions: false, ..tiny() }),
    ]
}

/// Every exported tensor of block 0 and outside the blocks: (name, shape).
fn exports(model: &Gpt) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    model.visit_params(&mut |p| out.extend(p.exports().into_iter().filter(|e| !e.name.starts_with("h.1.")).map(|e| (e.name, e.shape))));
    out
}

fn names(list: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
    list.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
}

#[test]
fn the_default_is_gpt2_small() {
    let c = GptConfig::default();
    assert_eq!((c.vocab_size, c.context_length, c.n_layer, c.n_head, c.n_embd), (50257, 1024, 12, 12, 768));
    assert!(c.bias && c.n_inner.is_none() && c.activation == Activation::Gelu && c.learned_positions && c.is_gpt2());
    assert_eq!(c.mlp_width(), 4 * 768);
}

#[test]
fn parameters_are_named_and_shaped_as_their_layers_say() {
    let model = |c: GptConfig| Gpt::new(c, Device::Cpu, 1).unwrap();
    let ends = [("ln_f.weight", &[8][..]), ("ln_f.bias", &[8])];
    let block_gpt2: &[(&str, &[usize])] = &[
        ("h.0.ln_1.weight", &[8]),
        ("h.0.ln_1.bias", &[8]),
        ("h.0.attn.c_attn.weight", &[8, 24]),
        ("h.0.attn.c_attn.bias", &[24]),
        ("h.0.attn.c_proj.weight", &[8, 8]),
        ("h.0.attn.c_proj.bias", &[8]),
        ("h.0.ln_2.weight", &[8]),
        ("h.0.ln_2.bias", &[8]),
        ("h.0.mlp.c_fc.weight", &[8, 32]),
        ("h.0.mlp.c_fc.bias", &[32]),
        ("h.0.mlp.c_proj.weight", &[32, 8]),
        ("h.0.mlp.c_proj.bias", &[8]),
    ];
    let mut want = names(&[("wte.weight", &[11, 8]), ("wpe.weight", &[8, 8])]);
    want.extend(names(block_gpt2));
    want.extend(names(&ends));
    assert_eq!(exports(&model(tiny())), want);

    let mut want = names(&[("wte.weight", &[11, 8])]);
    want.extend(names(&[
        ("h.0.ln_1.weight", &[8]),
        ("h.0.ln_1.bias", &[8]),
        ("h.0.attn.c_attn.weight", &[8, 24]),
        ("h.0.attn.c_proj.weight", &[8, 8]),
        ("h.0.ln_2.weight", &[8]),
        ("h.0.ln_2.bias", &[8]),
        ("h.0.mlp.gate_proj.weight", &[12, 8]),
        ("h.0.mlp.up_proj.weight", &[12, 8]),
        ("h.0.mlp.down_proj.weight", &[8, 12]),
    ]));
    want.extend(names(&ends));
    let swiglu = GptConfig { activation: Activation::Swiglu, bias: false, n_inner: Some(12), learned_positions: false, ..tiny() };
    assert_eq!(exports(&model(swiglu)), want);

    // SwiGLU with biases: the fused bias exports as its two halves too.
    let e = exports(&model(GptConfig { activation: Activation::Swiglu, n_inner: Some(12), ..tiny() }));
    for (name, shape) in [("h.0.mlp.gate_proj.bias", vec![12]), ("h.0.mlp.up_proj.bias", vec![12]), ("h.0.mlp.down_proj.bias", vec![8])] {
        assert!(e.contains(&(name.to_string(), shape)), "{name} missing from {e:?}");
    }
}

#[test]
fn every_variant_matches_finite_differences() {
    let mut rng = fastrand::Rng::with_seed(3);
    let mut ids = || Tensor::from_u32(&[2, 5], (0..10).map(|_| rng.u32(0..11)).collect()).unwrap();
    let (inputs, targets) = (ids(), ids());
    for (what, config) in variants() {
        kernels::host_pool::set_poison(true);
        let mut model = Gpt::new(config, Device::Cpu, 7).unwrap();
        let mut rng = fastrand::Rng::with_seed(5);
        model.visit_params_mut(&mut |p| {
            for x in p.value.f32_mut().unwrap() {
                *x = if p.name.contains("ln_") || p.name.ends_with(".bias") { *x + 0.3 * (rng.f32() - 0.5) } else { *x * 5.0 };
            }
        });
        let options = GradCheckOptions { probes: 8, eps: 1e-2, tolerance: 2e-2, seed: 2 };
        let report = check_model(&mut model, &inputs, &targets, &options).unwrap();
        assert!(report.passed(), "{what}:\n{report}");
        for t in &report.tensors {
            assert!(t.floor_limited() < t.probes.len(), "{what}: {}: every probe below the floor\n{report}", t.name);
        }
    }
}

#[test]
fn hugging_face_config_only_for_gpt2_blocks() {
    let json = |c: GptConfig| Gpt::new(c, Device::Cpu, 1).unwrap().hf_config_json();
    let v: serde_json::Value = serde_json::from_str(&json(tiny()).unwrap()).unwrap();
    let want = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 11,
        "n_positions": 8, "n_ctx": 8, "n_embd": 8, "n_layer": 2, "n_head": 2, "n_inner": null,
        "activation_function": "gelu_new", "layer_norm_epsilon": kernels::ops::layernorm::EPS,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": true,
        "bos_token_id": null, "eos_token_id": null, "scale_attn_weights": true, "torch_dtype": "float32",
    });
    assert_eq!(v, want);
    let v: serde_json::Value = serde_json::from_str(&json(GptConfig { n_inner: Some(12), ..tiny() }).unwrap()).unwrap();
    assert_eq!(v["n_inner"], 12);
    for (what, config) in variants().into_iter().filter(|(_, c)| !c.is_gpt2()) {
        assert!(json(config).is_none(), "{what}: GPT2LMHeadModel cannot load it");
    }
}

#[test]
fn a_zero_mlp_width_is_a_config_error() {
    let err = Gpt::new(GptConfig { n_inner: Some(0), ..tiny() }, Device::Cpu, 1).err().expect("no model");
    assert!(matches!(err, Error::Config(_)) && err.to_string().contains("n_inner (0) must be at least 1"), "{err}");
}
