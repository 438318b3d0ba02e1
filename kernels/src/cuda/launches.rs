//! Every kernel's launch configuration at the reference shape, GPT-2 124M: T = 1024,
//! C = 768, NH = 12 (HS = 64), V = 50257 (padded Vp = 50304), any B (no kernel's block size
//! or shared memory depends on B), read from its launcher in `kernels/src/ops/*.rs`.
//! `engine kernels resources` and the NVRTC compile test turn it into blocks per SM, and
//! fail when a compiled kernel is missing here or an entry names no kernel: a new or renamed
//! kernel needs a line here. Only the built-in kernels (the embedded `kernels/cuda/*.cu`) are
//! listed: a module registered at run time (`cuda::register_module`) is not checked, and
//! needs no entry (its author can run `resources::check` on it with a table of its own).
//!
//! A kernel launched at several block sizes is entered at the one the reference shape uses
//! (its note says so). A budget (`max_registers`, `min_blocks_per_sm`) is checked on every
//! architecture; write it as `Launch { max_registers: Some(128), ..launch(...) }`.

/// How a kernel is launched at the reference shape, and its optional resource budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The kernel's name as ptxas reports it (the `extern "C"` name).
    pub kernel: &'static str,
    /// Threads per block (x * y * z).
    pub threads: u32,
    /// Dynamic shared memory per block, bytes.
    pub dynamic_shared_bytes: u32,
    /// Where the configuration comes from, when it is not a fixed block size.
    pub note: &'static str,
    /// Registers per thread at most, on every architecture.
    pub max_registers: Option<u32>,
    /// Resident blocks per SM at least, on every architecture.
    pub min_blocks_per_sm: Option<u32>,
}

/// An entry with no budget.
pub const fn launch(kernel: &'static str, threads: u32, dynamic_shared_bytes: u32, note: &'static str) -> Launch {
    Launch { kernel, threads, dynamic_shared_bytes, note, max_registers: None, min_blocks_per_sm: None }
}

const GRID_STRIDE: &str = "grid-stride loop, 256 threads";
const FLOAT: u32 = 4;

/// ops/matmul.rs `TC_SMEM_BYTES`: the bf16 GEMMs' three cp.async stages.
const MATMUL_TC_SMEM: u32 = crate::ops::matmul::gpu::TC_SMEM_BYTES as u32;

/// ops/attention.rs's shared memory of the bf16 kernels at head size `hs`.
const fn tc_fwd_smem_bytes(hs: u32) -> u32 {
    crate::ops::attention::gpu::tc_fwd_smem_bytes(hs as usize) as u32
}
const fn tc_bwd_smem_bytes(hs: u32) -> u32 {
    crate::ops::attention::gpu::tc_bwd_smem_bytes(hs as usize) as u32
}

/// ops/attention.rs's cached attention: its block size, and its shared memory at HS = 64
/// over a full context of T = 1024.
const CACHED_THREADS: u32 = crate::ops::attention::gpu::CACHED_THREADS;
const CACHED_SMEM: u32 = crate::ops::attention::gpu::cached_smem_bytes(64, 1024) as u32;

/// Issue 14's budget for attention at HS = 64: at most 128 registers, 2 blocks per SM.
const fn attention_budget(l: Launch) -> Launch {
    Launch { max_registers: Some(128), min_blocks_per_sm: Some(2), ..l }
}

