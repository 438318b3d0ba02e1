//! The engine's error type and `Result` alias.

use std::path::PathBuf;

/// Every failure the engine reports. `main` prints one line and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config that cannot be read, parsed or validated.
    #[error("{file}: {msg}")]
    Config {
        /// The config file as given (or the name passed to [`crate::config::Config::parse`]).
        file: String,
        /// One line naming the key (or the `--set` it came from) and what was expected.
        msg: String,
    },
    /// A failure of the tensor and device layer, out of memory included.
    #[error(transparent)]
    Kernel(#[from] kernels::Error),
    /// A failure of a model: building it, loading weights, forward or backward.
    #[error(transparent)]
    Model(#[from] models::Error),
    /// A failure reading, tokenizing or checking the data.
    #[error(transparent)]
    Data(#[from] datasets::Error),
    /// A checkpoint (or Hugging Face) directory that is missing, incomplete or does not
    /// match the model.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The checkpoint directory, or the file in it, at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A file-system operation that failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory operated on.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The run was asked to stop ([`crate::train::TrainOptions::stop`]: SIGINT or SIGTERM for
    /// `engine train`) and did, after a step, with a checkpoint there.
    #[error("interrupted by {} after step {step}; checkpoint {}: continue with `engine train CONFIG --resume`", signal_name(*signal), checkpoint.display())]
    Interrupted {
        /// The signal that asked for the stop.
        signal: i32,
        /// The last step completed (counting from 1), the checkpoint's.
        step: u64,
        /// The checkpoint written at that step.
        checkpoint: PathBuf,
    },
    /// A diverged step: a NaN or infinite loss or gradient norm, or an update that made a
    /// weight non-finite. No checkpoint is written from it; `checkpoints/latest` still names
    /// the last one with finite weights.
    #[error("training diverged at step {step}: {what}; {kept}")]
    Diverged {
        /// The diverged step, counting from 1: its number in metrics.log and in the
        /// `nonfinite_loss` alert.
        step: u64,
        /// What was not finite (e.g. "the loss is NaN").
        what: String,
        /// Where the last good weights are (the checkpoint `latest` names), or that none
        /// was written, and what to do.
        kept: String,
    },
    /// Anything else the user can fix (bad arguments, a budget no plan fits, data that
    /// does not fit the run), as the one line `main` prints.
    #[error("{0}")]
    Usage(String),
    /// A file of a run directory that does not read as documented.
    #[error("{}{}: {msg}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    RunFile {
        /// The file, e.g. `<run_dir>/metrics.jsonl`.
        path: PathBuf,
        /// 1-based line of the JSON error (in a JSON-lines file, the record's line); `None`
        /// when the error has no line (e.g. `config.toml`).
        line: Option<usize>,
        /// What failed to parse.
        msg: String,
    },
}

/// `std::result::Result` with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// "SIGINT", "SIGTERM", or "signal N".
pub fn signal_name(signal: i32) -> String {
    match signal {
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
