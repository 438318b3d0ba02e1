//! Finding NVRTC and the CUDA headers where users already have them, and compiling one
//! `.cu` source to a cubin for one exact architecture.
//!
//! cudarc only `dlopen`s bare names (`libnvrtc.so`, ..., `libnvrtc.so.13`), but a library
//! already loaded by absolute path is found by its soname. So when NVRTC is not loadable by
//! bare name we look for it ourselves (CUDA_PATH/CUDA_HOME, /usr/local/cuda, LD_LIBRARY_PATH,
//! Python site-packages `nvidia/cu13/lib` as PyTorch and the PyPI wheels install it, and the
//! repository's `.cache/cuda` that `scripts/test` fills), load `libnvrtc-builtins.so.13.*`
//! first (libnvrtc dlopens it by soname) and then `libnvrtc.so.13`, and keep both loaded for
//! the life of the process.
//!
//! `ENGINE_NVRTC=off` skips all of this, as if NVRTC were not installed.
//!
//! `cuda_bf16.h`/`cuda_fp16.h` are not built into NVRTC 13.0, so every compile passes
//! `--include-path` for a CUDA include directory found the same way.
//!
//! [`compile_with_resources`] compiles the same way with ptxas's verbose report turned on
//! and returns each kernel's registers, shared memory, stack and spills with the cubin
//! (parsed by `cuda::resources`).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};

use super::resources::{parse_ptxas_log, ModuleResources};
use crate::{Error, Result};

/// What to tell a user who has no NVRTC or no CUDA headers.
pub const INSTALL_HINT: &str = "install NVRTC 13.0 and the CUDA headers with \
`pip install nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96` \
(into any Python site-packages, or `--target DIR` and put DIR/nvidia/cu13/lib on LD_LIBRARY_PATH), \
or install the CUDA toolkit 13.0 (/usr/local/cuda, or set CUDA_PATH)";

/// A loaded NVRTC and the include directory every compile uses.
#[derive(Debug)]
pub struct Nvrtc {
    /// `(major, minor)` as NVRTC reports it; recorded in the disk-cache entries it makes.
    pub version: (i32, i32),
    /// Where libnvrtc was loaded from; `None` when it was already loadable by bare name.
    pub lib_dir: Option<PathBuf>,
    /// A directory holding `cuda_bf16.h`.
    pub include_dir: PathBuf,
    // Keeps libnvrtc-builtins and libnvrtc loaded so cudarc's dlopen by soname finds them.
    _libraries: Vec<libloading::Library>,
}

static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();

/// NVRTC, found and loaded on first call (the search runs once per process).
pub fn nvrtc() -> Result<&'static Nvrtc> {
    NVRTC.get_or_init(locate_and_load).as_ref().map_err(|reason| Error::Nvrtc { reason: reason.clone() })
}

/// `ENGINE_NVRTC=off`: NVRTC is never searched for or loaded, as on a machine with only the
/// driver (kernels come from the disk cache alone; tests of that path set it).
fn turned_off() -> bool {
    std::env::var("ENGINE_NVRTC").is_ok_and(|v| v.eq_ignore_ascii_case("off"))
}

fn locate_and_load() -> std::result::Result<Nvrtc, String> {
    if turned_off() {
        return Err(format!("it is turned off by ENGINE_NVRTC=off (unset it to use an installed NVRTC; where there is none, {INSTALL_HINT})"));
    }
    let roots = search_roots();
    let mut libraries = Vec::new();
    // SAFETY: is_culib_present only dlopens and closes candidate names; no symbol is called.
    let lib_dir = if unsafe { nvrtc_sys::is_culib_present() } {
        None
    } else {
        let mut found = None;
        for dir in roots.iter().map(|r| &r.lib) {
            if dir.join("libnvrtc.so.13").is_file() {
                found = Some(dir.clone());
                break;
            }
        }
        let Some(dir) = found else {
            return Err(format!(
                "libnvrtc.so.13 not found (not loadable by name, and not in any of: {}); {INSTALL_HINT}",
                list(roots.iter().map(|r| &r.lib))
            ));
        };
        if let Some(builtins) = find_builtins(&dir) {
            libraries.push(open_global(&builtins)?);
        }
        libraries.push(open_global(&dir.join("libnvrtc.so.13"))?);
        Some(dir)
    };
    let version = nvrtc_version().map_err(|e| format!("NVRTC was found but nvrtcVersion failed ({e})"))?;
    let include_dir = find_include_dir(&roots, lib_dir.as_deref()).ok_or_else(|| {
        format!(
            "NVRTC {}.{} was found{} but the CUDA headers (cuda_bf16.h) were not, in any of: {}; {INSTALL_HINT}",
            version.0,
            version.1,
            lib_dir.as_ref().map(|d| format!(" in {}", d.display())).unwrap_or_default(),
            list(roots.iter().map(|r| &r.include))
        )
    })?;
    Ok(Nvrtc { version, lib_dir, include_dir, _libraries: libraries })
}

