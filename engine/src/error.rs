use std::path::PathBuf;

/// Every failure the engine reports. `main` prints one line and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {msg}")]
    Config { file: String, msg: String },
    #[error(transparent)]
    Kernel(#[from] kernels::Error),
    #[error(transparent)]
    Model(#[from] models::Error),
    #[error(transparent)]
    Data(#[from] datasets::Error),
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: u64, loss: f32 },
    #[error("{0}")]
    Usage(String),
    /// A file of a run directory that does not read as documented (`line`: 1-based, in a
    /// JSON-lines file).
    #[error("{}{}: {msg}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    RunFile { path: PathBuf, line: Option<usize>, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
