//! Runs that end badly, through the `engine` binary: a killed run's torn last lines
//! (`engine report` skips them, a resume cuts them and the steps after its checkpoint), a
//! write past the file-size limit (SIGXFSZ caught: one error line naming the file, the
//! earlier checkpoints intact, `--resume` continues), and a full disk (`/dev/full` in place
//! of a log).
//!
//! Not tested here: a full disk under a checkpoint file (that needs a small filesystem, so
//! root); its write fails through the same path as the file-size limit's (EFBIG), which is.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

mod common;

use common::{assert_fails, assert_succeeds, command_in, json_lines, set_args, text, tiny_sets, ENGINE, SHIPPED_CONFIG};

/// `engine train` of a tiny CPU model into `<dir>/tiny`, to `max_steps`, a checkpoint every
/// `every` steps, with `extra` arguments; under a file-size limit of `fsize` bytes if given.
fn train(dir: &Path, max_steps: u64, every: u64, extra: &[&str], fsize: Option<u64>) -> Output {
    let mut sets = tiny_sets(dir, "tiny", max_steps);
    sets.extend([
        "train.eval_interval=0".to_string(),
        format!("train.checkpoint_interval={every}"),
        // Fewer timing-dependent alert lines on stderr.
        "logs.alert_data_stall=0.9999".into(),
        // Telemetry on (its default interval): these tests damage and fill its file too.
        "logs.telemetry_interval_ms=1000".into(),
    ]);
    let mut args = vec!["train".to_string(), SHIPPED_CONFIG.to_string()];
    args.extend(set_args(&sets));
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = command_in(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    if let Some(limit) = fsize {
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: limit as libc::rlim_t };
                match libc::setrlimit(libc::RLIMIT_FSIZE, &r) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
    cmd.output().expect("the engine binary runs")
}

/// `metrics.jsonl`'s (step, loss bits), in order.
fn losses(run: &Path) -> Vec<(u64, u32)> {
    json_lines(&run.join("metrics.jsonl")).iter().map(|v| (v["step"].as_u64().unwrap(), (v["loss"].as_f64().unwrap() as f32).to_bits())).collect()
}

fn steps(run: &Path) -> Vec<u64> {
    losses(run).iter().map(|&(s, _)| s).collect()
}

/// metrics.log's steps (its header lines left out); every line whole.
fn log_steps(run: &Path) -> Vec<u64> {
    let text = fs::read_to_string(run.join("metrics.log")).unwrap();
    assert!(text.ends_with('\n'));
    text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(' ').next().unwrap().parse().unwrap_or_else(|e| panic!("metrics.log: {e}: {l}"))).collect()
}

fn checkpoint_events(run: &Path) -> Vec<u64> {
    json_lines(&run.join("events.jsonl")).iter().filter(|v| v["event"] == "checkpoint").map(|v| v["checkpoint"]["step"].as_u64().unwrap()).collect()
}

fn append(path: &Path, bytes: &str) {
    use std::io::Write;
    fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes.as_bytes()).unwrap();
}

fn latest(run: &Path) -> String {
    fs::read_to_string(run.join("checkpoints/latest")).unwrap()
}

fn ckpt(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:06}"))
}

#[test]
fn engine_report_skips_a_torn_last_line_of_each_file() {
    let dir = TempDir::new().unwrap();
    assert_succeeds(&train(dir.path(), 4, 2, &["--quiet"], None));
    let run = dir.path().join("tiny");
    append(&run.join("metrics.jsonl"), "{\"step\":5,\"time_s\":0.1,\"lo");
    append(&run.join("events.jsonl"), "{\"event\":\"checkpoint\",\"checkpoint\":{\"st");
    append(&run.join("telemetry.jsonl"), "{\"time_s\":");
    let out = Command::new(ENGINE).args(["report", run.to_str().unwrap()]).output().unwrap();
    let stderr = assert_succeeds(&out);
    let notes: Vec<&str> = stderr.lines().collect();
    assert_eq!(notes.len(), 3, "one note per torn file:\n{stderr}");
    for (note, file) in notes.iter().zip(["metrics.jsonl", "events.jsonl", "telemetry.jsonl"]) {
        assert!(note.starts_with("note: ") && note.contains(file) && note.contains("skipped a torn last line"), "{note}");
    }
    assert_eq!(text(&out.stdout).trim(), run.join("report.html").display().to_string());
    let page = fs::read_to_string(run.join("report.html")).unwrap();
    assert!(page.contains("skipped a torn last line"));
}

