//! The compute substrate of the engine.
//!
//! - [`Device`]: where a tensor lives and where its ops run: the CPU (f32, rayon), or an
//!   NVIDIA GPU through [`cuda`] (our own kernels, compiled by NVRTC at first use).
//!   [`device::select`] turns the config's `auto`/`cpu`/`cuda` into a device, never panicking.
//! - [`Tensor`]: a typed buffer with a shape, on one device. Clones share storage;
//!   writing to a shared tensor copies it first, so saved activations stay intact.
//! - [`memory`]: the caching pool of each device, with a budget and statistics; every
//!   tensor buffer comes from it (`OutOfMemory` past the budget, never a panic).
//! - [`ops`]: every op the models need, forward and backward. Each op dispatches on
//!   the device of its tensors; nothing above this crate knows how an op is computed.
//!
//! Gradient rule, as everywhere in the engine: parameter gradients accumulate (`+=`),
//! activation gradients overwrite (`=`).

pub mod cuda;
pub mod device;
pub mod error;
pub mod host_pool;
pub mod memory;
pub mod ops;
pub mod tensor;
pub mod timing;

pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
