//! Model kinds: what `[model] kind = "..."` names, and how the engine builds that model.
//!
//! A [`Registry`] maps each kind to a [`ModelKind`], which validates the kind's own keys of the
//! `[model]` table and returns a [`ModelSpec`]: the kind's settings, able to build the model.
//! Everything that makes a model (the trainer, the planner's probe, checkpoint loading,
//! `engine eval` and `engine sample`) builds it through the spec, so GPT-2 is one entry of
//! [`Registry::builtin`], not a special case, and a library user's model gets the whole engine
//! by registering its kind:
//!
//! ```
//! use engine::registry::{BuildContext, ModelSpec, Registry};
//! use engine::models::{Gpt, GptConfig, Model};
//!
//! /// `[model] kind = "small-gpt"`: a GPT-2 whose only setting is its width.
//! #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
//! #[serde(default)]
//! struct SmallGpt {
//!     n_embd: usize,
//! }
//!
//! impl Default for SmallGpt {
//!     fn default() -> Self {
//!         Self { n_embd: 32 }
//!     }
//! }
//!
//! impl ModelSpec for SmallGpt {
//!     fn context_length(&self) -> usize {
//!         64
//!     }
//!     fn describe(&self) -> String {
//!         format!("small GPT, {} wide", self.n_embd)
//!     }
//!     fn build(&self, at: &BuildContext) -> engine::models::Result<Box<dyn Model>> {
//!         let config = GptConfig { vocab_size: at.vocab_size, context_length: 64, n_layer: 1, n_head: 2, n_embd: self.n_embd, ..GptConfig::default() };
//!         Ok(Box::new(Gpt::with_precision(config, at.device, at.precision, at.seed)?))
//!     }
//! }
//!
//! let mut registry = Registry::builtin();
//! registry.register::<SmallGpt>("small-gpt");
//! let text = "[model]\nkind = \"small-gpt\"\nn_embd = 16\n[train]\nseq_len = 64\n";
//! let config = engine::config::Config::parse_in(text, "small.toml", &[], &registry).unwrap();
//! assert_eq!(config.model.spec().describe(), "small GPT, 16 wide");
//! // A key the kind does not have is an error naming it.
//! let err = engine::config::Config::parse_in("[model]\nkind = \"small-gpt\"\nn_layer = 2\n", "small.toml", &[], &registry).unwrap_err();
//! assert!(err.to_string().contains("key `model.n_layer`: not a key of kind = \"small-gpt\""), "{err}");
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use kernels::Device;
use models::{Activation, Gpt, GptConfig, Llama, LlamaConfig, Model, Precision};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The key of `[model]` that names the kind.
pub const KIND_KEY: &str = "kind";
/// The key of `[model]` naming a directory of weights to start from (every kind has it).
pub const INIT_FROM_KEY: &str = "init_from";
/// The kind of a `[model]` table without a `kind` key.
pub const DEFAULT_KIND: &str = "gpt2";

/// What a [`ModelSpec`] builds a model with: the data's vocabulary, where and in which
/// precision, and the run's seed (initial weights drawn from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildContext {
    /// The tokenizer's vocabulary (the data's).
    pub vocab_size: usize,
    /// Where the parameters are made.
    pub device: Device,
    /// fp32, or bf16 mixed precision (a CUDA device).
    pub precision: Precision,
    /// `run.seed`: the same seed gives the same initial weights on every device.
    pub seed: u64,
}

/// One kind's validated settings (the `[model]` table without `kind`): what the engine asks
/// of a model before it exists, and how to build it.
pub trait ModelSpec: fmt::Debug + Send + Sync {
    /// The longest sequence the model accepts (`train.seq_len` may not exceed it).
    fn context_length(&self) -> usize;

    /// A few words for the run's first lines, e.g. "GPT-2, 12 layers, 12 heads, 768 wide".
    fn describe(&self) -> String;

