use std::fmt;

use crate::{Error, Result};

/// Where tensors live and ops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// f32 on the host, parallel with rayon; the reference every GPU kernel is checked against.
    Cpu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
        }
    }
}

/// What the user asked for in the config: `auto`, `cpu` or `cuda`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda,
}

impl DeviceRequest {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "cpu" => Some(Self::Cpu),
            "cuda" => Some(Self::Cuda),
            _ => None,
        }
    }
}

/// Resolves a request to a usable device, never panicking. `auto` picks the GPU when one
/// is usable and says which device it chose in the returned note.
pub fn select(request: DeviceRequest) -> Result<(Device, String)> {
    match request {
        DeviceRequest::Cpu => Ok((Device::Cpu, "device: cpu (requested)".into())),
        DeviceRequest::Auto => Ok((
            Device::Cpu,
            "device: cpu (auto: this build has no CUDA backend yet)".into(),
        )),
        DeviceRequest::Cuda => Err(Error::DeviceUnavailable {
            requested: "cuda".into(),
            reason: "this build has no CUDA backend yet; use device = \"cpu\" or \"auto\"".into(),
        }),
    }
}
