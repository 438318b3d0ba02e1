//! The training loop: warm-up + cosine learning rate, gradient accumulation, clipping,
//! periodic validation and checkpoints, a live progress line and a plain metrics log.

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use datasets::{Batch, TextSource, TokenDataset, WindowSampler};
use indicatif::{ProgressBar, ProgressStyle};
use kernels::device::{select, DeviceRequest};
use kernels::{Device, Tensor};
use models::{Gpt, Model};

use crate::checkpoint::{self, CheckpointState};
use crate::config::Config;
use crate::error::io;
use crate::optim::{zero_grad, AdamW, AdamWConfig};
use crate::schedule::learning_rate;
use crate::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Only the final summary on stdout.
    pub quiet: bool,
    /// Continue from the run directory's newest checkpoint.
    pub resume: bool,
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub steps: u64,
    /// (step, train loss) for every step of this invocation.
    pub losses: Vec<(u64, f32)>,
    /// (step, validation loss) at every evaluation.
    pub val_losses: Vec<(u64, f32)>,
    pub tokens_per_sec: f64,
    pub train_seconds: f64,
}

pub fn load_dataset(config: &Config) -> Result<TokenDataset> {
    let source = match &config.data.path {
        Some(p) => TextSource::File(p.clone()),
        None => TextSource::TinyShakespeare,
    };
    let tokenizer = datasets::tokenizer(&config.data.tokenizer)?;
    let ds = TokenDataset::from_text(&source, tokenizer.as_ref(), config.data.val_fraction)?;
    ds.check_fits(config.train.seq_len)?;
    Ok(ds)
}

pub fn batch_tensors(batch: &Batch) -> Result<(Tensor, Tensor)> {
    let shape = [batch.batch_size, batch.seq_len];
    Ok((Tensor::from_u32(&shape, batch.inputs.clone())?, Tensor::from_u32(&shape, batch.targets.clone())?))
}

/// Mean cross-entropy over the first `max_batches` consecutive windows of `tokens`, and
/// how many windows that was.
pub fn evaluate(model: &mut dyn Model, tokens: &[u32], batch_size: usize, seq_len: usize, max_batches: usize) -> Result<(f32, usize)> {
    let (mut total, mut count, mut windows) = (0.0f64, 0usize, 0usize);
    for batch in datasets::sequential_batches(tokens, batch_size, seq_len, max_batches) {
        let (x, y) = batch_tensors(&batch)?;
        let loss = model.forward(&x, Some(&y))?.expect("targets given");
        let n = batch.batch_size * batch.seq_len;
        total += loss as f64 * n as f64;
        count += n;
        windows += batch.batch_size;
    }
    Ok(((total / count.max(1) as f64) as f32, windows))
}

fn resolve_device(config: &Config) -> Result<(Device, String)> {
    let request = DeviceRequest::parse(&config.run.device).expect("validated");
    Ok(select(request)?)
}

