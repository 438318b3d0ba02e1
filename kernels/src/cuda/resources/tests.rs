use super::*;
use crate::cuda::launches::{launch, LAUNCHES};
use crate::cuda::occupancy::Limit;

/// Lines as NVRTC 13.0 writes them: a front-end warning, the file's gmem and cmem line
/// (sm_80), a kernel with static shared memory, one that spills (`__maxnreg__(32)`) with a
/// `__noinline__` helper reported twice, and a template kernel (mangled name).
const LOG: &str = "\
spill.cu(1): warning #177-D: variable \"unused\" was declared but never referenced
  extern \"C\" __global__ void w(float* p) { int unused = 3; }
                                               ^

Remark: The warnings can be suppressed with \"-diag-suppress <warning-number>\"

ptxas info    : 76 bytes gmem, 152 bytes cmem[4]
ptxas info    : Compiling entry function 'embedding_bwd_scan' for 'sm_80'
ptxas info    : Function properties for embedding_bwd_scan
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 128 bytes smem
ptxas info    : Compile time = 13.387 ms
ptxas info    : Function properties for _Z6helperPfi
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'spills' for 'sm_80'
ptxas info    : Function properties for spills
ptxas         .     992 bytes stack frame, 740 bytes spill stores, 1324 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 992 bytes cumulative stack size, 364 bytes cmem[0]
ptxas info    : Compile time = 38.672 ms
ptxas info    : Function properties for _Z6helperPfi
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z5templILi128EEvPf' for 'sm_80'
ptxas info    : Function properties for _Z5templILi128EEvPf
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 1 barriers, 512 bytes smem
ptxas info    : Compile time = 1.509 ms
";

fn parse(log: &str) -> Result<ModuleResources> {
    parse_ptxas_log("spill.cu", "sm_80", log)
}

fn parse_error(log: &str) -> String {
    match parse(log) {
        Err(e @ Error::PtxasReport { .. }) => e.to_string(),
        other => panic!("expected Error::PtxasReport, got {other:?}"),
    }
}

#[test]
fn reads_every_form_of_the_report() {
    let m = parse(LOG).unwrap();
    assert_eq!(m.global_bytes, 76);
    let names: Vec<&str> = m.kernels.iter().map(|k| k.kernel.as_str()).collect();
    assert_eq!(names, ["embedding_bwd_scan", "spills", "_Z5templILi128EEvPf"]);
    let scan = &m.kernels[0];
    assert_eq!((scan.registers, scan.barriers, scan.shared_static_bytes, scan.stack_frame_bytes), (32, 1, 128, 0));
    assert!(!scan.spills());
    assert_eq!((scan.file.as_str(), scan.arch.as_str()), ("spill.cu", "sm_80"));
    let spills = &m.kernels[1];
    assert_eq!(
        (spills.stack_frame_bytes, spills.spill_store_bytes, spills.spill_load_bytes, spills.cumulative_stack_bytes, spills.const_bytes),
        (992, 740, 1324, 992, 364)
    );
    assert!(spills.spills());
    assert_eq!((m.kernels[2].registers, m.kernels[2].shared_static_bytes), (12, 512));
    // The helper is reported after two entries; it is kept once.
    assert_eq!(
        m.device_functions,
        [FunctionProperties { name: "_Z6helperPfi".into(), stack_frame_bytes: 0, spill_store_bytes: 0, spill_load_bytes: 0 }]
    );
    assert_eq!(m.warnings.len(), 1);
    assert!(m.warnings[0].starts_with("spill.cu(1): warning #177-D") && m.warnings[0].ends_with("<warning-number>\""), "{:?}", m.warnings);
}

#[test]
fn a_line_it_does_not_know_is_an_error_naming_it() {
    let log = LOG.replace("used 1 barriers, 512 bytes smem", "used 1 barriers, 512 bytes smem, 8 bytes lmem");
    let msg = parse_error(&log);
    assert_eq!(
        msg,
        "cannot read ptxas's report for spill.cu (sm_80): log line 25 `ptxas info    : Used 12 registers, used 1 barriers, 512 bytes smem, \
         8 bytes lmem`: unknown item `8 bytes lmem`"
    );
    let msg = parse_error(&LOG.replace("ptxas info    : Compile time = 1.509 ms", "ptxas info    : Compiling function 'f' for 'sm_80'"));
    assert!(msg.contains("log line 26 `ptxas info    : Compiling function 'f' for 'sm_80'`: not a line of ptxas's report that"), "{msg}");
    let msg = parse_error(&format!("{LOG}something else\n"));
    assert!(msg.contains("log line 27 `something else`: not a line of ptxas's report"), "{msg}");
    let msg = parse_error(&LOG.replace("740 bytes spill stores", "740 bytes spill sto"));
    assert!(msg.contains("log line 17") && msg.contains("expected `N bytes stack frame, N bytes spill stores, N bytes spill loads`"), "{msg}");
    let msg = parse_error(&LOG.replace("Used 32 registers, used 0", "Used many registers, used 0"));
    assert!(msg.contains("log line 18") && msg.contains("expected `Used N registers`, got `Used many registers`"), "{msg}");
}

