//! Checkpoints: a directory holding
//! - `model.safetensors`: every parameter under its (Hugging Face) name and export shape,
//!   so padding never leaks out; f32 always (in bf16 precision, the fp32 master weights);
//! - `config.json`: the Hugging Face config for that export (GPT-2, Llama), so that the
//!   directory loads with `transformers`' `from_pretrained`;
//! - `optimizer.safetensors`: AdamW's m and v (`<name>.m`, `<name>.v`, stored shapes);
//! - `state.json`: the step, the resolved run config (its `[model]` table records the model's
//!   kind and every setting of it), the last losses, the data sampler's position and the run's id;
//! - `manifest.json`: every other file's size and SHA-256, the step and the run id
//!   ([`crate::manifest`]), checked whenever the checkpoint is read.
//!
//! A checkpoint is written into a temporary directory, each file fsynced, and renamed into
//! place (the directories fsynced too), so a crash never leaves a half-written checkpoint
//! under the final name, nor one whose files the disk has not got.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use kernels::{Device, Tensor};
use models::{Model, Precision};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::io;
use crate::manifest::{self, sync_dir, write_synced, Manifest, Verification};
use crate::optim::AdamW;
use crate::registry::{BuildContext, ModelSpec, Registry, DEFAULT_KIND, KIND_KEY};
use crate::{Error, Result};

/// The `state.json` format this engine writes and reads; a checkpoint of any other is refused.
pub const FORMAT: u32 = 1;
const LATEST: &str = "latest";

pub use crate::manifest::fsync_count;

/// A checkpoint's `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The state format, [`FORMAT`] when written by this engine.
    pub format: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Training loss of step `step`; `None` if no step of the invocation that wrote it had
    /// been read back.
    pub train_loss: Option<f32>,
    /// The latest validation loss of the invocation that wrote it, possibly from an earlier
    /// step; `None` if it had not evaluated yet.
    pub val_loss: Option<f32>,
    /// The tokenizer's vocabulary the model was built for (256 for `byte`, 50257 for
    /// `gpt2`), without the engine's padding to a multiple of 128.
    pub vocab_size: usize,
    /// The resolved run config, as TOML.
    pub config_toml: String,
    /// Where the training-data sampler stood after `step`, so `--resume` continues with
    /// exactly the windows an uninterrupted run would read. Absent in checkpoints written
    /// before it was recorded (resume then derives it from the step count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerCheckpoint>,
    /// The training guard's state (rollbacks, learning-rate scale, outlier window): absent
    /// when none was taken and the outlier policy is off (then it is the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::GuardState>,
    /// The id of the run directory that wrote it (`<run_dir>/run_id`), also in its
    /// `manifest.json`: resume refuses a checkpoint of another run. Absent in checkpoints
    /// written before run ids, or saved by a library caller without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// The sampler's (epoch, position) with what it was sampling from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerCheckpoint {
    /// The epoch the sampler is in, counting from 0 (each epoch a fresh permutation).
    pub epoch: u64,
    /// Windows of epoch `epoch` this rank has read (also the 0-based index of the next one).
    pub position: u64,
    /// Windows (T+1 tokens each) in the training split: resuming over different data or a
    /// different `train.seq_len` is refused instead of silently reading other windows.
    pub windows: u64,
    /// This sampler's rank among `world_size`; 0 (resume accepts only a single rank).
    pub rank: u64,
    /// Ranks the windows were divided among; 1 (resume accepts nothing else).
    pub world_size: u64,
}

fn ckpt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A safetensors file of F32 `tensors` as bytes (hashed and written by the caller).
fn safetensors_bytes(path: &Path, tensors: Vec<(String, Vec<usize>, Vec<u8>)>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).expect("sizes match")))
        .collect();
    safetensors::serialize(views, Some(metadata)).map_err(|e| ckpt_err(path, e.to_string()))
}

