//! What makes a checkpoint trustworthy after a crash or a copy: every file fsynced before it
//! is renamed into place ([`write_synced`], [`sync_dir`]), a `manifest.json` listing each
//! file's size and SHA-256 with the checkpoint's step and run id ([`Manifest`]), checked
//! when the checkpoint is read ([`verify`]), and the run directory's id (`<run_dir>/run_id`,
//! [`ensure_run_id`]) that tells a checkpoint of this run from one copied in from another.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::io;
use crate::{Error, Result};

/// The manifest's file name in a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";
/// The `manifest.json` format this engine writes and reads; any other is refused.
pub const MANIFEST_FORMAT: u32 = 1;
/// The run directory's id file.
pub const RUN_ID: &str = "run_id";

static FSYNCS: AtomicU64 = AtomicU64::new(0);

/// How many fsyncs (of files and of directories) checkpoint writing has asked the operating
/// system for in this process: a cheap counter, so tests can see that they happen.
pub fn fsync_count() -> u64 {
    FSYNCS.load(Ordering::Relaxed)
}

/// Flushes `file` (at `path`, named in the error) to the disk.
fn sync_file(file: &File, path: &Path) -> Result<()> {
    FSYNCS.fetch_add(1, Ordering::Relaxed);
    file.sync_all().map_err(io(path))
}

/// Flushes directory `dir`'s entries (names created, renamed or removed in it) to the disk.
/// A no-op where directories cannot be opened as files (not Unix).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let handle = File::open(dir).map_err(io(dir))?;
        sync_file(&handle, dir)?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to a new file `path` and fsyncs it before returning.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    sync_file(&file, path)
}

/// A file's SHA-256 as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A checkpoint's `manifest.json`: written last, after every other file of the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format, [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The checkpoint's step (as in its `state.json`).
    pub step: u64,
    /// The id of the run directory that wrote it (as in its `state.json`); `None` when the
    /// checkpoint was saved by a library caller with no run id.
    pub run_id: Option<String>,
    /// Every other file of the checkpoint, by name.
    pub files: BTreeMap<String, FileEntry>,
}

/// One file of a [`Manifest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, 64 lowercase hex digits.
    pub sha256: String,
}

impl Manifest {
    /// An empty manifest for `step` of run `run_id`.
    pub fn new(step: u64, run_id: Option<String>) -> Self {
        Manifest { format: MANIFEST_FORMAT, step, run_id, files: BTreeMap::new() }
    }

    /// Writes `bytes` as `dir/name` (fsynced) and lists it, hashing the bytes in memory.
    pub fn write_file(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
        write_synced(&dir.join(name), bytes)?;
        self.files.insert(name.to_string(), FileEntry { bytes: bytes.len() as u64, sha256: sha256_hex(bytes) });
        Ok(())
    }

    /// Writes the manifest itself as `dir/manifest.json` (fsynced).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).expect("manifest serializes") + "\n";
        write_synced(&dir.join(MANIFEST), json.as_bytes())
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The manifest is there and every file it lists matches it.
    Verified(Manifest),
    /// No `manifest.json` (a checkpoint written before manifests were): nothing was checked.
    Unverified,
}

/// The note for a checkpoint read without a manifest.
pub fn unverified_note(dir: &Path) -> String {
    format!("checkpoint {}: no manifest; not verified (written by an older version)", dir.display())
}

fn ckpt_err(dir: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint { path: dir.to_path_buf(), msg: msg.into() }
}

/// The step and run id a `state.json` records.
#[derive(Deserialize)]
struct StateIds {
    step: u64,
    #[serde(default)]
    run_id: Option<String>,
}

