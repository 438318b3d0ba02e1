//! The training guard (issue 16, "sane checkpoints only"): a diverged step never reaches a
//! checkpoint, `checkpoints/latest` stays on finite weights, `train.on_divergence =
//! "rollback"` reloads the last good checkpoint and goes on with a lower learning rate,
//! `train.skip_update_zscore` skips outlier updates, and the optimizer's own guard skips
//! NaN gradients. The optimizer keys are checked in the f32 they are computed in.

use std::path::{Path, PathBuf};

use engine::config::Config;
use engine::optim::{AdamW, GradNorm, Update};
use engine::train::{adamw_config, build_model, train, TrainOptions, TrainSummary};
use engine::Error;
use kernels::Device;
use models::Precision;
use safetensors::SafeTensors;
use tempfile::TempDir;

fn config(dir: &Path, sets: &[&str]) -> Config {
    let toml = format!(
        "[run]\nname = \"g\"\nout_dir = '{}'\ndevice = \"cpu\"\nseed = 7\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\ncontext_length = 32\n\
         [train]\nbatch_size = 4\nseq_len = 32\nmax_steps = 8\nlr = 3e-3\nmin_lr = 3e-3\nwarmup_steps = 0\neval_interval = 0\neval_batches = 1\n\
         checkpoint_interval = 1\n[logs]\ntelemetry_interval_ms = 0\n",
        dir.display()
    );
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::parse(&toml, "guard.toml", &sets).unwrap_or_else(|e| panic!("{e}"))
}

fn run(config: &Config, resume: bool) -> engine::Result<TrainSummary> {
    train(config, &TrainOptions { quiet: true, resume, ..Default::default() })
}

fn latest(run_dir: &Path) -> String {
    std::fs::read_to_string(run_dir.join("checkpoints/latest")).unwrap().trim().to_string()
}

/// Every value of every tensor in `dir`'s model.safetensors and optimizer.safetensors is finite.
fn all_finite(dir: &Path) -> bool {
    ["model.safetensors", "optimizer.safetensors"].iter().all(|file| {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().iter().all(|(_, view)| view.data().chunks_exact(4).all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite()))
    })
}

fn step_dirs(run_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("step-"))
        .collect();
    dirs.sort();
    dirs
}

fn events(run_dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run_dir.join("events.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v["event"] == kind).collect()
}

/// Three good steps, then a learning rate that ruins the weights: the run stops, no
/// checkpoint holds the ruined weights (not even the one of the step whose update made
/// them, written only once the next loss is known), `latest` names step 3, and `--resume`
/// with a sane learning rate continues from there.
#[test]
fn divergence_stops_with_latest_on_finite_weights_and_resume_continues() {
    let dir = TempDir::new().unwrap();
    let good = config(dir.path(), &["train.max_steps=3"]);
    let first = run(&good, false).unwrap();
    let run_dir = first.run_dir.clone();
    assert_eq!(latest(&run_dir), "step-000003");
    let bad = config(dir.path(), &["train.lr=1e30", "train.min_lr=1e30"]);
    let err = run(&bad, true).unwrap_err();
    let Error::Diverged { step, .. } = &err else { panic!("not a divergence: {err}") };
    let text = err.to_string();
    assert!(*step >= 4, "{text}");
    assert!(text.contains("checkpoints/latest is") && text.contains("step-000003"), "the error says where the good weights are: {text}");
    assert_eq!(latest(&run_dir), "step-000003", "latest moved past the last finite weights: {text}");
    for d in step_dirs(&run_dir) {
        assert!(all_finite(&d), "{} holds non-finite values", d.display());
        assert!(d.ends_with("step-000001") || d.ends_with("step-000002") || d.ends_with("step-000003"), "{} written from a diverged run", d.display());
    }
    let done = run(&config(dir.path(), &[]), true).unwrap();
    assert_eq!(done.steps, 8);
    assert_eq!(done.losses.first().unwrap().0, 4, "resumed after step 3");
    assert!(all_finite(&done.checkpoint));
}

/// The same divergence with `on_divergence = "rollback"`: the run goes back to the last
/// good checkpoint, scales the learning rate down, logs the rollback and finishes on finite
/// weights; the scale is saved, so a stop and `--resume` after the rollback continue bit
/// for bit as the uninterrupted run does. Without rollbacks left, it stops and says so.
#[test]
fn rollback_reloads_the_last_good_checkpoint_lowers_the_learning_rate_and_resumes_exactly() {
    let dir = TempDir::new().unwrap();
    let sets = ["train.lr=1e30", "train.min_lr=1e30", "train.on_divergence=rollback", "train.rollback_lr_factor=1e-33", "train.max_steps=6"];
    let rolled = run(&config(dir.path(), &[&sets[..], &["run.name=a"]].concat()), false).unwrap();
    assert_eq!(rolled.steps, 6);
    assert_eq!(rolled.rollbacks.len(), 1, "{:?}", rolled.rollbacks);
    let r = &rolled.rollbacks[0];
    assert_eq!(r.to_step, 0, "no good checkpoint but the start one: {r:?}");
    assert!((r.lr_scale - 1e-33).abs() < 1e-45, "{r:?}");
    assert!(all_finite(&rolled.checkpoint));
    assert!(rolled.losses.iter().all(|(_, l)| l.is_finite()), "{:?}", rolled.losses);
    let steps: Vec<u64> = rolled.losses.iter().map(|&(s, _)| s).collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>(), "the losses of the rolled-back steps are dropped");
    let logged = events(&rolled.run_dir, "rollback");
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["rollback"]["diverged_step"], r.diverged_step);
    assert!(rolled.run_dir.join("checkpoints/step-000000").is_dir(), "rollback mode writes a start checkpoint");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rolled.checkpoint.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["guard"]["rollbacks"], 1, "{state}");

    // Stopped after step 4 (after the rollback) and resumed: the same bytes at the end.
    let b = config(dir.path(), &[&sets[..], &["run.name=b"]].concat());
    let err = train(&b, &TrainOptions { quiet: true, stop_after: Some(4), ..Default::default() });
    let stopped = err.unwrap();
    assert_eq!(stopped.steps, 4);
    let resumed = run(&b, true).unwrap();
    assert_eq!(resumed.steps, 6);
    let bytes = |s: &TrainSummary, f: &str| std::fs::read(s.checkpoint.join(f)).unwrap();
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(bytes(&rolled, f) == bytes(&resumed, f), "{f} differs after a stop and resume past a rollback");
    }

    // A factor that does not help: every rollback diverges again; after max_rollbacks the
    // run stops, saying so, with latest on finite weights.
    let c = config(dir.path(), &["train.lr=1e30", "train.min_lr=1e30", "train.on_divergence=rollback", "train.max_rollbacks=2", "run.name=c"]);
    let err = run(&c, false).unwrap_err().to_string();
    assert!(err.contains("training diverged") && err.contains("2 rollbacks (train.max_rollbacks) did not help"), "{err}");
    let run_dir = dir.path().join("c");
    assert_eq!(events(&run_dir, "rollback").len(), 2);
    assert!(all_finite(&run_dir.join("checkpoints").join(latest(&run_dir))));
}

