// LayerNorm over the last dimension C, eps = 1e-5 (GPT-2), forward, fused residual-add forward,
// and backward. CPU reference: kernels/src/ops/layernorm.rs.
//
//   forward:  mean[n] = sum_i x[n,i] / C;  rstd[n] = 1 / sqrt(sum_i (x[n,i] - mean)^2 / C + eps)
//             out[n,i] = (x[n,i] - mean) * rstd * weight[i] + bias[i]               out (N,C)
//   fused:    residual = a + b (stored, rounded to the storage type), then the forward on it,
//             so it equals layernorm(residual_forward(a, b)) exactly.
//   backward: norm = (x - mean) * rstd, dnorm = dout * weight,
//             dinp = rstd * (dnorm - mean_i(dnorm) - norm * mean_i(dnorm * norm))   (overwrites)
//             dweight += sum_n dout * norm;  dbias += sum_n dout                   (accumulate)
//   mean and rstd (N) are always fp32, saved by the forward for the backward.
//
// Forward threads: one warp per row (grid-stride over rows), each lane walking the row in
// packs of 16 bytes (8 bf16 / 4 f32). Three passes over the row: sum, centred sum of squares
// (the CPU's two-pass variance, no E[x^2] - E[x]^2 cancellation), write. Passes 2 and 3 re-read
// a row this warp just read (<= a few KB), so they hit L1/L2: DRAM traffic is one read of the
// input (two for the fused a, b), one write of out (and of residual), plus 8 bytes per row.
//
// Backward threads: block b owns rows [b*R, b*R + R) (R = rows_per_block <= 64).
//   phase 1: one warp per row computes mean(dnorm) and mean(dnorm * norm) into shared memory;
//   phase 2: each thread owns a set of column packs and walks the block's rows in order,
//            writing dinp and summing dout * norm and dout in registers; it writes the block's
//            partial sums to partials[b] (2C fp32: [dweight | dbias]).
//   layernorm_bwd_reduce then sums the partials over blocks in a fixed order and adds once into
//   dweight/dbias. No float atomics anywhere: the result is bitwise reproducible for a given
//   (N, C, R). Phase 2 re-reads the block's R rows of x and dout (R*C*2 elements) from L2.
//
// Preconditions (launchers check): C >= 1; weight/bias have C elements; partials has
// ceil(N/R) * 2C floats; 1 <= R <= 64. The 16-byte vector path is used when C * sizeof(T) is a
// multiple of 16 and every pointer is 16-byte aligned (checked here, uniform over the grid);
// otherwise a scalar path, same results.

#include "common.cuh"

#define EPS 1e-5f
#define MAX_ROWS_PER_BLOCK 64

