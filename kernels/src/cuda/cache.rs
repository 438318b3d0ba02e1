//! The on-disk cubin cache: compiling every kernel file costs seconds, loading a cached
//! cubin costs microseconds.
//!
//! Directory: `$ENGINE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/engine/kernels`, else
//! `~/.cache/engine/kernels`. One file per (file stem, arch, NVRTC version, hash of the
//! source and options): `<stem>-<arch>-nvrtc<maj>.<min>-<hash>.cubin`. Files are written to a
//! temporary name and renamed, so a reader never sees a partial cubin, and two processes
//! compiling the same kernel at once both end with a whole file. A cache that cannot be
//! read or written is skipped silently: it only ever saves time.

use std::path::{Path, PathBuf};

use super::nvrtc::{self, COMPILE_OPTIONS};
use crate::Result;

/// Bumped when the key or the file layout changes.
const FORMAT: u32 = 1;

pub fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("ENGINE_KERNEL_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("engine/kernels")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/engine/kernels")))
}

/// The cubin for `file` on `arch`: from the cache when present, else compiled by NVRTC and
/// stored. `fresh` skips the cache read (used when a cached cubin failed to load).
pub fn cubin(file: &str, source: &str, arch: &str, fresh: bool) -> Result<Vec<u8>> {
    cubin_in(cache_dir().as_deref(), file, source, arch, fresh)
}

fn cubin_in(dir: Option<&Path>, file: &str, source: &str, arch: &str, fresh: bool) -> Result<Vec<u8>> {
    let version = nvrtc::nvrtc()?.version;
    let path = dir.map(|dir| dir.join(entry_name(file, source, arch, version)));
    if let (Some(path), false) = (&path, fresh) {
        if let Ok(bytes) = std::fs::read(path) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let cubin = nvrtc::compile_cubin(file, source, arch)?;
    if let Some(path) = path {
        write_atomic(&path, &cubin);
    }
    Ok(cubin)
}

fn entry_name(file: &str, source: &str, arch: &str, (major, minor): (i32, i32)) -> String {
    let mut h = Fnv64::new();
    h.write(&FORMAT.to_le_bytes());
    h.write(source.as_bytes());
    for option in COMPILE_OPTIONS {
        h.write(&[0]);
        h.write(option.as_bytes());
    }
    format!("{file}-{arch}-nvrtc{major}.{minor}-{:016x}.cubin", h.finish())
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(".{}.{}.{nanos}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("cubin"), std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms (std's hasher is not promised
/// to be), which a key stored on disk needs. Not a defence against crafted collisions: the
/// cache holds only our own kernels.
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
    fn key_changes_with_source_arch_and_version() {
        let a = entry_name("fill", "x", "sm_90", (13, 0));
        assert_eq!(a, entry_name("fill", "x", "sm_90", (13, 0)));
        assert_ne!(a, entry_name("fill", "y", "sm_90", (13, 0)));
        assert_ne!(a, entry_name("fill", "x", "sm_80", (13, 0)));
        assert_ne!(a, entry_name("fill", "x", "sm_90", (13, 1)));
        assert!(a.starts_with("fill-sm_90-nvrtc13.0-") && a.ends_with(".cubin"), "{a}");
    }

    /// Compiles once, then serves the stored file; `fresh` recompiles and replaces it.
    #[test]
    fn compiles_once_then_reads_the_cache() {
        if let Err(e) = nvrtc::nvrtc() {
            assert_ne!(std::env::var("ENGINE_REQUIRE_NVRTC").as_deref(), Ok("1"), "{e}");
            eprintln!("skipped: NVRTC not found, run scripts/test ({e})");
            return;
        }
        let dir = std::env::temp_dir().join(format!("engine-kernel-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = crate::cuda::source("fill").expect("fill.cu is embedded");
        let compiled = cubin_in(Some(&dir), "fill", src, "sm_80", false).unwrap();
        let entries: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(entries.len(), 1, "one file, no temporaries left: {entries:?}");
        assert_eq!(std::fs::read(&entries[0]).unwrap(), compiled);
        // Mark the stored file: a cache hit returns the mark, a fresh compile replaces it.
        std::fs::write(&entries[0], b"marked").unwrap();
        assert_eq!(cubin_in(Some(&dir), "fill", src, "sm_80", false).unwrap(), b"marked");
        assert_eq!(cubin_in(Some(&dir), "fill", src, "sm_80", true).unwrap(), compiled);
        assert_eq!(std::fs::read(&entries[0]).unwrap(), compiled);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
