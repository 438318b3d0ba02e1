//! What a run tells its user while it trains: the run directory's logs (metrics.log,
//! metrics.jsonl, events.jsonl, telemetry.jsonl, summary.json, report.html, and with
//! `logs.tensorboard` the TensorBoard event files in tb/), the alerts,
//! and the terminal (a progress bar on a TTY, plain lines otherwise, nothing but errors
//! with --quiet). The trainer hands it each step's record; formats are in crate::logs and
//! crate::telemetry, fields in docs/CONFIG.md.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kernels::timing::Mark;

use crate::config::Config;
use crate::error::io;
use crate::journal::{self, LineFile};
use crate::logs::{self, Alert, AlertThresholds, Alerter, LoggingCost, StepRecord, Summary};
use crate::telemetry::{Telemetry, TelemetryCost, TelemetryOptions, TelemetryThresholds};
use crate::tensorboard::{self, EventWriter};
use crate::Result;

/// What the monitor needs to know of the run.
pub struct MonitorSetup<'a> {
    /// The run's config: `[logs]` (what is written, the alert thresholds, telemetry) and
    /// `train.log_interval`.
    pub config: &'a Config,
    /// The run directory the logs go to; it must exist.
    pub run_dir: &'a Path,
    /// The GPU's PCI address for telemetry; `None` on the CPU.
    pub gpu_pci_bus_id: Option<String>,
    /// Steps completed before this invocation (a resumed run); 0 writes metrics.log's header.
    pub start_step: u64,
    /// The step the run trains to (`train.max_steps`): the progress bar's end and the ETA.
    pub max_steps: u64,
    /// The device's peak rate for MFU and where it came from (crate::train::peak_rate).
    pub peak: (Option<f64>, String),
    /// `--quiet`: no progress bar or progress lines; alerts are still printed.
    pub quiet: bool,
    /// The device trained on (`cpu`, `cuda:0 NVIDIA H100 ...`) and the precision, for
    /// summary.json.
    pub device: (String, String),
    /// When this invocation started (time_s counts from it).
    pub started: Instant,
}

/// The logs and the terminal of a run in progress ([`Monitor::start`] to
/// [`Monitor::finish`]); dropped early (a failed run), it still writes the last step.
pub struct Monitor {
    run_dir: PathBuf,
    /// Off (`logs.enabled = false`): only metrics.log and events.jsonl's plan changes and
    /// checkpoints are written.
    enabled: bool,
    quiet: bool,
    started: Instant,
    start_step: u64,
    max_steps: u64,
    warmup_steps: u64,
    log_interval: u64,
    peak: (Option<f64>, String),
    device: (String, String),
    events: LineFile,
    log: LineFile,
    jsonl: Option<LineFile>,
    records: Vec<StepRecord>,
    alerter: Alerter,
    alerts: Vec<Alert>,
    telemetry: Option<Telemetry>,
    /// `logs.tensorboard`: this invocation's event file; `None` when off, or after a write
    /// to it failed (a warning said so).
    tensorboard: Option<EventWriter>,
    bar: Option<ProgressBar>,
    /// Time spent in [`Monitor::step`], milliseconds.
    step_logging_ms: f64,
    /// The last step, until its optimizer marks have completed (see [`Monitor::step`]).
    pending: Option<(StepRecord, (Mark, Mark))>,
}

/// Appends one JSON line to `path`, written whole ([`LineFile::append`]).
pub fn append_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    LineFile::open(path)?.append_json(value)
}

/// "1h02m", "3m05s", "42s".
fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

