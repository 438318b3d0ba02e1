//! `engine eval RUN --task hellaswag --data FILE` and `train.hellaswag_interval`: the
//! engine's scores against an independent computation (the test's own rendering, left
//! truncation and log-softmax of the model's full logits, one row at a time), a known answer
//! (a model that memorized one ending), llm.c's `.bin` against the same examples as JSONL,
//! the training hook's metrics.jsonl fields, and one clear error per kind of bad file.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_fails, assert_succeeds, engine_in, json_lines, s, set_args, snapshot, tiny_sets, train_tiny, write, SHIPPED_CONFIG};
use engine::checkpoint::load_model_for;
use engine::kernels::{Device, Tensor};
use engine::registry::Registry;
use serde_json::{json, Value};

/// The line the memorizing model is trained on, over and over: lm-eval-harness's rendering
/// of [`MEMORIZED`] with its ending 2.
const LINE: &str = "Cooking: The chef stirs the soup. He adds salt to the pot.\n";

/// One example as the official file has it, and its two renderings written out by hand:
/// (example, harness query, harness endings, llm.c context, llm.c endings).
struct Case {
    example: Value,
    query: &'static str,
    choices: [&'static str; 4],
    ctx: &'static str,
    endings: [&'static str; 4],
}

fn example(activity: &str, ctx_a: &str, ctx_b: &str, label: Value, endings: [&str; 4]) -> Value {
    let ctx = if ctx_b.is_empty() { ctx_a.to_string() } else { format!("{ctx_a} {ctx_b}") };
    json!({"ind": 1, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx, "split": "val",
           "split_type": "indomain", "label": label, "endings": endings, "source_id": "test"})
}

/// The test's examples: the memorized one (answer 2), one with WikiHow's bracket artifacts,
/// one whose context is longer than the model's (cut from the left), one with a label as a
/// string (as the Hugging Face copy has them).
fn cases() -> Vec<Case> {
    let memorized = ["sings a song loudly.", "leaves the kitchen now.", "adds salt to the pot.", "reads a book."];
    let brackets = ["[step] Put the tree in.", "Water it  well.", "Eat the soup.", "Run away [title] fast."];
    let long_ctx_a = "A very long introduction about a kitchen, a chef, a pot, a spoon and a soup that simmers for hours.";
    let long = ["stirs it again.", "adds salt to the pot.", "goes home.", "falls asleep on the floor."];
    vec![
        Case {
            example: example("Cooking", "The chef stirs the soup.", "he", json!(2), memorized),
            query: "Cooking: The chef stirs the soup. He",
            choices: [" sings a song loudly.", " leaves the kitchen now.", " adds salt to the pot.", " reads a book."],
            ctx: "The chef stirs the soup. he",
            endings: [" sings a song loudly.", " leaves the kitchen now.", " adds salt to the pot.", " reads a book."],
        },
        Case {
            example: example("Home and Garden", "[header] How to plant a tree. [title] Dig a hole.", "", json!(0), brackets),
            // preprocess: trimmed, " [title]" -> ". ", "[...]" removed, "  " -> " " (so
            // "[step] Put" keeps the space after the bracket: two after the delimiter).
            query: "Home and Garden: How to plant a tree.. Dig a hole.",
            choices: ["  Put the tree in.", " Water it well.", " Eat the soup.", " Run away. fast."],
            ctx: "[header] How to plant a tree. [title] Dig a hole.",
            endings: [" [step] Put the tree in.", " Water it  well.", " Eat the soup.", " Run away [title] fast."],
        },
        Case {
            example: example("Cooking", long_ctx_a, "THE CHEF", json!("1"), long),
            query: "Cooking: A very long introduction about a kitchen, a chef, a pot, a spoon and a soup that simmers for hours. The chef",
            choices: [" stirs it again.", " adds salt to the pot.", " goes home.", " falls asleep on the floor."],
            ctx: "A very long introduction about a kitchen, a chef, a pot, a spoon and a soup that simmers for hours. THE CHEF",
            endings: [" stirs it again.", " adds salt to the pot.", " goes home.", " falls asleep on the floor."],
        },
        // Against a near-uniform model, the ending of most characters per token wins
        // acc_norm (per character), whatever its tokens' mean loss.
        Case {
            example: example("Words", "Say", "one word", json!(1), ["a b c d e f g h", "international", "x y z w", "1 2 3 4 5 6"]),
            query: "Words: Say One word",
            choices: [" a b c d e f g h", " international", " x y z w", " 1 2 3 4 5 6"],
            ctx: "Say one word",
            endings: [" a b c d e f g h", " international", " x y z w", " 1 2 3 4 5 6"],
        },
    ]
}

/// The right ending of each of [`cases`].
const LABELS: [usize; 4] = [2, 0, 1, 1];

fn write_jsonl(dir: &Path, name: &str, examples: &[Value]) -> PathBuf {
    let body: String = examples.iter().map(|e| format!("{e}\n")).collect();
    write(dir, name, &body)
}

/// A byte-level run of 300 steps on [`LINE`] repeated (context 64), in `dir/name`.
fn memorizing_run(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let text = write(dir, "repeated.txt", &LINE.repeat(300));
    let mut args = vec!["train".to_string(), SHIPPED_CONFIG.to_string(), "--quiet".into()];
    args.extend(set_args(&tiny_sets(dir, name, 300)));
    for set in ["model.n_embd=32", "model.context_length=64", "train.seq_len=64", "train.batch_size=4", "train.warmup_steps=10"] {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    args.extend(["--set".to_string(), format!("data.path='{}'", text.display())]);
    args.extend(extra.iter().map(|s| s.to_string()));
    assert_succeeds(&engine_in(dir, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    dir.join(name)
}

/// Summed log-likelihood of `ending` after `context` (bytes), the row cut from the left to
/// the model's context + 1 as the engine documents, from the model's full logits with the
/// test's own log-softmax in f64; and how many of the ending's tokens were scored.
fn loglik(model: &mut dyn engine::models::Model, context: &str, ending: &str) -> (f64, usize) {
    let c = model.context_length();
    let row: Vec<u32> = context.bytes().chain(ending.bytes()).map(u32::from).collect();
    let cut = row.len().saturating_sub(c + 1);
    let window = &row[cut..];
    let n = window.len() - 1;
    let x = Tensor::from_u32(&[1, n], window[..n].to_vec()).unwrap();
    assert!(model.forward(&x, None).unwrap().is_none());
    let logits = model.logits().unwrap().try_to_vec().unwrap();
    let (vp, v) = (logits.len() / n, model.vocab_size());
    let (mut total, mut scored) = (0.0f64, 0);
    for k in 0..n {
        // Target k is the row's token cut + 1 + k: scored when it is one of the ending's.
        if cut + 1 + k < context.len() {
            continue;
        }
        let row = &logits[k * vp..k * vp + v];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64));
        let lse = max + row.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
        total += row[window[k + 1] as usize] as f64 - lse;
        scored += 1;
    }
    model.release();
    (total, scored)
}

fn argmax(values: &[f64]) -> usize {
    (1..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}

#[track_caller]
fn close(engine: &Value, ours: f64, what: &str) {
    let e = engine.as_f64().unwrap_or_else(|| panic!("{what}: {engine}"));
    assert!((e - ours).abs() <= 1e-4 * ours.abs().max(1.0), "{what}: engine {e}, independent {ours}");
}

#[test]
fn scores_match_an_independent_log_softmax_and_the_memorized_ending_wins() {
    let dir = tempfile::tempdir().unwrap();
    let run = memorizing_run(dir.path(), "m", &[]);
    let cases = cases();
    let data = write_jsonl(dir.path(), "hellaswag.jsonl", &cases.iter().map(|c| c.example.clone()).collect::<Vec<_>>());
    let per_example = dir.path().join("examples.jsonl");
    let out = engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&data), "--json", "--device", "cpu", "--examples-out", s(&per_example)]);
    assert_succeeds(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let engine_rows = json_lines(&per_example);
    assert_eq!(engine_rows.len(), cases.len());

    let mut loaded = load_model_for(&run, Device::Cpu, &Registry::builtin()).unwrap();
    let model = loaded.model.as_mut();
    let (mut hits, mut hits_norm, mut hits_llmc, mut hits_llmc_norm, mut truncated) = (0, 0, 0, 0, 0);
    for (i, (case, row)) in cases.iter().zip(&engine_rows).enumerate() {
        let label = LABELS[i];
        assert_eq!(row["label"], label, "example {i}");
        let harness: Vec<(f64, usize)> = case.choices.iter().map(|c| loglik(model, case.query, c)).collect();
        let llmc: Vec<(f64, usize)> = case.endings.iter().map(|e| loglik(model, case.ctx, e)).collect();
        for k in 0..4 {
            close(&row["harness"]["loglik"][k], harness[k].0, &format!("example {i} ending {k}, harness"));
            close(&row["llmc"]["loglik"][k], llmc[k].0, &format!("example {i} ending {k}, llm.c"));
            assert_eq!(row["harness"]["tokens"][k], harness[k].1, "example {i} ending {k}");
            assert_eq!(row["llmc"]["tokens"][k], llmc[k].1, "example {i} ending {k}");
        }
        // The picks, by the definitions: summed log-likelihood; per character of the
        // ending (the leading space not counted); llm.c's mean token loss.
        let ll: Vec<f64> = harness.iter().map(|h| h.0).collect();
        let per_char: Vec<f64> = (0..4).map(|k| ll[k] / (case.choices[k].chars().count() - 1) as f64).collect();
        let llmc_ll: Vec<f64> = llmc.iter().map(|h| h.0).collect();
        let llmc_mean: Vec<f64> = llmc.iter().map(|h| h.0 / h.1 as f64).collect();
        let picks = [argmax(&ll), argmax(&per_char), argmax(&llmc_ll), argmax(&llmc_mean)];
        assert_eq!(
            [&row["pred"], &row["pred_norm"], &row["llmc_pred"], &row["llmc_pred_norm"]].map(|v| v.as_u64().unwrap() as usize),
            picks,
            "example {i}: {row}"
        );
        hits += (picks[0] == label) as usize;
        hits_norm += (picks[1] == label) as usize;
        hits_llmc += (picks[2] == label) as usize;
        hits_llmc_norm += (picks[3] == label) as usize;
        let longest = |context: &str, endings: &[&str; 4]| context.len() + endings.iter().map(|e| e.len()).max().unwrap();
        let cut = longest(case.query, &case.choices).max(longest(case.ctx, &case.endings)) > 65;
        assert_eq!(row["truncated"], cut, "example {i}");
        truncated += cut as usize;
    }
    let n = cases.len() as f64;
    assert_eq!(summary["examples"], cases.len());
    assert_eq!(summary["acc"].as_f64(), Some(hits as f64 / n), "{summary}");
    assert_eq!(summary["acc_norm"].as_f64(), Some(hits_norm as f64 / n), "{summary}");
    assert_eq!(summary["llmc_acc"].as_f64(), Some(hits_llmc as f64 / n), "{summary}");
    assert_eq!(summary["llmc_acc_norm"].as_f64(), Some(hits_llmc_norm as f64 / n), "{summary}");
    assert_eq!(summary["truncated"], truncated);
    assert!(truncated >= 1, "the long example must be cut");
    // The memorized ending wins by a wide margin, under every definition.
    let first = &engine_rows[0];
    for pick in ["pred", "pred_norm", "llmc_pred", "llmc_pred_norm"] {
        assert_eq!(first[pick], 2, "{pick}: {first}");
    }
    let ll: Vec<f64> = (0..4).map(|k| first["harness"]["loglik"][k].as_f64().unwrap()).collect();
    assert!(ll[2] > ll[0] + 10.0 && ll[2] > ll[1] + 10.0 && ll[2] > ll[3] + 10.0, "{ll:?}");

    // The model's own per-position losses (the fused cross-entropy) equal the host
    // log-softmax of its logits (Model::token_losses' default).
    let ids: Vec<u32> = LINE.bytes().map(u32::from).collect();
    let (x, y) = (Tensor::from_u32(&[2, 20], ids[..40].to_vec()).unwrap(), Tensor::from_u32(&[2, 20], ids[1..41].to_vec()).unwrap());
    let device = model.token_losses(&x, &y).unwrap().try_to_vec().unwrap();
    model.release();
    model.forward(&x, None).unwrap();
    let host = engine::models::lm_head::host_token_losses(model.logits().unwrap(), &y, model.vocab_size()).unwrap();
    assert_eq!(device.len(), 40);
    for (a, b) in device.iter().zip(&host) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }

    // The text line says the same numbers.
    let out = engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&data), "--device", "cpu"]);
    assert_succeeds(&out);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let acc_norm = format!("acc_norm {:.4}", hits_norm as f64 / n);
    assert!(text.starts_with("hellaswag: 4 examples") && text.contains(&acc_norm), "{text}");
}

