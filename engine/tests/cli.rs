//! The `engine` binary end to end: every bad input ends with exit code 1 and one line on
//! stderr, `error: ...`, that names the problem (never a panic); tiny real runs train,
//! evaluate, sample and resume.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

mod common;

use common::{assert_fails, assert_succeeds, checkpoint_dir, engine_in, s, set_args, snapshot, text, tiny_sets, train_tiny, write, ENGINE, SHIPPED_CONFIG};

/// `--set` arguments of the tiny run `dir/tiny` ([`common::tiny_sets`]).
fn tiny_args(out_dir: &Path, max_steps: u64) -> Vec<String> {
    set_args(&tiny_sets(out_dir, "tiny", max_steps))
}

/// `engine train <shipped config> --quiet <tiny run dir/tiny> <extra...>`.
fn train(dir: &Path, max_steps: u64, extra: &[&str]) -> Output {
    train_tiny(dir, "tiny", max_steps, extra)
}

/// Trains a tiny 3-step run under `dir`; returns its run directory.
fn trained_run(dir: &Path) -> PathBuf {
    let out = train(dir, 3, &[]);
    assert_succeeds(&out);
    dir.join("tiny")
}

/// `engine train <config file with body>` from a fresh temporary directory.
fn train_config(name: &str, body: &str) -> (TempDir, Output) {
    let dir = TempDir::new().unwrap();
    let config = write(dir.path(), name, body);
    let out = engine_in(dir.path(), &["train", config.to_str().unwrap(), "--quiet"]);
    (dir, out)
}

// ---- config files ----

#[test]
fn missing_config_file_names_the_path() {
    let dir = TempDir::new().unwrap();
    let out = engine_in(dir.path(), &["train", "absent-config.toml"]);
    assert_fails(&out, &["absent-config.toml", "cannot read config"]);
}

#[test]
fn malformed_toml_names_file_and_line() {
    let (_dir, out) = train_config("broken.toml", "[run]\nname = \"x\"\n[train\nbatch_size = 4\n");
    assert_fails(&out, &["broken.toml", "invalid TOML", "line 3"]);
}

#[test]
fn unknown_key_names_the_key_and_file() {
    let (_dir, out) = train_config("typo.toml", "[train]\nbatch_sise = 4\n");
    assert_fails(&out, &["typo.toml", "train.batch_sise", "unknown field `batch_sise`", "batch_size"]);
}

#[test]
fn unknown_section_names_it() {
    let (_dir, out) = train_config("section.toml", "[optimizer]\nlr = 1.0\n");
    assert_fails(&out, &["section.toml", "unknown field `optimizer`"]);
}

#[test]
fn wrong_type_names_the_key() {
    let (_dir, out) = train_config("type.toml", "[train]\nbatch_size = \"big\"\n");
    assert_fails(&out, &["type.toml", "key `train.batch_size`", "invalid type", "\"big\""]);
}

#[test]
fn zero_layers_is_rejected() {
    let (_dir, out) = train_config("layers.toml", "[model]\nn_layer = 0\n");
    assert_fails(&out, &["layers.toml", "key `model.n_layer`", "at least 1"]);
}

#[test]
fn seq_len_longer_than_context_is_rejected() {
    let (_dir, out) = train_config("ctx.toml", "[model]\ncontext_length = 64\n[train]\nseq_len = 65\n");
    assert_fails(&out, &["ctx.toml", "key `train.seq_len`", "65", "model.context_length = 64"]);
}

#[test]
fn n_embd_not_a_multiple_of_n_head_is_rejected() {
    let (_dir, out) = train_config("heads.toml", "[model]\nn_embd = 100\nn_head = 3\n");
    assert_fails(&out, &["heads.toml", "key `model.n_embd`", "not a multiple of model.n_head (3)"]);
}

#[test]
fn zero_eval_batches_is_rejected() {
    let (_dir, out) = train_config("eval.toml", "[train]\neval_batches = 0\n");
    assert_fails(&out, &["eval.toml", "key `train.eval_batches`", "at least 1"]);
}

#[test]
fn absurdly_large_model_is_rejected_before_allocating() {
    // An extra few zeros: would abort on allocation.
    let (_dir, out) = train_config("huge.toml", "[model]\nn_layer = 1\nn_embd = 16\nn_head = 2\ncontext_length = 1000000000000\n");
    assert_fails(&out, &["huge.toml", "too large", "model.context_length = 1000000000000", "GiB"]);
    // Sizes whose products overflow usize: would panic with "capacity overflow".
    let (_dir, out) = train_config("overflow.toml", "[model]\nn_embd = 4611686018427387904\nn_head = 1\n");
    assert_fails(&out, &["overflow.toml", "too large", "model.n_embd = 4611686018427387904"]);
    let (_dir, out) = train_config("batch.toml", "[train]\nbatch_size = 4611686018427387904\n");
    assert_fails(&out, &["batch.toml", "too large", "train.batch_size = 4611686018427387904"]);
}