    /// Builds the model, its weights initialised from `at.seed`.
    fn build(&self, at: &BuildContext) -> models::Result<Box<dyn Model>>;

    /// Values that cannot work together (the kind's serde types already checked each value's
    /// type). The message names the key, e.g. "key `model.n_embd`: ...".
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// A lower bound in bytes of what training holds with `batch` sequences of `seq_len`
    /// tokens and the vocabulary padded to `vocab_padded` (parameters, gradients, AdamW
    /// state, one micro-batch's logits), in f64 so that absurd sizes cannot overflow. The
    /// config rejects sizes beyond [`crate::config::MAX_MEMORY_BYTES`] with it before anything
    /// is allocated. The default, 0, skips that check.
    fn min_memory_bytes(&self, _vocab_padded: f64, _batch: f64, _seq_len: f64) -> f64 {
        0.0
    }

    /// A lower bound of the parameters (values, as a checkpoint stores them) of the model
    /// over a vocabulary of `vocab_size`, in f64 so that absurd sizes cannot overflow.
    /// Loading a checkpoint refuses a `model.safetensors` too small to hold them before the
    /// model is built, so a config that describes a far larger model than its weights fails
    /// at once instead of allocating that model. The default, 0, skips that check.
    fn min_params(&self, _vocab_size: f64) -> f64 {
        0.0
    }

    /// The Hugging Face architectures (`config.json`'s `architectures`, e.g.
    /// `GPT2LMHeadModel`) this kind reads, for `model.init_from` and `engine eval`/`sample`
    /// of a `save_pretrained` directory. None by default.
    fn hf_architectures() -> &'static [&'static str]
    where
        Self: Sized,
    {
        &[]
    }

    /// The settings a Hugging Face `config.json` describes; a value this kind cannot
    /// reproduce is an error naming the config key.
    fn from_hf_config(_config: &serde_json::Value) -> Result<Self, String>
    where
        Self: Sized,
    {
        Err("this model kind does not read Hugging Face configs".into())
    }
}

/// A kind of model: turns its `[model]` keys into a [`ModelSpec`]. [`Registry::register`]
/// makes one from any serde type; implement it directly for more control.
pub trait ModelKind: Send + Sync {
    /// The kind's settings from `settings` (the `[model]` table without `kind`), and those
    /// settings in full (every key, defaults filled in): what configs, run directories and
    /// checkpoints record, so a checkpoint never depends on a default that may change. An
    /// error names the key (`key `model.x`: ...`).
    fn parse(&self, kind: &str, settings: &toml::Table) -> Result<(Arc<dyn ModelSpec>, toml::Table), String>;

    /// Every key the kind accepts (for error messages).
    fn keys(&self) -> Vec<String>;

    /// The Hugging Face architectures the kind reads (see [`ModelSpec::hf_architectures`]).
    fn hf_architectures(&self) -> Vec<String> {
        Vec::new()
    }

    /// The kind's settings, in full, from a Hugging Face `config.json`.
    fn settings_from_hf(&self, _config: &serde_json::Value) -> Result<toml::Table, String> {
        Err("this model kind does not read Hugging Face configs".into())
    }
}

/// [`ModelKind`] for a serde type `S`: its fields are the kind's keys, each with a default
/// (`#[serde(default)]` and [`Default`]), so a config names only what it changes.
struct Typed<S>(PhantomData<fn() -> S>);

fn table_of<S: Serialize>(value: &S) -> Result<toml::Table, String> {
    toml::Table::try_from(value).map_err(|e| format!("the settings do not serialize as a TOML table: {e}"))
}

