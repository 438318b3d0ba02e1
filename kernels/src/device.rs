use std::fmt;

use crate::{Error, Result};

/// Where tensors live and ops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// f32 on the host, parallel with rayon; the reference every GPU kernel is checked against.
    Cpu,
    /// An NVIDIA GPU by its CUDA ordinal; kernels compiled by NVRTC (see `crate::cuda`).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// What the user asked for in the config: `auto`, `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceRequest {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "cpu" => Some(Self::Cpu),
            "cuda" => Some(Self::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda),
        }
    }
}

/// Resolves a request to a usable device, never panicking, with a one-line note saying
/// which device was chosen and why. `auto` picks GPU 0 when it is usable (driver, device
/// and NVRTC all present), else the CPU, giving the reason. `cuda` fails with
/// `Error::DeviceUnavailable` saying what is missing and what to install.
pub fn select(request: DeviceRequest) -> Result<(Device, String)> {
    match request {
        DeviceRequest::Cpu => Ok((Device::Cpu, "device: cpu (requested)".into())),
        DeviceRequest::Auto => match usable_cuda(0) {
            Ok(note) => Ok((Device::Cuda(0), format!("device: cuda:0 (auto: {note})"))),
            Err(reason) => Ok((Device::Cpu, format!("device: cpu (auto: no usable GPU: {reason})"))),
        },
        DeviceRequest::Cuda(ordinal) => match usable_cuda(ordinal) {
            Ok(note) => Ok((Device::Cuda(ordinal), format!("device: cuda:{ordinal} (requested: {note})"))),
            Err(reason) => Err(Error::DeviceUnavailable { requested: request_name(ordinal), reason }),
        },
    }
}

fn request_name(ordinal: usize) -> String {
    if ordinal == 0 {
        "cuda".into()
    } else {
        format!("cuda:{ordinal}")
    }
}

/// Probes the driver, the device and NVRTC (or a complete kernel cache), then opens the
/// device; returns a short description (`NVIDIA H100 80GB HBM3, sm_90, driver CUDA 13.0,
/// NVRTC 13.0`) or the reason it is unusable.
fn usable_cuda(ordinal: usize) -> std::result::Result<String, String> {
    crate::cuda::probe(ordinal)?;
    let dev = crate::cuda::device(ordinal).map_err(|e| match e {
        Error::DeviceUnavailable { reason, .. } => reason,
        other => other.to_string(),
    })?;
    let kernels = match crate::cuda::nvrtc::nvrtc() {
        Ok(nvrtc) => format!("NVRTC {}.{}", nvrtc.version.0, nvrtc.version.1),
        // probe passed without NVRTC: every kernel is in the disk cache
        Err(_) => "no NVRTC, kernels from the cache".to_string(),
    };
    let driver = dev.driver_version();
    Ok(format!("{}, {}, driver CUDA {}.{}, {kernels}", dev.name(), dev.arch(), driver / 1000, driver % 1000 / 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(DeviceRequest::parse("auto"), Some(DeviceRequest::Auto));
        assert_eq!(DeviceRequest::parse("cpu"), Some(DeviceRequest::Cpu));
        assert_eq!(DeviceRequest::parse("cuda"), Some(DeviceRequest::Cuda(0)));
        assert_eq!(DeviceRequest::parse("cuda:1"), Some(DeviceRequest::Cuda(1)));
        assert_eq!(DeviceRequest::parse("cuda:x"), None);
        assert_eq!(DeviceRequest::parse("gpu"), None);
    }

    /// Whatever this machine has, `auto` never fails and `cuda` either succeeds or says why.
    #[test]
    fn select_never_panics_and_explains() {
        let (device, note) = select(DeviceRequest::Auto).unwrap();
        assert!(note.starts_with(&format!("device: {device} (auto: ")), "{note}");
        match select(DeviceRequest::Cuda(0)) {
            Ok((device, _)) => assert_eq!(device, Device::Cuda(0)),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("device `cuda` is not available: "), "{msg}");
                assert!(msg.contains("install"), "the error must say what to install: {msg}");
            }
        }
    }
}