#[test]
fn unknown_device_names_the_key() {
    let (_dir, out) = train_config("device.toml", "[run]\ndevice = \"gpu\"\n");
    assert_fails(&out, &["device.toml", "key `run.device`", "\"gpu\"", "\"cuda\""]);
}

#[test]
fn min_lr_above_lr_names_both() {
    let (_dir, out) = train_config("lr.toml", "[train]\nlr = 1e-3\nmin_lr = 1e-2\n");
    assert_fails(&out, &["lr.toml", "key `train.min_lr`", "train.lr (0.001)", "0.01"]);
}

#[test]
fn cuda_device_fails_clearly_without_a_usable_gpu() {
    if let Ok(info) = kernels::cuda::probe(0) {
        eprintln!("skipped: a usable CUDA device is present ({info:?}), so device = \"cuda\" does not fail here");
        return;
    }
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), 3, &["--set", "run.device=cuda"]);
    assert_fails(&out, &["device `cuda` is not available", "install"]);
    assert!(!dir.path().join("tiny").exists(), "a failed device check must not create the run directory");
}

// ---- --set ----

#[test]
fn set_with_wrong_type_names_the_override_and_key() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), 3, &["--set", "train.max_steps=abc"]);
    assert_fails(&out, &["--set train.max_steps=abc", "key `train.max_steps`", "invalid type", "expected u64"]);
}

#[test]
fn set_with_unknown_key_names_the_override() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), 3, &["--set", "train.batch_sise=4"]);
    assert_fails(&out, &["--set train.batch_sise=4", "train.batch_sise", "unknown field"]);
}

#[test]
fn set_without_equals_sign_is_rejected() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), 3, &["--set", "train.max_steps"]);
    assert_fails(&out, &["--set train.max_steps", "expected key=value"]);
}

#[test]
fn set_into_a_value_that_is_not_a_section_is_rejected() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), 3, &["--set", "train.max_steps.x=1"]);
    assert_fails(&out, &["--set train.max_steps.x=1", "`max_steps`", "not a section"]);
}

#[test]
fn set_with_impossible_value_names_the_key() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), 3, &["--set", "model.n_layer=0"]);
    assert_fails(&out, &["key `model.n_layer`", "at least 1"]);
}

// ---- data ----

#[test]
fn missing_data_file_names_it() {
    let (_dir, out) = train_config("data.toml", "[data]\npath = \"nope.txt\"\n");
    assert_fails(&out, &["nope.txt", "cannot read data file"]);
}

#[test]
fn data_file_too_short_for_one_window_is_rejected() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "short.txt", "just a few bytes");
    let out = train(dir.path(), 3, &["--set", "data.path=\"short.txt\""]);
    assert_fails(&out, &["too few for one window of 17"]);
}

// ---- checkpoints ----

#[test]
fn sample_with_missing_checkpoint_names_the_path() {
    let dir = TempDir::new().unwrap();
    let out = engine_in(dir.path(), &["sample", "no-such-run"]);
    assert_fails(&out, &["checkpoint no-such-run", "no such file or directory"]);
}

#[test]
fn eval_with_missing_checkpoint_names_the_path() {
    let dir = TempDir::new().unwrap();
    let out = engine_in(dir.path(), &["eval", "no-such-run/checkpoints/step-000003"]);
    assert_fails(&out, &["no-such-run/checkpoints/step-000003", "no such file or directory"]);
}

#[test]
fn eval_of_a_directory_that_is_no_checkpoint_says_so() {
    let dir = TempDir::new().unwrap();
    let out = engine_in(dir.path(), &["eval", s(dir.path())]);
    assert_fails(&out, &[s(dir.path()), "not a checkpoint"]);
}

#[test]
fn eval_with_zero_batches_is_rejected() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let out = engine_in(dir.path(), &["eval", s(&run), "--batches", "0"]);
    assert_fails(&out, &["--batches", "at least 1"]);
}

/// Removes the checkpoint's manifest.json, as if written before manifests were, so that what
/// a test changes in it reaches the loaders' own checks: with its manifest, any change is
/// refused as a mismatch first (tests/durability.rs).
fn without_manifest(ckpt: &Path) {
    fs::remove_file(ckpt.join("manifest.json")).unwrap();
}

