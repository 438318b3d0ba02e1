//! Checkpoints: a directory holding
//! - `model.safetensors`: every parameter under its (Hugging Face) name and export shape,
//!   so padding never leaks out; f32 always (in bf16 precision, the fp32 master weights);
//! - `config.json`: the Hugging Face config for that export (GPT-2, Llama), so that the
//!   directory loads with `transformers`' `from_pretrained`;
//! - `optimizer.safetensors`: AdamW's m and v (`<name>.m`, `<name>.v`, stored shapes);
//! - `state.json`: the step, the resolved run config (its `[model]` table records the model's
//!   kind and every setting of it), the last losses and the data sampler's position.
//!
//! A checkpoint is written into a temporary directory and renamed into place, so a crash
//! never leaves a half-written checkpoint under the final name.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use kernels::{Device, Tensor};
use models::{Model, Precision};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::io;
use crate::optim::AdamW;
use crate::registry::{BuildContext, ModelSpec, Registry, DEFAULT_KIND, KIND_KEY};
use crate::{Error, Result};

/// The `state.json` format this engine writes and reads; a checkpoint of any other is refused.
pub const FORMAT: u32 = 1;
const LATEST: &str = "latest";

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

fn write_safetensors(path: &Path, tensors: Vec<(String, Vec<usize>, Vec<u8>)>, metadata: HashMap<String, String>) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).expect("sizes match")))
        .collect();
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| ckpt_err(path, e.to_string()))
}

/// Writes a checkpoint for `step` under `run_dir/checkpoints/step-XXXXXX` and points
/// `run_dir/checkpoints/latest` at it. Returns its path.
pub fn save(run_dir: &Path, model: &dyn Model, opt: &AdamW, state: &CheckpointState) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    fs::create_dir_all(&root).map_err(io(&root))?;
    let name = format!("step-{:06}", state.step);
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
    let pt = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&tmp.join("model.safetensors"), weights, pt)?;
    write_safetensors(&tmp.join("optimizer.safetensors"), moments, HashMap::from([("step".into(), opt.step.to_string())]))?;
    if let Some(json) = model.hf_config_json() {
        fs::write(tmp.join("config.json"), json).map_err(io(tmp.join("config.json")))?;
    }
    let state_json = serde_json::to_string_pretty(state).expect("state serializes");
    fs::write(tmp.join("state.json"), state_json).map_err(io(tmp.join("state.json")))?;

    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    fs::rename(&tmp, &dir).map_err(io(&dir))?;
    let latest = root.join(LATEST);
    let latest_tmp = root.join(".latest.tmp");
    fs::write(&latest_tmp, &name).map_err(io(&latest_tmp))?;
    fs::rename(&latest_tmp, &latest).map_err(io(&latest))?;
    Ok(dir)
}

/// A checkpoint directory from either a checkpoint directory or a run directory (whose
/// newest checkpoint is used: the one `checkpoints/latest` names, or, when `latest` is
/// missing or names no complete checkpoint, the complete one of the highest step).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    resolve_noting(path).map(|(dir, _)| dir)
}

/// [`resolve`], with a note saying so when `latest` was missing or dangling and the newest
/// complete checkpoint was taken instead (a run killed while `latest` was being replaced).
pub fn resolve_noting(path: &Path) -> Result<(PathBuf, Option<String>)> {
    if path.join("state.json").is_file() {
        return Ok((path.to_path_buf(), None));
    }
    let root = path.join("checkpoints");
    let latest = root.join(LATEST);
    if let Ok(name) = fs::read_to_string(&latest) {
        let dir = root.join(name.trim());
        if dir.join("state.json").is_file() {
            return Ok((dir, None));
        }
    }
    // Checkpoints are renamed into place whole, so every step-N directory is complete.
    let step_of = |p: &Path| p.file_name()?.to_str()?.strip_prefix("step-")?.parse::<u64>().ok();
    let newest = fs::read_dir(&root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state.json").is_file())
        .filter_map(|p| step_of(&p).map(|step| (step, p)))
        .max();
    if let Some((_, dir)) = newest {
        let why = match fs::read_to_string(&latest) {
            Ok(name) => format!("checkpoints/latest names `{}`, which is no complete checkpoint", name.trim()),
            Err(_) => "checkpoints/latest is missing".to_string(),
        };
        let note = format!("{}: {why}; using the newest complete checkpoint, {}", path.display(), dir.display());
        return Ok((dir, Some(note)));
    }
    if !path.exists() {
        return Err(ckpt_err(path, "no such file or directory"));
    }
    Err(ckpt_err(path, "not a checkpoint (no state.json) nor a run directory with checkpoints/latest"))
}

/// Removes what an interrupted [`save`] left in `run_dir/checkpoints`: `.step-N.tmp`
/// directories and `.latest.tmp` (never a complete checkpoint).
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

/// A checkpoint's state and its run's config, `[model]` resolved by `registry`. A model kind
/// `registry` does not know is an error naming it.
pub fn read_state(dir: &Path, registry: &Registry) -> Result<(CheckpointState, Config)> {
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
    opt.step = step;
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
            let (state, config) = read_state(&dir, registry)?;
            Ok((dir, Some(state), config))
        }
        Err(_) if crate::hf::is_hf_dir(path) => Ok((path.to_path_buf(), None, crate::hf::config_for(path, registry)?)),
        Err(e) => Err(e),
    }
}

/// A checkpoint's model (`path`: a checkpoint, a run directory or a Hugging Face
/// `save_pretrained` directory) in `precision` on `device`, built by its `[model]` kind from
/// `registry`: the weights are read from the values the directory holds, uploaded, and
/// rounded for the bf16 working copies.
pub fn load_model(path: &Path, device: Device, precision: Precision, registry: &Registry) -> Result<LoadedModel> {
    let (dir, state, config) = inspect(path, registry)?;
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
