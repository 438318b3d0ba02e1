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
    let mut ids = prompt_ids(tokenizer, &options.prompt);
    sample_each(model, tokenizer, options, &mut |id| {
        ids.push(id);
        Ok(())
    })?;
    Ok(ids)
}

/// The prompt's token ids (a newline's for an empty prompt), as [`sample_each`] starts from.
pub fn prompt_ids(tokenizer: &dyn Tokenizer, prompt: &str) -> Vec<u32> {
    let ids = tokenizer.encode(prompt.as_bytes());
    if ids.is_empty() {
        return tokenizer.encode(b"\n");
    }
    ids
}

/// Generates `options.tokens` tokens after the prompt, handing each to `emit` as soon as it
/// is drawn (`engine sample` prints them as they come). The model sees the last
/// `context_length` tokens (the window slides), and only those are kept, so any number of
/// tokens runs in constant memory. An error from `emit` (say, a closed stdout) stops it.
pub fn sample_each(model: &mut dyn Model, tokenizer: &dyn Tokenizer, options: &SampleOptions, emit: &mut dyn FnMut(u32) -> Result<()>) -> Result<()> {
    let mut window = prompt_ids(tokenizer, &options.prompt);
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let (vocab, ctx) = (model.vocab_size(), model.context_length());
    for _ in 0..options.tokens {
        if window.len() > ctx {
            window.drain(..window.len() - ctx);
        }
        let x = Tensor::from_u32(&[1, window.len()], window.clone())?.to_device(model.device())?;
        model.forward(&x, None)?;
        // The whole (1, T, Vp) logits come to the host as f32; only the last row is used.
        let logits = model.logits().ok_or_else(|| Error::Usage("the model kept no logits after a forward without targets (Model::logits)".into()))?.try_to_vec()?;
        let vp = logits.len() / window.len();
        let last = &logits[(window.len() - 1) * vp..][..vocab];
        let id = pick(last, options.temperature, options.top_k, &mut rng);
        window.push(id);
        emit(id)?;
    }
    Ok(())
}

/// Turns bytes arriving in pieces (a token's at a time) into text exactly as
/// `String::from_utf8_lossy` does to all of them at once: a character split across tokens
/// waits for its last byte; an invalid sequence becomes U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text `bytes` complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid up to here"));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete character at the end: wait for the rest.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end: an incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
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
    use super::{pick, Utf8Stream};

    #[test]
    fn streamed_text_is_the_lossy_decoding_of_all_bytes() {
        let mut rng = fastrand::Rng::with_seed(3);
        let alphabet: Vec<u8> = "aé€😀".bytes().chain([0xff, 0xc3, 0x80, 0xe2]).collect();
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..rng.usize(0..24)).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
            let mut stream = Utf8Stream::default();
            let mut text = String::new();
            let mut at = 0;
            while at < bytes.len() {
                let piece = rng.usize(1..=4).min(bytes.len() - at);
                text += &stream.push(&bytes[at..at + piece]);
                at += piece;
            }
            text += &stream.finish();
            assert_eq!(text, String::from_utf8_lossy(&bytes), "{bytes:x?}");
        }
    }

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
