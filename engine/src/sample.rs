//! Text generation from a checkpoint: temperature, top-k and top-p (nucleus) sampling,
//! seeded, through the model's key/value cache when it has one.
//!
//! The window: the model sees at most its context length of tokens. A prompt longer than
//! that is cut to its last `context_length` tokens; when generation fills the window, it is
//! cut to its last `context_length - context_length / 2` tokens (half, rounded up) and
//! those are run again (re-prefilled into the cache), after which the window grows again
//! one token at a time. With the cache, a token costs a forward of that one token, and a
//! re-prefill every half window; without it (`kv_cache: false`, `engine sample
//! --no-kv-cache`, or a model whose [`Model::forward_cached`] says it has no cache) every
//! token runs the whole window. Both see the same windows, so they draw the same tokens (up
//! to float rounding in the logits, which could flip a draw that is a near-tie).

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
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability (after
    /// the temperature and top-k) reaches `top_p`, in (0, 1]; 1 keeps all.
    pub top_p: f32,
    /// Seeds the random draws: the same seed, model and prompt give the same tokens.
    pub seed: u64,
    /// Decode through the model's key/value cache ([`Model::forward_cached`]) when it has
    /// one; false: a full forward over the window for every token.
    pub kv_cache: bool,
}

impl Default for SampleOptions {
    /// `engine sample`'s defaults: a newline as the prompt, 500 tokens, temperature 0.8,
    /// no top-k or top-p cut, seed 1, the KV cache on.
    fn default() -> Self {
        Self { prompt: "\n".into(), tokens: 500, temperature: 0.8, top_k: 0, top_p: 1.0, seed: 1, kv_cache: true }
    }
}

impl SampleOptions {
    /// Errors naming the option (as `name_of` spells it: a flag or a config key) whose
    /// value makes no sampling: a negative or non-finite temperature, top_p outside (0, 1].
    pub fn validate(&self, name_of: impl Fn(&str) -> String) -> std::result::Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("{} must be a number >= 0, got {}", name_of("temperature"), self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("{} must be in (0, 1] (1 keeps every token), got {}", name_of("top_p"), self.top_p));
        }
        Ok(())
    }
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
/// is drawn (`engine sample` prints them as they come). The model sees the window the
/// module docs describe, and only that is kept, so any number of tokens runs in constant
/// memory. An error from `emit` (say, a closed stdout) stops it. The model is released at
/// the end (its cache and logits dropped); the random draws come from their own generator,
/// seeded by `options.seed`, and touch no other state.
pub fn sample_each(model: &mut dyn Model, tokenizer: &dyn Tokenizer, options: &SampleOptions, emit: &mut dyn FnMut(u32) -> Result<()>) -> Result<()> {
    let result = decode(model, tokenizer, options, emit);
    model.release();
    result
}

fn decode(model: &mut dyn Model, tokenizer: &dyn Tokenizer, options: &SampleOptions, emit: &mut dyn FnMut(u32) -> Result<()>) -> Result<()> {
    let mut window = prompt_ids(tokenizer, &options.prompt);
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let (vocab, ctx) = (model.vocab_size(), model.context_length());
    let keep = ctx - ctx / 2;
    if window.len() > ctx {
        window.drain(..window.len() - ctx);
    }
    // Positions of `window` the model's cache holds; None: no cache (a full forward each time).
    let mut cached = options.kv_cache.then_some(0usize);
    for _ in 0..options.tokens {
        if window.len() > ctx {
            window.drain(..window.len() - keep);
            cached = cached.map(|_| 0);
        }
        let mut ran = false;
        if let Some(start) = cached {
            let x = Tensor::from_u32(&[1, window.len() - start], window[start..].to_vec())?.to_device(model.device())?;
            ran = model.forward_cached(&x, start)?;
            cached = ran.then_some(window.len());
        }
        if !ran {
            let x = Tensor::from_u32(&[1, window.len()], window.clone())?.to_device(model.device())?;
            model.forward(&x, None)?;
        }
        let id = pick(&last_logits(model)?[..vocab], options.temperature, options.top_k, options.top_p, &mut rng);
        window.push(id);
        emit(id)?;
    }
    Ok(())
}

