// Causal multi-head self-attention, flash style: no (T x T) matrix is ever stored.
//
// Layouts (kernels/src/ops/attention.rs is the reference):
//   qkv   (B, T, 3C)  [q | k | v], each C = NH * HS wide, head h in columns h*HS .. (h+1)*HS
//   out   (B, T, C)   head h's output in columns h*HS ..
//   saved (f32)       [lse: (B, NH, T)] then [o: (B, NH, T, HS)]  = B*NH*T*(HS+1) floats
//                     lse_i = log sum_{j<=i} exp(s_ij), s = q k^T / sqrt(HS) (natural log);
//                     o = the attention output in fp32, per head contiguous (see backward)
//   dqkv  (B, T, 3C)  overwritten (activation gradient)
//
// forward:  per (b, h, tile of R query rows), loop over key tiles j0 <= the tile's last row:
//           S = Q K^T (scaled), online softmax (running max m and sum l per row, rescaling the
//           partial output by exp(m_old - m_new)), O += P V; at the end O /= l, lse = m + log l.
// backward: P is recomputed per tile from the saved lse: P_ij = exp(s_ij - lse_i);
//           dP = dO V^T, D_i = sum_j P_ij dP_ij = dO_i . O_i (that is why o is saved),
//           dS = P * (dP - D), dQ = dS K / sqrt(HS), dK = dS^T Q / sqrt(HS), dV = P^T dO.
//           One launch runs two kinds of blocks (blockIdx.z & 1): "dq" blocks own R query rows
//           and loop over key tiles; "dkdv" blocks own R key rows and loop over query tiles.
//           Each output element has exactly one writer and is summed in a fixed order, so
//           the backward is deterministic (no atomics). The price: S and dP are computed
//           twice (7 instead of 5 tile products per (query tile, key tile) pair).
//
// Threads: 4 per row, 4R threads per block. Thread (row = tid / 4, sub = tid % 4) computes
// the scores of its row against tile columns sub, sub + 4, sub + 8, ... and owns HS/4 of the
// row's output columns, 4*(sub + 4*c4) + {0..3}, so its shared-memory reads are float4s
// that the four lanes of a row take from four adjacent 16-byte chunks (no bank conflicts;
// tile rows are padded to HS + 4 floats so the 8 rows a warp reads start in distinct banks).
// The softmax of a row lives in its 4 lanes: max and sum by two xor-shuffles, and the
// probabilities reach the P V product by __shfl_sync, not through shared memory.
// Tiles are R x R with R = 64 for HS <= 64 and R = 32 for HS = 128 (shared memory).
//
// Precision: tiles are converted to fp32 in shared memory and everything accumulates in fp32
// on the CUDA cores (FMA), in the bf16 and the fp32 kernels alike; bf16 is only the storage
// format of qkv, out, dout and dqkv. Scores are kept in the log2 domain (q pre-multiplied by
// log2(e) / sqrt(HS)) so every exponential is one exp2f.
// This is the correctness-first landing: no tensor cores yet (mma.sync for S, P V and the
// backward products is the next step; the fp32 kernels would keep this path).
//
// Preconditions (the launcher checks): HS in {32, 64, 128}; any T >= 1 (partial tiles are
// zero-filled and masked); grid (ceil(T / R), NH, B) for the forward and (ceil(T / R), NH, 2B)
// for the backward, blockDim 4R, dynamic shared memory as `attention_smem_bytes` below:
//   forward  (R + 2R) * (HS + 4) floats   (Q, K, V tiles)
//   backward  4R * (HS + 4) + 2R floats   (Q, dO, K, V tiles, lse and D of the query tile)
// which exceeds 48 KB for HS >= 64, so the launcher raises the kernel's dynamic shared
// memory limit (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES).
//
// Memory traffic: the forward reads Q once and each K/V tile once per query tile (from L2:
// a head's K and V are 2 T HS elements, 256 KB at T = 1024, HS = 64 in fp32-equivalent),
// writes out, lse and o once. Work per block grows with its query tile index, so blocks
// are issued heaviest first.

