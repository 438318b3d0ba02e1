//! Is a CUDA device usable here? Answered without ever panicking.
//!
//! cudarc panics on the first driver call when `libcuda.so` is missing, so the library is
//! looked for first (`is_culib_present` only dlopens candidate names), then the driver is
//! initialised and the devices counted, each failure becoming a reason a user can act on.

use cudarc::driver::{result as driver_result, sys as driver_sys};

use super::nvrtc;

/// A usable device as the driver sees it.
#[derive(Clone, Debug)]
pub struct ProbeInfo {
    pub ordinal: usize,
    /// Devices the driver reports.
    pub device_count: usize,
}

/// Checks that the driver is present and `ordinal` exists. Does not need NVRTC.
pub fn probe_driver(ordinal: usize) -> Result<ProbeInfo, String> {
    // SAFETY: is_culib_present only dlopens and closes candidate library names.
    if !unsafe { driver_sys::is_culib_present() } {
        return Err("the NVIDIA driver library libcuda.so was not found (no NVIDIA driver installed, \
                    or not visible in this container); install the NVIDIA driver (580 or newer for CUDA 13.0)"
            .into());
    }
    driver_result::init().map_err(|e| format!("the NVIDIA driver failed to initialise (cuInit: {e}); check `nvidia-smi`"))?;
    let count = driver_result::device::get_count().map_err(|e| format!("could not count CUDA devices ({e})"))?;
    let count = usize::try_from(count).unwrap_or(0);
    if count == 0 {
        return Err("the NVIDIA driver is installed but reports no CUDA device".into());
    }
    if ordinal >= count {
        return Err(format!("cuda:{ordinal} requested but the driver reports {count} device(s) (0..{count})"));
    }
    Ok(ProbeInfo { ordinal, device_count: count })
}

/// Checks everything a training run needs: the driver, the device, and NVRTC with the
/// CUDA headers (kernels are compiled at first use).
pub fn probe(ordinal: usize) -> Result<ProbeInfo, String> {
    let info = probe_driver(ordinal)?;
    nvrtc::nvrtc().map_err(|e| match e {
        crate::Error::Nvrtc { reason } => format!("a GPU is present but NVRTC is not usable: {reason}"),
        other => other.to_string(),
    })?;
    Ok(info)
}