/// Every kernel of every `kernels/cuda/*.cu`, grouped by file in file order.
pub const LAUNCHES: &[Launch] = &[
    // adamw.cu
    launch("adamw_step_bf16", 256, 0, GRID_STRIDE),
    launch("adamw_step_f32", 256, 0, GRID_STRIDE),
    // attention.cu (ops/attention.rs). f32: R = 64 rows a tile at HS = 64, 4R threads, forward
    // 3R(HS + 4) floats, backward 4R(HS + 4) + 2R floats of dynamic shared memory.
    launch("attention_fwd_f32", 256, 3 * 64 * (64 + 4) * FLOAT, "HS = 64: R = 64"),
    launch("attention_bwd_f32", 256, (4 * 64 * (64 + 4) + 2 * 64) * FLOAT, "HS = 64: R = 64"),
    // bf16: one kernel per head size, 128 threads, `tc_fwd_smem_bytes` / `tc_bwd_smem_bytes`
    // for its HS (HS = 64 at the reference shape; 32 and 128 at their own).
    launch("attention_fwd_bf16_hs32", 128, tc_fwd_smem_bytes(32), "HS = 32"),
    launch("attention_bwd_bf16_hs32", 128, tc_bwd_smem_bytes(32), "HS = 32"),
    attention_budget(launch("attention_fwd_bf16_hs64", 128, tc_fwd_smem_bytes(64), "HS = 64")),
    attention_budget(launch("attention_bwd_bf16_hs64", 128, tc_bwd_smem_bytes(64), "HS = 64")),
    launch("attention_fwd_bf16_hs128", 128, tc_fwd_smem_bytes(128), "HS = 128"),
    launch("attention_bwd_bf16_hs128", 128, tc_bwd_smem_bytes(128), "HS = 128"),
    launch("attention_bwd_delta_bf16", 256, 0, "a warp a row"),
    launch("attention_dq_reduce_bf16", 256, 0, "a thread per 8 elements"),
    // cast.cu
    launch("cast_bf16_f32", 256, 0, GRID_STRIDE),
    launch("cast_f32_bf16", 256, 0, GRID_STRIDE),
    // crossentropy.cu
    launch("crossentropy_mean_f32", 1024, 0, "one block"),
    launch("crossentropy_fwd_bf16", 1024, 0, "one block a row: Vp = 50304 caps it at 32 warps"),
    launch("crossentropy_fwd_f32", 1024, 0, "one block a row: Vp = 50304 caps it at 32 warps"),
    // embedding.cu
    launch("embedding_fwd_bf16", 256, 0, GRID_STRIDE),
    launch("embedding_fwd_f32", 256, 0, GRID_STRIDE),
    launch("embedding_fwd_nopos_bf16", 256, 0, GRID_STRIDE),
    launch("embedding_fwd_nopos_f32", 256, 0, GRID_STRIDE),
    launch("embedding_bwd_dwpe_bf16", 256, 0, GRID_STRIDE),
    launch("embedding_bwd_dwpe_f32", 256, 0, GRID_STRIDE),
    launch("embedding_bwd_count", 256, 0, GRID_STRIDE),
    launch("embedding_bwd_scan", 1024, 0, "one block"),
    launch("embedding_bwd_place", 128, 0, "4 warps"),
    launch("embedding_bwd_dwte_bf16", 96, 0, "ceil(C / 8 / 32) warps, at most 4: C = 768 gives 3"),
    launch("embedding_bwd_dwte_f32", 128, 0, "ceil(C / 4 / 32) warps, at most 4: C = 768 gives 4"),
    // fill.cu
    launch("fill_bf16", 256, 0, GRID_STRIDE),
    launch("fill_f32", 256, 0, GRID_STRIDE),
    // gelu.cu
    launch("gelu_fwd_bf16", 256, 0, GRID_STRIDE),
    launch("gelu_fwd_f32", 256, 0, GRID_STRIDE),
    launch("gelu_bwd_bf16", 256, 0, GRID_STRIDE),
    launch("gelu_bwd_f32", 256, 0, GRID_STRIDE),
    // kv_expand.cu (ops/kv_expand.rs)
    launch("kv_expand_fwd_bf16", 256, 0, GRID_STRIDE),
    launch("kv_expand_fwd_f32", 256, 0, GRID_STRIDE),
    launch("kv_expand_bwd_bf16", 256, 0, GRID_STRIDE),
    launch("kv_expand_bwd_f32", 256, 0, GRID_STRIDE),
    // kv_cache.cu (ops/attention.rs `gpu::attention_cached_forward`): the append, and the
    // attention a block per (new row, head, batch) with q and the scores of start + n <= T
    // positions in f32 shared memory (at the reference shape, a full context: T = 1024).
    launch("kv_cache_append_bf16", 256, 0, GRID_STRIDE),
    launch("kv_cache_append_f32", 256, 0, GRID_STRIDE),
    launch("attention_cached_fwd_bf16", CACHED_THREADS, CACHED_SMEM, "HS = 64, start + n = 1024"),
    launch("attention_cached_fwd_f32", CACHED_THREADS, CACHED_SMEM, "HS = 64, start + n = 1024"),
    // layernorm.cu
    launch("layernorm_fwd_bf16", 256, 0, "grid-stride, a warp a row"),
    launch("layernorm_fwd_f32", 256, 0, "grid-stride, a warp a row"),
    launch("residual_layernorm_fwd_bf16", 256, 0, "grid-stride, a warp a row"),
    launch("residual_layernorm_fwd_f32", 256, 0, "grid-stride, a warp a row"),
    launch("layernorm_bwd_bf16", 256, 0, "32 rows a block"),
    launch("layernorm_bwd_f32", 256, 0, "32 rows a block"),
    launch("layernorm_bwd_reduce_bf16", 256, 0, "block (32, 8)"),
    launch("layernorm_bwd_reduce_f32", 256, 0, "block (32, 8)"),
    // matmul.cu (ops/matmul.rs): bf16 on tensor cores in 128 x 128 tiles with three cp.async
    // stages in `TC_SMEM_BYTES` of dynamic shared memory, fp32 in 64 x 64 tiles.
    launch("matmul_fwd_bf16", 256, MATMUL_TC_SMEM, "128 x 128 tiles"),
    launch("matmul_fwd_f32", 256, 0, "64 x 64 tiles"),
    launch("matmul_bwd_bf16", 256, MATMUL_TC_SMEM, "128 x 128 tiles, split-K from the shape"),
    launch("matmul_split_reduce", 256, 0, "a thread an element"),
    launch("matmul_bwd_f32", 256, 0, "64 x 64 tiles"),
    launch("matmul_bias_partial_bf16", 512, 0, "block (32, 16), 256 rows a block"),
    launch("matmul_bias_partial_f32", 512, 0, "block (32, 16), 256 rows a block"),
    launch("matmul_bias_reduce", 256, 0, "a thread a column"),
    // multi_tensor.cu (ops/multi_tensor.rs): blocks over a table of tensors
    launch("multi_norm_squares", 256, 0, "blocks over the tensor table"),
    launch("multi_adamw", 256, 0, "blocks over the tensor table"),
    launch("multi_zero", 256, 0, "blocks over the tensor table"),
    // norm.cu
    launch("norm_squares_bf16", 256, 0, "up to 2048 blocks a tensor"),
    launch("norm_squares_f32", 256, 0, "up to 2048 blocks a tensor"),
    launch("norm_finalize", 1024, 0, "one block"),
    launch("norm_clip_bf16", 256, 0, GRID_STRIDE),
    launch("norm_clip_f32", 256, 0, GRID_STRIDE),
    // residual.cu
    launch("residual_fwd_bf16", 256, 0, GRID_STRIDE),
    launch("residual_fwd_f32", 256, 0, GRID_STRIDE),
    launch("residual_accumulate_bf16", 256, 0, GRID_STRIDE),
    launch("residual_accumulate_f32", 256, 0, GRID_STRIDE),
    launch("residual_scale_bf16", 256, 0, GRID_STRIDE),
    launch("residual_scale_f32", 256, 0, GRID_STRIDE),
    // rmsnorm.cu (ops/rmsnorm.rs): a warp per row, 8 rows a block; dweight in (32, 16) blocks
    launch("rmsnorm_fwd_bf16", 256, 0, "a warp a row"),
    launch("rmsnorm_fwd_f32", 256, 0, "a warp a row"),
    launch("rmsnorm_bwd_bf16", 256, 0, "a warp a row"),
    launch("rmsnorm_bwd_f32", 256, 0, "a warp a row"),
    launch("rmsnorm_dweight_partial_bf16", 512, 0, "32 columns x 256 rows"),
    launch("rmsnorm_dweight_partial_f32", 512, 0, "32 columns x 256 rows"),
    launch("rmsnorm_dweight_reduce", 256, 0, "a thread a column"),
    // rope.cu (ops/rope.rs)
    launch("rope_bf16", 256, 0, GRID_STRIDE),
    launch("rope_f32", 256, 0, GRID_STRIDE),
    // swiglu.cu (ops/swiglu.rs)
    launch("swiglu_fwd_bf16", 256, 0, GRID_STRIDE),
    launch("swiglu_fwd_f32", 256, 0, GRID_STRIDE),
    launch("swiglu_bwd_bf16", 256, 0, GRID_STRIDE),
    launch("swiglu_bwd_f32", 256, 0, GRID_STRIDE),
];