/// Rewrites the checkpoint's recorded config (state.json `config_toml`) with `edit` (and
/// removes its manifest).
fn edit_state_config(ckpt: &Path, edit: impl Fn(&str) -> String) {
    without_manifest(ckpt);
    let path = ckpt.join("state.json");
    let mut state: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let toml = state["config_toml"].as_str().unwrap().to_string();
    let edited = edit(&toml);
    assert_ne!(edited, toml, "the edit must change the config");
    state["config_toml"] = serde_json::Value::String(edited);
    fs::write(&path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
}

#[test]
fn checkpoint_whose_config_disagrees_with_its_weights_names_file_and_shapes() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    edit_state_config(&checkpoint_dir(&run, 3), |t| t.replace("n_embd = 16", "n_embd = 32"));
    let out = engine_in(dir.path(), &["eval", s(&run)]);
    assert_fails(&out, &["step-000003", "model.safetensors", "wte.weight", "[256, 16]", "[256, 32]"]);
    let out = engine_in(dir.path(), &["sample", s(&run), "--tokens", "5"]);
    assert_fails(&out, &["model.safetensors", "[256, 16]", "[256, 32]"]);
}

#[test]
fn checkpoint_with_garbage_weights_is_named_malformed() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    without_manifest(&checkpoint_dir(&run, 3));
    fs::write(checkpoint_dir(&run, 3).join("model.safetensors"), b"this is not a safetensors file at all").unwrap();
    let out = engine_in(dir.path(), &["eval", s(&run)]);
    assert_fails(&out, &["step-000003", "model.safetensors is malformed"]);
    fs::write(checkpoint_dir(&run, 3).join("model.safetensors"), b"").unwrap();
    let out = engine_in(dir.path(), &["sample", s(&run)]);
    assert_fails(&out, &["model.safetensors is malformed"]);
}

#[test]
fn checkpoint_missing_a_tensor_names_it() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    without_manifest(&checkpoint_dir(&run, 3));
    let path = checkpoint_dir(&run, 3).join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let dropped = "ln_f.bias";
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.tensors().into_iter().filter(|(name, _)| name != dropped).collect();
    assert_eq!(kept.len() + 1, st.len(), "the checkpoint should hold {dropped}");
    safetensors::serialize_to_file(kept, None, &path).unwrap();
    let out = engine_in(dir.path(), &["eval", s(&run)]);
    assert_fails(&out, &["model.safetensors has no tensor `ln_f.bias`"]);
}

#[test]
fn checkpoint_whose_config_describes_a_far_larger_model_is_refused_before_building_it() {
    // The fuzz target's out-of-memory (fuzz/corpus/checkpoint/oom-n_embd-16384): a 16384-wide
    // model over this checkpoint's weights used to be built (13 GB, initialised) before the
    // weights were found not to fit; now the file's size refuses it at once. A vocabulary
    // edited to 10^12 (a model that could never be allocated) likewise.
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let ckpt = checkpoint_dir(&run, 3);
    let original = fs::read_to_string(ckpt.join("state.json")).unwrap();
    edit_state_config(&ckpt, |t| t.replace("n_embd = 16", "n_embd = 16384"));
    let needles = ["step-000003", "model.safetensors holds", "too few for the model its config describes", "16384 wide"];
    assert_fails(&engine_in(dir.path(), &["eval", s(&run)]), &needles);
    fs::write(ckpt.join("state.json"), original.replace("\"vocab_size\": 256", "\"vocab_size\": 1000000000000")).unwrap();
    assert_fails(&engine_in(dir.path(), &["sample", s(&run), "--tokens", "3"]), &["model.safetensors holds", "vocabulary 1000000000000"]);
}

#[test]
fn checkpoint_with_malformed_state_json_is_named() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    without_manifest(&checkpoint_dir(&run, 3));
    fs::write(checkpoint_dir(&run, 3).join("state.json"), "{not json").unwrap();
    let out = engine_in(dir.path(), &["eval", s(&checkpoint_dir(&run, 3))]);
    assert_fails(&out, &["step-000003", "state.json is malformed"]);
}

#[test]
fn checkpoint_with_an_invalid_recorded_config_names_state_json_and_key() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    edit_state_config(&checkpoint_dir(&run, 3), |t| t.replace("n_head = 2", "n_head = 3"));
    let out = engine_in(dir.path(), &["eval", s(&run)]);
    assert_fails(&out, &["state.json", "key `model.n_embd`", "not a multiple of model.n_head (3)"]);
}

#[test]
fn resume_without_a_checkpoint_fails() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), 3, &["--resume"]);
    assert_fails(&out, &["checkpoint", "tiny", "nothing to resume", "without --resume"]);
    assert!(!dir.path().join("tiny").exists(), "a refused resume left a run directory");
}

#[test]
fn resume_with_a_different_model_names_the_shape() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let before = snapshot(&run);
    let out = train(dir.path(), 5, &["--resume", "--set", "model.context_length=32"]);
    assert_fails(&out, &["run directory", "tiny", "another shape", "model.context_length = 32 vs 16", "nothing was written", "run.name"]);
    assert!(snapshot(&run) == before, "a refused resume changed the run directory");
}

