//! `logs.tensorboard = true` through the `engine` binary: the event files in `<run_dir>/tb/`
//! (named, framed and checksummed as TensorBoard reads them, one record per step holding
//! every number of that step's metrics.jsonl record), a resume that starts a new file with a
//! session start at its first step, and bad settings named by their key.
//!
//! The files are read back here with the engine's own encoder (the bytes of each step's
//! event, wall time aside, must be what its metrics.jsonl record encodes to); the independent
//! check, tensorboard's own reader, is `scripts/check-tensorboard run` (scripts/test runs it),
//! and the encoder's bytes are compared with tensorboard's writer in the unit tests
//! (engine::tensorboard, fixtures/tensorboard/golden.tfevents).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_fails, assert_succeeds, json_lines, snapshot, train_tiny, write};
use engine::tensorboard::{self, encode_event, masked_crc32c, Payload};

/// The event files of `run`, in name order (the order TensorBoard reads them in).
fn event_files(run: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(run.join("tb")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// The records of an event file, each checked: its length's and its data's masked CRC32C.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc32c(&bytes[at..at + 8]), "length CRC at {at}");
        let data = &bytes[at + 12..at + 12 + len];
        assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc32c(data), "data CRC at {at}");
        out.push(data.to_vec());
        at += 16 + len;
    }
    assert_eq!(at, bytes.len(), "{} ends inside a record", path.display());
    out
}

/// An event without its wall time (field 1: a key byte and 8 bytes, first in every event).
fn without_wall_time(event: &[u8]) -> &[u8] {
    assert_eq!(event[0], 0x09, "an event starts with its wall time");
    &event[9..]
}

/// What the step's event holds, by the record metrics.jsonl has for it.
fn expected_step_event(record: &serde_json::Value) -> Vec<u8> {
    let mut values = Vec::new();
    tensorboard::flatten(record, &tensorboard::metrics_group, &["step"], &mut values);
    encode_event(0.0, record["step"].as_i64().unwrap(), &Payload::Scalars(&values))
}

#[test]
fn every_step_is_in_the_event_file_and_a_resume_starts_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("tb");
    let on = ["--set", "logs.tensorboard=true", "--set", "train.checkpoint_interval=2", "--set", "train.eval_interval=3"];
    assert_succeeds(&train_tiny(dir.path(), "tb", 6, &on));
    let files = event_files(&run);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    let parts: Vec<&str> = name.strip_prefix("events.out.tfevents.").expect(&name).split('.').collect();
    let host = tensorboard::hostname();
    assert_eq!(parts.len(), 3 + host.split('.').count(), "{name}");
    assert!(parts[0].len() == 10 && parts[0].parse::<u64>().is_ok(), "{name}");
    assert!(name.contains(&format!(".{host}.")) && parts[parts.len() - 1].parse::<u32>().is_ok(), "{name}");
    let check = |file: &Path, start: u64, steps: &[serde_json::Value]| {
        let events = records(file);
        assert_eq!(events[0][9..], encode_event(0.0, 0, &Payload::FileVersion)[..], "file_version first");
        assert_eq!(without_wall_time(&events[1]), encode_event(0.0, start as i64 + 1, &Payload::SessionStart), "then the session start");
        let config = fs::read_to_string(run.join("config.toml")).unwrap();
        let text = String::from_utf8_lossy(&events[2]).into_owned();
        assert!(text.contains("    [train]") && text.contains("tensorboard = true") && text.contains("text"), "the config text: {text}");
        if start == 0 {
            assert!(config.lines().all(|l| l.is_empty() || text.contains(&format!("    {l}\n"))), "{text}");
        }
        let got: Vec<&[u8]> = events[3..].iter().map(|e| without_wall_time(e)).collect();
        let want: Vec<Vec<u8>> = steps.iter().map(expected_step_event).collect();
        assert_eq!(got.len(), want.len(), "one event per step");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, &w.as_slice(), "step {}", steps[i]["step"]);
        }
    };
    let first = json_lines(&run.join("metrics.jsonl"));
    assert_eq!(first.len(), 6);
    assert!(first[2]["val_loss"].is_number(), "step 3 evaluates");
    check(&files[0], 0, &first);
    let first_bytes = fs::read(&files[0]).unwrap();

    // Resume from step 2's checkpoint: steps 3-8 are trained (3-6 again) into a new file;
    // the first one is left as it was.
    assert_succeeds(&train_tiny(dir.path(), "tb", 8, &[&on[..], &["--resume-step", "2"][..]].concat()));
    let files = event_files(&run);
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(fs::read(&files[0]).unwrap(), first_bytes);
    let all = json_lines(&run.join("metrics.jsonl"));
    assert_eq!(all.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
    check(&files[1], 2, &all[2..]);
}

#[test]
fn tensorboard_is_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    assert_succeeds(&train_tiny(dir.path(), "off", 2, &[]));
    assert!(dir.path().join("off/metrics.jsonl").is_file());
    assert!(!dir.path().join("off/tb").exists());
}

#[test]
fn bad_tensorboard_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "bad.toml", "[logs]\ntensorboard = \"yes\"\n");
    let before = snapshot(dir.path());
    let out = common::engine_in(dir.path(), &["train", config.to_str().unwrap(), "--quiet"]);
    assert_fails(&out, &["bad.toml", "logs.tensorboard"]);
    let out = train_tiny(dir.path(), "bad", 2, &["--set", "logs.tensorboard=true", "--set", "logs.enabled=false"]);
    assert_fails(&out, &["key `logs.tensorboard`", "logs.enabled = true"]);
    let out = train_tiny(dir.path(), "bad", 2, &["--set", "logs.tensorboard=1"]);
    assert_fails(&out, &["--set logs.tensorboard=1", "logs.tensorboard"]);
    assert!(snapshot(dir.path()) == before, "a refused run wrote something");
}
