//! The C ABI, called as cudarc calls it. Compiles use a stand-in runtime header (below), so
//! these tests check this crate only; `engine_kernels_with_the_real_runtime` (ignored by
//! default) compiles the engine's kernels against the real one.

use super::*;
use std::ffi::c_void;
use std::path::PathBuf;

pub(crate) static STAND_IN_INCLUDE: OnceLock<PathBuf> = OnceLock::new();

/// Just enough of `cudasim/runtime.h` for the kernels below, run as one thread of one
/// block; the table records name, bound and address, so a kernel the translator registers
/// but the source does not declare fails to compile.
const STAND_IN_RUNTIME: &str = r#"#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
struct cudasim_dim3 { unsigned x, y, z; };
static const cudasim_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
namespace cudasim {
struct operand { void* p; const char* constraint; };
template <class T> operand ptx_out(T& x, const char* c) { return {&x, c}; }
template <class T> operand ptx_inout(T& x, const char* c) { return {&x, c}; }
template <class T> operand ptx_in(const T& x, const char* c) { return {(void*)&x, c}; }
inline void inline_ptx(const char* tmpl, std::initializer_list<operand> ops) {
    if (std::strcmp(tmpl, "mov.b32 %0, %1;") != 0 || ops.size() != 2) std::abort();
    std::memcpy(ops.begin()[0].p, ops.begin()[1].p, 4);
}
inline void* dynamic_smem() { alignas(16) static unsigned char smem[256]; return smem; }
}
struct cudasim_test_entry { const char* name; unsigned max_threads; void* entry; };
#define CUDASIM_KERNELS_BEGIN extern "C" __attribute__((visibility("default"))) const cudasim_test_entry cudasim_test_table[] = {
#define CUDASIM_KERNEL(name, bounds) {#name, (unsigned)(bounds), (void*)&name},
#define CUDASIM_KERNELS_END {nullptr, 0, nullptr}};
"#;

const KERNELS: &str = r#"// test kernels
extern "C" __global__ void __launch_bounds__(128) fill(float* out, float v, size_t n) {
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = v;
}
extern "C" __global__ void copy_bits(unsigned* out, const unsigned* in) {
    extern __shared__ __align__(16) unsigned smem[];
    unsigned r;
    asm volatile("mov.b32 %0, %1;" : "=r"(r) : "r"(in[0]));
    smem[0] = r;
    out[0] = smem[0];
}
template <typename T> __global__ void tmpl(T* x) { *x = T(); }
template __global__ void tmpl<float>(float*);
"#;

fn stand_in() {
    STAND_IN_INCLUDE.get_or_init(|| {
        // Named by its contents and written by rename: every run shares one directory, and a
        // test process running at the same time never reads a half-written header.
        let hash = STAND_IN_RUNTIME.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let dir = std::env::temp_dir().join(format!("cudasim-nvrtc-test-include-{hash:016x}"));
        let header = dir.join("cudasim/runtime.h");
        if std::fs::read_to_string(&header).ok().as_deref() != Some(STAND_IN_RUNTIME) {
            std::fs::create_dir_all(dir.join("cudasim")).unwrap();
            let tmp = dir.join(format!("cudasim/.runtime.h.{}", std::process::id()));
            std::fs::write(&tmp, STAND_IN_RUNTIME).unwrap();
            std::fs::rename(&tmp, &header).unwrap();
        }
        dir
    });
}

fn create(src: &str, name: Option<&str>) -> nvrtcProgram {
    let src = CString::new(src).unwrap();
    let name = name.map(|n| CString::new(n).unwrap());
    let mut prog = std::ptr::null_mut();
    let r = unsafe { nvrtcCreateProgram(&mut prog, src.as_ptr(), name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()), 0, std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, NVRTC_SUCCESS);
    assert!(!prog.is_null());
    prog
}

fn compile(prog: nvrtcProgram, opts: &[&str]) -> nvrtcResult {
    stand_in();
    let opts: Vec<CString> = opts.iter().map(|o| CString::new(*o).unwrap()).collect();
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    unsafe { nvrtcCompileProgram(prog, ptrs.len() as c_int, ptrs.as_ptr()) }
}

