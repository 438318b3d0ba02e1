//! The `kernels` suite (being built): each op forward and backward at GPT-2 124M shapes.

use kernels::Device;

use super::{BenchOptions, Results};
use crate::Result;

pub fn run(_results: &mut Results, _device: Device, _options: &BenchOptions) -> Result<()> {
    Err(crate::Error::Usage("the kernels suite is not built yet".into()))
}
