//! Hugging Face `save_pretrained` directories (`config.json` + `model.safetensors`):
//! which registered kind reads them, with which settings, and the run config to evaluate
//! or sample them. The weights load with [`crate::checkpoint::load_weights_named`]
//! ([`crate::checkpoint::Naming::HuggingFace`]).
//!
//! Checkpoints this engine writes are such directories too (their `config.json` is the
//! Hugging Face config of the export), so `model.init_from` takes either.

use std::fs;
use std::path::Path;

use crate::config::Config;
use crate::registry::{ModelSection, Registry, KIND_KEY};
use crate::{Error, Result};

/// Whether `dir` looks like a `save_pretrained` directory: a `config.json` and a
/// `model.safetensors`.
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file() && dir.join("model.safetensors").is_file()
}

fn hf_err(dir: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Checkpoint { path: dir.to_path_buf(), msg: msg.to_string() }
}

/// `dir/config.json`, parsed.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    if !dir.is_dir() {
        return Err(hf_err(dir, "no such directory (expected a Hugging Face save_pretrained directory: config.json + model.safetensors)"));
    }
    let text = fs::read_to_string(&path).map_err(|e| hf_err(dir, format!("cannot read config.json: {e}")))?;
    serde_json::from_str(&text).map_err(|e| hf_err(dir, format!("config.json is malformed: {e}")))
}

/// The config's `architectures[0]` (or, without it, its `model_type`).
fn architecture(config: &serde_json::Value) -> Option<String> {
    let first = config.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str());
    first.or_else(|| config.get("model_type").and_then(|m| m.as_str())).map(String::from)
}

/// The kind of `registry` that reads `config` (by its architecture), and that kind's
/// settings from it, as a `[model]` table (with `kind`). Errors name the directory and
/// what was expected.
pub fn model_table(dir: &Path, config: &serde_json::Value, registry: &Registry) -> Result<(String, toml::Table)> {
    let arch = architecture(config).ok_or_else(|| hf_err(dir, "config.json names no architecture (`architectures` or `model_type`)"))?;
    let mut readers = Vec::new();
    for name in registry.names() {
        let kind = registry.get(name).expect("listed");
        let archs = kind.hf_architectures();
        if archs.contains(&arch) {
            let mut table = kind.settings_from_hf(config).map_err(|e| hf_err(dir, format!("{arch}: {e}")))?;
            table.insert(KIND_KEY.into(), toml::Value::String(name.to_string()));
            return Ok((arch, table));
        }
        readers.extend(archs.into_iter().map(|a| format!("{a} (kind \"{name}\")")));
    }
    Err(hf_err(dir, format!("architecture {arch} is not one this program reads (it reads {})", readers.join(", "))))
}

/// The vocabulary `config.json` declares.
pub fn vocab_size(dir: &Path, config: &serde_json::Value) -> Result<usize> {
    config.get("vocab_size").and_then(|v| v.as_u64()).map(|v| v as usize).ok_or_else(|| hf_err(dir, "config.json has no `vocab_size`"))
}

/// The tokenizer whose vocabulary is `vocab` ("byte": 256, "gpt2": 50257).
pub fn tokenizer_for(dir: &Path, vocab: usize) -> Result<&'static str> {
    match vocab {
        256 => Ok("byte"),
        50257 => Ok("gpt2"),
        other => Err(hf_err(
            dir,
            format!("its vocabulary ({other} tokens) is neither the byte tokenizer's (256) nor GPT-2's (50257), the tokenizers this engine has"),
        )),
    }
}

/// A run config for evaluating or sampling the model in `dir`: the defaults, with `[model]`
/// from its `config.json`, the tokenizer its vocabulary implies, and `train.seq_len` at most
/// its context.
pub fn config_for(dir: &Path, registry: &Registry) -> Result<Config> {
    let hf = read_config(dir)?;
    let (_, table) = model_table(dir, &hf, registry)?;
    let model = registry.resolve(&table).map_err(|e| hf_err(dir, e))?;
    let mut config = Config { registry: registry.clone(), ..Config::default() };
    config.data.tokenizer = tokenizer_for(dir, vocab_size(dir, &hf)?)?.to_string();
    config.train.seq_len = config.train.seq_len.min(model.spec().context_length());
    config.model = model;
    config.validate().map_err(|e| hf_err(dir, e))?;
    Ok(config)
}

/// `[model]` with `init_from = dir` (the table without `init_from`): the settings of
/// `dir/config.json`, with `kind` and any key the table gives checked against them. Errors
/// name `model.init_from`, the directory and the disagreeing keys.
pub fn resolve_init_from(dir: &Path, given: &toml::Table, registry: &Registry) -> std::result::Result<ModelSection, String> {
    let key = |m: String| format!("key `model.init_from`: {m}");
    let hf = read_config(dir).map_err(|e| key(e.to_string()))?;
    let (arch, from_dir) = model_table(dir, &hf, registry).map_err(|e| key(e.to_string()))?;
    let dir_kind = from_dir[KIND_KEY].as_str().expect("model_table sets kind").to_string();
    if let Some(kind) = given.get(KIND_KEY).and_then(|k| k.as_str()) {
        if kind != dir_kind {
            return Err(key(format!("{} holds a {arch} (kind \"{dir_kind}\"), but model.kind = \"{kind}\"", dir.display())));
        }
    }
    let mut merged = from_dir.clone();
    merged.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    let section = registry.resolve(&merged)?;
    let theirs = registry.resolve(&from_dir).map_err(|e| key(format!("{}: {e}", dir.display())))?;
    let differences = section.differences(&theirs);
    if !differences.is_empty() {
        return Err(key(format!(
            "{}/config.json disagrees with [model]: {} ([model] vs the directory); remove those keys to take the directory's",
            dir.display(),
            differences.join(", ")
        )));
    }
    Ok(section)
}