/// `step-XXXXXX`, a checkpoint's directory name.
fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Writes a checkpoint for `step` under `run_dir/checkpoints/step-XXXXXX` and points
/// `run_dir/checkpoints/latest` at it. Returns its path. Every file is fsynced before the
/// checkpoint directory is renamed into place, that directory before the rename and
/// `checkpoints/` after it; `latest` likewise (its temporary file, then `checkpoints/`).
/// `manifest.json` lists the others' sizes and hashes, computed from the bytes written.
pub fn save(run_dir: &Path, model: &dyn Model, opt: &AdamW, state: &CheckpointState) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    let created = !root.is_dir();
    fs::create_dir_all(&root).map_err(io(&root))?;
    if created {
        sync_dir(run_dir)?;
    }
    let name = step_name(state.step);
    let dir = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;

    let mut weights = Vec::new();
    let mut moments = Vec::new();
    let mut i = 0;
    let mut copied = Ok(());
    // The fp32 values (master weights in bf16 precision) and AdamW state, copied to the host.
    model.visit_params(&mut |p| {
        let (m, v) = &opt.state[i];
        i += 1;
        if copied.is_err() {
            return;
        }
        copied = (|| -> Result<()> {
            let data = p.value.try_to_vec()?;
            for e in p.exports() {
                weights.push((e.name, e.shape, f32_bytes(&data[e.range])));
            }
            moments.push((format!("{}.m", p.name), p.value.shape().to_vec(), f32_bytes(&m.try_to_vec()?)));
            moments.push((format!("{}.v", p.name), p.value.shape().to_vec(), f32_bytes(&v.try_to_vec()?)));
            Ok(())
        })();
    });
    copied?;
    let mut manifest = Manifest::new(state.step, state.run_id.clone());
    // Each host copy goes as soon as it is serialized: at most one file's bytes twice.
    let pt = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors_bytes(&tmp.join("model.safetensors"), weights, pt)?;
    manifest.write_file(&tmp, "model.safetensors", &bytes)?;
    drop(bytes);
    let step_meta = HashMap::from([("step".into(), opt.step.to_string())]);
    let bytes = safetensors_bytes(&tmp.join("optimizer.safetensors"), moments, step_meta)?;
    manifest.write_file(&tmp, "optimizer.safetensors", &bytes)?;
    drop(bytes);
    if let Some(json) = model.hf_config_json() {
        manifest.write_file(&tmp, "config.json", json.as_bytes())?;
    }
    let state_json = serde_json::to_string_pretty(state).expect("state serializes");
    manifest.write_file(&tmp, "state.json", state_json.as_bytes())?;
    manifest.write(&tmp)?;
    sync_dir(&tmp)?;

    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    fs::rename(&tmp, &dir).map_err(io(&dir))?;
    sync_dir(&root)?;
    let latest = root.join(LATEST);
    let latest_tmp = root.join(".latest.tmp");
    write_synced(&latest_tmp, name.as_bytes())?;
    fs::rename(&latest_tmp, &latest).map_err(io(&latest))?;
    sync_dir(&root)?;
    Ok(dir)
}

/// A checkpoint directory from either a checkpoint directory (verified against its
/// manifest) or a run directory: its newest checkpoint that verifies, the one
/// `checkpoints/latest` names or, when `latest` is missing, dangling or names one that fails
/// verification, the verifying one of the highest step (see [`resolve_noting`]).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    resolve_noting(path).map(|(dir, _)| dir)
}