pub fn train(config: &Config, options: &TrainOptions) -> Result<TrainSummary> {
    let (device, device_note) = resolve_device(config)?;
    let data = load_dataset(config)?;
    let t = &config.train;
    let mut model = Gpt::new(config.gpt_config(data.vocab_size), device, config.run.seed)?;
    let mut opt = AdamW::new(
        AdamWConfig {
            beta1: t.beta1 as f32,
            beta2: t.beta2 as f32,
            eps: t.eps as f32,
            weight_decay: t.weight_decay as f32,
            decay_all_params: t.decay_all_params,
            grad_clip: t.grad_clip as f32,
        },
        &model,
    );
    let run_dir = config.run_dir();
    let mut start_step = 0;
    if options.resume {
        let dir = checkpoint::resolve(&run_dir)?;
        let (state, _) = checkpoint::read_state(&dir)?;
        checkpoint::load_weights(&dir, &mut model)?;
        checkpoint::load_optimizer(&dir, &model, &mut opt, state.step)?;
        start_step = state.step;
    }
    fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
    let config_path = run_dir.join("config.toml");
    fs::write(&config_path, config.to_toml()).map_err(io(&config_path))?;
    let log_path = run_dir.join("metrics.log");
    let mut log = fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
    if start_step == 0 {
        writeln!(log, "# step loss val_loss lr grad_norm tokens_per_s ms").map_err(io(&log_path))?;
    }

    let tokens_per_step = (t.batch_size * t.seq_len * t.grad_accum) as u64;
    let say = |line: String| {
        if !options.quiet {
            eprintln!("{line}");
        }
    };
    say(device_note);
    say(format!(
        "model: GPT-2 {} layers, {} heads, {} wide, {} parameters; {} train / {} val tokens; {} tokens per step",
        config.model.n_layer,
        config.model.n_head,
        config.model.n_embd,
        model.num_params(),
        data.train.len(),
        data.val.len(),
        tokens_per_step
    ));
    let bar = (!options.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(t.max_steps);
        bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}").expect("template"));
        bar.set_position(start_step);
        bar
    });

    let sampler = WindowSampler { seed: config.run.seed };
    let mut summary = TrainSummary {
        run_dir: run_dir.clone(),
        checkpoint: PathBuf::new(),
        steps: start_step,
        losses: Vec::new(),
        val_losses: Vec::new(),
        tokens_per_sec: 0.0,
        train_seconds: 0.0,
    };
    let mut train_time = Duration::ZERO;
    let mut last_val = None;
    for step in start_step..t.max_steps {
        let started = Instant::now();
        let lr = learning_rate(step, t.lr, t.min_lr, t.warmup_steps, t.max_steps) as f32;
        zero_grad(&mut model)?;
        let mut loss = 0.0f32;
        for micro in 0..t.grad_accum {
            let batch = sampler.batch(&data.train, step, micro as u64, t.batch_size, t.seq_len);
            let (x, y) = batch_tensors(&batch)?;
            loss += model.forward(&x, Some(&y))?.expect("targets given") / t.grad_accum as f32;
            model.backward(1.0 / t.grad_accum as f32)?;
        }
        if !loss.is_finite() {
            return Err(Error::Diverged { step, loss });
        }
        let grad_norm = opt.step(&mut model, lr)?;
        let elapsed = started.elapsed();
        train_time += elapsed;
        let done = step + 1;
        let tok_s = tokens_per_step as f64 / elapsed.as_secs_f64();
        summary.losses.push((done, loss));
        summary.steps = done;

        let last = done == t.max_steps;
        let mut val = None;
        if last || (t.eval_interval > 0 && done % t.eval_interval == 0) {
            let (v, _) = evaluate(&mut model, &data.val, t.batch_size, t.seq_len, t.eval_batches)?;
            summary.val_losses.push((done, v));
            val = Some(v);
            last_val = Some(v);
        }
        let val_text = val.map_or("-".to_string(), |v| format!("{v:.4}"));
        writeln!(log, "{done} {loss:.6} {val_text} {lr:.6e} {grad_norm:.4} {tok_s:.0} {:.1}", elapsed.as_secs_f64() * 1e3)
            .map_err(io(&log_path))?;
        let line = format!("step {done}/{} | loss {loss:.4} | val {val_text} | lr {lr:.2e} | {tok_s:.0} tok/s", t.max_steps);
        match &bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(line.clone());
                if val.is_some() {
                    bar.println(line);
                }
            }
            None => {
                if val.is_some() || done % t.log_interval.max(1) == 0 || done == start_step + 1 {
                    say(line);
                }
            }
        }
        if last || (t.checkpoint_interval > 0 && done % t.checkpoint_interval == 0) {
            let state = CheckpointState {
                format: checkpoint::FORMAT,
                step: done,
                train_loss: Some(loss),
                val_loss: last_val,
                vocab_size: data.vocab_size,
                config_toml: config.to_toml(),
            };
            summary.checkpoint = checkpoint::save(&run_dir, &model, &opt, &state)?;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let trained = summary.losses.len() as u64;
    summary.train_seconds = train_time.as_secs_f64();
    summary.tokens_per_sec = (trained * tokens_per_step) as f64 / summary.train_seconds.max(1e-9);
    log.flush().map_err(io(&log_path))?;
    if summary.checkpoint.as_os_str().is_empty() {
        summary.checkpoint = checkpoint::resolve(&run_dir)?;
    }
    Ok(summary)
}
