use kernels::ops::attention::{attention_backward, attention_cached_forward, attention_forward, attention_saved_shape};
use kernels::ops::kv_expand::{kv_expand_backward, kv_expand_forward};
use kernels::ops::matmul::WeightLayout;
use kernels::ops::rope::{rope_backward, rope_forward, rope_forward_at, Rope};
use kernels::{DType, Tensor};

use super::{empty_like, take_saved, Layer, Linear};
use crate::param::Placement;
use crate::Result;

/// The shape of a Llama attention layer: NH query heads sharing KV key/value heads (grouped
/// query attention; KV = NH is multi-head attention), HS = C / NH columns each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// The model width C.
    pub n_embd: usize,
    /// Query heads NH.
    pub n_head: usize,
    /// Key/value heads KV (dividing NH).
    pub n_kv_head: usize,
    /// RoPE's frequency base.
    pub rope_theta: f32,
}

impl AttentionShape {
    /// Columns per head, HS = C / NH.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// Llama self-attention: q, k and v projections as one matmul `qkv_proj` ((NH + 2 KV) HS rows,
/// stored [out, in], no bias), RoPE on the NH + KV q and k heads, each k/v head repeated to
/// its group of NH / KV query heads, causal attention, `o_proj` (C -> C). The fused weight
/// exports as Hugging Face's `q_proj`, `k_proj` and `v_proj`. Its input is kept by
/// `qkv_proj` ([`Layer::forget_input`] drops it).
pub struct LlamaAttention {
    /// [q | k | v]: C -> (NH + 2 KV) HS.
    pub qkv_proj: Linear,
    /// C -> C.
    pub o_proj: Linear,
    /// The heads and the rotation.
    pub shape: AttentionShape,
    /// (the expanded [q | k | v] (B,T,3C) attention read, its output (B,T,C), the state
    /// attention_forward saved) of the last forward; the output is o_proj's input too.
    cache: Option<(Tensor, Tensor, Tensor)>,
}

impl LlamaAttention {
    /// Parameters `{name}.qkv_proj.weight` ~ N(0, std^2) (exported as `{name}.q_proj.weight`,
    /// `k_proj`, `v_proj`) and `{name}.o_proj.weight` ~ N(0, proj_std^2).
    pub fn new(at: Placement, name: &str, shape: AttentionShape, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        let (c, hs) = (shape.n_embd, shape.head_size());
        let (q_rows, kv_rows) = (shape.n_head * hs, shape.n_kv_head * hs);
        let mut qkv_proj = Linear::with_layout(at, &format!("{name}.qkv_proj"), c, q_rows + 2 * kv_rows, WeightLayout::OutIn, false, std, rng)?;
        qkv_proj.weight.export_parts = ["q_proj", "k_proj", "v_proj"]
            .into_iter()
            .zip([q_rows, kv_rows, kv_rows])
            .map(|(part, rows)| (format!("{name}.{part}.weight"), rows))
            .collect();
        let o_proj = Linear::with_layout(at, &format!("{name}.o_proj"), q_rows, c, WeightLayout::OutIn, false, proj_std, rng)?;
        Ok(Self { qkv_proj, o_proj, shape, cache: None })
    }

    /// Incremental decoding: the output (B,n,C) of `x` (B,n,C) at positions
    /// `start .. start + n` (RoPE rotates q and k at those positions), attending to the
    /// keys and values `k_cache` and `v_cache` (B,Tmax,KV HS) hold for positions before
    /// `start`, after writing theirs there. The cache keeps the KV heads as they are (not
    /// repeated per query head): query head h reads key/value head h / (NH / KV).
    pub fn forward_cached(&mut self, x: &Tensor, k_cache: &mut Tensor, v_cache: &mut Tensor, start: usize) -> Result<Tensor> {
        let qkv = self.qkv_proj.forward(x)?; // (B,n,(NH+2KV)HS)
        let mut rotated = empty_like(&qkv, qkv.shape())?;
        rope_forward_at(&mut rotated, &qkv, &self.rope(), start)?;
        drop(qkv);
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let mut y = empty_like(x, &[b, n, self.shape.n_head * self.shape.head_size()])?;
        attention_cached_forward(&mut y, &rotated, k_cache, v_cache, start, self.shape.n_head, self.shape.n_kv_head)?;
        self.o_proj.forward(&y)
    }

    fn rope(&self) -> Rope {
        let s = &self.shape;
        Rope { heads: s.n_head + s.n_kv_head, head_size: s.head_size(), theta: s.rope_theta }
    }
}

impl Layer for LlamaAttention {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let (nh, kv) = (self.shape.n_head, self.shape.n_kv_head);
        let qkv = self.qkv_proj.forward(x)?; // (B,T,(NH+2KV)HS)
        let mut rotated = empty_like(&qkv, qkv.shape())?;
        rope_forward(&mut rotated, &qkv, &self.rope())?;
        drop(qkv);
        let (b, t, c) = (x.shape()[0], x.shape()[1], self.shape.n_embd);
        let mut expanded = empty_like(&rotated, &[b, t, 3 * c])?;
        kv_expand_forward(&mut expanded, &rotated, nh, kv)?;
        drop(rotated);
        let mut y = empty_like(x, &[b, t, c])?;
        // The saved state's shape depends on the device (see CausalSelfAttention); f32,
        // entirely written by the forward.
        let mut att = Tensor::try_empty(x.device(), DType::F32, &attention_saved_shape(x.device(), b, t, c, nh))?;
        attention_forward(&mut y, &mut att, &expanded, nh)?;
        let z = self.o_proj.forward(&y)?;
        self.cache = Some((expanded, y, att));
        Ok(z)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let (nh, kv) = (self.shape.n_head, self.shape.n_kv_head);
        let dy = self.o_proj.backward(dout)?;
        let (expanded, y, att) = take_saved(&mut self.cache, "LlamaAttention")?;
        let mut dexpanded = empty_like(&expanded, expanded.shape())?;
        attention_backward(&mut dexpanded, &dy, &expanded, &y, &att, nh)?;
        drop((expanded, y, att, dy));
        let mut shape = dexpanded.shape().to_vec();
        shape[2] = (nh + 2 * kv) * self.shape.head_size();
        let mut drotated = empty_like(&dexpanded, &shape)?;
        kv_expand_backward(&mut drotated, &dexpanded, nh, kv)?;
        drop(dexpanded);
        let mut dqkv = empty_like(&drotated, &shape)?;
        rope_backward(&mut dqkv, &drotated, &self.rope())?;
        drop(drotated);
        self.qkv_proj.backward(&dqkv)
    }

    crate::layer_fields! {
        children: [qkv_proj, o_proj],
        saved: [cache],
        config: [shape],
    }

    fn forget_input(&mut self) -> bool {
        self.qkv_proj.forget_input()
    }

    fn input_forgotten(&self) -> bool {
        self.qkv_proj.input_forgotten()
    }

    fn restore_input(&mut self, x: Tensor) -> Result<()> {
        self.qkv_proj.restore_input(x)
    }
}
