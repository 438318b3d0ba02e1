//! Sampling: `engine sample` through the KV cache draws the tokens the full forward draws
//! (GPT-2 and Llama with grouped-query attention; greedy, temperature, top-k, top-p; prompts
//! shorter and longer than the context; generation past it); bad `--top-p` and
//! `--temperature` name the flag; `train.sample_interval` writes samples to events.jsonl and
//! the report without changing training (losses, weights and a resume bit-identical), each
//! reproducible with `engine sample --seed`; bad sample settings name the key.

mod common;

use std::fs;
use std::path::Path;

use common::{assert_fails, assert_succeeds, engine_in, json_lines, s, said, snapshot, train_tiny};
use serde_json::Value;

/// A tiny run (2 layers, 32 wide, context 16) trained 120 steps with a learning rate high
/// enough that its logits are far from uniform; `extra` adds settings (a Llama).
fn trained(dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let mut args = vec!["--set", "train.lr=0.01", "--set", "train.warmup_steps=5", "--set", "model.n_layer=2", "--set", "model.n_embd=32"];
    args.extend(extra);
    assert_succeeds(&train_tiny(dir, name, 120, &args));
    dir.join(name)
}

/// `engine sample RUN --json ARGS...`: the generated token ids.
fn sample_json(dir: &Path, run: &Path, args: &[&str]) -> Vec<u64> {
    let mut all = vec!["sample", s(run), "--json"];
    all.extend(args);
    let out = engine_in(dir, &all);
    assert_succeeds(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", said(&out)));
    v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

const LLAMA: [&str; 10] = [
    "--set",
    "model.kind=llama",
    "--set",
    "model.n_head=4",
    "--set",
    "model.n_kv_head=2",
    "--set",
    "model.intermediate_size=24",
    "--set",
    "model.rope_theta=10000.0",
];

/// The same tokens with and without the KV cache, for every setting and prompt, with 50
/// tokens generated past a context of 16 (so the window is cut and re-prefilled several
/// times).
#[test]
fn the_kv_cache_draws_the_tokens_of_the_full_forward() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [("gpt2", trained(dir.path(), "gpt", &[])), ("llama gqa", trained(dir.path(), "llama", &LLAMA))];
    let settings: [&[&str]; 5] = [
        &["--temperature", "0"],
        &["--temperature", "0.8"],
        &["--temperature", "1.0", "--top-k", "5"],
        &["--temperature", "1.0", "--top-p", "0.9"],
        &["--temperature", "1.3", "--top-k", "40", "--top-p", "0.5", "--seed", "7"],
    ];
    // Shorter than the context, and longer (the first 16 tokens are dropped).
    let prompts = ["RO", "First Citizen: Before we proceed any further"];
    for (kind, run) in &runs {
        let mut distinct = std::collections::BTreeSet::new();
        for setting in settings {
            for prompt in prompts {
                let mut args = vec!["--prompt", prompt, "--tokens", "50"];
                args.extend(setting);
                let cached = sample_json(dir.path(), run, &args);
                args.push("--no-kv-cache");
                let full = sample_json(dir.path(), run, &args);
                assert_eq!(cached.len(), 50);
                assert_eq!(cached, full, "{kind} {setting:?} prompt {prompt:?}: the KV cache drew other tokens");
                distinct.insert(cached);
            }
        }
        // The settings matter (the comparison is not of one constant output).
        assert!(distinct.len() >= 5, "{kind}: only {} distinct samples of 10", distinct.len());
    }
}

#[test]
fn bad_sampling_flags_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path(), "r", &[]);
    for p in ["0", "1.5", "-0.2", "NaN"] {
        let flag = format!("--top-p={p}");
        assert_fails(&engine_in(dir.path(), &["sample", s(&run), "--tokens", "3", &flag]), &["--top-p", "must be in (0, 1]"]);
    }
    assert_fails(&engine_in(dir.path(), &["sample", s(&run), "--tokens", "3", "--temperature=-1"]), &["--temperature", ">= 0"]);
    // The edge: 1 keeps everything, and a tiny p is greedy.
    let greedy = sample_json(dir.path(), &run, &["--tokens", "10", "--temperature", "0"]);
    assert_eq!(sample_json(dir.path(), &run, &["--tokens", "10", "--top-p", "1e-6"]), greedy);
    sample_json(dir.path(), &run, &["--tokens", "10", "--top-p", "1"]);
}

