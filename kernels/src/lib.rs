//! The compute substrate of the engine.
//!
//! - [`Device`]: where a tensor lives and where its ops run (the CPU now; CUDA comes
//!   in its own backend).
//! - [`Tensor`]: a typed buffer with a shape, on one device. Clones share storage;
//!   writing to a shared tensor copies it first, so saved activations stay intact.
//! - [`ops`]: every op the models need, forward and backward. Each op dispatches on
//!   the device of its tensors; nothing above this crate knows how an op is computed.
//!
//! Gradient rule, as everywhere in the engine: parameter gradients accumulate (`+=`),
//! activation gradients overwrite (`=`).

pub mod device;
pub mod error;
pub mod ops;
pub mod tensor;

pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
