//! Issue 17: the streaming `engine prepare` (text and JSONL, directories and globs, shards
//! written as they fill, resumable after a SIGKILL to byte-identical shards, clear errors
//! for bad input) and training on a directory of llm.c shards with no `dataset.json`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use common::{assert_fails, assert_succeeds, command_in, engine_in, llmc_shard, snapshot, train_tiny};
use datasets::{ByteTokenizer, Gpt2Tokenizer, Shard, Tokenizer, TINY_SHAKESPEARE};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const KILL_ENV: &str = "ENGINE_PREPARE_KILL_AFTER";

/// Documents cut from Tiny Shakespeare with a few extras: non-ASCII text, the literal
/// `<|endoftext|>` (ordinary text, never the separator id), runs of spaces and newlines.
fn documents(n: usize, seed: u64) -> Vec<String> {
    let text = std::str::from_utf8(TINY_SHAKESPEARE).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|i| {
            let start = rng.usize(0..text.len() - 5000);
            let len = rng.usize(1..3000);
            let mut doc: String = text[start..].chars().take(len).collect();
            match i % 7 {
                0 => doc.push_str(" café — naïve <|endoftext|> 東京\n\n\n  "),
                3 => doc.insert_str(0, "   \n\n"),
                _ => {}
            }
            doc
        })
        .collect()
}

fn jsonl(docs: &[String], field: &str) -> String {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        out += &serde_json::json!({ "id": i, field: d }).to_string();
        out += if i % 5 == 2 { "\r\n\n" } else { "\n" }; // a CRLF line and a blank line now and then
    }
    out
}

/// A text file of about `bytes` (paragraphs from Tiny Shakespeare, so it has blank lines
/// to cut at): big enough for several pieces.
fn big_text(bytes: usize) -> String {
    let text = std::str::from_utf8(TINY_SHAKESPEARE).unwrap();
    let mut out = String::new();
    while out.len() < bytes {
        out.push_str(text);
    }
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// The shards of `split` listed in `ds/dataset.json`, with their token counts checked.
fn shards(ds: &Path, split: &str, vocab: usize) -> Vec<Vec<u32>> {
    let meta = json(&ds.join("dataset.json"));
    meta[split]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let shard = Shard::open(&ds.join(m["file"].as_str().unwrap()), Some(vocab)).unwrap();
            assert_eq!(shard.len() as u64, m["tokens"].as_u64().unwrap());
            shard.to_vec()
        })
        .collect()
}

fn prepare(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["prepare", "--quiet"];
    all.extend_from_slice(args);
    engine_in(dir, &all)
}

/// The test corpus: `docs.jsonl`, `texts/` (two text files, one of 2.5 MB) and `more/`
/// (two JSONL files for a glob). Returns the documents in input order.
fn corpus(dir: &Path) -> Vec<String> {
    let a = documents(60, 1);
    fs::write(dir.join("docs.jsonl"), jsonl(&a, "text")).unwrap();
    fs::create_dir(dir.join("texts")).unwrap();
    let t1 = big_text(2_500_000);
    let t2 = "A short file.\nNo trailing newline".to_string();
    fs::write(dir.join("texts/b.txt"), &t2).unwrap();
    fs::write(dir.join("texts/a.txt"), &t1).unwrap();
    fs::create_dir(dir.join("more")).unwrap();
    let (m1, m2) = (documents(20, 2), documents(25, 3));
    fs::write(dir.join("more/x1.jsonl"), jsonl(&m1, "text")).unwrap();
    fs::write(dir.join("more/x2.jsonl"), jsonl(&m2, "text")).unwrap();
    fs::write(dir.join("more/skip.txt"), "not matched by the glob").unwrap();
    let mut all = a;
    all.extend([t1, t2]); // directory files sorted: a.txt, b.txt
    all.extend(m1);
    all.extend(m2);
    all
}

const CORPUS_ARGS: [&str; 3] = ["docs.jsonl", "texts", "more/*.jsonl"];