#[test]
fn an_incomplete_report_is_an_error() {
    let msg = parse_error(&LOG.replace("ptxas info    : Used 12 registers, used 1 barriers, 512 bytes smem\n", ""));
    assert!(msg.ends_with("ptxas reported no `Used N registers` line for the entry `_Z5templILi128EEvPf`"), "{msg}");
    let msg = parse_error(&LOG.replace(
        "ptxas info    : Function properties for spills\nptxas         .     992 bytes stack frame, 740 bytes spill stores, 1324 bytes spill loads\n",
        "ptxas info    : Function properties for spills\n",
    ));
    assert!(msg.contains("log line 16: `Function properties for spills` is not followed by its stack frame line"), "{msg}");
    let msg = parse_error(&LOG.replace("'spills' for 'sm_80'", "'spills' for 'sm_90'"));
    assert!(msg.contains("log line 15") && msg.contains("compiled for sm_90, but the compile asked for sm_80"), "{msg}");
    let msg = parse_error("warning: something\n");
    assert!(msg.contains("the log has no ptxas lines (was --ptxas-options=-v passed?)"), "{msg}");
    let msg = parse_error(&LOG.replace("ptxas info    : Compiling entry function '_Z5templILi128EEvPf' for 'sm_80'\n", ""));
    assert!(
        msg.ends_with("log line 24 `ptxas info    : Used 12 registers, used 1 barriers, 512 bytes smem`: a second `Used` line for `spills`"),
        "{msg}"
    );
}

/// A module of the given kernels: (name, registers, static smem, spill stores).
fn module(file: &str, arch: &str, kernels: &[(&str, u32, u32, u32)]) -> ModuleResources {
    ModuleResources {
        file: file.into(),
        arch: arch.into(),
        kernels: kernels
            .iter()
            .map(|&(name, registers, smem, spills)| KernelResources {
                registers,
                shared_static_bytes: smem,
                spill_store_bytes: spills,
                spill_load_bytes: spills,
                ..empty_kernel(file, name, arch)
            })
            .collect(),
        device_functions: Vec::new(),
        global_bytes: 0,
        warnings: Vec::new(),
    }
}

#[test]
fn a_clean_set_has_no_problems_and_gets_blocks_per_sm() {
    let launches = [launch("a_fwd", 256, 0, ""), launch("b_fwd", 128, 49152, "")];
    let modules = [module("a.cu", "sm_80", &[("a_fwd", 32, 0, 0)]), module("b.cu", "sm_80", &[("b_fwd", 128, 1024, 0)])];
    let report = check(&modules, &launches);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.ok().is_ok());
    let blocks: Vec<(u32, Vec<Limit>)> = report.rows.iter().map(|r| r.occupancy.clone().map(|o| (o.blocks_per_sm, o.limited_by)).unwrap()).collect();
    // b: 128 registers x 4 warps is 4 blocks by registers; 50176 + 1024 bytes of shared
    // memory allow 3 (167936 / 51200).
    assert_eq!(blocks, [(8, vec![Limit::Threads, Limit::Registers]), (3, vec![Limit::SharedMemory])]);
    let table = report.table(true);
    assert!(table.starts_with("### sm_80\n\n| kernel | threads | dynamic smem (B) | registers |"), "{table}");
    assert!(table.contains("| b_fwd | 128 | 49152 | 128 | 1024 | 0 | 0 | 0 | 0 | 3 | 12 | shared memory |"), "{table}");
    let text = report.table(false);
    assert!(text.lines().any(|l| l.starts_with("a_fwd") && l.ends_with("threads+registers")), "{text}");
}

