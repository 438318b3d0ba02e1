//! A machine with only the NVIDIA driver runs from a kernel cache built elsewhere:
//! `engine kernels build` fills a directory with every embedded kernel (here with the
//! NVRTC this process has: the simulator's under scripts/cuda-sim), then `engine train` on
//! the GPU runs in a process that cannot load NVRTC (`ENGINE_NVRTC=off`, and a library path
//! holding only libcuda), from that directory alone; with one entry missing it fails saying
//! what to install.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

const ENGINE: &str = env!("CARGO_BIN_EXE_engine");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/shakespeare-char.toml");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The architecture of GPU 0, or `None` after printing why the test is skipped.
fn gpu_arch_or_skip() -> Option<String> {
    let found = kernels::cuda::probe(0)
        .map_err(|reason| reason.to_string())
        .and_then(|_| kernels::cuda::device(0).map_err(|e| e.to_string()));
    match found {
        Ok(dev) => Some(dev.arch().to_string()),
        Err(reason) if std::env::var("ENGINE_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("ENGINE_REQUIRE_GPU=1 but there is no usable CUDA device ({reason})")
        }
        Err(reason) => {
            eprintln!("skipped: no usable CUDA device ({reason})");
            None
        }
    }
}

/// A library directory with only this process's `libcuda` in it (the simulator's, found on
/// LD_LIBRARY_PATH), or `None` when the driver is not on LD_LIBRARY_PATH (a real driver is
/// found by the system loader; NVRTC is then kept out by ENGINE_NVRTC=off alone).
fn driver_only_libs(tmp: &Path) -> Option<PathBuf> {
    let paths = std::env::var_os("LD_LIBRARY_PATH")?;
    let libcuda = std::env::split_paths(&paths).map(|d| d.join("libcuda.so.1")).find(|p| p.is_file())?;
    let dir = tmp.join("driver-only-lib");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&libcuda, dir.join("libcuda.so.1")).unwrap();
    std::os::unix::fs::symlink("libcuda.so.1", dir.join("libcuda.so")).unwrap();
    Some(dir)
}

/// `engine train` on the GPU for 2 tiny steps with NVRTC out of reach and `cache` as the
/// kernel cache.
fn train_without_nvrtc(tmp: &Path, libs: Option<&Path>, cache: &Path, name: &str) -> Output {
    let mut cmd = Command::new(ENGINE);
    cmd.args(["train", CONFIG, "--set", "run.device=cuda", "--set", "train.max_steps=2", "--set", "train.batch_size=2"])
        .args(["--set", "train.seq_len=32", "--set", &format!("run.name={name}")])
        .args(["--set", &format!("run.out_dir={}", tmp.join("runs").display())])
        .env("ENGINE_NVRTC", "off")
        .env("ENGINE_KERNEL_CACHE", cache)
        .env_remove("RUST_BACKTRACE");
    match libs {
        Some(dir) => cmd.env("LD_LIBRARY_PATH", dir),
        None => cmd.env_remove("LD_LIBRARY_PATH"),
    };
    cmd.output().expect("the engine binary runs")
}

#[test]
fn a_prebuilt_kernel_cache_runs_without_nvrtc() {
    let Some(arch) = gpu_arch_or_skip() else { return };
    let tmp = TempDir::new().unwrap();
    let cache = tmp.path().join("kernel-cache");

    // build: one cubin per embedded kernel file, named in the output
    let out = Command::new(ENGINE).args(["kernels", "build", "--arch", &arch, "--out"]).arg(&cache).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "engine kernels build failed:\n{}", text(&out.stderr));
    let sources = kernels::cuda::sources::SOURCES;
    for (file, _) in sources {
        let listed = stdout.lines().find(|l| l.contains(&format!("/{file}-{arch}-"))).unwrap_or_else(|| panic!("{file} not built:\n{stdout}"));
        assert!(Path::new(listed).metadata().unwrap().len() > 0, "{listed} is empty");
    }
    assert!(stdout.contains(&format!("{} cubins for {arch}", sources.len())), "{stdout}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), sources.len(), "one file per kernel file, no temporaries");

    // run: trains on the GPU from the cache, with no NVRTC
    let libs = driver_only_libs(tmp.path());
    let out = train_without_nvrtc(tmp.path(), libs.as_deref(), &cache, "cached");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "the driver-only run failed:\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("no NVRTC, kernels from the cache") && all.contains("trained 2 steps"), "{all}");

    // one entry missing: refused up front, naming it and what to install
    let partial = tmp.path().join("partial-cache");
    std::fs::create_dir_all(&partial).unwrap();
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("attention-") {
            std::fs::copy(&path, partial.join(path.file_name().unwrap())).unwrap();
        }
    }
    let out = train_without_nvrtc(tmp.path(), libs.as_deref(), &partial, "partial");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected a failure:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let needles = [format!("lacks {arch} cubins of attention"), kernels::cuda::nvrtc::INSTALL_HINT.to_string(), format!("engine kernels build --arch {arch}")];
    for needle in &needles {
        assert!(stderr.contains(needle), "stderr does not name {needle:?}:\n{stderr}");
    }
}
