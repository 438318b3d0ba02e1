//! Telemetry: a background thread samples the GPU (through NVML: utilization, memory,
//! power, temperature, SM clock, throttle reasons) and the host (CPU use, the process's
//! resident memory, free disk where the run directory is) every `logs.telemetry_interval_ms`
//! into `telemetry.jsonl`, and raises the alerts only it can see: the GPU throttling, the
//! GPU under-used. Fields in docs/CONFIG.md ("telemetry.jsonl").
//!
//! Without NVML (no driver, a CPU-only machine, a container without the library) the GPU
//! part is `null`, one line says why, and the host part goes on: telemetry never stops a run.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};
use sysinfo::{Disks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::journal;
use crate::logs::{Alert, Edges};
use crate::Result;

/// One line of `telemetry.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run (this invocation) started.
    pub time_s: f64,
    /// Steps completed when sampled.
    pub step: u64,
    /// `None`: no GPU in this run, or NVML unavailable (the start line says which).
    pub gpu: Option<GpuSample>,
    /// The host's readings, present in every sample.
    pub host: HostSample,
}

/// The run's GPU as NVML sees it; a reading the device does not support is `None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// NVML's index of the device (which need not be CUDA's ordinal).
    pub index: u32,
    /// The device's name as NVML reports it, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Percent of the last sample period (1/6 s to 1 s, by device) with a kernel running.
    pub utilization_pct: Option<u32>,
    /// Device memory in use by every process (not only this one), bytes.
    pub memory_used: Option<u64>,
    /// The device's total memory, bytes.
    pub memory_total: Option<u64>,
    /// Board power draw, watts.
    pub power_w: Option<f64>,
    /// GPU core temperature, °C.
    pub temperature_c: Option<u32>,
    /// Current SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Why the clocks are below their maximum, NVML's reasons in snake case (`gpu_idle`,
    /// `sw_power_cap`, `hw_slowdown`, `sw_thermal_slowdown`, ...); empty: none.
    pub throttle_reasons: Vec<String>,
}

/// The host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// All cores' use, percent of the whole machine (0-100).
    pub cpu_pct: f64,
    /// This process (trainer and data workers), percent of one core (above 100 with more).
    pub process_cpu_pct: f64,
    /// This process's resident memory, bytes.
    pub rss: u64,
    /// Bytes available to this user on the run directory's filesystem.
    pub disk_free: Option<u64>,
}

/// Thresholds of the telemetry alerts (`[logs]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TelemetryThresholds {
    /// Alert when a slowing throttle reason holds in this many consecutive samples (0: off).
    pub throttle_samples: usize,
    /// Alert when the GPU's mean utilization over the last [`UTIL_WINDOW`] samples is below
    /// this fraction (0: off).
    pub gpu_util: f64,
    /// Steps that must have completed before utilization counts (compilation, warm-up).
    pub warmup_steps: u64,
}

/// Samples averaged for the low-utilization alert.
pub const UTIL_WINDOW: usize = 10;

/// Throttle reasons that lower the clocks of a busy GPU (thermal, power, hardware slowdown);
/// `gpu_idle` and clock settings are not a problem of the run.
const SLOWING: [&str; 5] = ["sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"];

/// The alerts telemetry raises, edge-triggered as the step alerts are.
#[derive(Clone, Debug)]
pub struct TelemetryAlerter {
    thresholds: TelemetryThresholds,
    throttled_for: usize,
    utilization: VecDeque<u32>,
    edges: Edges,
}

impl TelemetryAlerter {
    /// An alerter that has seen no sample yet.
    pub fn new(thresholds: TelemetryThresholds) -> Self {
        Self { thresholds, throttled_for: 0, utilization: VecDeque::new(), edges: Edges::default() }
    }