#[test]
fn spills_a_missing_entry_and_a_stale_one_are_problems_naming_the_kernel() {
    let launches = [launch("a_fwd", 256, 0, ""), launch("gone_fwd", 256, 0, "")];
    let mut m = module("a.cu", "sm_90", &[("a_fwd", 32, 0, 8), ("new_fwd", 32, 0, 0)]);
    m.device_functions.push(FunctionProperties { name: "_Z1fv".into(), stack_frame_bytes: 8, spill_store_bytes: 4, spill_load_bytes: 0 });
    // The same kernels on sm_80 add their spill, once more, but not the table's problems.
    let mut m80 = m.clone();
    m80.arch = "sm_80".into();
    m80.kernels.iter_mut().for_each(|k| k.arch = "sm_80".into());
    m80.device_functions.clear();
    let report = check(&[m, m80], &launches);
    assert_eq!(report.archs, ["sm_90", "sm_80"]);
    assert_eq!(
        report.problems,
        [
            "device function `_Z1fv` (a.cu, sm_90) spills: 4 bytes spill stores, 0 bytes spill loads",
            "kernel `a_fwd` (a.cu, sm_90) spills: 8 bytes spill stores, 8 bytes spill loads (32 registers)",
            "kernel `new_fwd` (a.cu) is not in the launch table: add its threads per block and dynamic shared memory at the reference \
             shape to LAUNCHES in kernels/src/cuda/launches.rs",
            "the launch table (kernels/src/cuda/launches.rs) names `gone_fwd`, which no kernel file defines: renamed or removed?",
            "kernel `a_fwd` (a.cu, sm_80) spills: 8 bytes spill stores, 8 bytes spill loads (32 registers)",
        ]
    );
    let msg = report.ok().unwrap_err().to_string();
    assert!(msg.starts_with("5 kernel resource check(s) failed:\n  device function `_Z1fv`"), "{msg}");
    // The kernel with no entry is still in the table, without blocks per SM.
    assert!(report.rows.iter().any(|r| r.resources.kernel == "new_fwd" && r.occupancy.is_none()));
}

#[test]
fn budgets_duplicates_and_launches_that_cannot_fit_are_problems() {
    let launches = [
        Launch { max_registers: Some(64), min_blocks_per_sm: Some(2), ..launch("big_fwd", 256, 0, "") },
        launch("huge_fwd", 1024, 0, ""),
        launch("twice_fwd", 256, 0, ""),
        launch("twice_fwd", 256, 0, ""),
    ];
    let modules = [
        module("a.cu", "sm_80", &[("big_fwd", 170, 0, 0), ("huge_fwd", 72, 0, 0), ("twice_fwd", 16, 0, 0)]),
        module("b.cu", "sm_80", &[("twice_fwd", 16, 0, 0)]),
    ];
    let report = check(&modules, &launches);
    assert_eq!(
        report.problems,
        [
            "the launch table (kernels/src/cuda/launches.rs) lists `twice_fwd` twice",
            "kernel `big_fwd` (sm_80) fits 1 block(s) per SM at 256 threads and 0 bytes of shared memory a block, below its budget of 2 \
             (limited by registers)",
            "kernel `big_fwd` (sm_80) uses 170 registers, over its budget of 64",
            "kernel `huge_fwd` (sm_80, 72 registers) cannot launch at 1024 threads and 0 bytes of shared memory a block: too many registers",
            "kernel `twice_fwd` is defined in both a.cu and b.cu (sm_80)",
        ]
    );
}

#[test]
fn an_architecture_without_limits_is_a_problem() {
    let report = check(&[module("a.cu", "sm_86", &[("a_fwd", 32, 0, 0)])], &[launch("a_fwd", 256, 0, "")]);
    assert_eq!(report.problems, ["no occupancy figures for sm_86 (known: sm_80, sm_90)"]);
    // report() refuses it before compiling anything.
    let msg = super::report(&["sm_80", "sm_75"]).unwrap_err().to_string();
    assert_eq!(msg, "kernel resources: no occupancy figures for sm_75 (known: sm_80, sm_90)");
}

#[test]
fn the_launch_table_is_launchable_on_every_architecture() {
    for (i, l) in LAUNCHES.iter().enumerate() {
        assert!(!LAUNCHES[..i].iter().any(|m| m.kernel == l.kernel), "{} twice", l.kernel);
        assert!((32..=1024).contains(&l.threads) && l.threads % 32 == 0, "{}: {} threads", l.kernel, l.threads);
        for arch in ARCHS {
            // With the fewest registers, every entry must fit one block.
            assert!(occupancy(arch, 16, l.threads, l.dynamic_shared_bytes).blocks_per_sm >= 1, "{} on {}", l.kernel, arch.arch);
        }
    }
}
