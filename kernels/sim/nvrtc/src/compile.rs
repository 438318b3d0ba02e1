//! One compile: translate, run the host C++ compiler in a private temporary directory,
//! wrap the shared object it writes in the module image header of `cudasim/abi.h` §1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::options::Options;
use crate::translate;

/// `CUDASIM_ABI_VERSION` of `cudasim/abi.h`.
pub const ABI_VERSION: u32 = 1;
pub const IMAGE_MAGIC: &[u8; 8] = b"CUDASIM1";
pub const IMAGE_HEADER_BYTES: usize = 24;
pub const IMAGE_ASAN: u32 = 1;

/// What a successful compile leaves.
#[derive(Debug)]
pub struct Output {
    pub image: Vec<u8>,
    /// The extern "C" kernels the image registers (what name expressions may name).
    pub kernels: Vec<String>,
    /// The compiler's diagnostics (empty: warnings are off).
    pub log: String,
}

/// A compile's inputs.
pub struct Input<'a> {
    pub source: &'a str,
    pub file_name: &'a str,
    /// `(include name, contents)` from `nvrtcCreateProgram`.
    pub headers: &'a [(String, String)],
    pub options: &'a Options,
    /// The compiler command and its leading arguments (`compiler()`).
    pub cxx: &'a [String],
    /// The simulator's include directory (`sim_include_dir()`).
    pub sim_include: &'a Path,
    /// Build with AddressSanitizer (`asan_requested()`).
    pub asan: bool,
}

/// `CUDASIM1`, abi, flags, length, then the shared object.
pub fn image(so: &[u8], flags: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(IMAGE_HEADER_BYTES + so.len());
    out.extend_from_slice(IMAGE_MAGIC);
    out.extend_from_slice(&ABI_VERSION.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(so.len() as u64).to_le_bytes());
    out.extend_from_slice(so);
    out
}

/// The directory holding `cudasim/runtime.h` and the simulator's `cuda_bf16.h`.
pub fn sim_include_dir() -> PathBuf {
    match std::env::var_os("CUDA_SIM_INCLUDE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../include"));
            // Without the `nvrtc/..` detour, so paths in the compiler's messages read plainly.
            dir.canonicalize().unwrap_or(dir)
        }
    }
}

/// `CUDA_SIM_CHECK=1`, as the driver reads it: build with AddressSanitizer.
pub fn asan_requested() -> bool {
    std::env::var("CUDA_SIM_CHECK").is_ok_and(|v| v.trim() == "1")
}

/// The compiler command: `$CUDA_SIM_CXX` (split on whitespace, so `ccache g++` works), else `c++`.
pub fn compiler() -> Vec<String> {
    let words: Vec<String> = std::env::var("CUDA_SIM_CXX").unwrap_or_default().split_whitespace().map(str::to_string).collect();
    if words.is_empty() {
        vec!["c++".into()]
    } else {
        words
    }
}

/// Compiles; the error is the program log.
pub fn compile(input: &Input) -> Result<Output, String> {
    let t = translate::translate(input.source, input.file_name)?;
    let dir = TempDir::new().map_err(|e| format!("nvrtc (cuda-sim): error: cannot create a temporary directory: {e}"))?;
    let result = build(input, &t, dir.path());
    if std::env::var("CUDA_SIM_NVRTC_KEEP").is_ok_and(|v| v.trim() == "1") {
        let kept = dir.keep();
        let noted = |mut log: String| {
            if !log.is_empty() && !log.ends_with('\n') {
                log.push('\n');
            }
            log + &format!("nvrtc (cuda-sim): note: the translated source is kept in {}\n", kept.display())
        };
        return match result {
            Ok(out) => Ok(Output { log: noted(out.log), ..out }),
            Err(log) => Err(noted(log)),
        };
    }
    result
}

