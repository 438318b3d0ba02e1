//! `engine`: train, evaluate and sample GPT-2-style models.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::checkpoint;
use engine::config::Config;
use engine::sample::{sample, SampleOptions};
use engine::train::{evaluate, load_dataset, train, TrainOptions};
use engine::{Error, Result};
use kernels::Device;

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
        /// Print only the final summary.
        #[arg(long)]
        quiet: bool,
        /// Continue from the run directory's newest checkpoint.
        #[arg(long)]
        resume: bool,
    },
    /// Generate text from a checkpoint (a checkpoint directory or a run directory).
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
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Print a checkpoint's validation loss.
    Eval {
        checkpoint: PathBuf,
        /// Validation batches (default: the run's train.eval_batches).
        #[arg(long)]
        batches: Option<usize>,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Also write the evaluated windows, as safetensors `tokens` int32 [windows, T+1].
        #[arg(long, value_name = "FILE")]
        dump_tokens: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train { config, overrides, quiet, resume } => {
            let config = Config::load(&config, &overrides)?;
            let s = train(&config, &TrainOptions { quiet, resume })?;
            let val = s.val_losses.last().map_or("-".into(), |(_, v)| format!("{v:.4}"));
            println!(
                "trained {} steps in {:.1}s ({:.0} tokens/s); final val loss {val}; checkpoint {}",
                s.steps,
                s.train_seconds,
                s.tokens_per_sec,
                s.checkpoint.display()
            );
            Ok(())
        }
        Command::Sample { checkpoint, prompt, tokens, temperature, top_k, seed } => {
            if !(temperature.is_finite() && temperature >= 0.0) {
                return Err(Error::Usage(format!("--temperature must be a number >= 0, got {temperature}")));
            }
            let (_, _, config, mut model) = checkpoint::load_model(&checkpoint, Device::Cpu)?;
            let tokenizer = datasets::tokenizer(&config.data.tokenizer)?;
            let text = sample(&mut model, tokenizer.as_ref(), &SampleOptions { prompt, tokens, temperature, top_k, seed })?;
            println!("{text}");
            Ok(())
        }
        Command::Eval { checkpoint, batches, json, dump_tokens } => {
            let (dir, state, config, mut model) = checkpoint::load_model(&checkpoint, Device::Cpu)?;
            let data = load_dataset(&config)?;
            let t = &config.train;
            let batches = batches.unwrap_or(t.eval_batches);
            if batches == 0 {
                return Err(Error::Usage("--batches must be at least 1".into()));
            }
            let (loss, windows) = evaluate(&mut model, &data.val, t.batch_size, t.seq_len, batches)?;
            if let Some(path) = dump_tokens {
                dump_windows(&path, &data.val, windows, t.seq_len)?;
            }
            if json {
                println!("{}", serde_json::json!({"val_loss": loss, "windows": windows, "seq_len": t.seq_len, "step": state.step}));
            } else {
                println!("val loss {loss:.4} ({windows} windows of {} tokens; checkpoint {}, step {})", t.seq_len, dir.display(), state.step);
            }
            Ok(())
        }
    }
}

/// The first `windows` consecutive windows of T+1 tokens, as evaluated.
fn dump_windows(path: &Path, tokens: &[u32], windows: usize, seq_len: usize) -> Result<()> {
    let mut bytes = Vec::with_capacity(windows * (seq_len + 1) * 4);
    for w in 0..windows {
        for &id in &tokens[w * seq_len..w * seq_len + seq_len + 1] {
            bytes.extend_from_slice(&(id as i32).to_le_bytes());
        }
    }
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![windows, seq_len + 1], &bytes).expect("sizes match");
    safetensors::serialize_to_file([("tokens", view)], None::<HashMap<String, String>>, path)
        .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))
}
