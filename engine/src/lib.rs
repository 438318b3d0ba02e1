#![warn(missing_docs)]
//! Training on top of `kernels`, `models` and `datasets`: the typed config, the trainer,
//! AdamW, checkpoints, evaluation and sampling, and the `engine` command line.
//!
//! Library users get the whole stack from here.

pub mod checkpoint;
pub mod cli;
pub mod bench;
pub mod config;
pub mod error;
pub mod guard;
pub mod hellaswag;
pub mod hf;
pub mod journal;
pub mod lock;
pub mod logs;
pub mod manifest;
pub mod monitor;
pub mod optim;
pub mod plan;
pub mod prepare;
pub mod registry;
pub mod report;
pub mod sample;
pub mod schedule;
pub mod staging;
pub mod telemetry;
pub mod tensorboard;
pub mod train;

pub use error::{Error, Result};
pub use {datasets, kernels, models};
