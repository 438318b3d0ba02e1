//! The data pipeline end to end through the `engine` binary: `engine prepare` with both
//! tokenizers, training on the prepared directory, bad inputs failing cleanly, the data
//! wait column, and resume reading exactly the batches of an uninterrupted run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use datasets::{ByteTokenizer, Gpt2Tokenizer, Shard, Tokenizer, TINY_SHAKESPEARE};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

mod common;

use common::{assert_fails, assert_succeeds, engine_in, text, train_tiny};

/// Two small inputs cut from Tiny Shakespeare (blank lines inside, so GPT-2 chunks).
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("part-a.txt"), dir.join("part-b.txt"));
    fs::write(&a, &TINY_SHAKESPEARE[..30_000]).unwrap();
    fs::write(&b, &TINY_SHAKESPEARE[500_000..512_000]).unwrap();
    (a, b)
}

fn prepare(dir: &Path, tokenizer: &str, extra: &[&str]) -> Output {
    let (a, b) = inputs(dir);
    let mut args = vec!["prepare", "--tokenizer", tokenizer, a.to_str().unwrap(), b.to_str().unwrap(), "--out", "ds"];
    args.extend_from_slice(extra);
    engine_in(dir, &args)
}

/// `engine train <shipped config>` with a tiny model and `extra` overrides, in `dir`.
fn train(dir: &Path, steps: u64, extra: &[&str]) -> Output {
    train_with(dir, steps, extra, &[])
}