/// A GPT-2-tokenizer run of a few steps (context 64), in `dir/name`.
fn gpt2_run(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let text = write(dir, "text.txt", &LINE.repeat(50));
    let mut args: Vec<String> = vec!["--set".into(), "data.tokenizer=gpt2".into(), "--set".into(), format!("data.path='{}'", text.display())];
    args.extend(["model.context_length=64", "train.seq_len=32"].iter().flat_map(|s| ["--set".to_string(), s.to_string()]));
    args.extend(extra.iter().map(|s| s.to_string()));
    assert_succeeds(&train_tiny(dir, name, 2, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    dir.join(name)
}

/// llm.c's `write_evalfile`, written here from its description: a header of 256 int32
/// (magic, version, examples, longest example in bytes), then per example uint16 values.
fn write_bin(path: &Path, examples: &[(usize, Vec<u32>, Vec<Vec<u32>>)], magic: i32) {
    let mut stream: Vec<u16> = Vec::new();
    let mut longest = 0;
    for (index, (label, context, endings)) in examples.iter().enumerate() {
        let mut e = vec![u16::MAX, 0, index as u16, *label as u16, endings.len() as u16, context.len() as u16];
        e.extend(context.iter().map(|&t| t as u16));
        for ending in endings {
            e.push(ending.len() as u16);
            e.extend(ending.iter().map(|&t| t as u16));
        }
        e[1] = (2 * e.len()) as u16;
        longest = longest.max(2 * e.len());
        stream.extend(e);
    }
    let mut header = [0i32; 256];
    header[..4].copy_from_slice(&[magic, 1, examples.len() as i32, longest as i32]);
    let mut bytes: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes.extend(stream.iter().flat_map(|v| v.to_le_bytes()));
    fs::write(path, bytes).unwrap();
}

#[test]
fn an_llmc_bin_scores_as_its_jsonl_does_with_the_gpt2_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let run = gpt2_run(dir.path(), "g", &[]);
    let cases = cases();
    let jsonl = write_jsonl(dir.path(), "hs.jsonl", &cases.iter().map(|c| c.example.clone()).collect::<Vec<_>>());
    // llm.c's rendering: ctx, then " " + ending, each encoded on its own.
    let gpt2 = engine::datasets::tokenizer("gpt2").unwrap();
    let bin_examples: Vec<(usize, Vec<u32>, Vec<Vec<u32>>)> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| (LABELS[i], gpt2.encode(c.ctx.as_bytes()), c.endings.iter().map(|e| gpt2.encode(e.as_bytes())).collect()))
        .collect();
    let bin = dir.path().join("hs.bin");
    write_bin(&bin, &bin_examples, 20240522);
    let eval = |data: &Path, out: &str| {
        let per_example = dir.path().join(out);
        let o = engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(data), "--json", "--examples-out", s(&per_example), "--rows", "3"]);
        assert_succeeds(&o);
        (serde_json::from_slice::<Value>(&o.stdout).unwrap(), json_lines(&per_example))
    };
    let (from_jsonl, jsonl_rows) = eval(&jsonl, "a.jsonl");
    let (from_bin, bin_rows) = eval(&bin, "b.jsonl");
    assert_eq!((from_jsonl["format"].as_str(), from_bin["format"].as_str()), (Some("jsonl"), Some("llmc_bin")));
    assert!(from_bin["acc"].is_null() && from_bin["acc_norm"].is_null(), "{from_bin}");
    assert!(from_jsonl["acc_norm"].is_number(), "{from_jsonl}");
    for key in ["examples", "llmc_acc", "llmc_acc_norm"] {
        assert_eq!(from_jsonl[key], from_bin[key], "{key}");
    }
    for (a, b) in jsonl_rows.iter().zip(&bin_rows) {
        assert_eq!((&a["llmc"]["tokens"], &a["llmc_pred"], &a["llmc_pred_norm"], &a["label"]), (&b["llmc"]["tokens"], &b["llmc_pred"], &b["llmc_pred_norm"], &b["label"]));
        for k in 0..4 {
            close(&a["llmc"]["loglik"][k], b["llmc"]["loglik"][k].as_f64().unwrap(), "llm.c loglik, JSONL vs .bin");
        }
    }
    // acc_norm divides by the ending's characters (the delimiter's space not counted).
    for (case, row) in cases.iter().zip(&jsonl_rows) {
        let chars: Vec<usize> = case.choices.iter().map(|c| c.chars().count() - 1).collect();
        assert_eq!(row["chars"], json!(chars));
        let per_char: Vec<f64> = (0..4).map(|k| row["harness"]["loglik"][k].as_f64().unwrap() / chars[k] as f64).collect();
        assert_eq!(row["pred_norm"], argmax(&per_char), "{row}");
    }
    assert_eq!((&jsonl_rows[3]["pred_norm"], &jsonl_rows[3]["pred"]), (&json!(1), &json!(1)), "{}", jsonl_rows[3]);
    // The harness's ending tokens are those past the query's in the encoding of the whole.
    let first = &jsonl_rows[0];
    for (k, choice) in cases[0].choices.iter().enumerate() {
        let whole = gpt2.encode(format!("{}{choice}", cases[0].query).as_bytes());
        let context = gpt2.encode(cases[0].query.as_bytes());
        assert_eq!(first["harness"]["tokens"][k], whole.len() - context.len(), "ending {k}");
    }

    // A .bin's faults, each named with the file (and the example and offset).
    let bad = dir.path().join("bad.bin");
    write_bin(&bad, &bin_examples, 20240520);
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&bad)]), &["bad.bin", "bad header: magic 20240520", "20240522"]);
    fs::write(&bad, [0u8; 100]).unwrap();
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&bad)]), &["bad.bin", "100 bytes, shorter than the 1024-byte header"]);
    let mut labels = bin_examples.clone();
    labels[1].0 = 7;
    write_bin(&bad, &labels, 20240522);
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&bad)]), &["bad.bin", "example 1 (byte offset", "label 7"]);
    let mut three = bin_examples.clone();
    three[2].2.pop();
    write_bin(&bad, &three, 20240522);
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&bad)]), &["bad.bin", "example 2", "3 endings, expected 4"]);
    let mut bytes = fs::read(&bin).unwrap();
    bytes.truncate(bytes.len() - 4);
    fs::write(&bad, bytes).unwrap();
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&bad)]), &["bad.bin", "example 3", "does not fit the file"]);
    let mut bytes = fs::read(&bin).unwrap();
    bytes.extend([1, 0]);
    fs::write(&bad, bytes).unwrap();
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&bad)]), &["bad.bin", "2 bytes after the last of the header's 4 examples"]);
}