#[test]
fn a_resume_after_a_kill_cuts_torn_lines_and_the_steps_after_its_checkpoint() {
    let dir = TempDir::new().unwrap();
    assert_succeeds(&train(dir.path(), 10, 4, &["--quiet"], None));
    let run = dir.path().join("tiny");
    let uninterrupted = losses(&run);
    assert_eq!(steps(&run), (1..=10).collect::<Vec<_>>());
    // As if killed while writing its logs after step 10, before that step's checkpoint:
    // steps 9 and 10 logged past the checkpoint of step 8, and a torn line in every log.
    fs::remove_dir_all(ckpt(&run, 10)).unwrap();
    fs::write(run.join("checkpoints/latest"), "step-000008").unwrap();
    append(&run.join("metrics.jsonl"), "{\"step\":11,\"time_s\":0.1,\"lo");
    append(&run.join("metrics.log"), "11 4.12");
    append(&run.join("events.jsonl"), "{\"event\":\"checkpoint\",\"checkpoint\":{\"st");
    append(&run.join("telemetry.jsonl"), "{\"time_s\":");
    let stderr = assert_succeeds(&train(dir.path(), 10, 4, &["--resume"], None));
    for file in ["metrics.jsonl", "metrics.log", "events.jsonl", "telemetry.jsonl"] {
        let notes: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&run.join(file).display().to_string())).collect();
        assert_eq!(notes.len(), 1, "one note for {file}:\n{stderr}");
        assert!(notes[0].contains(": removed a torn last line ("), "{}", notes[0]);
        if file != "telemetry.jsonl" {
            assert!(notes[0].contains("after the checkpoint of step 8 that this run resumes from"), "{}", notes[0]);
        }
    }
    assert!(stderr.contains("2 records of steps 9 to 10"), "{stderr}");
    // Every line whole; one record per step, the resumed steps' losses as before.
    assert_eq!(losses(&run), uninterrupted);
    assert_eq!(log_steps(&run), (1..=10).collect::<Vec<_>>());
    assert_eq!(checkpoint_events(&run), [4, 8, 10]);
    assert!(json_lines(&run.join("telemetry.jsonl")).len() >= 2);
    // And the report reads it all without a note.
    let out = Command::new(ENGINE).args(["report", run.to_str().unwrap()]).output().unwrap();
    assert_eq!(assert_succeeds(&out), "");
}

#[test]
fn a_log_write_past_the_file_size_limit_is_one_error_and_resume_continues() {
    let dir = TempDir::new().unwrap();
    let run = dir.path().join("tiny");
    // Checkpoint files (under 64 KiB for this model) fit; metrics.jsonl (about 400 bytes a
    // step) outgrows the limit around step 170.
    let limit = 70_000;
    let out = train(dir.path(), 300, 10, &["--quiet"], Some(limit));
    assert_fails(&out, &[&format!("{}: File too large", run.join("metrics.jsonl").display())]);
    let size = |name: &str| fs::metadata(ckpt(&run, 10).join(name)).unwrap().len();
    assert!(size("optimizer.safetensors") < limit, "the checkpoints must fit under the limit");
    // The write was cut at the limit: a torn last line; the last checkpoint is whole.
    let torn = fs::read(run.join("metrics.jsonl")).unwrap();
    assert_eq!((torn.len() as u64, torn.last() != Some(&b'\n')), (limit, true));
    let last = latest(&run);
    let step: u64 = last.strip_prefix("step-").unwrap().parse().unwrap();
    assert!(step >= 100 && ckpt(&run, step).join("state.json").is_file(), "{last}");
    let stderr = assert_succeeds(&train(dir.path(), 300, 10, &["--resume"], None));
    assert!(stderr.contains(&format!("{}: removed a torn last line", run.join("metrics.jsonl").display())), "{stderr}");
    assert_eq!(steps(&run), (1..=300).collect::<Vec<_>>());
    assert_eq!(log_steps(&run), (1..=300).collect::<Vec<_>>());
    assert_eq!(latest(&run), "step-000300");
}

