//! Recomputation (activation checkpointing): trade compute in backward for memory held
//! between forward and backward.
//!
//! - `none`: every layer keeps what its backward needs.
//! - `selective`: each block drops its LayerNorm outputs and its MLP activation's output
//!   (GeLU, or SwiGLU) after forward and recomputes them (from the LayerNorm input and
//!   statistics, and from the activation's input, which stay) right before the backward that
//!   needs them. Cheap elementwise work for about 6C of the ~16C floats per token a block
//!   keeps (plus attention's saved state).
//! - `full`: each block keeps only its input; its backward re-runs the block's forward and
//!   then backpropagates through it, so at most one block's activations exist at a time.
//! - `full:K`: `full` on blocks 0, K, 2K, ... and `none` on the others.
//!
//! `selective` is GPT-2's: [`crate::Llama`]'s blocks accept `none`, `full` and `full:K`
//! only. A block of your own gets `selective` from the [`crate::Layer`] hooks
//! (`forget_input`, `recompute_output`, `restore_input_from`, `forget_activations`) of its
//! direct children, and `full` from keeping its input and calling `release` on them.
//!
//! Recomputation runs the same ops on the same inputs in the same order as the forward it
//! repeats (there is no dropout, so no random state to replay), so losses and gradients are
//! bit-identical to `none`, on the CPU (`models/tests/recompute.rs`) and on CUDA in fp32 and
//! bf16 (`models/tests/gpu_recompute.rs`: the fused matmul + GeLU epilogue computes its GeLU
//! from the stored pre-GeLU value with the GeLU op's own expression, so the GeLU op rebuilds
//! the same bits). What a layer recomputes is decided by what its forward kept, not by the
//! policy at backward time, so [`crate::Gpt::set_recompute`] may switch policies between any
//! two steps.

use std::fmt;
use std::str::FromStr;

/// The model-wide recomputation policy (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recompute {
    /// Nothing recomputed.
    #[default]
    None,
    /// Every block recomputes its norm and activation outputs (GPT-2).
    Selective,
    /// Full recomputation on every `every`-th block (blocks 0, every, 2*every, ...); 1: all.
    Full {
        /// K: the stride between fully recomputed blocks.
        every: usize,
    },
}

/// What one block does under a [`Recompute`] policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BlockRecompute {
    /// The block keeps everything its backward needs.
    #[default]
    None,
    /// The block drops what its children can rebuild cheaply and rebuilds it in backward.
    Selective,
    /// The block keeps only its input and re-runs its forward in backward.
    Full,
}

impl Recompute {
    /// The policy block `i` follows.
    pub fn for_block(self, i: usize) -> BlockRecompute {
        match self {
            Recompute::None => BlockRecompute::None,
            Recompute::Selective => BlockRecompute::Selective,
            Recompute::Full { every } if i.is_multiple_of(every.max(1)) => BlockRecompute::Full,
            Recompute::Full { .. } => BlockRecompute::None,
        }
    }

    /// Every policy a planner may choose from for an `n_layer` model, least recomputation
    /// first: none, selective, full on every K-th block for K = n_layer/2 ... 2, full.
    pub fn candidates(n_layer: usize) -> Vec<Recompute> {
        let mut v = vec![Recompute::None, Recompute::Selective];
        v.extend((2..=n_layer / 2).rev().map(|every| Recompute::Full { every }));
        v.push(Recompute::Full { every: 1 });
        v
    }
}

impl fmt::Display for Recompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recompute::None => f.write_str("none"),
            Recompute::Selective => f.write_str("selective"),
            Recompute::Full { every: 1 } => f.write_str("full"),
            Recompute::Full { every } => write!(f, "full:{every}"),
        }
    }
}

impl FromStr for Recompute {
    type Err = String;

    /// "none", "selective", "full" or "full:K" (K >= 1). The error lists the choices.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected \"none\", \"selective\", \"full\" or \"full:K\" (K >= 1: every K-th block), got \"{s}\"");
        match s {
            "none" => Ok(Recompute::None),
            "selective" => Ok(Recompute::Selective),
            "full" => Ok(Recompute::Full { every: 1 }),
            _ => {
                let k = s.strip_prefix("full:").ok_or_else(bad)?;
                match k.parse::<usize>() {
                    Ok(every) if every >= 1 && k.bytes().all(|b| b.is_ascii_digit()) => Ok(Recompute::Full { every }),
                    _ => Err(bad()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, r) in [
            ("none", Recompute::None),
            ("selective", Recompute::Selective),
            ("full", Recompute::Full { every: 1 }),
            ("full:3", Recompute::Full { every: 3 }),
        ] {
            assert_eq!(s.parse::<Recompute>().unwrap(), r);
            assert_eq!(r.to_string(), s);
        }
        assert_eq!("full:1".parse::<Recompute>().unwrap().to_string(), "full");
        for bad in ["", "Full", "full:", "full:0", "full:-1", "full:+2", "every:2", "selective:2"] {
            let err = bad.parse::<Recompute>().unwrap_err();
            assert!(err.contains("\"full:K\"") && err.contains(&format!("got \"{bad}\"")), "{err}");
        }
    }

    #[test]
    fn full_every_k_picks_blocks_0_k_2k() {
        let picked: Vec<bool> = (0..7).map(|i| Recompute::Full { every: 3 }.for_block(i) == BlockRecompute::Full).collect();
        assert_eq!(picked, [true, false, false, true, false, false, true]);
        assert!((0..7).all(|i| Recompute::Selective.for_block(i) == BlockRecompute::Selective));
        assert_eq!(
            Recompute::candidates(6),
            [Recompute::None, Recompute::Selective, Recompute::Full { every: 3 }, Recompute::Full { every: 2 }, Recompute::Full { every: 1 }]
        );
    }
}
