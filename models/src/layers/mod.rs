//! The building blocks. Every layer implements [`Layer`], whose `backward` is required.

mod attention;
mod block;
mod embedding;
mod gelu;
mod layernorm;
mod linear;
mod llama_attention;
mod llama_block;
mod mlp;
mod rmsnorm;
mod swiglu_mlp;

pub use attention::CausalSelfAttention;
pub use block::Block;
pub use embedding::Embedding;
pub use gelu::Gelu;
pub use layernorm::LayerNorm;
pub use linear::Linear;
pub use llama_attention::{AttentionShape, LlamaAttention};
pub use llama_block::LlamaBlock;
pub use mlp::Mlp;
pub use rmsnorm::RmsNorm;
pub use swiglu_mlp::SwigluMlp;

use kernels::Tensor;

use crate::{Param, Result};

pub trait Layer {
    /// Computes the output and keeps what backward needs.
    fn forward(&mut self, x: &Tensor) -> Result<Tensor>;
    /// Given d loss / d output, accumulates parameter gradients (`+=`) and returns
    /// d loss / d input (for integer inputs such as token ids, an empty tensor).
    /// Backward releases what forward saved (a second backward without a new forward is an
    /// error).
    fn backward(&mut self, dout: &Tensor) -> Result<Tensor>;
    /// Drops what the last forward saved, without a backward (activation checkpointing
    /// keeps a block's input instead and re-runs its forward in backward).
    fn release(&mut self);
    fn visit_params(&self, f: &mut dyn FnMut(&Param));
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param));
}

/// An output tensor on `like`'s device and of its dtype (the compute dtype: f32, or bf16 in
/// mixed precision), with unspecified contents (a recycled buffer): every op overwrites its
/// outputs entirely.
pub(crate) fn empty_like(like: &Tensor, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::try_empty(like.device(), like.dtype(), shape)?)
}

/// An f32 output tensor on `like`'s device (statistics kept in f32 in every precision:
/// LayerNorm mean/rstd, losses), contents unspecified.
pub(crate) fn empty_f32(like: &Tensor, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::try_empty(like.device(), kernels::DType::F32, shape)?)
}

pub(crate) fn saved<'a, T>(slot: &'a Option<T>, layer: &'static str) -> Result<&'a T> {
    slot.as_ref().ok_or(crate::Error::NoForward { layer })
}

/// Takes what forward saved, for a backward that releases it.
pub(crate) fn take_saved<T>(slot: &mut Option<T>, layer: &'static str) -> Result<T> {
    slot.take().ok_or(crate::Error::NoForward { layer })
}