/// [`resolve`], with a note for the user: that `latest` was missing, dangling or named a
/// checkpoint that fails verification (a run killed while `latest` was being replaced, a
/// corrupted file) and which checkpoint was taken instead; or that the checkpoint has no
/// manifest (written by an older version) and was not verified. In a run directory, a
/// checkpoint must also come from that run (its manifest's run id the run directory's,
/// [`crate::manifest::ensure_run_id`]).
pub fn resolve_noting(path: &Path) -> Result<(PathBuf, Option<String>)> {
    if path.join("state.json").is_file() {
        let verified = manifest::verify(path, None)?;
        return Ok((path.to_path_buf(), unverified(path, &verified)));
    }
    let root = path.join("checkpoints");
    let run_id = manifest::read_run_id(path)?;
    let latest = root.join(LATEST);
    let named = fs::read_to_string(&latest).ok().map(|name| name.trim().to_string());
    let mut failures = Vec::new();
    let mut why = "checkpoints/latest is missing".to_string();
    let mut tried = None;
    if let Some(name) = &named {
        let dir = root.join(name);
        why = format!("checkpoints/latest names `{name}`, which is no complete checkpoint");
        if dir.join("state.json").is_file() {
            match manifest::verify(&dir, run_id.as_deref()) {
                Ok(verified) => return Ok((dir.clone(), unverified(&dir, &verified))),
                Err(e) => {
                    why = format!("checkpoints/latest names `{name}`, which fails verification ({e})");
                    failures.push(e.to_string());
                }
            }
            tried = Some(dir);
        }
    }
    let mut skipped = Vec::new();
    for (_, dir) in checkpoints(path).into_iter().rev().filter(|(_, dir)| Some(dir) != tried.as_ref()) {
        match manifest::verify(&dir, run_id.as_deref()) {
            Ok(verified) => {
                let mut note = format!("{}: {why}; using the newest complete checkpoint that verifies, {}", path.display(), dir.display());
                if !skipped.is_empty() {
                    note += &format!(" (newer ones fail verification: {})", skipped.join("; "));
                }
                if let Some(unverified) = unverified(&dir, &verified) {
                    note = format!("{note}; {unverified}");
                }
                return Ok((dir, Some(note)));
            }
            Err(e) => {
                skipped.push(e.to_string());
                failures.push(e.to_string());
            }
        }
    }
    if !failures.is_empty() {
        return Err(ckpt_err(path, format!("no checkpoint of this run directory verifies: {}", failures.join("; "))));
    }
    if !path.exists() {
        return Err(ckpt_err(path, "no such file or directory"));
    }
    Err(ckpt_err(path, "not a checkpoint (no state.json) nor a run directory with checkpoints/latest"))
}

/// The note for a checkpoint [`manifest::verify`] could not check.
fn unverified(dir: &Path, verified: &Verification) -> Option<String> {
    match verified {
        Verification::Verified(_) => None,
        Verification::Unverified => Some(manifest::unverified_note(dir)),
    }
}

/// Run directory `run_dir`'s checkpoint of step `step` (`engine train --resume-step`),
/// verified as [`resolve_noting`] verifies, with its note. A step with no checkpoint, or one
/// that fails verification, is an error listing the steps that have one.
pub fn resolve_step(run_dir: &Path, step: u64) -> Result<(PathBuf, Option<String>)> {
    let dir = run_dir.join("checkpoints").join(step_name(step));
    let steps: Vec<String> = checkpoints(run_dir).iter().map(|(s, _)| s.to_string()).collect();
    let available = match steps.is_empty() {
        true => format!("{} has no checkpoints", run_dir.display()),
        false => format!("checkpoints of {}: steps {}", run_dir.display(), steps.join(", ")),
    };
    if !dir.join("state.json").is_file() {
        return Err(Error::Usage(format!("--resume-step {step}: there is no checkpoint of step {step} ({}); {available}", dir.display())));
    }
    let run_id = manifest::read_run_id(run_dir)?;
    match manifest::verify(&dir, run_id.as_deref()) {
        Ok(verified) => Ok((dir.clone(), unverified(&dir, &verified))),
        Err(e) => Err(Error::Usage(format!("--resume-step {step}: {e}; {available}"))),
    }
}

/// Run directory `run_dir`'s checkpoints, `(step, directory)` by step: every
/// `checkpoints/step-N` holding a `state.json` (renamed into place whole, so complete unless
/// damaged after the fact; [`resolve`] verifies).
pub fn checkpoints(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let step_of = |p: &Path| p.file_name()?.to_str()?.strip_prefix("step-")?.parse::<u64>().ok();
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state.json").is_file())
        .filter_map(|p| step_of(&p).map(|step| (step, p)))
        .collect();
    found.sort();
    found
}

