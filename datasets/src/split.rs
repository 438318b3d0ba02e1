//! A split (train or val) is a list of token segments: in-memory token ids (text tokenized
//! at start-up) or memory-mapped shards. Training reads it as windows of T+1 tokens.
//!
//! Window layout: segment s of n tokens holds `floor((n - 1) / T)` windows; window w of
//! it covers tokens `[w*T, w*T + T + 1)` (inputs are the first T, targets the last T), so
//! consecutive windows share one token and never cross a segment (shard) boundary.
//! Windows are numbered globally, segment after segment.

use std::sync::Arc;

use crate::shard::Shard;
use crate::{Batch, Error, Result};

/// Where one run of tokens lives.
pub enum Segment {
    Memory(Arc<[u32]>),
    Shard(Shard),
}

impl Segment {
    pub fn len(&self) -> usize {
        match self {
            Segment::Memory(t) => t.len(),
            Segment::Shard(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies tokens `[start, start + out.len())` into `out`.
    #[inline]
    pub fn read(&self, start: usize, out: &mut [u32]) {
        match self {
            Segment::Memory(t) => out.copy_from_slice(&t[start..start + out.len()]),
            Segment::Shard(s) => s.read(start, out),
        }
    }
}

/// The tokens of one split, e.g. "the training split" (`name` appears in errors).
pub struct Split {
    pub name: String,
    segments: Vec<Segment>,
}

impl Split {
    pub fn from_tokens(name: &str, tokens: Vec<u32>) -> Self {
        Self { name: name.to_string(), segments: vec![Segment::Memory(tokens.into())] }
    }

    pub fn from_shards(name: &str, shards: Vec<Shard>) -> Self {
        Self { name: name.to_string(), segments: shards.into_iter().map(Segment::Shard).collect() }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Tokens over all segments.
    pub fn len(&self) -> usize {
        self.segments.iter().map(Segment::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every token, concatenated (tests and small splits only).
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        for s in &self.segments {
            let at = out.len();
            out.resize(at + s.len(), 0);
            s.read(0, &mut out[at..]);
        }
        out
    }

    /// The windows of `seq_len` + 1 tokens; errors if there is not even one.
    pub fn windows(&self, seq_len: usize) -> Result<WindowIndex> {
        let index = WindowIndex::new(self, seq_len);
        if index.count() == 0 {
            let longest = self.segments.iter().map(Segment::len).max().unwrap_or(0);
            return Err(match self.segments.len() {
                1 => Error::TooShort { what: self.name.clone(), tokens: longest, window: seq_len + 1 },
                n => Error::ShardsTooShort { what: self.name.clone(), shards: n, longest, window: seq_len + 1 },
            });
        }
        Ok(index)
    }

    /// Copies window `w` (T+1 tokens) into `out`, `out.len() == index.seq_len() + 1`.
    #[inline]
    pub fn read_window(&self, index: &WindowIndex, w: u64, out: &mut [u32]) {
        let (segment, start) = index.locate(w);
        self.segments[segment].read(start, out);
    }

    /// The first `count` windows in order, (count, T+1) row-major.
    pub fn sequential_windows(&self, index: &WindowIndex, count: usize) -> Vec<u32> {
        let row = index.seq_len() + 1;
        let mut out = vec![0u32; count * row];
        for (w, chunk) in out.chunks_exact_mut(row).enumerate() {
            self.read_window(index, w as u64, chunk);
        }
        out
    }

    /// Evaluation batches: the first `max_batches * batch_size` windows (fewer if the split
    /// has fewer), in order, `batch_size` per batch (the last may be smaller).
    pub fn sequential_batches(&self, index: &WindowIndex, batch_size: usize, max_batches: usize) -> Vec<Batch> {
        let count = (index.count() as usize).min(batch_size * max_batches);
        let windows = self.sequential_windows(index, count);
        windows.chunks(batch_size * (index.seq_len() + 1)).map(|rows| Batch::from_windows(rows, index.seq_len())).collect()
    }
}

/// Maps a global window number to its segment and first token.
#[derive(Clone, Debug)]
pub struct WindowIndex {
    seq_len: usize,
    /// `ends[s]`: windows in segments 0..=s (cumulative).
    ends: Vec<u64>,
}

impl WindowIndex {
    fn new(split: &Split, seq_len: usize) -> Self {
        assert!(seq_len > 0, "seq_len is validated >= 1");
        let mut total = 0u64;
        let ends = split
            .segments
            .iter()
            .map(|s| {
                total += (s.len().saturating_sub(1) / seq_len) as u64;
                total
            })
            .collect();
        Self { seq_len, ends }
    }

    /// T.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Windows over all segments.
    pub fn count(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// (segment, first token) of window `w < count()`.
    #[inline]
    pub fn locate(&self, w: u64) -> (usize, usize) {
        let segment = self.ends.partition_point(|&end| end <= w);
        let before = if segment == 0 { 0 } else { self.ends[segment - 1] };
        (segment, ((w - before) as usize) * self.seq_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_never_cross_segments() {
        let split = Split {
            name: "t".into(),
            segments: vec![Segment::Memory((0..25).collect::<Vec<_>>().into()), Segment::Memory((100..111).collect::<Vec<_>>().into())],
        };
        let index = split.windows(4).unwrap();
        assert_eq!(index.count(), 6 + 2); // floor(24/4) + floor(10/4)
        assert_eq!(index.locate(5), (0, 20));
        assert_eq!(index.locate(6), (1, 0));
        let mut w = [0u32; 5];
        split.read_window(&index, 7, &mut w);
        assert_eq!(w, [104, 105, 106, 107, 108]);
    }

    #[test]
    fn too_short_split_names_itself() {
        let split = Split::from_tokens("the validation split", vec![1, 2, 3]);
        let err = split.windows(8).unwrap_err().to_string();
        assert_eq!(err, "the validation split has 3 tokens, too few for one window of 9 (sequence length + 1)");
    }
}