/// `skip_update_zscore`: with a threshold every above-average step crosses, updates are
/// skipped (after the 16 steps the detector needs), each logged; with one no step crosses,
/// the run is bit-identical to the policy off (the gated path computes the same update);
/// the detector's window is saved, so a stop and `--resume` give the same skips and bytes.
#[test]
fn outlier_updates_are_skipped_logged_and_resumed_exactly() {
    let dir = TempDir::new().unwrap();
    let base = ["train.max_steps=60", "train.checkpoint_interval=0"];
    let off = run(&config(dir.path(), &[&base[..], &["run.name=off"]].concat()), false).unwrap();
    let never = run(&config(dir.path(), &[&base[..], &["run.name=never", "train.skip_update_zscore=1e9"]].concat()), false).unwrap();
    assert!(never.skipped_updates.is_empty());
    let bits = |s: &TrainSummary| s.losses.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&off), bits(&never), "a gate that never skips changed the training");

    let tight = config(dir.path(), &[&base[..], &["run.name=tight", "train.skip_update_zscore=1e-6"]].concat());
    let skipped = run(&tight, false).unwrap();
    assert!(!skipped.skipped_updates.is_empty(), "no update skipped at a threshold of 1e-6 standard deviations");
    assert!(skipped.skipped_updates.iter().all(|&s| s > 16), "{:?}", skipped.skipped_updates);
    let logged: Vec<u64> = events(&skipped.run_dir, "skipped_update").iter().map(|e| e["update"]["step"].as_u64().unwrap()).collect();
    assert_eq!(logged, skipped.skipped_updates);
    assert_ne!(bits(&off), bits(&skipped), "skipping updates changed nothing");

    let again = config(dir.path(), &[&base[..], &["run.name=again", "train.skip_update_zscore=1e-6"]].concat());
    train(&again, &TrainOptions { quiet: true, stop_after: Some(45), ..Default::default() }).unwrap();
    let resumed = run(&again, true).unwrap();
    let skips: Vec<u64> = events(&resumed.run_dir, "skipped_update").iter().map(|e| e["update"]["step"].as_u64().unwrap()).collect();
    assert_eq!(skips, skipped.skipped_updates, "a resumed run judged other steps outliers");
    let weights = |s: &TrainSummary| std::fs::read(s.checkpoint.join("model.safetensors")).unwrap();
    assert!(weights(&resumed) == weights(&skipped), "the final weights differ after a stop and resume");
}