/// `train.keep_checkpoints` and `train.keep_best` after the checkpoint of `saved` was
/// written: removes run directory `run_dir`'s checkpoints beyond the newest `keep` of those
/// up to step `saved`, never the one `checkpoints/latest` names, nor (with `keep_best`) the
/// one of the lowest `val_loss` its `state.json` records. Checkpoints of later steps (left by
/// an earlier run that went further, before a `--resume-step`) are left alone. `keep` 0
/// keeps everything. Returns the directories removed. Each is renamed to `.step-N.removing.tmp`
/// first, so a crash mid-removal leaves debris the next run removes, never a partial checkpoint.
pub fn prune(run_dir: &Path, keep: u64, keep_best: bool, saved: u64) -> Result<Vec<PathBuf>> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let root = run_dir.join("checkpoints");
    let candidates: Vec<(u64, PathBuf)> = checkpoints(run_dir).into_iter().filter(|(step, _)| *step <= saved).collect();
    let mut kept: HashSet<PathBuf> = candidates.iter().rev().take(usize::try_from(keep).unwrap_or(usize::MAX)).map(|(_, d)| d.clone()).collect();
    if let Ok(name) = fs::read_to_string(root.join(LATEST)) {
        kept.insert(root.join(name.trim()));
    }
    if keep_best {
        #[derive(Deserialize)]
        struct Recorded {
            #[serde(default)]
            val_loss: Option<f32>,
        }
        let val_loss = |dir: &Path| -> Option<f32> {
            let text = fs::read_to_string(dir.join("state.json")).ok()?;
            serde_json::from_str::<Recorded>(&text).ok()?.val_loss.filter(|v| v.is_finite())
        };
        // The lowest loss; of equal ones, the newest.
        let best = candidates
            .iter()
            .filter_map(|(step, dir)| val_loss(dir).map(|v| (v, *step, dir)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        if let Some((_, _, dir)) = best {
            kept.insert(dir.clone());
        }
    }
    let mut removed = Vec::new();
    for (step, dir) in candidates.into_iter().filter(|(_, dir)| !kept.contains(dir)) {
        let doomed = root.join(format!(".{}.removing.tmp", step_name(step)));
        if doomed.exists() {
            fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
        }
        fs::rename(&dir, &doomed).map_err(io(&dir))?;
        fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
        removed.push(dir);
    }
    if !removed.is_empty() {
        sync_dir(&root)?;
    }
    Ok(removed)
}

/// Removes what an interrupted [`save`] (or [`prune`]) left in `run_dir/checkpoints`:
/// `.step-N.tmp` and `.step-N.removing.tmp` directories and `.latest.tmp` (never a
/// complete checkpoint).
pub fn remove_debris(run_dir: &Path) -> Result<()> {
    let root = run_dir.join("checkpoints");
    for entry in fs::read_dir(&root).into_iter().flatten().filter_map(|e| e.ok()) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(io(&path))?;
        }
    }
    Ok(())
}

/// A checkpoint's state and its run's config, `[model]` resolved by `registry`, after
/// checking the checkpoint against its manifest ([`crate::manifest::verify`]). A model kind
/// `registry` does not know is an error naming it.
pub fn read_state(dir: &Path, registry: &Registry) -> Result<(CheckpointState, Config)> {
    manifest::verify(dir, None)?;
    read_state_unverified(dir, registry)
}

