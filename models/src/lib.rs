//! Layers with forward and backward, and the models built from them.
//!
//! - [`Layer`]: the building block. `backward` is a required method: a layer without a
//!   backward cannot be written, so no parameter silently goes without a gradient. Its
//!   parameter visiting and `release` come from [`layer_fields!`], which lists every field,
//!   so no child can be forgotten either; its recomputation hooks let a block drop and
//!   rebuild what its direct children saved.
//! - [`Param`]: a named parameter with its gradient and its optimizer settings; in bf16
//!   [`Precision`] it also holds the bf16 working copy of its fp32 master value.
//! - [`Model`]: what the trainer drives ([`Gpt`] and [`Llama`] here; custom models implement
//!   it too, language models in a few lines with [`lm_head`] and [`lm_model_methods!`]).
//! - [`Recompute`]: activation checkpointing policies (none, selective, full, full:K).
//! - [`gradcheck`]: a layer's or a model's backward against finite differences.
//!
//! Nothing here knows how an op is computed or on which device: that is `kernels`' job.
//! The same layer code runs on the CPU (fp32) and on a GPU (fp32 or bf16): parameters are
//! made where the [`Placement`] says, and activations take the dtype of the layer's input.

#![warn(missing_docs)]

pub mod error;
pub mod gpt;
pub mod gradcheck;
pub mod kv_cache;
pub mod layers;
pub mod llama;
pub mod lm_head;
pub mod model;
pub mod param;
pub mod recompute;

pub use error::{Error, Result};
pub use gpt::{Activation, Gpt, GptConfig};
pub use layers::Layer;
pub use llama::{Llama, LlamaConfig};
pub use model::Model;
pub use param::{Export, Param, Placement, Precision};
pub use recompute::Recompute;
