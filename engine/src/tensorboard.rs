//! TensorBoard event files (`logs.tensorboard = true`): `<run_dir>/tb/events.out.tfevents.
//! <secs>.<hostname>.<pid>.<n>`, one per invocation, which TensorBoard (and W&B's
//! TensorBoard sync) reads as one run.
//!
//! The format is TensorFlow's TFRecord framing of `tensorflow.Event` protocol buffers:
//! each record is the data's length (u64, little-endian), the masked CRC32C of those 8
//! bytes, the data, and the masked CRC32C of the data, where a CRC `c` is masked as
//! `((c >> 15) | (c << 17)) + 0xa282ead8`. The file's first record is an Event whose
//! `file_version` is `"brain.Event:2"`; the rest carry a `wall_time`, a `step` and a
//! `Summary` of scalars (`simple_value`, which TensorBoard's scalar dashboard shows) or of
//! one text tensor (a `DT_STRING` tensor with plugin name `"text"`, for the text dashboard).
//!
//! The few messages are encoded here by hand (about 60 lines: varints, length-delimited
//! fields, a float and a double) rather than through a protobuf crate, which would bring a
//! code generator and `.proto` files for five messages. The bytes are checked against the
//! tensorboard Python package's own encoder and record writer (the golden file
//! `fixtures/tensorboard/golden.tfevents`, written by `scripts/check-tensorboard golden`), and
//! `scripts/check-tensorboard` reads a real run's files with tensorboard's reader.
//!
//! Every record is one `write_all` of its whole framed bytes to an unbuffered file: when a
//! step's call returns the record is with the operating system, so a killed process loses
//! nothing written before and leaves at most its last record torn (TensorBoard's reader stops
//! at a torn record and goes on with the next file).
//!
//! A new invocation (a resume) never appends to an earlier file: it starts a new one (named
//! so that it sorts after every file already there, the order TensorBoard reads them in),
//! whose second record is a `SessionLog` `START` at the first step it trains. TensorBoard
//! drops the earlier files' values at that step and after (steps a killed run trained past
//! the checkpoint the resume started from, trained again now), as it does for TensorFlow's
//! restarts; a rollback within an invocation (`train.on_divergence = "rollback"`) writes one
//! the same way.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::io;
use crate::Result;

/// The `file_version` of the first record (TensorBoard's current event format).
pub const FILE_VERSION: &str = "brain.Event:2";