#[test]
fn training_over_a_run_of_another_shape_is_refused_and_overwrites_nothing() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let before = snapshot(&run);
    // Without --resume too: the run directory's checkpoints/latest would move to a model
    // that has nothing to do with the one there.
    let out = train(dir.path(), 5, &["--set", "model.n_layer=2"]);
    assert_fails(&out, &["run directory", "another shape", "model.n_layer = 2 vs 1", "refusing"]);
    assert!(snapshot(&run) == before, "a refused run changed the run directory");
    // The same model may start over there.
    assert_succeeds(&train(dir.path(), 2, &[]));
}

#[test]
fn training_over_a_run_of_another_kind_is_refused() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    // As if another program (engine::cli::main_with) had trained a model of its own kind there.
    edit_state_config(&checkpoint_dir(&run, 3), |t| t.replace("kind = \"gpt2\"", "kind = \"retnet\""));
    let before = snapshot(&run);
    let out = train(dir.path(), 5, &[]);
    assert_fails(&out, &["run directory", "tiny", "kind \"retnet\"", "does not know", "refusing"]);
    assert!(snapshot(&run) == before, "a refused run changed the run directory");
    // eval and sample say the same about the checkpoint.
    let out = engine_in(dir.path(), &["eval", s(&run)]);
    assert_fails(&out, &["step-000003", "kind \"retnet\"", "does not know", "\"gpt2\""]);
}

#[test]
fn unknown_model_kind_is_named_with_the_known_ones() {
    let (_dir, out) = train_config("kind.toml", "[model]\nkind = \"mamba\"\n");
    assert_fails(&out, &["kind.toml", "key `model.kind`", "unknown model kind \"mamba\"", "\"gpt2\""]);
    let (_dir, out) = train_config("kind.toml", "[model]\nkind = 3\n");
    assert_fails(&out, &["kind.toml", "key `model.kind`", "expected a string"]);
}

#[test]
fn a_key_of_another_kind_is_named() {
    let (_dir, out) = train_config("gqa.toml", "[model]\nn_kv_head = 2\n");
    assert_fails(&out, &["gqa.toml", "key `model.n_kv_head`", "not a key of kind = \"gpt2\"", "n_layer"]);
    // From --set too, blamed on the override.
    let dir = TempDir::new().unwrap();
    let out = engine_in(dir.path(), &["train", SHIPPED_CONFIG, "--set", "model.n_kv_head=2"]);
    assert_fails(&out, &["--set model.n_kv_head=2", "not a key of kind"]);
    let (_dir, out) = train_config("type.toml", "[model]\nn_layer = \"two\"\n");
    assert_fails(&out, &["type.toml", "key `model.n_layer`"]);
}

// ---- working runs ----

#[test]
fn train_writes_the_run_directory() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), 3, &[]);
    assert_succeeds(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("trained 3 steps"), "{stdout}");
    // --quiet: no progress; alerts (warnings) may still come, e.g. a data stall on a loaded
    // machine.
    let stderr = text(&out.stderr);
    assert!(stderr.lines().all(|l| l.starts_with("alert: step ")), "--quiet must print no progress: {stderr}");
    let run = dir.path().join("tiny");
    let config = fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("n_embd = 16") && config.contains("max_steps = 3"), "{config}");
    assert_eq!(fs::read_to_string(run.join("checkpoints/latest")).unwrap().trim(), "step-000003");
    for file in ["model.safetensors", "config.json", "optimizer.safetensors", "state.json"] {
        assert!(checkpoint_dir(&run, 3).join(file).is_file(), "missing {file}");
    }
    let log = fs::read_to_string(run.join("metrics.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "# step loss val_loss lr grad_norm tokens_per_s ms data_wait_ms");
    assert_eq!(lines.len(), 4, "{log}");
    let last: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(last.len(), 8, "{log}");
    assert_eq!(last[0], "3");
    assert!(last[2].parse::<f32>().unwrap().is_finite(), "the last step carries a val loss: {log}");
}

#[test]
fn eval_json_reports_a_finite_val_loss() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let out = engine_in(dir.path(), &["eval", s(&run), "--json"]);
    assert_succeeds(&out);
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let loss = v["val_loss"].as_f64().expect("val_loss is a number");
    assert!(loss.is_finite() && loss > 0.0, "{stdout}");
    assert_eq!(v["step"], 3);
    assert_eq!(v["seq_len"], 16);
    // A checkpoint directory works as well as a run directory, and gives the same loss.
    let out = engine_in(dir.path(), &["eval", s(&checkpoint_dir(&run, 3)), "--json"]);
    assert_succeeds(&out);
    let w: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v, w);
}

#[test]
fn sample_continues_the_prompt() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let out = engine_in(dir.path(), &["sample", s(&run), "--tokens", "20", "--prompt", "ROMEO:"]);
    assert_succeeds(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("ROMEO:"), "{stdout:?}");
    assert!(stdout.len() > "ROMEO:".len(), "{stdout:?}");
}