#[test]
fn tokens_decode_back_to_the_documents_byte_for_byte() {
    let dir = TempDir::new().unwrap();
    let docs = corpus(dir.path());
    let mut args = CORPUS_ARGS.to_vec();
    args.extend(["--tokenizer", "gpt2", "--out", "ds", "--val-tokens", "5000", "--shard-tokens", "30000"]);
    let out = prepare(dir.path(), &args);
    assert_succeeds(&out);
    let ds = dir.path().join("ds");
    assert!(!ds.join("prepare-state.json").exists(), "the state file goes once dataset.json is written");
    let meta = json(&ds.join("dataset.json"));
    assert_eq!(meta["val_tokens"], 5000);
    assert!(meta.get("val_fraction").is_none());
    let (val, train) = (shards(&ds, "val", 50257), shards(&ds, "train", 50257));
    // Every shard holds exactly --shard-tokens except the last of each split.
    assert_eq!(val.iter().map(Vec::len).collect::<Vec<_>>(), [5000]);
    assert!(train.len() > 3);
    assert!(train[..train.len() - 1].iter().all(|t| t.len() == 30000));
    let tokens: Vec<u32> = val.concat().into_iter().chain(train.concat()).collect();
    assert_eq!(meta["train"]["tokens"].as_u64().unwrap() + 5000, tokens.len() as u64);

    // Each document is <|endoftext|> then its ordinary encoding (llm.c's fineweb.py).
    assert_eq!(tokens[0], 50256);
    let bpe = Gpt2Tokenizer::new();
    let decoded: Vec<Vec<u8>> = tokens[1..].split(|&t| t == 50256).map(|ids| bpe.decode_bytes(ids)).collect();
    assert_eq!(decoded.len(), docs.len());
    for (i, (got, want)) in decoded.iter().zip(&docs).enumerate() {
        assert!(got == want.as_bytes(), "document {i} differs after decoding");
    }
    // The same as encoding each document whole.
    let whole: Vec<u32> = docs.iter().flat_map(|d| std::iter::once(50256).chain(bpe.encode(d.as_bytes()))).collect();
    assert!(whole == tokens, "tokens differ from encoding each document whole");

    // Sources: each file found, in order, with its size, hash and tokens.
    let sources = meta["sources"].as_array().unwrap();
    let names: Vec<&str> = sources.iter().map(|x| x["path"].as_str().unwrap()).collect();
    assert_eq!(names, ["docs.jsonl", "texts/a.txt", "texts/b.txt", "more/x1.jsonl", "more/x2.jsonl"]);
    for src in sources {
        let bytes = fs::read(dir.path().join(src["path"].as_str().unwrap())).unwrap();
        let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((src["bytes"].as_u64(), src["sha256"].as_str()), (Some(bytes.len() as u64), Some(sha.as_str())));
    }
    assert_eq!(sources.iter().map(|x| x["tokens"].as_u64().unwrap()).sum::<u64>(), tokens.len() as u64);

    // The byte tokenizer: no separator, the documents' bytes concatenated.
    let out = prepare(dir.path(), &[CORPUS_ARGS[0], CORPUS_ARGS[1], CORPUS_ARGS[2], "--tokenizer", "byte", "--out", "bytes"]);
    assert_succeeds(&out);
    let b = dir.path().join("bytes");
    let all: Vec<u32> = shards(&b, "train", 256).concat().into_iter().chain(shards(&b, "val", 256).concat()).collect();
    assert!(ByteTokenizer.decode_bytes(&all) == docs.concat().into_bytes());
    // --val-fraction (the default 0.1): the last tenth, as for a text data.path.
    assert_eq!(json(&b.join("dataset.json"))["val"]["tokens"].as_u64().unwrap(), all.len() as u64 - (all.len() as f64 * 0.9).floor() as u64);

    // --text-field and --format: a field named `content` in a file without the .jsonl name.
    fs::write(dir.path().join("c.data"), jsonl(&docs[..5], "content")).unwrap();
    let out = prepare(dir.path(), &["c.data", "--format", "jsonl", "--text-field", "content", "--tokenizer", "gpt2", "--out", "c", "--val-tokens", "10"]);
    assert_succeeds(&out);
    let c = dir.path().join("c");
    let t: Vec<u32> = shards(&c, "val", 50257).concat().into_iter().chain(shards(&c, "train", 50257).concat()).collect();
    let want: Vec<u32> = docs[..5].iter().flat_map(|d| std::iter::once(50256).chain(bpe.encode(d.as_bytes()))).collect();
    assert!(t == want);

    // The prepared directory trains.
    let out = train_tiny(dir.path(), "run", 2, &["--set", "data.path=ds", "--set", "data.tokenizer=gpt2"]);
    assert_succeeds(&out);
}

