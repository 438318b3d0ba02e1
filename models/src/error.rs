#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kernel(#[from] kernels::Error),
    #[error("{layer}: backward called without a preceding forward")]
    NoForward { layer: &'static str },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, Error>;