#[test]
fn resume_continues_from_the_checkpoint_step() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let out = train(dir.path(), 5, &["--resume"]);
    assert_succeeds(&out);
    assert!(text(&out.stdout).starts_with("trained 5 steps"), "{}", text(&out.stdout));
    assert!(checkpoint_dir(&run, 3).is_dir() && checkpoint_dir(&run, 5).is_dir());
    assert_eq!(fs::read_to_string(run.join("checkpoints/latest")).unwrap().trim(), "step-000005");
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(checkpoint_dir(&run, 5).join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 5);
    let log = fs::read_to_string(run.join("metrics.log")).unwrap();
    let headers = log.lines().filter(|l| l.starts_with('#')).count();
    assert_eq!(headers, 1, "one header across the resume: {log}");
    let steps: Vec<&str> = log.lines().filter(|l| !l.starts_with('#')).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(steps, ["1", "2", "3", "4", "5"], "{log}");
    let out = engine_in(dir.path(), &["eval", s(&run), "--json"]);
    assert_succeeds(&out);
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["step"], 5);
}

#[test]
fn kernels_resources_refuses_an_architecture_without_occupancy_figures() {
    let dir = TempDir::new().unwrap();
    let out = engine_in(dir.path(), &["kernels", "resources", "--arch", "sm_90", "--arch", "sm_86"]);
    assert_fails(&out, &["no occupancy figures for sm_86", "known: sm_80, sm_90"]);
}

// ---- model kinds and Hugging Face directories ----

/// The tiny run's overrides for a Llama (GQA: 2 query heads per key/value head).
const TINY_LLAMA: [&str; 6] =
    ["--set", "model.kind=llama", "--set", "model.n_kv_head=1", "--set", "model.intermediate_size=24"];

#[test]
fn a_llama_trains_evaluates_samples_and_resumes() {
    let dir = TempDir::new().unwrap();
    assert_succeeds(&train(dir.path(), 2, &TINY_LLAMA));
    let run = dir.path().join("tiny");
    let config = fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("kind = \"llama\"") && config.contains("n_kv_head = 1"), "{config}");
    let hf: serde_json::Value = serde_json::from_str(&fs::read_to_string(checkpoint_dir(&run, 2).join("config.json")).unwrap()).unwrap();
    assert_eq!((hf["architectures"][0].as_str(), hf["num_key_value_heads"].as_u64()), (Some("LlamaForCausalLM"), Some(1)));
    let out = engine_in(dir.path(), &["eval", s(&run), "--json"]);
    assert_succeeds(&out);
    let mut with_resume = TINY_LLAMA.to_vec();
    with_resume.push("--resume");
    assert_succeeds(&train(dir.path(), 3, &with_resume));
    let out = engine_in(dir.path(), &["sample", s(&run), "--tokens", "5", "--json", "--temperature", "0"]);
    assert_succeeds(&out);
    let sampled: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(sampled["tokens"].as_array().map(Vec::len), Some(5), "{sampled}");
    // A GPT-2 config aimed at the Llama's run directory is refused, naming both kinds.
    let before = snapshot(&run);
    let out = train(dir.path(), 5, &[]);
    assert_fails(&out, &["run directory", "kind \"llama\"", "this config trains kind \"gpt2\"", "nothing was written"]);
    assert!(snapshot(&run) == before, "a refused run changed the run directory");
}

