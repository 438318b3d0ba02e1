//! `engine bench`: reproducible benchmark runs. A suite (`kernels`, `loader`, `train`, or
//! `all`) measures, with warm-up and repeats, and writes one results file: every entry's
//! median and spread, the workload it measured (settings and their hash) and the
//! environment (device, driver, CUDA and NVRTC versions, clocks, CPU, git commit and whether
//! the tree was dirty, seeds). `engine bench compare A.json B.json` prints the ratio of every
//! entry both files contain. Schema: docs/schemas/bench.schema.json; method and tables:
//! docs/BENCHMARKS.md.

pub mod compare;
pub mod env;
pub mod kernels;
pub mod loader;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::io;
use crate::{Error, Result};

/// The results file format this engine writes and reads.
pub const FORMAT: &str = "engine-bench/1";

/// What a suite measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// The CUDA (or CPU) kernels one by one: time per call and achieved rate.
    Kernels,
    /// The data loader alone: tokens/s by worker count.
    Loader,
    /// Whole training steps of configs: tokens/s, step time, memory.
    Train,
    /// `kernels`, then `loader`, then `train`.
    All,
}

impl Suite {
    /// The suites' names on the command line, in variant order.
    pub const NAMES: [&'static str; 4] = ["kernels", "loader", "train", "all"];

    /// The suite `name` names; any other name is an error listing [`Suite::NAMES`].
    pub fn parse(name: &str) -> Result<Suite> {
        match name {
            "kernels" => Ok(Suite::Kernels),
            "loader" => Ok(Suite::Loader),
            "train" => Ok(Suite::Train),
            "all" => Ok(Suite::All),
            other => Err(Error::Usage(format!("unknown bench suite \"{other}\": expected one of {}", Suite::NAMES.join(", ")))),
        }
    }
}

/// Whether a larger value of an entry is better (a rate) or worse (a time, memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// A rate: tokens/s, GB/s, TFLOP/s.
    Higher,
    /// A cost: milliseconds, bytes.
    Lower,
}

/// One measured quantity: the median of `samples` repeated measurements, with the spread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique in a file, `/`-separated: `train/shakespeare-char/none/tokens_per_s`,
    /// `kernels/matmul_qkv_forward/time_ms`, `loader/workers=2/tokens_per_s`.
    pub name: String,
    /// "ms", "tokens/s", "GB/s", "TFLOP/s", "bytes", "fraction".
    pub unit: String,
    /// Which direction is an improvement.
    pub better: Better,
    /// Median of the measurements, in `unit`.
    pub median: f64,
    /// Smallest measurement, in `unit`.
    pub min: f64,
    /// Largest measurement, in `unit`.
    pub max: f64,
    /// How many measurements the median is over.
    pub samples: usize,
    /// The workload's hash (a key of the file's `workloads`): entries compare only against
    /// entries of the same workload.
    pub workload: String,
}

impl Entry {
    /// An entry over `values`, its non-finite values dropped; `None` when none is left.
    pub fn from_values(name: impl Into<String>, unit: &str, better: Better, workload: &str, values: &[f64]) -> Option<Entry> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Entry {
            name: name.into(),
            unit: unit.into(),
            better,
            median: median_sorted(&v),
            min: v[0],
            max: v[v.len() - 1],
            samples: v.len(),
            workload: workload.into(),
        })
    }
}

/// The median of sorted, non-empty `v` (the mean of the middle two for an even count).
pub fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The settings that define what was measured, and their hash: two entries of the same
/// name measured the same thing only if their workloads' hashes agree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// SHA-256 of `settings` as canonical JSON (keys sorted, no spaces), first 16 hex digits.
    pub hash: String,
    /// What was measured: shapes, sizes, the config's model and batch, seeds, ...
    pub settings: serde_json::Value,
    /// For a training workload: SHA-256 of the whole resolved config (`config.toml` of the
    /// run), first 16 hex digits. Recorded, not compared: `settings` decide comparability
    /// (a reference implementation has no engine config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

impl Workload {
    /// The workload of `settings`, hashed with [`hash_settings`]; no config hash.
    pub fn new(settings: serde_json::Value) -> Workload {
        Workload { hash: hash_settings(&settings), settings, config_hash: None }
    }
}

/// The hash of `settings`: SHA-256 over its canonical JSON (serde_json's maps keep keys
/// sorted; no whitespace), first 16 hex digits. Python's `json.dumps(sort_keys=True,
/// separators=(",", ":"))` gives the same text except for floats: serde_json writes the
/// shortest round-trip form without an exponent down to 1e-5 and with `e-8`, not `e-08`
/// (1e-5 is `0.00001`, 1e-8 is `1e-8`), so benches/reference formats floats as serde_json
/// does (`canonical_json` there).
pub fn hash_settings(settings: &serde_json::Value) -> String {
    let text = serde_json::to_string(settings).expect("serializable");
    short_sha256(text.as_bytes())
}