/// [`read_state`] without checking the manifest: for a directory that [`resolve`] has just
/// returned (and so verified), so that its files are hashed once.
pub fn read_state_unverified(dir: &Path, registry: &Registry) -> Result<(CheckpointState, Config)> {
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).map_err(|e| ckpt_err(dir, format!("cannot read state.json: {e}")))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(|e| ckpt_err(dir, format!("state.json is malformed: {e}")))?;
    if state.format != FORMAT {
        return Err(ckpt_err(dir, format!("format {} is not supported (expected {FORMAT})", state.format)));
    }
    let kind = recorded_kind(&state);
    if registry.get(&kind).is_none() {
        return Err(ckpt_err(
            dir,
            format!(
                "holds a model of kind \"{kind}\", which this program does not know (it knows {}); read it with the program \
                 that registered that kind (engine::cli::main_with)",
                registry.names().iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let config = Config::parse_recorded(&state.config_toml, &path.display().to_string(), registry)?;
    Ok((state, config))
}

/// The model kind a checkpoint's state records (`[model] kind`; checkpoints written before
/// kinds existed hold GPT-2).
pub fn recorded_kind(state: &CheckpointState) -> String {
    let table: Option<toml::Table> = state.config_toml.parse().ok();
    let kind = table.as_ref().and_then(|t| t.get("model")?.get(KIND_KEY)?.as_str().map(String::from));
    kind.unwrap_or_else(|| DEFAULT_KIND.to_string())
}

fn read_file(dir: &Path, file: &str) -> Result<Vec<u8>> {
    fs::read(dir.join(file)).map_err(|e| ckpt_err(dir, format!("cannot read {file}: {e}")))
}

/// Tensor `name` (expected `shape`) from `st` as the leading block of a host f32 tensor of
/// `full_shape` (the rest zero: vocabulary padding).
fn read_tensor(dir: &Path, file: &str, st: &SafeTensors<'_>, name: &str, shape: &[usize], full_shape: &[usize]) -> Result<Tensor> {
    let view = st.tensor(name).map_err(|_| ckpt_err(dir, format!("{file} has no tensor `{name}`")))?;
    if view.shape() != shape {
        return Err(ckpt_err(dir, format!("{file}: `{name}` has shape {:?}, the model expects {shape:?}", view.shape())));
    }
    let mut data = f32_values(dir, file, name, &view)?;
    data.resize(full_shape.iter().product(), 0.0);
    Ok(Tensor::from_vec(full_shape, data)?)
}

/// A tensor's values as f32: F32 as stored, F16 and BF16 widened (exact).
fn f32_values(dir: &Path, file: &str, name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(ckpt_err(dir, format!("{file}: `{name}` is {other:?}, expected F32, BF16 or F16"))),
    })
}

/// Loads a model's parameters from `dir/model.safetensors`; every tensor a parameter is
/// exported as ([`models::Param::exports`]) must be there with its shape, and nothing else.
/// Padding rows are zero.
pub fn load_weights(dir: &Path, model: &mut dyn Model) -> Result<()> {
    load_weights_named(dir, model, Naming::Engine)
}

/// How the tensors of a `model.safetensors` are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// As this engine writes them: exactly the parameters' export names, nothing else.
    Engine,
    /// As `transformers`' `save_pretrained` writes them: the export names, or those names
    /// under `transformer.` (GPT2LMHeadModel); a `lm_head.weight` the model ties to its token
    /// embedding is accepted when it equals it; the causal-mask and rotary buffers older
    /// versions saved (`.attn.bias`, `.attn.masked_bias`, `rotary_emb.inv_freq`) are skipped.
    HuggingFace,
}

/// The buffers `transformers` may save beside the weights (not parameters).
fn is_hf_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name.ends_with("rotary_emb.inv_freq")
}