fn build(input: &Input, t: &translate::Translation, dir: &Path) -> Result<Output, String> {
    let io = |what: &str, e: std::io::Error| format!("nvrtc (cuda-sim): error: {what}: {e}");
    let headers = dir.join("include");
    for (name, contents) in input.headers {
        let rel = Path::new(name);
        let plain = !name.is_empty() && rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(format!("nvrtc (cuda-sim): error: header include name `{name}`: the simulator supports only relative names without `..`"));
        }
        let path = headers.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("cannot write a header", e))?;
        }
        let text = translate::translate_header(contents, name)?;
        std::fs::write(&path, text).map_err(|e| io("cannot write a header", e))?;
    }
    let src_dir = dir.join("src");
    std::fs::create_dir_all(&src_dir).map_err(|e| io("cannot write the source", e))?;
    // Named after the program, for the compiler's "In file included from" lines.
    let stem: String = Path::new(input.file_name)
        .file_name()
        .map(|n| n.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect())
        .unwrap_or_default();
    let cpp = src_dir.join(format!("{}.cpp", if stem.is_empty() { "program" } else { &stem }));
    std::fs::write(&cpp, &t.cpp).map_err(|e| io("cannot write the source", e))?;
    let so = dir.join("module.so");

    let (asan, cxx) = (input.asan, input.cxx);
    if cxx.is_empty() {
        return Err("nvrtc (cuda-sim): error: no host C++ compiler given".into());
    }
    let mut cmd = Command::new(&cxx[0]);
    cmd.args(&cxx[1..]);
    cmd.args(["-O2", "-fPIC", "-shared", "-w", "-ffp-contract=off", "-fno-math-errno"]);
    // CUDA code type-puns through reinterpret_cast as a matter of course (a 16-byte pack
    // stored as int4 and read as floats); nvcc keeps it working, so must we: with strict
    // aliasing GCC may drop the store and read the pack's old contents.
    cmd.arg("-fno-strict-aliasing");
    // Only the runtime's explicitly exported ABI functions leave the module. Otherwise GCC
    // makes the statics of template and inline functions (`__shared__` arrays in a template
    // kernel helper, the runtime's per-kernel tables) STB_GNU_UNIQUE: bound process-wide, so a
    // second module would use the first one's copy, and no module could ever be unloaded.
    cmd.arg("-fvisibility=hidden");
    if asan {
        cmd.args(["-fsanitize=address", "-fno-omit-frame-pointer", "-g1"]);
        // A vector access (int4, float4, bf16 pairs) at an address its type's alignment does
        // not allow faults on a GPU (CUDA_ERROR_MISALIGNED_ADDRESS) but works on x86: UBSan
        // reports it, naming the .cu file and line, and stops.
        cmd.args(["-fsanitize=alignment", "-fno-sanitize-recover=alignment"]);
    }
    // The simulator's headers first, so its cuda_bf16.h wins over a real CUDA install on
    // the user's include path; then the program's own headers; then the user's paths.
    cmd.arg("-I").arg(input.sim_include);
    if !input.headers.is_empty() {
        cmd.arg("-I").arg(&headers);
    }
    for p in &input.options.include_paths {
        cmd.arg("-I").arg(p);
    }
    cmd.args(input.options.cxx_args());
    cmd.arg("-o").arg(&so).arg(&cpp);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            return Err(format!(
                "nvrtc (cuda-sim): error: the CUDA simulator compiles kernels with the host C++ compiler `{}` \
                 (set CUDA_SIM_CXX to choose another), which could not be run: {e}; install g++ (Debian/Ubuntu: \
                 `apt-get install g++`)",
                cxx.join(" ")
            ))
        }
    };
    let mut log = String::from_utf8_lossy(&out.stderr).into_owned();
    log.push_str(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        if log.trim().is_empty() {
            log = format!("nvrtc (cuda-sim): error: `{}` failed ({})", cxx.join(" "), out.status);
        }
        return Err(log);
    }
    let so_bytes = std::fs::read(&so).map_err(|e| io("the compiler wrote no shared object", e))?;
    Ok(Output {
        image: image(&so_bytes, if asan { IMAGE_ASAN } else { 0 }),
        kernels: t.kernels.iter().map(|k| k.name.clone()).collect(),
        log,
    })
}

/// `temp_dir()/cudasim-nvrtc-<pid>-<n>`, removed on drop.
struct TempDir(Option<PathBuf>);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("cudasim-nvrtc-{}-{n}", std::process::id()));
            // A leftover of an earlier process with the same pid is skipped, never reused.
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir(Some(path))),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn path(&self) -> &Path {
        self.0.as_deref().expect("a TempDir has its path until kept")
    }

    fn keep(mut self) -> PathBuf {
        self.0.take().expect("a TempDir has its path until kept")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}