/// The inputs of the resume tests: JSONL plus a 2.5 MB text file.
fn resume_corpus(dir: &Path) {
    fs::write(dir.join("docs.jsonl"), jsonl(&documents(80, 7), "text")).unwrap();
    fs::write(dir.join("big.txt"), big_text(2_500_000)).unwrap();
}

fn resume_args<'a>(out: &'a str, val: &'a [&'a str]) -> Vec<&'a str> {
    let mut a = vec!["docs.jsonl", "big.txt", "--tokenizer", "gpt2", "--shard-tokens", "40000", "--out", out];
    a.extend_from_slice(val);
    a
}

/// The files of a data set directory by name (for comparing two directories).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    snapshot(dir).into_iter().map(|(p, b)| (p.file_name().unwrap().to_string_lossy().into_owned(), b)).collect()
}

#[test]
fn a_killed_prepare_resumes_to_byte_identical_shards() {
    let dir = TempDir::new().unwrap();
    resume_corpus(dir.path());
    for val in [&["--val-tokens", "50000"][..], &["--val-fraction", "0.15"][..]] {
        assert_succeeds(&prepare(dir.path(), &resume_args("ref", val)));
        let reference = files(&dir.path().join("ref"));
        let meta = json(&dir.path().join("ref/dataset.json"));
        let (train, total) = (meta["train"]["tokens"].as_u64().unwrap(), meta["val"]["tokens"].as_u64().unwrap() + meta["train"]["tokens"].as_u64().unwrap());
        // State saves: one before the first shard, one per streamed shard, one at the end of
        // the input; --val-fraction streams everything into train shards, then saves once
        // the val shards are carved out of the tail and once more before the cut train
        // shard replaces the streamed one.
        let last = if val[0] == "--val-fraction" { 1 + total.div_ceil(40_000) + 1 + 1 + u64::from(train % 40_000 > 0) } else { 1 + 2 + (total - 50_000).div_ceil(40_000) + 1 };
        assert!(last > 10, "{last} saves: enough shards to kill in between");
        for kill in [1, 2, 3, 7, last - 2, last - 1, last] {
            let run = format!("k{kill}{}", val[0]);
            let out = command_in(dir.path(), &[&["prepare", "--quiet"][..], &resume_args(&run, val)].concat())
                .env(KILL_ENV, kill.to_string())
                .output()
                .unwrap();
            let killed = out.status.code().is_none();
            assert!(killed, "save {kill} of {last}: not killed: {}", common::said(&out));
            if killed {
                assert!(!dir.path().join(&run).join("dataset.json").exists(), "killed at save {kill} before completion");
            }
            let again = prepare(dir.path(), &resume_args(&run, val));
            assert_succeeds(&again);
            if killed {
                assert!(common::said(&again).contains("resuming"), "{}", common::said(&again));
            }
            assert!(files(&dir.path().join(&run)) == reference, "killed at save {kill} ({val:?}): the shards differ from an uninterrupted run");
            fs::remove_dir_all(dir.path().join(&run)).unwrap();
        }
        fs::remove_dir_all(dir.path().join("ref")).unwrap();
    }
}

#[test]
fn a_prepare_killed_at_random_times_or_with_a_damaged_shard_still_ends_identical() {
    let dir = TempDir::new().unwrap();
    resume_corpus(dir.path());
    let val = ["--val-tokens", "50000"];
    let started = Instant::now();
    assert_succeeds(&prepare(dir.path(), &resume_args("ref", &val)));
    let whole = started.elapsed();
    let reference = files(&dir.path().join("ref"));
    // SIGKILL by the clock, twice in a row (at a fifth and at half of the uninterrupted run's
    // time, so the kills land mid-run however fast the machine), then finish. A run that
    // finished before its kill leaves a complete data set, which a re-run refuses: then there
    // is nothing left to finish.
    let mut finished = false;
    for fraction in [0.2, 0.5] {
        let mut child = command_in(dir.path(), &[&["prepare", "--quiet"][..], &resume_args("timed", &val)].concat()).spawn().unwrap();
        std::thread::sleep(whole.mul_f64(fraction));
        let _ = child.kill();
        finished |= child.wait().unwrap().success();
    }
    if !finished {
        assert_succeeds(&prepare(dir.path(), &resume_args("timed", &val)));
    }
    assert!(files(&dir.path().join("timed")) == reference, "timed kills: shards differ");

    // A completed shard damaged after the kill is found by its hash and written again.
    let out = command_in(dir.path(), &[&["prepare", "--quiet"][..], &resume_args("damaged", &val)].concat()).env(KILL_ENV, "6").output().unwrap();
    assert!(out.status.code().is_none(), "killed");
    let victim = dir.path().join("damaged/train_000001.bin");
    let mut bytes = fs::read(&victim).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 1;
    fs::write(&victim, bytes).unwrap();
    let again = prepare(dir.path(), &resume_args("damaged", &val));
    assert_succeeds(&again);
    assert!(common::said(&again).contains("resuming damaged: 3 shard(s) verified"), "{}", common::said(&again));
    assert!(files(&dir.path().join("damaged")) == reference, "damaged shard: not rewritten identically");
}