#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float load_f(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ void store_f(bf16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }

// rows r0 .. r0+R of a (T x HS) head slice with row stride ld, times `scale`, into s[R][HS+4];
// rows >= T are zero.
template <typename T, int HS, int R>
__device__ __forceinline__ void load_tile(float* s, const T* __restrict__ g, long ld, int r0, int t_len, float scale) {
    constexpr int SLD = HS + 4;
    for (int idx = threadIdx.x; idx < R * HS; idx += 4 * R) {
        int r = idx / HS, d = idx % HS;
        int gr = r0 + r;
        s[r * SLD + d] = gr < t_len ? load_f(g + (long)gr * ld + d) * scale : 0.0f;
    }
}

__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    return fmaf(a.w, b.w, acc);
}

// s[c] = a_row . b[sub + 4c] over HS, for the R/4 columns of this thread.
template <int HS, int R>
__device__ __forceinline__ void row_dots(float (&s)[R / 4], const float* a_row, const float* b, int sub) {
    constexpr int SLD = HS + 4;
#pragma unroll
    for (int c = 0; c < R / 4; c++) s[c] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < HS; d += 4) {
        float4 a4 = ld4(a_row + d);
#pragma unroll
        for (int c = 0; c < R / 4; c++) s[c] = dot4(a4, ld4(b + (sub + 4 * c) * SLD + d), s[c]);
    }
}

// acc[cols of this thread] += sum_j w_j * m[j][cols], where w_j (j = sp + 4c) is held by
// lane sp of this row's group as w[c].
template <int HS, int R>
__device__ __forceinline__ void row_combine(float (&acc)[HS / 4], const float (&w)[R / 4], const float* m, int sub,
                                            int lane) {
    constexpr int SLD = HS + 4;
    const int group_base = lane & ~3;
#pragma unroll
    for (int c = 0; c < R / 4; c++) {
#pragma unroll
        for (int sp = 0; sp < 4; sp++) {
            float wj = __shfl_sync(0xffffffffu, w[c], group_base | sp);
            const float* mrow = m + (sp + 4 * c) * SLD;
#pragma unroll
            for (int c4 = 0; c4 < HS / 16; c4++) {
                float4 v = ld4(mrow + 4 * (sub + 4 * c4));
                acc[4 * c4 + 0] = fmaf(wj, v.x, acc[4 * c4 + 0]);
                acc[4 * c4 + 1] = fmaf(wj, v.y, acc[4 * c4 + 1]);
                acc[4 * c4 + 2] = fmaf(wj, v.z, acc[4 * c4 + 2]);
                acc[4 * c4 + 3] = fmaf(wj, v.w, acc[4 * c4 + 3]);
            }
        }
    }
}

__device__ __forceinline__ float group4_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float group4_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// column of the thread's e-th owned output element (e = 4*c4 + k)
__device__ __forceinline__ int owned_col(int sub, int e) { return 4 * (sub + 4 * (e / 4)) + (e % 4); }

// ---------------------------------------------------------------------------------------------
// forward

