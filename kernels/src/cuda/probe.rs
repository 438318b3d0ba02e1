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

/// Checks everything a training run needs: the driver, the device, and its kernels: NVRTC
/// with the CUDA headers (kernels are compiled at first use), or, without NVRTC, a disk
/// cache holding every embedded kernel file for the device's architecture.
pub fn probe(ordinal: usize) -> Result<ProbeInfo, String> {
    let info = probe_driver(ordinal)?;
    let reason = match nvrtc::nvrtc() {
        Ok(_) => return Ok(info),
        Err(crate::Error::Nvrtc { reason }) => reason,
        Err(other) => other.to_string(),
    };
    let arch = arch(ordinal)?;
    let missing: Vec<&str> = super::sources::SOURCES
        .iter()
        .filter(|(file, source)| super::cache::lookup(file, source, &arch).is_empty())
        .map(|(file, _)| *file)
        .collect();
    if missing.is_empty() {
        return Ok(info);
    }
    let cache = super::cache_dir().map(|d| d.display().to_string()).unwrap_or_else(|| "none".into());
    Err(format!(
        "a GPU is present but NVRTC is not usable ({reason}), and the kernel cache ({cache}) lacks {arch} cubins of {} \
         (build them with `engine kernels build --arch {arch} --out DIR` where NVRTC is, and set ENGINE_KERNEL_CACHE=DIR)",
        missing.join(", ")
    ))
}

/// `sm_XY` of device `ordinal`, from the driver alone (no context).
fn arch(ordinal: usize) -> Result<String, String> {
    use driver_sys::CUdevice_attribute as A;
    let dev = driver_result::device::get(ordinal as i32).map_err(|e| format!("cuDeviceGet({ordinal}) failed ({e})"))?;
    let read = |attrib| {
        // SAFETY: `dev` was returned by cuDeviceGet.
        unsafe { driver_result::device::get_attribute(dev, attrib) }.map_err(|e| format!("reading the compute capability of cuda:{ordinal} failed ({e})"))
    };
    Ok(format!("sm_{}{}", read(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?, read(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?))
}
