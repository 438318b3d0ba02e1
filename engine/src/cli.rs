//! The `engine` command line, for any set of model kinds: `engine train`, `plan`, `eval`,
//! `sample`, `report`, `bench`, `prepare` and `kernels`. The `engine` binary is
//! `main_with(Registry::builtin())`; a library user's binary registers its own kinds and
//! gets the same commands for them:
//!
//! ```no_run
//! use engine::registry::Registry;
//!
//! fn main() -> std::process::ExitCode {
//!     let registry = Registry::builtin();
//!     // registry.register::<MyModelSpec>("my-model");
//!     engine::cli::main_with(registry)
//! }
//! ```

use std::io::Write;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kernels::device::{select, DeviceRequest};

use crate::bench::BenchOptions;
use crate::checkpoint::{self, LoadedModel};
use crate::config::Config;
use crate::prepare::{prepare, InputFormat, PrepareOptions, ValSplit, DEFAULT_SHARD_TOKENS, DEFAULT_VAL_FRACTION};
use crate::registry::Registry;
use crate::sample::{prompt_ids, sample_each, sample_ids, SampleOptions, Utf8Stream};

/// `engine sample --json` keeps every token for the JSON: at most this many.
const MAX_JSON_TOKENS: usize = 100_000_000;
use crate::train::{evaluate, load_dataset, plan_run, resolve_budget, resolve_device, train, StopFlag, TrainOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use crate::{Error, Result};

#[derive(Parser)]
#[command(name = "engine", version, about = "A standalone training engine for GPT-2-class transformers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML config.
    Train {
        config: PathBuf,
        /// Override a config value, e.g. --set train.max_steps=100 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print only alerts and the final summary (no progress).
        #[arg(long)]
        quiet: bool,
        /// Continue from the run directory's newest checkpoint that verifies against its
        /// manifest (falling back past a missing, dangling or damaged `latest`, and saying so).
        #[arg(long)]
        resume: bool,
        /// Continue from the run directory's checkpoint of step STEP (checkpoints/step-XXXXXX,
        /// the step zero-padded to 6 digits) instead of the newest; implies --resume. A step
        /// with no checkpoint, or one that fails verification, is an error listing the steps
        /// that have one.
        #[arg(long, value_name = "STEP")]
        resume_step: Option<u64>,
    },
    /// Show the memory plan (micro-batch, gradient accumulation, recomputation) that fits
    /// memory.budget, measured on the device, without training.
    Plan {
        config: PathBuf,
        /// Override a config value, e.g. --set memory.budget=2GiB (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print the plan as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: `engine bench kernels|loader|train|all [--out results.json]`, or
    /// `engine bench compare A.json B.json` (the ratio of every entry both contain).
    Bench {
        /// kernels, loader, train, all, or compare.
        suite: String,
        /// For compare: the two results files (A, then B).
        #[arg(value_name = "RESULTS")]
        files: Vec<PathBuf>,
        /// A config for the train suite (repeatable; default: the embedded default config).
        #[arg(long = "config", value_name = "CONFIG")]
        configs: Vec<PathBuf>,
        /// Override a config value of the train suite's configs (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Where to write the results (default: bench-<suite>.json in the current directory).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// "auto", "cpu", "cuda" or "cuda:N".
        #[arg(long, default_value = "auto", value_name = "DEVICE")]
        device: String,
        /// Few, short repeats: checks that the suite runs; not a measurement.
        #[arg(long)]
        quick: bool,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Write RUN_DIR/report.html again from the run's logs (train writes it at the end of
    /// every run): charts of loss, throughput, MFU, memory, the step-time split and
    /// telemetry, the summary table and the alerts; one self-contained file.
    Report {
        /// A run directory (`<run.out_dir>/<run.name>`).
        run_dir: PathBuf,
    },
    /// Tokenize text or JSONL into a data set directory (llm.c shards + dataset.json) for
    /// `data.path`, streaming and resumable; or describe existing llm.c shards (--import).
    Prepare {
        /// Text or JSONL files, directories (their files, sorted) or glob patterns, in order.
        #[arg(required_unless_present = "import", value_name = "INPUT")]
        inputs: Vec<String>,
        /// "byte" (vocab 256) or "gpt2" (GPT-2 BPE, vocab 50257).
        #[arg(long, value_parser = ["byte", "gpt2"])]
        tokenizer: String,
        /// The data set directory to create (or to continue, after an interruption).
        #[arg(long, value_name = "DIR", required_unless_present = "import")]
        out: Option<PathBuf>,
        /// The first N tokens become the validation split (llm.c's shard 0).
        #[arg(long, value_name = "N")]
        val_tokens: Option<u64>,
        /// The last fraction of all tokens becomes the validation split; in (0, 1). The
        /// default (0.1) when --val-tokens is not given.
        #[arg(long, value_name = "F")]
        val_fraction: Option<f64>,
        /// Tokens per shard file (the last of each split may hold fewer).
        #[arg(long, default_value_t = DEFAULT_SHARD_TOKENS, value_name = "N")]
        shard_tokens: usize,
        /// "auto" (.jsonl and .json files are JSONL, others text), "text" or "jsonl".
        #[arg(long, default_value = "auto", value_parser = ["auto", "text", "jsonl"])]
        format: String,
        /// The JSONL field that holds a document's text.
        #[arg(long, default_value = "text", value_name = "NAME")]
        text_field: String,
        /// Write only a dataset.json over the llm.c shards of DIR (`*train*.bin`,
        /// `*val*.bin`), checking them; no input, nothing re-tokenized.
        #[arg(long, value_name = "DIR")]
        import: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Generate text from a checkpoint (a checkpoint directory, a run directory, or a Hugging
    /// Face `save_pretrained` directory of a kind this program reads: GPT-2, Llama).
    Sample {
        checkpoint: PathBuf,
        #[arg(long, default_value = "\n")]
        prompt: String,
        #[arg(long, default_value_t = 500)]
        tokens: usize,
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Nucleus sampling: draw from the smallest set of most likely tokens whose
        /// probability reaches P, in (0, 1]; 1 keeps all.
        #[arg(long, default_value_t = 1.0, value_name = "P")]
        top_p: f32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run the whole window through the model for every token instead of decoding
        /// through its key/value cache (same tokens, slower; for comparison).
        #[arg(long)]
        no_kv_cache: bool,
        /// "auto" (the GPU when usable, else the CPU), "cpu", "cuda" or "cuda:N".
        #[arg(long, default_value = "auto", value_name = "DEVICE")]
        device: String,
        /// Print one JSON line: the prompt's and the generated token ids, the text, and the
        /// seconds the generation took (the model's loading left out) with its tokens/s.
        #[arg(long)]
        json: bool,
    },
    /// The CUDA kernels: `engine kernels build --arch sm_90 [--arch sm_80] --out DIR`
    /// precompiles them (needs NVRTC); copy DIR to a machine with only the NVIDIA driver and
    /// set ENGINE_KERNEL_CACHE=DIR there: it runs with no NVRTC. `engine kernels resources
    /// [--arch sm_90] [--markdown]` prints every kernel's registers, shared memory, spills and
    /// blocks per SM (needs NVRTC, no GPU).
    Kernels {
        #[command(subcommand)]
        action: KernelsCommand,
    },
    /// Print a checkpoint's validation loss (a checkpoint, a run directory, or a Hugging Face
    /// `save_pretrained` directory: its vocabulary picks the tokenizer), or with `--task
    /// hellaswag --data FILE` its HellaSwag accuracies (lm-eval-harness's acc and acc_norm,
    /// llm.c's rendering and mean-token-loss acc_norm as llmc_acc and llmc_acc_norm).
    Eval {
        checkpoint: PathBuf,
        /// "val" (the validation loss of the run's data) or "hellaswag" (needs --data).
        #[arg(long, default_value = "val", value_parser = ["val", "hellaswag"])]
        task: String,
        /// For --task hellaswag: the official HellaSwag JSONL (e.g. hellaswag_val.jsonl) or
        /// llm.c's hellaswag_val.bin.
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
        /// For --task hellaswag: score only the first N examples.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// For --task hellaswag: rows (a context and one ending) per forward (default 8).
        #[arg(long, value_name = "N")]
        rows: Option<usize>,
        /// For --task hellaswag: also write one JSON line per example (each ending's summed
        /// log-likelihood and tokens in both renderings, the picks) to FILE.
        #[arg(long, value_name = "FILE")]
        examples_out: Option<PathBuf>,
        /// Validation batches (default: the run's train.eval_batches).
        #[arg(long)]
        batches: Option<usize>,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Also write the evaluated windows, as safetensors `tokens` int32 [windows, T+1].
        #[arg(long, value_name = "FILE")]
        dump_tokens: Option<PathBuf>,
        /// "auto" (the GPU when usable, else the CPU), "cpu", "cuda" or "cuda:N".
        #[arg(long, default_value = "auto", value_name = "DEVICE")]
        device: String,
    },
}

#[derive(Subcommand)]
enum KernelsCommand {
    /// Compile every embedded kernel file for each --arch into DIR (a kernel cache directory).
    Build {
        /// A GPU architecture such as sm_80 or sm_90 (repeatable).
        #[arg(long = "arch", required = true, value_name = "ARCH")]
        archs: Vec<String>,
        /// The cache directory to fill (created if needed).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Compile every kernel with ptxas's report (needs NVRTC, no GPU) and print each kernel's
    /// registers, static shared memory, stack frame, spills, barriers and blocks per SM at
    /// its launch configuration (kernels/src/cuda/launches.rs). Exits non-zero, naming the
    /// kernel, if one spills, cannot launch, breaks its budget, or is missing from the table.
    Resources {
        /// sm_80 or sm_90 (repeatable; default both).
        #[arg(long = "arch", value_name = "ARCH")]
        archs: Vec<String>,
        /// Print Markdown tables (as in docs/BENCHMARKS.md).
        #[arg(long)]
        markdown: bool,
    },
}

/// Parses the command line and runs it with the model kinds of `registry`; prints an error
/// as one line and returns a failure exit code.
pub fn main_with(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    match catch_file_size_limit().and_then(|()| kernels::ops::on_cpu_workers(|| run(cli, &registry))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", clip(&e.to_string()));
            match e {
                // A stop on a signal exits as the shell expects of it (SIGINT 130, SIGTERM 143).
                Error::Interrupted { signal, .. } => ExitCode::from((128 + signal).clamp(0, 255) as u8),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// An error message of at most about [`MAX_MESSAGE`] characters: one that echoes a huge value
/// (a 1 MiB `--set`) keeps its beginning and end, saying how much was left out.
fn clip(msg: &str) -> String {
    let chars = msg.chars().count();
    if chars <= MAX_MESSAGE {
        return msg.to_string();
    }
    let head: String = msg.chars().take(MAX_MESSAGE * 3 / 4).collect();
    let tail: String = msg.chars().skip(chars - MAX_MESSAGE / 4).collect();
    format!("{head} [... {} characters left out ...] {tail}", chars - MAX_MESSAGE)
}

/// A write past the file-size limit (`ulimit -f`, RLIMIT_FSIZE) raises SIGXFSZ, whose default
/// action kills the process without a word. Caught (by a handler that does nothing), the
/// write fails with EFBIG instead, which ends the command with the usual error line naming
/// the file (a run's earlier checkpoints stay as they were).
fn catch_file_size_limit() -> Result<()> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGXFSZ, flag)
        .map(drop)
        .map_err(|e| Error::Usage(format!("cannot handle SIGXFSZ: {e}")))
}

/// SIGINT and SIGTERM ask the run to stop after its current step, with a checkpoint
/// (`TrainOptions::stop`); a second one exits at once (with 130 or 143).
fn stop_on_signals() -> Result<StopFlag> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = StopFlag::default();
    let asked = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        let failed = |e: std::io::Error| Error::Usage(format!("cannot handle {}: {e}", crate::error::signal_name(signal)));
        // Registered first, so it runs first and sees whether an earlier signal already asked
        // for a stop: then this one exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&asked)).map_err(failed)?;
        let (value, asked) = (Arc::clone(&flag.0), Arc::clone(&asked));
        // SAFETY: the handler only stores to atomics (async-signal-safe).
        let handler = move || {
            value.store(signal as usize, Ordering::SeqCst);
            asked.store(true, Ordering::SeqCst);
        };
        unsafe { signal_hook::low_level::register(signal, handler) }.map_err(failed)?;
    }
    Ok(flag)
}

/// The longest error line `engine` prints.
const MAX_MESSAGE: usize = 2000;

fn run(cli: Cli, registry: &Registry) -> Result<()> {
    match cli.command {
        Command::Train { config, overrides, quiet, resume, resume_step } => {
            let config = Config::load_in(&config, &overrides, registry)?;
            let resume = resume || resume_step.is_some();
            let s = train(&config, &TrainOptions { quiet, resume, resume_step, stop: Some(stop_on_signals()?), ..Default::default() })?;
            let val = s.val_losses.last().map_or("-".into(), |(_, v)| format!("{v:.4}"));
            let m = &s.memory;
            println!(
                "trained {} steps in {:.1}s ({:.0} tokens/s); final val loss {val}; memory peak {}, reserved {}, cache hit rate {:.1}%; checkpoint {}",
                s.steps,
                s.train_seconds,
                s.tokens_per_sec,
                kernels::memory::fmt_bytes(m.peak),
                kernels::memory::fmt_bytes(m.reserved),
                100.0 * m.hit_rate(),
                s.checkpoint.display()
            );
            Ok(())
        }
        Command::Bench { suite, files, configs, overrides, out, device, quick, quiet } => {
            bench(suite, files, BenchOptions { configs, overrides, device, quick, quiet, registry: registry.clone() }, out)
        }
        Command::Report { run_dir } => {
            let run = crate::report::load(&run_dir)?;
            // What was skipped (a torn last line of a killed run), once per file, on stderr.
            for note in &run.notes {
                eprintln!("note: {note}");
            }
            println!("{}", crate::report::write_page(&run)?.display());
            Ok(())
        }
        Command::Plan { config, overrides, json } => {
            let config = Config::load_in(&config, &overrides, registry)?;
            let (device, precision, note) = resolve_device(&config)?;
            let data = load_dataset(&config)?;
            let budget = resolve_budget(&config, device)?;
            let plan = plan_run(&config, device, precision, data.vocab_size, budget)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan).expect("serializable"));
            } else {
                println!("{note}");
                if budget.is_none() {
                    println!(
                        "memory.budget is unset, so nothing is planned: the run uses micro-batch {} x {} accumulation, recompute {} \
                         (set memory.budget, e.g. --set memory.budget=90%, to plan within a budget)",
                        plan.micro_batch, plan.grad_accum, plan.policy
                    );
                } else {
                    println!("{}", plan.table());
                }
            }
            Ok(())
        }
        Command::Prepare { inputs, tokenizer, out, val_tokens, val_fraction, shard_tokens, format, text_field, import, quiet } => {
            if let Some(dir) = import {
                if !inputs.is_empty() || out.is_some() || val_tokens.is_some() || val_fraction.is_some() {
                    return Err(Error::Usage(
                        "--import DIR takes no inputs, --out, --val-tokens or --val-fraction: it describes the shards already in DIR".into(),
                    ));
                }
                let s = crate::prepare::import(&dir, &tokenizer)?;
                let m = &s.meta;
                println!("imported {}: {}; wrote {}", s.dir.display(), describe_splits(m), s.dir.join(datasets::dataset::DATASET_JSON).display());
                return Ok(());
            }
            let val = match (val_tokens, val_fraction) {
                (Some(_), Some(_)) => return Err(Error::Usage("give --val-tokens or --val-fraction, not both".into())),
                (Some(n), None) => ValSplit::Tokens(n),
                (None, Some(f)) => ValSplit::Fraction(f),
                (None, None) => ValSplit::Fraction(DEFAULT_VAL_FRACTION),
            };
            let format = match format.as_str() {
                "text" => InputFormat::Text,
                "jsonl" => InputFormat::Jsonl,
                _ => InputFormat::Auto,
            };
            let out = out.expect("clap requires --out without --import");
            let s = prepare(&PrepareOptions { tokenizer, inputs, out, val, shard_tokens, format, text_field, progress: !quiet })?;
            let m = &s.meta;
            let mb = s.bytes_read as f64 / 1e6;
            println!(
                "prepared {} in {:.1}s: {}, from {} files ({} bytes); this run read {:.1} MB ({:.1} MB/s, {:.0} tokens/s){}",
                s.out.display(),
                s.seconds,
                describe_splits(m),
                m.sources.len(),
                m.sources.iter().map(|x| x.bytes).sum::<u64>(),
                mb,
                mb / s.seconds.max(1e-9),
                s.tokens_made as f64 / s.seconds.max(1e-9),
                if s.resumed_shards > 0 { format!(", {} shard(s) kept from the interrupted run", s.resumed_shards) } else { String::new() }
            );
            Ok(())
        }
        Command::Sample { checkpoint, prompt, tokens, temperature, top_k, top_p, seed, no_kv_cache, device, json } => {
            let options = SampleOptions { prompt, tokens, temperature, top_k, top_p, seed, kv_cache: !no_kv_cache };
            options.validate(|name| format!("--{}", name.replace('_', "-"))).map_err(Error::Usage)?;
            if json && tokens > MAX_JSON_TOKENS {
                return Err(Error::Usage(format!(
                    "--tokens {tokens} with --json: at most {MAX_JSON_TOKENS} (the JSON holds every token; without --json any number is streamed)"
                )));
            }
            let LoadedModel { config, mut model, .. } = load_checkpoint_on(&checkpoint, &device, registry)?;
            let tokenizer = datasets::tokenizer(&config.data.tokenizer)?;
            if json {
                let prompt_tokens = prompt_ids(tokenizer.as_ref(), &options.prompt).len();
                let started = std::time::Instant::now();
                let ids = sample_ids(model.as_mut(), tokenizer.as_ref(), &options)?;
                let seconds = started.elapsed().as_secs_f64();
                let (given, generated) = ids.split_at(prompt_tokens);
                let rate = generated.len() as f64 / seconds.max(1e-9);
                println!(
                    "{}",
                    serde_json::json!({"prompt_tokens": given, "tokens": generated, "text": tokenizer.decode(&ids), "seconds": seconds, "tokens_per_s": rate})
                );
                return Ok(());
            }
            // The text as it is generated: the prompt, then each token once its characters
            // are complete.
            // A reader that goes away (`| head`) ends the sampling quietly.
            let mut out = std::io::stdout().lock();
            let mut text = Utf8Stream::default();
            let closed = std::cell::Cell::new(false);
            let failed = |e: std::io::Error| {
                closed.set(e.kind() == std::io::ErrorKind::BrokenPipe);
                Error::Usage(format!("writing the sample to stdout: {e}"))
            };
            let prompt = text.push(&tokenizer.decode_bytes(&prompt_ids(tokenizer.as_ref(), &options.prompt)));
            let streamed = out.write_all(prompt.as_bytes()).and_then(|()| out.flush()).map_err(failed).and_then(|()| {
                sample_each(model.as_mut(), tokenizer.as_ref(), &options, &mut |id| {
                    out.write_all(text.push(&tokenizer.decode_bytes(&[id])).as_bytes()).and_then(|()| out.flush()).map_err(failed)
                })
            });
            match streamed.and_then(|()| writeln!(out, "{}", text.finish()).map_err(failed)) {
                Err(_) if closed.get() => Ok(()),
                other => other,
            }
        }
        Command::Kernels { action: KernelsCommand::Build { archs, out } } => {
            let written = kernels::cuda::build_kernel_cache(&out, &archs)?;
            for path in &written {
                println!("{}", path.display());
            }
            println!(
                "{} cubins for {} in {}; on a machine with only the NVIDIA driver, set ENGINE_KERNEL_CACHE={}",
                written.len(),
                archs.join(", "),
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Kernels { action: KernelsCommand::Resources { archs, markdown } } => {
            let archs: Vec<&str> = if archs.is_empty() { vec!["sm_80", "sm_90"] } else { archs.iter().map(String::as_str).collect() };
            let report = kernels::cuda::resources::report(&archs)?;
            print!("{}", report.table(markdown));
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(report.ok()?)
        }
        Command::Eval { checkpoint, task, data, limit, rows, examples_out, batches, json, dump_tokens, device } => {
            if task == "hellaswag" {
                if batches.is_some() || dump_tokens.is_some() {
                    return Err(Error::Usage("--batches and --dump-tokens are for --task val, not --task hellaswag".into()));
                }
                let data = data.ok_or_else(|| Error::Usage("--task hellaswag needs --data FILE (the HellaSwag JSONL or llm.c's .bin)".into()))?;
                let options = HellaSwagOptions { data, limit, rows, examples_out, json };
                return eval_hellaswag(&checkpoint, &device, registry, options);
            }
            if data.is_some() || limit.is_some() || rows.is_some() || examples_out.is_some() {
                return Err(Error::Usage("--data, --limit, --rows and --examples-out are for --task hellaswag".into()));
            }
            let LoadedModel { dir, state, config, mut model, precision } = load_checkpoint_on(&checkpoint, &device, registry)?;
            let data = load_dataset(&config)?;
            let t = &config.train;
            let batches = batches.unwrap_or(t.eval_batches);
            if batches == 0 {
                return Err(Error::Usage("--batches must be at least 1".into()));
            }
            let (loss, windows) = evaluate(model.as_mut(), &data.val, t.batch_size, t.seq_len, batches)?;
            if let Some(path) = dump_tokens {
                let index = data.val.windows(t.seq_len)?;
                dump_windows(&path, &data.val.sequential_windows(&index, windows), windows, t.seq_len)?;
            }
            let (device, precision) = (model.device().to_string(), precision.name());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"val_loss": loss, "windows": windows, "seq_len": t.seq_len, "step": state.as_ref().map(|s| s.step), "device": device, "precision": precision})
                );
            } else {
                let source = match &state {
                    Some(state) => format!("checkpoint {}, step {}", dir.display(), state.step),
                    None => format!("Hugging Face directory {}", dir.display()),
                };
                println!("val loss {loss:.4} ({windows} windows of {} tokens; {source}; {device}, {precision})", t.seq_len);
            }
            Ok(())
        }
    }
}