#[test]
fn bad_hellaswag_files_and_arguments_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_succeeds(&train_tiny(dir.path(), "t", 2, &[]));
    let run = dir.path().join("t");
    let good = cases()[0].example.clone();
    let eval = |file: &Path| engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(file)]);
    let line = |v: &Value| v.to_string();
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("ctx_a");
    let mut three = good.clone();
    three["endings"].as_array_mut().unwrap().pop();
    let mut label = good.clone();
    label["label"] = json!(4);
    let mut text_label = good.clone();
    text_label["label"] = json!("four");
    let mut typed = good.clone();
    typed["ctx"] = json!(5);
    let bad: Vec<(&str, String, Vec<&str>)> = vec![
        ("notjson.jsonl", format!("{}\n{{\"ind\": 1,\n", line(&good)), vec!["notjson.jsonl line 2", "not JSON"]),
        ("missing.jsonl", format!("{}\n", line(&missing)), vec!["missing.jsonl line 1", "missing field `ctx_a`"]),
        ("three.jsonl", format!("{}\n{}\n", line(&good), line(&three)), vec!["three.jsonl line 2", "3 endings, expected 4"]),
        ("label.jsonl", format!("{}\n", line(&label)), vec!["label.jsonl line 1", "`label` is 4", "expected 0, 1, 2 or 3"]),
        ("textlabel.jsonl", format!("{}\n", line(&text_label)), vec!["textlabel.jsonl line 1", "`label` is \"four\""]),
        ("typed.jsonl", format!("{}\n", line(&typed)), vec!["typed.jsonl line 1", "invalid type: integer `5`"]),
        ("blank.jsonl", format!("{}\n\n{}\n", line(&good), line(&good)), vec!["blank.jsonl line 2", "an empty line"]),
        ("empty.jsonl", String::new(), vec!["empty.jsonl", "no HellaSwag examples"]),
        ("array.jsonl", "[1, 2]\n".into(), vec!["array.jsonl line 1", "not a HellaSwag example"]),
    ];
    for (name, body, needles) in &bad {
        let file = write(dir.path(), name, body);
        assert_fails(&eval(&file), needles);
    }
    fs::write(dir.path().join("latin1.jsonl"), b"{\"ctx\": \"caf\xe9\"}\n").unwrap();
    assert_fails(&eval(&dir.path().join("latin1.jsonl")), &["latin1.jsonl line 1", "not UTF-8"]);
    assert_fails(&eval(&dir.path().join("absent.jsonl")), &["absent.jsonl", "No such file"]);
    // A .bin holds GPT-2 tokens: a byte-level run refuses it.
    write_bin(&dir.path().join("x.bin"), &[(0, vec![1, 2], vec![vec![3]; 4])], 20240522);
    assert_fails(&eval(&dir.path().join("x.bin")), &["x.bin", "GPT-2 tokens", "byte tokenizer"]);
    // Arguments.
    let file = write_jsonl(dir.path(), "ok.jsonl", &[good]);
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag"]), &["--task hellaswag needs --data"]);
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--data", s(&file)]), &["--data", "are for --task hellaswag"]);
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&file), "--batches", "2"]), &["--batches", "--task val"]);
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&file), "--limit", "0"]), &["--limit must be at least 1"]);
    assert_fails(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&file), "--rows", "0"]), &["--rows must be at least 1"]);
    // --examples-out is written only by a command that succeeds.
    let out = dir.path().join("never.jsonl");
    assert!(!engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&dir.path().join("three.jsonl")), "--examples-out", s(&out)]).status.success());
    assert!(!out.exists());
}