    /// Takes in one sample and returns the alerts that start to hold with it
    /// (`gpu_throttling`, `low_gpu_utilization`); none for a sample without GPU readings.
    pub fn check(&mut self, s: &Sample) -> Vec<Alert> {
        let th = self.thresholds;
        let Some(gpu) = &s.gpu else { return Vec::new() };
        let mut raised = Vec::new();
        let slowing: Vec<&str> = gpu.throttle_reasons.iter().map(String::as_str).filter(|r| SLOWING.contains(r)).collect();
        self.throttled_for = if slowing.is_empty() { 0 } else { self.throttled_for + 1 };
        if th.throttle_samples > 0 {
            let holds = self.throttled_for >= th.throttle_samples;
            let message = || {
                format!(
                    "GPU throttling: {} for {} samples in a row (SM clock {} MHz, {} C, {} W); check cooling and the power limit",
                    slowing.join(", "),
                    self.throttled_for,
                    opt(gpu.sm_clock_mhz),
                    opt(gpu.temperature_c),
                    opt(gpu.power_w.map(|w| w.round()))
                )
            };
            if self.edges.rises("gpu_throttling", holds) {
                raised.push(Alert { step: s.step, kind: "gpu_throttling", message: message(), value: self.throttled_for as f64, threshold: th.throttle_samples as f64 });
            }
        }
        if th.gpu_util > 0.0 && s.step > th.warmup_steps {
            if let Some(u) = gpu.utilization_pct {
                self.utilization.push_back(u);
                if self.utilization.len() > UTIL_WINDOW {
                    self.utilization.pop_front();
                }
            }
            let full = self.utilization.len() == UTIL_WINDOW;
            let mean = self.utilization.iter().map(|&u| u as f64).sum::<f64>() / self.utilization.len().max(1) as f64 / 100.0;
            if self.edges.rises("low_gpu_utilization", full && mean < th.gpu_util) {
                raised.push(Alert {
                    step: s.step,
                    kind: "low_gpu_utilization",
                    message: format!(
                        "low GPU utilization: {:.0}% over the last {UTIL_WINDOW} samples (threshold {:.0}%); the GPU waits on the host: \
                         look at data_wait_ms, raise the micro-batch or data.num_workers",
                        100.0 * mean,
                        100.0 * th.gpu_util
                    ),
                    value: mean,
                    threshold: th.gpu_util,
                });
            }
        }
        raised
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// What telemetry watches and where it writes.
#[derive(Clone, Debug)]
pub struct TelemetryOptions {
    /// `telemetry.jsonl` is appended to in this directory; its filesystem is the one whose
    /// free space is reported.
    pub run_dir: PathBuf,
    /// The wait after one sample is written before the next is taken
    /// (`logs.telemetry_interval_ms`).
    pub interval: Duration,
    /// The run's GPU by PCI address (kernels' `CudaDevice::pci_bus_id`); `None`: a CPU run.
    pub gpu_pci_bus_id: Option<String>,
    /// The NVML library to load (default `libnvidia-ml.so.1`, the driver's).
    pub nvml_library: Option<OsString>,
    /// When the GPU alerts are raised.
    pub thresholds: TelemetryThresholds,
    /// When the run started (`time_s` counts from it), and steps completed before (resume).
    pub started: Instant,
    /// Steps completed before this invocation: the `step` of samples until
    /// [`Telemetry::set_step`] is called.
    pub start_step: u64,
}

/// What sampling cost: samples taken and the wall time spent taking and writing them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TelemetryCost {
    /// Samples written to `telemetry.jsonl`.
    pub samples: u64,
    /// Wall time the thread spent taking and writing them, milliseconds (its waits between
    /// samples excluded).
    pub ms: f64,
}

/// The running telemetry thread. Dropping it without [`Telemetry::stop`] stops it too.
pub struct Telemetry {
    stop: Arc<(Mutex<bool>, Condvar)>,
    step: Arc<AtomicU64>,
    alerts: Receiver<Alert>,
    thread: Option<JoinHandle<Result<TelemetryCost>>>,
    /// Why sampling stopped early: a write to telemetry.jsonl failed (a full disk).
    failure: Arc<Mutex<Option<String>>>,
    /// The newest sample written, until [`Telemetry::take_sample`] takes it.
    latest: Arc<Mutex<Option<Sample>>>,
    /// Why there is no GPU telemetry in a GPU run (NVML missing, the device not found).
    pub note: Option<String>,
    /// What was cut from telemetry.jsonl when it was opened: a torn last line of a killed
    /// run (crate::journal).
    pub repaired: Option<String>,
}

/// The GPU half of a sampler, when NVML answers.
struct GpuProbe {
    nvml: Nvml,
    index: u32,
    name: String,
}

impl GpuProbe {
    /// NVML and the device at `pci_bus_id`, or the reason there is none.
    fn open(pci_bus_id: &str, library: Option<&OsString>) -> std::result::Result<GpuProbe, String> {
        let mut builder = Nvml::builder();
        if let Some(lib) = library {
            builder.lib_path(lib);
        }
        let nvml = builder.init().map_err(|e| format!("NVML unavailable ({e})"))?;
        let device = nvml.device_by_pci_bus_id(pci_bus_id).map_err(|e| format!("NVML does not know the GPU at PCI {pci_bus_id} ({e})"))?;
        let index = device.index().map_err(|e| format!("NVML index of the GPU at {pci_bus_id}: {e}"))?;
        let name = device.name().unwrap_or_else(|_| "unknown".into());
        Ok(GpuProbe { nvml, index, name })
    }