impl<S> ModelKind for Typed<S>
where
    S: ModelSpec + Serialize + DeserializeOwned + Default + 'static,
{
    fn parse(&self, kind: &str, settings: &toml::Table) -> Result<(Arc<dyn ModelSpec>, toml::Table), String> {
        let mut ignored = Vec::new();
        let value = toml::Value::Table(settings.clone());
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        let parsed: Result<S, _> = serde_ignored::deserialize(de, |path| ignored.push(path.to_string()));
        let spec = parsed.map_err(|e| {
            let path = track.path().to_string();
            // serde's message for a type S with deny_unknown_fields names the key itself.
            let msg = e.message().trim().to_string();
            match path.as_str() {
                "." | "" => format!("[model] kind = \"{kind}\": {msg}"),
                _ => format!("key `model.{path}`: {msg}"),
            }
        })?;
        if let Some(key) = ignored.first() {
            return Err(format!(
                "key `model.{key}`: not a key of kind = \"{kind}\" (its keys: {})",
                self.keys().join(", ")
            ));
        }
        spec.validate()?;
        let full = table_of(&spec)?;
        Ok((Arc::new(spec), full))
    }

    fn keys(&self) -> Vec<String> {
        table_of(&S::default()).map(|t| t.keys().cloned().collect()).unwrap_or_default()
    }

    fn hf_architectures(&self) -> Vec<String> {
        S::hf_architectures().iter().map(|s| s.to_string()).collect()
    }

    fn settings_from_hf(&self, config: &serde_json::Value) -> Result<toml::Table, String> {
        table_of(&S::from_hf_config(config)?)
    }
}

/// The model kinds a program knows, by name. Cheap to clone (the kinds are shared).
#[derive(Clone)]
pub struct Registry {
    kinds: Vec<(String, Arc<dyn ModelKind>)>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Default for Registry {
    /// [`Registry::builtin`].
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// No kinds at all.
    pub fn empty() -> Self {
        Self { kinds: Vec::new() }
    }

    /// The engine's own kinds: `gpt2` ([`GptSpec`]) and `llama` ([`LlamaSpec`]).
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        r.register::<GptSpec>(DEFAULT_KIND);
        r.register::<LlamaSpec>("llama");
        r
    }

    /// Registers (or replaces) kind `name`, whose keys are the fields of `S`.
    pub fn register<S>(&mut self, name: &str) -> &mut Self
    where
        S: ModelSpec + Serialize + DeserializeOwned + Default + 'static,
    {
        self.register_kind(name, Arc::new(Typed::<S>(PhantomData)))
    }

    /// Registers (or replaces) kind `name` with a hand-written [`ModelKind`].
    pub fn register_kind(&mut self, name: &str, kind: Arc<dyn ModelKind>) -> &mut Self {
        self.kinds.retain(|(n, _)| n != name);
        self.kinds.push((name.to_string(), kind));
        self
    }

    /// The kinds' names, in registration order.
    pub fn names(&self) -> Vec<&str> {
        self.kinds.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Kind `name`, if registered.
    pub fn get(&self, name: &str) -> Option<&dyn ModelKind> {
        self.kinds.iter().find(|(n, _)| n == name).map(|(_, k)| k.as_ref())
    }

    /// The `[model]` table resolved: its kind (default [`DEFAULT_KIND`]) looked up and its
    /// other keys validated by that kind. Errors name the key.
    pub fn resolve(&self, table: &toml::Table) -> Result<ModelSection, String> {
        let mut settings = table.clone();
        let kind = match settings.remove(KIND_KEY) {
            None => DEFAULT_KIND.to_string(),
            Some(toml::Value::String(s)) => s,
            Some(other) => return Err(format!("key `model.kind`: expected a string (the model's kind), got {other}")),
        };
        let Some(entry) = self.get(&kind) else {
            return Err(format!(
                "key `model.kind`: unknown model kind \"{kind}\" (this program knows {}; a library registers its own kinds \
                 with engine::registry::Registry::register and runs them with engine::cli::main_with)",
                self.names().iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
            ));
        };
        let (spec, settings) = entry.parse(&kind, &settings)?;
        Ok(ModelSection { kind, settings, init_from: None, spec })
    }
}

/// `[model]`, resolved by a [`Registry`]: the kind, its settings in full, and its spec.
#[derive(Clone)]
pub struct ModelSection {
    /// The kind's name (`[model] kind`).
    pub kind: String,
    /// The kind's keys, every one (defaults filled in).
    pub settings: toml::Table,
    /// `model.init_from`: a Hugging Face `save_pretrained` directory (or a checkpoint of
    /// this engine) whose weights a new run starts from (crate::hf).
    pub init_from: Option<std::path::PathBuf>,
    spec: Arc<dyn ModelSpec>,
}

impl ModelSection {
    /// The kind's spec: builds the model.
    pub fn spec(&self) -> &dyn ModelSpec {
        self.spec.as_ref()
    }