/// A place where a CUDA install may live: its library dir and its include dir.
struct Root {
    lib: PathBuf,
    include: PathBuf,
}

/// Every place we look, in order of preference. Duplicates are harmless.
fn search_roots() -> Vec<Root> {
    let mut roots = Vec::new();
    let mut toolkit = |base: PathBuf| {
        roots.push(Root { lib: base.join("lib64"), include: base.join("include") });
        roots.push(Root { lib: base.join("lib"), include: base.join("include") });
    };
    for var in ["CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            toolkit(PathBuf::from(v));
        }
    }
    toolkit(PathBuf::from("/usr/local/cuda"));
    toolkit(PathBuf::from("/usr/local/cuda-13.0"));
    // LD_LIBRARY_PATH is read by the loader only at process start; a directory added later
    // (or one holding only libnvrtc.so.13 without the unversioned link) is still found here.
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        for dir in std::env::split_paths(&v).filter(|d| !d.as_os_str().is_empty()) {
            let include = dir.parent().map(|p| p.join("include")).unwrap_or_default();
            roots.push(Root { lib: dir, include });
        }
    }
    let wheel = |site: &Path| Root { lib: site.join("nvidia/cu13/lib"), include: site.join("nvidia/cu13/include") };
    for site in site_packages() {
        roots.push(wheel(&site));
    }
    // The repository's cache filled by scripts/test (CI), found from the build tree and from
    // the working directory (a binary carried to another machine runs from the repo root).
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    for base in repo.into_iter().chain(std::env::current_dir().ok()) {
        roots.push(wheel(&base.join(".cache/cuda")));
    }
    roots
}

/// Python site-packages directories where pip (or PyTorch) may have put `nvidia/cu13`.
fn site_packages() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            prefixes.push(PathBuf::from(v).join("lib"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(home).join(".local/lib"));
    }
    prefixes.extend(["/usr/local/lib", "/usr/lib", "/opt/conda/lib"].map(PathBuf::from));
    let mut sites = Vec::new();
    if let Some(v) = std::env::var_os("PYTHONPATH") {
        sites.extend(std::env::split_paths(&v));
    }
    for prefix in prefixes {
        let Ok(entries) = std::fs::read_dir(&prefix) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("python3")))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        pythons.reverse(); // newest Python first
        for py in pythons {
            sites.push(py.join("site-packages"));
            sites.push(py.join("dist-packages"));
        }
    }
    sites.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    sites
}

/// `libnvrtc-builtins.so.13.*` in `dir` (the highest version if several).
fn find_builtins(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("libnvrtc-builtins.so.13")))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop()
}

fn open_global(path: &Path) -> std::result::Result<libloading::Library, String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading NVIDIA's NVRTC runs only its initialisers, which have no preconditions.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
        .map(libloading::Library::from)
        .map_err(|e| format!("found {} but could not load it: {e}", path.display()))
}

fn find_include_dir(roots: &[Root], lib_dir: Option<&Path>) -> Option<PathBuf> {
    // Prefer the headers that sit beside the library we loaded.
    let beside = lib_dir.and_then(Path::parent).map(|p| p.join("include"));
    beside
        .into_iter()
        .chain(roots.iter().map(|r| r.include.clone()))
        .find(|d| d.join("cuda_bf16.h").is_file())
}

fn list<'a>(dirs: impl Iterator<Item = &'a PathBuf>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for d in dirs {
        let s = d.display().to_string();
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen.join(", ")
}

fn nvrtc_version() -> std::result::Result<(i32, i32), nvrtc_result::NvrtcError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for writes; NVRTC is loaded (checked by the caller).
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }.result()?;
    Ok((major, minor))
}

/// The options every kernel is compiled with, besides the architecture and include path.
/// Part of the disk-cache key.
pub const COMPILE_OPTIONS: &[&str] = &["--std=c++17", "-default-device", "-lineinfo"];

/// Passed only by [`compile_with_resources`]: ptxas writes each kernel's registers, shared
/// memory, stack frame, spills and barriers to the program log. The code is the same (only
/// the cubin's note of ptxas's command line gains `-v`), so it is not in [`COMPILE_OPTIONS`]
/// (nor in the disk-cache key).
pub const PTXAS_VERBOSE: &str = "--ptxas-options=-v";

