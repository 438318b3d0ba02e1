//! Compiles every embedded `kernels/cuda/*.cu` with NVRTC for sm_80 and sm_90: no GPU
//! needed, so CI catches a kernel that does not compile. NVRTC comes from wherever
//! `kernels::cuda::nvrtc` finds it (`scripts/test` installs the pinned PyPI wheels into
//! `.cache/cuda`). The same compiles carry ptxas's report: CI fails on a kernel that spills,
//! cannot launch at its configuration, breaks its budget, or is out of step with the launch
//! table (kernels/src/cuda/launches.rs). Without NVRTC the tests skip with a message, unless
//! `ENGINE_REQUIRE_NVRTC=1` (set by `scripts/test`, hence CI) makes that a failure.

use kernels::cuda::launches::{self, launch};
use kernels::cuda::{self, nvrtc, resources};
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

/// Every kernel file compiles for both architectures, and from the same compiles (ptxas's
/// report comes with the cubin), every kernel has no spills, an entry in the launch table
/// (kernels/src/cuda/launches.rs) that names no missing kernel, fits its launch and meets
/// its budgets. Prints the table `engine kernels resources` prints.
#[test]
fn every_kernel_file_compiles_for_sm80_and_sm90() {
    let stems: Vec<&str> = cuda::sources::SOURCES.iter().map(|(stem, _)| *stem).collect();
    assert!(stems.contains(&"fill") && stems.contains(&"cast"), "build.rs embedded only {stems:?}");
    if !nvrtc_or_skip() {
        return;
    }
    let start = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut modules = Vec::new();
    for compiled in resources::compile_every_file(&ARCHS) {
        let (file, arch, elapsed) = (compiled.file, &compiled.arch, compiled.elapsed);
        match compiled.result {
            Ok((cubin, module)) => {
                eprintln!("ok   {file}.cu {arch}: cubin {} bytes, {} kernels in {elapsed:.2?}", cubin.len(), module.kernels.len());
                modules.push(module);
            }
            Err(e) => {
                eprintln!("FAIL {file}.cu {arch}");
                failures.push(e.to_string());
            }
        }
    }
    eprintln!("compiled in {:.2?}", start.elapsed());
    assert!(failures.is_empty(), "{} compile failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
    let report = resources::check(&modules, launches::LAUNCHES);
    eprintln!("{}", report.table(false));
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    assert_eq!(report.archs, ARCHS);
    if let Err(e) = report.ok() {
        panic!("{e}");
    }
}

/// `--ptxas-options=-v` changes the log, not the code: the two cubins differ only in the
/// note where ptxas records its command line (`.note.nv.tkinfo`, which gains `-v`).
#[test]
fn the_resources_compile_gives_the_same_code() {
    if !nvrtc_or_skip() {
        return;
    }
    let plain = cuda::compile_module("fill", "sm_90").unwrap();
    let (verbose, module) = cuda::compile_module_with_resources("fill", "sm_90").unwrap();
    let (plain, verbose) = (elf_sections(&plain), elf_sections(&verbose));
    let names = |s: &[(String, Vec<u8>)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&plain), names(&verbose));
    for ((name, a), (_, b)) in plain.iter().zip(&verbose) {
        if name == ".note.nv.tkinfo" {
            let text = String::from_utf8_lossy(b);
            assert!(text.contains("-v "), "{text}");
        } else {
            assert!(a == b, "section {name} differs with --ptxas-options=-v");
        }
    }
    assert!(names(&plain).iter().any(|n| n == ".text.fill_f32"), "{:?}", names(&plain));
    let kernels: Vec<&str> = module.kernels.iter().map(|k| k.kernel.as_str()).collect();
    assert_eq!(kernels.len(), 2, "{kernels:?}");
    assert!(kernels.contains(&"fill_f32") && kernels.contains(&"fill_bf16"), "{kernels:?}");
}

/// The (name, contents) of every section of a 64-bit little-endian ELF file (a cubin).
fn elf_sections(elf: &[u8]) -> Vec<(String, Vec<u8>)> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not a 64-bit ELF file");
    let (table, entry, count, names) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| table + i * entry;
    let strings = u64_at(header(names) + 0x18);
    (0..count)
        .map(|i| {
            let h = header(i);
            let name_at = strings + u32_at(h);
            let name_len = elf[name_at..].iter().position(|&b| b == 0).unwrap();
            let name = String::from_utf8_lossy(&elf[name_at..name_at + name_len]).into_owned();
            const NOBITS: usize = 8;
            let (offset, size) = (u64_at(h + 0x18), u64_at(h + 0x20));
            let contents = if u32_at(h + 4) == NOBITS { Vec::new() } else { elf[offset..offset + size].to_vec() };
            (name, contents)
        })
        .collect()
}

#[test]
fn a_kernel_that_spills_fails_the_check() {
    if !nvrtc_or_skip() {
        return;
    }
    let source = include_str!("fixtures/spills.cu");
    let (_, module) = nvrtc::compile_with_resources("spills", source, "sm_90").unwrap();
    let spills = module.kernels.iter().find(|k| k.kernel == "spills_at_32_registers").expect("the fixture's kernel");
    assert!(spills.registers <= 32 && spills.spill_store_bytes > 0 && spills.spill_load_bytes > 0, "{spills:?}");
    let report = resources::check(&[module], &[launch("spills_at_32_registers", 256, 0, "")]);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert!(problem.starts_with("kernel `spills_at_32_registers` (spills.cu, sm_90) spills: "), "{problem}");
    assert!(report.ok().is_err());
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