/// Asserts a clean refusal that leaves `dir/out` as it was (absent when it was absent).
#[track_caller]
fn refused(dir: &Path, out_name: &str, args: &[&str], needles: &[&str]) -> String {
    let out_dir = dir.join(out_name);
    let before = out_dir.exists().then(|| snapshot(&out_dir));
    let line = assert_fails(&prepare(dir, args), needles);
    assert_eq!(out_dir.exists().then(|| snapshot(&out_dir)), before, "a refused prepare changed {out_name}");
    line
}

#[test]
fn bad_input_is_one_clear_error_naming_file_and_line() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let gpt2 = |input: &str| -> Vec<String> {
        [input, "--tokenizer", "gpt2", "--out", "ds", "--val-tokens", "5"].iter().map(|x| x.to_string()).collect()
    };
    let run = |args: &[String], needles: &[&str]| {
        refused(d, "ds", &args.iter().map(String::as_str).collect::<Vec<_>>(), needles);
    };
    // Enough good lines first that a shard or two is written before the bad one is found:
    // 30 documents on 36 lines (every fifth is followed by a blank line), so the bad one is 37.
    let good = jsonl(&documents(30, 5), "text");
    fs::write(d.join("nofield.jsonl"), format!("{good}{{\"content\": \"x\"}}\n")).unwrap();
    run(&gpt2("nofield.jsonl"), &["nofield.jsonl line 37: no field \"text\" (choose the field with --text-field)"]);
    fs::write(d.join("notjson.jsonl"), format!("{good}{{\"text\": \"unterminated\n")).unwrap();
    run(&gpt2("notjson.jsonl"), &["notjson.jsonl line 37: not JSON", "a string field \"text\""]);
    fs::write(d.join("number.jsonl"), format!("{good}{{\"text\": 17}}\n")).unwrap();
    run(&gpt2("number.jsonl"), &["number.jsonl line 37: field \"text\" is a number, not a string"]);
    fs::write(d.join("array.jsonl"), "[\"text\"]\n").unwrap();
    run(&gpt2("array.jsonl"), &["array.jsonl line 1: not a JSON object with a string field \"text\""]);
    let long = format!("{{\"text\": \"{}\"}}\n", "a".repeat(17 << 20));
    fs::write(d.join("long.jsonl"), format!("{{\"text\": \"ok\"}}\n{long}")).unwrap();
    run(&gpt2("long.jsonl"), &["long.jsonl line 2: longer than 16 MiB"]);
    run(&gpt2("nomatch/*.jsonl"), &["input pattern `nomatch/*.jsonl` matches no files"]);
    run(&gpt2("missing.txt"), &["cannot read data file missing.txt"]);
    fs::create_dir(d.join("empty")).unwrap();
    run(&gpt2("empty"), &["input directory empty holds no files"]);
    fs::write(d.join("bin.txt"), b"hello\n\xff\xfe world").unwrap();
    run(&gpt2("bin.txt"), &["bin.txt is not valid UTF-8 (at byte 6)"]);
    // Past the first pieces of a big file, the offset is the file's.
    let mut big = big_text(2_500_000).into_bytes();
    big.extend(b"\n\nbad \xc3(");
    fs::write(d.join("late.txt"), &big).unwrap();
    run(&gpt2("late.txt"), &[&format!("late.txt is not valid UTF-8 (at byte {})", big.len() - 2)]);
    // GPT-2 cuts text only at a blank line between printable characters.
    fs::write(d.join("oneline.txt"), "word ".repeat(4 << 20)).unwrap();
    run(&gpt2("oneline.txt"), &["oneline.txt: no place to cut the text between byte 0 and byte 16777216", "JSONL"]);
    fs::write(d.join("few.txt"), "three tokens here").unwrap();
    let mut args = gpt2("few.txt");
    args[6] = "100".into();
    run(&args, &["the input holds 4 tokens: not more than --val-tokens 100"]);
    run(&[gpt2("few.txt"), vec!["--val-fraction".into(), "0.1".into()]].concat(), &["give --val-tokens or --val-fraction, not both"]);
    run(&[gpt2("few.txt"), vec!["--shard-tokens".into(), "0".into()]].concat(), &["--shard-tokens must be at least 1"]);
    let mut zero = gpt2("few.txt");
    zero[6] = "0".into();
    run(&zero, &["--val-tokens must be at least 1"]);

    // An output directory holding another data set, or another preparation's state.
    fs::write(d.join("ok.jsonl"), &good).unwrap();
    assert_succeeds(&prepare(d, &["ok.jsonl", "--tokenizer", "gpt2", "--out", "done", "--val-tokens", "5"]));
    refused(d, "done", &["ok.jsonl", "--tokenizer", "gpt2", "--out", "done", "--val-tokens", "5"], &["done already holds a prepared data set (dataset.json)"]);
    let killed = command_in(d, &["prepare", "--quiet", "ok.jsonl", "--tokenizer", "gpt2", "--out", "half", "--val-tokens", "5", "--shard-tokens", "1000"])
        .env(KILL_ENV, "3")
        .output()
        .unwrap();
    assert!(killed.status.code().is_none());
    refused(
        d,
        "half",
        &["ok.jsonl", "--tokenizer", "gpt2", "--out", "half", "--val-tokens", "5", "--shard-tokens", "2000"],
        &["half holds an interrupted `engine prepare` of other inputs or options (prepare-state.json: --shard-tokens 1000 there, 2000 now)"],
    );
    refused(
        d,
        "half",
        &["ok.jsonl", "bin.txt", "--tokenizer", "gpt2", "--out", "half", "--val-tokens", "5", "--shard-tokens", "1000"],
        &["prepare-state.json: 1 input files there, 2 now"],
    );
    fs::write(d.join("ok.jsonl"), format!("{good}{good}")).unwrap();
    refused(
        d,
        "half",
        &["ok.jsonl", "--tokenizer", "gpt2", "--out", "half", "--val-tokens", "5", "--shard-tokens", "1000"],
        &["input ok.jsonl changed since (size or modification time"],
    );
    fs::create_dir(d.join("foreign")).unwrap();
    fs::write(d.join("foreign/x_train_000000.bin"), b"x").unwrap();
    refused(d, "foreign", &gpt2("ok.jsonl").iter().map(|x| x.replace("ds", "foreign")).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>(), &[
        "foreign holds shard files (x_train_000000.bin) but no prepare-state.json",
    ]);
}

