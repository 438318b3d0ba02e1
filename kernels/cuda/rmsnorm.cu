// RMSNorm over the last dimension C (Llama), forward and backward. CPU reference:
// kernels/src/ops/rmsnorm.rs.
//
//   forward:  rstd = 1 / sqrt(mean(x^2) + eps);  out = x * rstd * weight
//   backward: g = dout * weight, xhat = x * rstd
//             dinp = rstd * (g - xhat * mean(g * xhat))        (overwrites)
//             dweight += sum over rows of dout * xhat           (accumulates)
//
// Threads: forward and dinp one warp per row, 8 rows per 256-thread block; lanes stride the
// row, fp32 sums by a fixed xor tree (same bits every run). dweight in two passes, no
// atomics: blocks of 32 columns x `rows` rows write fp32 partial sums (thread (x, y) sums
// rows y, y + 16, ... in order, then the 16 in order), then one thread per column adds the
// chunks in order. Precision: fp32 math, one rounding at each store.

#include "common.cuh"

template <typename T>
static __device__ void rmsnorm_fwd(T* out, float* rstd, const T* inp, const T* weight, int N, int C, float eps) {
    const long row = (long)blockIdx.x * 8 + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* x = inp + row * C;
    T* o = out + row * C;
    float ss = 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float v = to_f32(x[i]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    const float rs = 1.0f / sqrtf(ss / (float)C + eps);
    for (int i = lane; i < C; i += 32) o[i] = from_f32<T>(to_f32(x[i]) * rs * to_f32(weight[i]));
    if (lane == 0) rstd[row] = rs;
}

template <typename T>
static __device__ void rmsnorm_bwd(T* dinp, const T* dout, const T* inp, const T* weight, const float* rstd, int N,
                                   int C) {
    const long row = (long)blockIdx.x * 8 + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* x = inp + row * C;
    const T* d = dout + row * C;
    T* di = dinp + row * C;
    const float rs = rstd[row];
    float dot = 0.0f;
    for (int i = lane; i < C; i += 32) dot += to_f32(d[i]) * to_f32(weight[i]) * to_f32(x[i]) * rs;
    dot = warp_sum(dot) / (float)C;
    for (int i = lane; i < C; i += 32)
        di[i] = from_f32<T>(rs * (to_f32(d[i]) * to_f32(weight[i]) - to_f32(x[i]) * rs * dot));
}

template <typename T>
static __device__ void dweight_partial(float* partial, const T* dout, const T* inp, const float* rstd, int N, int C,
                                       int rows) {
    column_chunk_sums(partial, N, C, rows, [&](int m, int n) {
        const long idx = (long)m * C + n;
        return to_f32(dout[idx]) * to_f32(inp[idx]) * rstd[m];
    });
}

// out (N,C), rstd (N) from inp (N,C), weight (C). Grid ceil(N / 8), block 256.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_fwd_f32(float* out, float* rstd, const float* inp,
                                                                  const float* weight, int N, int C, float eps) {
    rmsnorm_fwd(out, rstd, inp, weight, N, C, eps);
}
extern "C" __global__ void __launch_bounds__(256) rmsnorm_fwd_bf16(bf16* out, float* rstd, const bf16* inp,
                                                                   const bf16* weight, int N, int C, float eps) {
    rmsnorm_fwd(out, rstd, inp, weight, N, C, eps);
}

// dinp (N,C) from dout, inp (N,C), weight (C), rstd (N). Grid ceil(N / 8), block 256.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_bwd_f32(float* dinp, const float* dout, const float* inp,
                                                                  const float* weight, const float* rstd, int N, int C) {
    rmsnorm_bwd(dinp, dout, inp, weight, rstd, N, C);
}
extern "C" __global__ void __launch_bounds__(256) rmsnorm_bwd_bf16(bf16* dinp, const bf16* dout, const bf16* inp,
                                                                   const bf16* weight, const float* rstd, int N, int C) {
    rmsnorm_bwd(dinp, dout, inp, weight, rstd, N, C);
}

// partial (ceil(N / rows), C): column sums of dout * inp * rstd over each chunk of rows.
// Grid (ceil(C / 32), ceil(N / rows)), block (32, 16).
extern "C" __global__ void __launch_bounds__(512) rmsnorm_dweight_partial_f32(float* partial, const float* dout,
                                                                              const float* inp, const float* rstd,
                                                                              int N, int C, int rows) {
    dweight_partial(partial, dout, inp, rstd, N, C, rows);
}
extern "C" __global__ void __launch_bounds__(512) rmsnorm_dweight_partial_bf16(float* partial, const bf16* dout,
                                                                               const bf16* inp, const float* rstd,
                                                                               int N, int C, int rows) {
    dweight_partial(partial, dout, inp, rstd, N, C, rows);
}

// dweight[n] += sum over the chunks, in order; dweight fp32 when dweight_f32, else bf16.
// Grid ceil(C / 256), block 256.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_dweight_reduce(void* dweight, int dweight_f32,
                                                                         const float* partial, int C, int chunks) {
    add_column_chunks(dweight, dweight_f32, partial, C, chunks);
}
