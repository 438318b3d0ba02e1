/*
 * fill: out[i] = value for every i < n, in f32 and bf16.
 *
 * Threads: a grid-stride loop, one element per thread per iteration, so any grid
 * covers any n (the launcher caps the grid; n may exceed 2^31). Consecutive threads
 * write consecutive elements: every warp store is one coalesced transaction.
 * Used to poison outputs before tests (NaN) and to set buffers to a constant.
 * Preconditions: out holds at least n elements.
 */
#include "common.cuh"

extern "C" __global__ void fill_f32(float* out, float value, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        out[i] = value;
    }
}

// value arrives as f32 and is rounded to nearest even once per thread (NaN stays NaN).
extern "C" __global__ void fill_bf16(__nv_bfloat16* out, float value, size_t n) {
    const __nv_bfloat16 v = __float2bfloat16_rn(value);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        out[i] = v;
    }
}