    fn sample(&self) -> GpuSample {
        let empty = || GpuSample {
            index: self.index,
            name: self.name.clone(),
            utilization_pct: None,
            memory_used: None,
            memory_total: None,
            power_w: None,
            temperature_c: None,
            sm_clock_mhz: None,
            throttle_reasons: Vec::new(),
        };
        let Ok(d) = self.nvml.device_by_index(self.index) else { return empty() };
        let memory = d.memory_info().ok();
        GpuSample {
            utilization_pct: d.utilization_rates().ok().map(|u| u.gpu),
            memory_used: memory.as_ref().map(|m| m.used),
            memory_total: memory.as_ref().map(|m| m.total),
            power_w: d.power_usage().ok().map(|mw| mw as f64 / 1e3),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            throttle_reasons: d.current_throttle_reasons().map(throttle_names).unwrap_or_default(),
            ..empty()
        }
    }
}

/// The GPU's static facts and clocks as NVML reports them (for benchmark results).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NvmlInfo {
    /// The driver's version, e.g. "580.65.06".
    pub driver_version: String,
    /// The device's name as NVML reports it.
    pub name: String,
    /// Current SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Highest SM clock the device supports, MHz.
    pub max_sm_clock_mhz: Option<u32>,
    /// Current memory clock, MHz.
    pub memory_clock_mhz: Option<u32>,
    /// Highest memory clock the device supports, MHz.
    pub max_memory_clock_mhz: Option<u32>,
    /// The enforced power limit, watts.
    pub power_limit_w: Option<f64>,
    /// GPU core temperature, °C.
    pub temperature_c: Option<u32>,
    /// Why the clocks are below their maximum now, as in [`GpuSample::throttle_reasons`].
    pub throttle_reasons: Vec<String>,
}

/// NVML's view of the GPU at `pci_bus_id`, or why there is none.
pub fn nvml_info(pci_bus_id: &str) -> std::result::Result<NvmlInfo, String> {
    let probe = GpuProbe::open(pci_bus_id, None)?;
    let d = probe.nvml.device_by_index(probe.index).map_err(|e| e.to_string())?;
    Ok(NvmlInfo {
        driver_version: probe.nvml.sys_driver_version().map_err(|e| e.to_string())?,
        name: probe.name.clone(),
        sm_clock_mhz: d.clock_info(Clock::SM).ok(),
        max_sm_clock_mhz: d.max_clock_info(Clock::SM).ok(),
        memory_clock_mhz: d.clock_info(Clock::Memory).ok(),
        max_memory_clock_mhz: d.max_clock_info(Clock::Memory).ok(),
        power_limit_w: d.enforced_power_limit().ok().map(|mw| mw as f64 / 1e3),
        temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
        throttle_reasons: d.current_throttle_reasons().map(throttle_names).unwrap_or_default(),
    })
}