    /// The table as configs write it: `kind` and every setting.
    pub fn to_table(&self) -> toml::Table {
        let mut t = self.settings.clone();
        t.insert(KIND_KEY.into(), toml::Value::String(self.kind.clone()));
        if let Some(dir) = &self.init_from {
            t.insert(INIT_FROM_KEY.into(), toml::Value::String(dir.display().to_string()));
        }
        t
    }

    /// The settings that differ from `other`'s, as "model.key = a (here) vs b", for messages.
    pub fn differences(&self, other: &ModelSection) -> Vec<String> {
        let keys: BTreeSet<&String> = self.settings.keys().chain(other.settings.keys()).collect();
        keys.into_iter()
            .filter(|k| self.settings.get(*k) != other.settings.get(*k))
            .map(|k| {
                #[allow(clippy::redundant_closure_for_method_calls)]
                let show = |t: &toml::Table| t.get(k).map_or("unset".to_string(), |v| v.to_string());
                format!("model.{k} = {} vs {}", show(&self.settings), show(&other.settings))
            })
            .collect()
    }
}

impl fmt::Debug for ModelSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelSection").field("kind", &self.kind).field("settings", &self.settings).finish()
    }
}

impl PartialEq for ModelSection {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.settings == other.settings && self.init_from == other.init_from
    }
}

impl Default for ModelSection {
    /// GPT-2 with [`GptSpec`]'s defaults.
    fn default() -> Self {
        let spec = GptSpec::default();
        let settings = table_of(&spec).expect("GptSpec serializes");
        Self { kind: DEFAULT_KIND.into(), settings, init_from: None, spec: Arc::new(spec) }
    }
}

/// `[model] kind = "gpt2"`: GPT-2 ([`models::Gpt`]), its blocks configurable (the
/// defaults are GPT-2's; other settings have no `GPT2LMHeadModel` form, so their checkpoints
/// carry no `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GptSpec {
    /// Blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Longest sequence the model accepts (position embeddings).
    pub context_length: usize,
    /// Biases on the attention and MLP projections (GPT-2: true).
    pub bias: bool,
    /// The MLP's hidden width; unset: 4 x n_embd (GPT-2's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_inner: Option<usize>,
    /// The MLP's activation: "gelu" (GPT-2's) or "swiglu".
    pub activation: String,
    /// A learned position table added to the token embedding (GPT-2: true).
    pub learned_positions: bool,
}

impl Default for GptSpec {
    fn default() -> Self {
        Self { n_layer: 4, n_head: 4, n_embd: 128, context_length: 128, bias: true, n_inner: None, activation: "gelu".into(), learned_positions: true }
    }
}

impl GptSpec {
    /// The model's config for a vocabulary of `vocab_size`.
    pub fn gpt_config(&self, vocab_size: usize) -> GptConfig {
        GptConfig {
            vocab_size,
            context_length: self.context_length,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            bias: self.bias,
            n_inner: self.n_inner,
            activation: if self.activation == "swiglu" { Activation::Swiglu } else { Activation::Gelu },
            learned_positions: self.learned_positions,
        }
    }
}

