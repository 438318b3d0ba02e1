//! Text generation from a checkpoint: temperature and top-k sampling, seeded.

use datasets::Tokenizer;
use models::Model;
use kernels::Tensor;

use crate::{Error, Result};

/// What [`sample`] generates (the options of `engine sample`).
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Text the continuation follows, encoded with the run's tokenizer; empty: a newline.
    pub prompt: String,
    /// Tokens to generate after the prompt.
    pub tokens: usize,
    /// Softmax temperature the logits are divided by; 0 (or below): always the most
    /// likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Seeds the random draws: the same seed, model and prompt give the same tokens.
    pub seed: u64,
}

/// Generates `options.tokens` tokens after the prompt; returns prompt + continuation.
pub fn sample(model: &mut dyn Model, tokenizer: &dyn Tokenizer, options: &SampleOptions) -> Result<String> {
    Ok(tokenizer.decode(&sample_ids(model, tokenizer, options)?))
}

/// [`sample`] as token ids: the prompt's (a newline for an empty prompt), then the
/// `options.tokens` generated ones.
pub fn sample_ids(model: &mut dyn Model, tokenizer: &dyn Tokenizer, options: &SampleOptions) -> Result<Vec<u32>> {
    let mut ids = tokenizer.encode(options.prompt.as_bytes());
    if ids.is_empty() {
        ids = tokenizer.encode(b"\n");
    }
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let (vocab, ctx) = (model.vocab_size(), model.context_length());
    for _ in 0..options.tokens {
        let window = &ids[ids.len().saturating_sub(ctx)..];
        let x = Tensor::from_u32(&[1, window.len()], window.to_vec())?.to_device(model.device())?;
        model.forward(&x, None)?;
        // The whole (1, T, Vp) logits come to the host as f32; only the last row is used.
        let logits = model.logits().ok_or_else(|| Error::Usage("the model kept no logits after a forward without targets (Model::logits)".into()))?.try_to_vec()?;
        let vp = logits.len() / window.len();
        let last = &logits[(window.len() - 1) * vp..][..vocab];
        ids.push(pick(last, options.temperature, options.top_k, &mut rng));
    }
    Ok(ids)
}

/// Draws a token from logits with temperature and top-k (temperature 0: the argmax).
pub fn pick(logits: &[f32], temperature: f32, top_k: usize, rng: &mut fastrand::Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if temperature <= 0.0 {
        return order[0] as u32;
    }
    let k = if top_k == 0 { logits.len() } else { top_k.min(logits.len()) };
    let top = &order[..k];
    let max = logits[top[0]];
    let weights: Vec<f64> = top.iter().map(|&i| (((logits[i] - max) / temperature) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.f64() * total;
    for (&i, w) in top.iter().zip(&weights) {
        r -= w;
        if r <= 0.0 {
            return i as u32;
        }
    }
    top[k - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn zero_temperature_is_argmax_and_top_k_restricts() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(pick(&logits, 0.0, 0, &mut rng), 1);
        for _ in 0..200 {
            let t = pick(&logits, 5.0, 2, &mut rng);
            assert!(t == 1 || t == 2);
        }
    }
}
