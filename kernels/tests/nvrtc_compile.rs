//! Compiles every embedded `kernels/cuda/*.cu` with NVRTC for sm_80 and sm_90: no GPU
//! needed, so CI catches a kernel that does not compile. NVRTC comes from wherever
//! `kernels::cuda::nvrtc` finds it (`scripts/test` installs the pinned PyPI wheels into
//! `.cache/cuda`). Without NVRTC the tests skip with a message, unless
//! `ENGINE_REQUIRE_NVRTC=1` (set by `scripts/test`, hence CI) makes that a failure.

use kernels::cuda::{self, nvrtc};
use kernels::Error;

const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

fn nvrtc_or_skip() -> bool {
    match nvrtc::nvrtc() {
        Ok(n) => {
            eprintln!(
                "NVRTC {}.{} ({}), headers from {}",
                n.version.0,
                n.version.1,
                n.lib_dir.as_ref().map(|d| format!("loaded from {}", d.display())).unwrap_or_else(|| "loadable by name".into()),
                n.include_dir.display()
            );
            true
        }
        Err(e) if std::env::var("ENGINE_REQUIRE_NVRTC").as_deref() == Ok("1") => {
            panic!("ENGINE_REQUIRE_NVRTC=1 but {e}")
        }
        Err(e) => {
            eprintln!("skipped: NVRTC not found, run scripts/test ({e})");
            false
        }
    }
}

#[test]
fn every_kernel_file_compiles_for_sm80_and_sm90() {
    let stems: Vec<&str> = cuda::sources::SOURCES.iter().map(|(stem, _)| *stem).collect();
    assert!(stems.contains(&"fill") && stems.contains(&"cast"), "build.rs embedded only {stems:?}");
    if !nvrtc_or_skip() {
        return;
    }
    // Every (file, arch) pair on its own thread, as many at once as there are cores: the
    // big template files dominate and NVRTC is single-threaded per program.
    let jobs: Vec<(&str, &str)> = stems.iter().flat_map(|s| ARCHS.map(|a| (*s, a))).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(&(stem, arch)) = jobs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                    let start = std::time::Instant::now();
                    match cuda::compile_module(stem, arch) {
                        Ok(cubin) => eprintln!("ok   {stem}.cu {arch}: cubin {} bytes in {:.2?}", cubin.len(), start.elapsed()),
                        Err(e) => {
                            eprintln!("FAIL {stem}.cu {arch}");
                            failures.lock().unwrap().push(e.to_string());
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} compile failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn compile_error_names_the_file_and_carries_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let source = include_str!("fixtures/broken.cu");
    match nvrtc::compile_cubin("broken", source, "sm_80") {
        Err(Error::Compile { ref file, ref arch, ref log }) => {
            assert_eq!(file, "broken.cu");
            assert_eq!(arch, "sm_80");
            assert!(log.contains("undeclared_identifier_for_the_test"), "log lacks the culprit: {log}");
            assert!(log.contains("broken.cu"), "log lacks the file name: {log}");
            let msg = Error::Compile { file: file.clone(), arch: arch.clone(), log: log.clone() }.to_string();
            assert!(msg.starts_with("NVRTC failed to compile broken.cu for sm_80:\n"), "{msg}");
        }
        other => panic!("expected Error::Compile, got {other:?}"),
    }
}

#[test]
fn unknown_module_lists_the_embedded_ones() {
    let msg = cuda::compile_module("no_such_kernel_file", "sm_80").unwrap_err().to_string();
    assert!(msg.contains("kernels/cuda/no_such_kernel_file.cu") && msg.contains("fill"), "{msg}");
}
