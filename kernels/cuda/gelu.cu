// GeLU, tanh approximation (GPT-2's `gelu_new`), forward and backward.
// CPU reference: kernels/src/ops/gelu.rs.
//
//   forward:  out = 0.5 x (1 + tanh(u)) = x * sigmoid(2u),   u = sqrt(2/pi) (x + 0.044715 x^3)
//   backward: dinp = dout * (s + 2 x s (1 - s) du),           s = sigmoid(2u),
//             du = sqrt(2/pi) (1 + 3 * 0.044715 x^2)          (dinp overwrites: activation gradient)
//
// The sigmoid form is the CPU's and is exact; it has no cancellation for negative x, where
// 1 + tanh(u) loses every digit (gelu(-10) ~ -1e-22 would come out as 0 or garbage).
//
// Threads: a grid-stride loop over packs of 16 bytes (8 bf16 or 4 f32) per thread, so every
// warp moves 512 contiguous bytes per load instruction. The vector path is taken only when
// every pointer is 16-byte aligned (uniform over the grid, so no divergence); otherwise, and
// for the last n % PACK elements, one element per thread. Any n, any alignment is correct.
// Memory traffic: forward reads n and writes n elements; backward reads 2n, writes n. Pure
// bandwidth: the math (one expf) is far below the memory time on every GPU we target.
// Precision: fp32 math for both dtypes, one rounding to bf16 at the store.
// Preconditions (launcher checks): same shapes; in-place (out == inp, dinp == dout) is fine,
// each element is read before it is written by the same thread.

#include "common.cuh"

template <typename T>
static __device__ void gelu_fwd(T* out, const T* inp, u64 n) {
    constexpr int P = Pack<T>::N;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 done = 0;
    if (aligned16(out) && aligned16(inp)) {
        const u64 packs = n / P;
        for (u64 i = tid; i < packs; i += stride) {
            Pack<T> x = load_pack(inp + i * P), o;
#pragma unroll
            for (int k = 0; k < P; k++) o.v[k] = from_f32<T>(gelu_fwd_one(to_f32(x.v[k])));
            store_pack(out + i * P, o);
        }
        done = packs * P;
    }
    for (u64 i = done + tid; i < n; i += stride) out[i] = from_f32<T>(gelu_fwd_one(to_f32(inp[i])));
}

template <typename T>
static __device__ void gelu_bwd(T* dinp, const T* inp, const T* dout, u64 n) {
    constexpr int P = Pack<T>::N;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 done = 0;
    if (aligned16(dinp) && aligned16(inp) && aligned16(dout)) {
        const u64 packs = n / P;
        for (u64 i = tid; i < packs; i += stride) {
            Pack<T> x = load_pack(inp + i * P), d = load_pack(dout + i * P), o;
#pragma unroll
            for (int k = 0; k < P; k++) o.v[k] = from_f32<T>(gelu_bwd_one(to_f32(x.v[k]), to_f32(d.v[k])));
            store_pack(dinp + i * P, o);
        }
        done = packs * P;
    }
    for (u64 i = done + tid; i < n; i += stride)
        dinp[i] = from_f32<T>(gelu_bwd_one(to_f32(inp[i]), to_f32(dout[i])));
}

// out (n) = gelu(inp (n))
extern "C" __global__ void gelu_fwd_f32(float* out, const float* inp, u64 n) { gelu_fwd(out, inp, n); }
extern "C" __global__ void gelu_fwd_bf16(__nv_bfloat16* out, const __nv_bfloat16* inp, u64 n) { gelu_fwd(out, inp, n); }

// dinp (n) = dout (n) * gelu'(inp (n))
extern "C" __global__ void gelu_bwd_f32(float* dinp, const float* inp, const float* dout, u64 n) {
    gelu_bwd(dinp, inp, dout, n);
}
extern "C" __global__ void gelu_bwd_bf16(__nv_bfloat16* dinp, const __nv_bfloat16* inp, const __nv_bfloat16* dout, u64 n) {
    gelu_bwd(dinp, inp, dout, n);
}
