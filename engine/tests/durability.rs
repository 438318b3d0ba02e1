//! Durable checkpoints and the run-directory lock: every checkpoint file and directory is
//! fsynced; `manifest.json` catches a changed, truncated or missing file and a checkpoint of
//! another run; `--resume` falls back past a bad `latest` to the newest checkpoint that
//! verifies; `--resume-step` continues from the step asked for, bit for bit;
//! `train.keep_checkpoints` / `train.keep_best` prune; a second `train` on a run directory in
//! use is refused with the holder's pid.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine::checkpoint::{self, fsync_count};
use engine::config::Config;
use engine::kernels::Device;
use engine::manifest::{sha256_hex, Manifest};
use engine::models::Precision;
use engine::optim::AdamW;
use engine::registry::Registry;
use engine::train::{adamw_config, train as train_lib, TrainOptions};
use tempfile::TempDir;

mod common;

use common::{assert_fails, assert_succeeds, checkpoint_dir as ckpt, command_in, engine_in as engine, s, said, set_args, snapshot, text, tiny_sets, ENGINE, SHIPPED_CONFIG};

/// In-process runs and saves take this, so the fsync counter counts one test's calls only.
static IN_PROCESS: Mutex<()> = Mutex::new(());

/// `engine train <shipped config> <tiny run `name`> <extra...>` in `dir` (progress shown
/// unless `extra` says `--quiet`).
fn train(dir: &Path, name: &str, max_steps: u64, extra: &[&str]) -> Output {
    let mut args = vec!["train".to_string(), SHIPPED_CONFIG.to_string()];
    args.extend(set_args(&tiny_sets(dir, name, max_steps)));
    args.extend(extra.iter().map(|s| s.to_string()));
    command_in(dir, &args.iter().map(String::as_str).collect::<Vec<_>>()).output().expect("the engine binary runs")
}

/// Flips every bit of the last byte of `path` (in model.safetensors: a weight's last byte,
/// still a well-formed file).
fn flip_last_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    fs::write(path, bytes).unwrap();
}

/// The steps of the run's checkpoints.
fn steps(run: &Path) -> Vec<u64> {
    checkpoint::checkpoints(run).into_iter().map(|(step, _)| step).collect()
}

