//! The key/value cache of incremental decoding ([`Model::forward_cached`](crate::Model::forward_cached)):
//! per layer, the keys and values of every position decoded so far, so that a new token's
//! forward runs on that token only and attends to the cached rows
//! ([`kernels::ops::attention::attention_cached_forward`]) instead of recomputing the whole
//! window (O(T) per token instead of O(T^2)).
//!
//! The cache is sized for the model's context length up front; positions past it are the
//! caller's to handle (`engine sample` re-prefills on the last half of the window, see
//! the engine's `sample` module). It lives in the model as state a forward keeps, so
//! [`Model::release`](crate::Model::release) drops it.

use kernels::{DType, Device, Tensor};

use crate::{Error, Result};

/// Per layer, keys and values (B, Tmax, KV HS) of positions `0 .. len`, on the model's device
/// in its activation dtype (f32 on the CPU; bf16 on CUDA in mixed precision).
#[derive(Debug)]
pub struct KvCache {
    /// Keys of layer l: `k[l]` (B, Tmax, KV HS); rows past `len` are unspecified.
    pub k: Vec<Tensor>,
    /// Values of layer l, shaped as `k[l]`.
    pub v: Vec<Tensor>,
    /// Positions cached.
    pub len: usize,
}

impl KvCache {
    /// An empty cache of `layers` layers for `batch` sequences of up to `t_max` positions,
    /// `width` = KV HS columns, on `device` in `dtype`.
    pub fn new(device: Device, dtype: DType, layers: usize, batch: usize, t_max: usize, width: usize) -> Result<Self> {
        let make = || (0..layers).map(|_| Tensor::try_zeros(device, dtype, &[batch, t_max, width])).collect::<kernels::Result<Vec<_>>>();
        Ok(Self { k: make()?, v: make()?, len: 0 })
    }

    /// The sequences it holds (B).
    pub fn batch(&self) -> usize {
        self.k.first().map_or(0, |k| k.shape()[0])
    }

    /// The cache `inputs` (B, n) at positions `start .. start + n` extend, checked and
    /// truncated to `start` (a fresh one, in `dtype`, when `start` is 0 or the batch or dtype
    /// changed): token ids on
    /// `device`, n >= 1, `start` at most the positions cached, `start + n` at most
    /// `t_max`. Errors are [`Error::Input`] naming what is wrong.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare<'a>(
        slot: &'a mut Option<KvCache>,
        inputs: &Tensor,
        start: usize,
        device: Device,
        dtype: DType,
        layers: usize,
        t_max: usize,
        width: usize,
    ) -> Result<&'a mut KvCache> {
        let &[b, n] = inputs.shape() else {
            return Err(Error::Input(format!("inputs must be (B,T), got shape {:?}", inputs.shape())));
        };
        if inputs.dtype() != DType::U32 {
            return Err(Error::Input("inputs must be token ids (u32)".into()));
        }
        if inputs.device() != device {
            return Err(Error::Input(format!("inputs must be on the model's device ({device})")));
        }
        if n == 0 || start + n > t_max {
            return Err(Error::Input(format!(
                "positions {start}..{} must be within the model's context length {t_max} (and at least one new token)",
                start + n
            )));
        }
        let fits = |c: &KvCache| c.batch() == b && c.k.first().is_none_or(|k| k.dtype() == dtype);
        let cached = slot.as_ref().filter(|c| fits(c)).map_or(0, |c| c.len);
        if start > cached {
            return Err(Error::Input(format!("start position {start} is past the {cached} positions the KV cache holds")));
        }
        if start == 0 || slot.as_ref().is_none_or(|c| !fits(c)) {
            *slot = Some(KvCache::new(device, dtype, layers, b, t_max, width)?);
        }
        let cache = slot.as_mut().expect("just set");
        cache.len = start;
        Ok(cache)
    }
}
