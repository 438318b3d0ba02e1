// Global gradient norm and clip scaling. CPU reference: kernels/src/ops/norm.rs.
//
//   norm = sqrt(sum over tensors of sum x^2)
//   clip: x *= min(1, max_norm / (norm + 1e-6))       (torch.nn.utils.clip_grad_norm_)
//
// Two passes, no atomics, bitwise reproducible for a given list of tensor sizes:
//   norm_squares_<dtype>: block b of the launch for one tensor writes the sum of squares of
//     its grid-stride share to partials[b]; the launcher gives each tensor its own range of
//     partials and a grid size that depends only on that tensor's length.
//   norm_finalize: one block sums every partial in a fixed order and writes sqrt(total).
//   norm_clip_<dtype>: scales a tensor by the clip coefficient computed on the device from
//     that norm, so clipping needs no host round trip.
// Threads (squares): grid-stride over 16-byte packs (8 bf16 / 4 f32) when x is 16-byte
// aligned, plus a scalar tail; per-thread fp32 sum, then warp shuffles and warp 0 over the
// warp sums. Traffic: one read of every gradient (the reduction itself is negligible).
// Precision: fp32 accumulation; the CPU accumulates in f64. All terms are >= 0, so the
// relative error of an fp32 sum of k terms added in a chain of depth d is <= d * 2^-24: here
// d = (elements per thread) + log2(256 * blocks) + log2(1024) + (partials per finalize thread),
// with <= 2048 blocks per tensor, about 250 for 124M parameters, i.e. <= 1.5e-5 worst case on
// the sum and half that on the norm; typical (random rounding) error is ~1e-7 to 1e-6.
// Preconditions (launchers check): block = 256 for norm_squares (any multiple of 32 works),
// 1024 for norm_finalize; partials sized to the total block count.

#include "common.cuh"

template <typename T>
static __device__ void norm_squares(float* partials, const T* x, u64 n) {
    constexpr int P = Pack<T>::N;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    float acc = 0.0f;
    u64 done = 0;
    if (aligned16(x)) {
        const u64 packs = n / P;
        for (u64 i = tid; i < packs; i += stride) {
            Pack<T> v = load_pack(x + i * P);
#pragma unroll
            for (int k = 0; k < P; k++) {
                float f = to_f32(v.v[k]);
                acc += f * f;
            }
        }
        done = packs * P;
    }
    for (u64 i = done + tid; i < n; i += stride) {
        float f = to_f32(x[i]);
        acc += f * f;
    }
    float total = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// partials (gridDim.x) = per-block sums of x (n)^2
extern "C" __global__ void norm_squares_f32(float* partials, const float* x, u64 n) { norm_squares(partials, x, n); }
extern "C" __global__ void norm_squares_bf16(float* partials, const __nv_bfloat16* x, u64 n) { norm_squares(partials, x, n); }

// norm (1) = sqrt(sum partials (count)). grid: 1 block.
extern "C" __global__ void norm_finalize(float* norm, const float* partials, int count) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    float total = block_sum(acc);
    if (threadIdx.x == 0) norm[0] = sqrtf(total);
}

template <typename T>
static __device__ void norm_clip(T* x, u64 n, const float* norm, float max_norm) {
    constexpr int P = Pack<T>::N;
    const float s = fminf(max_norm / (norm[0] + 1e-6f), 1.0f);
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 done = 0;
    if (aligned16(x)) {
        const u64 packs = n / P;
        for (u64 i = tid; i < packs; i += stride) {
            Pack<T> v = load_pack(x + i * P);
#pragma unroll
            for (int k = 0; k < P; k++) v.v[k] = from_f32<T>(to_f32(v.v[k]) * s);
            store_pack(x + i * P, v);
        }
        done = packs * P;
    }
    for (u64 i = done + tid; i < n; i += stride) x[i] = from_f32<T>(to_f32(x[i]) * s);
}

// x (n) *= min(1, max_norm / (norm[0] + 1e-6))
extern "C" __global__ void norm_clip_f32(float* x, u64 n, const float* norm, float max_norm) { norm_clip(x, n, norm, max_norm); }
extern "C" __global__ void norm_clip_bf16(__nv_bfloat16* x, u64 n, const float* norm, float max_norm) {
    norm_clip(x, n, norm, max_norm);
}
