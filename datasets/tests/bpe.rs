//! GPT-2 BPE (tiktoken r50k_base): Tiny Shakespeare round-trips byte for byte, its token
//! count, and the parallel chunked encoder equals whole-text encoding.

use datasets::tokenizer::{encode_parallel, safe_split_points};
use datasets::{Gpt2Tokenizer, Tokenizer, TINY_SHAKESPEARE};

/// Tiny Shakespeare's GPT-2 token count. Independent check: nanoGPT's
/// `data/shakespeare/prepare.py` (tiktoken "gpt2", encode_ordinary) reports 301,966 train
/// + 36,059 val tokens for its 90/10 split of the same file = 338,025.
const TINY_SHAKESPEARE_GPT2_TOKENS: usize = 338_025;

#[test]
fn gpt2_round_trips_tiny_shakespeare_byte_for_byte() {
    let bpe = Gpt2Tokenizer::new();
    let ids = bpe.encode(TINY_SHAKESPEARE);
    assert_eq!(ids.len(), TINY_SHAKESPEARE_GPT2_TOKENS);
    assert!(ids.iter().all(|&t| t < 50257));
    assert_eq!(&ids[..4], &[5962, 22307, 25, 198], "\"First Citizen:\\n\"");
    let back = bpe.decode_bytes(&ids);
    assert_eq!(back.len(), TINY_SHAKESPEARE.len());
    assert!(back == TINY_SHAKESPEARE, "decode(encode(text)) differs from the text");
}

#[test]
fn chunked_gpt2_encoding_equals_whole_file_encoding() {
    let bpe = Gpt2Tokenizer::new();
    let whole = bpe.encode(TINY_SHAKESPEARE);
    let cuts = safe_split_points(TINY_SHAKESPEARE, 4096);
    assert!(cuts.len() > 200, "only {} cuts: the test would prove little", cuts.len());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let progress = |n: usize| {
        done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    let chunked = encode_parallel(&bpe, TINY_SHAKESPEARE, "tiny", 4096, &progress).unwrap();
    assert_eq!(chunked.len(), whole.len());
    assert!(chunked == whole, "chunked encoding differs from the whole-file encoding");
    assert_eq!(done.into_inner(), TINY_SHAKESPEARE.len(), "progress covers every byte once");
}

#[test]
fn chunked_encoding_is_exact_on_text_full_of_whitespace_runs() {
    // Random text built from pieces that stress the pre-tokenizer's whitespace rules:
    // runs of newlines, spaces and tabs beside words, digits, punctuation and contractions.
    let pieces = ["a", "Bb", " c", "  ", "\n", "\n\n", "\n\n\n", " \n", "\t", "'s", "'ll", "42", " 7", ".", "!?", "é", " ü", "x\n\ny"];
    let bpe = Gpt2Tokenizer::new();
    let mut rng = fastrand::Rng::with_seed(2024);
    for round in 0..200 {
        let text: String = (0..rng.usize(1..120)).map(|_| pieces[rng.usize(..pieces.len())]).collect();
        let whole = bpe.encode(text.as_bytes());
        let chunked = encode_parallel(&bpe, text.as_bytes(), "random", 1, &|_| {}).unwrap();
        assert_eq!(chunked, whole, "round {round}: {text:?} cut at {:?}", safe_split_points(text.as_bytes(), 1));
    }
}