template <typename T, int HS, int R>
__device__ __forceinline__ void attention_fwd(T* __restrict__ out, float* __restrict__ saved, const T* __restrict__ qkv,
                                              int B, int t_len, int NH) {
    constexpr int SLD = HS + 4;
    extern __shared__ float4 smem4[];
    float* sq = reinterpret_cast<float*>(smem4);  // [R][SLD]
    float* sk = sq + R * SLD;                     // [R][SLD]
    float* sv = sk + R * SLD;                     // [R][SLD]

    const int qt = gridDim.x - 1 - blockIdx.x;  // heaviest query tiles first
    const int h = blockIdx.y, b = blockIdx.z;
    const int C = NH * HS;
    const long ld = 3L * C;
    const T* q_base = qkv + (long)b * t_len * ld + h * HS;
    const T* k_base = q_base + C;
    const T* v_base = q_base + 2 * C;
    const int lane = threadIdx.x % 32, row = threadIdx.x / 4, sub = threadIdx.x % 4;
    const int q0 = qt * R, i = q0 + row;

    load_tile<T, HS, R>(sq, q_base, ld, q0, t_len, LOG2E * rsqrtf((float)HS));

    float m = NEG_INF, l = 0.0f;
    float o[HS / 4];
#pragma unroll
    for (int e = 0; e < HS / 4; e++) o[e] = 0.0f;

    for (int kt = 0; kt <= qt; kt++) {
        const int j0 = kt * R;
        __syncthreads();  // previous K/V tile fully read (and, the first time, Q is written)
        load_tile<T, HS, R>(sk, k_base, ld, j0, t_len, 1.0f);
        load_tile<T, HS, R>(sv, v_base, ld, j0, t_len, 1.0f);
        __syncthreads();

        float s[R / 4];
        row_dots<HS, R>(s, sq + row * SLD, sk, sub);
        float tile_max = NEG_INF;
#pragma unroll
        for (int c = 0; c < R / 4; c++) {
            int j = j0 + sub + 4 * c;
            if (j > i || j >= t_len) s[c] = NEG_INF;
            tile_max = fmaxf(tile_max, s[c]);
        }
        const float m_new = fmaxf(m, group4_max(tile_max));
        // Every row sees key 0 in the first tile, so m_new is finite; guard anyway so a fully
        // masked row can never turn into exp2(-inf - -inf) = NaN.
        const float m_use = m_new == NEG_INF ? 0.0f : m_new;
        const float alpha = exp2f(m - m_use);  // 0 on the first tile (m = -inf)
        float row_sum = 0.0f;
#pragma unroll
        for (int c = 0; c < R / 4; c++) {
            s[c] = exp2f(s[c] - m_use);  // masked entries: exp2(-inf) = 0
            row_sum += s[c];
        }
        l = l * alpha + group4_sum(row_sum);
        m = m_new;
#pragma unroll
        for (int e = 0; e < HS / 4; e++) o[e] *= alpha;
        row_combine<HS, R>(o, s, sv, sub, lane);
    }

    if (i < t_len) {
        const float inv_l = 1.0f / l;
        const long bh_row = ((long)b * NH + h) * t_len + i;
        T* out_row = out + ((long)b * t_len + i) * C + h * HS;
        float* o_row = saved + (long)B * NH * t_len + bh_row * HS;
#pragma unroll
        for (int e = 0; e < HS / 4; e++) {
            int col = owned_col(sub, e);
            float v = o[e] * inv_l;
            store_f(out_row + col, v);
            o_row[col] = v;
        }
        if (sub == 0) saved[bh_row] = (m + log2f(l)) * LN2;  // natural-log logsumexp of the scaled scores
    }
}

// ---------------------------------------------------------------------------------------------
// backward

// D_r = dO_r . O_r for the tile's rows (dO from shared memory, O from the saved state):
// each thread sums its owned columns, the row's 4 lanes add up.
template <int HS>
__device__ __forceinline__ float row_delta(const float* sdo_row, const float* o_row, int sub, bool valid) {
    float part = 0.0f;
    if (valid) {
#pragma unroll
        for (int e = 0; e < HS / 4; e++) {
            int col = owned_col(sub, e);
            part = fmaf(sdo_row[col], o_row[col], part);
        }
    }
    return group4_sum(part);
}

