//! Tokenizers: byte-level (vocab 256) and GPT-2 BPE (tiktoken's r50k_base, vocab 50257),
//! and a parallel encoder that splits text only where the split cannot change the tokens.

use rayon::prelude::*;

use crate::{Error, Result};

/// GPT-2's `<|endoftext|>` token, which separates documents.
pub const GPT2_EOT: u32 = 50256;

/// Text to token ids and back.
pub trait Tokenizer: Send + Sync {
    fn name(&self) -> &'static str;
    fn vocab_size(&self) -> usize;
    /// Token ids of `text`. Text that is not UTF-8 is encoded lossily by tokenizers that
    /// need UTF-8 (GPT-2); [`encode_parallel`] refuses it instead.
    fn encode(&self, text: &[u8]) -> Vec<u32>;
    /// The exact bytes of `ids` (ids outside the vocabulary are skipped).
    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8>;
    fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }
    /// The token that separates documents when files are concatenated, if any.
    fn document_separator(&self) -> Option<u32> {
        None
    }
}

/// One token per byte (vocab 256): the tiny default.
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn name(&self) -> &'static str {
        "byte"
    }
    fn vocab_size(&self) -> usize {
        256
    }
    fn encode(&self, text: &[u8]) -> Vec<u32> {
        text.iter().map(|&b| b as u32).collect()
    }
    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect()
    }
}

/// GPT-2 BPE through `tiktoken-rs` (r50k_base, ranks embedded in the crate, no download).
pub struct Gpt2Tokenizer {
    bpe: &'static tiktoken_rs::CoreBPE,
}

impl Gpt2Tokenizer {
    pub fn new() -> Self {
        Self { bpe: tiktoken_rs::r50k_base_singleton() }
    }
}

impl Default for Gpt2Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokenizer for Gpt2Tokenizer {
    fn name(&self) -> &'static str {
        "gpt2"
    }
    fn vocab_size(&self) -> usize {
        50257
    }
    fn encode(&self, text: &[u8]) -> Vec<u32> {
        // Ordinary encoding: `<|endoftext|>` in the text is plain text, never the special id.
        self.bpe.encode_ordinary(&String::from_utf8_lossy(text))
    }
    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let known: Vec<u32> = ids.iter().copied().filter(|&i| i < 50257).collect();
        self.bpe.decode_bytes(&known).expect("every id below 50257 is in r50k_base")
    }
    fn document_separator(&self) -> Option<u32> {
        Some(GPT2_EOT)
    }
}

/// The names [`tokenizer`] knows.
pub const TOKENIZERS: [&str; 2] = ["byte", "gpt2"];

pub fn tokenizer(name: &str) -> Result<Box<dyn Tokenizer>> {
    match name {
        "byte" => Ok(Box::new(ByteTokenizer)),
        "gpt2" => Ok(Box::new(Gpt2Tokenizer::new())),
        other => Err(Error::UnknownTokenizer(other.to_string())),
    }
}

/// Byte offsets where `text` may be cut into chunks that encode independently to exactly
/// the tokens of the whole, about every `target` bytes.
///
/// The cut goes between the two newlines of a blank line `X\n\nY` where X and Y are
/// printable ASCII (not whitespace). Why this is safe for GPT-2's pre-tokenizer
/// (`'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s`):
/// in the whole text X's piece ends at X (no piece pattern takes a trailing newline), then
/// `\s+(?!\S)` takes the first `\n` alone (the second is not `\S`), then `\s` the second,
/// then Y starts a piece. Cut after the first `\n`, the left chunk ends in `\n`, which
/// `\s++$` takes alone; the right chunk starts `\nY`, where `\s` takes the `\n`. The pieces,
/// and so the BPE tokens, are the same. Three or more newlines, or whitespace beside them,
/// group differently at a cut, so those places are not used. BPE never crosses a piece.
/// The test `chunked_gpt2_encoding_equals_whole_file_encoding` checks this on Tiny
/// Shakespeare and on random text full of whitespace runs.
pub fn safe_split_points(text: &[u8], target: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut next = target.max(1);
    while next + 2 < text.len() {
        // The first blank line `X\n\nY` at or after `next`; cut between its newlines.
        match next_safe_split(text, next + 2) {
            Some(cut) => {
                cuts.push(cut);
                next = cut + target.max(1);
            }
            None => break,
        }
    }
    cuts
}

/// Whether [`safe_split_points`] may cut `text` at byte `p`: `text[p-2..p+2]` is `X\n\nY`
/// with X and Y printable ASCII (the cut goes between the newlines). Only the four bytes
/// around `p` matter, so the answer for a slice equals the answer for the whole file.
#[inline]
pub fn is_safe_split(text: &[u8], p: usize) -> bool {
    p >= 2
        && p + 1 < text.len()
        && text[p - 2].is_ascii_graphic()
        && text[p - 1] == b'\n'
        && text[p] == b'\n'
        && text[p + 1].is_ascii_graphic()
}

