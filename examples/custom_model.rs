//! A model the engine does not ship, trained by the engine's own trainer: a GPT-J-style
//! "parallel" transformer (each block adds attention and MLP of one RMSNorm'd input,
//! x + attn(n(x)) + mlp(n(x)); rotary positions, SwiGLU, no biases, an untied head), built
//! from the library's layers and registered as `[model] kind = "parallel"`.
//!
//! `cargo run --release -p engine --example custom_model` trains it on Tiny Shakespeare with
//! the memory planner, the performance logs and report, checkpoints and `--resume` (checked
//! to reproduce the uninterrupted losses bit for bit), then reloads the checkpoint and samples.
//! With arguments it is the whole `engine` command line for this kind as well:
//! `cargo run --release -p engine --example custom_model -- train my-parallel.toml`.

use std::process::ExitCode;

use engine::config::Config;
use engine::kernels::ops::residual::{accumulate, residual_forward};
use engine::kernels::{Device, Tensor};
use engine::models::layers::{empty_like, AttentionShape, Embedding, Layer, LlamaAttention, RmsNorm, SwigluMlp};
use engine::models::lm_head::{check_batch, LmHead};
use engine::models::param::{vocab_rows, Placement};
use engine::models::{layer_fields, lm_model_methods, Model, Param, Precision, Result};
use engine::registry::{BuildContext, ModelSpec, Registry};
use engine::train::{train, TrainOptions};

/// One parallel block: x + attn(norm(x)) + mlp(norm(x)).
struct ParallelBlock {
    norm: RmsNorm,
    attn: LlamaAttention,
    mlp: SwigluMlp,
}

impl Layer for ParallelBlock {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm.forward(x)?;
        let (a, m) = (self.attn.forward(&h)?, self.mlp.forward(&h)?);
        let mut y = empty_like(x, x.shape())?;
        residual_forward(&mut y, x, &a)?;
        accumulate(&mut y, &m)?;
        Ok(y)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let mut dh = self.attn.backward(dout)?;
        accumulate(&mut dh, &self.mlp.backward(dout)?)?;
        let mut dx = self.norm.backward(&dh)?;
        accumulate(&mut dx, dout)?;
        Ok(dx)
    }

    // visit_params, visit_params_mut and release, from every field (none can be forgotten).
    layer_fields! { children: [norm, attn, mlp], saved: [], config: [] }
}

/// What `lm_model_methods!` reads: the model's shape.
struct Shape {
    vocab_size: usize,
    context_length: usize,
    n_layer: usize,
    n_embd: usize,
}

/// The model: token embedding, parallel blocks, a final RMSNorm and an untied classifier.
struct Parallel {
    config: Shape,
    embed: Embedding,
    blocks: Vec<ParallelBlock>,
    norm: RmsNorm,
    classifier: Param,
    head: LmHead,
}

impl Parallel {
    /// The forward pass; with targets, the per-row losses (what `lm_model_methods!` needs).
    fn forward_rows(&mut self, inputs: &Tensor, targets: Option<&Tensor>) -> Result<Option<Tensor>> {
        check_batch(inputs, targets, self.config.context_length, self.device())?;
        let mut x = self.embed.forward(inputs)?;
        for block in &mut self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.norm.forward(&x)?;
        self.head.forward(x, self.classifier.compute(), self.config.vocab_size, targets)
    }
}

impl Model for Parallel {
    // forward, forward_loss (the loss stays on the device), logits, vocab_size,
    // context_length and flops_per_token, from `forward_rows`, `head` and `config`.
    lm_model_methods!();

    fn backward(&mut self, loss_scale: f32) -> Result<()> {
        let mut d = self.norm.backward(&self.head.backward(&mut self.classifier, loss_scale, "Parallel")?)?;
        for block in self.blocks.iter_mut().rev() {
            d = block.backward(&d)?;
        }
        self.embed.backward(&d)?;
        Ok(())
    }

    layer_fields! { children: [embed, blocks, norm, classifier], saved: [head], config: [config] }
}

/// `[model] kind = "parallel"`: its keys, with defaults.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct ParallelSpec {
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    context_length: usize,
}

impl Default for ParallelSpec {
    fn default() -> Self {
        Self { n_layer: 3, n_head: 4, n_embd: 96, context_length: 64 }
    }
}

impl ModelSpec for ParallelSpec {
    fn context_length(&self) -> usize {
        self.context_length
    }