template <typename T, int HS, int R>
__device__ __forceinline__ void attention_bwd(T* __restrict__ dqkv, const T* __restrict__ dout,
                                              const T* __restrict__ qkv, const float* __restrict__ saved, int B,
                                              int t_len, int NH) {
    constexpr int SLD = HS + 4;
    extern __shared__ float4 smem4[];
    float* sq = reinterpret_cast<float*>(smem4);  // [R][SLD] Q, pre-scaled by log2(e)/sqrt(HS)
    float* sdo = sq + R * SLD;                    // [R][SLD] dO
    float* sk = sdo + R * SLD;                    // [R][SLD] K
    float* sv = sk + R * SLD;                     // [R][SLD] V
    float* slse = sv + R * SLD;                   // [R] lse * log2(e) of the query tile
    float* sdelta = slse + R;                     // [R] D of the query tile

    const bool dkdv_role = blockIdx.z & 1;
    const int h = blockIdx.y, b = blockIdx.z >> 1;
    const int C = NH * HS;
    const long ld = 3L * C;
    const long head_off = (long)b * t_len * ld + h * HS;
    const T* q_base = qkv + head_off;
    const T* k_base = q_base + C;
    const T* v_base = q_base + 2 * C;
    const T* do_base = dout + (long)b * t_len * C + h * HS;
    const float* lse = saved + ((long)b * NH + h) * t_len;                                  // (T)
    const float* o_saved = saved + (long)B * NH * t_len + ((long)b * NH + h) * t_len * HS;  // (T, HS)
    const int lane = threadIdx.x % 32, row = threadIdx.x / 4, sub = threadIdx.x % 4;
    const float q_scale = LOG2E * rsqrtf((float)HS);
    const int ntiles = gridDim.x;

    if (!dkdv_role) {
        // ---- dQ for query rows i = q0 + row, looping over key tiles 0 ..= qt
        const int qt = ntiles - 1 - blockIdx.x;  // heaviest first
        const int q0 = qt * R, i = q0 + row;
        const bool valid = i < t_len;
        load_tile<T, HS, R>(sq, q_base, ld, q0, t_len, q_scale);
        load_tile<T, HS, R>(sdo, do_base, C, q0, t_len, 1.0f);
        __syncthreads();
        const float lse2 = valid ? lse[i] * LOG2E : 0.0f;
        const float delta = row_delta<HS>(sdo + row * SLD, o_saved + (long)i * HS, sub, valid);

        float dq[HS / 4];
#pragma unroll
        for (int e = 0; e < HS / 4; e++) dq[e] = 0.0f;
        for (int kt = 0; kt <= qt; kt++) {
            const int j0 = kt * R;
            __syncthreads();
            load_tile<T, HS, R>(sk, k_base, ld, j0, t_len, 1.0f);
            load_tile<T, HS, R>(sv, v_base, ld, j0, t_len, 1.0f);
            __syncthreads();
            float s[R / 4], dp[R / 4];
            row_dots<HS, R>(s, sq + row * SLD, sk, sub);
            row_dots<HS, R>(dp, sdo + row * SLD, sv, sub);
#pragma unroll
            for (int c = 0; c < R / 4; c++) {
                int j = j0 + sub + 4 * c;
                float p = (j <= i && j < t_len && valid) ? exp2f(s[c] - lse2) : 0.0f;
                s[c] = p * (dp[c] - delta);  // dS
            }
            row_combine<HS, R>(dq, s, sk, sub, lane);
        }
        if (valid) {
            const float k_scale = rsqrtf((float)HS);
            T* dq_row = dqkv + head_off + (long)i * ld;
#pragma unroll
            for (int e = 0; e < HS / 4; e++) store_f(dq_row + owned_col(sub, e), dq[e] * k_scale);
        }
    } else {
        // ---- dK, dV for key rows j = j0 + row, looping over query tiles kt .. ntiles-1
        const int kt = blockIdx.x;  // key tile 0 sees every query tile: heaviest first
        const int j0 = kt * R, j = j0 + row;
        load_tile<T, HS, R>(sk, k_base, ld, j0, t_len, 1.0f);
        load_tile<T, HS, R>(sv, v_base, ld, j0, t_len, 1.0f);

        float dk[HS / 4], dv[HS / 4];
#pragma unroll
        for (int e = 0; e < HS / 4; e++) dk[e] = dv[e] = 0.0f;
        for (int qt = kt; qt < ntiles; qt++) {
            const int q0 = qt * R;
            __syncthreads();  // previous query tile fully read
            load_tile<T, HS, R>(sq, q_base, ld, q0, t_len, q_scale);
            load_tile<T, HS, R>(sdo, do_base, C, q0, t_len, 1.0f);
            __syncthreads();
            {
                // lse and D of the query tile's rows, one row per 4 lanes as everywhere
                const int i = q0 + row;
                const bool valid = i < t_len;
                const float delta = row_delta<HS>(sdo + row * SLD, o_saved + (long)i * HS, sub, valid);
                if (sub == 0) {
                    slse[row] = valid ? lse[i] * LOG2E : 0.0f;
                    sdelta[row] = delta;
                }
            }
            __syncthreads();
            float s[R / 4], dp[R / 4];
            row_dots<HS, R>(s, sk + row * SLD, sq, sub);   // s_ij for i = q0 + sub + 4c (log2 domain)
            row_dots<HS, R>(dp, sv + row * SLD, sdo, sub); // dP_ij = dO_i . V_j
#pragma unroll
            for (int c = 0; c < R / 4; c++) {
                int il = sub + 4 * c, i = q0 + il;
                float p = (i >= j && i < t_len) ? exp2f(s[c] - slse[il]) : 0.0f;
                s[c] = p;
                dp[c] = p * (dp[c] - sdelta[il]);  // dS
            }
            row_combine<HS, R>(dv, s, sdo, sub, lane);  // dV_j += sum_i P_ij dO_i
            row_combine<HS, R>(dk, dp, sq, sub, lane);  // dK_j += sum_i dS_ij Q_i (Q carries log2e/sqrt(HS))
        }
        if (j < t_len) {
            T* dk_row = dqkv + head_off + (long)j * ld + C;
            T* dv_row = dk_row + C;
#pragma unroll
            for (int e = 0; e < HS / 4; e++) {
                int col = owned_col(sub, e);
                store_f(dk_row + col, dk[e] * LN2);  // undo the log2(e) carried by Q
                store_f(dv_row + col, dv[e]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// kernels: HS picks the instantiation (R = 64 for HS 32/64, R = 32 for HS 128); the launcher
// has already checked HS and sized the grid, block and shared memory to match.

#define ATTENTION_DISPATCH(CALL)                        \
    switch (HS) {                                       \
        case 32: CALL(32, 64); break;                   \
        case 64: CALL(64, 64); break;                   \
        case 128: CALL(128, 32); break;                 \
        default: break;                                 \
    }

extern "C" __global__ void __launch_bounds__(256) attention_fwd_bf16(bf16* out, float* saved, const bf16* qkv, int B,
                                                                     int T, int NH, int HS) {
#define CALL(HS_, R_) attention_fwd<bf16, HS_, R_>(out, saved, qkv, B, T, NH)
    ATTENTION_DISPATCH(CALL)
#undef CALL
}

extern "C" __global__ void __launch_bounds__(256) attention_fwd_f32(float* out, float* saved, const float* qkv, int B,
                                                                    int T, int NH, int HS) {
#define CALL(HS_, R_) attention_fwd<float, HS_, R_>(out, saved, qkv, B, T, NH)
    ATTENTION_DISPATCH(CALL)
#undef CALL
}

extern "C" __global__ void __launch_bounds__(256) attention_bwd_bf16(bf16* dqkv, const bf16* dout, const bf16* qkv,
                                                                     const float* saved, int B, int T, int NH,
                                                                     int HS) {
#define CALL(HS_, R_) attention_bwd<bf16, HS_, R_>(dqkv, dout, qkv, saved, B, T, NH)
    ATTENTION_DISPATCH(CALL)
#undef CALL
}

extern "C" __global__ void __launch_bounds__(256) attention_bwd_f32(float* dqkv, const float* dout, const float* qkv,
                                                                    const float* saved, int B, int T, int NH, int HS) {
#define CALL(HS_, R_) attention_bwd<float, HS_, R_>(dqkv, dout, qkv, saved, B, T, NH)
    ATTENTION_DISPATCH(CALL)
#undef CALL
}