/// The first cut `p >= from` where [`is_safe_split`] holds (the rule of
/// [`safe_split_points`]), if `text` has one.
pub fn next_safe_split(text: &[u8], from: usize) -> Option<usize> {
    let start = from.max(2) - 2;
    if start + 4 > text.len() {
        return None;
    }
    text[start..]
        .windows(4)
        .position(|w| w[1] == b'\n' && w[2] == b'\n' && w[0].is_ascii_graphic() && w[3].is_ascii_graphic())
        .map(|i| start + i + 2)
}

/// The last cut `p` with `lo < p < text.len()` where [`is_safe_split`] holds, if any.
pub fn last_safe_split(text: &[u8], lo: usize) -> Option<usize> {
    (lo + 1..text.len()).rev().find(|&p| is_safe_split(text, p))
}

/// Encodes `text` with `tokenizer`, in parallel (rayon) over chunks of about `chunk_bytes`
/// cut at [`safe_split_points`] for BPE (a byte tokenizer can be cut anywhere); the result
/// equals `tokenizer.encode(text)`. `progress` gets the bytes of each chunk as it finishes.
/// GPT-2 needs UTF-8: other bytes are an error naming `what` and the offset.
pub fn encode_parallel(
    tokenizer: &dyn Tokenizer,
    text: &[u8],
    what: &str,
    chunk_bytes: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<u32>> {
    if tokenizer.name() == "gpt2" {
        if let Err(e) = std::str::from_utf8(text) {
            return Err(Error::NotUtf8 { what: what.to_string(), offset: e.valid_up_to() });
        }
    }
    let cuts = if tokenizer.name() == "byte" {
        (1..text.len().div_ceil(chunk_bytes.max(1))).map(|i| i * chunk_bytes.max(1)).collect()
    } else {
        safe_split_points(text, chunk_bytes)
    };
    let bounds: Vec<(usize, usize)> =
        std::iter::once(0).chain(cuts.iter().copied()).zip(cuts.iter().copied().chain(std::iter::once(text.len()))).collect();
    let parts: Vec<Vec<u32>> = bounds
        .par_iter()
        .map(|&(a, b)| {
            let ids = tokenizer.encode(&text[a..b]);
            progress(b - a);
            ids
        })
        .collect();
    Ok(parts.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_round_trips() {
        let text = "First Citizen:\nBefore we proceed";
        assert_eq!(ByteTokenizer.decode(&ByteTokenizer.encode(text.as_bytes())), text);
    }

    #[test]
    fn split_points_sit_between_the_newlines_of_a_blank_line() {
        let text = b"aaaa.\n\nBbbb\n\n\nCccc \n\nDddd.\n\nE";
        let cuts = safe_split_points(text, 1);
        // Only `.\n\nB` and `.\n\nE` qualify: `\n\n\n` and ` \n\n` do not.
        assert_eq!(cuts, vec![6, 27]);
        for c in cuts {
            assert_eq!(&text[c - 1..c + 1], b"\n\n");
        }
    }

    #[test]
    fn next_and_last_safe_split_follow_the_same_rule() {
        let text = b"aaaa.\n\nBbbb\n\n\nCccc \n\nDddd.\n\nE";
        let all: Vec<usize> = (0..text.len()).filter(|&p| is_safe_split(text, p)).collect();
        assert_eq!(all, vec![6, 27]);
        assert_eq!(next_safe_split(text, 0), Some(6));
        assert_eq!(next_safe_split(text, 6), Some(6));
        assert_eq!(next_safe_split(text, 7), Some(27));
        assert_eq!(next_safe_split(text, 28), None);
        assert_eq!(last_safe_split(text, 0), Some(27));
        assert_eq!(last_safe_split(&text[..27], 0), Some(6));
        assert_eq!(last_safe_split(text, 27), None);
        // A cut needs the byte after it: at the very end of a slice it is not seen.
        assert_eq!(next_safe_split(&text[..27], 7), None);
    }

    #[test]
    fn unknown_tokenizer_lists_the_known_ones() {
        let err = tokenizer("bpe").err().unwrap().to_string();
        assert_eq!(err, "unknown tokenizer `bpe` (expected \"byte\" or \"gpt2\")");
    }

    #[test]
    fn gpt2_refuses_text_that_is_not_utf8() {
        let err = encode_parallel(&Gpt2Tokenizer::new(), b"ok\xffno", "in.txt", 1 << 20, &|_| {}).unwrap_err().to_string();
        assert_eq!(err, "in.txt is not valid UTF-8 (at byte 2); the gpt2 tokenizer needs UTF-8 text");
    }
}