/// [`load_weights`] with tensors named as `naming` says. A missing tensor, a wrong shape, a
/// non-finite value (NaN or infinity: the weights of a diverged run) or a tensor the model
/// does not have is an error naming it; on error the model may hold some of
/// the new weights (callers discard it).
pub fn load_weights_named(dir: &Path, model: &mut dyn Model, naming: Naming) -> Result<()> {
    let file = "model.safetensors";
    let bytes = read_file(dir, file)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ckpt_err(dir, format!("{file} is malformed: {e}")))?;
    let stored = st.names();
    let lookup = |name: &str| -> String {
        let prefixed = format!("transformer.{name}");
        match naming {
            Naming::HuggingFace if !stored.contains(&name) && stored.contains(&prefixed.as_str()) => prefixed,
            _ => name.to_string(),
        }
    };
    let mut result = Ok(());
    let mut used: Vec<String> = Vec::new();
    model.visit_params_mut(&mut |p| {
        if result.is_err() {
            return;
        }
        // Read on the host, then uploaded; in bf16 the working copy is rounded from it.
        result = (|| -> Result<()> {
            let mut data = vec![0.0f32; p.numel()];
            for e in p.exports() {
                let name = lookup(&e.name);
                let part = read_tensor(dir, file, &st, &name, &e.shape, &e.shape)?;
                if let Some(i) = part.f32()?.iter().position(|v| !v.is_finite()) {
                    return Err(ckpt_err(
                        dir,
                        format!(
                            "{file}: `{name}` holds a non-finite value ({} at element {i}): these weights are poisoned \
                             (a diverged run); use an earlier checkpoint",
                            part.f32()?[i]
                        ),
                    ));
                }
                data[e.range].copy_from_slice(part.f32()?);
                used.push(name);
            }
            Ok(p.set_value(&Tensor::from_vec(p.value.shape(), data)?)?)
        })();
    });
    result?;
    let mut extra = Vec::new();
    for name in stored.iter().filter(|n| !used.iter().any(|u| u == **n)) {
        let skipped = naming == Naming::HuggingFace
            && (is_hf_buffer(name) || (*name == "lm_head.weight" && tied_copy(dir, file, &st, name, &used)?));
        if !skipped {
            extra.push(name.to_string());
        }
    }
    if !extra.is_empty() {
        extra.sort();
        return Err(ckpt_err(dir, format!("{file} has tensors the model does not: {extra:?}")));
    }
    Ok(())
}

