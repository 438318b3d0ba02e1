use kernels::ops::attention::{attention_backward, attention_cached_forward, attention_forward, attention_saved_shape};
use kernels::{DType, Tensor};

use super::{empty_like, take_saved, Layer, Linear};
use crate::param::Placement;
use crate::Result;

/// Causal multi-head self-attention (GPT-2): c_attn (C -> 3C), attention, c_proj (C -> C).
/// Its input is kept by `c_attn` ([`Layer::forget_input`] drops it).
pub struct CausalSelfAttention {
    /// The fused q|k|v projection, `{name}.c_attn`, stored [in, out].
    pub c_attn: Linear,
    /// The output projection, `{name}.c_proj`.
    pub c_proj: Linear,
    /// Heads NH (C / NH columns each).
    pub n_head: usize,
    /// (qkv, the attention output, the state attention_forward saves for backward) of the
    /// last forward. The output is c_proj's input too (one shared buffer, not a copy).
    cache: Option<(Tensor, Tensor, Tensor)>,
}

impl CausalSelfAttention {
    /// Projections N(0, std^2) (c_proj: N(0, proj_std^2); GPT-2 scales residual projections
    /// by 1/sqrt(2L)), with zero biases when `bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(at: Placement, name: &str, c: usize, n_head: usize, bias: bool, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        Ok(Self {
            c_attn: Linear::new(at, &format!("{name}.c_attn"), c, 3 * c, bias, std, rng)?,
            c_proj: Linear::new(at, &format!("{name}.c_proj"), c, c, bias, proj_std, rng)?,
            n_head,
            cache: None,
        })
    }
}

impl CausalSelfAttention {
    /// Incremental decoding: the output (B,n,C) of `x` (B,n,C) at positions
    /// `start .. start + n`, attending to the keys and values `k_cache` and `v_cache`
    /// (B,Tmax,C) hold for positions before `start`, after writing theirs there. Keeps
    /// nothing for a backward beyond what the projections keep (released by `release`).
    pub fn forward_cached(&mut self, x: &Tensor, k_cache: &mut Tensor, v_cache: &mut Tensor, start: usize) -> Result<Tensor> {
        let qkv = self.c_attn.forward(x)?; // (B,n,3C)
        let mut y = empty_like(x, x.shape())?;
        attention_cached_forward(&mut y, &qkv, k_cache, v_cache, start, self.n_head, self.n_head)?;
        self.c_proj.forward(&y)
    }
}

impl Layer for CausalSelfAttention {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.c_attn.forward(x)?; // (B,T,3C)
        let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let mut y = empty_like(x, x.shape())?;
        // The saved state depends on the device (CPU: (B,NH,T,T) probabilities; CUDA:
        // (B,NH,T) logsumexp), always f32, and is entirely written by the forward: what
        // `attention_saved` allocates, from the recycled pool on the CPU.
        let shape = attention_saved_shape(x.device(), b, t, c, self.n_head);
        let mut att = Tensor::try_empty(x.device(), DType::F32, &shape)?;
        attention_forward(&mut y, &mut att, &qkv, self.n_head)?;
        let z = self.c_proj.forward(&y)?;
        self.cache = Some((qkv, y, att));
        Ok(z)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let dy = self.c_proj.backward(dout)?;
        let (qkv, y, att) = take_saved(&mut self.cache, "CausalSelfAttention")?;
        let mut dqkv = empty_like(&qkv, qkv.shape())?;
        attention_backward(&mut dqkv, &dy, &qkv, &y, &att, self.n_head)?;
        drop((qkv, y, att, dy));
        self.c_attn.backward(&dqkv)
    }

    crate::layer_fields! {
        children: [c_attn, c_proj],
        saved: [cache],
        config: [n_head],
    }

    fn forget_input(&mut self) -> bool {
        self.c_attn.forget_input()
    }

    fn input_forgotten(&self) -> bool {
        self.c_attn.input_forgotten()
    }

    fn restore_input(&mut self, x: Tensor) -> Result<()> {
        self.c_attn.restore_input(x)
    }
}
