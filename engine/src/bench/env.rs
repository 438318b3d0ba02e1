//! The environment a benchmark ran in, recorded with every results file: what would make
//! the same benchmark give another answer (device, driver, CUDA and NVRTC versions, clocks,
//! power limit, CPU, memory, threads, the engine's commit and whether its tree was dirty).

use kernels::Device;
use serde::{Deserialize, Serialize};
use sysinfo::System;

use crate::Result;

/// A results file's `environment`: the machine and build a benchmark ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// The engine's version, its git commit at build time, and whether tracked files had
    /// uncommitted changes then (`None`: built outside a git checkout).
    pub engine_version: String,
    /// The full commit hash at build time; "unknown" outside a git checkout.
    pub git_commit: String,
    /// Whether tracked files had uncommitted changes at build time.
    pub git_dirty: Option<bool>,
    /// "cpu" or "cuda:N".
    pub device: String,
    /// The GPU, on a GPU run.
    pub gpu: Option<GpuEnvironment>,
    /// The host's CPU.
    pub cpu: CpuEnvironment,
    /// Total host memory, bytes.
    pub host_memory: u64,
    /// "linux 6.1.0-..." as far as known.
    pub os: String,
    /// Threads of the CPU backend's pool.
    pub cpu_threads: usize,
}

/// The GPU a benchmark ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuEnvironment {
    /// The device's name as CUDA reports it, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// The architecture kernels were compiled for, e.g. "sm_90".
    pub arch: String,
    /// Streaming multiprocessors on the device.
    pub sm_count: u32,
    /// The CUDA version the driver supports ("13.0") and the NVRTC that compiled the kernels.
    pub cuda_driver: String,
    /// The NVRTC version found now ("13.0"); `None` when NVRTC is not installed (kernels
    /// from the cache).
    pub nvrtc: Option<String>,
    /// NVML's facts: driver version, clocks at the start, power limit; `None` (with
    /// `nvml_note`) when NVML is unavailable.
    pub nvml: Option<crate::telemetry::NvmlInfo>,
    /// Why there is no `nvml` (NVML missing, the device not found); `None` when there is.
    pub nvml_note: Option<String>,
    /// The device's PCI address, as CUDA gives it (how NVML finds it).
    pub pci_bus_id: String,
}

/// The host's CPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuEnvironment {
    /// The first CPU's brand string as the OS reports it; "unknown" if there is none.
    pub model: String,
    /// Logical cores (hardware threads) the OS reports.
    pub logical_cores: usize,
    /// Physical cores; `None` when the OS does not say.
    pub physical_cores: Option<usize>,
}

/// The environment of a run on `device`.
pub fn capture(device: Device) -> Result<Environment> {
    let mut system = System::new();
    system.refresh_cpu_all();
    system.refresh_memory();
    let gpu = match device {
        Device::Cpu => None,
        Device::Cuda(ordinal) => {
            let dev = kernels::cuda::device(ordinal)?;
            let driver = dev.driver_version();
            let (nvml, nvml_note) = match crate::telemetry::nvml_info(dev.pci_bus_id()) {
                Ok(info) => (Some(info), None),
                Err(why) => (None, Some(why)),
            };
            Some(GpuEnvironment {
                name: dev.name().to_string(),
                arch: dev.arch().to_string(),
                sm_count: dev.sm_count(),
                cuda_driver: format!("{}.{}", driver / 1000, driver % 1000 / 10),
                nvrtc: kernels::cuda::nvrtc::nvrtc().ok().map(|n| format!("{}.{}", n.version.0, n.version.1)),
                nvml,
                nvml_note,
                pci_bus_id: dev.pci_bus_id().to_string(),
            })
        }
    };
    Ok(Environment {
        engine_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("ENGINE_GIT_COMMIT").into(),
        git_dirty: env!("ENGINE_GIT_DIRTY").parse().ok(),
        device: device.to_string(),
        gpu,
        cpu: CpuEnvironment {
            model: system.cpus().first().map_or("unknown".into(), |c| c.brand().trim().to_string()),
            logical_cores: system.cpus().len(),
            physical_cores: System::physical_core_count(),
        },
        host_memory: system.total_memory(),
        os: format!("{} {}", System::name().unwrap_or_else(|| std::env::consts::OS.into()), System::kernel_version().unwrap_or_default()).trim().to_string(),
        cpu_threads: kernels::ops::num_threads(),
    })
}

/// Now, UTC, as RFC 3339 to the second ("2026-12-01T04:55:00Z").
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// `secs` since the Unix epoch as RFC 3339 UTC (days to a civil date: Howard Hinnant's
/// algorithm).
fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56
        assert_eq!(rfc3339(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(rfc3339(1_796_100_000), "2026-12-01T04:40:00Z");
    }

    #[test]
    fn the_cpu_environment_names_the_machine() {
        let e = capture(Device::Cpu).unwrap();
        assert_eq!(e.device, "cpu");
        assert!(e.gpu.is_none() && e.cpu.logical_cores >= 1 && e.host_memory > 0 && e.cpu_threads >= 1, "{e:?}");
        assert!(e.git_commit == "unknown" || (e.git_commit.len() == 40 && e.git_commit.chars().all(|c| c.is_ascii_hexdigit())), "{}", e.git_commit);
    }
}