/// The last position's row of the model's logits (padding columns included), as f32 on the host.
fn last_logits(model: &dyn Model) -> Result<Vec<f32>> {
    let logits = model.logits().ok_or_else(|| Error::Usage("the model kept no logits after a forward without targets (Model::logits)".into()))?;
    let &[b, t, vp] = logits.shape() else {
        return Err(Error::Usage(format!("the model's logits are {:?}, not (B,T,V)", logits.shape())));
    };
    Ok(logits.reshape(&[b * t, vp])?.rows(b * t - 1, 1)?.try_to_vec()?)
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

/// Draws a token from logits with temperature, top-k and top-p (temperature 0: the argmax;
/// see [`nucleus`] for the top-p cut). One uniform draw from `rng` per token (none when
/// greedy).
pub fn pick(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, rng: &mut fastrand::Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if temperature <= 0.0 {
        return order[0] as u32;
    }
    let k = if top_k == 0 { logits.len() } else { top_k.min(logits.len()) };
    let top = &order[..k];
    let max = logits[top[0]];
    let weights: Vec<f64> = top.iter().map(|&i| (((logits[i] - max) / temperature) as f64).exp()).collect();
    let kept = nucleus(&weights, top_p);
    let (top, weights) = (&top[..kept], &weights[..kept]);
    let total: f64 = weights.iter().sum();
    let mut r = rng.f64() * total;
    for (&i, w) in top.iter().zip(weights) {
        r -= w;
        if r <= 0.0 {
            return i as u32;
        }
    }
    top[kept - 1] as u32
}

/// How many of `weights` (unnormalized probabilities, most likely first) top-p keeps: the
/// smallest prefix whose share of the total reaches `top_p` (at least one; all for
/// `top_p` >= 1).
pub fn nucleus(weights: &[f64], top_p: f32) -> usize {
    if top_p >= 1.0 {
        return weights.len();
    }
    let total: f64 = weights.iter().sum();
    let target = top_p as f64 * total;
    let mut mass = 0.0;
    for (n, w) in weights.iter().enumerate() {
        mass += w;
        if mass >= target {
            return n + 1;
        }
    }
    weights.len()
}

#[cfg(test)]
mod tests {
    use super::{nucleus, pick, SampleOptions, Utf8Stream};

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
        assert_eq!(pick(&logits, 0.0, 0, 1.0, &mut rng), 1);
        for _ in 0..200 {
            let t = pick(&logits, 5.0, 2, 1.0, &mut rng);
            assert!(t == 1 || t == 2);
        }
    }

    /// Known logits: probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 (ln of them, any order).
    /// The kept set is the smallest most-likely prefix whose mass reaches p.
    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        let probs = [0.0625f64, 0.25, 0.5, 0.0625, 0.125];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
        // (p, the tokens that may come out)
        // (Ties keep the lower id first: at 0.9 the four kept are 2, 1, 4 and 0, not 3.)
        let cases: [(f32, &[u32]); 8] = [
            (0.3, &[2]),
            (0.49, &[2]),
            (0.51, &[2, 1]),
            (0.74, &[2, 1]),
            (0.8, &[2, 1, 4]),
            (0.9, &[2, 1, 4, 0]),
            (0.95, &[2, 1, 4, 0, 3]),
            (1.0, &[2, 1, 4, 0, 3]),
        ];
        let mut rng = fastrand::Rng::with_seed(4);
        for (p, allowed) in cases {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..4000 {
                let t = pick(&logits, 1.0, 0, p, &mut rng);
                assert!(allowed.contains(&t), "top_p {p}: drew {t}, outside {allowed:?}");
                seen.insert(t);
            }
            // Every kept token comes out (the kept set is not smaller than it should be either).
            assert_eq!(seen.len(), allowed.len(), "top_p {p}: drew {seen:?}, expected all of {allowed:?}");
        }
        // On the weights directly: mass 0.5 at 1 token, 0.75 at 2, 0.875 at 3, 0.9375 at 4.
        let sorted = [8.0, 4.0, 2.0, 1.0, 1.0];
        let kept: Vec<usize> = [0.01, 0.5, 0.5001, 0.75, 0.875, 0.9, 0.9375, 0.99, 1.0].iter().map(|&p| nucleus(&sorted, p)).collect();
        assert_eq!(kept, [1, 1, 2, 2, 3, 4, 4, 5, 5]);
        // Top-k first, then top-p within the k kept: k = 2 leaves 2/3 and 1/3.
        for _ in 0..500 {
            assert_eq!(pick(&logits, 1.0, 2, 0.6, &mut rng), 2);
        }
        // A tiny p keeps the argmax: the same as greedy.
        assert_eq!(pick(&logits, 1.0, 0, 1e-6, &mut rng), 2);
    }

    #[test]
    fn bad_sampling_options_name_the_option() {
        let flag = |n: &str| format!("--{}", n.replace('_', "-"));
        for top_p in [0.0, -0.1, 1.5, f32::NAN] {
            let err = SampleOptions { top_p, ..Default::default() }.validate(flag).unwrap_err();
            assert!(err.contains("--top-p must be in (0, 1]"), "{err}");
        }
        let err = SampleOptions { temperature: -1.0, ..Default::default() }.validate(flag).unwrap_err();
        assert!(err.contains("--temperature must be a number >= 0"), "{err}");
        assert!(SampleOptions { top_p: 1.0, ..Default::default() }.validate(flag).is_ok());
    }
}
