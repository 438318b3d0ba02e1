//! The on-disk cubin cache: compiling every kernel file costs seconds, loading a cached
//! cubin costs microseconds, and a machine with only the NVIDIA driver (no NVRTC) runs from
//! it alone.
//!
//! Directory: `$ENGINE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/engine/kernels`, else
//! `~/.cache/engine/kernels`. One file per (file stem, arch, hash of the source, arch and
//! options), named `<stem>-<arch>-<hash>.nvrtc<maj>.<min>.cubin`: the NVRTC version that made
//! it is recorded in the name but is not part of the key, so looking an entry up needs no
//! NVRTC, and an entry made by any NVRTC is used if the driver loads it (cuda/mod.rs tries
//! the entries newest NVRTC first and compiles only when none loads). `engine kernels build`
//! fills a directory with every embedded kernel for the architectures asked for, to copy to
//! a driver-only machine. A registered module (`cuda::register_module`) is cached the same way,
//! under its module name. Files are written to a temporary name and renamed, so a reader
//! never sees a partial cubin, and two processes compiling the same kernel at once both end
//! with a whole file. A cache that cannot be read or written at run time is skipped
//! silently: it only ever saves time (`build_into` reports its errors).

use std::path::{Path, PathBuf};

use super::nvrtc::{self, COMPILE_OPTIONS};
use crate::{Error, Result};

/// Bumped when the key or the file layout changes.
const FORMAT: u32 = 2;

pub fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("ENGINE_KERNEL_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("engine/kernels")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/engine/kernels")))
}

/// A cached cubin: its file and the NVRTC version that compiled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub nvrtc: (i32, i32),
}

/// The cached cubins of `file` for `arch` in the cache directory, newest NVRTC first. Needs
/// no NVRTC.
pub fn lookup(file: &str, source: &str, arch: &str) -> Vec<Entry> {
    cache_dir().map(|dir| lookup_in(&dir, file, source, arch)).unwrap_or_default()
}

fn lookup_in(dir: &Path, file: &str, source: &str, arch: &str) -> Vec<Entry> {
    let prefix = format!("{}.nvrtc", key(file, source, arch));
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<Entry> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix(&prefix)?.strip_suffix(".cubin")?;
            let (major, minor) = version.split_once('.')?;
            Some(Entry { path: e.path(), nvrtc: (major.parse().ok()?, minor.parse().ok()?) })
        })
        .collect();
    found.sort_by_key(|e| std::cmp::Reverse(e.nvrtc));
    found
}

/// Compiles `file` for `arch` with NVRTC and stores it in the cache directory (when there
/// is one). An absent NVRTC is `Error::Nvrtc` with its reason (what to install).
pub fn compile(file: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    compile_in(cache_dir().as_deref(), file, source, arch)
}

fn compile_in(dir: Option<&Path>, file: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    let version = nvrtc::nvrtc()?.version;
    let cubin = nvrtc::compile_cubin(file, source, arch)?;
    if let Some(dir) = dir {
        let _ = write_atomic(&dir.join(entry_name(file, source, arch, version)), &cubin);
    }
    Ok(cubin)
}

/// Compiles every embedded kernel file, then every module registered so far
/// (`cuda::register_module`), for each of `archs` into `dir` (created if needed), replacing
/// entries of the same key and NVRTC version; returns the files written, in order. Unlike
/// the run-time cache, an unwritable directory is an error.
pub fn build_into(dir: &Path, archs: &[String]) -> Result<Vec<PathBuf>> {
    for arch in archs {
        let digits = arch.strip_prefix("sm_").unwrap_or_default();
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Invalid { op: "kernels build", msg: format!("--arch {arch:?}: expected an architecture such as sm_80 or sm_90") });
        }
    }
    let version = nvrtc::nvrtc()?.version;
    let mut written = Vec::new();
    for arch in archs {
        let registered = super::registered::all();
        let builtin = super::sources::SOURCES.iter().map(|&(file, source)| (file, source));
        for (file, source) in builtin.chain(registered.iter().map(|(file, source)| (file.as_str(), &**source))) {
            let cubin = nvrtc::compile_cubin(file, source, arch)?;
            let path = dir.join(entry_name(file, source, arch, version));
            write_atomic(&path, &cubin).map_err(|e| Error::Invalid { op: "kernels build", msg: format!("cannot write {}: {e}", path.display()) })?;
            written.push(path);
        }
    }
    Ok(written)
}

