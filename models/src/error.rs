//! The crate's one error type.

/// What can go wrong in a layer or a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op failed (a shape, a dtype, a device, out of memory, a launch).
    #[error(transparent)]
    Kernel(#[from] kernels::Error),
    /// `backward` (or a recomputation) needed state that no forward saved.
    #[error("{layer}: backward called without a preceding forward")]
    NoForward {
        /// The layer (or model) that was asked.
        layer: &'static str,
    },
    /// A configuration that makes no model.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A bad argument: token ids of the wrong shape or device, a misuse of the API.
    #[error("{0}")]
    Input(String),
    /// A recomputation hook used out of turn (a layer asked to restore an input it never
    /// dropped, a producer that cannot recompute its output).
    #[error("recomputation: {0}")]
    Recompute(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