fn bin_snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    snapshot(dir).into_iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "bin")).collect()
}

#[test]
fn training_runs_on_a_directory_of_llmc_shards_without_dataset_json() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let bpe = Gpt2Tokenizer::new();
    let shards = d.join("fineweb10B");
    fs::create_dir(&shards).unwrap();
    let enc = |a: usize, b: usize| -> Vec<u32> { std::iter::once(50256).chain(bpe.encode(&TINY_SHAKESPEARE[a..b])).collect() };
    let (val, t1, t2) = (enc(0, 20_000), enc(20_000, 60_000), enc(60_000, 90_000));
    llmc_shard(&shards.join("fineweb_val_000000.bin"), &val);
    llmc_shard(&shards.join("fineweb_train_000001.bin"), &t1);
    llmc_shard(&shards.join("fineweb_train_000002.bin"), &t2);
    let before = snapshot(&shards);
    let out = train_tiny(d, "llmc", 3, &["--set", "data.path=fineweb10B", "--set", "data.tokenizer=gpt2"]);
    assert_succeeds(&out);
    assert!(common::text(&out.stdout).starts_with("trained 3 steps"), "{}", common::text(&out.stdout));
    assert_eq!(snapshot(&shards), before, "training wrote nothing into the shard directory");
    // The windows come from the two train shards: floor((n - 1) / 16) each.
    let state = json(&d.join("llmc/checkpoints/step-000003/state.json"));
    assert_eq!(state["sampler"]["windows"].as_u64().unwrap() as usize, (t1.len() - 1) / 16 + (t2.len() - 1) / 16);

    // `prepare --import` writes only dataset.json; the shards stay byte for byte.
    let out = engine_in(d, &["prepare", "--import", "fineweb10B", "--tokenizer", "gpt2"]);
    assert_succeeds(&out);
    assert_eq!(bin_snapshot(&shards), bin_snapshot(&d.join("fineweb10B")));
    assert_eq!(snapshot(&shards).len(), before.len() + 1);
    let meta = json(&shards.join("dataset.json"));
    let listed: Vec<(&str, u64)> =
        meta["train"]["shards"].as_array().unwrap().iter().map(|m| (m["file"].as_str().unwrap(), m["tokens"].as_u64().unwrap())).collect();
    assert_eq!(listed, [("fineweb_train_000001.bin", t1.len() as u64), ("fineweb_train_000002.bin", t2.len() as u64)]);
    assert_eq!(meta["val"]["tokens"].as_u64().unwrap(), val.len() as u64);
    assert_eq!((meta["tokenizer"].as_str(), meta["token_bytes"].as_u64()), (Some("gpt2"), Some(2)));
    let out = train_tiny(d, "imported", 3, &["--set", "data.path=fineweb10B", "--set", "data.tokenizer=gpt2"]);
    assert_succeeds(&out);
    let again = json(&d.join("imported/checkpoints/step-000003/state.json"));
    assert_eq!(again["sampler"], state["sampler"]);
    assert_fails(&engine_in(d, &["prepare", "--import", "fineweb10B", "--tokenizer", "gpt2"]), &["fineweb10B already holds a prepared data set"]);

    // llm.c's single-file naming, with the byte tokenizer's ids.
    let tiny = d.join("tiny");
    fs::create_dir(&tiny).unwrap();
    llmc_shard(&tiny.join("tinyshakespeare_train.bin"), &ByteTokenizer.encode(&TINY_SHAKESPEARE[..50_000]));
    llmc_shard(&tiny.join("tinyshakespeare_val.bin"), &ByteTokenizer.encode(&TINY_SHAKESPEARE[50_000..60_000]));
    assert_succeeds(&train_tiny(d, "tiny-run", 2, &["--set", "data.path=tiny"]));

    // Bad directories: ids past the vocabulary, one split missing, neither kind of file.
    let bad = d.join("bad");
    fs::create_dir(&bad).unwrap();
    llmc_shard(&bad.join("fineweb_train_000001.bin"), &t1);
    let out = train_tiny(d, "x", 2, &["--set", "data.path=bad", "--set", "data.tokenizer=gpt2"]);
    assert_fails(&out, &["bad: holds llm.c shards (fineweb_train_000001.bin) but no validation shard (a `*val*.bin` file)"]);
    llmc_shard(&bad.join("fineweb_val_000000.bin"), &val);
    let out = train_tiny(d, "x", 2, &["--set", "data.path=bad", "--set", "data.tokenizer=byte"]);
    assert_fails(&out, &["shard bad/fineweb_train_000001.bin: token id", "is not below the vocabulary size 256"]);
    fs::write(bad.join("notes.bin"), b"").unwrap();
    let out = train_tiny(d, "x", 2, &["--set", "data.path=bad", "--set", "data.tokenizer=gpt2"]);
    assert_fails(&out, &["bad/notes.bin: an llm.c shard name must say `train` or `val`"]);
    fs::create_dir(d.join("plain")).unwrap();
    let out = train_tiny(d, "x", 2, &["--set", "data.path=plain"]);
    assert_fails(&out, &["plain is a directory without a dataset.json or llm.c shards", "engine prepare"]);
    assert_fails(&engine_in(d, &["prepare", "--import", "plain", "--tokenizer", "gpt2"]), &["--import plain: no llm.c shards there"]);
    assert!(!d.join("plain/dataset.json").exists());
}