/// Rewrites `src`'s model.safetensors into `dst` as `transformers` saves a GPT2LMHeadModel:
/// every name under `transformer.`, the tied `lm_head.weight` saved too, the causal-mask
/// buffers of older versions, and `extra` tensors; with the config.json beside it.
fn hf_copy(src: &Path, dst: &Path, extra: &[(&str, Vec<f32>)]) {
    use safetensors::tensor::TensorView;
    fs::create_dir_all(dst).unwrap();
    fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let bytes = fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if name == "wte.weight" {
            tensors.push(("lm_head.weight".into(), view.shape().to_vec(), view.data().to_vec()));
        }
        tensors.push((format!("transformer.{name}"), view.shape().to_vec(), view.data().to_vec()));
    }
    tensors.push(("transformer.h.0.attn.bias".into(), vec![1, 1, 2, 2], [1.0f32, 0.0, 1.0, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect()));
    for (name, values) in extra {
        tensors.push((name.to_string(), vec![values.len()], values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, shape, data)| (n.clone(), TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
}

fn eval_loss(dir: &Path, args: &[&str]) -> f64 {
    let mut all = vec!["eval", "--json", "--device", "cpu"];
    all.extend_from_slice(args);
    let out = engine_in(dir, &all);
    assert_succeeds(&out);
    serde_json::from_str::<serde_json::Value>(text(&out.stdout).trim()).unwrap()["val_loss"].as_f64().unwrap()
}

#[test]
fn a_hugging_face_directory_evaluates_like_the_checkpoint_and_fine_tunes() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let hf = dir.path().join("hf-gpt2");
    hf_copy(&checkpoint_dir(&run, 3), &hf, &[]);
    // The same 32 windows of 16 tokens: the run's batch of 2 x 16 batches, the directory's
    // default batch of 32 x 1.
    let (ours, theirs) = (eval_loss(dir.path(), &[s(&run), "--batches", "16"]), eval_loss(dir.path(), &[s(&hf), "--batches", "1"]));
    assert!((ours - theirs).abs() <= 1e-5 * ours, "checkpoint {ours} vs its save_pretrained copy {theirs}");
    let out = engine_in(dir.path(), &["sample", s(&hf), "--tokens", "4", "--temperature", "0"]);
    assert_succeeds(&out);
    // Fine-tuning: the settings come from the directory; the loss falls from the start.
    let config = write(
        dir.path(),
        "finetune.toml",
        &format!(
            "[run]\nname = \"ft\"\nout_dir = '{}'\ndevice = \"cpu\"\n[model]\ninit_from = '{}'\n[train]\nseq_len = 16\nbatch_size = 8\nmax_steps = 8\nlr = 3e-3\nwarmup_steps = 0\neval_batches = 4\n",
            dir.path().display(),
            hf.display()
        ),
    );
    let out = engine_in(dir.path(), &["train", s(&config)]);
    assert_succeeds(&out);
    assert!(text(&out.stderr).contains("initialized from") || text(&out.stdout).contains("initialized from"), "{}", text(&out.stderr));
    let tuned = eval_loss(dir.path(), &[s(&dir.path().join("ft")), "--batches", "4"]);
    let start = eval_loss(dir.path(), &[s(&hf), "--batches", "1"]);
    assert!(tuned < start, "fine-tuned val loss {tuned} did not fall below the directory's {start}");
}

#[test]
fn bad_hugging_face_directories_are_one_clear_error_each() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let ckpt = checkpoint_dir(&run, 3);
    let init = |name: &str, model: &str| -> Output {
        let config = write(dir.path(), &format!("{name}.toml"), &format!("[run]\nname = \"run-{name}\"\nout_dir = '{}'\n[model]\n{model}\n[train]\nseq_len = 16\n", dir.path().display()));
        let out = engine_in(dir.path(), &["train", s(&config), "--quiet"]);
        assert!(!dir.path().join(format!("run-{name}")).exists(), "{name}: a refused run wrote its run directory");
        out
    };
    // Missing.
    let out = init("missing", "init_from = 'no-such-dir'");
    assert_fails(&out, &["missing.toml", "key `model.init_from`", "no-such-dir", "no such directory"]);
    // A config that disagrees with the directory's, and another kind.
    let out = init("shape", &format!("init_from = '{}'\nn_layer = 3", ckpt.display()));
    assert_fails(&out, &["key `model.init_from`", "disagrees with [model]", "model.n_layer = 3 vs 1"]);
    let out = init("kind", &format!("init_from = '{}'\nkind = \"llama\"", ckpt.display()));
    assert_fails(&out, &["key `model.init_from`", "GPT2LMHeadModel (kind \"gpt2\")", "model.kind = \"llama\""]);
    // Another architecture.
    let bert = dir.path().join("bert");
    fs::create_dir_all(&bert).unwrap();
    fs::copy(ckpt.join("model.safetensors"), bert.join("model.safetensors")).unwrap();
    fs::write(bert.join("config.json"), r#"{"architectures": ["BertForMaskedLM"], "vocab_size": 256}"#).unwrap();
    let out = init("bert", &format!("init_from = '{}'", bert.display()));
    assert_fails(&out, &["BertForMaskedLM", "not one this program reads", "GPT2LMHeadModel (kind \"gpt2\")", "LlamaForCausalLM (kind \"llama\")"]);
    let out = engine_in(dir.path(), &["eval", s(&bert)]);
    assert_fails(&out, &["bert", "BertForMaskedLM", "not one this program reads"]);
    // Wrong shapes: config.json says 16 wide, the weights are 32 wide.
    let wide = dir.path().join("wide-hf");
    assert_succeeds(&train(dir.path(), 1, &["--set", "run.name=wide", "--set", "model.n_embd=32"]));
    fs::create_dir_all(&wide).unwrap();
    fs::copy(ckpt.join("config.json"), wide.join("config.json")).unwrap();
    fs::copy(checkpoint_dir(&dir.path().join("wide"), 1).join("model.safetensors"), wide.join("model.safetensors")).unwrap();
    fs::remove_dir_all(dir.path().join("wide")).ok();
    let out = init("shapes", &format!("init_from = '{}'", wide.display()));
    assert_fails(&out, &["model.safetensors", "has shape", "the model expects"]);
    // A tensor the model does not have.
    let odd = dir.path().join("odd");
    hf_copy(&ckpt, &odd, &[("transformer.h.0.adapter.weight", vec![0.5; 4])]);
    let out = engine_in(dir.path(), &["eval", s(&odd)]);
    assert_fails(&out, &["odd", "model.safetensors has tensors the model does not", "transformer.h.0.adapter.weight"]);
    // A classifier that is not the tied embedding's copy (an untied model) is not the model's.
    let untied = dir.path().join("untied");
    hf_copy(&ckpt, &untied, &[]);
    poison(&untied, "lm_head.weight", 0, 0.5);
    let out = engine_in(dir.path(), &["eval", s(&untied)]);
    assert_fails(&out, &["untied", "model.safetensors has tensors the model does not", "lm_head.weight"]);
}

#[test]
fn gpt2_blocks_are_configurable_and_checked() {
    let dir = TempDir::new().unwrap();
    let sets = ["--set", "model.bias=false", "--set", "model.activation=swiglu", "--set", "model.n_inner=24", "--set", "model.learned_positions=false"];
    assert_succeeds(&train(dir.path(), 2, &sets));
    let ckpt = checkpoint_dir(&dir.path().join("tiny"), 2);
    // No GPT2LMHeadModel has these blocks: no config.json, and no wpe or biases exported.
    assert!(!ckpt.join("config.json").exists());
    let bytes = fs::read(ckpt.join("model.safetensors")).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect();
    assert!(!names.iter().any(|n| n == "wpe.weight" || n.ends_with("c_attn.bias")), "{names:?}");
    assert_succeeds(&engine_in(dir.path(), &["eval", s(&dir.path().join("tiny"))]));
    let out = train(dir.path(), 2, &["--set", "run.name=bad", "--set", "model.activation=relu"]);
    assert_fails(&out, &["--set model.activation=relu", "key `model.activation`", "\"gelu\" or \"swiglu\""]);
}

/// Rewrites tensor `name` of `dir/model.safetensors` with element `i` set to `value` (and
/// removes the checkpoint's manifest, if it is still there).
fn poison(dir: &Path, name: &str, i: usize, value: f32) {
    use safetensors::tensor::TensorView;
    let _ = fs::remove_file(dir.join("manifest.json"));
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    let t = tensors.iter_mut().find(|(n, _, _)| n == name).expect("the tensor exists");
    t.2[4 * i..4 * i + 4].copy_from_slice(&value.to_le_bytes());
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, shape, data)| (n.clone(), TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn non_finite_weights_are_refused_by_eval_sample_resume_and_init_from() {
    let dir = TempDir::new().unwrap();
    let run = trained_run(dir.path());
    let ckpt = checkpoint_dir(&run, 3);
    poison(&ckpt, "h.0.ln_1.weight", 3, f32::NAN);
    let needles = ["step-000003", "model.safetensors", "`h.0.ln_1.weight`", "non-finite value (NaN at element 3)", "earlier checkpoint"];
    assert_fails(&engine_in(dir.path(), &["eval", s(&run)]), &needles);
    assert_fails(&engine_in(dir.path(), &["sample", s(&run), "--tokens", "3"]), &needles);
    let before = snapshot(&run);
    assert_fails(&train(dir.path(), 5, &["--resume"]), &needles);
    assert!(snapshot(&run) == before, "a refused resume changed the run directory");
    poison(&ckpt, "h.0.ln_1.weight", 3, 1.0);
    poison(&ckpt, "wte.weight", 0, f32::INFINITY);
    let config = write(dir.path(), "ft.toml", &format!("[run]\nname = \"ft\"\n[model]\ninit_from = '{}'\n[train]\nseq_len = 16\n", ckpt.display()));
    assert_fails(&engine_in(dir.path(), &["train", s(&config)]), &["`wte.weight`", "non-finite value (inf at element 0)"]);
    assert!(!dir.path().join("runs").join("ft").exists(), "a refused init_from wrote its run directory");
}

#[test]
fn size_products_that_would_wrap_are_named() {
    let dir = TempDir::new().unwrap();
    let huge = "4611686018427387904"; // 2^62: times 32 wraps a u64
    let out = engine_in(dir.path(), &["train", SHIPPED_CONFIG, "--set", &format!("train.grad_accum={huge}")]);
    assert_fails(&out, &["train.batch_size", "train.grad_accum", huge, "overflow"]);
    let out = engine_in(dir.path(), &["train", SHIPPED_CONFIG, "--set", &format!("train.eval_batches={huge}")]);
    assert_fails(&out, &["train.eval_batches", huge, "overflow"]);
    let out = engine_in(dir.path(), &["train", SHIPPED_CONFIG, "--set", "train.grad_accum=40000000"]);
    assert_fails(&out, &["too large", "1280000000 sequences", "tokens one step may hold"]);
    // An unknown section set from the command line blames the --set, and the sections listed
    // include [model].
    let out = engine_in(dir.path(), &["train", SHIPPED_CONFIG, "--set", "foo.bar=1"]);
    assert_fails(&out, &["--set foo.bar=1", "unknown field `foo`", "`model`"]);
    // `eval --batches` beyond the split evaluates all of it, never a wrapped few.
    let run = trained_run(dir.path());
    let out = engine_in(dir.path(), &["eval", s(&run), "--json", "--batches", huge]);
    assert_succeeds(&out);
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert!(v["windows"].as_u64().unwrap() > 1000 && v["val_loss"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn an_error_echoing_a_huge_value_stays_one_short_line() {
    // A 1 MiB value, from a file (a command-line argument is limited to 128 KiB).
    let (_dir, out) = train_config("huge.toml", &format!("[run]\nname = \"a/{}\"\n", "x".repeat(1 << 20)));
    let line = assert_fails(&out, &["key `run.name`", "characters left out", "xxx\""]);
    assert!(line.len() < 2200, "{} bytes", line.len());
}

#[test]
fn a_dangling_latest_resumes_from_the_newest_complete_checkpoint_and_debris_is_removed() {
    let dir = TempDir::new().unwrap();
    assert_succeeds(&train(dir.path(), 4, &["--set", "train.checkpoint_interval=2"]));
    let run = dir.path().join("tiny");
    let ckpts = run.join("checkpoints");
    // As if killed while checkpointing step 6 over this run: its temp directory half
    // written, `latest` already naming it (or gone).
    fs::create_dir_all(ckpts.join(".step-000006.tmp")).unwrap();
    fs::write(ckpts.join(".step-000006.tmp/model.safetensors"), b"partial").unwrap();
    fs::write(ckpts.join("latest"), "step-000006").unwrap();
    let out = engine_in(dir.path(), &["eval", s(&run), "--json"]);
    assert_succeeds(&out);
    assert!(text(&out.stdout).contains("\"step\":4"), "{}", text(&out.stdout));
    let mut args = vec!["--resume"];
    args.extend(["--set", "train.checkpoint_interval=2"]);
    let mut full: Vec<String> = vec!["train".into(), SHIPPED_CONFIG.into()];
    full.extend(tiny_args(dir.path(), 6));
    full.extend(args.iter().map(|a| a.to_string()));
    let out = engine_in(dir.path(), &full.iter().map(String::as_str).collect::<Vec<_>>());
    assert_succeeds(&out);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("names `step-000006`, which is no complete checkpoint") && said.contains("step-000004"), "{said}");
    assert!(said.contains("step 5/6"), "did not resume at step 5: {said}");
    assert!(!ckpts.join(".step-000006.tmp").exists(), "the temp directory of the interrupted checkpoint is still there");
    assert_eq!(fs::read_to_string(ckpts.join("latest")).unwrap(), "step-000006");
    // Without latest at all, the same.
    fs::remove_file(ckpts.join("latest")).unwrap();
    let out = engine_in(dir.path(), &["eval", s(&run), "--json"]);
    assert_succeeds(&out);
    assert!(text(&out.stdout).contains("\"step\":6"), "{}", text(&out.stdout));
}

/// Starts a long tiny run, waits for its third step, sends `signal`, and returns its output.
fn signalled_run(dir: &Path, signal: &str) -> Output {
    let mut args: Vec<String> = vec!["train".into(), SHIPPED_CONFIG.into(), "--quiet".into()];
    args.extend(tiny_args(dir, 100_000));
    let child = Command::new(ENGINE).args(&args).current_dir(dir).env_remove("RUST_BACKTRACE").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let log = dir.join("tiny").join("metrics.log");
    let started = std::time::Instant::now();
    while fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 4 {
        assert!(started.elapsed().as_secs() < 60, "the run did not reach step 3");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let number = if signal == "TERM" { libc::SIGTERM } else { libc::SIGINT };
    // SAFETY: kill(2) on the child's pid, which has not been waited for yet (still ours).
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, number) }, 0);
    child.wait_with_output().unwrap()
}

#[test]
fn sigint_and_sigterm_stop_after_the_step_with_a_checkpoint() {
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let dir = TempDir::new().unwrap();
        let out = signalled_run(dir.path(), signal);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "SIG{signal}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let line = stderr.lines().find(|l| l.starts_with("error: ")).expect("one error line");
        assert!(line.contains(&format!("interrupted by SIG{signal} after step")) && line.contains("--resume"), "{line}");
        // The checkpoint is at the step the line names, and `latest` points at it.
        let step: u64 = line.split("after step ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
        let run = dir.path().join("tiny");
        assert_eq!(fs::read_to_string(run.join("checkpoints/latest")).unwrap(), format!("step-{step:06}"));
        assert!(checkpoint_dir(&run, step).join("state.json").is_file());
        // And the run continues from there.
        assert_succeeds(&train(dir.path(), step + 1, &["--resume"]));
    }
}