/// As [`train`], plus command-line `flags` such as `--resume`.
fn train_with(dir: &Path, steps: u64, extra: &[&str], flags: &[&str]) -> Output {
    let mut args: Vec<&str> = flags.to_vec();
    for set in extra {
        args.extend(["--set", set]);
    }
    train_tiny(dir, "tiny", steps, &args)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// The tokens of every shard `dataset.json` lists for `split`, concatenated.
fn split_tokens(ds: &Path, meta: &serde_json::Value, split: &str, vocab: usize) -> Vec<u32> {
    let mut all = Vec::new();
    for s in meta[split]["shards"].as_array().unwrap() {
        let shard = Shard::open(&ds.join(s["file"].as_str().unwrap()), Some(vocab)).unwrap();
        assert_eq!(shard.len() as u64, s["tokens"].as_u64().unwrap());
        all.extend(shard.to_vec());
    }
    all
}

/// metrics.log rows without the header, split into columns.
fn metrics(run: &Path) -> (String, Vec<Vec<String>>) {
    let log = fs::read_to_string(run.join("metrics.log")).unwrap();
    let header = log.lines().next().unwrap().to_string();
    let rows = log.lines().filter(|l| !l.starts_with('#')).map(|l| l.split_whitespace().map(String::from).collect()).collect();
    (header, rows)
}

#[test]
fn prepare_byte_writes_shards_and_dataset_json_then_trains_on_them() {
    let dir = TempDir::new().unwrap();
    let out = prepare(dir.path(), "byte", &["--val-fraction", "0.2", "--shard-tokens", "10000"]);
    assert_succeeds(&out);
    assert!(text(&out.stdout).starts_with("prepared ds in "), "{}", text(&out.stdout));
    let ds = dir.path().join("ds");
    let meta = json(&ds.join("dataset.json"));
    assert_eq!(meta["format"], 1);
    assert_eq!(meta["tokenizer"], "byte");
    assert_eq!(meta["vocab_size"], 256);
    assert_eq!(meta["token_bytes"], 2);
    assert!(meta["document_separator"].is_null());
    // 42,000 bytes, one token each: floor(42000 * 0.8) train.
    assert_eq!(meta["train"]["tokens"], 33_600);
    assert_eq!(meta["val"]["tokens"], 8_400);
    let files: Vec<&str> = meta["train"]["shards"].as_array().unwrap().iter().map(|s| s["file"].as_str().unwrap()).collect();
    assert_eq!(files, ["train_000000.bin", "train_000001.bin", "train_000002.bin", "train_000003.bin"]);
    let sources = meta["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    let sha: String = Sha256::digest(&TINY_SHAKESPEARE[..30_000]).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sources[0]["sha256"], sha);
    assert_eq!((sources[0]["bytes"].as_u64(), sources[1]["tokens"].as_u64()), (Some(30_000), Some(12_000)));
    // The shards hold exactly the encoded inputs, in order.
    let mut expected = ByteTokenizer.encode(&TINY_SHAKESPEARE[..30_000]);
    expected.extend(ByteTokenizer.encode(&TINY_SHAKESPEARE[500_000..512_000]));
    let mut got = split_tokens(&ds, &meta, "train", 256);
    got.extend(split_tokens(&ds, &meta, "val", 256));
    assert_eq!(got, expected);

    let out = train(dir.path(), 3, &["data.path=ds"]);
    assert_succeeds(&out);
    assert!(text(&out.stdout).starts_with("trained 3 steps"), "{}", text(&out.stdout));
    let state = json(&dir.path().join("tiny/checkpoints/step-000003/state.json"));
    // 33,600 train tokens in 4 shards of <= 10,000: floor(9999/16)*3 + floor(3599/16) windows.
    assert_eq!(state["sampler"]["windows"], 624 * 3 + 224);
    assert_eq!((state["sampler"]["epoch"].as_u64(), state["sampler"]["position"].as_u64()), (Some(0), Some(6)));
}

#[test]
fn prepare_gpt2_writes_bpe_tokens_with_document_separators_then_trains() {
    let dir = TempDir::new().unwrap();
    let out = prepare(dir.path(), "gpt2", &[]);
    assert_succeeds(&out);
    let ds = dir.path().join("ds");
    let meta = json(&ds.join("dataset.json"));
    assert_eq!((meta["tokenizer"].as_str(), meta["vocab_size"].as_u64()), (Some("gpt2"), Some(50257)));
    assert_eq!(meta["document_separator"], 50256);
    let bpe = Gpt2Tokenizer::new();
    let mut expected = vec![50256];
    expected.extend(bpe.encode(&TINY_SHAKESPEARE[..30_000]));
    expected.push(50256);
    expected.extend(bpe.encode(&TINY_SHAKESPEARE[500_000..512_000]));
    let mut got = split_tokens(&ds, &meta, "train", 50257);
    got.extend(split_tokens(&ds, &meta, "val", 50257));
    assert_eq!(got, expected);
    assert_eq!(meta["train"]["tokens"].as_u64().unwrap() as usize, (expected.len() as f64 * 0.9).floor() as usize);

    // The model's vocabulary must match the data's.
    let out = train(dir.path(), 2, &["data.path=ds"]);
    assert_fails(&out, &["data.path = ds", "gpt2 tokenizer (vocab 50257)", "data.tokenizer = \"byte\"", "set data.tokenizer = \"gpt2\""]);
    let out = train(dir.path(), 2, &["data.path=ds", "data.tokenizer=gpt2", "train.eval_interval=1"]);
    assert_succeeds(&out);
    let (_, rows) = metrics(&dir.path().join("tiny"));
    let loss: f32 = rows[0][1].parse().unwrap();
    // A fresh model over 50,257 tokens starts near ln(50257) = 10.8.
    assert!((loss - 50257f32.ln()).abs() < 1.0, "first loss {loss}");
    let out = engine_in(dir.path(), &["sample", "tiny", "--tokens", "5", "--prompt", "ROMEO:"]);
    assert_succeeds(&out);
    assert!(text(&out.stdout).starts_with("ROMEO:"), "{}", text(&out.stdout));
}

#[test]
fn prepared_tiny_shakespeare_matches_the_embedded_text_split() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("tiny.txt");
    fs::write(&input, TINY_SHAKESPEARE).unwrap();
    let out = engine_in(dir.path(), &["prepare", "--tokenizer", "byte", "tiny.txt", "--out", "ds", "--quiet"]);
    assert_succeeds(&out);
    let meta = json(&dir.path().join("ds/dataset.json"));
    let embedded = datasets::Data::open(None, "byte", 0.1).unwrap();
    assert_eq!(split_tokens(&dir.path().join("ds"), &meta, "train", 256), embedded.train.to_vec());
    assert_eq!(split_tokens(&dir.path().join("ds"), &meta, "val", 256), embedded.val.to_vec());
}

#[test]
fn prepare_with_a_missing_input_names_it() {
    let dir = TempDir::new().unwrap();
    let out = engine_in(dir.path(), &["prepare", "--tokenizer", "byte", "missing.txt", "--out", "ds"]);
    assert_fails(&out, &["cannot read data file missing.txt"]);
    assert!(!dir.path().join("ds").exists(), "nothing is written on failure");
}

#[test]
fn prepare_with_a_bad_val_fraction_is_refused() {
    let dir = TempDir::new().unwrap();
    for bad in ["1.5", "0", "1", "-0.1", "NaN"] {
        let out = prepare(dir.path(), "byte", &[&format!("--val-fraction={bad}")]);
        assert_fails(&out, &["--val-fraction must be in (0, 1), exclusive, got"]);
    }
    let out = prepare(dir.path(), "byte", &["--shard-tokens", "0"]);
    assert_fails(&out, &["--shard-tokens must be at least 1"]);
}

#[test]
fn prepare_refuses_non_utf8_for_gpt2_and_an_existing_data_set() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("bin.txt"), b"hello\n\xff\xfe world").unwrap();
    let out = engine_in(dir.path(), &["prepare", "--tokenizer", "gpt2", "bin.txt", "--out", "ds"]);
    assert_fails(&out, &["bin.txt is not valid UTF-8 (at byte 6)"]);
    assert_succeeds(&prepare(dir.path(), "byte", &[]));
    let out = prepare(dir.path(), "byte", &[]);
    assert_fails(&out, &["ds already holds a prepared data set (dataset.json)"]);
}

