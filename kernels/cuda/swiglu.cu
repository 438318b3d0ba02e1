// SwiGLU on a fused [gate | up] projection, forward and backward. CPU reference:
// kernels/src/ops/swiglu.rs.
//
//   forward:  inp (N, 2H) = [a | b];  out (N, H) = a * s * b,  s = sigmoid(a) = 1 / (1 + exp(-a))
//   backward: da = dout * b * s * (1 + a (1 - s));  db = dout * a * s    (dinp overwritten)
//
// Threads: a grid-stride loop over the N x H outputs, one element each (element i of row r
// reads a at r * 2H + i and b at r * 2H + H + i: coalesced in i). fp32 math, one rounding at
// each store. Pure bandwidth (3 or 5 element accesses per output).

#include "common.cuh"

static __device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
static __device__ void swiglu_fwd(T* out, const T* inp, u64 N, u64 H) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x; k < N * H; k += stride) {
        const u64 r = k / H, i = k % H;
        const float a = to_f32(inp[r * 2 * H + i]), b = to_f32(inp[r * 2 * H + H + i]);
        out[k] = from_f32<T>(a * sigmoid_f(a) * b);
    }
}

template <typename T>
static __device__ void swiglu_bwd(T* dinp, const T* dout, const T* inp, u64 N, u64 H) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x; k < N * H; k += stride) {
        const u64 r = k / H, i = k % H;
        const float a = to_f32(inp[r * 2 * H + i]), b = to_f32(inp[r * 2 * H + H + i]), d = to_f32(dout[k]);
        const float s = sigmoid_f(a);
        dinp[r * 2 * H + i] = from_f32<T>(d * b * s * (1.0f + a * (1.0f - s)));
        dinp[r * 2 * H + H + i] = from_f32<T>(d * a * s);
    }
}

// out (N, H) from inp (N, 2H). Grid-stride, block 256.
extern "C" __global__ void __launch_bounds__(256) swiglu_fwd_f32(float* out, const float* inp, u64 N, u64 H) {
    swiglu_fwd(out, inp, N, H);
}
extern "C" __global__ void __launch_bounds__(256) swiglu_fwd_bf16(bf16* out, const bf16* inp, u64 N, u64 H) {
    swiglu_fwd(out, inp, N, H);
}

// dinp (N, 2H) from dout (N, H) and inp (N, 2H). Grid-stride, block 256.
extern "C" __global__ void __launch_bounds__(256) swiglu_bwd_f32(float* dinp, const float* dout, const float* inp,
                                                                 u64 N, u64 H) {
    swiglu_bwd(dinp, dout, inp, N, H);
}
extern "C" __global__ void __launch_bounds__(256) swiglu_bwd_bf16(bf16* dinp, const bf16* dout, const bf16* inp,
                                                                  u64 N, u64 H) {
    swiglu_bwd(dinp, dout, inp, N, H);
}