impl Monitor {
    /// Opens the run's logs (appending on a resume) and starts telemetry and the progress
    /// bar. The run directory must exist. A torn last line in a log (a killed run) is cut
    /// away first, and on a resume so are the records of steps after `start_step`
    /// (crate::journal); a line says so.
    pub fn start(setup: MonitorSetup<'_>) -> Result<Monitor> {
        let l = &setup.config.logs;
        let dir = setup.run_dir;
        let mut notes = Vec::new();
        let mut open = |name: &str, step_of: fn(&str) -> Option<u64>| -> Result<LineFile> {
            let (file, note) = journal::open_for_run(&dir.join(name), setup.start_step, step_of)?;
            notes.extend(note);
            Ok(file)
        };
        let log = open("metrics.log", journal::column_step)?;
        let events = open("events.jsonl", journal::event_step)?;
        let jsonl = if l.enabled {
            Some(open("metrics.jsonl", journal::jsonl_step)?)
        } else {
            // Not written with logs off, but repaired all the same: a later run with logs on
            // appends to it.
            let path = dir.join("metrics.jsonl");
            let resumed = (setup.start_step > 0).then_some(setup.start_step);
            notes.extend(journal::repair(&path, resumed, journal::jsonl_step)?.note(&path, resumed));
            None
        };
        if setup.start_step == 0 {
            log.append("# step loss val_loss lr grad_norm tokens_per_s ms data_wait_ms")?;
        }
        let bar = (!setup.quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(setup.max_steps);
            bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} | eta {eta}").expect("template"));
            bar.set_position(setup.start_step);
            bar
        });
        let mut monitor = Monitor {
            run_dir: setup.run_dir.to_path_buf(),
            enabled: l.enabled,
            quiet: setup.quiet,
            started: setup.started,
            start_step: setup.start_step,
            max_steps: setup.max_steps,
            warmup_steps: l.warmup_steps,
            log_interval: setup.config.train.log_interval.max(1),
            peak: setup.peak,
            device: setup.device,
            events,
            log,
            jsonl,
            records: Vec::new(),
            alerter: Alerter::new(AlertThresholds {
                data_stall: l.alert_data_stall,
                memory: l.alert_memory,
                loss_spike: l.alert_loss_spike,
                warmup_steps: l.warmup_steps,
            }),
            alerts: Vec::new(),
            telemetry: None,
            tensorboard: None,
            bar,
            step_logging_ms: 0.0,
            pending: None,
        };
        for note in notes {
            monitor.say(note);
        }
        if l.enabled && l.telemetry_interval_ms > 0 {
            let telemetry = Telemetry::start(TelemetryOptions {
                run_dir: setup.run_dir.to_path_buf(),
                interval: Duration::from_millis(l.telemetry_interval_ms),
                gpu_pci_bus_id: setup.gpu_pci_bus_id,
                nvml_library: None,
                thresholds: TelemetryThresholds {
                    throttle_samples: l.alert_throttle_samples,
                    gpu_util: l.alert_gpu_util,
                    warmup_steps: setup.start_step + l.warmup_steps,
                },
                started: setup.started,
                start_step: setup.start_step,
            })?;
            for note in telemetry.note.iter().chain(&telemetry.repaired) {
                monitor.say(note.clone());
            }
            monitor.telemetry = Some(telemetry);
        }
        if l.tensorboard {
            // A new file per invocation; its session start drops what earlier files hold for
            // the steps this one trains (again, on a resume from an earlier checkpoint).
            let mut writer = EventWriter::create(&setup.run_dir.join("tb"))?;
            writer.session_start(setup.start_step as i64 + 1)?;
            writer.text(setup.start_step as i64, "config", &config_text(setup.config, setup.start_step))?;
            monitor.tensorboard = Some(writer);
        }
        Ok(monitor)
    }

    /// A line for the user (stderr; above the progress bar on a TTY; nothing with --quiet).
    pub fn say(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }

    /// An alert: to events.jsonl, the terminal (even with --quiet: it is a warning, not
    /// progress) and summary.json.
    pub fn alert(&mut self, alert: Alert) -> Result<()> {
        self.event("alert", "alert", &alert)?;
        let line = format!("alert: step {}: {}", alert.step, alert.message);
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
        self.alerts.push(alert);
        Ok(())
    }

    /// An event (`{"event": kind, key: value}`) to events.jsonl.
    pub fn event(&self, kind: &str, key: &str, value: &impl serde::Serialize) -> Result<()> {
        let mut line = serde_json::Map::new();
        line.insert("event".into(), kind.into());
        line.insert(key.into(), serde_json::to_value(value).expect("serializable"));
        self.events.append_json(&line)
    }

    /// Step `step` has trained (its evaluation and checkpoint may follow): telemetry samples
    /// from now on count it.
    pub fn trained(&self, step: u64) {
        if let Some(t) = &self.telemetry {
            t.set_step(step);
        }
    }

    /// A step done, with the marks around its optimizer step: its lines in metrics.log and
    /// metrics.jsonl, its alerts and telemetry's, the terminal. On a GPU the optimizer's
    /// update is usually still running: waiting for it would stall the host (which would
    /// otherwise be queueing the next step), so the step is written once its marks have
    /// completed: at the next step, or at the end of the run.
    pub fn step(&mut self, mut record: StepRecord, optimizer: (Mark, Mark)) -> Result<()> {
        let began = Instant::now();
        self.flush()?;
        if optimizer.1.is_complete()? {
            record.optimizer_ms = Some(optimizer.0.elapsed_ms(&optimizer.1)?);
            self.step_record(record)?;
        } else {
            self.pending = Some((record, optimizer));
        }
        self.step_logging_ms += began.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    /// Writes the step waiting for its optimizer's time (waiting for it if need be).
    fn flush(&mut self) -> Result<()> {
        if let Some((mut record, (start, end))) = self.pending.take() {
            record.optimizer_ms = Some(start.elapsed_ms(&end)?);
            self.step_record(record)?;
        }
        Ok(())
    }

    fn step_record(&mut self, record: StepRecord) -> Result<()> {
        let r = &record;
        let val_text = r.val_loss.map_or("-".to_string(), |v| format!("{v:.4}"));
        self.log.append(&format!(
            "{} {:.6} {val_text} {:.6e} {:.4} {:.0} {:.1} {:.3}",
            r.step, r.loss, r.lr, r.grad_norm, r.tokens_per_s, r.step_ms, r.data_wait_ms
        ))?;
        if let Some(file) = &self.jsonl {
            file.append_json(r)?;
        }
        self.tensorboard_step(r);
        if self.enabled {
            let mut raised = self.alerter.check(r);
            if let Some(t) = &self.telemetry {
                t.set_step(r.step);
                raised.extend(t.take_alerts());
                self.telemetry_failure();
            }
            for alert in raised {
                self.alert(alert)?;
            }
        }
        let mfu = r.mfu.map_or("MFU -".to_string(), |m| format!("MFU {:.1}%", 100.0 * m));
        let text = format!("loss {:.4} | val {val_text} | lr {:.2e} | {:.0} tok/s | {mfu}", r.loss, r.lr, r.tokens_per_s);
        match &self.bar {
            Some(bar) => {
                bar.set_message(text.clone());
                bar.set_position(r.step);
                if r.val_loss.is_some() {
                    bar.println(format!("step {}/{} | {text}", r.step, self.max_steps));
                }
            }
            None => {
                if r.val_loss.is_some() || r.step.is_multiple_of(self.log_interval) || r.step == self.start_step + 1 {
                    let done = (r.step - self.start_step) as f64;
                    let left = (self.max_steps - r.step) as f64 * self.started.elapsed().as_secs_f64() / done.max(1.0);
                    self.say(format!("step {}/{} | {text} | eta {}", r.step, self.max_steps, fmt_duration(Duration::from_secs_f64(left))));
                }
            }
        }
        self.records.push(record);
        Ok(())
    }

    /// A checkpoint written after `step`: a line in events.jsonl, after the step's own lines
    /// (on a GPU they may still be waiting for its optimizer's marks: a process killed
    /// before the next step would otherwise never write them).
    pub fn checkpoint(&mut self, step: u64, path: &Path) -> Result<()> {
        self.flush()?;
        self.event("checkpoint", "checkpoint", &serde_json::json!({"step": step, "path": path}))
    }

    /// The step's scalars (every number of its metrics.jsonl record) and the newest telemetry
    /// sample's, to the event file. A failed write stops the TensorBoard files, not the run
    /// (metrics.jsonl has every step), as telemetry does: a warning says so, once.
    fn tensorboard_step(&mut self, r: &StepRecord) {
        let Some(writer) = &mut self.tensorboard else { return };
        let mut values = Vec::with_capacity(32);
        tensorboard::flatten(&serde_json::to_value(r).expect("serializable"), &tensorboard::metrics_group, &["step"], &mut values);
        if let Some(sample) = self.telemetry.as_ref().and_then(Telemetry::take_sample) {
            let parts = serde_json::json!({"gpu": sample.gpu, "host": sample.host});
            tensorboard::flatten(&parts, &|_| "telemetry", &["index"], &mut values);
        }
        if let Err(e) = writer.scalars(r.step as i64, &values) {
            self.tensorboard = None;
            let line = format!("warning: tensorboard stopped: {e}; training goes on (metrics.jsonl has every step)");
            match &self.bar {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
    }

    /// Says once, even with --quiet, that telemetry stopped on a failed write.
    fn telemetry_failure(&self) {
        if let Some(why) = self.telemetry.as_ref().and_then(Telemetry::take_failure) {
            let line = format!("warning: {why}");
            match &self.bar {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
    }

    /// The run ended: stops telemetry (raising what it saw last), flushes the logs, writes
    /// summary.json and report.html; returns the summary (`None` with logs off).
    pub fn finish(mut self) -> Result<Option<Summary>> {
        self.flush()?;
        let mut telemetry_cost = Default::default();
        if let Some(mut t) = self.telemetry.take() {
            let last = t.take_alerts();
            telemetry_cost = t.stop()?;
            self.telemetry = Some(t);
            self.telemetry_failure();
            self.telemetry = None;
            for alert in last {
                self.alert(alert)?;
            }
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.log.flush()?;
        let Some(mut file) = self.jsonl.take() else { return Ok(None) };
        file.flush()?;
        let wall = self.started.elapsed().as_secs_f64();
        let mut summary = logs::summarize(&self.records, self.warmup_steps, wall, self.peak.clone(), std::mem::take(&mut self.alerts), self.device.clone());
        let TelemetryCost { samples, ms } = telemetry_cost;
        summary.logging = LoggingCost {
            step_logging_ms: self.step_logging_ms,
            telemetry_samples: samples,
            telemetry_ms: ms,
            share_of_step_time: (self.step_logging_ms + ms) / (summary.train_seconds * 1e3).max(1e-9),
        };
        let summary_path = self.run_dir.join("summary.json");
        fs::write(&summary_path, serde_json::to_string_pretty(&summary).expect("serializable") + "\n").map_err(io(&summary_path))?;
        // The run's results are safe by now: a report that cannot be written is a warning.
        if let Err(e) = crate::report::write_report(&self.run_dir) {
            self.say(format!("warning: report.html not written: {e} (engine report {} tries again)", self.run_dir.display()));
        }
        Ok(Some(summary))
    }
}

/// The config text of the TensorBoard files: a title line, a blank line, then config.toml
/// indented by four spaces (a Markdown code block, which the text dashboard shows as is).
fn config_text(config: &Config, start_step: u64) -> String {
    let body: Vec<String> = config.to_toml().lines().map(|l| if l.is_empty() { String::new() } else { format!("    {l}") }).collect();
    let from = if start_step == 0 { "a new run".to_string() } else { format!("resumed at step {start_step}") };
    format!("The resolved config (config.toml) of this invocation, {from}:\n\n{}\n", body.join("\n"))
}

/// A run that ends in an error still logs its last step.
impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(fmt_duration(Duration::from_secs(42)), "42s");
        assert_eq!(fmt_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(fmt_duration(Duration::from_secs(3720)), "1h02m");
    }

    fn record(step: u64) -> StepRecord {
        StepRecord {
            step,
            time_s: step as f64,
            loss: 3.0,
            val_loss: None,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens: 32,
            tokens_per_s: 1e4,
            mfu: None,
            step_ms: 3.2,
            data_wait_ms: 0.0,
            forward_ms: Some(1.0),
            backward_ms: Some(2.0),
            optimizer_ms: Some(0.2),
            memory: logs::MemoryRecord::default(),
            micro_batch: 2,
            grad_accum: 1,
            recompute: "none".into(),
            hellaswag: None,
        }
    }

    #[test]
    fn a_failed_tensorboard_write_stops_the_event_file_not_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse("[logs]\ntensorboard = true\ntelemetry_interval_ms = 0\n", "test.toml", &[]).unwrap();
        let mut m = Monitor::start(MonitorSetup {
            config: &config,
            run_dir: dir.path(),
            gpu_pci_bus_id: None,
            start_step: 0,
            max_steps: 3,
            peak: (None, String::new()),
            quiet: true,
            device: ("cpu".into(), "fp32".into()),
            started: Instant::now(),
        })
        .unwrap();
        m.step_record(record(1)).unwrap();
        let path = m.tensorboard.as_ref().map(|w| w.path().to_path_buf()).expect("an event file");
        assert!(path.starts_with(dir.path().join("tb")), "{}", path.display());
        let size = fs::metadata(&path).unwrap().len();
        m.tensorboard = Some(EventWriter::at(Path::new("/dev/full")).unwrap());
        m.step_record(record(2)).unwrap();
        assert!(m.tensorboard.is_none(), "the event file is given up after a failed write");
        m.step_record(record(3)).unwrap();
        m.finish().unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap().lines().count(), 3, "every step in metrics.jsonl");
        assert_eq!(fs::metadata(&path).unwrap().len(), size);
    }
}