/// The prefix of every event file's name (TensorBoard reads only files with it).
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// CRC32C (Castagnoli) of `data`, masked as TFRecord stores it.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord: length, masked CRC of the length, data, masked CRC of the data.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Protocol-buffer encoding of the few fields used (wire types 0, 1, 2 and 5).
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, ((field as u64) << 3) | wire as u64);
    }

    pub fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 0);
        varint(out, v);
    }

    pub fn double(out: &mut Vec<u8>, field: u32, v: f64) {
        key(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn float(out: &mut Vec<u8>, field: u32, v: f32) {
        key(out, field, 5);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
        key(out, field, 2);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// What one Event carries besides its wall time and step.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload<'a> {
    /// `file_version` (the first record of a file).
    FileVersion,
    /// `session_log { status: START }`: the values of this step and later ones in earlier
    /// files are out of date.
    SessionStart,
    /// A `Summary` of scalars, each `(tag, simple_value)`.
    Scalars(&'a [(String, f32)]),
    /// A `Summary` of one text value (`tag`, the text), for the text plugin.
    Text(&'a str, &'a str),
}

/// The encoded `tensorflow.Event` (fields in number order, proto3's zero step left out, as
/// protobuf's own encoders write it).
pub fn encode_event(wall_time: f64, step: i64, payload: &Payload<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    if wall_time != 0.0 {
        pb::double(&mut out, 1, wall_time);
    }
    if step != 0 {
        pb::uint(&mut out, 2, step as u64);
    }
    match payload {
        Payload::FileVersion => pb::bytes(&mut out, 3, FILE_VERSION.as_bytes()),
        Payload::SessionStart => {
            // SessionLog.status = START (1).
            pb::bytes(&mut out, 7, &[0x08, 0x01]);
        }
        Payload::Scalars(values) => {
            let mut summary = Vec::with_capacity(values.len() * 32);
            let mut value = Vec::with_capacity(64);
            for (tag, v) in values.iter() {
                value.clear();
                pb::bytes(&mut value, 1, tag.as_bytes());
                pb::float(&mut value, 2, *v);
                pb::bytes(&mut summary, 1, &value);
            }
            pb::bytes(&mut out, 5, &summary);
        }
        Payload::Text(tag, text) => {
            // TensorProto { dtype: DT_STRING (7), tensor_shape: {} (a scalar), string_val }.
            let mut tensor = Vec::with_capacity(text.len() + 8);
            pb::uint(&mut tensor, 1, 7);
            pb::bytes(&mut tensor, 2, &[]);
            pb::bytes(&mut tensor, 8, text.as_bytes());
            // SummaryMetadata { plugin_data: { plugin_name: "text" } }.
            let mut plugin = Vec::new();
            pb::bytes(&mut plugin, 1, b"text");
            let mut metadata = Vec::new();
            pb::bytes(&mut metadata, 1, &plugin);
            let mut value = Vec::with_capacity(tensor.len() + 32);
            pb::bytes(&mut value, 1, tag.as_bytes());
            pb::bytes(&mut value, 8, &tensor);
            pb::bytes(&mut value, 9, &metadata);
            let mut summary = Vec::with_capacity(value.len() + 4);
            pb::bytes(&mut summary, 1, &value);
            pb::bytes(&mut out, 5, &summary);
        }
    }
    out
}

/// Seconds since the Unix epoch, as an Event's `wall_time`.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's host name (`localhost` if it has none that is printable); dots are kept,
/// as TensorFlow's writer keeps them.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if ok && !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && c != '/') {
        name
    } else {
        "localhost".into()
    }
}

/// The `<secs>` of the event files already in `dir` (those named as [`EventWriter`] names
/// them); empty when there are none or `dir` does not exist.
fn existing_secs(dir: &Path) -> Result<Vec<u64>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut secs = Vec::new();
    for entry in entries {
        let name = entry.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(s) = name.strip_prefix(FILE_PREFIX).and_then(|rest| rest.split('.').next()).and_then(|s| s.parse().ok()) {
            secs.push(s);
        }
    }
    Ok(secs)
}

/// An event file being written.
#[derive(Debug)]
pub struct EventWriter {
    file: fs::File,
    path: PathBuf,
    /// The step of the last summary written; a step at or before it starts a new session.
    last_step: Option<i64>,
}

impl EventWriter {
    /// Creates `dir` if need be and a new event file in it, named
    /// `events.out.tfevents.<secs>.<hostname>.<pid>.<n>`: `<secs>` is now in seconds (10
    /// digits), or one more than the newest file already there if that is not earlier, so
    /// that the files sort in the order they were written; `<n>` is the first number from 0
    /// that names no existing file. Writes the `file_version` record.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let now_secs = now() as u64;
        let secs = existing_secs(dir)?.into_iter().max().map_or(now_secs, |newest| now_secs.max(newest + 1));
        let (host, pid) = (hostname(), std::process::id());
        let mut n = 0u32;
        let (file, path) = loop {
            let path = dir.join(format!("{FILE_PREFIX}{secs:010}.{host}.{pid}.{n}"));
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (file, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(io(&path)(e)),
            }
        };
        let mut writer = EventWriter { file, path, last_step: None };
        writer.write(now(), 0, &Payload::FileVersion)?;
        Ok(writer)
    }

    /// An event file at `path` (created or truncated) without its `file_version` record:
    /// for tests, e.g. of a write that fails.
    pub fn at(path: &Path) -> Result<EventWriter> {
        let file = fs::OpenOptions::new().write(true).create(true).truncate(true).open(path).map_err(io(path))?;
        Ok(EventWriter { file, path: path.to_path_buf(), last_step: None })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one Event, framed, with one `write_all`; an error names the file.
    pub fn write(&mut self, wall_time: f64, step: i64, payload: &Payload<'_>) -> Result<()> {
        let record = frame(&encode_event(wall_time, step, payload));
        self.file.write_all(&record).map_err(io(&self.path))
    }

    /// A `SessionLog` `START` at `step`: TensorBoard drops the values earlier files hold for
    /// `step` and after.
    pub fn session_start(&mut self, step: i64) -> Result<()> {
        self.write(now(), step, &Payload::SessionStart)?;
        self.last_step = Some(step - 1);
        Ok(())
    }

    /// Scalars at `step`. A step at or before the last one written (a rollback) first writes
    /// a session start there, so the values it replaces are dropped.
    pub fn scalars(&mut self, step: i64, values: &[(String, f32)]) -> Result<()> {
        if self.last_step.is_some_and(|last| step <= last) {
            self.session_start(step)?;
        }
        self.write(now(), step, &Payload::Scalars(values))?;
        self.last_step = Some(step);
        Ok(())
    }

    /// A text value (`tag`) at `step`, for TensorBoard's text dashboard (which renders it as
    /// Markdown).
    pub fn text(&mut self, step: i64, tag: &str, text: &str) -> Result<()> {
        self.write(now(), step, &Payload::Text(tag, text))
    }
}

