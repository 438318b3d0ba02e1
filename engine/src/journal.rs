//! The run directory's append-only line files (metrics.log, metrics.jsonl, events.jsonl,
//! telemetry.jsonl, copy.log) and how they survive a crash.
//!
//! - Every record is written whole: the line and its newline are one buffer handed to one
//!   `write_all` ([`LineFile::append`]), so a killed process leaves at most its last line
//!   torn (cut short, without its newline), never a record split around another.
//! - Opening a file for a run ([`open_for_run`]) cuts such a torn last line away, so the
//!   next record does not glue onto it; and on a resume it cuts the records of the steps
//!   after the checkpoint the run resumes from: the killed invocation trained them, the
//!   resumed one trains them again, and the file keeps one record per step.
//! - A file that is not a regular file (a symlink to `/dev/full`, a pipe) is opened as it
//!   is, without being read.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::io;
use crate::Result;

/// A line file opened for appending.
#[derive(Debug)]
pub struct LineFile {
    file: fs::File,
    path: PathBuf,
}

impl LineFile {
    /// Opens (creating it if need be) `path` for appending, as it is.
    pub fn open(path: &Path) -> Result<LineFile> {
        let file = fs::OpenOptions::new().create(true).append(true).open(path).map_err(io(path))?;
        Ok(LineFile { file, path: path.to_path_buf() })
    }

    /// Appends `line` and a newline with one `write_all` of the whole buffer (`line` must
    /// not hold a newline itself). A failed write (a full disk, the file-size limit) is an
    /// error naming the file.
    pub fn append(&self, line: &str) -> Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        (&self.file).write_all(&buf).map_err(io(&self.path))
    }

    /// Appends `value` as one line of JSON.
    pub fn append_json(&self, value: &impl serde::Serialize) -> Result<()> {
        self.append(&serde_json::to_string(value).expect("serializable"))
    }

    /// Flushes the file (records are not buffered: a no-op but for its error).
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(io(&self.path))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The step of a line of `metrics.jsonl` (`{"step": N, ...}`); `None` when the line has none.
pub fn jsonl_step(line: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Step {
        step: u64,
    }
    serde_json::from_str::<Step>(line).ok().map(|s| s.step)
}

/// The step of a line of `events.jsonl` (`{"event": kind, key: {"step": N, ...}}`).
pub fn event_step(line: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.as_object()?.iter().filter(|(key, _)| *key != "event").find_map(|(_, body)| body.get("step")?.as_u64())
}

/// The step of a line of `metrics.log` or `copy.log` (the first column); `None` for the
/// header (`# step ...`).
pub fn column_step(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

/// What [`repair`] cut from a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Bytes of a torn last line (no newline) removed; 0: none.
    pub torn_bytes: u64,
    /// Records of steps after the resumed step removed.
    pub dropped: u64,
    /// The first and last step of those records.
    pub dropped_steps: Option<(u64, u64)>,
}

impl Repair {
    /// One line saying what was cut from `path` (after `resumed` steps, on a resume);
    /// `None` when nothing was.
    pub fn note(&self, path: &Path, resumed: Option<u64>) -> Option<String> {
        let mut what = Vec::new();
        if self.torn_bytes > 0 {
            what.push(format!("a torn last line ({} bytes without a newline: the process writing it was killed)", self.torn_bytes));
        }
        if let (Some((first, last)), Some(step)) = (self.dropped_steps, resumed) {
            let steps = if first == last { format!("step {first}") } else { format!("steps {first} to {last}") };
            what.push(format!(
                "{} record{} of {steps}, trained after the checkpoint of step {step} that this run resumes from (they are trained again)",
                self.dropped,
                if self.dropped == 1 { "" } else { "s" }
            ));
        }
        (!what.is_empty()).then(|| format!("{}: removed {}", path.display(), what.join(" and ")))
    }
}

/// How much of a file's end [`repair`] reads at first; doubled until it holds what is cut.
const TAIL: u64 = 64 * 1024;