/// Errors for the keys of `values` that are 0, in order.
pub fn positive(values: &[(&str, usize)]) -> Result<(), String> {
    match values.iter().find(|(_, v)| *v == 0) {
        Some((key, _)) => Err(format!("key `model.{key}`: must be at least 1, got 0")),
        None => Ok(()),
    }
}

impl ModelSpec for GptSpec {
    fn context_length(&self) -> usize {
        self.context_length
    }

    fn describe(&self) -> String {
        let mut options = Vec::new();
        if !self.bias {
            options.push("no biases".to_string());
        }
        if let Some(n) = self.n_inner {
            options.push(format!("MLP {n}"));
        }
        if self.activation != "gelu" {
            options.push(self.activation.clone());
        }
        if !self.learned_positions {
            options.push("no learned positions".into());
        }
        let options = if options.is_empty() { String::new() } else { format!(" ({})", options.join(", ")) };
        format!("GPT-2 {} layers, {} heads, {} wide{options}", self.n_layer, self.n_head, self.n_embd)
    }

    fn build(&self, at: &BuildContext) -> models::Result<Box<dyn Model>> {
        Ok(Box::new(Gpt::with_precision(self.gpt_config(at.vocab_size), at.device, at.precision, at.seed)?))
    }

    fn validate(&self) -> Result<(), String> {
        positive(&[("n_layer", self.n_layer), ("n_head", self.n_head), ("n_embd", self.n_embd), ("context_length", self.context_length)])?;
        if self.n_inner == Some(0) {
            return Err("key `model.n_inner`: must be at least 1, got 0".into());
        }
        if !["gelu", "swiglu"].contains(&self.activation.as_str()) {
            return Err(format!("key `model.activation`: expected \"gelu\" or \"swiglu\", got \"{}\"", self.activation));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!("key `model.n_embd`: {} is not a multiple of model.n_head ({})", self.n_embd, self.n_head));
        }
        Ok(())
    }

    /// Parameters with their gradients and AdamW's m and v (4 f32 copies), plus one
    /// micro-batch's logits and the (B, H, T, T) attention scores each layer keeps on the CPU.
    fn min_memory_bytes(&self, vocab: f64, b: f64, seq: f64) -> f64 {
        let (l, h) = (self.n_layer as f64, self.n_head as f64);
        let activations = b * seq * vocab + l * b * h * seq * seq;
        4.0 * (4.0 * self.min_params(vocab) + activations)
    }

    /// The embeddings (the classifier tied to them), the blocks' matrices and LayerNorms
    /// (the projections' biases left out) and the final LayerNorm.
    fn min_params(&self, vocab: f64) -> f64 {
        let (l, c, ctx) = (self.n_layer as f64, self.n_embd as f64, self.context_length as f64);
        let inner = self.n_inner.map_or(4.0 * c, |n| n as f64);
        let mlp = if self.activation == "swiglu" { 3.0 } else { 2.0 } * c * inner;
        let positions = if self.learned_positions { ctx * c } else { 0.0 };
        vocab * c + positions + l * (4.0 * c * c + mlp + 4.0 * c) + 2.0 * c
    }

    fn hf_architectures() -> &'static [&'static str] {
        &["GPT2LMHeadModel"]
    }

    fn from_hf_config(config: &serde_json::Value) -> Result<Self, String> {
        let c = HfConfig(config);
        c.one_of("activation_function", &["gelu_new".into(), "gelu_pytorch_tanh".into()])?;
        c.one_of("scale_attn_weights", &[true.into()])?;
        c.one_of("scale_attn_by_inverse_layer_idx", &[false.into()])?;
        c.one_of("tie_word_embeddings", &[true.into()])?;
        let eps = c.number("layer_norm_epsilon", Some(1e-5))?;
        if (eps - kernels::ops::layernorm::EPS as f64).abs() > 1e-12 {
            return Err(format!("config.json: `layer_norm_epsilon` = {eps} is not supported (this engine's LayerNorm uses {})", kernels::ops::layernorm::EPS));
        }
        let n_embd = c.count("n_embd", None)?;
        let n_inner = c.count("n_inner", Some(4 * n_embd))?;
        if n_inner != 4 * n_embd {
            return Err(format!("config.json: `n_inner` = {n_inner} is not supported (this engine's GPT-2 MLP is 4 x n_embd = {})", 4 * n_embd));
        }
        Ok(Self { n_layer: c.count("n_layer", None)?, n_head: c.count("n_head", None)?, n_embd, context_length: c.count("n_positions", None)?, ..Self::default() })
    }
}