/// Compiles `source` (the contents of `kernels/cuda/<file>.cu`) to a cubin for `arch`
/// (e.g. `sm_90`). A failure is `Error::Compile` carrying NVRTC's log.
pub fn compile_cubin(file: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    compile_program(file, source, arch, &[]).map(|(cubin, _log)| cubin)
}

/// Compiles like [`compile_cubin`] (the same options, plus [`PTXAS_VERBOSE`]) and returns the
/// cubin with ptxas's report of every kernel in it, parsed. A log line that does not read as
/// ptxas's report is `Error::PtxasReport` naming it.
pub fn compile_with_resources(file: &str, source: &str, arch: &str) -> Result<(Vec<u8>, ModuleResources)> {
    let (cubin, log) = compile_program(file, source, arch, &[PTXAS_VERBOSE])?;
    let resources = parse_ptxas_log(&format!("{file}.cu"), arch, &log)?;
    Ok((cubin, resources))
}

/// One NVRTC program: created, compiled with the architecture, the include path,
/// [`COMPILE_OPTIONS`] and `extra_options`, its cubin and log taken, destroyed. Returns the
/// cubin and the log (warnings, or ptxas's report when asked for).
fn compile_program(file: &str, source: &str, arch: &str, extra_options: &[&str]) -> Result<(Vec<u8>, String)> {
    let nvrtc = nvrtc()?;
    let compile_error = |log: String| Error::Compile { file: format!("{file}.cu"), arch: arch.to_string(), log };
    let src = CString::new(source).map_err(|_| compile_error("the source contains a NUL byte".into()))?;
    let name = CString::new(format!("{file}.cu")).map_err(|_| compile_error("the file name contains a NUL byte".into()))?;
    let mut options = vec![format!("--gpu-architecture={arch}"), format!("--include-path={}", nvrtc.include_dir.display())];
    options.extend(COMPILE_OPTIONS.iter().chain(extra_options).map(|o| o.to_string()));

    // The embedded headers (kernels/cuda/*.cuh), by name, for `#include "common.cuh"`.
    let headers = super::sources::HEADERS;
    let header_src: Vec<CString> = headers.iter().map(|(_, h)| CString::new(*h)).collect::<std::result::Result<_, _>>().map_err(|_| compile_error("a header contains a NUL byte".into()))?;
    let header_names: Vec<CString> = headers.iter().map(|(n, _)| CString::new(*n)).collect::<std::result::Result<_, _>>().map_err(|_| compile_error("a header name contains a NUL byte".into()))?;
    let src_ptrs: Vec<*const std::ffi::c_char> = header_src.iter().map(|c| c.as_ptr()).collect();
    let name_ptrs: Vec<*const std::ffi::c_char> = header_names.iter().map(|c| c.as_ptr()).collect();
    let mut prog = std::mem::MaybeUninit::uninit();
    // SAFETY: every pointer is a NUL-terminated string that outlives the call (NVRTC copies
    // them); the two arrays hold `headers.len()` entries each.
    unsafe {
        nvrtc_sys::nvrtcCreateProgram(prog.as_mut_ptr(), src.as_ptr(), name.as_ptr(), headers.len() as i32, src_ptrs.as_ptr(), name_ptrs.as_ptr())
    }
    .result()
    .map_err(|e| compile_error(format!("nvrtcCreateProgram: {e:?}")))?;
    // SAFETY: initialised by the successful call above.
    let prog = unsafe { prog.assume_init() };
    // SAFETY: `prog` was just created and is destroyed exactly once, below; `src` and `name`
    // outlive it.
    let compiled = unsafe { nvrtc_result::compile_program(prog, &options) };
    // SAFETY: as above.
    let log = unsafe { nvrtc_result::get_program_log(prog) }.map(|l| c_chars_to_string(&l)).unwrap_or_default();
    // SAFETY: as above.
    let cubin = compiled.and_then(|()| unsafe { get_cubin(prog) });
    // SAFETY: as above; the program is not used after this.
    let _ = unsafe { nvrtc_result::destroy_program(prog) };
    match cubin {
        Ok(cubin) => Ok((cubin, log)),
        Err(e) => {
            let log = log.trim();
            Err(compile_error(if log.is_empty() { format!("{e:?}") } else { log.to_string() }))
        }
    }
}

/// The cubin of a compiled program (`nvrtcGetCUBIN`; cudarc's safe layer only offers PTX).
///
/// # Safety
/// `prog` must be a live program that compiled successfully.
unsafe fn get_cubin(prog: nvrtc_sys::nvrtcProgram) -> std::result::Result<Vec<u8>, nvrtc_result::NvrtcError> {
    let mut size = 0usize;
    nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
    let mut cubin = vec![0u8; size];
    nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()).result()?;
    Ok(cubin)
}

fn c_chars_to_string(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
