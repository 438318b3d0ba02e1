// Residual add, gradient accumulation and scaling. CPU reference: kernels/src/ops/residual.rs.
//
//   residual_fwd:        out = a + b        (the residual stream; backward is da = db = dout)
//   residual_accumulate: dst += src         (where the gradients of two branches meet)
//   residual_scale:      x *= s             (gradient clipping, loss scaling)
//
// Threads: a grid-stride loop over packs of 16 bytes (8 bf16 or 4 f32) per thread. The vector
// path is taken only when every pointer is 16-byte aligned (a grid-uniform branch); otherwise,
// and for the last n % PACK elements, one element per thread. Any n, any alignment is correct.
// Memory traffic: fwd and accumulate read 2n and write n elements, scale reads and writes n.
// Precision: fp32 math, one rounding to bf16 at the store (a + b in bf16 storage is exactly
// bf16(float(a) + float(b)), the same as the CPU's f32 sum rounded once).
// Preconditions (launcher checks): equal element counts. out may alias a or b (each element is
// read before it is written by the same thread); dst must not partially overlap src.

#include "common.cuh"

// out = a + b; `accumulate` is the same with out == a.
template <typename T>
static __device__ void add(T* out, const T* a, const T* b, u64 n) {
    constexpr int P = Pack<T>::N;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 done = 0;
    if (aligned16(out) && aligned16(a) && aligned16(b)) {
        const u64 packs = n / P;
        for (u64 i = tid; i < packs; i += stride) {
            Pack<T> x = load_pack(a + i * P), y = load_pack(b + i * P), o;
#pragma unroll
            for (int k = 0; k < P; k++) o.v[k] = from_f32<T>(to_f32(x.v[k]) + to_f32(y.v[k]));
            store_pack(out + i * P, o);
        }
        done = packs * P;
    }
    for (u64 i = done + tid; i < n; i += stride) out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

template <typename T>
static __device__ void scale(T* x, float s, u64 n) {
    constexpr int P = Pack<T>::N;
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

// out (n) = a (n) + b (n)
extern "C" __global__ void residual_fwd_f32(float* out, const float* a, const float* b, u64 n) { add(out, a, b, n); }
extern "C" __global__ void residual_fwd_bf16(__nv_bfloat16* out, const __nv_bfloat16* a, const __nv_bfloat16* b, u64 n) {
    add(out, a, b, n);
}

// dst (n) += src (n)
extern "C" __global__ void residual_accumulate_f32(float* dst, const float* src, u64 n) { add(dst, (const float*)dst, src, n); }
extern "C" __global__ void residual_accumulate_bf16(__nv_bfloat16* dst, const __nv_bfloat16* src, u64 n) {
    add(dst, (const __nv_bfloat16*)dst, src, n);
}

// x (n) *= s
extern "C" __global__ void residual_scale_f32(float* x, float s, u64 n) { scale(x, s, n); }
extern "C" __global__ void residual_scale_bf16(__nv_bfloat16* x, float s, u64 n) { scale(x, s, n); }