/// A Hugging Face config value, named in errors.
pub struct HfConfig<'a>(pub &'a serde_json::Value);

impl HfConfig<'_> {
    /// `key` as a count (usize); `default` when absent or null.
    pub fn count(&self, key: &str, default: Option<usize>) -> Result<usize, String> {
        match self.0.get(key) {
            Some(v) if !v.is_null() => v.as_u64().map(|n| n as usize).ok_or_else(|| format!("config.json: `{key}` must be a count, got {v}")),
            _ => default.ok_or_else(|| format!("config.json has no `{key}`")),
        }
    }

    /// `key` as a number; `default` when absent or null.
    pub fn number(&self, key: &str, default: Option<f64>) -> Result<f64, String> {
        match self.0.get(key) {
            Some(v) if !v.is_null() => v.as_f64().ok_or_else(|| format!("config.json: `{key}` must be a number, got {v}")),
            _ => default.ok_or_else(|| format!("config.json has no `{key}`")),
        }
    }

    /// `key` as a flag; `default` when absent or null.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.0.get(key) {
            Some(v) if !v.is_null() => v.as_bool().ok_or_else(|| format!("config.json: `{key}` must be true or false, got {v}")),
            _ => Ok(default),
        }
    }

    /// Errors unless `key` is absent, null or one of `allowed` (what this engine computes).
    pub fn one_of(&self, key: &str, allowed: &[serde_json::Value]) -> Result<(), String> {
        match self.0.get(key) {
            Some(v) if !v.is_null() && !allowed.contains(v) => {
                let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
                Err(format!("config.json: `{key}` = {v} is not supported (this engine computes {})", list.join(" or ")))
            }
            _ => Ok(()),
        }
    }
}

/// `[model] kind = "llama"`: a Llama-family model ([`models::Llama`]): RMSNorm, RoPE,
/// SwiGLU, grouped-query attention, no biases, tied or untied classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlamaSpec {
    /// Decoder layers.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (dividing n_head; n_head: multi-head attention).
    pub n_kv_head: usize,
    /// Width of the residual stream (n_head heads of n_embd / n_head, an even size).
    pub n_embd: usize,
    /// The SwiGLU MLP's hidden width.
    pub intermediate_size: usize,
    /// Longest sequence the model accepts (`max_position_embeddings`).
    pub context_length: usize,
    /// RoPE's frequency base.
    pub rope_theta: f32,
    /// RMSNorm's epsilon.
    pub rms_norm_eps: f32,
    /// The classifier reads the token embedding.
    pub tie_embeddings: bool,
}

impl Default for LlamaSpec {
    /// A tiny Llama about the size of the default GPT-2 (4 layers, 128 wide).
    fn default() -> Self {
        Self {
            n_layer: 4,
            n_head: 4,
            n_kv_head: 2,
            n_embd: 128,
            intermediate_size: 344,
            context_length: 128,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            tie_embeddings: true,
        }
    }
}

impl LlamaSpec {
    /// The model's config for a vocabulary of `vocab_size`.
    pub fn llama_config(&self, vocab_size: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size,
            context_length: self.context_length,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_kv_head: self.n_kv_head,
            n_embd: self.n_embd,
            intermediate_size: self.intermediate_size,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            tie_embeddings: self.tie_embeddings,
        }
    }
}