fn read_manifest(dir: &Path) -> Manifest {
    serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn every_checkpoint_file_and_directory_is_fsynced_and_listed_in_the_manifest() {
    let _serial = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new().unwrap();
    let config = Config::load(Path::new(SHIPPED_CONFIG), &tiny_sets(dir.path(), "sync", 1)).unwrap();
    let before = fsync_count();
    let summary = train_lib(&config, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    // A fresh run directory: run_id (file, directory), checkpoints/ created (the run
    // directory), then one checkpoint as below.
    assert_eq!(fsync_count() - before, 2 + 1 + 9, "fsyncs of a fresh one-checkpoint run");

    // Another save into the same run directory: its 5 files, the temporary directory, then
    // checkpoints/ after the rename; latest's temporary file, then checkpoints/ again.
    let run = summary.run_dir.clone();
    let loaded = checkpoint::load_model(&summary.checkpoint, Device::Cpu, Precision::Fp32, &Registry::builtin()).unwrap();
    let opt = AdamW::try_new(adamw_config(&config), loaded.model.as_ref()).unwrap();
    let mut state = loaded.state.clone().unwrap();
    state.step = 2;
    let before = fsync_count();
    let saved = checkpoint::save(&run, loaded.model.as_ref(), &opt, &state).unwrap();
    assert_eq!(fsync_count() - before, 5 + 1 + 1 + 1 + 1, "fsyncs of one save");
    assert_eq!(saved, ckpt(&run, 2));

    // The manifest: every other file with its size and hash, the step and the run's id.
    assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let manifest = read_manifest(&saved);
    let run_id = fs::read_to_string(run.join("run_id")).unwrap();
    assert_eq!(run_id.len(), 32, "{run_id:?}");
    assert_eq!((manifest.format, manifest.step, manifest.run_id.as_deref()), (1, 2, Some(run_id.as_str())));
    let names: Vec<&str> = manifest.files.keys().map(String::as_str).collect();
    assert_eq!(names, ["config.json", "model.safetensors", "optimizer.safetensors", "state.json"]);
    for (name, entry) in &manifest.files {
        let bytes = fs::read(saved.join(name)).unwrap();
        assert_eq!((entry.bytes, entry.sha256.as_str()), (bytes.len() as u64, sha256_hex(&bytes).as_str()), "{name}");
    }
    let state_json: serde_json::Value = serde_json::from_str(&fs::read_to_string(saved.join("state.json")).unwrap()).unwrap();
    assert_eq!(state_json["run_id"].as_str(), Some(run_id.as_str()));
    assert_eq!(fs::read_to_string(run.join("checkpoints/latest")).unwrap(), "step-000002");
    assert!(!run.join(".lock").exists(), "the lock file outlived the run");
}

#[test]
fn a_changed_truncated_or_missing_file_is_refused_naming_it() {
    let dir = TempDir::new().unwrap();
    assert_succeeds(&train(dir.path(), "x", 3, &["--quiet"]));
    let run = dir.path().join("x");
    let c = ckpt(&run, 3);
    let model = c.join("model.safetensors");
    let pristine = fs::read(&model).unwrap();
    flip_last_byte(&model);
    let needles = ["step-000003", "model.safetensors does not match manifest.json", "sha256"];
    assert_fails(&engine(dir.path(), &["eval", s(&c)]), &needles);
    assert_fails(&engine(dir.path(), &["eval", s(&run)]), &needles);
    assert_fails(&engine(dir.path(), &["sample", s(&run), "--tokens", "3"]), &needles);
    let err = checkpoint::load_model(&c, Device::Cpu, Precision::Fp32, &Registry::builtin()).err().expect("refused");
    assert!(err.to_string().contains("model.safetensors does not match manifest.json"), "{err}");
    let err = checkpoint::read_state(&c, &Registry::builtin()).err().expect("refused");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    // Resume (and training over it) refuse, before writing anything.
    let before = snapshot(&run);
    assert_fails(&train(dir.path(), "x", 5, &["--resume", "--quiet"]), &["no checkpoint that verifies", "model.safetensors", "sha256"]);
    assert!(snapshot(&run) == before, "a refused resume changed the run directory");
    // One byte more: the size.
    let mut longer = pristine.clone();
    longer.push(0);
    fs::write(&model, &longer).unwrap();
    assert_fails(&engine(dir.path(), &["eval", s(&c)]), &["model.safetensors does not match manifest.json", "bytes"]);
    fs::write(&model, &pristine).unwrap();
    assert_succeeds(&engine(dir.path(), &["eval", s(&c)]));
    // A listed file gone; an unlisted one added is fine.
    fs::write(c.join("notes.txt"), "mine").unwrap();
    assert_succeeds(&engine(dir.path(), &["eval", s(&c)]));
    fs::rename(c.join("config.json"), dir.path().join("config.json")).unwrap();
    assert_fails(&engine(dir.path(), &["eval", s(&c)]), &["config.json is missing", "manifest.json lists it"]);
}

#[test]
fn an_optimizer_or_checkpoint_from_another_run_is_refused() {
    let dir = TempDir::new().unwrap();
    assert_succeeds(&train(dir.path(), "a", 3, &["--quiet"]));
    assert_succeeds(&train(dir.path(), "b", 3, &["--quiet", "--set", "run.seed=7"]));
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (ca, cb) = (ckpt(&a, 3), ckpt(&b, 3));
    // b's optimizer state in a's checkpoint.
    let ours = fs::read(ca.join("optimizer.safetensors")).unwrap();
    fs::copy(cb.join("optimizer.safetensors"), ca.join("optimizer.safetensors")).unwrap();
    let needles = ["optimizer.safetensors does not match manifest.json", "sha256"];
    assert_fails(&engine(dir.path(), &["eval", s(&ca)]), &needles);
    assert_fails(&train(dir.path(), "a", 5, &["--resume", "--quiet"]), &needles);
    assert_fails(&train(dir.path(), "a", 5, &["--resume-step", "3", "--quiet"]), &needles);
    fs::write(ca.join("optimizer.safetensors"), ours).unwrap();

    // A manifest that disagrees with state.json about the step or the run.
    let pristine = fs::read_to_string(ca.join("manifest.json")).unwrap();
    let mut m = read_manifest(&ca);
    m.step = 2;
    fs::write(ca.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
    assert_fails(&engine(dir.path(), &["eval", s(&ca)]), &["state.json records step 3, manifest.json step 2"]);
    let mut m = read_manifest(&cb);
    m.files = read_manifest(&ca).files;
    m.step = 3;
    fs::write(ca.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
    assert_fails(&engine(dir.path(), &["eval", s(&ca)]), &["state.json records run_id", "they come from different runs"]);
    fs::write(ca.join("manifest.json"), pristine).unwrap();

    // b's whole checkpoint copied into a: consistent in itself (eval of that directory reads
    // it), but not a's, so a's run directory does not continue it.
    let a_id = fs::read_to_string(a.join("run_id")).unwrap();
    let b_id = fs::read_to_string(b.join("run_id")).unwrap();
    assert_ne!(a_id, b_id);
    let foreign = ckpt(&a, 4);
    fs::create_dir_all(&foreign).unwrap();
    for entry in fs::read_dir(&cb).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), foreign.join(entry.file_name())).unwrap();
    }
    // (its state says step 3; make it a step-4 checkpoint of b, as b would have written)
    let mut state: serde_json::Value = serde_json::from_str(&fs::read_to_string(foreign.join("state.json")).unwrap()).unwrap();
    state["step"] = 4.into();
    let state_text = serde_json::to_string_pretty(&state).unwrap();
    fs::write(foreign.join("state.json"), &state_text).unwrap();
    let mut m = read_manifest(&foreign);
    m.step = 4;
    let entry = m.files.get_mut("state.json").unwrap();
    (entry.bytes, entry.sha256) = (state_text.len() as u64, sha256_hex(state_text.as_bytes()));
    fs::write(foreign.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
    fs::write(a.join("checkpoints/latest"), "step-000004").unwrap();
    assert_succeeds(&engine(dir.path(), &["eval", s(&foreign)]));
    let line = assert_fails(&train(dir.path(), "a", 6, &["--resume-step", "4", "--quiet"]), &["--resume-step 4", "comes from another run", &b_id, &a_id]);
    assert!(line.contains("steps 3, 4"), "{line}");
    // Plain --resume passes it over for a's own newest, and says so.
    let out = train(dir.path(), "a", 5, &["--resume"]);
    assert_succeeds(&out);
    let all = said(&out);
    assert!(all.contains("checkpoints/latest names `step-000004`, which fails verification") && all.contains("comes from another run"), "{all}");
    assert!(all.contains("using the newest complete checkpoint that verifies") && all.contains("step-000003"), "{all}");
    assert!(all.contains("step 4/5"), "did not resume at step 4: {all}");
}

#[test]
fn a_bad_latest_resumes_from_the_newest_checkpoint_that_verifies() {
    let dir = TempDir::new().unwrap();
    assert_succeeds(&train(dir.path(), "x", 6, &["--quiet", "--set", "train.checkpoint_interval=2"]));
    let run = dir.path().join("x");
    let latest = run.join("checkpoints/latest");
    // latest names a checkpoint whose weights were damaged.
    flip_last_byte(&ckpt(&run, 6).join("model.safetensors"));
    let out = engine(dir.path(), &["eval", s(&run), "--json"]);
    assert_succeeds(&out);
    assert!(text(&out.stdout).contains("\"step\":4"), "{}", text(&out.stdout));
    let out = train(dir.path(), "x", 7, &["--resume", "--set", "train.checkpoint_interval=2"]);
    assert_succeeds(&out);
    let all = said(&out);
    let notes: Vec<&str> = all.lines().filter(|l| l.contains("which fails verification")).collect();
    assert_eq!(notes.len(), 1, "one note: {all}");
    assert!(notes[0].contains("names `step-000006`") && notes[0].contains("model.safetensors does not match") && notes[0].contains("step-000004"), "{}", notes[0]);
    assert!(all.contains("step 5/7"), "did not resume at step 5: {all}");
    assert_eq!(fs::read_to_string(&latest).unwrap(), "step-000007");

    // latest gone, and the newest checkpoint damaged: the one before, naming what was passed over.
    fs::remove_file(&latest).unwrap();
    flip_last_byte(&ckpt(&run, 7).join("optimizer.safetensors"));
    let out = train(dir.path(), "x", 7, &["--resume"]);
    assert_succeeds(&out);
    let all = said(&out);
    assert!(all.contains("checkpoints/latest is missing; using the newest complete checkpoint that verifies"), "{all}");
    assert!(all.contains("step-000006") && all.contains("newer ones fail verification") && all.contains("optimizer.safetensors"), "{all}");
    assert!(all.contains("step 7/7"), "did not resume at step 7: {all}");

    // latest dangling.
    fs::write(&latest, "step-000009").unwrap();
    let out = train(dir.path(), "x", 8, &["--resume"]);
    assert_succeeds(&out);
    let all = said(&out);
    assert!(all.contains("names `step-000009`, which is no complete checkpoint") && all.contains("step 8/8"), "{all}");
}

#[test]
fn a_checkpoint_without_a_manifest_loads_with_one_note() {
    let dir = TempDir::new().unwrap();
    assert_succeeds(&train(dir.path(), "x", 3, &["--quiet"]));
    let run = dir.path().join("x");
    // As written before manifests (and run ids) were.
    fs::remove_file(ckpt(&run, 3).join("manifest.json")).unwrap();
    fs::remove_file(run.join("run_id")).unwrap();
    assert_succeeds(&engine(dir.path(), &["eval", s(&run)]));
    let out = train(dir.path(), "x", 4, &["--resume"]);
    assert_succeeds(&out);
    let all = said(&out);
    assert_eq!(all.matches("no manifest; not verified").count(), 1, "{all}");
    assert!(all.contains("step 4/4"), "{all}");
    // The run directory has an id again, and its new checkpoint a manifest.
    let id = fs::read_to_string(run.join("run_id")).unwrap();
    assert_eq!(read_manifest(&ckpt(&run, 4)).run_id.as_deref(), Some(id.as_str()));
}

#[test]
fn resume_step_continues_from_that_checkpoint_bit_for_bit() {
    let dir = TempDir::new().unwrap();
    let interval = ["--quiet", "--set", "train.checkpoint_interval=2"];
    assert_succeeds(&train(dir.path(), "whole", 6, &interval));
    assert_succeeds(&train(dir.path(), "again", 6, &interval));
    let (whole, again) = (dir.path().join("whole"), dir.path().join("again"));

    // Steps that have no checkpoint are refused, listing those that have; nothing written.
    let before = snapshot(&again);
    let line = assert_fails(&train(dir.path(), "again", 6, &["--resume-step", "3", "--quiet"]), &["--resume-step 3", "no checkpoint of step 3"]);
    assert!(line.contains("steps 2, 4, 6"), "{line}");
    assert!(snapshot(&again) == before, "a refused resume changed the run directory");
    // So is a damaged one.
    let model4 = ckpt(&again, 4).join("model.safetensors");
    let pristine = fs::read(&model4).unwrap();
    flip_last_byte(&model4);
    let line = assert_fails(&train(dir.path(), "again", 6, &["--resume-step", "4", "--quiet"]), &["--resume-step 4", "model.safetensors does not match"]);
    assert!(line.contains("steps 2, 4, 6"), "{line}");
    fs::write(&model4, pristine).unwrap();

    // From step 2 to 6 again: the weights and AdamW moments of an uninterrupted run.
    let out = train(dir.path(), "again", 6, &["--resume-step", "2", "--set", "train.checkpoint_interval=2"]);
    assert_succeeds(&out);
    assert!(said(&out).contains("step 3/6"), "did not resume at step 3: {}", said(&out));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(fs::read(ckpt(&whole, 6).join(file)).unwrap() == fs::read(ckpt(&again, 6).join(file)).unwrap(), "{file} differs");
    }
    let losses = |run: &Path| -> Vec<String> {
        let log = fs::read_to_string(run.join("metrics.log")).unwrap();
        log.lines().filter(|l| !l.starts_with('#')).map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect()
    };
    // metrics.log: the resume cut the records after step 2 (crate::journal) and logged
    // steps 3-6 again, with the uninterrupted run's losses.
    let (w, a) = (losses(&whole), losses(&again));
    assert_eq!(a.len(), 6, "{a:?}");
    assert_eq!(a, w, "the resumed steps' losses differ");
}

#[test]
fn keep_checkpoints_keeps_the_newest_and_keep_best_the_best() {
    let dir = TempDir::new().unwrap();
    let every = ["--quiet", "--set", "train.checkpoint_interval=1", "--set", "train.eval_interval=1"];
    let mut keep2 = every.to_vec();
    keep2.extend(["--set", "train.keep_checkpoints=2"]);
    assert_succeeds(&train(dir.path(), "k", 6, &keep2));
    let run = dir.path().join("k");
    assert_eq!(steps(&run), [5, 6]);
    assert_eq!(fs::read_to_string(run.join("checkpoints/latest")).unwrap(), "step-000006");
    assert!(fs::read_dir(run.join("checkpoints")).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));

    // keep_best: step 1 made the best (its recorded val_loss lowest) is kept beside the newest two.
    assert_succeeds(&train(dir.path(), "b", 3, &every));
    let run = dir.path().join("b");
    let path = ckpt(&run, 1).join("state.json");
    let mut state: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    state["val_loss"] = 0.001.into();
    fs::write(&path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    let mut best = keep2.clone();
    best.extend(["--resume", "--set", "train.keep_best=true"]);
    assert_succeeds(&train(dir.path(), "b", 6, &best));
    assert_eq!(steps(&run), [1, 5, 6]);
    // Without keep_best, it goes too.
    let mut plain = keep2.clone();
    plain.push("--resume");
    assert_succeeds(&train(dir.path(), "b", 7, &plain));
    assert_eq!(steps(&run), [6, 7]);

    // Checkpoints beyond the step resumed from (an abandoned continuation) are left alone.
    assert_succeeds(&train(dir.path(), "r", 6, &["--quiet", "--set", "train.checkpoint_interval=2"]));
    let run = dir.path().join("r");
    let args = ["--quiet", "--resume-step", "2", "--set", "train.checkpoint_interval=1", "--set", "train.keep_checkpoints=1"];
    assert_succeeds(&train(dir.path(), "r", 3, &args));
    assert_eq!(steps(&run), [3, 4, 6]);

    // Bad values name the key.
    let out = train(dir.path(), "v", 2, &["--set", "train.keep_best=true"]);
    assert_fails(&out, &["key `train.keep_best`", "train.keep_checkpoints"]);
    let out = train(dir.path(), "v", 2, &["--set", "train.keep_checkpoints=-1"]);
    assert_fails(&out, &["train.keep_checkpoints"]);
    let out = train(dir.path(), "v", 2, &["--set", "train.keep_best=3"]);
    assert_fails(&out, &["train.keep_best"]);
}

#[test]
fn a_second_run_on_a_directory_in_use_is_refused_and_the_first_finishes() {
    let dir = TempDir::new().unwrap();
    let mut args = vec!["train".to_string(), SHIPPED_CONFIG.to_string(), "--quiet".into()];
    for set in tiny_sets(dir.path(), "busy", 100_000) {
        args.extend(["--set".to_string(), set]);
    }
    let mut first = Command::new(ENGINE).args(&args).current_dir(dir.path()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let run = dir.path().join("busy");
    let started = Instant::now();
    while fs::read_to_string(run.join("metrics.log")).map_or(0, |t| t.lines().count()) < 3 {
        assert!(started.elapsed() < Duration::from_secs(60), "the first run did not get going");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read_to_string(run.join(".lock")).unwrap().trim(), first.id().to_string(), ".lock holds the holder's pid");
    let run_id = fs::read_to_string(run.join("run_id")).unwrap();
    let config = fs::read_to_string(run.join("config.toml")).unwrap();
    for extra in [&[][..], &["--resume"][..]] {
        let out = train(dir.path(), "busy", 5, extra);
        let pid = format!("(pid {})", first.id());
        assert_fails(&out, &["run directory", "busy", "is in use by another training run", &pid, "wait for it or choose another run.name"]);
    }
    // The library says the same.
    let config_lib = Config::load(Path::new(SHIPPED_CONFIG), &tiny_sets(dir.path(), "busy", 5)).unwrap();
    let err = train_lib(&config_lib, &TrainOptions { quiet: true, ..Default::default() }).err().expect("refused");
    assert!(err.to_string().contains("is in use by another training run"), "{err}");
    assert!(first.try_wait().unwrap().is_none(), "the first run stopped");
    // The second wrote nothing the first owns.
    assert_eq!(fs::read_to_string(run.join("run_id")).unwrap(), run_id);
    assert_eq!(fs::read_to_string(run.join("config.toml")).unwrap(), config);
    assert_eq!(fs::read_to_string(run.join(".lock")).unwrap().trim(), first.id().to_string());

    // The first finishes its step with a checkpoint (SIGTERM), unharmed, and lets go.
    // SAFETY: kill(2) on our child's pid, not waited for yet.
    assert_eq!(unsafe { libc::kill(first.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    let line = text(&out.stderr).lines().find(|l| l.starts_with("error: ")).expect("one error line").to_string();
    let step: u64 = line.split("after step ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    assert!(!run.join(".lock").exists(), "the lock file outlived the run");
    let out = engine(dir.path(), &["eval", s(&run), "--json"]);
    assert_succeeds(&out);
    assert!(text(&out.stdout).contains(&format!("\"step\":{step}")), "{}", text(&out.stdout));
    let out = train(dir.path(), "busy", step + 2, &["--resume", "--quiet"]);
    assert_succeeds(&out);
    assert!(text(&out.stdout).starts_with(&format!("trained {} steps", step + 2)), "{}", text(&out.stdout));
}

#[test]
fn a_stale_lock_file_does_not_block_and_a_refused_run_leaves_no_directory() {
    let dir = TempDir::new().unwrap();
    let run = dir.path().join("stale");
    fs::create_dir_all(&run).unwrap();
    // Left by a run that was killed (the OS released its lock): only the pid remains.
    fs::write(run.join(".lock"), "4000000\n").unwrap();
    assert_succeeds(&train(dir.path(), "stale", 2, &["--quiet"]));
    assert!(!run.join(".lock").exists());
    // A run refused before writing anything leaves no run directory behind.
    let out = train(dir.path(), "never", 2, &["--quiet", "--set", "data.path=absent.txt"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!dir.path().join("never").exists(), "a refused run left its run directory");
}