/// The optimizer's guard on the CPU: a NaN or infinite gradient skips the whole update
/// (every weight and moment as it was); an overflowing update is applied and flagged.
#[test]
fn the_optimizer_skips_nonfinite_gradients_and_flags_nonfinite_updates() {
    let dir = TempDir::new().unwrap();
    let c = config(dir.path(), &[]);
    let snapshot = |model: &dyn models::Model| {
        let mut values = Vec::new();
        model.visit_params(&mut |p| values.push(p.value.to_vec()));
        values
    };
    for bad in [f32::NAN, f32::INFINITY] {
        let mut model = build_model(&c, 256, Device::Cpu, Precision::Fp32).unwrap();
        let mut opt = AdamW::try_new(adamw_config(&c), model.as_ref()).unwrap();
        let mut first = true;
        model.visit_params_mut(&mut |p| {
            let n = p.grad.numel();
            let mut g = vec![0.01f32; n];
            if std::mem::take(&mut first) {
                g[n / 2] = bad;
            }
            p.grad = kernels::Tensor::from_vec(p.grad.shape(), g).unwrap();
        });
        let before = snapshot(model.as_ref());
        let norm = opt.step_queued(model.as_mut(), 1e-3).unwrap();
        assert!(matches!(norm, GradNorm::Host(n, Update::NonFiniteGradient) if !n.is_finite()), "a {bad} gradient was not refused");
        assert_eq!(snapshot(model.as_ref()), before, "a {bad} gradient changed the weights");
        assert!(opt.state.iter().all(|(m, v)| m.to_vec().iter().chain(&v.to_vec()).all(|x| *x == 0.0)), "the moments moved");
    }
    let mut model = build_model(&c, 256, Device::Cpu, Precision::Fp32).unwrap();
    let mut opt = AdamW::try_new(adamw_config(&c), model.as_ref()).unwrap();
    model.visit_params_mut(&mut |p| p.grad = kernels::Tensor::from_vec(p.grad.shape(), vec![0.01; p.grad.numel()]).unwrap());
    assert_eq!(opt.step_queued(model.as_mut(), 1e-3).unwrap().update().unwrap(), Update::Applied);
    model.visit_params_mut(&mut |p| p.grad = kernels::Tensor::from_vec(p.grad.shape(), vec![0.01; p.grad.numel()]).unwrap());
    assert_eq!(opt.step_queued(model.as_mut(), 3e38).unwrap().update().unwrap(), Update::NonFinite);
}

/// Values that are fine as f64 but not in the f32 AdamW computes in are refused, each
/// naming its key and the limit.
#[test]
fn optimizer_keys_are_checked_in_f32() {
    let dir = TempDir::new().unwrap();
    let toml = format!("[run]\nout_dir = '{}'\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\ncontext_length = 32\n[train]\nseq_len = 32\n", dir.path().display());
    for (set, key, says) in [
        ("train.lr=1e39", "train.lr", "32-bit float"),
        ("train.grad_clip=1e39", "train.grad_clip", "32-bit float"),
        ("train.beta2=0.99999999999", "train.beta2", "rounds to 1"),
        ("train.beta1=0.999999999", "train.beta1", "rounds to 1"),
        ("train.eps=1e-50", "train.eps", "smallest normal"),
        ("train.weight_decay=1e300", "train.weight_decay", "32-bit float"),
        ("train.on_divergence=retry", "train.on_divergence", "\"stop\" or \"rollback\""),
        ("train.rollback_lr_factor=1", "train.rollback_lr_factor", "(0, 1)"),
        ("train.skip_update_zscore=-1", "train.skip_update_zscore", "0 (off)"),
    ] {
        let err = Config::parse(&toml, "f32.toml", &[set.to_string()]).unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")) && err.contains(says), "{set}: {err}");
    }
    // At the limits they are accepted.
    for set in ["train.beta2=0.99999994", "train.eps=1.2e-38", "train.lr=3e38"] {
        Config::parse(&toml, "f32.toml", &[set.to_string()]).unwrap_or_else(|e| panic!("{set}: {e}"));
    }
}

/// Sizes past what the engine or this machine can hold are one error naming the key, before
/// anything is allocated or written: the loader's threads and ring, and a run whose loader
/// ring and (on the CPU) model need more memory than the host has.
#[test]
fn loader_and_host_memory_sizes_are_named() {
    let dir = TempDir::new().unwrap();
    for (set, says) in [
        ("data.prefetch=100000000", "key `data.prefetch`: at most 1024"),
        ("data.num_workers=5000", "key `data.num_workers`: at most 1024"),
    ] {
        let err = Config::parse(&format!("[run]\nout_dir = '{}'\n", dir.path().display()), "sizes.toml", &[set.to_string()]).unwrap_err().to_string();
        assert!(err.contains(says), "{set}: {err}");
    }
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let host_gib = system.total_memory() as f64 / (1u64 << 30) as f64;
    // A batch whose lower bound is about twice this machine's memory (the tiny model needs
    // roughly 17 KiB per sequence of 32 tokens), well under the engine's 1024 GiB limit.
    let batch = ((2.0 * host_gib * (1u64 << 30) as f64) / 17_000.0) as usize;
    let c = config(dir.path(), &[&format!("train.batch_size={batch}")]);
    let err = run(&c, false).unwrap_err().to_string();
    assert!(err.contains("too large for this machine's") && err.contains("train.batch_size"), "{err}");
    assert!(!dir.path().join("g").exists(), "a refused run left its directory behind");
}