// One row, one warp. `a` is the input; with FUSED, the input is a + b, stored into `residual`
// (rounded to T) and normalised from the rounded values.
template <typename T, bool FUSED>
static __device__ void layernorm_fwd_row(T* residual, T* out, float* mean, float* rstd, const T* a, const T* b,
                                         const T* weight, const T* bias, u64 row, int C, bool vec) {
    constexpr int P = Pack<T>::N;
    const int lane = threadIdx.x & 31;
    const T* x = (FUSED ? (const T*)residual : a) + row * C;
    const T* ar = a + row * C;
    const T* br = FUSED ? b + row * C : nullptr;
    T* rr = FUSED ? residual + row * C : nullptr;
    T* o = out + row * C;

    // pass 1: sum (with FUSED, form and store the residual first)
    float sum = 0.0f;
    if (vec) {
        for (int i = lane * P; i < C; i += 32 * P) {
            Pack<T> v = load_pack(ar + i);
            if (FUSED) {
                Pack<T> w = load_pack(br + i);
#pragma unroll
                for (int k = 0; k < P; k++) v.v[k] = from_f32<T>(to_f32(v.v[k]) + to_f32(w.v[k]));
                store_pack(rr + i, v);
            }
#pragma unroll
            for (int k = 0; k < P; k++) sum += to_f32(v.v[k]);
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            T v = ar[i];
            if (FUSED) {
                v = from_f32<T>(to_f32(v) + to_f32(br[i]));
                rr[i] = v;
            }
            sum += to_f32(v);
        }
    }
    const float mu = warp_sum(sum) / (float)C;

    // pass 2: centred sum of squares (each lane re-reads exactly what it wrote, so FUSED is safe)
    float ss = 0.0f;
    if (vec) {
        for (int i = lane * P; i < C; i += 32 * P) {
            Pack<T> v = load_pack(x + i);
#pragma unroll
            for (int k = 0; k < P; k++) {
                float d = to_f32(v.v[k]) - mu;
                ss += d * d;
            }
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            float d = to_f32(x[i]) - mu;
            ss += d * d;
        }
    }
    const float rs = 1.0f / sqrtf(warp_sum(ss) / (float)C + EPS);

    // pass 3: normalise, scale, shift
    if (vec) {
        for (int i = lane * P; i < C; i += 32 * P) {
            Pack<T> v = load_pack(x + i), w = load_pack(weight + i), bb = load_pack(bias + i), r;
#pragma unroll
            for (int k = 0; k < P; k++) r.v[k] = from_f32<T>((to_f32(v.v[k]) - mu) * rs * to_f32(w.v[k]) + to_f32(bb.v[k]));
            store_pack(o + i, r);
        }
    } else {
        for (int i = lane; i < C; i += 32) o[i] = from_f32<T>((to_f32(x[i]) - mu) * rs * to_f32(weight[i]) + to_f32(bias[i]));
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

template <typename T, bool FUSED>
static __device__ void layernorm_fwd(T* residual, T* out, float* mean, float* rstd, const T* a, const T* b,
                                     const T* weight, const T* bias, u64 N, int C) {
    constexpr int P = Pack<T>::N;
    bool vec = (C % P == 0) && aligned16(out) && aligned16(a) && aligned16(weight) && aligned16(bias);
    if (FUSED) vec = vec && aligned16(b) && aligned16(residual);
    const u64 warps = ((u64)gridDim.x * blockDim.x) / 32;
    for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32; row < N; row += warps)
        layernorm_fwd_row<T, FUSED>(residual, out, mean, rstd, a, b, weight, bias, row, C, vec);
}

// out (N,C), mean (N), rstd (N) <- inp (N,C), weight (C), bias (C).  block: multiple of 32.
extern "C" __global__ void layernorm_fwd_f32(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                                             const float* bias, u64 N, int C) {
    layernorm_fwd<float, false>(nullptr, out, mean, rstd, inp, nullptr, weight, bias, N, C);
}
extern "C" __global__ void layernorm_fwd_bf16(__nv_bfloat16* out, float* mean, float* rstd, const __nv_bfloat16* inp,
                                              const __nv_bfloat16* weight, const __nv_bfloat16* bias, u64 N, int C) {
    layernorm_fwd<__nv_bfloat16, false>(nullptr, out, mean, rstd, inp, nullptr, weight, bias, N, C);
}

// residual (N,C) = a + b; out (N,C), mean (N), rstd (N) = layernorm(residual).  block: multiple of 32.
extern "C" __global__ void residual_layernorm_fwd_f32(float* residual, float* out, float* mean, float* rstd, const float* a,
                                                      const float* b, const float* weight, const float* bias, u64 N, int C) {
    layernorm_fwd<float, true>(residual, out, mean, rstd, a, b, weight, bias, N, C);
}
extern "C" __global__ void residual_layernorm_fwd_bf16(__nv_bfloat16* residual, __nv_bfloat16* out, float* mean, float* rstd,
                                                       const __nv_bfloat16* a, const __nv_bfloat16* b,
                                                       const __nv_bfloat16* weight, const __nv_bfloat16* bias, u64 N, int C) {
    layernorm_fwd<__nv_bfloat16, true>(residual, out, mean, rstd, a, b, weight, bias, N, C);
}

template <typename T>
static __device__ void layernorm_bwd(T* dinp, float* partials, const T* dout, const T* inp, const T* weight,
                                     const float* mean, const float* rstd, u64 N, int C, int R) {
    constexpr int P = Pack<T>::N;
    __shared__ float s_mean[MAX_ROWS_PER_BLOCK], s_rstd[MAX_ROWS_PER_BLOCK];
    __shared__ float s_m1[MAX_ROWS_PER_BLOCK], s_m2[MAX_ROWS_PER_BLOCK];
    const bool vec = (C % P == 0) && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(weight);
    const u64 row0 = (u64)blockIdx.x * R;
    const int rows = (int)min((u64)R, N - row0);
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;

    // phase 1: per-row means of dnorm and dnorm * norm
    for (int r = warp; r < rows; r += nwarps) {
        const u64 row = row0 + r;
        const T* x = inp + row * C;
        const T* d = dout + row * C;
        const float mu = mean[row], rs = rstd[row];
        float s1 = 0.0f, s2 = 0.0f;
        if (vec) {
            for (int i = lane * P; i < C; i += 32 * P) {
                Pack<T> xv = load_pack(x + i), dv = load_pack(d + i), wv = load_pack(weight + i);
#pragma unroll
                for (int k = 0; k < P; k++) {
                    float dn = to_f32(dv.v[k]) * to_f32(wv.v[k]);
                    s1 += dn;
                    s2 += dn * (to_f32(xv.v[k]) - mu) * rs;
                }
            }
        } else {
            for (int i = lane; i < C; i += 32) {
                float dn = to_f32(d[i]) * to_f32(weight[i]);
                s1 += dn;
                s2 += dn * (to_f32(x[i]) - mu) * rs;
            }
        }
        s1 = warp_sum(s1);
        s2 = warp_sum(s2);
        if (lane == 0) {
            s_mean[r] = mu;
            s_rstd[r] = rs;
            s_m1[r] = s1 / (float)C;
            s_m2[r] = s2 / (float)C;
        }
    }
    __syncthreads();

    // phase 2: column-owned dinp and partial parameter gradients, rows in order
    float* pw = partials + (u64)blockIdx.x * 2 * C;
    float* pb = pw + C;
    if (vec) {
        for (int i = threadIdx.x * P; i < C; i += blockDim.x * P) {
            float aw[P], ab[P];
#pragma unroll
            for (int k = 0; k < P; k++) aw[k] = ab[k] = 0.0f;
            Pack<T> wv = load_pack(weight + i);
            for (int r = 0; r < rows; r++) {
                const u64 off = (row0 + r) * C + i;
                Pack<T> xv = load_pack(inp + off), dv = load_pack(dout + off), o;
                const float mu = s_mean[r], rs = s_rstd[r], m1 = s_m1[r], m2 = s_m2[r];
#pragma unroll
                for (int k = 0; k < P; k++) {
                    float d = to_f32(dv.v[k]);
                    float norm = (to_f32(xv.v[k]) - mu) * rs;
                    o.v[k] = from_f32<T>(rs * (d * to_f32(wv.v[k]) - m1 - norm * m2));
                    aw[k] += d * norm;
                    ab[k] += d;
                }
                store_pack(dinp + off, o);
            }
#pragma unroll
            for (int k = 0; k < P; k++) {
                pw[i + k] = aw[k];
                pb[i + k] = ab[k];
            }
        }
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            float aw = 0.0f, ab = 0.0f;
            const float w = to_f32(weight[i]);
            for (int r = 0; r < rows; r++) {
                const u64 off = (row0 + r) * C + i;
                const float d = to_f32(dout[off]);
                const float norm = (to_f32(inp[off]) - s_mean[r]) * s_rstd[r];
                dinp[off] = from_f32<T>(s_rstd[r] * (d * w - s_m1[r] - norm * s_m2[r]));
                aw += d * norm;
                ab += d;
            }
            pw[i] = aw;
            pb[i] = ab;
        }
    }
}

