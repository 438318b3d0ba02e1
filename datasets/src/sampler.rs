//! Which windows a rank reads, in what order: deterministic in (seed, epoch, rank,
//! world size), with a two-number state so a run resumes mid-epoch exactly.
//!
//! Shuffled order: epoch e visits the windows in the order of a pseudo-random permutation
//! `perm_e` of `[0, N)` (N windows in the split). Rank r of W takes the permuted positions
//! r, r + W, r + 2W, ...: `per_rank = floor(N / W)` windows each, disjoint across ranks, none
//! twice in an epoch (the last `N mod W` positions of each epoch go unused so every rank
//! sees the same count). Sequential order (evaluation): the same, without the permutation.
//!
//! The permutation is a keyed Feistel network on the smallest even-bit domain that covers
//! N, with cycle walking to stay below N: a bijection computed per index in O(1) memory, so
//! any position of any epoch is available at once (no shuffled array of N entries) and the
//! state is just (epoch, position).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How far a rank is through its stream: `position` windows of epoch `epoch` are done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    pub position: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// A fresh permutation every epoch (training).
    Shuffled,
    /// Windows in order (evaluation).
    Sequential,
}

#[derive(Clone, Debug)]
pub struct EpochSampler {
    seed: u64,
    windows: u64,
    rank: u64,
    world_size: u64,
    per_rank: u64,
    order: Order,
    state: SamplerState,
}

impl EpochSampler {
    /// A sampler over `windows` windows for `rank` of `world_size`, at the start of epoch 0.
    pub fn new(seed: u64, windows: u64, rank: u64, world_size: u64, order: Order) -> Result<Self> {
        if world_size == 0 || rank >= world_size {
            return Err(Error::Rank { rank, world_size });
        }
        if windows < world_size {
            return Err(Error::TooFewWindows { windows, world_size });
        }
        let per_rank = windows / world_size;
        Ok(Self { seed, windows, rank, world_size, per_rank, order, state: SamplerState::default() })
    }

    /// Windows this rank reads per epoch.
    pub fn per_rank(&self) -> u64 {
        self.per_rank
    }

    pub fn windows(&self) -> u64 {
        self.windows
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// Continues from `state` (as saved by [`state`](Self::state)).
    pub fn restore(&mut self, state: SamplerState) -> Result<()> {
        if state.position >= self.per_rank {
            return Err(Error::SamplerState { position: state.position, per_rank: self.per_rank });
        }
        self.state = state;
        Ok(())
    }

    /// The state after `consumed` windows from the start: for runs saved before the state
    /// was recorded, where it follows from the step count.
    pub fn state_after(&self, consumed: u64) -> SamplerState {
        SamplerState { epoch: consumed / self.per_rank, position: consumed % self.per_rank }
    }

    /// The window at `state` (pure).
    pub fn window_at(&self, state: SamplerState) -> u64 {
        let slot = state.position * self.world_size + self.rank;
        match self.order {
            Order::Sequential => slot,
            Order::Shuffled => permute(slot, self.windows, epoch_key(self.seed, state.epoch)),
        }
    }

    /// The next window; advances the state (into the next epoch at the end of one).
    pub fn next_window(&mut self) -> u64 {
        let w = self.window_at(self.state);
        self.state.position += 1;
        if self.state.position == self.per_rank {
            self.state = SamplerState { epoch: self.state.epoch + 1, position: 0 };
        }
        w
    }
}

impl Iterator for EpochSampler {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        Some(self.next_window())
    }
}

/// splitmix64's finalizer: a fast 64-bit mix with full avalanche.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn epoch_key(seed: u64, epoch: u64) -> u64 {
    mix(seed ^ mix(epoch ^ 0x5EED_0FE9_0C00))
}

/// `index`'s image under a keyed pseudo-random permutation of `[0, n)`, `index < n`.
pub fn permute(index: u64, n: u64, key: u64) -> u64 {
    debug_assert!(index < n);
    if n <= 1 {
        return index;
    }
    // Domain 2^(2*half) >= n, at most 4n: cycle walking takes < 4 rounds on average.
    let bits = 64 - (n - 1).leading_zeros();
    let half = bits.div_ceil(2).max(1);
    let mask = (1u64 << half) - 1;
    let mut x = index;
    loop {
        let (mut left, mut right) = (x >> half, x & mask);
        for round in 0..6u64 {
            let f = mix(right ^ key.rotate_left(round as u32 * 11) ^ round) & mask;
            (left, right) = (right, left ^ f);
        }
        x = (left << half) | right;
        if x < n {
            return x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_is_a_bijection_for_awkward_sizes() {
        for n in [1u64, 2, 3, 5, 17, 64, 1000, 4097] {
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let p = permute(i, n, 1234);
                assert!(p < n);
                assert!(!seen[p as usize], "n={n}: {p} twice");
                seen[p as usize] = true;
            }
        }
    }

    #[test]
    fn shuffled_order_is_not_the_identity_and_changes_per_epoch() {
        let s = EpochSampler::new(7, 1000, 0, 1, Order::Shuffled).unwrap();
        let e0: Vec<u64> = s.clone().take(1000).collect();
        let e1: Vec<u64> = s.clone().skip(1000).take(1000).collect();
        assert!(e0.iter().enumerate().filter(|(i, &w)| *i as u64 == w).count() < 20, "{:?}", &e0[..20]);
        assert_ne!(e0, e1);
    }

    #[test]
    fn bad_rank_and_tiny_splits_are_errors() {
        assert_eq!(EpochSampler::new(1, 10, 2, 2, Order::Shuffled).unwrap_err().to_string(), "rank 2 is not below the world size 2");
        assert_eq!(
            EpochSampler::new(1, 3, 0, 4, Order::Shuffled).unwrap_err().to_string(),
            "3 windows cannot be shared by 4 ranks (each needs at least one)"
        );
        let mut s = EpochSampler::new(1, 10, 0, 2, Order::Shuffled).unwrap();
        let err = s.restore(SamplerState { epoch: 0, position: 5 }).unwrap_err().to_string();
        assert_eq!(err, "sampler state position 5 is past the end of an epoch of 5 windows per rank");
    }
}
