//! CPU training throughput of the engine on the settings of
//! `benches/reference/cpu_train_torch.py`: byte-level GPT-2, 4 layers, 4 heads, 128 wide,
//! T=128, batch 32, AdamW (lr 1e-3, betas 0.9/0.95, wd 0.1), f32, random windows of Tiny
//! Shakespeare. Each timed step is zero_grad + forward + backward + optimizer step.
//!
//! cargo run --release -p benches --bin train_cpu -- [--steps 30] [--warmup 5] [--json]

use std::time::Instant;

use clap::Parser;
use engine::datasets::{ByteTokenizer, TextSource, TokenDataset, WindowSampler};
use engine::kernels::Device;
use engine::models::{Gpt, GptConfig, Model};
use engine::optim::{zero_grad, AdamW, AdamWConfig};
use engine::train::batch_tensors;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long)]
    json: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // as `engine` does: the step runs on the CPU backend's workers
    engine::kernels::ops::on_cpu_workers(|| run(args).map_err(|e| e.to_string())).map_err(|e| e.into())
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (b, t) = (32, 128);
    let data = TokenDataset::from_text(&TextSource::TinyShakespeare, &ByteTokenizer, 0.1)?;
    let config = GptConfig { vocab_size: 256, context_length: 128, n_layer: 4, n_head: 4, n_embd: 128, ..GptConfig::default() };
    let mut model = Gpt::new(config, Device::Cpu, 1337)?;
    let mut opt = AdamW::new(
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, decay_all_params: false, grad_clip: 0.0 },
        &model,
    );
    let sampler = WindowSampler { seed: 1337 };
    let mut step_ms = Vec::new();
    let mut loss = 0.0;
    for step in 0..args.warmup + args.steps {
        let batch = sampler.batch(&data.train, step as u64, 0, b, t);
        let (x, y) = batch_tensors(&batch)?;
        let started = Instant::now();
        zero_grad(&mut model)?;
        loss = model.forward(&x, Some(&y))?.expect("targets given");
        model.backward(1.0)?;
        opt.step(&mut model, 1e-3)?;
        if step >= args.warmup {
            step_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let med = benches::median(&step_ms);
    let tok = |ms: f64| (b * t) as f64 / (ms / 1e3);
    let (min, max) = step_ms.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let threads = engine::kernels::ops::num_threads();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"impl": "engine-cpu", "tokens_per_s_median": tok(med), "step_ms_median": med, "steps": args.steps, "threads": threads})
        );
    } else {
        println!("engine CPU train: vocab=256 n_layer=4 n_head=4 n_embd=128 B={b} T={t} params={}", model.num_params());
        println!("threads={threads}, warmup={}, measured steps={}", args.warmup, args.steps);
        println!("step ms: median {med:.1}  min {min:.1}  max {max:.1}");
        println!("tokens/s: median {:.0}  min {:.0}  max {:.0}", tok(med), tok(max), tok(min));
        println!("final loss: {loss:.4}");
    }
    Ok(())
}