#[test]
fn a_checkpoint_past_the_file_size_limit_is_one_error_and_the_earlier_ones_stay() {
    let dir = TempDir::new().unwrap();
    let run = dir.path().join("tiny");
    assert_succeeds(&train(dir.path(), 6, 2, &["--quiet"], None));
    let six = ckpt(&run, 6);
    let (model, optimizer) = (fs::read(six.join("model.safetensors")).unwrap(), fs::read(six.join("optimizer.safetensors")).unwrap());
    // model.safetensors fits under the limit, optimizer.safetensors (twice its size) not.
    let limit = (model.len() + optimizer.len()) as u64 / 2;
    assert!(fs::metadata(run.join("metrics.jsonl")).unwrap().len() < limit / 4);
    let out = train(dir.path(), 10, 2, &["--quiet", "--resume"], Some(limit));
    let tmp = run.join("checkpoints/.step-000008.tmp");
    assert_fails(&out, &[&format!("{}: ", tmp.join("optimizer.safetensors").display()), "File too large"]);
    // The failed checkpoint is debris under its temporary name; `latest` and step 6 unmoved.
    assert!(tmp.is_dir() && !ckpt(&run, 8).exists());
    assert_eq!(latest(&run), "step-000006");
    assert!(fs::read(six.join("model.safetensors")).unwrap() == model && fs::read(six.join("optimizer.safetensors")).unwrap() == optimizer);
    // Without the limit, --resume continues from step 6: the debris goes, steps 7 and 8
    // (logged by the failed run) are logged once.
    assert_succeeds(&train(dir.path(), 10, 2, &["--quiet", "--resume"], None));
    assert!(!tmp.exists());
    assert_eq!(latest(&run), "step-000010");
    assert_eq!(steps(&run), (1..=10).collect::<Vec<_>>());
    assert_eq!(checkpoint_events(&run), [2, 4, 6, 8, 10]);
}

/// A run directory whose `name` is a symlink to /dev/full (writes fail with ENOSPC).
fn full_disk_at(dir: &Path, name: &str) -> PathBuf {
    let run = dir.join("tiny");
    fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::symlink("/dev/full", run.join(name)).unwrap();
    run
}

#[test]
fn a_full_disk_under_a_log_is_one_error_naming_it() {
    for (name, checkpointed) in [("metrics.jsonl", false), ("events.jsonl", true)] {
        let dir = TempDir::new().unwrap();
        let run = full_disk_at(dir.path(), name);
        let out = train(dir.path(), 6, 2, &["--quiet"], None);
        assert_fails(&out, &[&format!("{}: No space left on device", run.join(name).display())]);
        // events.jsonl fails on the first checkpoint's line: the checkpoint itself is in place.
        assert_eq!(run.join("checkpoints/latest").is_file(), checkpointed, "{name}");
        if checkpointed {
            assert_eq!(latest(&run), "step-000002");
        }
    }
}

#[test]
fn a_full_disk_under_telemetry_stops_telemetry_not_the_run() {
    let dir = TempDir::new().unwrap();
    let run = full_disk_at(dir.path(), "telemetry.jsonl");
    let stderr = assert_succeeds(&train(dir.path(), 6, 2, &["--quiet"], None));
    let warnings: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("alert: ")).collect();
    let path = run.join("telemetry.jsonl").display().to_string();
    let want = format!("warning: telemetry stopped: {path}: No space left on device (os error 28); training goes on");
    assert_eq!(warnings, [want.as_str()], "{stderr}");
    assert_eq!(steps(&run), (1..=6).collect::<Vec<_>>());
    // The report at the end does not read the device (reading /dev/full would never end):
    // it is not written, a warning (which --quiet keeps quiet).
    assert!(!run.join("report.html").exists());
    let out = Command::new(ENGINE).args(["report", run.to_str().unwrap()]).output().unwrap();
    let line = assert_fails(&out, &[&format!("{path}: not a regular file")]);
    assert!(line.len() < 300, "{line}");
}
