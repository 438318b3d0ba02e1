//! `ldmatrix` and `mma.sync.m16n8k16` against the fragment tables of the PTX ISA (PTX ISA
//! 8.7, "Warp-level matrix load instruction: ldmatrix" and "Matrix Fragments for
//! mma.m16n8k16 with floating point type"), typed here from the ISA text and not from any
//! emulation. On a GPU this checks the hardware against the ISA; on the CUDA simulator it
//! checks the simulator's emulation of both instructions, which every tensor-core kernel
//! (matmul, attention) relies on. The probes are kernels/tests/fixtures/fragments.cu.
//!
//! Without a GPU it prints `skipped: ...` (with `ENGINE_REQUIRE_GPU=1` it fails).

mod common;

use kernels::cuda::{self, CudaDevice, CudaFunction, LaunchConfig, PushKernelArg};

const SOURCE: &str = include_str!("fixtures/fragments.cu");

fn load(dev: &CudaDevice, kernel: &str) -> CudaFunction {
    let cubin = cuda::nvrtc::compile_cubin("fragments", SOURCE, dev.arch()).unwrap();
    let module = dev.context().load_module(cudarc::nvrtc::Ptx::from_binary(cubin)).unwrap();
    module.load_function(kernel).unwrap()
}

fn one_warp() -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 }
}

/// groupID and threadID_in_group of a lane, as the ISA names them.
fn group(lane: usize) -> (usize, usize) {
    (lane >> 2, lane % 4)
}

/// ldmatrix: "each thread in a warp ... receives ... For .m8n8 ... a row of the matrix is
/// held by 4 consecutive threads, each holding 2 consecutive elements": thread t holds
/// row t/4, columns 2*(t%4) and 2*(t%4)+1 of each matrix; with .trans the matrix is read
/// column-major, so the same thread holds rows 2*(t%4), 2*(t%4)+1 of column t/4. Register
/// j comes from matrix j (whose rows the lanes 8j..8j+7 addressed).
#[test]
fn ldmatrix_matches_the_isa_fragment_table() {
    let Some(dev) = common::gpu_or_skip() else { return };
    let f = load(&dev, "ldmatrix_probe");
    let pitch = 16usize;
    let id = |m: usize, r: usize, c: usize| (m * 64 + r * 8 + c + 1) as u16;
    let mut tile = vec![0xFFFFu16; 4 * 8 * pitch];
    for m in 0..4 {
        for r in 0..8 {
            for c in 0..8 {
                tile[(m * 8 + r) * pitch + c] = id(m, r, c);
            }
        }
    }
    let tile_d = dev.stream().clone_htod(&tile).unwrap();
    let mut out = dev.htod(&vec![0xDEAD_BEEFu32; 352]).unwrap();
    let pitch_arg = pitch as i32;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&mut out).arg(&tile_d).arg(&pitch_arg);
    // SAFETY: matches fragments.cu `ldmatrix_probe(unsigned* out, const unsigned short* tile,
    // int pitch)`; out holds 352 words, tile 4 * 8 * pitch elements.
    unsafe { launch.launch(one_warp()) }.unwrap();
    let got = dev.dtoh(&out).unwrap();
    let pack = |lo: u16, hi: u16| lo as u32 | (hi as u32) << 16;
    for lane in 0..32 {
        let (row, pair) = (lane / 4, 2 * (lane % 4));
        for j in 0..4 {
            let plain = pack(id(j, row, pair), id(j, row, pair + 1));
            let trans = pack(id(j, pair, row), id(j, pair + 1, row));
            assert_eq!(got[lane * 4 + j], plain, "x4 lane {lane} register {j}");
            assert_eq!(got[128 + lane * 4 + j], trans, "x4.trans lane {lane} register {j}");
            if j < 2 {
                assert_eq!(got[256 + lane * 2 + j], plain, "x2 lane {lane} register {j}");
            }
            if j == 0 {
                assert_eq!(got[320 + lane], plain, "x1 lane {lane}");
            }
        }
    }
}

fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// mma.m16n8k16, .bf16 A/B, .f32 C/D. From the ISA's fragment tables:
/// - A (16 x 16, .row): a0..a7 in four .b32 registers (two elements each, a0 in the low
///   half); row = groupID for a0, a1, a4, a5 and groupID + 8 otherwise; col =
///   threadID_in_group * 2 + (i & 1), plus 8 for i >= 4.
/// - B (16 x 8, .col): b0..b3 in two registers; row (k) = threadID_in_group * 2 + (i & 1),
///   plus 8 for i >= 2; col (n) = groupID.
/// - C, D (16 x 8): c0..c3; row = groupID for i < 2, else groupID + 8; col =
///   threadID_in_group * 2 + (i & 1).
#[test]
fn mma_m16n8k16_matches_the_isa_fragment_tables() {
    let Some(dev) = common::gpu_or_skip() else { return };
    let f = load(&dev, "mma_probe");
    // Small integers: exact in bf16, products and sums exact in f32, so any misplaced
    // element changes the result.
    let a = |i: usize, k: usize| ((i * 3 + k * 5 + i * k) % 9) as f32 - 4.0;
    let b = |k: usize, n: usize| ((k * 2 + n * 7 + k * n) % 7) as f32 - 3.0;
    let c = |i: usize, n: usize| (i * 8 + n) as f32 * 0.5;
    let mut a_regs = vec![0u32; 128];
    let mut b_regs = vec![0u32; 64];
    let mut c_regs = vec![0f32; 128];
    for lane in 0..32 {
        let (g, t) = group(lane);
        let a_elem = |i: usize| {
            let row = if i < 2 || (4..6).contains(&i) { g } else { g + 8 };
            let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
            bf16_bits(a(row, col)) as u32
        };
        for r in 0..4 {
            a_regs[lane * 4 + r] = a_elem(2 * r) | a_elem(2 * r + 1) << 16;
        }
        let b_elem = |i: usize| bf16_bits(b(t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, g)) as u32;
        for r in 0..2 {
            b_regs[lane * 2 + r] = b_elem(2 * r) | b_elem(2 * r + 1) << 16;
        }
        for i in 0..4 {
            c_regs[lane * 4 + i] = c(if i < 2 { g } else { g + 8 }, t * 2 + (i & 1));
        }
    }
    let (a_d, b_d, c_d) = (dev.htod(&a_regs).unwrap(), dev.htod(&b_regs).unwrap(), dev.htod(&c_regs).unwrap());
    let mut d_d = dev.htod(&vec![f32::NAN; 128]).unwrap();
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&mut d_d).arg(&a_d).arg(&b_d).arg(&c_d);
    // SAFETY: matches fragments.cu `mma_probe(float* d, const unsigned* a, const unsigned* b,
    // const float* c)` with 128, 128, 64 and 128 elements.
    unsafe { launch.launch(one_warp()) }.unwrap();
    let d = dev.dtoh(&d_d).unwrap();
    for lane in 0..32 {
        let (g, t) = group(lane);
        for i in 0..4 {
            let (row, col) = (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1));
            let want = c(row, col) + (0..16).map(|k| a(row, k) * b(k, col)).sum::<f32>();
            assert_eq!(d[lane * 4 + i], want, "lane {lane} d{i} = D[{row}][{col}]");
        }
    }
}

/// The probes are valid PTX for the real compiler too (checked without a GPU, like every
/// kernels/cuda file in nvrtc_compile.rs).
#[test]
fn the_probes_compile_for_sm80_and_sm90() {
    if let Err(e) = cuda::nvrtc::nvrtc() {
        assert_ne!(std::env::var("ENGINE_REQUIRE_NVRTC").as_deref(), Ok("1"), "{e}");
        eprintln!("skipped: NVRTC not found ({e})");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let cubin = cuda::nvrtc::compile_cubin("fragments", SOURCE, arch).unwrap();
        assert!(!cubin.is_empty(), "{arch}");
    }
}