/// The scalars of a JSON record (a metrics.jsonl line or a telemetry sample's part), as
/// `(tag, value)`: every number, a nested object's as `<outer>/<inner>`, each under
/// `group(key)` (`<group>/<key>`); `null`s, strings and the keys in `skip` (at either level) are left out.
pub fn flatten(value: &serde_json::Value, group: &dyn Fn(&str) -> &'static str, skip: &[&str], out: &mut Vec<(String, f32)>) {
    let serde_json::Value::Object(map) = value else { return };
    for (key, v) in map {
        if skip.contains(&key.as_str()) {
            continue;
        }
        match v {
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.push((format!("{}/{key}", group(key)), x as f32));
                }
            }
            serde_json::Value::Object(inner) => {
                for (k, v) in inner.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
                    if let Some(x) = v.as_f64() {
                        out.push((format!("{key}/{k}"), x as f32));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The group (the part before the `/` TensorBoard's dashboards group by) of a metrics.jsonl
/// field: `train` (loss, val_loss, lr, grad_norm), `time` (the step's wall time and its
/// parts, milliseconds; `time_s`), `perf` (tokens_per_s, mfu, tokens), `plan` (micro_batch,
/// grad_accum); the memory record's fields are `memory/<field>` (bytes).
pub fn metrics_group(key: &str) -> &'static str {
    match key {
        "loss" | "val_loss" | "lr" | "grad_norm" => "train",
        "tokens_per_s" | "mfu" | "tokens" => "perf",
        "micro_batch" | "grad_accum" => "plan",
        k if k.ends_with("_ms") || k == "time_s" => "time",
        _ => "metrics",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_rfc_3720() {
        // RFC 3720, B.4: 32 bytes of zeros, of ones, incrementing and decrementing.
        let inc: Vec<u8> = (0..32).collect();
        let dec: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c::crc32c(&[0; 32]), 0x8a91_36aa);
        assert_eq!(crc32c::crc32c(&[0xff; 32]), 0x62a8_ab43);
        assert_eq!(crc32c::crc32c(&inc), 0x46dd_794e);
        assert_eq!(crc32c::crc32c(&dec), 0x113f_db5c);
        // The mask, by its definition.
        let c = crc32c::crc32c(b"abc");
        assert_eq!(masked_crc32c(b"abc"), ((c >> 15) | (c << 17)).wrapping_add(0xa282ead8));
    }

    #[test]
    fn varints_and_framing() {
        let mut out = Vec::new();
        pb::varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        let record = frame(b"hello");
        assert_eq!(record.len(), 8 + 4 + 5 + 4);
        assert_eq!(&record[..8], &5u64.to_le_bytes());
        assert_eq!(&record[8..12], &masked_crc32c(&5u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&record[12..17], b"hello");
        assert_eq!(&record[17..], &masked_crc32c(b"hello").to_le_bytes());
        // A negative step is a 10-byte varint (int64 two's complement), as protobuf writes it.
        assert_eq!(encode_event(0.0, -1, &Payload::SessionStart)[..11], [0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    }

    /// The events of `fixtures/tensorboard/golden.tfevents`, which `scripts/check-tensorboard
    /// golden` writes with the tensorboard Python package's protobuf classes, its text plugin
    /// (`text_pb`) and its `RecordWriter` (the same list is in the script).
    fn golden_events() -> Vec<Vec<u8>> {
        let scalars = vec![
            ("train/loss".to_string(), 5.5451774f32),
            ("train/lr".to_string(), 1e-3),
            ("memory/peak".to_string(), 123456789.0),
            ("time/step_ms".to_string(), -0.0),
            ("perf/mfu".to_string(), f32::INFINITY),
            ("train/grad_norm".to_string(), f32::NAN),
        ];
        let text = "# config\n\n    [train]\n    lr = 0.001\n    name = \"h\u{e9}\"\n";
        vec![
            frame(&encode_event(1700000000.25, 0, &Payload::FileVersion)),
            frame(&encode_event(1700000001.5, 5, &Payload::SessionStart)),
            frame(&encode_event(1700000002.75, 0, &Payload::Text("config", text))),
            frame(&encode_event(1700000003.0, 7, &Payload::Scalars(&scalars))),
            frame(&encode_event(1700000004.125, 300, &Payload::Scalars(&scalars[..1]))),
        ]
    }

    #[test]
    fn events_are_byte_equal_to_tensorboards_own_writer() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tensorboard/golden.tfevents");
        let golden = fs::read(path).unwrap();
        let ours: Vec<u8> = golden_events().concat();
        assert_eq!(ours.len(), golden.len(), "lengths differ");
        // The first differing record, for the failure message.
        let mut at = 0;
        for (i, record) in golden_events().iter().enumerate() {
            assert_eq!(record[..], golden[at..at + record.len()], "record {i} differs");
            at += record.len();
        }
    }

    #[test]
    fn files_sort_in_writing_order_and_a_failed_write_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let tb = dir.path().join("tb");
        // A file "from the future" (a clock set back, or two invocations in one second).
        fs::create_dir_all(&tb).unwrap();
        let future = now() as u64 + 1000;
        fs::write(tb.join(format!("{FILE_PREFIX}{future:010}.h.1.0")), b"").unwrap();
        let a = EventWriter::create(&tb).unwrap();
        let b = EventWriter::create(&tb).unwrap();
        let name = |w: &EventWriter| w.path().file_name().unwrap().to_string_lossy().into_owned();
        let (na, nb) = (name(&a), name(&b));
        assert!(na.starts_with(&format!("{FILE_PREFIX}{}.{}.{}.", future + 1, hostname(), std::process::id())), "{na}");
        assert!(nb.starts_with(&format!("{FILE_PREFIX}{}.", future + 2)), "{nb}");
        assert!(na < nb);
        // The first record is the file version, written at once.
        let bytes = fs::read(a.path()).unwrap();
        let data = &bytes[12..bytes.len() - 4];
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize, data.len());
        assert!(data.ends_with(b"brain.Event:2"));
        let mut full = EventWriter::at(Path::new("/dev/full")).unwrap();
        let err = full.scalars(1, &[("train/loss".into(), 1.0)]).unwrap_err().to_string();
        assert!(err.starts_with("/dev/full: ") && err.contains("No space left on device"), "{err}");
    }

    #[test]
    fn a_step_going_back_starts_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        let mut w = EventWriter::at(&path).unwrap();
        let v = [("train/loss".to_string(), 2.0f32)];
        for step in [1, 2, 3, 2, 3] {
            w.scalars(step, &v).unwrap();
        }
        let expected: Vec<u8> = [1, 2, 3]
            .iter()
            .map(|&s| (s, Payload::Scalars(&v)))
            .chain([(2, Payload::SessionStart), (2, Payload::Scalars(&v)), (3, Payload::Scalars(&v))])
            .map(|(s, p)| encode_event(0.0, s, &p))
            .collect::<Vec<_>>()
            .concat();
        // Compare without the wall times (9 bytes at the start of each event).
        let bytes = fs::read(&path).unwrap();
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            events.extend_from_slice(&bytes[at + 12 + 9..at + 12 + len]);
            at += 12 + len + 4;
        }
        assert_eq!(events, expected);
    }

    #[test]
    fn records_flatten_into_grouped_tags() {
        let record = serde_json::json!({"step": 3, "loss": 2.5, "val_loss": null, "step_ms": 1.5, "recompute": "none",
            "memory": {"in_use": 10, "budget": null}, "tokens_per_s": 1e6, "odd": 1});
        let mut out = Vec::new();
        flatten(&record, &metrics_group, &["step"], &mut out);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let tags: Vec<(&str, f32)> = out.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        assert_eq!(tags, [("memory/in_use", 10.0), ("metrics/odd", 1.0), ("perf/tokens_per_s", 1e6), ("time/step_ms", 1.5), ("train/loss", 2.5)]);
    }
}