#[test]
fn training_logs_hellaswag_at_its_interval_and_the_report_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_jsonl(dir.path(), "hs.jsonl", &cases().iter().map(|c| c.example.clone()).collect::<Vec<_>>());
    let hs = format!("train.hellaswag_data='{}'", data.display());
    // Off without a file to score; a bad file refuses the run before it writes anything.
    let before = snapshot(dir.path());
    assert_fails(&train_tiny(dir.path(), "off", 4, &["--set", "train.hellaswag_interval=2"]), &["train.hellaswag_interval", "needs train.hellaswag_data"]);
    let broken = write(dir.path(), "broken.jsonl", "{}\n");
    let broken_set = format!("train.hellaswag_data='{}'", broken.display());
    assert_fails(&train_tiny(dir.path(), "broken", 4, &["--set", "train.hellaswag_interval=2", "--set", &broken_set]), &["train.hellaswag_data", "broken.jsonl line 1", "missing field"]);
    let mut after = snapshot(dir.path());
    after.retain(|(p, _)| p != &broken);
    assert_eq!(before, after, "a refused run wrote something");

    assert_succeeds(&train_tiny(dir.path(), "t", 5, &["--set", "train.hellaswag_interval=2", "--set", &hs, "--set", "train.hellaswag_examples=2"]));
    let run = dir.path().join("t");
    let lines = json_lines(&run.join("metrics.jsonl"));
    let scored: Vec<u64> = lines.iter().filter(|l| l.get("hellaswag_acc_norm").is_some()).map(|l| l["step"].as_u64().unwrap()).collect();
    // Every 2 steps, and at the end.
    assert_eq!(scored, [2, 4, 5]);
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas/metrics.schema.json");
    let schema = jsonschema::validator_for(&serde_json::from_str(&fs::read_to_string(schema_path).unwrap()).unwrap()).unwrap();
    for l in &lines {
        let errors: Vec<String> = schema.iter_errors(l).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}: {l}");
    }
    // The schema holds the fields together: a line with only some of them is refused.
    let mut partial = lines[1].clone();
    partial.as_object_mut().unwrap().remove("hellaswag_examples");
    assert!(!schema.is_valid(&partial), "{partial}");
    // The last step's numbers are engine eval's on the final checkpoint, first 2 examples.
    let last = lines.last().unwrap();
    assert_eq!(last["hellaswag_examples"], 2);
    let out = engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&data), "--json", "--limit", "2"]);
    assert_succeeds(&out);
    let eval: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (logged, key) in [("hellaswag_acc", "acc"), ("hellaswag_acc_norm", "acc_norm"), ("hellaswag_llmc_acc", "llmc_acc"), ("hellaswag_llmc_acc_norm", "llmc_acc_norm")] {
        assert_eq!(last[logged], eval[key], "{logged}");
    }
    let report = fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("HellaSwag (last)") && report.contains("llmc_acc_norm"), "no HellaSwag in the report");
}