fn log(prog: nvrtcProgram) -> String {
    let mut size = 0;
    assert_eq!(unsafe { nvrtcGetProgramLogSize(prog, &mut size) }, NVRTC_SUCCESS);
    let mut buf = vec![1u8; size];
    assert_eq!(unsafe { nvrtcGetProgramLog(prog, buf.as_mut_ptr().cast()) }, NVRTC_SUCCESS);
    assert_eq!(buf.pop(), Some(0), "the log is NUL-terminated");
    String::from_utf8(buf).unwrap()
}

fn cubin(prog: nvrtcProgram) -> Vec<u8> {
    let mut size = 0;
    assert_eq!(unsafe { nvrtcGetCUBINSize(prog, &mut size) }, NVRTC_SUCCESS);
    let mut buf = vec![0u8; size];
    assert_eq!(unsafe { nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }, NVRTC_SUCCESS);
    buf
}

fn destroy(mut prog: nvrtcProgram) {
    assert_eq!(unsafe { nvrtcDestroyProgram(&mut prog) }, NVRTC_SUCCESS);
    assert!(prog.is_null());
}

/// A handle no create ever returns (ids are odd).
fn bogus() -> nvrtcProgram {
    0x1000 as nvrtcProgram
}

#[test]
fn version_and_archs() {
    let (mut major, mut minor) = (0, 0);
    unsafe {
        assert_eq!(nvrtcVersion(&mut major, &mut minor), NVRTC_SUCCESS);
        assert_eq!((major, minor), (13, 0));
        assert_eq!(nvrtcVersion(std::ptr::null_mut(), &mut minor), NVRTC_ERROR_INVALID_INPUT);
        let mut n = 0;
        assert_eq!(nvrtcGetNumSupportedArchs(&mut n), NVRTC_SUCCESS);
        let mut archs = vec![0; n as usize];
        assert_eq!(nvrtcGetSupportedArchs(archs.as_mut_ptr()), NVRTC_SUCCESS);
        assert_eq!(archs, [80, 86, 89, 90]);
        assert_eq!(nvrtcGetNumSupportedArchs(std::ptr::null_mut()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcGetSupportedArchs(std::ptr::null_mut()), NVRTC_ERROR_INVALID_INPUT);
    }
}

#[test]
fn error_strings() {
    let s = |r: u32| unsafe { CStr::from_ptr(nvrtcGetErrorString(r)) }.to_str().unwrap().to_string();
    assert_eq!(s(NVRTC_SUCCESS as u32), "NVRTC_SUCCESS");
    assert_eq!(s(NVRTC_ERROR_COMPILATION as u32), "NVRTC_ERROR_COMPILATION");
    assert_eq!(s(NVRTC_ERROR_TIME_TRACE_FILE_WRITE_FAILED as u32), "NVRTC_ERROR_TIME_TRACE_FILE_WRITE_FAILED");
    assert_eq!(s(12345), "NVRTC_ERROR unknown");
}

#[test]
fn null_and_unknown_handles() {
    let mut null: nvrtcProgram = std::ptr::null_mut();
    let mut size = 0usize;
    let mut buf = [0 as c_char; 8];
    let mut lowered: *const c_char = std::ptr::null();
    unsafe {
        assert_eq!(nvrtcDestroyProgram(std::ptr::null_mut()), NVRTC_ERROR_INVALID_PROGRAM);
        assert_eq!(nvrtcDestroyProgram(&mut null), NVRTC_ERROR_INVALID_PROGRAM);
        for p in [null, bogus()] {
            let mut p2 = p;
            assert_eq!(nvrtcDestroyProgram(&mut p2), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcCompileProgram(p, 0, std::ptr::null()), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcGetProgramLogSize(p, &mut size), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcGetProgramLog(p, buf.as_mut_ptr()), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcGetCUBINSize(p, &mut size), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcGetCUBIN(p, buf.as_mut_ptr()), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcGetPTXSize(p, &mut size), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcGetPTX(p, buf.as_mut_ptr()), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcGetLTOIRSize(p, &mut size), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcAddNameExpression(p, c"k".as_ptr()), NVRTC_ERROR_INVALID_PROGRAM);
            assert_eq!(nvrtcGetLoweredName(p, c"k".as_ptr(), &mut lowered), NVRTC_ERROR_INVALID_PROGRAM);
        }
    }
    // A destroyed handle is as unknown as a made-up one.
    let p = create("int x;", None);
    let mut stale = p;
    destroy(p);
    unsafe {
        assert_eq!(nvrtcDestroyProgram(&mut stale), NVRTC_ERROR_INVALID_PROGRAM);
        assert_eq!(nvrtcGetProgramLogSize(stale, &mut size), NVRTC_ERROR_INVALID_PROGRAM);
    }
}

#[test]
fn create_and_compile_check_their_inputs() {
    let mut prog = std::ptr::null_mut();
    let header = [c"int h;".as_ptr()];
    let name = [c"h.h".as_ptr()];
    let null_name = [std::ptr::null::<c_char>()];
    unsafe {
        let np = std::ptr::null();
        assert_eq!(nvrtcCreateProgram(std::ptr::null_mut(), c"".as_ptr(), np, 0, std::ptr::null(), std::ptr::null()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcCreateProgram(&mut prog, np, np, 0, std::ptr::null(), std::ptr::null()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcCreateProgram(&mut prog, c"".as_ptr(), np, -1, std::ptr::null(), std::ptr::null()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcCreateProgram(&mut prog, c"".as_ptr(), np, 1, std::ptr::null(), name.as_ptr()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcCreateProgram(&mut prog, c"".as_ptr(), np, 1, header.as_ptr(), std::ptr::null()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcCreateProgram(&mut prog, c"".as_ptr(), np, 1, header.as_ptr(), null_name.as_ptr()), NVRTC_ERROR_INVALID_INPUT);
        assert!(prog.is_null(), "no program is made by a failed create");
    }
    let p = create("int x;", None);
    let mut size = 0;
    let mut lowered: *const c_char = std::ptr::null();
    unsafe {
        assert_eq!(nvrtcCompileProgram(p, -1, std::ptr::null()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcCompileProgram(p, 1, std::ptr::null()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcCompileProgram(p, 1, null_name.as_ptr()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcGetProgramLogSize(p, std::ptr::null_mut()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcGetProgramLog(p, std::ptr::null_mut()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcAddNameExpression(p, std::ptr::null()), NVRTC_ERROR_INVALID_INPUT);
        // Before a compile: an empty log, no image, no lowered names.
        assert_eq!(nvrtcGetProgramLogSize(p, &mut size), NVRTC_SUCCESS);
        assert_eq!(size, 1);
        assert_eq!(nvrtcGetCUBINSize(p, &mut size), NVRTC_ERROR_INVALID_PROGRAM);
        assert_eq!(nvrtcGetPTXSize(p, &mut size), NVRTC_ERROR_INVALID_PROGRAM);
        assert_eq!(nvrtcGetLoweredName(p, c"x".as_ptr(), &mut lowered), NVRTC_ERROR_NO_LOWERED_NAMES_BEFORE_COMPILATION);
        assert_eq!(nvrtcGetCUBINSize(p, std::ptr::null_mut()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcGetCUBIN(p, std::ptr::null_mut()), NVRTC_ERROR_INVALID_INPUT);
    }
    destroy(p);
}

#[test]
fn unknown_options_are_invalid_option_with_a_log() {
    let p = create("int x;", Some("o.cu"));
    assert_eq!(compile(p, &["--gpu-architecture=sm_90", "--frobnicate"]), NVRTC_ERROR_INVALID_OPTION);
    assert!(log(p).contains("unrecognized option `--frobnicate`"), "{}", log(p));
    assert_eq!(compile(p, &["-arch=sm_75"]), NVRTC_ERROR_INVALID_OPTION);
    assert!(log(p).contains("sm_75"), "{}", log(p));
    destroy(p);
}

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}

#[repr(C)]
struct TestEntry {
    name: *const c_char,
    max_threads: u32,
    entry: *const c_void,
}

#[test]
fn compiles_a_kernel_to_a_loadable_image() {
    let p = create(KERNELS, Some("kernels.cu"));
    let opts = ["--gpu-architecture=sm_90", "--include-path=/nonexistent/cuda/include", "--std=c++17", "-default-device", "-lineinfo"];
    assert_eq!(compile(p, &opts), NVRTC_SUCCESS, "{}", log(p));
    assert_eq!(log(p), "");
    let image = cubin(p);
    assert_eq!(&image[..8], b"CUDASIM1");
    assert_eq!(u32::from_le_bytes(image[8..12].try_into().unwrap()), 1, "abi");
    let flags = u32::from_le_bytes(image[12..16].try_into().unwrap());
    assert_eq!(flags, if compile::asan_requested() { compile::IMAGE_ASAN } else { 0 });
    assert_eq!(u64::from_le_bytes(image[16..24].try_into().unwrap()) as usize, image.len() - 24);
    assert_eq!(&image[24..28], b"\x7fELF");

    // The PTX is the same image, NUL-terminated like PTX text; no LTO IR.
    let mut size = 0;
    unsafe {
        assert_eq!(nvrtcGetPTXSize(p, &mut size), NVRTC_SUCCESS);
        assert_eq!(size, image.len() + 1);
        let mut ptx = vec![1u8; size];
        assert_eq!(nvrtcGetPTX(p, ptx.as_mut_ptr().cast()), NVRTC_SUCCESS);
        assert_eq!(ptx.pop(), Some(0));
        assert_eq!(ptx, image);
        assert_eq!(nvrtcGetLTOIRSize(p, &mut size), NVRTC_SUCCESS);
        assert_eq!(size, 0);
        assert_eq!(nvrtcGetOptiXIRSize(p, &mut size), NVRTC_SUCCESS);
        assert_eq!(size, 0);
    }
    destroy(p);
    if flags & compile::IMAGE_ASAN != 0 {
        return; // an ASan object does not load into this process
    }

    // Load the shared object and run the kernels (one thread, as the stand-in runs them).
    let so = std::env::temp_dir().join(format!("cudasim-nvrtc-test-{}.so", std::process::id()));
    std::fs::write(&so, &image[24..]).unwrap();
    let path = CString::new(so.to_str().unwrap()).unwrap();
    unsafe {
        let handle = dlopen(path.as_ptr(), 2 /* RTLD_NOW */);
        let _ = std::fs::remove_file(&so);
        assert!(!handle.is_null(), "{:?}", CStr::from_ptr(dlerror()));
        let table = dlsym(handle, c"cudasim_test_table".as_ptr()) as *const TestEntry;
        assert!(!table.is_null());
        let mut entries = Vec::new();
        let mut e = table;
        while !(*e).name.is_null() {
            entries.push((CStr::from_ptr((*e).name).to_str().unwrap().to_string(), (*e).max_threads, (*e).entry));
            e = e.add(1);
        }
        assert_eq!(entries.iter().map(|(n, b, _)| (n.as_str(), *b)).collect::<Vec<_>>(), [("fill", 128), ("copy_bits", 1024)]);
        let fill: unsafe extern "C" fn(*mut f32, f32, usize) = std::mem::transmute(entries[0].2);
        let mut out = [0f32; 5];
        fill(out.as_mut_ptr(), 2.5, 4);
        assert_eq!(out, [2.5, 2.5, 2.5, 2.5, 0.0]);
        assert!(dlsym(handle, c"copy_bits".as_ptr()).is_null(), "kernels are reached through the table, not exported");
        let copy_bits: unsafe extern "C" fn(*mut u32, *const u32) = std::mem::transmute(entries[1].2);
        let (mut o, i) = (0u32, 0xdead_beefu32);
        copy_bits(&mut o, &i);
        assert_eq!(o, 0xdead_beef);
    }
}

#[test]
fn the_broken_fixture_fails_with_its_file_and_line() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/broken.cu")).unwrap();
    let p = create(&src, Some("broken.cu"));
    assert_eq!(compile(p, &["--gpu-architecture=sm_90"]), NVRTC_ERROR_COMPILATION);
    let line = 1 + src.lines().position(|l| l.contains("undeclared_identifier_for_the_test")).unwrap();
    let l = log(p);
    assert!(l.contains(&format!("broken.cu:{line}:")), "{l}");
    assert!(l.contains("undeclared_identifier_for_the_test"), "{l}");
    let mut size = 0;
    assert_eq!(unsafe { nvrtcGetCUBINSize(p, &mut size) }, NVRTC_ERROR_INVALID_PROGRAM);
    destroy(p);
}

#[test]
fn translation_errors_are_compilation_errors() {
    let p = create("\n#define SYNC() asm volatile(\"bar.sync 0;\")\n", Some("m.cu"));
    assert_eq!(compile(p, &[]), NVRTC_ERROR_COMPILATION);
    assert!(log(p).starts_with("m.cu:2: error: the CUDA simulator does not support inline asm inside a #define"), "{}", log(p));
    destroy(p);
    // Without a name the program is NVRTC's `default_program`.
    let p = create("int x = ;", None);
    assert_eq!(compile(p, &[]), NVRTC_ERROR_COMPILATION);
    assert!(log(p).contains("default_program:1:"), "{}", log(p));
    destroy(p);
}

#[test]
fn headers_from_create_program() {
    let src = c"#include \"sub/util.h\"\n#include <plain.h>\nextern \"C\" __global__ void k(unsigned* o, const unsigned* i) { copy(o, i); *o += PLAIN; }\n";
    let headers = [c"__device__ void copy(unsigned* o, const unsigned* i) { asm(\"mov.b32 %0, %1;\" : \"=r\"(*o) : \"r\"(*i)); }".as_ptr(), c"#define PLAIN 1".as_ptr()];
    let names = [c"sub/util.h".as_ptr(), c"plain.h".as_ptr()];
    let mut p = std::ptr::null_mut();
    unsafe {
        assert_eq!(nvrtcCreateProgram(&mut p, src.as_ptr(), c"h.cu".as_ptr(), 2, headers.as_ptr(), names.as_ptr()), NVRTC_SUCCESS);
    }
    assert_eq!(compile(p, &["-arch", "sm_80"]), NVRTC_SUCCESS, "{}", log(p));
    destroy(p);

    let bad = [c"../escape.h".as_ptr()];
    unsafe {
        assert_eq!(nvrtcCreateProgram(&mut p, c"".as_ptr(), std::ptr::null(), 1, headers.as_ptr(), bad.as_ptr()), NVRTC_SUCCESS);
    }
    assert_eq!(compile(p, &[]), NVRTC_ERROR_COMPILATION);
    assert!(log(p).contains("`../escape.h`"), "{}", log(p));
    destroy(p);
}

#[test]
fn name_expressions() {
    let p = create(KERNELS, Some("n.cu"));
    let mut lowered: *const c_char = std::ptr::null();
    unsafe {
        for e in [c"fill", c"&copy_bits", c"tmpl<float>"] {
            assert_eq!(nvrtcAddNameExpression(p, e.as_ptr()), NVRTC_SUCCESS);
        }
        assert_eq!(compile(p, &["-arch=sm_90"]), NVRTC_SUCCESS, "{}", log(p));
        assert!(log(p).contains("name expression `tmpl<float>` is not an extern \"C\" __global__ function"), "{}", log(p));
        assert_eq!(nvrtcAddNameExpression(p, c"fill".as_ptr()), NVRTC_ERROR_NO_NAME_EXPRESSIONS_AFTER_COMPILATION);
        assert_eq!(nvrtcGetLoweredName(p, c"fill".as_ptr(), &mut lowered), NVRTC_SUCCESS);
        assert_eq!(CStr::from_ptr(lowered), c"fill");
        assert_eq!(nvrtcGetLoweredName(p, c"&copy_bits".as_ptr(), &mut lowered), NVRTC_SUCCESS);
        assert_eq!(CStr::from_ptr(lowered), c"copy_bits");
        assert_eq!(nvrtcGetLoweredName(p, c"tmpl<float>".as_ptr(), &mut lowered), NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID);
        assert_eq!(nvrtcGetLoweredName(p, c"copy_bits".as_ptr(), &mut lowered), NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID, "never added");
        assert_eq!(nvrtcGetLoweredName(p, c"fill".as_ptr(), std::ptr::null_mut()), NVRTC_ERROR_INVALID_INPUT);
        assert_eq!(nvrtcGetLoweredName(p, std::ptr::null(), &mut lowered), NVRTC_ERROR_INVALID_INPUT);
    }
    destroy(p);
}

#[test]
fn compiles_from_many_threads() {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let src = format!("extern \"C\" __global__ void k{t}(int* x) {{ *x = {t}; }}\n");
                let p = create(&src, Some("t.cu"));
                assert_eq!(compile(p, &["-arch=sm_86"]), NVRTC_SUCCESS, "{}", log(p));
                let image = cubin(p);
                destroy(p);
                image
            })
        })
        .collect();
    for t in threads {
        let image = t.join().unwrap();
        assert_eq!(&image[..8], b"CUDASIM1");
    }
}

#[test]
fn a_missing_compiler_says_to_install_gxx() {
    stand_in();
    let options = options::Options::default();
    let input = compile::Input {
        source: "int x;",
        file_name: "x.cu",
        headers: &[],
        options: &options,
        cxx: &["/nonexistent/bin/c++".to_string()],
        sim_include: STAND_IN_INCLUDE.get().unwrap(),
        asan: false,
    };
    let e = compile::compile(&input).unwrap_err();
    assert!(e.contains("/nonexistent/bin/c++") && e.contains("install g++"), "{e}");
}

#[test]
fn image_header_layout() {
    let image = compile::image(b"\x7fELFbody", compile::IMAGE_ASAN);
    assert_eq!(image.len(), 24 + 8);
    assert_eq!(&image[..8], b"CUDASIM1");
    assert_eq!(&image[8..12], &1u32.to_le_bytes());
    assert_eq!(&image[12..16], &1u32.to_le_bytes());
    assert_eq!(&image[16..24], &8u64.to_le_bytes());
    assert_eq!(&image[24..], b"\x7fELFbody");
}

/// The engine's kernels against the real `cudasim/runtime.h` (another part of the
/// simulator, so not run by default): `cargo test -p cuda-sim-nvrtc -- --ignored`.
#[test]
#[ignore]
fn engine_kernels_with_the_real_runtime() {
    let include = compile::sim_include_dir();
    assert!(include.join("cudasim/runtime.h").is_file(), "no runtime header in {}", include.display());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cuda");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let options = options::parse(&["--gpu-architecture=sm_90".into(), "--std=c++17".into(), "-default-device".into(), "-lineinfo".into()]).unwrap();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")) {
        let source = std::fs::read_to_string(path).unwrap();
        let file_name = path.file_name().unwrap().to_str().unwrap();
        let cxx = compile::compiler();
        let input = compile::Input { source: &source, file_name, headers: &[], options: &options, cxx: &cxx, sim_include: &include, asan: false };
        let out = compile::compile(&input).unwrap_or_else(|log| panic!("{file_name}:\n{log}"));
        assert_eq!(&out.image[..8], b"CUDASIM1");
        eprintln!("{file_name}: {} kernels, {} bytes", out.kernels.len(), out.image.len());
    }
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/broken.cu")).unwrap();
    let cxx = compile::compiler();
    let input = compile::Input { source: &source, file_name: "broken.cu", headers: &[], options: &options, cxx: &cxx, sim_include: &include, asan: false };
    let log = compile::compile(&input).unwrap_err();
    let line = 1 + source.lines().position(|l| l.contains("undeclared_identifier_for_the_test")).unwrap();
    assert!(log.contains(&format!("broken.cu:{line}:")) && log.contains("undeclared_identifier_for_the_test"), "{log}");
}