/// Cuts a torn last line from `path` and, with `rewind_to = Some(step)`, the records at its
/// end whose step (`step_of`) is after `step`: the scan goes back from the end and stops at
/// the first line with a step at or before it, or with none (a header, a line it cannot
/// read). A missing file, or one that is not a regular file, is left alone.
pub fn repair(path: &Path, rewind_to: Option<u64>, step_of: fn(&str) -> Option<u64>) -> Result<Repair> {
    let mut repair = Repair::default();
    match fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(repair),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(repair),
        Err(e) => return Err(io(path)(e)),
    }
    let mut file = fs::OpenOptions::new().read(true).write(true).open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let mut window = TAIL;
    let cut = loop {
        let start = len.saturating_sub(window);
        let mut tail = Vec::with_capacity((len - start) as usize);
        file.seek(SeekFrom::Start(start)).map_err(io(path))?;
        (&mut file).take(len - start).read_to_end(&mut tail).map_err(io(path))?;
        // Some(offset in `tail`) once the cut is decided; None: read further back.
        match cut_point(&tail, start == 0, rewind_to, step_of, &mut repair) {
            Some(cut) => break start + cut as u64,
            None => {
                repair = Repair::default();
                window *= 2;
            }
        }
    };
    if cut < len {
        file.set_len(cut).map_err(io(path))?;
    }
    Ok(repair)
}

/// Where to cut `tail` (the file's last bytes; `whole`: all of it), filling in `repair`;
/// `None` when the answer lies before `tail`.
fn cut_point(tail: &[u8], whole: bool, rewind_to: Option<u64>, step_of: fn(&str) -> Option<u64>, repair: &mut Repair) -> Option<usize> {
    // The start of the line that ends at `end` (exclusive of its newline), if `tail` holds it.
    let line_start = |end: usize| match tail[..end].iter().rposition(|&b| b == b'\n') {
        Some(i) => Some(i + 1),
        None if whole => Some(0),
        None => None,
    };
    let mut end = tail.len();
    if end > 0 && tail[end - 1] != b'\n' {
        let start = line_start(end)?;
        repair.torn_bytes = (end - start) as u64;
        end = start;
    }
    let Some(step) = rewind_to else { return Some(end) };
    // `end` is now 0 or just after a newline: walk back over whole lines.
    while end > 0 {
        let start = line_start(end - 1)?;
        let line = String::from_utf8_lossy(&tail[start..end - 1]);
        if !line.trim().is_empty() {
            match step_of(&line) {
                Some(s) if s > step => {
                    repair.dropped += 1;
                    let (_, last) = repair.dropped_steps.unwrap_or((s, s));
                    repair.dropped_steps = Some((s, last));
                }
                _ => break,
            }
        }
        end = start;
    }
    Some(end)
}