#[test]
fn a_llama_scores_through_the_same_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/llama-tiny.toml");
    let mut args = vec!["train".to_string(), s(&config).to_string(), "--quiet".into()];
    args.extend(set_args(&tiny_sets(dir.path(), "l", 20)));
    for set in ["model.n_kv_head=1", "model.intermediate_size=32", "model.context_length=64", "train.seq_len=32"] {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    assert_succeeds(&engine_in(dir.path(), &args.iter().map(String::as_str).collect::<Vec<_>>()));
    let run = dir.path().join("l");
    let cases = cases();
    let data = write_jsonl(dir.path(), "hs.jsonl", &cases.iter().map(|c| c.example.clone()).collect::<Vec<_>>());
    let per_example = dir.path().join("ex.jsonl");
    assert_succeeds(&engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&data), "--examples-out", s(&per_example), "--device", "cpu"]));
    let rows = json_lines(&per_example);
    let mut loaded = load_model_for(&run, Device::Cpu, &Registry::builtin()).unwrap();
    for (i, (case, row)) in cases.iter().zip(&rows).enumerate() {
        for k in 0..4 {
            let (ll, tokens) = loglik(loaded.model.as_mut(), case.query, case.choices[k]);
            close(&row["harness"]["loglik"][k], ll, &format!("llama, example {i} ending {k}"));
            assert_eq!(row["harness"]["tokens"][k], tokens);
        }
    }
}