impl ModelSpec for LlamaSpec {
    fn context_length(&self) -> usize {
        self.context_length
    }

    fn describe(&self) -> String {
        format!(
            "Llama {} layers, {} heads ({} key/value), {} wide, MLP {}, {} classifier",
            self.n_layer,
            self.n_head,
            self.n_kv_head,
            self.n_embd,
            self.intermediate_size,
            if self.tie_embeddings { "tied" } else { "untied" }
        )
    }

    fn build(&self, at: &BuildContext) -> models::Result<Box<dyn Model>> {
        Ok(Box::new(Llama::with_precision(self.llama_config(at.vocab_size), at.device, at.precision, at.seed)?))
    }

    fn validate(&self) -> Result<(), String> {
        positive(&[
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_kv_head", self.n_kv_head),
            ("n_embd", self.n_embd),
            ("intermediate_size", self.intermediate_size),
            ("context_length", self.context_length),
        ])?;
        // The model's own checks, their field names made keys.
        self.llama_config(1).validate().map_err(|e| {
            let msg = match e {
                models::Error::Config(m) => m,
                other => other.to_string(),
            };
            match msg.split_whitespace().next().filter(|w| self.keys_contain(w)) {
                Some(key) => format!("key `model.{key}`: {msg}"),
                None => format!("[model] kind = \"llama\": {msg}"),
            }
        })
    }

    fn min_memory_bytes(&self, vocab: f64, b: f64, seq: f64) -> f64 {
        let (l, nh) = (self.n_layer as f64, self.n_head as f64);
        let activations = b * seq * vocab + l * b * nh * seq * seq;
        4.0 * (4.0 * self.min_params(vocab) + activations)
    }

    /// Every parameter: the embedding (and an untied classifier), the blocks and the final norm.
    fn min_params(&self, vocab: f64) -> f64 {
        let (l, c, h, nh) = (self.n_layer as f64, self.n_embd as f64, self.intermediate_size as f64, self.n_head as f64);
        let hs = c / nh;
        let heads = if self.tie_embeddings { 1.0 } else { 2.0 };
        let qkv = c * (nh + 2.0 * self.n_kv_head as f64) * hs;
        heads * vocab * c + l * (qkv + c * c + 3.0 * c * h + 2.0 * c) + c
    }

    fn hf_architectures() -> &'static [&'static str] {
        &["LlamaForCausalLM"]
    }

    fn from_hf_config(config: &serde_json::Value) -> Result<Self, String> {
        let c = HfConfig(config);
        c.one_of("hidden_act", &["silu".into()])?;
        c.one_of("attention_bias", &[false.into()])?;
        c.one_of("mlp_bias", &[false.into()])?;
        c.one_of("rope_scaling", &[])?;
        let n_embd = c.count("hidden_size", None)?;
        let n_head = c.count("num_attention_heads", None)?;
        if let Some(head_dim) = config.get("head_dim").and_then(|v| v.as_u64()) {
            if n_head == 0 || head_dim as usize * n_head != n_embd {
                return Err(format!("config.json: `head_dim` = {head_dim} is not hidden_size / num_attention_heads ({n_embd} / {n_head})"));
            }
        }
        Ok(Self {
            n_layer: c.count("num_hidden_layers", None)?,
            n_head,
            n_kv_head: c.count("num_key_value_heads", Some(n_head))?,
            n_embd,
            intermediate_size: c.count("intermediate_size", None)?,
            context_length: c.count("max_position_embeddings", None)?,
            rope_theta: c.number("rope_theta", Some(10000.0))? as f32,
            rms_norm_eps: c.number("rms_norm_eps", Some(1e-6))? as f32,
            tie_embeddings: c.flag("tie_word_embeddings", false)?,
        })
    }
}

impl LlamaSpec {
    fn keys_contain(&self, word: &str) -> bool {
        table_of(self).is_ok_and(|t| t.contains_key(word))
    }
}
