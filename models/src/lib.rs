//! Layers with forward and backward, and the models built from them.
//!
//! - [`Layer`]: the building block. `backward` is a required method: a layer without a
//!   backward cannot be written, so no parameter silently goes without a gradient.
//! - [`Param`]: a named parameter with its gradient and its optimizer settings; in bf16
//!   [`Precision`] it also holds the bf16 working copy of its fp32 master value.
//! - [`Model`]: what the trainer drives ([`Gpt`] and [`Llama`] here; custom models implement
//!   it too).
//! - [`Recompute`]: activation checkpointing policies (none, selective, full, full:K).
//!
//! Nothing here knows how an op is computed or on which device: that is `kernels`' job.
//! The same layer code runs on the CPU (fp32) and on a GPU (fp32 or bf16): parameters are
//! made where the [`Placement`] says, and activations take the dtype of the layer's input.

pub mod error;
pub mod gpt;
pub mod layers;
pub mod llama;
mod lm_head;
pub mod model;
pub mod param;
pub mod recompute;

pub use error::{Error, Result};
pub use gpt::{Gpt, GptConfig};
pub use layers::Layer;
pub use llama::{Llama, LlamaConfig};
pub use model::Model;
pub use param::{Export, Param, Placement, Precision};
pub use recompute::Recompute;