/// `engine eval --task hellaswag`'s options.
struct HellaSwagOptions {
    data: PathBuf,
    limit: Option<usize>,
    rows: Option<usize>,
    examples_out: Option<PathBuf>,
    json: bool,
}

/// `engine eval CHECKPOINT --task hellaswag --data FILE`: the accuracies, as one line of
/// text or JSON; with --examples-out, each example's scores too (written at the end only).
fn eval_hellaswag(checkpoint: &Path, device: &str, registry: &Registry, o: HellaSwagOptions) -> Result<()> {
    use crate::hellaswag;
    if o.limit == Some(0) || o.rows == Some(0) {
        return Err(Error::Usage(format!("--{} must be at least 1", if o.limit == Some(0) { "limit" } else { "rows" })));
    }
    let LoadedModel { dir, state, config, mut model, precision } = load_checkpoint_on(checkpoint, device, registry)?;
    let tokenizer = datasets::tokenizer(&config.data.tokenizer)?;
    let task = hellaswag::load(&o.data, tokenizer.as_ref(), model.vocab_size())?;
    let examples = &task.examples[..o.limit.unwrap_or(usize::MAX).min(task.examples.len())];
    let started = std::time::Instant::now();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new(examples.len() as u64);
        bar.set_style(indicatif::ProgressStyle::with_template("hellaswag {bar:30} {pos}/{len} examples, eta {eta}").expect("template"));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let scores = hellaswag::score(model.as_mut(), examples, o.rows.unwrap_or(hellaswag::DEFAULT_ROWS), &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let s = hellaswag::summarize(&scores);
    if let Some(path) = &o.examples_out {
        let mut body = String::new();
        for score in &scores {
            body.push_str(&serde_json::to_string(score).expect("serializable"));
            body.push('\n');
        }
        fs_write(path, body.as_bytes())?;
    }
    let (device, precision) = (model.device().to_string(), precision.name());
    let format = match task.format {
        hellaswag::Format::Jsonl => "jsonl",
        hellaswag::Format::LlmcBin => "llmc_bin",
    };
    if o.json {
        let mut line = serde_json::to_value(&s).expect("serializable");
        let extra = serde_json::json!({
            "task": "hellaswag", "data": task.path.display().to_string(), "format": format,
            "context_length": model.context_length(), "seconds": seconds,
            "step": state.as_ref().map(|s| s.step), "device": device, "precision": precision,
        });
        line.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
        println!("{line}");
        return Ok(());
    }
    let source = match &state {
        Some(state) => format!("checkpoint {}, step {}", dir.display(), state.step),
        None => format!("Hugging Face directory {}", dir.display()),
    };
    let harness = match (s.acc, s.acc_norm) {
        (Some(acc), Some(norm)) => format!("acc {acc:.4} acc_norm {norm:.4} (lm-eval-harness)"),
        _ => "acc - acc_norm - (an llm.c .bin holds llm.c's rendering only)".into(),
    };
    println!(
        "hellaswag: {} examples of {}: {harness}; llmc_acc {:.4} llmc_acc_norm {:.4} (llm.c: ctx, mean token loss); {} truncated to the \
         context of {} tokens; {source}; {device}, {precision}; {seconds:.1}s",
        s.examples,
        task.path.display(),
        s.llmc_acc,
        s.llmc_acc_norm,
        s.truncated,
        model.context_length()
    );
    if s.endings_cut > 0 {
        eprintln!("note: {} examples have an ending longer than the model's context: its first tokens were not scored", s.endings_cut);
    }
    Ok(())
}

/// Writes `bytes` to `path`, the error naming it.
fn fs_write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))
}

