//! `train.recompute` through the trainer: two optimizer steps (with gradient accumulation)
//! give bit-identical losses and final weights under every policy, and a bad value is an
//! error naming the key.

use engine::config::Config;

fn run(recompute: &str) -> (Vec<u32>, Vec<u32>) {
    let dir = tempfile::TempDir::new().unwrap();
    let toml = format!(
        r#"
[run]
name = "rc"
out_dir = '{}'
device = "cpu"
[model]
n_layer = 4
n_head = 4
n_embd = 64
context_length = 32
[train]
precision = "fp32"
recompute = "{recompute}"
batch_size = 4
seq_len = 32
grad_accum = 2
max_steps = 2
warmup_steps = 1
eval_interval = 0
eval_batches = 1
"#,
        dir.path().display()
    );
    let config = Config::parse(&toml, "recompute.toml", &[]).unwrap();
    let summary = engine::train::train(&config, &engine::train::TrainOptions { quiet: true, ..Default::default() }).unwrap();
    assert_eq!(summary.losses.len(), 2);
    let losses = summary.losses.iter().map(|&(_, l)| l.to_bits()).collect();
    let model = engine::checkpoint::load_model(&summary.checkpoint, kernels::Device::Cpu, models::Precision::Fp32, &Default::default()).unwrap().model;
    let mut weights = Vec::new();
    models::Model::visit_params(model.as_ref(), &mut |p| weights.extend(p.value.to_vec().iter().map(|v| v.to_bits())));
    (losses, weights)
}

#[test]
fn two_training_steps_are_bit_identical_under_every_policy() {
    let (losses, weights) = run("none");
    assert!(losses.iter().all(|&l| f32::from_bits(l).is_finite()));
    for policy in ["selective", "full", "full:3"] {
        let (l, w) = run(policy);
        assert_eq!(l, losses, "{policy}: losses {:?} vs none's {:?}", l.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>(), losses.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>());
        assert!(w == weights, "{policy}: weights after 2 steps differ from none's");
    }
}

#[test]
fn bad_recompute_value_names_the_key_and_the_choices() {
    let err = Config::parse("[train]\nrecompute = \"partial\"\n", "bad.toml", &[]).unwrap_err().to_string();
    for needle in ["bad.toml", "key `train.recompute`", "\"partial\"", "\"none\"", "\"selective\"", "\"full\"", "\"full:K\""] {
        assert!(err.contains(needle), "error does not name {needle:?}: {err}");
    }
    let err = Config::parse("", "bad.toml", &["train.recompute=full:0".into()]).unwrap_err().to_string();
    assert!(err.contains("key `train.recompute`") && err.contains("\"full:0\""), "{err}");
    let ok = Config::parse("[train]\nrecompute = \"full:2\"\n", "ok.toml", &[]).unwrap();
    assert_eq!(ok.recompute().unwrap(), models::Recompute::Full { every: 2 });
    assert_eq!(Config::parse("", "default.toml", &[]).unwrap().recompute().unwrap(), models::Recompute::None);
}
