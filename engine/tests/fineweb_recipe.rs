//! `configs/gpt2-124m-fineweb.toml` end to end at toy scale: the shipped recipe, with only
//! the model, the sequence length, the step's size, the step count and the paths shrunk by
//! `--set`, trains on a directory of llm.c shards (no `dataset.json`) with everything else it
//! turns on together: the planner under its memory budget, validation, HellaSwag, samples,
//! TensorBoard, checkpoints and the report.

mod common;

use std::fs;

use common::{assert_succeeds, engine_in, json_lines, llmc_shard, s, set_args};
use serde_json::json;
use tempfile::TempDir;

const RECIPE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/gpt2-124m-fineweb.toml");

#[test]
fn the_fineweb_recipe_trains_on_llmc_shards_with_hellaswag_samples_and_tensorboard() {
    let dir = TempDir::new().unwrap();
    // llm.c's layout: fineweb_val_000000.bin, then the train shards from 000001.
    let shards = dir.path().join("fineweb10B");
    fs::create_dir(&shards).unwrap();
    let mut rng = fastrand::Rng::with_seed(17);
    let mut tokens = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.u32(0..50257)).collect() };
    llmc_shard(&shards.join("fineweb_val_000000.bin"), &tokens(3000));
    llmc_shard(&shards.join("fineweb_train_000001.bin"), &tokens(20_000));
    llmc_shard(&shards.join("fineweb_train_000002.bin"), &tokens(20_000));
    // Two HellaSwag examples in the official format.
    let example = |ind: u64, label: u64| {
        json!({"ind": ind, "activity_label": "Cooking", "ctx_a": "The chef stirs the soup.", "ctx_b": "he",
               "ctx": "The chef stirs the soup. he", "split": "val", "split_type": "indomain", "label": label,
               "endings": ["adds salt.", "sings.", "leaves the kitchen.", "reads a book."], "source_id": "test"})
    };
    let hellaswag = dir.path().join("hellaswag_val.jsonl");
    fs::write(&hellaswag, format!("{}\n{}\n", example(0, 0), example(1, 2))).unwrap();

    let sets: Vec<String> = vec![
        format!("data.path='{}'", shards.display()),
        format!("train.hellaswag_data='{}'", hellaswag.display()),
        format!("run.out_dir='{}'", dir.path().display()),
        "run.device=cpu".into(),
        "model.n_layer=1".into(),
        "model.n_head=2".into(),
        "model.n_embd=32".into(),
        "model.context_length=32".into(),
        "train.seq_len=32".into(),
        "batch.tokens_per_step=256".into(),
        "train.max_steps=4".into(),
        "train.eval_interval=2".into(),
        "train.eval_batches=1".into(),
        "train.hellaswag_interval=2".into(),
        "train.sample_interval=2".into(),
        "train.sample_tokens=8".into(),
        "train.checkpoint_interval=2".into(),
        "logs.telemetry_interval_ms=0".into(),
    ];
    let mut args = vec!["train".to_string(), RECIPE.to_string(), "--quiet".into()];
    args.extend(set_args(&sets));
    assert_succeeds(&engine_in(dir.path(), &args.iter().map(String::as_str).collect::<Vec<_>>()));

    let run = dir.path().join("gpt2-124m-fineweb");
    let metrics = json_lines(&run.join("metrics.jsonl"));
    assert_eq!(metrics.iter().map(|m| m["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4]);
    for m in &metrics {
        // The planner chose the micro-batch; the step is the 8 sequences asked for.
        assert_eq!(m["micro_batch"].as_u64().unwrap() * m["grad_accum"].as_u64().unwrap() * 32, 256, "{m}");
        let scored = m["step"].as_u64().unwrap() % 2 == 0;
        assert_eq!(m.get("hellaswag_acc_norm").is_some(), scored, "{m}");
        assert_eq!(m.get("val_loss").is_some_and(|v| v.is_number()), scored, "{m}");
        if scored {
            assert_eq!(m["hellaswag_examples"], 2, "{m}");
            assert!(m["val_loss"].as_f64().unwrap().is_finite(), "{m}");
        }
    }
    let samples: Vec<u64> = json_lines(&run.join("events.jsonl"))
        .iter()
        .filter(|e| e["event"] == "sample")
        .map(|e| e["sample"]["step"].as_u64().or_else(|| e["step"].as_u64()).unwrap())
        .collect();
    assert_eq!(samples, [2, 4]);
    let tb: Vec<_> = fs::read_dir(run.join("tb")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(tb.len() == 1 && tb[0].starts_with("events.out.tfevents."), "{tb:?}");
    assert!(run.join("checkpoints/step-000004/manifest.json").is_file());
    let report = fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("HellaSwag") && report.contains("Samples"), "the report shows HellaSwag and the samples");
    // The shards are llm.c's own: nothing was written beside them.
    assert_eq!(fs::read_dir(&shards).unwrap().count(), 3, "{}", s(&shards));
}