/// Repairs `path` ([`repair`]; rewinding to `start_step` when it is above 0, a resume) and
/// opens it for appending; returns the file and the note saying what was cut, if anything.
pub fn open_for_run(path: &Path, start_step: u64, step_of: fn(&str) -> Option<u64>) -> Result<(LineFile, Option<String>)> {
    let resumed = (start_step > 0).then_some(start_step);
    let note = repair(path, resumed, step_of)?.note(path, resumed);
    Ok((LineFile::open(path)?, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(steps: &[u64]) -> String {
        steps.iter().map(|s| format!("{{\"step\":{s},\"loss\":1.5}}\n")).collect()
    }

    fn repaired(text: &str, rewind: Option<u64>) -> (String, Repair) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        fs::write(&path, text).unwrap();
        let r = repair(&path, rewind, jsonl_step).unwrap();
        (fs::read_to_string(&path).unwrap(), r)
    }

    #[test]
    fn a_torn_last_line_is_cut() {
        let good = metrics(&[1, 2, 3]);
        let (text, r) = repaired(&format!("{good}{{\"step\":4,\"lo"), None);
        assert_eq!((text.as_str(), r.torn_bytes, r.dropped), (good.as_str(), 13, 0));
        // Nothing to do: untouched; a file that is one torn line becomes empty.
        assert_eq!(repaired(&good, None), (good.clone(), Repair::default()));
        assert_eq!(repaired("{\"st", None).0, "");
        assert_eq!(repaired("", Some(3)), (String::new(), Repair::default()));
    }

    #[test]
    fn a_resume_cuts_the_steps_after_its_checkpoint() {
        let (text, r) = repaired(&format!("{}{{\"step\":7", metrics(&[1, 2, 3, 4, 5, 6])), Some(4));
        assert_eq!(text, metrics(&[1, 2, 3, 4]));
        assert_eq!(r, Repair { torn_bytes: 9, dropped: 2, dropped_steps: Some((5, 6)) });
        let note = r.note(Path::new("run/metrics.jsonl"), Some(4)).unwrap();
        assert_eq!(
            note,
            "run/metrics.jsonl: removed a torn last line (9 bytes without a newline: the process writing it was killed) and \
             2 records of steps 5 to 6, trained after the checkpoint of step 4 that this run resumes from (they are trained again)"
        );
        // Only the last training's tail: an earlier training (a restart at step 1) is kept.
        let restarted = metrics(&[1, 2, 3, 4, 5, 6, 1, 2, 3]);
        assert_eq!(repaired(&restarted, Some(2)).0, metrics(&[1, 2, 3, 4, 5, 6, 1, 2]));
        // The scan stops at a line without a step (a header, a line it cannot read).
        assert_eq!(repaired(&format!("{}junk\n{}", metrics(&[1]), metrics(&[5, 6])), Some(2)).0, format!("{}junk\n", metrics(&[1])));
        // Nothing after the step: untouched.
        assert_eq!(repaired(&metrics(&[1, 2]), Some(2)).1, Repair::default());
    }

    #[test]
    fn the_scan_reads_back_past_its_first_window() {
        // Records longer than the first window: the cut lies before it.
        let pad = "x".repeat(TAIL as usize);
        let line = |s: u64| format!("{{\"step\":{s},\"pad\":\"{pad}\"}}\n");
        let text: String = (1..=4).map(line).collect();
        let (cut, r) = repaired(&format!("{text}{{\"step\":5,\"pad\":\"{pad}"), Some(2));
        assert_eq!(cut, format!("{}{}", line(1), line(2)));
        assert_eq!((r.dropped, r.dropped_steps, r.torn_bytes), (2, Some((3, 4)), TAIL + 17));
    }

    #[test]
    fn other_formats_and_files() {
        assert_eq!(event_step(r#"{"event":"checkpoint","checkpoint":{"step":6,"path":"x"}}"#), Some(6));
        assert_eq!(event_step(r#"{"event":"alert","alert":{"kind":"data_stall","step":3}}"#), Some(3));
        assert_eq!(event_step(r#"{"event":"thermal"}"#), None);
        assert_eq!(column_step("12 3.5 - 1e-3"), Some(12));
        assert_eq!(column_step("# step loss"), None);
        // Not a regular file: never read (reading /dev/full would not end).
        assert_eq!(repair(Path::new("/dev/full"), Some(1), jsonl_step).unwrap(), Repair::default());
        assert_eq!(repair(Path::new("/nonexistent/metrics.jsonl"), Some(1), jsonl_step).unwrap(), Repair::default());
    }

    #[test]
    fn a_line_is_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let file = LineFile::open(&path).unwrap();
        file.append("a").unwrap();
        file.append_json(&serde_json::json!({"step": 2})).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a\n{\"step\":2}\n");
        let full = LineFile::open(Path::new("/dev/full")).unwrap();
        let err = full.append("x").unwrap_err().to_string();
        assert!(err.starts_with("/dev/full: ") && err.contains("No space left on device"), "{err}");
    }
}