/// SHA-256 of `bytes`, first 16 hex digits.
pub fn short_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// [`FORMAT`].
    pub format: String,
    /// The suite that ran ("kernels", "loader", "train", "all").
    pub suite: String,
    /// Who measured: "engine", or a reference ("torch-eager", "torch-compile").
    pub implementation: String,
    /// UTC, RFC 3339, when the run started.
    pub created: String,
    /// The machine and build that measured.
    pub environment: env::Environment,
    /// Every workload an entry names, by hash.
    pub workloads: BTreeMap<String, Workload>,
    /// Every measured quantity, in the order measured; names are unique.
    pub entries: Vec<Entry>,
}

impl Results {
    /// Empty results of `suite` by the engine, created now, in `environment`.
    pub fn new(suite: &str, environment: env::Environment) -> Results {
        Results {
            format: FORMAT.into(),
            suite: suite.into(),
            implementation: "engine".into(),
            created: env::now_rfc3339(),
            environment,
            workloads: BTreeMap::new(),
            entries: Vec::new(),
        }
    }

    /// Registers `workload` and returns its hash for entries.
    pub fn workload(&mut self, workload: Workload) -> String {
        let hash = workload.hash.clone();
        self.workloads.insert(hash.clone(), workload);
        hash
    }

    /// Adds `entry` (`None`, nothing measured, is skipped).
    pub fn push(&mut self, entry: Option<Entry>) {
        if let Some(e) = entry {
            self.entries.push(e);
        }
    }

    /// Reads and checks a results file: JSON of this format, entry names unique, every
    /// entry's workload present. Errors name the file.
    pub fn read(path: &Path) -> Result<Results> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Usage(format!("cannot read results file {}: {e}", path.display())))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Usage(format!("{} is not a results file: not JSON (line {}, column {}: {e})", path.display(), e.line(), e.column())))?;
        let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != FORMAT {
            return Err(Error::Usage(format!(
                "{} is not a results file of this engine: \"format\" is {}, expected \"{FORMAT}\" (written by `engine bench` or benches/reference)",
                path.display(),
                value.get("format").map_or("missing".to_string(), |f| f.to_string())
            )));
        }
        let results: Results = serde_path_to_error::deserialize(value)
            .map_err(|e| Error::Usage(format!("{}: key `{}`: {}", path.display(), e.path(), e.inner())))?;
        let mut seen = std::collections::BTreeSet::new();
        for e in &results.entries {
            if !seen.insert(&e.name) {
                return Err(Error::Usage(format!("{}: entry \"{}\" appears twice", path.display(), e.name)));
            }
            if !results.workloads.contains_key(&e.workload) {
                return Err(Error::Usage(format!("{}: entry \"{}\" names workload {}, which the file does not describe", path.display(), e.name, e.workload)));
            }
        }
        Ok(results)
    }

    /// Writes the file (pretty JSON) via a temporary file renamed into place.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self).expect("serializable") + "\n").map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// A table of the entries, for the terminal.
    pub fn table(&self) -> String {
        let mut out = String::from("entry | median | min | max | n\n");
        for e in &self.entries {
            out += &format!("{} | {} {} | {} | {} | {}\n", e.name, fmt_value(e.median), e.unit, fmt_value(e.min), fmt_value(e.max), e.samples);
        }
        out
    }
}

/// A number with 4 significant digits, thousands kept whole.
pub fn fmt_value(v: f64) -> String {
    match v.abs() {
        a if a >= 1000.0 => format!("{v:.0}"),
        a if a >= 1.0 => format!("{v:.3}"),
        0.0 => "0".into(),
        _ => format!("{v:.4e}"),
    }
}

/// What `engine bench SUITE` was asked for.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Configs for the train suite (default: the embedded default config,
    /// configs/shakespeare-char.toml).
    pub configs: Vec<PathBuf>,
    /// `--set` overrides for those configs.
    pub overrides: Vec<String>,
    /// "auto", "cpu", "cuda", "cuda:N".
    pub device: String,
    /// Fewer, shorter repeats: a check that the suite runs, not a measurement.
    pub quick: bool,
    /// No per-entry progress lines on stderr.
    pub quiet: bool,
    /// The model kinds the train suite's configs may name.
    pub registry: crate::registry::Registry,
}

/// Runs `suite` and returns its results.
pub fn run(suite: Suite, options: &BenchOptions) -> Result<Results> {
    let request = kernels_device(&options.device)?;
    let environment = env::capture(request)?;
    let name = Suite::NAMES[suite as usize];
    let mut results = Results::new(name, environment);
    if matches!(suite, Suite::Kernels | Suite::All) {
        kernels::run(&mut results, request, options)?;
    }
    if matches!(suite, Suite::Loader | Suite::All) {
        loader::run(&mut results, options)?;
    }
    if matches!(suite, Suite::Train | Suite::All) {
        train::run(&mut results, options)?;
    }
    Ok(results)
}

/// The device `--device` names.
fn kernels_device(device: &str) -> Result<::kernels::Device> {
    let request = ::kernels::device::DeviceRequest::parse(device)
        .ok_or_else(|| Error::Usage(format!("--device \"{device}\": expected auto, cpu, cuda or cuda:N")))?;
    Ok(::kernels::device::select(request)?.0)
}