/// Whether tensor `name` is a copy of one already loaded (a tied classifier saved twice):
/// the same dtype, shape and bytes in the file (nothing is copied to compare).
fn tied_copy(dir: &Path, file: &str, st: &SafeTensors<'_>, name: &str, used: &[String]) -> Result<bool> {
    let view = |n: &str| st.tensor(n).map_err(|e| ckpt_err(dir, format!("{file}: `{n}`: {e}")));
    let copy = view(name)?;
    for other in used {
        let v = view(other)?;
        if v.dtype() == copy.dtype() && v.shape() == copy.shape() && v.data() == copy.data() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Restores AdamW's state from `dir/optimizer.safetensors`.
pub fn load_optimizer(dir: &Path, model: &dyn Model, opt: &mut AdamW, step: u64) -> Result<()> {
    let bytes = read_file(dir, "optimizer.safetensors")?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ckpt_err(dir, format!("optimizer.safetensors is malformed: {e}")))?;
    let mut result = Ok(());
    let mut i = 0;
    model.visit_params(&mut |p| {
        if result.is_ok() {
            let (shape, device) = (p.value.shape(), p.value.device());
            let (m, v) = &mut opt.state[i];
            let load = |suffix: &str, dst: &mut Tensor| -> Result<()> {
                let host = read_tensor(dir, "optimizer.safetensors", &st, &format!("{}.{suffix}", p.name), shape, shape)?;
                *dst = host.to_device(device)?;
                Ok(())
            };
            result = load("m", m).and_then(|_| load("v", v));
        }
        i += 1;
    });
    result?;
    // The optimizer's own step count (its bias corrections) is in the file's metadata: it
    // trails the training step when updates were skipped (train.skip_update_zscore).
    let recorded = SafeTensors::read_metadata(&bytes).ok().and_then(|(_, m)| m.metadata().as_ref()?.get("step")?.parse::<u64>().ok());
    opt.step = recorded.unwrap_or(step);
    Ok(())
}

/// Models whose fp32 values take at most this are built before their weights are checked
/// (the tensors' shapes then say where a config and its weights disagree); a larger one must
/// fit in its `model.safetensors` first ([`check_weights_fit`]).
const BUILT_UNCHECKED_BYTES: f64 = 256.0 * 1024.0 * 1024.0;

/// Refuses a `model.safetensors` too small for the (large) model the directory's config
/// describes (every parameter is stored, in 2 bytes at the least) before that model is
/// built: a corrupted or edited state.json (or config.json) naming a far larger model would
/// otherwise allocate and initialise all of it first, gigabytes or more than the machine has.
/// A missing file is left to the loading to report.
fn check_weights_fit(dir: &Path, spec: &dyn ModelSpec, vocab_size: usize) -> Result<()> {
    let file = "model.safetensors";
    let Ok(bytes) = fs::metadata(dir.join(file)).map(|m| m.len()) else { return Ok(()) };
    let params = spec.min_params(vocab_size as f64);
    if 4.0 * params > BUILT_UNCHECKED_BYTES && 2.0 * params > bytes as f64 {
        return Err(ckpt_err(
            dir,
            format!(
                "{file} holds {bytes} bytes, too few for the model its config describes ({}, vocabulary {vocab_size}: at least \
                 {params:.0} parameters of 2 bytes or more); the config and the weights do not belong together",
                spec.describe()
            ),
        ));
    }
    Ok(())
}

/// A model read back from a checkpoint, with where it came from.
pub struct LoadedModel {
    /// The checkpoint (or Hugging Face) directory.
    pub dir: PathBuf,
    /// The checkpoint's state; `None` for a Hugging Face directory.
    pub state: Option<CheckpointState>,
    /// The run's config (`[model]` says which model this is); for a Hugging Face directory,
    /// the defaults with its model ([`crate::hf::config_for`]).
    pub config: Config,
    /// The model, its weights loaded, on the device it was asked for.
    pub model: Box<dyn Model>,
    /// The precision the model computes in (as asked for, not necessarily the run's).
    pub precision: Precision,
}

/// What `path` holds: a checkpoint (`path` a checkpoint or a run directory) with its state
/// and config, or a Hugging Face `save_pretrained` directory with a config for it.
pub fn inspect(path: &Path, registry: &Registry) -> Result<(PathBuf, Option<CheckpointState>, Config)> {
    match resolve(path) {
        Ok(dir) => {
            let (state, config) = read_state_unverified(&dir, registry)?;
            Ok((dir, Some(state), config))
        }
        // A checkpoint that fails verification holds config.json and model.safetensors too:
        // it is refused, never read as a Hugging Face directory.
        Err(_) if !path.join("state.json").is_file() && crate::hf::is_hf_dir(path) => Ok((path.to_path_buf(), None, crate::hf::config_for(path, registry)?)),
        Err(e) => Err(e),
    }
}

/// A checkpoint's model (`path`: a checkpoint, a run directory or a Hugging Face
/// `save_pretrained` directory) in `precision` on `device`, built by its `[model]` kind from
/// `registry`: the weights are read from the values the directory holds, uploaded, and
/// rounded for the bf16 working copies.
pub fn load_model(path: &Path, device: Device, precision: Precision, registry: &Registry) -> Result<LoadedModel> {
    let (dir, state, config) = inspect(path, registry)?;
    build_loaded(dir, state, config, device, precision)
}

/// [`load_model`] in the precision the directory's own config gives for `device`
/// (`train.precision`; fp32 where that cannot be had, e.g. bf16 on the CPU): what
/// `engine eval` and `engine sample` load. The checkpoint is read and verified once.
pub fn load_model_for(path: &Path, device: Device, registry: &Registry) -> Result<LoadedModel> {
    let (dir, state, config) = inspect(path, registry)?;
    let precision = config.precision(device).unwrap_or(Precision::Fp32);
    build_loaded(dir, state, config, device, precision)
}

fn build_loaded(dir: PathBuf, state: Option<CheckpointState>, config: Config, device: Device, precision: Precision) -> Result<LoadedModel> {
    let vocab_size = match &state {
        Some(state) => state.vocab_size,
        None => crate::hf::vocab_size(&dir, &crate::hf::read_config(&dir)?)?,
    };
    let at = BuildContext { vocab_size, device, precision, seed: config.run.seed };
    check_weights_fit(&dir, config.model.spec(), vocab_size)?;
    let mut model = config.model.spec().build(&at)?;
    let naming = if state.is_some() { Naming::Engine } else { Naming::HuggingFace };
    load_weights_named(&dir, model.as_mut(), naming)?;
    Ok(LoadedModel { dir, state, config, model, precision })
}