/// With a usable GPU (a real one, or `scripts/cuda-sim`): the CUDA path scores as the CPU
/// does, within bf16's rounding. Without one the test prints why and passes, unless
/// ENGINE_REQUIRE_GPU=1.
#[test]
fn cuda_scores_as_the_cpu_does() {
    let found = engine::kernels::cuda::probe(0).map_err(|reason| reason.to_string());
    if let Err(reason) = found {
        assert_ne!(std::env::var("ENGINE_REQUIRE_GPU").as_deref(), Ok("1"), "ENGINE_REQUIRE_GPU=1 but there is no usable CUDA device ({reason})");
        eprintln!("skipped: no usable CUDA device ({reason})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // One head of 32: a head size the CUDA attention supports.
    let run = memorizing_run(dir.path(), "m", &["--set", "model.n_head=1"]);
    let data = write_jsonl(dir.path(), "hs.jsonl", &cases().iter().map(|c| c.example.clone()).collect::<Vec<_>>());
    let eval = |device: &str| {
        let per_example = dir.path().join(format!("{device}.jsonl"));
        let out = engine_in(dir.path(), &["eval", s(&run), "--task", "hellaswag", "--data", s(&data), "--json", "--device", device, "--examples-out", s(&per_example)]);
        assert_succeeds(&out);
        (serde_json::from_slice::<Value>(&out.stdout).unwrap(), json_lines(&per_example))
    };
    let ((cpu, cpu_rows), (gpu, gpu_rows)) = (eval("cpu"), eval("cuda"));
    assert!(gpu["device"].as_str().unwrap().starts_with("cuda"), "{gpu}");
    assert_eq!(cpu["examples"], gpu["examples"]);
    for (a, b) in cpu_rows.iter().zip(&gpu_rows) {
        for rendering in ["harness", "llmc"] {
            for k in 0..4 {
                let (x, y) = (a[rendering]["loglik"][k].as_f64().unwrap(), b[rendering]["loglik"][k].as_f64().unwrap());
                assert!((x - y).abs() <= 0.02 * x.abs() + 0.5, "{rendering} ending {k}: cpu {x}, cuda {y}");
                assert_eq!(a[rendering]["tokens"][k], b[rendering]["tokens"][k]);
            }
        }
    }
    for pick in ["pred", "pred_norm", "llmc_pred", "llmc_pred_norm"] {
        assert_eq!((&cpu_rows[0][pick], &gpu_rows[0][pick]), (&json!(2), &json!(2)), "{pick}");
    }
}
