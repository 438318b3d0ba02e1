//! Two CPU runs of the default config (configs/shakespeare-char.toml, shortened to 60 steps)
//! give bit-identical losses, training and validation: every reduction in the CPU backend
//! is in a fixed order (no order-dependent accumulation across threads), the data order is
//! seeded, and the initialisation is seeded.

use engine::bench::train::DEFAULT_CONFIG;
use engine::config::Config;
use engine::train::{train, TrainOptions, TrainSummary};
use tempfile::TempDir;

fn run(dir: &TempDir, name: &str) -> TrainSummary {
    let sets: Vec<String> = [
        format!("run.out_dir={}", dir.path().display()),
        format!("run.name={name}"),
        "run.device=cpu".into(),
        "train.max_steps=60".into(),
        "train.eval_interval=20".into(),
        "logs.telemetry_interval_ms=0".into(),
    ]
    .into();
    let config = Config::parse(DEFAULT_CONFIG, "configs/shakespeare-char.toml", &sets).unwrap();
    train(&config, &TrainOptions { quiet: true, ..Default::default() }).unwrap()
}

fn bits(losses: &[(u64, f32)]) -> Vec<(u64, u32)> {
    losses.iter().map(|&(s, l)| (s, l.to_bits())).collect()
}

#[test]
fn two_runs_of_the_default_config_give_identical_losses() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (run(&dir, "a"), run(&dir, "b"));
    assert_eq!(a.losses.len(), 60);
    assert_eq!(bits(&a.losses), bits(&b.losses), "training losses differ");
    assert_eq!(a.val_losses.len(), 3);
    assert_eq!(bits(&a.val_losses), bits(&b.val_losses), "validation losses differ");
    // Not a constant: the loss moved (the runs trained).
    assert!(a.losses[59].1 < a.losses[0].1 - 1.0, "{:?}", a.losses);
    // And the checkpoints are the same bytes.
    let weights = |s: &TrainSummary| std::fs::read(s.checkpoint.join("model.safetensors")).unwrap();
    assert!(weights(&a) == weights(&b), "the final weights differ");
}