// dinp (N,C) =, partials (ceil(N/R), 2C) = per-block [dweight | dbias] sums.
// grid: ceil(N/R) blocks (exactly), block: multiple of 32, R = rows_per_block in 1..=64.
extern "C" __global__ void layernorm_bwd_f32(float* dinp, float* partials, const float* dout, const float* inp,
                                             const float* weight, const float* mean, const float* rstd, u64 N, int C, int R) {
    layernorm_bwd(dinp, partials, dout, inp, weight, mean, rstd, N, C, R);
}
extern "C" __global__ void layernorm_bwd_bf16(__nv_bfloat16* dinp, float* partials, const __nv_bfloat16* dout,
                                              const __nv_bfloat16* inp, const __nv_bfloat16* weight, const float* mean,
                                              const float* rstd, u64 N, int C, int R) {
    layernorm_bwd(dinp, partials, dout, inp, weight, mean, rstd, N, C, R);
}

// dweight (C) += sum_b partials[b, :C];  dbias (C) += sum_b partials[b, C:].
// block (32, 8): threadIdx.x picks one of 32 consecutive columns of [dweight | dbias] (coalesced
// reads of partials), threadIdx.y strides over the blocks; the 8 strided sums are then added in
// y order. The order is fixed by (nblocks, C) alone: deterministic. grid: ceil(2C / 32).
template <typename T>
static __device__ void layernorm_bwd_reduce(T* dweight, T* dbias, const float* partials, int nblocks, int C) {
    __shared__ float s[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (j < 2 * C)
        for (int b = threadIdx.y; b < nblocks; b += 8) acc += partials[(u64)b * 2 * C + j];
    s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < 2 * C) {
        float total = 0.0f;
#pragma unroll
        for (int y = 0; y < 8; y++) total += s[y][threadIdx.x];
        T* dst = j < C ? dweight + j : dbias + (j - C);
        *dst = from_f32<T>(to_f32(*dst) + total);
    }
}

extern "C" __global__ void layernorm_bwd_reduce_f32(float* dweight, float* dbias, const float* partials, int nblocks, int C) {
    layernorm_bwd_reduce(dweight, dbias, partials, nblocks, C);
}
extern "C" __global__ void layernorm_bwd_reduce_bf16(__nv_bfloat16* dweight, __nv_bfloat16* dbias, const float* partials,
                                                     int nblocks, int C) {
    layernorm_bwd_reduce(dweight, dbias, partials, nblocks, C);
}
