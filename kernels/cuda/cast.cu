/*
 * cast: out[i] = convert(inp[i]) for every i < n, between f32 and bf16.
 *
 * f32 -> bf16 rounds to nearest even (as torch's .to(torch.bfloat16) and the CPU
 * reference `half::bf16::from_f32`); NaN stays NaN, values beyond bf16's range become inf.
 * bf16 -> f32 is exact. This is how fp32 master weights become the bf16 working copy.
 *
 * Threads: a grid-stride loop, one element per thread per iteration; consecutive
 * threads touch consecutive elements, so loads and stores coalesce. The op is purely
 * memory-bound (6 bytes per element), so nothing fancier pays.
 * Preconditions: out and inp hold at least n elements and do not overlap.
 */
#include "common.cuh"

extern "C" __global__ void cast_f32_bf16(__nv_bfloat16* out, const float* inp, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        out[i] = __float2bfloat16_rn(inp[i]);
    }
}

extern "C" __global__ void cast_bf16_f32(float* out, const __nv_bfloat16* inp, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        out[i] = __bfloat162float(inp[i]);
    }
}