    fn describe(&self) -> String {
        format!("parallel transformer, {} layers, {} heads, {} wide", self.n_layer, self.n_head, self.n_embd)
    }

    fn build(&self, at: &BuildContext) -> Result<Box<dyn Model>> {
        let place = Placement::new(at.device, at.precision)?;
        let (c, v, vp) = (self.n_embd, at.vocab_size, at.vocab_size.div_ceil(128) * 128);
        let mut rng = fastrand::Rng::with_seed(at.seed);
        let (std, proj) = (0.02, 0.02 / (2.0 * self.n_layer as f32).sqrt());
        let shape = AttentionShape { n_embd: c, n_head: self.n_head, n_kv_head: self.n_head, rope_theta: 10000.0 };
        let mut block = |i: usize| -> Result<ParallelBlock> {
            Ok(ParallelBlock {
                norm: RmsNorm::new(place, &format!("blocks.{i}.norm"), c, 1e-5)?,
                attn: LlamaAttention::new(place, &format!("blocks.{i}.attn"), shape, std, proj, &mut rng)?,
                mlp: SwigluMlp::new(place, &format!("blocks.{i}.mlp"), c, 8 * c / 3, std, proj, &mut rng)?,
            })
        };
        let blocks = (0..self.n_layer).map(&mut block).collect::<Result<Vec<_>>>()?;
        let embed = Embedding::tokens_only(place, "embed.weight", v, vp, c, std, &mut rng)?;
        let mut classifier = vocab_rows(place, "classifier.weight", v, vp, c, std, &mut rng)?;
        classifier.weight_decay = true;
        let norm = RmsNorm::new(place, "norm", c, 1e-5)?;
        let config = Shape { vocab_size: v, context_length: self.context_length, n_layer: self.n_layer, n_embd: c };
        Ok(Box::new(Parallel { config, embed, blocks, norm, classifier, head: LmHead::default() }))
    }
}

fn main() -> ExitCode {
    let mut registry = Registry::builtin();
    registry.register::<ParallelSpec>("parallel");
    if std::env::args().len() > 1 {
        return engine::cli::main_with(registry);
    }
    match demo(&registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Trains 40 steps, and again stopped after 20 and resumed; compares, reloads and samples.
fn demo(registry: &Registry) -> engine::Result<()> {
    let out = std::env::temp_dir().join("engine-custom-model");
    let config = |name: &str| {
        let text = format!(
            "[run]\nname = \"{name}\"\nout_dir = '{}'\ndevice = \"cpu\"\n[model]\nkind = \"parallel\"\n\
             [train]\nseq_len = 64\nmax_steps = 40\nlr = 3e-3\nwarmup_steps = 5\neval_interval = 20\nlog_interval = 10\n\
             [batch]\ntokens_per_step = 2048\n[memory]\nbudget = \"2GiB\"\n",
            out.display()
        );
        Config::parse_in(&text, "custom_model.rs", &[], registry)
    };
    let _ = std::fs::remove_dir_all(&out);
    let whole = train(&config("whole")?, &TrainOptions::default())?;
    train(&config("resumed")?, &TrainOptions { quiet: true, stop_after: Some(20), ..Default::default() })?;
    let resumed = train(&config("resumed")?, &TrainOptions { quiet: true, resume: true, ..Default::default() })?;
    let bits = |s: &engine::train::TrainSummary| -> Vec<u32> { s.losses.iter().filter(|(step, _)| *step > 20).map(|(_, l)| l.to_bits()).collect() };
    if bits(&whole) != bits(&resumed) {
        return Err(engine::Error::Usage("the resumed run's losses differ from the uninterrupted run's".into()));
    }
    println!("train losses: {:?}", whole.losses.iter().map(|&(s, l)| format!("{s}:{l:.4}")).collect::<Vec<_>>());
    println!("validation: {:?}; report {}", whole.val_losses, whole.run_dir.join("report.html").display());
    println!("stopped after step 20 and resumed: steps 21..40 bit-identical to the uninterrupted run");
    let mut loaded = engine::checkpoint::load_model(&whole.checkpoint, Device::Cpu, Precision::Fp32, registry)?;
    let tokenizer = engine::datasets::tokenizer("byte")?;
    let options = engine::sample::SampleOptions { prompt: "ROMEO:".into(), tokens: 80, ..Default::default() };
    println!("{}", engine::sample::sample(loaded.model.as_mut(), tokenizer.as_ref(), &options)?);
    Ok(())
}
