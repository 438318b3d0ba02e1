// The shared CUDA prelude: every kernels/cuda/*.cu starts with #include "common.cuh" (NVRTC
// gets it as a named header; it is part of every kernel's cache key). What more than one
// kernel file needs: dtype conversions, 16-byte vector packs, a block sum, two-pass column
// sums, the AdamW element update, the tensor-core building blocks (cp.async, ldmatrix,
// mma.sync) and the GeLU formula.

#pragma once

#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;
typedef unsigned long long u64;

// ---- dtype conversions (fp32 math, one round-to-nearest-even to bf16 at the store) ----------

static __device__ __forceinline__ float to_f32(float x) { return x; }
static __device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <typename T> static __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

static __device__ __forceinline__ float load_f(const bf16* p) { return __bfloat162float(*p); }
static __device__ __forceinline__ float load_f(const float* p) { return *p; }
static __device__ __forceinline__ void store_f(bf16* p, float v) { *p = __float2bfloat16_rn(v); }
static __device__ __forceinline__ void store_f(float* p, float v) { *p = v; }

// ---- 16 bytes of T, loaded and stored as one 128-bit access ----------------------------------

template <typename T> struct alignas(16) Pack {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};
template <typename T> static __device__ __forceinline__ Pack<T> load_pack(const T* p) {
    Pack<T> r;
    *reinterpret_cast<int4*>(&r) = *reinterpret_cast<const int4*>(p);
    return r;
}
template <typename T> static __device__ __forceinline__ void store_pack(T* p, const Pack<T>& r) {
    *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&r);
}
static __device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<u64>(p) & 15) == 0; }

// ---- reductions ------------------------------------------------------------------------------

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (a multiple of 32 threads, at most 1024) in a fixed order: a xor tree
// in each warp, then thread 0 adds the warp sums in order. Valid in thread 0 only.
static __device__ float block_sum(float v) {
    __shared__ float s_warp[32];
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    if (lane == 0) s_warp[warp] = v;
    __syncthreads();
    float total = 0.0f;
    if (threadIdx.x == 0)
        for (int w = 0; w < nwarps; w++) total += s_warp[w];
    return total;
}

// ---- column sums in two deterministic passes (bias and norm weight gradients) ----------------
// Pass 1, grid (ceil(N / 32), ceil(M / rows)), block (32, 16): block (x, y) sums value(m, n)
// over rows [y rows, (y + 1) rows) of its 32 columns (thread (tx, ty) rows ty, ty + 16, ...
// in order, then the 16 partials in order) into partial[y * N + n].
template <typename F>
static __device__ void column_chunk_sums(float* partial, int M, int N, int rows, F value) {
    __shared__ float part[16][33];
    const int n = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * rows, r1 = min(M, r0 + rows);
    float sum = 0.0f;
    if (n < N) {
        for (int m = r0 + threadIdx.y; m < r1; m += 16) sum += value(m, n);
    }
    part[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && n < N) {
        float total = 0.0f;
#pragma unroll
        for (int y = 0; y < 16; y++) total += part[y][threadIdx.x];
        partial[(long)blockIdx.y * N + n] = total;
    }
}

// Pass 2, one thread per column: dst[n] += sum over chunks y = 0 .. chunks - 1, in order, of
// partial[y * N + n]; dst is fp32 when dst_f32, else bf16.
static __device__ void add_column_chunks(void* dst, int dst_f32, const float* partial, int N, int chunks) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float total = 0.0f;
    for (int y = 0; y < chunks; y++) total += partial[(long)y * N + n];
    if (dst_f32) ((float*)dst)[n] += total;
    else {
        bf16* d = (bf16*)dst;
        d[n] = __float2bfloat16_rn(__bfloat162float(d[n]) + total);
    }
}

// ---- AdamW, one element (torch.optim.AdamW; CPU reference kernels/src/ops/adamw.rs) -----------
// m += (1 - beta1)(g - m); v = beta2 v + (1 - beta2) g^2; p *= decay;
// p -= step_size m / (sqrt(v) / bc2_sqrt + eps); the bf16 working copy (if any) rounded from p.
// One definition for adamw.cu and multi_tensor.cu, so both give the same bits.
// Returns whether the new parameter and moments are all finite (the trainer's guard).
static __device__ __forceinline__ bool adamw_element(float* param, bf16* copy, float* m, float* v, u64 i, float g,
                                                     float one_minus_beta1, float beta2, float one_minus_beta2,
                                                     float step_size, float bc2_sqrt, float eps, float decay) {
    float mi = m[i], vi = v[i], p = param[i];
    mi += one_minus_beta1 * (g - mi);
    vi = beta2 * vi + one_minus_beta2 * g * g;
    p *= decay;
    p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
    if (copy != nullptr) copy[i] = __float2bfloat16_rn(p);
    return isfinite(p) && isfinite(mi) && isfinite(vi);
}

// ---- tensor cores: cp.async, ldmatrix, mma.sync m16n8k16 bf16 -> f32 --------------------------

static __device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// 16-byte async copy global -> shared; bytes beyond src_bytes are zero-filled.
static __device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// All but the newest group of this thread's copies have landed.
static __device__ __forceinline__ void cp_async_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::); }

static __device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
static __device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
// d += a (16 x 16, row) * b (16 x 8, col), fragments as in the PTX ISA.
static __device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- GeLU, tanh approximation (GPT-2's gelu_new), as the CPU reference (ops/gelu.rs) -----------
//   forward:  x * sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   backward: d * (s + 2 x s (1 - s) du),  s = sigmoid(2u),  du = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// One definition for gelu.cu and the matmul epilogue, so the fused GeLU and gelu_forward agree
// bit for bit.

#define SQRT_2_OVER_PI 0.7978845608f
#define GELU_COEF 0.044715f

static __device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

static __device__ __forceinline__ float gelu_fwd_one(float x) {
    float u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x);
    return x * sigmoidf(2.0f * u);
}

static __device__ __forceinline__ float gelu_bwd_one(float x, float d) {
    float u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x);
    float s = sigmoidf(2.0f * u);
    float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEF * x * x);
    return d * (s + 2.0f * x * s * (1.0f - s) * du);
}