#[test]
fn training_on_a_damaged_data_set_names_the_problem() {
    let dir = TempDir::new().unwrap();
    assert_succeeds(&prepare(dir.path(), "byte", &[]));
    fs::create_dir(dir.path().join("plain")).unwrap();
    let out = train(dir.path(), 2, &["data.path=plain"]);
    assert_fails(&out, &["plain is a directory without a dataset.json", "engine prepare"]);
    // Cut the last shard short: the error names the file and says truncated.
    let shard = dir.path().join("ds/val_000000.bin");
    let bytes = fs::read(&shard).unwrap();
    fs::write(&shard, &bytes[..bytes.len() - 1]).unwrap();
    let out = train(dir.path(), 2, &["data.path=ds"]);
    assert_fails(&out, &["shard ds/val_000000.bin: truncated"]);
    fs::write(dir.path().join("ds/dataset.json"), "{ not json").unwrap();
    let out = train(dir.path(), 2, &["data.path=ds"]);
    assert_fails(&out, &["ds/dataset.json: malformed"]);
}

#[test]
fn metrics_log_has_a_data_wait_column() {
    let dir = TempDir::new().unwrap();
    let out = train(dir.path(), 3, &["data.num_workers=1", "data.prefetch=1"]);
    assert_succeeds(&out);
    let (header, rows) = metrics(&dir.path().join("tiny"));
    assert_eq!(header, "# step loss val_loss lr grad_norm tokens_per_s ms data_wait_ms");
    for row in &rows {
        assert_eq!(row.len(), 8, "{row:?}");
        let wait: f64 = row[7].parse().unwrap();
        let ms: f64 = row[6].parse().unwrap();
        assert!(wait >= 0.0 && wait <= ms + 0.1, "data wait {wait} ms within a {ms} ms step");
    }
    let out = train(dir.path(), 3, &["data.num_workers=0"]);
    assert_fails(&out, &["key `data.num_workers`", "at least 1"]);
}

#[test]
fn resume_reads_exactly_the_batches_of_an_uninterrupted_run() {
    // Run A: 6 steps, checkpoints at 3 and 6. Run B: the same, cut back to its step-3
    // checkpoint, then resumed to 6. Steps 4-6 must give identical losses: same weights,
    // same optimizer state and the same training windows (the sampler state in state.json;
    // batch 4 means position 6 of the epoch, not a fresh start).
    let sets = ["train.checkpoint_interval=3", "train.eval_interval=0", "data.path=ds"];
    let a = TempDir::new().unwrap();
    assert_succeeds(&prepare(a.path(), "byte", &[]));
    assert_succeeds(&train(a.path(), 6, &sets));
    let b = TempDir::new().unwrap();
    assert_succeeds(&prepare(b.path(), "byte", &[]));
    assert_succeeds(&train(b.path(), 6, &sets));
    let run_b = b.path().join("tiny");
    fs::remove_dir_all(run_b.join("checkpoints/step-000006")).unwrap();
    fs::write(run_b.join("checkpoints/latest"), "step-000003").unwrap();
    let log = fs::read_to_string(run_b.join("metrics.log")).unwrap();
    let kept: Vec<&str> = log.lines().take(4).collect(); // header + steps 1-3
    fs::write(run_b.join("metrics.log"), kept.join("\n") + "\n").unwrap();
    let state = json(&run_b.join("checkpoints/step-000003/state.json"));
    assert_eq!(state["sampler"]["position"], 6, "{state}");
    assert_succeeds(&train_with(b.path(), 6, &sets, &["--resume"]));
    let (_, rows_a) = metrics(&a.path().join("tiny"));
    let (_, rows_b) = metrics(&run_b);
    let steps: Vec<&str> = rows_b.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(steps, ["1", "2", "3", "4", "5", "6"]);
    let losses = |rows: &[Vec<String>]| rows.iter().map(|r| r[1].clone()).collect::<Vec<_>>();
    assert_eq!(losses(&rows_b), losses(&rows_a), "resumed losses differ from the uninterrupted run");
}