/// NVML's throttle reasons as snake-case names.
fn throttle_names(r: ThrottleReasons) -> Vec<String> {
    let names = [
        (ThrottleReasons::GPU_IDLE, "gpu_idle"),
        (ThrottleReasons::APPLICATIONS_CLOCKS_SETTING, "applications_clocks_setting"),
        (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::SYNC_BOOST, "sync_boost"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake_slowdown"),
        (ThrottleReasons::DISPLAY_CLOCK_SETTING, "display_clock_setting"),
    ];
    names.iter().filter(|(bit, _)| r.contains(*bit)).map(|(_, n)| n.to_string()).collect()
}

/// The host half of a sampler.
struct HostProbe {
    system: System,
    pid: Option<Pid>,
    disks: Disks,
    /// The disk whose mount point is the longest prefix of the run directory.
    disk: Option<usize>,
}

impl HostProbe {
    fn new(run_dir: &Path) -> HostProbe {
        let mut system = System::new();
        system.refresh_cpu_usage();
        let disks = Disks::new_with_refreshed_list();
        let dir = fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
        let disk = disks
            .list()
            .iter()
            .enumerate()
            .filter(|(_, d)| dir.starts_with(d.mount_point()))
            .max_by_key(|(_, d)| d.mount_point().as_os_str().len())
            .map(|(i, _)| i);
        HostProbe { system, pid: sysinfo::get_current_pid().ok(), disks, disk }
    }

    fn sample(&mut self) -> HostSample {
        self.system.refresh_cpu_usage();
        let (mut rss, mut process_cpu) = (0, 0.0);
        if let Some(pid) = self.pid {
            self.system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), false, ProcessRefreshKind::nothing().with_memory().with_cpu());
            if let Some(p) = self.system.process(pid) {
                (rss, process_cpu) = (p.memory(), p.cpu_usage() as f64);
            }
        }
        let disk_free = self.disk.and_then(|i| {
            let d = self.disks.list_mut().get_mut(i)?;
            d.refresh().then(|| d.available_space())
        });
        HostSample { cpu_pct: self.system.global_cpu_usage() as f64, process_cpu_pct: process_cpu, rss, disk_free }
    }
}