/// Checks checkpoint `dir` against its `manifest.json`: each listed file is there with its
/// size and SHA-256 (files it does not list are ignored), and `state.json` records the
/// manifest's step and run id. With `run_id` (the run directory's id), the manifest's must be
/// that one too. A mismatch is one error naming the file and what differs. A checkpoint with
/// no manifest is [`Verification::Unverified`].
pub fn verify(dir: &Path, run_id: Option<&str>) -> Result<Verification> {
    let path = dir.join(MANIFEST);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verification::Unverified),
        Err(e) => return Err(ckpt_err(dir, format!("cannot read {MANIFEST}: {e}"))),
    };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ckpt_err(dir, format!("{MANIFEST} is malformed: {e}")))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(ckpt_err(dir, format!("{MANIFEST} has format {}, expected {MANIFEST_FORMAT}", manifest.format)));
    }
    for (name, entry) in &manifest.files {
        check_file(dir, name, entry)?;
    }
    let state_path = dir.join("state.json");
    let state_text = fs::read_to_string(&state_path).map_err(|e| ckpt_err(dir, format!("cannot read state.json: {e}")))?;
    let ids: StateIds = serde_json::from_str(&state_text).map_err(|e| ckpt_err(dir, format!("state.json is malformed: {e}")))?;
    if ids.step != manifest.step {
        return Err(ckpt_err(
            dir,
            format!("state.json records step {}, {MANIFEST} step {}: they come from different checkpoints", ids.step, manifest.step),
        ));
    }
    if ids.run_id != manifest.run_id {
        return Err(ckpt_err(
            dir,
            format!(
                "state.json records run_id {}, {MANIFEST} {}: they come from different runs",
                show(ids.run_id.as_deref()),
                show(manifest.run_id.as_deref())
            ),
        ));
    }
    if let (Some(ours), Some(theirs)) = (run_id, manifest.run_id.as_deref()) {
        if ours != theirs {
            return Err(ckpt_err(
                dir,
                format!(
                    "comes from another run: its {MANIFEST} records run_id \"{theirs}\", this run directory's {RUN_ID} is \"{ours}\" \
                     (a checkpoint continues only the run that wrote it; copy a whole run directory to move a run)"
                ),
            ));
        }
    }
    Ok(Verification::Verified(manifest))
}

fn show(id: Option<&str>) -> String {
    id.map_or("none".into(), |id| format!("\"{id}\""))
}

/// One listed file against its entry: present, of its size, of its hash (read once, in
/// blocks).
fn check_file(dir: &Path, name: &str, entry: &FileEntry) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
        return Err(ckpt_err(dir, format!("{MANIFEST} lists `{name}`, which is not a file name of a checkpoint")));
    }
    let path = dir.join(name);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ckpt_err(dir, format!("{name} is missing ({MANIFEST} lists it, {} bytes)", entry.bytes)));
        }
        Err(e) => return Err(ckpt_err(dir, format!("cannot read {name}: {e}"))),
    };
    let size = file.metadata().map_err(|e| ckpt_err(dir, format!("cannot read {name}: {e}")))?.len();
    if size != entry.bytes {
        return Err(ckpt_err(dir, format!("{name} does not match {MANIFEST}: it is {size} bytes, {MANIFEST} records {}", entry.bytes)));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| ckpt_err(dir, format!("cannot read {name}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let sha = hex(&hasher.finalize());
    if sha != entry.sha256 {
        return Err(ckpt_err(
            dir,
            format!("{name} does not match {MANIFEST}: its sha256 is {sha}, {MANIFEST} records {} (changed or corrupted since it was written)", entry.sha256),
        ));
    }
    Ok(())
}

/// The run directory's id (`<run_dir>/run_id`), if it has one.
pub fn read_run_id(run_dir: &Path) -> Result<Option<String>> {
    let path = run_dir.join(RUN_ID);
    match fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { path, source: e }),
    }
}

/// The run directory's id, created (durably) when it has none: `adopt` (the id of the
/// checkpoint being resumed, from a run directory that lost its `run_id` file) or a new
/// random one. Its checkpoints record it; resume refuses a checkpoint of another id.
pub fn ensure_run_id(run_dir: &Path, adopt: Option<&str>) -> Result<String> {
    if let Some(id) = read_run_id(run_dir)? {
        return Ok(id);
    }
    let id = adopt.map_or_else(new_run_id, str::to_string);
    fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let tmp = run_dir.join(".run_id.tmp");
    write_synced(&tmp, id.as_bytes())?;
    let path = run_dir.join(RUN_ID);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(run_dir)?;
    Ok(id)
}

/// 32 hex digits, unique in practice: the process's randomly keyed hasher over the time and
/// the process id (no global random generator is touched: training's are all seeded).
fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(salt);
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}