/// `<stem>-<arch>-<hash>`: what an entry is looked up by.
fn key(file: &str, source: &str, arch: &str) -> String {
    let mut h = Fnv64::new();
    h.write(&FORMAT.to_le_bytes());
    h.write(arch.as_bytes());
    h.write(&[0]);
    h.write(source.as_bytes());
    for (name, header) in super::sources::HEADERS {
        h.write(&[0]);
        h.write(name.as_bytes());
        h.write(&[0]);
        h.write(header.as_bytes());
    }
    for option in COMPILE_OPTIONS {
        h.write(&[0]);
        h.write(option.as_bytes());
    }
    format!("{file}-{arch}-{:016x}", h.finish())
}

fn entry_name(file: &str, source: &str, arch: &str, (major, minor): (i32, i32)) -> String {
    format!("{}.nvrtc{major}.{minor}.cubin", key(file, source, arch))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(".{}.{}.{nanos}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("cubin"), std::process::id()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms (std's hasher is not promised
/// to be), which a key stored on disk needs. Not a defence against crafted collisions: the
/// cache holds only kernels this user's programs compiled.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_source_and_arch_not_the_nvrtc_version() {
        let a = entry_name("fill", "x", "sm_90", (13, 0));
        assert_eq!(a, entry_name("fill", "x", "sm_90", (13, 0)));
        assert_ne!(key("fill", "x", "sm_90"), key("fill", "y", "sm_90"));
        assert_ne!(key("fill", "x", "sm_90"), key("fill", "x", "sm_80"));
        assert_eq!(entry_name("fill", "x", "sm_90", (13, 1)), format!("{}.nvrtc13.1.cubin", key("fill", "x", "sm_90")));
        assert!(a.starts_with("fill-sm_90-") && a.ends_with(".nvrtc13.0.cubin"), "{a}");
    }

    /// Entries are found without NVRTC, by key, newest NVRTC first; other keys and stray
    /// files are ignored.
    #[test]
    fn lookup_finds_entries_of_any_nvrtc_version() {
        let dir = std::env::temp_dir().join(format!("engine-kernel-cache-lookup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(lookup_in(&dir, "fill", "x", "sm_90").is_empty());
        for (name, bytes) in [
            (entry_name("fill", "x", "sm_90", (12, 9)), "old"),
            (entry_name("fill", "x", "sm_90", (13, 0)), "new"),
            (entry_name("fill", "y", "sm_90", (13, 0)), "other source"),
            (entry_name("fill", "x", "sm_80", (13, 0)), "other arch"),
            (format!("{}.nvrtcX.cubin", key("fill", "x", "sm_90")), "no version"),
        ] {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let found = lookup_in(&dir, "fill", "x", "sm_90");
        let got: Vec<((i32, i32), String)> = found.iter().map(|e| (e.nvrtc, std::fs::read_to_string(&e.path).unwrap())).collect();
        assert_eq!(got, [((13, 0), "new".to_string()), ((12, 9), "old".to_string())]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A compile stores one whole file (no temporaries left) that lookup then finds.
    #[test]
    fn a_compile_is_stored_and_found() {
        if let Err(e) = nvrtc::nvrtc() {
            assert_ne!(std::env::var("ENGINE_REQUIRE_NVRTC").as_deref(), Ok("1"), "{e}");
            eprintln!("skipped: NVRTC not found, run scripts/test ({e})");
            return;
        }
        let dir = std::env::temp_dir().join(format!("engine-kernel-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = crate::cuda::source("fill").expect("fill.cu is embedded");
        let compiled = compile_in(Some(&dir), "fill", src, "sm_80").unwrap();
        let entries: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        let found = lookup_in(&dir, "fill", src, "sm_80");
        assert_eq!(found.len(), 1, "one file, no temporaries left: {entries:?}");
        assert_eq!(entries, [found[0].path.clone()]);
        assert_eq!(found[0].nvrtc, nvrtc::nvrtc().unwrap().version);
        assert_eq!(std::fs::read(&found[0].path).unwrap(), compiled);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn build_refuses_a_malformed_arch() {
        for bad in ["90", "sm_", "sm_9", "compute_90", "sm_9x"] {
            let msg = build_into(Path::new("/nonexistent"), &[bad.to_string()]).unwrap_err().to_string();
            assert!(msg.contains(&format!("{bad:?}")) && msg.contains("expected an architecture such as sm_80"), "{msg}");
        }
    }
}