impl Telemetry {
    /// Starts sampling (the first sample at once). Only the file's opening (and the repair
    /// of a torn last line, [`Telemetry::repaired`]) can fail; NVML missing is
    /// [`Telemetry::note`]. A write that fails later stops sampling, not the run
    /// ([`Telemetry::take_failure`]).
    pub fn start(options: TelemetryOptions) -> Result<Telemetry> {
        let path = options.run_dir.join("telemetry.jsonl");
        // Samples are a time series of every invocation: a resume cuts no sample, only a
        // torn last line.
        let (file, repaired) = journal::open_for_run(&path, 0, journal::jsonl_step)?;
        let (gpu, note) = match &options.gpu_pci_bus_id {
            None => (None, None),
            Some(pci) => match GpuProbe::open(pci, options.nvml_library.as_ref()) {
                Ok(probe) => (Some(probe), None),
                Err(why) => (None, Some(format!("telemetry: {why}: no GPU readings in telemetry.jsonl; host readings and training go on"))),
            },
        };
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let step = Arc::new(AtomicU64::new(options.start_step));
        let (send, alerts): (Sender<Alert>, Receiver<Alert>) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let latest = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, step, failure, latest) = (Arc::clone(&stop), Arc::clone(&step), Arc::clone(&failure), Arc::clone(&latest));
            std::thread::Builder::new()
                .name("telemetry".into())
                .spawn(move || {
                    let mut host = HostProbe::new(&options.run_dir);
                    let mut alerter = TelemetryAlerter::new(options.thresholds);
                    let (lock, wake) = &*stop;
                    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                    let mut cost = TelemetryCost::default();
                    loop {
                        let began = Instant::now();
                        let sample = Sample {
                            time_s: options.started.elapsed().as_secs_f64(),
                            step: step.load(Ordering::Relaxed),
                            gpu: gpu.as_ref().map(GpuProbe::sample),
                            host: host.sample(),
                        };
                        if let Err(e) = file.append_json(&sample) {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("telemetry stopped: {e}; training goes on"));
                            return Ok(cost);
                        }
                        for alert in alerter.check(&sample) {
                            // The trainer has gone: nobody to tell.
                            let _ = send.send(alert);
                        }
                        *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(sample);
                        cost.samples += 1;
                        cost.ms += began.elapsed().as_secs_f64() * 1e3;
                        let next = Instant::now() + options.interval;
                        while !*stopped {
                            let left = next.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            stopped = wake.wait_timeout(stopped, left).unwrap_or_else(|p| p.into_inner()).0;
                        }
                        if *stopped {
                            return Ok(cost);
                        }
                    }
                })
                .map_err(|e| crate::Error::Usage(format!("cannot start the telemetry thread: {e}")))?
        };
        Ok(Telemetry { stop, step, alerts, thread: Some(thread), failure, latest, note, repaired })
    }

    /// Why sampling stopped, once: a write to telemetry.jsonl failed (its error names the
    /// file). `None` while it samples, and after the reason was taken.
    pub fn take_failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The newest sample written to telemetry.jsonl since the last call, if any (the
    /// TensorBoard files take one per step record, crate::monitor).
    pub fn take_sample(&self) -> Option<Sample> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Tells the sampler how many steps have completed.
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// The alerts raised since the last call.
    pub fn take_alerts(&self) -> Vec<Alert> {
        self.alerts.try_iter().collect()
    }

    /// Stops the thread and returns what sampling cost (a write that failed is
    /// [`Telemetry::take_failure`], not an error). Stopping again costs nothing.
    pub fn stop(&mut self) -> Result<TelemetryCost> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<TelemetryCost> {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(crate::Error::Usage("the telemetry thread panicked".into())),
            None => Ok(TelemetryCost::default()),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(util: u32, reasons: &[&str]) -> Option<GpuSample> {
        Some(GpuSample {
            index: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            utilization_pct: Some(util),
            memory_used: Some(1 << 30),
            memory_total: Some(80 << 30),
            power_w: Some(650.0),
            temperature_c: Some(84),
            sm_clock_mhz: Some(1410),
            throttle_reasons: reasons.iter().map(|r| r.to_string()).collect(),
        })
    }

    fn sample(step: u64, gpu: Option<GpuSample>) -> Sample {
        Sample { time_s: step as f64, step, gpu, host: HostSample { cpu_pct: 10.0, process_cpu_pct: 100.0, rss: 1 << 20, disk_free: Some(1 << 40) } }
    }

    fn thresholds() -> TelemetryThresholds {
        TelemetryThresholds { throttle_samples: 3, gpu_util: 0.5, warmup_steps: 2 }
    }

    #[test]
    fn throttling_is_raised_after_consecutive_samples_once_per_episode() {
        let mut a = TelemetryAlerter::new(thresholds());
        let hot = || gpu(99, &["sw_thermal_slowdown"]);
        assert!(a.check(&sample(5, hot())).is_empty());
        assert!(a.check(&sample(5, hot())).is_empty());
        let raised = a.check(&sample(6, hot()));
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!((raised[0].kind, raised[0].step, raised[0].value, raised[0].threshold), ("gpu_throttling", 6, 3.0, 3.0));
        assert!(raised[0].message.contains("sw_thermal_slowdown for 3 samples in a row (SM clock 1410 MHz, 84 C, 650 W)"), "{}", raised[0].message);
        assert!(a.check(&sample(7, hot())).is_empty(), "still the same episode");
        // Idle and clock settings do not count, and end the episode.
        assert!(a.check(&sample(8, gpu(99, &["gpu_idle", "applications_clocks_setting"]))).is_empty());
        for _ in 0..2 {
            assert!(a.check(&sample(9, gpu(99, &["sw_power_cap"]))).is_empty());
        }
        assert_eq!(a.check(&sample(9, gpu(99, &["sw_power_cap"])))[0].kind, "gpu_throttling", "a new episode");
    }

    #[test]
    fn low_utilization_needs_a_full_window_after_the_warm_up() {
        let mut a = TelemetryAlerter::new(thresholds());
        // During warm-up (step <= 2) idle samples are not counted.
        for _ in 0..20 {
            assert!(a.check(&sample(1, gpu(0, &[]))).is_empty());
        }
        for i in 0..UTIL_WINDOW - 1 {
            assert!(a.check(&sample(3 + i as u64, gpu(40, &[]))).is_empty());
        }
        let raised = a.check(&sample(20, gpu(40, &[])));
        assert_eq!(raised.len(), 1);
        assert_eq!((raised[0].kind, raised[0].value, raised[0].threshold), ("low_gpu_utilization", 0.4, 0.5));
        assert!(raised[0].message.contains("40% over the last 10 samples (threshold 50%)"), "{}", raised[0].message);
        // Busy again: the mean climbs over the threshold, the alert can rise again later.
        for _ in 0..UTIL_WINDOW {
            assert!(a.check(&sample(30, gpu(100, &[]))).is_empty());
        }
        let again: Vec<Alert> = (0..UTIL_WINDOW).flat_map(|_| a.check(&sample(40, gpu(10, &[])))).collect();
        assert_eq!(again.len(), 1);
        // No GPU readings, no GPU alerts; thresholds at 0 are off.
        assert!(a.check(&sample(50, None)).is_empty());
        let mut off = TelemetryAlerter::new(TelemetryThresholds { throttle_samples: 0, gpu_util: 0.0, warmup_steps: 0 });
        assert!((0..30).all(|i| off.check(&sample(i, gpu(0, &["hw_slowdown"]))).is_empty()));
    }

    #[test]
    fn without_nvml_the_host_is_still_sampled() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Telemetry::start(TelemetryOptions {
            run_dir: dir.path().to_path_buf(),
            interval: Duration::from_millis(20),
            gpu_pci_bus_id: Some("00000000:65:00.0".into()),
            nvml_library: Some("libnvidia-ml-not-here.so.1".into()),
            thresholds: thresholds(),
            started: Instant::now(),
            start_step: 7,
        })
        .unwrap();
        let note = t.note.clone().expect("a note when NVML is missing");
        assert!(note.starts_with("telemetry: NVML unavailable (") && note.ends_with("host readings and training go on"), "{note}");
        std::thread::sleep(Duration::from_millis(150));
        t.set_step(9);
        std::thread::sleep(Duration::from_millis(60));
        let cost = t.stop().unwrap();
        let text = fs::read_to_string(dir.path().join("telemetry.jsonl")).unwrap();
        let samples: Vec<Sample> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(samples.len() >= 4, "{} samples", samples.len());
        assert_eq!(cost.samples, samples.len() as u64);
        assert_eq!(t.take_sample().as_ref(), samples.last(), "the newest sample, once");
        assert_eq!(t.take_sample(), None);
        assert!(cost.ms > 0.0 && cost.ms < 200.0, "{cost:?}");
        assert!(samples.iter().all(|s| s.gpu.is_none() && s.host.rss > 1 << 20), "{samples:?}");
        assert!(samples.windows(2).all(|w| w[1].time_s > w[0].time_s));
        assert_eq!((samples[0].step, samples.last().unwrap().step), (7, 9));
        assert!(samples.last().unwrap().host.disk_free.is_some_and(|b| b > 0), "the temp dir's filesystem has free space");
    }

    #[test]
    fn throttle_reason_names() {
        let r = ThrottleReasons::GPU_IDLE | ThrottleReasons::HW_THERMAL_SLOWDOWN;
        assert_eq!(throttle_names(r), ["gpu_idle", "hw_thermal_slowdown"]);
        assert!(throttle_names(ThrottleReasons::NONE).is_empty());
    }
}