/// A checkpoint's model on the device `--device` asks for, in the precision its run's
/// `train.precision` gives there, except that bf16 on the CPU becomes fp32 (checkpoints hold
/// fp32 weights, and the CPU computes in fp32 only).
fn load_checkpoint_on(path: &Path, device: &str, registry: &Registry) -> Result<LoadedModel> {
    let request = DeviceRequest::parse(device)
        .ok_or_else(|| Error::Usage(format!("--device: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"{device}\"")))?;
    let (device, _) = select(request)?;
    checkpoint::load_model_for(path, device, registry)
}

/// Writes the evaluated windows, `rows` (windows, T+1), as int32.
fn dump_windows(path: &Path, rows: &[u32], windows: usize, seq_len: usize) -> Result<()> {
    let bytes: Vec<u8> = rows.iter().flat_map(|&id| (id as i32).to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![windows, seq_len + 1], &bytes).expect("sizes match");
    safetensors::serialize_to_file([("tokens", view)], None::<HashMap<String, String>>, path)
        .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))
}

fn bench(suite: String, files: Vec<PathBuf>, options: BenchOptions, out: Option<PathBuf>) -> Result<()> {
    use crate::bench::{self, compare, Results, Suite};
    if suite == "compare" {
        let [a, b] = files.as_slice() else {
            return Err(Error::Usage(format!("engine bench compare takes two results files (A.json B.json), got {}", files.len())));
        };
        let (ra, rb) = (Results::read(a)?, Results::read(b)?);
        let comparison = compare::compare(&ra, &rb, a, b)?;
        print!("{}", comparison.table(&ra, &rb));
        return Ok(());
    }
    let parsed = Suite::parse(&suite).map_err(|e| Error::Usage(format!("{e}, or compare")))?;
    if !files.is_empty() {
        return Err(Error::Usage(format!("engine bench {suite} takes no file arguments (got {}); write the results with --out FILE", files[0].display())));
    }
    let results = bench::run(parsed, &options)?;
    let path = out.unwrap_or_else(|| PathBuf::from(format!("bench-{suite}.json")));
    results.write(&path)?;
    print!("{}", results.table());
    println!("results: {}", path.display());
    Ok(())
}

/// `gpt2 tokenizer (vocab 50257), N train tokens in K shard(s), M val tokens in J shard(s)`:
/// what `engine prepare` (and `--import`) reports of a data set.
fn describe_splits(m: &datasets::DatasetMeta) -> String {
    format!(
        "{} tokenizer (vocab {}), {} train tokens in {} shard(s), {} val tokens in {} shard(s)",
        m.tokenizer,
        m.vocab_size,
        m.train.tokens,
        m.train.shards.len(),
        m.val.tokens,
        m.val.shards.len()
    )
}