#[test]
fn bad_sample_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let before = snapshot(dir.path());
    for tokens in ["0", "5000"] {
        let sets = ["--set", "train.sample_interval=5", "--set", &format!("train.sample_tokens={tokens}")];
        assert_fails(&train_tiny(dir.path(), "bad", 10, &sets), &["train.sample_tokens", "1 to 4096", tokens]);
    }
    assert_eq!(snapshot(dir.path()), before, "a refused run writes nothing");
    // Off, the token count is not checked (it is not used).
    assert_succeeds(&train_tiny(dir.path(), "off", 2, &["--set", "train.sample_tokens=0"]));
}

/// Per step: the loss, gradient norm and validation loss as logged.
fn losses(run: &Path) -> Vec<(u64, String)> {
    json_lines(&run.join("metrics.jsonl"))
        .iter()
        .map(|l| (l["step"].as_u64().unwrap(), format!("{} {} {}", l["loss"], l["grad_norm"], l["val_loss"])))
        .collect()
}

fn samples(run: &Path) -> Vec<Value> {
    json_lines(&run.join("events.jsonl")).into_iter().filter(|e| e["event"] == "sample").map(|e| e["sample"].clone()).collect()
}

#[test]
fn samples_during_training_change_nothing_and_resume_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let common = ["--set", "train.checkpoint_interval=10", "--set", "train.eval_interval=10"];
    let sampling = ["--set", "train.sample_interval=10", "--set", "train.sample_prompt='ROMEO:'", "--set", "train.sample_tokens=20"];
    assert_succeeds(&train_tiny(dir.path(), "plain", 30, &common));
    let with: Vec<&str> = common.iter().chain(&sampling).copied().collect();
    assert_succeeds(&train_tiny(dir.path(), "sampled", 30, &with));
    let (plain, sampled) = (dir.path().join("plain"), dir.path().join("sampled"));

    // Training is untouched: every step's numbers and the final weights, bit for bit.
    assert_eq!(losses(&plain).len(), 30);
    assert_eq!(losses(&sampled), losses(&plain));
    let weights = |run: &Path| fs::read(run.join("checkpoints/step-000030/model.safetensors")).unwrap();
    assert!(weights(&sampled) == weights(&plain), "the final weights differ with sampling on");
    assert!(samples(&plain).is_empty());

    // A sample after steps 10, 20 and 30, as documented, each matching the schema.
    let got = samples(&sampled);
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas/events.schema.json");
    let schema: Value = serde_json::from_str(&fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for line in json_lines(&sampled.join("events.jsonl")) {
        let errors: Vec<String> = validator.iter_errors(&line).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{line}: {errors:?}");
    }
    assert_eq!(got.iter().map(|s| s["step"].as_u64().unwrap()).collect::<Vec<_>>(), [10, 20, 30]);
    for s in &got {
        assert_eq!(s["prompt"], "ROMEO:");
        assert_eq!(s["prompt_tokens"], 6);
        assert_eq!(s["tokens"], 20);
        assert_eq!(s["token_ids"].as_array().unwrap().len(), 20);
        assert_eq!(s["seed"].as_u64().unwrap(), 1337 + s["step"].as_u64().unwrap(), "seed = run.seed + step");
        assert_eq!(s["temperature"], 0.8);
    }
    assert_ne!(got[0]["token_ids"], got[2]["token_ids"], "the model (and the seed) changed between the samples");

    // Each is what `engine sample` draws from that step's checkpoint with its seed.
    for s in &got {
        let step = s["step"].as_u64().unwrap();
        let checkpoint = common::checkpoint_dir(&sampled, step);
        let seed = s["seed"].to_string();
        let ids = sample_json(dir.path(), &checkpoint, &["--prompt", "ROMEO:", "--tokens", "20", "--seed", &seed]);
        let logged: Vec<u64> = s["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        assert_eq!(ids, logged, "step {step}: engine sample --seed {seed} draws other tokens");
    }

    // The report shows them.
    let report = fs::read_to_string(sampled.join("report.html")).unwrap();
    assert!(report.contains("<h2>Samples</h2>"), "no Samples section");
    assert!(report.contains("<b>ROMEO:</b>"));

    // A resume from step 10: steps 11..30 and the samples of steps 20 and 30 bit for bit.
    let before = (losses(&sampled), got.clone());
    assert_succeeds(&train_tiny(dir.path(), "sampled", 30, &[&with[..], &["--resume-step", "10"]].concat()));
    assert_eq!(losses(&sampled), before.0, "the resumed steps differ");
    let after = samples(&sampled);
    for step in [20, 30] {
        let last = |v: &[Value]| v.iter().rev().find(|s| s["step"] == step).map(|s| (s["token_ids"].clone(), s["text"].clone(), s["seed"].clone()));
        assert!(last(&after).is_some(), "no sample of step {step} after the resume");
        assert_eq!(last(&after), last(&before.1), "step {step}'s sample differs after the resume");
    }
}
