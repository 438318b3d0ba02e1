// Causal multi-head self-attention, flash style: no (T x T) matrix is ever stored.
//
// Layouts (kernels/src/ops/attention.rs is the reference):
//   qkv   (B, T, 3C)  [q | k | v], each C = NH * HS wide, head h in columns h*HS .. (h+1)*HS
//   out   (B, T, C)   head h's output in columns h*HS ..
//   lse   (B, NH, T)  f32, the only saved state: lse_i = log sum_{j<=i} exp(s_ij),
//                     s = q k^T / sqrt(HS) (natural log)
//   dqkv  (B, T, 3C)  overwritten (activation gradient)
//
// forward:  per (b, h, tile of query rows), loop over key tiles up to the diagonal:
//           S = Q K^T (scaled), online softmax (running max m and sum l per row, rescaling the
//           partial output by exp(m_old - m_new)), O += P V; at the end O /= l, lse = m + log l.
// backward: P is recomputed per tile from lse: P_ij = exp(s_ij - lse_i); dP = dO V^T,
//           D_i = sum_j P_ij dP_ij = dO_i . O_i (from the forward's output, which the caller
//           keeps anyway as the output projection's input), dS = P * (dP - D),
//           dQ = dS K / sqrt(HS), dK = dS^T Q / sqrt(HS), dV = P^T dO.
// Scores are kept in the log2 domain (scaled by log2(e) / sqrt(HS)) so every exponential is
// one exp2f; lse is stored in the natural log.
//
// Two implementations:
//
// * bf16 (`attention_{fwd,bwd}_bf16_hs{32,64,128}`): tensor cores, FlashAttention-2 style.
//   mma.sync m16n8k16 bf16 -> f32 with fragments from ldmatrix; one kernel per head size (a
//   template), 4 warps per block.
//   forward: a block owns BR = 64 query rows (16 per warp, Q fragments in registers for
//     HS <= 64, re-read from shared memory for HS = 128) and walks the key tiles (BC = 64)
//     up to the diagonal, K/V tiles double-buffered with cp.async. S = Q K^T lands in m16n8
//     accumulators whose layout is exactly that of the A fragments of P V, so P goes from
//     fp32 accumulators to bf16 A fragments in registers without touching shared memory.
//     Softmax statistics are fp32; the row sum adds the fp32 probabilities (those rounded to
//     bf16 feed P V).
//   backward: three launches. (1) `attention_bwd_delta_bf16`: D = rowsum(dO * O) in fp32,
//     one warp per (row, head). (2) the main kernel: a block owns key tiles of BKT = 64 keys
//     (16 per warp) and walks the query chunks (BQ = 32 for HS = 32, else 16) from the diagonal on: S^T = K Q^T,
//     dP^T = V dO^T, dV += P^T dO, dK += dS^T Q (P^T, dS^T as A fragments from registers),
//     dS^T to shared memory in bf16, then dQ_chunk = dS K: 5 products per (key, query) tile
//     pair. (3) `attention_dq_reduce_bf16` sums the dQ partials.
//     dQ without atomics, bit-deterministic: grid (NSPLIT, NH, B); block s takes the key
//     tiles s, 2 NSPLIT - 1 - s, 2 NSPLIT + s, ... (zig-zag, so every block gets nearly the
//     same number of tile pairs) and adds its dQ contributions into its own fp32 partial
//     dq_part[s] (B, NH, T, HS): a plain read-modify-write, each element always by the same
//     thread, in a fixed order. Its first key tile is kt = s, which covers every query row
//     >= s * BKT, so that visit writes instead of adding and nothing needs zeroing; rows
//     < s * BKT are never touched by block s. The reduce adds dq_part[0 ..= min(NSPLIT - 1,
//     t / BKT)] in order. NSPLIT depends on the shape only (the launcher's `dq_splits`).
//   Shared-memory rows are padded by 8 bf16 (16 bytes) so the 8 row addresses of every
//   ldmatrix phase fall in distinct 16-byte bank groups. Rows past T are zero-filled by
//   cp.async (src-size 0) and masked; the causal mask is applied only on tiles that cross
//   the diagonal or T.
//
// * fp32 (`attention_fwd_f32`, `attention_bwd_f32`): CUDA cores, the reference the bf16
//   kernels are checked against besides the CPU, and fp32 mode. 4 threads per row, 4R
//   threads per block (R = 64 for HS <= 64, 32 for HS = 128): thread (row = tid / 4,
//   sub = tid % 4) computes the scores of its row against tile columns sub, sub + 4, ... and
//   owns HS/4 of the row's output columns; the softmax of a row lives in its 4 lanes. The
//   backward runs two kinds of blocks (blockIdx.z & 1): "dq" blocks own R query rows and loop
//   over key tiles; "dkdv" blocks own R key rows and loop over query tiles; each output has
//   one writer (deterministic), at the price of S and dP computed twice (7 products).
//
// Preconditions (the launcher checks): HS in {32, 64, 128}; any T >= 1. Grids, block sizes
// and dynamic shared memory as in kernels/src/ops/attention.rs (`gpu`), which raises the
// kernels' dynamic shared memory limit where 48 KB is not enough.

#include "common.cuh"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define NEG_INF (-__int_as_float(0x7f800000))

// =============================================================================================
// fp32: CUDA cores

namespace simt {

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
__device__ __forceinline__ void attention_fwd(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ qkv,
                                              int t_len, int NH) {
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
#pragma unroll
        for (int e = 0; e < HS / 4; e++) store_f(out_row + owned_col(sub, e), o[e] * inv_l);
        if (sub == 0) lse[bh_row] = (m + log2f(l)) * LN2;  // natural-log logsumexp of the scaled scores
    }
}

// ---------------------------------------------------------------------------------------------
// backward

// D_r = dO_r . O_r for the tile's rows (dO from shared memory, O from the forward's output):
// each thread sums its owned columns, the row's 4 lanes add up.
template <typename T, int HS>
__device__ __forceinline__ float row_delta(const float* sdo_row, const T* o_row, int sub, bool valid) {
    float part = 0.0f;
    if (valid) {
#pragma unroll
        for (int e = 0; e < HS / 4; e++) {
            int col = owned_col(sub, e);
            part = fmaf(sdo_row[col], load_f(o_row + col), part);
        }
    }
    return group4_sum(part);
}

template <typename T, int HS, int R>
__device__ __forceinline__ void attention_bwd(T* __restrict__ dqkv, const T* __restrict__ dout,
                                              const T* __restrict__ qkv, const T* __restrict__ out,
                                              const float* __restrict__ lse_all, int t_len, int NH) {
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
    const float* lse = lse_all + ((long)b * NH + h) * t_len;  // (T)
    const T* o_base = out + (long)b * t_len * C + h * HS;     // (T, HS), row stride C
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
        const float delta = row_delta<T, HS>(sdo + row * SLD, o_base + (long)i * C, sub, valid);

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
                const float delta = row_delta<T, HS>(sdo + row * SLD, o_base + (long)i * C, sub, valid);
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


}  // namespace simt

// =============================================================================================
// bf16: tensor cores

namespace tc {

constexpr int WARPS = 4, THREADS = 32 * WARPS;
constexpr int PAD = 8;                 // bf16 elements of padding per shared-memory row
constexpr int BR = 64, BC = 64;        // forward: query rows per block, keys per tile
constexpr int BKT = 64;                // backward: keys per block tile
static_assert(BR == 16 * WARPS && BKT == 16 * WARPS, "one m16 row group per warp");
static_assert(BR == BC, "the forward's only partial key tile is its diagonal tile");
// backward: queries per chunk. 16 for HS >= 64 keeps the HS = 64 kernel within 128 registers
// without spilling (at 32 it spilled: the dK and dV accumulators alone take HS registers).
constexpr int bwd_bq(int hs) { return hs == 32 ? 32 : 16; }

// Two floats as one .b32 of two bf16 (lo in the low half: the lower column index).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// The A fragments (16 x 16) of k-step kk from m16n8 accumulators acc[2 kk], acc[2 kk + 1]:
// the accumulator of columns 8 n .. 8 n + 7 holds (row g, cols 2 tig + {0,1}) and (row g + 8,
// ...), which is exactly a0/a1 (k 0-7) and a2/a3 (k 8-15) of the A fragment.
template <int NT>
__device__ __forceinline__ void acc_to_a(unsigned (&a)[4], const float (&acc)[NT][4], int kk) {
    a[0] = pack_bf16(acc[2 * kk][0], acc[2 * kk][1]);
    a[1] = pack_bf16(acc[2 * kk][2], acc[2 * kk][3]);
    a[2] = pack_bf16(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
    a[3] = pack_bf16(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

// ldmatrix addresses (lane = threadIdx.x % 32), for a tile stored with row stride ld:
// A (16 x 16) at (row m0, col k0) of a [m][k] tile: matrices (m 0-7, k 0-7), (m 8-15, k 0-7),
// (m 0-7, k 8-15), (m 8-15, k 8-15) = a0..a3.
__device__ __forceinline__ const bf16* a_addr(const bf16* s, int ld, int m0, int k0, int lane) {
    return s + (m0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8;
}
// A at (m0, k0) of a tile stored [k][m], for ldmatrix .trans.
__device__ __forceinline__ const bf16* a_addr_trans(const bf16* s, int ld, int m0, int k0, int lane) {
    return s + (k0 + (lane & 7) + ((lane >> 4) << 3)) * ld + m0 + ((lane >> 3) & 1) * 8;
}
// B fragments of two n-tiles (n0 .. n0 + 15) at k0 of a tile stored [n][k]: r0, r1 are
// (b0, b1) of n-tile n0, r2, r3 of n-tile n0 + 8.
__device__ __forceinline__ const bf16* b_addr(const bf16* s, int ld, int n0, int k0, int lane) {
    return s + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + ((lane >> 3) & 1) * 8;
}
// The same from a tile stored [k][n], for ldmatrix .trans.
__device__ __forceinline__ const bf16* b_addr_trans(const bf16* s, int ld, int n0, int k0, int lane) {
    return s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8;
}

// Rows r0 .. r0 + ROWS of a (t_len x HS) head slice (row stride ld elements) into
// s[ROWS][HS + PAD] by cp.async; rows >= t_len are zero-filled.
template <int ROWS, int HS>
__device__ __forceinline__ void load_rows(bf16* s, const bf16* g, long ld, int r0, int t_len) {
    constexpr int CPR = HS / 8;  // 16-byte chunks per row
    static_assert((ROWS * CPR) % THREADS == 0, "tile must split evenly over the block");
#pragma unroll
    for (int i = 0; i < ROWS * CPR / THREADS; i++) {
        int c = threadIdx.x + i * THREADS;
        int r = c / CPR, col = (c % CPR) * 8;
        bool ok = r0 + r < t_len;
        cp_async16(s + r * (HS + PAD) + col, ok ? g + (long)(r0 + r) * ld + col : g, ok ? 16 : 0);
    }
}

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Resident blocks per SM the register allocation must allow (__launch_bounds__): 4 x 128
// threads at <= 128 registers for HS <= 64; HS = 128 keeps its accumulators (<= 255).
constexpr int min_blocks(int hs) { return hs <= 64 ? 4 : 1; }

template <int HS>
constexpr int fwd_smem_bytes() { return (BR + 4 * BC) * (HS + PAD) * 2; }  // Q, K and V twice

// ---------------------------------------------------------------------------------------------
// forward: grid (ceil(T / BR), NH, B), THREADS threads, fwd_smem_bytes<HS>() dynamic smem

template <int HS>
__device__ __forceinline__ void fwd(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ qkv,
                                    int t_len, int NH) {
    constexpr int LDS = HS + PAD, KSTEPS = HS / 16, NT_S = BC / 8, NT_O = HS / 8;
    constexpr bool Q_IN_REGS = HS <= 64;
    extern __shared__ float4 smem4[];
    bf16* sq = reinterpret_cast<bf16*>(smem4);  // [BR][LDS]
    bf16* sk = sq + BR * LDS;                   // [2][BC][LDS]
    bf16* sv = sk + 2 * BC * LDS;               // [2][BC][LDS]

    const int qt = gridDim.x - 1 - blockIdx.x;  // heaviest query tiles first
    const int h = blockIdx.y, b = blockIdx.z;
    const int C = NH * HS;
    const long ld = 3L * C;
    const bf16* q_base = qkv + (long)b * t_len * ld + h * HS;
    const bf16* k_base = q_base + C;
    const bf16* v_base = q_base + 2 * C;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, tig = lane % 4;
    const int q0 = qt * BR, wrow = warp * 16;
    const float scale2 = LOG2E * rsqrtf((float)HS);

    load_rows<BR, HS>(sq, q_base, ld, q0, t_len);
    load_rows<BC, HS>(sk, k_base, ld, 0, t_len);
    load_rows<BC, HS>(sv, v_base, ld, 0, t_len);
    cp_async_commit();

    unsigned qf[Q_IN_REGS ? KSTEPS : 1][4];
    float o[NT_O][4];
#pragma unroll
    for (int n = 0; n < NT_O; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};  // rows g and g + 8; l is this thread's part

    for (int kt = 0; kt <= qt; kt++) {
        const int st = kt & 1;
        if (kt < qt) {  // prefetch the next K/V tile into the other stage (read in kt - 1, then a barrier)
            load_rows<BC, HS>(sk + (st ^ 1) * BC * LDS, k_base, ld, (kt + 1) * BC, t_len);
            load_rows<BC, HS>(sv + (st ^ 1) * BC * LDS, v_base, ld, (kt + 1) * BC, t_len);
        }
        cp_async_commit();  // possibly empty: keeps the wait count uniform
        cp_async_wait_1();  // tile kt (and, the first time, Q) has landed for this thread ...
        __syncthreads();    // ... and for every thread
        if (Q_IN_REGS && kt == 0) {
#pragma unroll
            for (int kk = 0; kk < (Q_IN_REGS ? KSTEPS : 0); kk++) ldmatrix_x4(qf[kk], a_addr(sq, LDS, wrow, kk * 16, lane));
        }
        const bf16* ks = sk + st * BC * LDS;
        const bf16* vs = sv + st * BC * LDS;

        float s[NT_S][4];
#pragma unroll
        for (int n = 0; n < NT_S; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[n][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
            unsigned a[4];
            if (Q_IN_REGS) {
#pragma unroll
                for (int e = 0; e < 4; e++) a[e] = qf[Q_IN_REGS ? kk : 0][e];
            } else {
                ldmatrix_x4(a, a_addr(sq, LDS, wrow, kk * 16, lane));
            }
#pragma unroll
            for (int p = 0; p < NT_S / 2; p++) {
                unsigned r[4];
                ldmatrix_x4(r, b_addr(ks, LDS, p * 16, kk * 16, lane));
                mma_bf16(s[2 * p], a, r[0], r[1]);
                mma_bf16(s[2 * p + 1], a, r[2], r[3]);
            }
        }

        // scale into the log2 domain; mask the diagonal tile (the only one with keys > a row
        // or >= T: every key tile before it is full and entirely in every row's past)
        const bool diag = kt == qt;
#pragma unroll
        for (int n = 0; n < NT_S; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[n][e] * scale2;
                if (diag && kt * BC + n * 8 + 2 * tig + (e & 1) > q0 + wrow + g + 8 * (e >> 1)) x = NEG_INF;
                s[n][e] = x;
            }

        // online softmax, row r in {g, g + 8} = elements 2r, 2r + 1 of every accumulator
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = NEG_INF;
#pragma unroll
            for (int n = 0; n < NT_S; n++) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
            const float m_new = fmaxf(m[r], quad_max(mx));
            // every row sees key j0 of the diagonal tile, so m_new is finite; the guard keeps
            // a fully masked row from ever producing exp2(-inf - -inf) = NaN
            const float m_use = m_new == NEG_INF ? 0.0f : m_new;
            const float alpha = exp2f(m[r] - m_use);  // 0 on the first tile (m = -inf)
            float sum = 0.0f;
#pragma unroll
            for (int n = 0; n < NT_S; n++)
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    float p = exp2f(s[n][2 * r + c] - m_use);  // masked: exp2(-inf) = 0
                    s[n][2 * r + c] = p;
                    sum += p;
                }
            l[r] = l[r] * alpha + sum;
            m[r] = m_new;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                o[n][2 * r] *= alpha;
                o[n][2 * r + 1] *= alpha;
            }
        }

        // O += P V: P from the score accumulators as bf16 A fragments, V (stored [key][d]) by .trans
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) {
            unsigned a[4];
            acc_to_a<NT_S>(a, s, kk);
#pragma unroll
            for (int p = 0; p < NT_O / 2; p++) {
                unsigned r[4];
                ldmatrix_x4_trans(r, b_addr_trans(vs, LDS, p * 16, kk * 16, lane));
                mma_bf16(o[2 * p], a, r[0], r[1]);
                mma_bf16(o[2 * p + 1], a, r[2], r[3]);
            }
        }
        __syncthreads();  // every warp is done with this stage before the next prefetch refills it
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float lr = quad_sum(l[r]);
        const int i = q0 + wrow + g + 8 * r;
        if (i < t_len) {
            const float inv_l = 1.0f / lr;
            bf16* out_row = out + ((long)b * t_len + i) * C + h * HS;
#pragma unroll
            for (int n = 0; n < NT_O; n++)
                *reinterpret_cast<__nv_bfloat162*>(out_row + n * 8 + 2 * tig) =
                    __floats2bfloat162_rn(o[n][2 * r] * inv_l, o[n][2 * r + 1] * inv_l);
            if (tig == 0) lse[((long)b * NH + h) * t_len + i] = (m[r] + log2f(lr)) * LN2;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// backward

template <int HS, int BQ = bwd_bq(HS)>
constexpr int bwd_smem_bytes() {
    static_assert(BKT % BQ == 0, "query chunks start on key-tile boundaries");
    return (2 * BKT + 4 * BQ) * (HS + PAD) * 2  // K, V; Q and dO twice
           + BKT * (BQ + PAD) * 2               // dS^T
           + 2 * 2 * BQ * 4;                    // lse and D of a chunk, twice
}

template <int HS>
__device__ __forceinline__ void bwd(bf16* __restrict__ dqkv, float* __restrict__ dq_part, const bf16* __restrict__ dout,
                                    const bf16* __restrict__ qkv, const float* __restrict__ lse_all,
                                    const float* __restrict__ delta_all, int B, int t_len, int NH) {
    constexpr int BQ = bwd_bq(HS);
    // HS >= 64: the k-loops stay rolled, or ptxas hoists enough fragments to spill (at 128
    // registers for HS = 64 on sm_80, past 255 for HS = 128: dK and dV alone take HS)
    constexpr int KUNROLL = HS >= 64 ? 1 : 8;
    constexpr int LDS = HS + PAD, LDT = BQ + PAD, KSTEPS = HS / 16, NT_Q = BQ / 8, NT_D = HS / 8;
    constexpr int WQ = BQ / 16, WD = WARPS / WQ, DW = HS / WD, NT_DQ = DW / 8;  // dQ: warps as WQ x WD
    static_assert(WQ * WD == WARPS && NT_DQ % 2 == 0, "dQ warp layout");
    extern __shared__ float4 smem4[];
    bf16* sk = reinterpret_cast<bf16*>(smem4);  // [BKT][LDS]
    bf16* sv = sk + BKT * LDS;                  // [BKT][LDS]
    bf16* sq = sv + BKT * LDS;                  // [2][BQ][LDS]
    bf16* sdo = sq + 2 * BQ * LDS;              // [2][BQ][LDS]
    bf16* sds = sdo + 2 * BQ * LDS;             // [BKT][LDT]  dS^T, [key][query]
    float* slse = reinterpret_cast<float*>(sds + BKT * LDT);  // [2][BQ] lse * log2(e)
    float* sdel = slse + 2 * BQ;                               // [2][BQ] D

    const int split = blockIdx.x, nsplit = gridDim.x, h = blockIdx.y, b = blockIdx.z;
    const int C = NH * HS;
    const long ld = 3L * C;
    const long head_off = (long)b * t_len * ld + h * HS;
    const bf16* q_base = qkv + head_off;
    const bf16* k_base = q_base + C;
    const bf16* v_base = q_base + 2 * C;
    const bf16* do_base = dout + (long)b * t_len * C + h * HS;
    const float* lse = lse_all + ((long)b * NH + h) * t_len;
    const float* delta = delta_all + ((long)b * NH + h) * t_len;
    float* part = dq_part + (((long)split * B + b) * NH + h) * (long)t_len * HS;  // this block's (T, HS)
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, tig = lane % 4;
    const int wrow = warp * 16, wq = warp % WQ, wd = warp / WQ;
    const float scale2 = LOG2E * rsqrtf((float)HS), scale = rsqrtf((float)HS);
    const int ntiles = (t_len + BKT - 1) / BKT, rounds = (ntiles + nsplit - 1) / nsplit;

    // Q, dO, lse and D of the chunk at query row q0 into stage st (lse and D synchronously:
    // their rows need not be 16-byte aligned).
    auto load_chunk = [&](int st, int q0) {
        load_rows<BQ, HS>(sq + st * BQ * LDS, q_base, ld, q0, t_len);
        load_rows<BQ, HS>(sdo + st * BQ * LDS, do_base, C, q0, t_len);
        if (threadIdx.x < BQ) {
            const int i = q0 + threadIdx.x;
            slse[st * BQ + threadIdx.x] = i < t_len ? lse[i] * LOG2E : 0.0f;
            sdel[st * BQ + threadIdx.x] = i < t_len ? delta[i] : 0.0f;
        }
    };

    for (int round = 0; round < rounds; round++) {
        const int kt = (round & 1) ? (round + 1) * nsplit - 1 - split : round * nsplit + split;
        if (kt >= ntiles) continue;
        const int j0 = kt * BKT;
        const int nchunks = (t_len - j0 + BQ - 1) / BQ;
        __syncthreads();  // the previous key tile's K, dS^T and chunk stages are fully read
        load_rows<BKT, HS>(sk, k_base, ld, j0, t_len);
        load_rows<BKT, HS>(sv, v_base, ld, j0, t_len);
        load_chunk(0, j0);
        cp_async_commit();

        float dk[NT_D][4], dv[NT_D][4];
#pragma unroll
        for (int n = 0; n < NT_D; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;

        for (int c = 0; c < nchunks; c++) {
            const int st = c & 1, q0 = j0 + c * BQ;
            if (c + 1 < nchunks) load_chunk(st ^ 1, q0 + BQ);  // stage last read in chunk c - 1, before its barrier
            cp_async_commit();
            cp_async_wait_1();
            __syncthreads();
            const bf16* qs = sq + st * BQ * LDS;
            const bf16* dos = sdo + st * BQ * LDS;
            const float* ls = slse + st * BQ;
            const float* ds = sdel + st * BQ;

            // S^T = K Q^T for this warp's 16 keys x BQ queries
            float acc[NT_Q][4];
#pragma unroll
            for (int n = 0; n < NT_Q; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
#pragma unroll KUNROLL
            for (int kk = 0; kk < KSTEPS; kk++) {
                unsigned ka[4];
                ldmatrix_x4(ka, a_addr(sk, LDS, wrow, kk * 16, lane));
#pragma unroll
                for (int p = 0; p < NT_Q / 2; p++) {
                    unsigned r[4];
                    ldmatrix_x4(r, b_addr(qs, LDS, p * 16, kk * 16, lane));
                    mma_bf16(acc[2 * p], ka, r[0], r[1]);
                    mma_bf16(acc[2 * p + 1], ka, r[2], r[3]);
                }
            }
            // P^T = exp2(s - lse), masked to queries i >= key j and i < T, kept as bf16 A fragments
            // (k = the chunk's queries): the same rounded P feeds dV and dS
            const bool edge = q0 < j0 + BKT || q0 + BQ > t_len;
#pragma unroll
            for (int n = 0; n < NT_Q; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int il = n * 8 + 2 * tig + (e & 1);
                    float p = exp2f(acc[n][e] * scale2 - ls[il]);
                    if (edge) {
                        const int i = q0 + il, j = j0 + wrow + g + 8 * (e >> 1);
                        if (i < j || i >= t_len) p = 0.0f;
                    }
                    acc[n][e] = p;
                }
            unsigned pa[BQ / 16][4];
#pragma unroll
            for (int kk = 0; kk < BQ / 16; kk++) acc_to_a<NT_Q>(pa[kk], acc, kk);

            // dV += P^T dO (dO stored [query][d] = [k][n]: .trans)
#pragma unroll
            for (int kk = 0; kk < BQ / 16; kk++)
#pragma unroll
                for (int p = 0; p < NT_D / 2; p++) {
                    unsigned r[4];
                    ldmatrix_x4_trans(r, b_addr_trans(dos, LDS, p * 16, kk * 16, lane));
                    mma_bf16(dv[2 * p], pa[kk], r[0], r[1]);
                    mma_bf16(dv[2 * p + 1], pa[kk], r[2], r[3]);
                }

            // dP^T = V dO^T, then dS^T = P^T (dP^T - D) in place
#pragma unroll
            for (int n = 0; n < NT_Q; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
#pragma unroll KUNROLL
            for (int kk = 0; kk < KSTEPS; kk++) {
                unsigned va[4];
                ldmatrix_x4(va, a_addr(sv, LDS, wrow, kk * 16, lane));
#pragma unroll
                for (int p = 0; p < NT_Q / 2; p++) {
                    unsigned r[4];
                    ldmatrix_x4(r, b_addr(dos, LDS, p * 16, kk * 16, lane));
                    mma_bf16(acc[2 * p], va, r[0], r[1]);
                    mma_bf16(acc[2 * p + 1], va, r[2], r[3]);
                }
            }
#pragma unroll
            for (int n = 0; n < NT_Q; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const unsigned pair = pa[n / 2][(n & 1) * 2 + (e >> 1)];  // acc_to_a's packing, inverted
                    const float p = __uint_as_float((e & 1) ? pair & 0xffff0000u : pair << 16);
                    acc[n][e] = p * (acc[n][e] - ds[n * 8 + 2 * tig + (e & 1)]);
                }

            // dK += dS^T Q (Q stored [query][d]: .trans)
#pragma unroll
            for (int kk = 0; kk < BQ / 16; kk++) {
                unsigned dsa[4];
                acc_to_a<NT_Q>(dsa, acc, kk);
#pragma unroll
                for (int p = 0; p < NT_D / 2; p++) {
                    unsigned r[4];
                    ldmatrix_x4_trans(r, b_addr_trans(qs, LDS, p * 16, kk * 16, lane));
                    mma_bf16(dk[2 * p], dsa, r[0], r[1]);
                    mma_bf16(dk[2 * p + 1], dsa, r[2], r[3]);
                }
            }

            // dS^T to shared memory (bf16, [key][query]) for the dQ product, which needs every warp's keys
#pragma unroll
            for (int n = 0; n < NT_Q; n++)
#pragma unroll
                for (int r = 0; r < 2; r++)
                    *reinterpret_cast<__nv_bfloat162*>(sds + (wrow + g + 8 * r) * LDT + n * 8 + 2 * tig) =
                        __floats2bfloat162_rn(acc[n][2 * r], acc[n][2 * r + 1]);
            __syncthreads();

            // dQ (BQ x HS) of the chunk = dS (query x key, stored [key][query]: .trans) K ([key][d]:
            // .trans); warp (wq, wd) owns queries 16 wq .. and d columns DW wd ..
            float dq[NT_DQ][4];
#pragma unroll
            for (int n = 0; n < NT_DQ; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) dq[n][e] = 0.0f;
#pragma unroll KUNROLL
            for (int kk = 0; kk < BKT / 16; kk++) {
                unsigned a[4];
                ldmatrix_x4_trans(a, a_addr_trans(sds, LDT, wq * 16, kk * 16, lane));
#pragma unroll
                for (int p = 0; p < NT_DQ / 2; p++) {
                    unsigned r[4];
                    ldmatrix_x4_trans(r, b_addr_trans(sk, LDS, wd * DW + p * 16, kk * 16, lane));
                    mma_bf16(dq[2 * p], a, r[0], r[1]);
                    mma_bf16(dq[2 * p + 1], a, r[2], r[3]);
                }
            }
            // into this block's partial: its first key tile (round 0) writes, later ones add.
            // Element (i, d) is always this same thread's (q0 and j0 are multiples of BQ).
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int i = q0 + wq * 16 + g + 8 * r;
                if (i < t_len) {
#pragma unroll
                    for (int n = 0; n < NT_DQ; n++) {
                        float2* dst = reinterpret_cast<float2*>(part + (long)i * HS + wd * DW + n * 8 + 2 * tig);
                        float2 v = make_float2(dq[n][2 * r], dq[n][2 * r + 1]);
                        if (round > 0) {
                            const float2 old = *dst;
                            v.x += old.x;
                            v.y += old.y;
                        }
                        *dst = v;
                    }
                }
            }
        }

        // dK (scaled by 1/sqrt(HS): S was) and dV of this warp's keys
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int j = j0 + wrow + g + 8 * r;
            if (j < t_len) {
                bf16* dk_row = dqkv + head_off + (long)j * ld + C;
                bf16* dv_row = dk_row + C;
#pragma unroll
                for (int n = 0; n < NT_D; n++) {
                    *reinterpret_cast<__nv_bfloat162*>(dk_row + n * 8 + 2 * tig) =
                        __floats2bfloat162_rn(dk[n][2 * r] * scale, dk[n][2 * r + 1] * scale);
                    *reinterpret_cast<__nv_bfloat162*>(dv_row + n * 8 + 2 * tig) =
                        __floats2bfloat162_rn(dv[n][2 * r], dv[n][2 * r + 1]);
                }
            }
        }
    }
}

}  // namespace tc

// =============================================================================================
// kernels

// fp32: HS picks the instantiation (R = 64 for HS 32/64, R = 32 for HS 128); the launcher
// has already checked HS and sized the grid, block and shared memory to match.
#define ATTENTION_DISPATCH(CALL)                        \
    switch (HS) {                                       \
        case 32: CALL(32, 64); break;                   \
        case 64: CALL(64, 64); break;                   \
        case 128: CALL(128, 32); break;                 \
        default: break;                                 \
    }

extern "C" __global__ void __launch_bounds__(256) attention_fwd_f32(float* out, float* lse, const float* qkv, int T,
                                                                    int NH, int HS) {
#define CALL(HS_, R_) simt::attention_fwd<float, HS_, R_>(out, lse, qkv, T, NH)
    ATTENTION_DISPATCH(CALL)
#undef CALL
}

extern "C" __global__ void __launch_bounds__(256) attention_bwd_f32(float* dqkv, const float* dout, const float* qkv,
                                                                    const float* out, const float* lse, int T, int NH,
                                                                    int HS) {
#define CALL(HS_, R_) simt::attention_bwd<float, HS_, R_>(dqkv, dout, qkv, out, lse, T, NH)
    ATTENTION_DISPATCH(CALL)
#undef CALL
}

// bf16, one kernel per head size (written out: the simulator does not take __global__ from a macro)
extern "C" __global__ void __launch_bounds__(tc::THREADS, tc::min_blocks(32))
attention_fwd_bf16_hs32(bf16* out, float* lse, const bf16* qkv, int T, int NH) {
    tc::fwd<32>(out, lse, qkv, T, NH);
}
extern "C" __global__ void __launch_bounds__(tc::THREADS, tc::min_blocks(32))
attention_bwd_bf16_hs32(bf16* dqkv, float* dq_part, const bf16* dout, const bf16* qkv, const float* lse,
                         const float* delta, int B, int T, int NH) {
    tc::bwd<32>(dqkv, dq_part, dout, qkv, lse, delta, B, T, NH);
}
extern "C" __global__ void __launch_bounds__(tc::THREADS, tc::min_blocks(64))
attention_fwd_bf16_hs64(bf16* out, float* lse, const bf16* qkv, int T, int NH) {
    tc::fwd<64>(out, lse, qkv, T, NH);
}
extern "C" __global__ void __launch_bounds__(tc::THREADS, tc::min_blocks(64))
attention_bwd_bf16_hs64(bf16* dqkv, float* dq_part, const bf16* dout, const bf16* qkv, const float* lse,
                         const float* delta, int B, int T, int NH) {
    tc::bwd<64>(dqkv, dq_part, dout, qkv, lse, delta, B, T, NH);
}
extern "C" __global__ void __launch_bounds__(tc::THREADS, tc::min_blocks(128))
attention_fwd_bf16_hs128(bf16* out, float* lse, const bf16* qkv, int T, int NH) {
    tc::fwd<128>(out, lse, qkv, T, NH);
}
extern "C" __global__ void __launch_bounds__(tc::THREADS, tc::min_blocks(128))
attention_bwd_bf16_hs128(bf16* dqkv, float* dq_part, const bf16* dout, const bf16* qkv, const float* lse,
                         const float* delta, int B, int T, int NH) {
    tc::bwd<128>(dqkv, dq_part, dout, qkv, lse, delta, B, T, NH);
}

// D (B, NH, T) = rowsum(dO * O) per head, fp32: one warp per (b, t, h), lanes over d in
// pairs, summed by a fixed xor tree. Block 256 threads (8 rows), grid ceil(B T NH / 8).
extern "C" __global__ void __launch_bounds__(256) attention_bwd_delta_bf16(float* delta, const bf16* out,
                                                                           const bf16* dout, int B, int T, int NH,
                                                                           int HS) {
    const long row = (long)blockIdx.x * 8 + threadIdx.x / 32;  // (b, t, h) with h fastest
    const int lane = threadIdx.x % 32;
    if (row >= (long)B * T * NH) return;
    const int h = (int)(row % NH);
    const long bt = row / NH;
    const bf16* o = out + row * HS;  // (B, T, C) with C = NH * HS: row (bt, h) starts at row * HS
    const bf16* d = dout + row * HS;
    float acc = 0.0f;
    for (int e = 2 * lane; e < HS; e += 64) {
        const float2 ov = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(o + e));
        const float2 dv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(d + e));
        acc = fmaf(ov.x, dv.x, acc);
        acc = fmaf(ov.y, dv.y, acc);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) delta[((bt / T) * NH + h) * (long)T + bt % T] = acc;
}

// dQ (the q columns of dqkv) = sum over s = 0 ..= min(nsplit - 1, t / BKT) of dq_part[s]
// (nsplit, B, NH, T, HS), in that order, times 1/sqrt(HS). One thread per 8 consecutive d
// of one (b, t, h), h and d fastest; block 256, grid ceil(B T NH HS / 8 / 256).
extern "C" __global__ void __launch_bounds__(256) attention_dq_reduce_bf16(bf16* dqkv, const float* dq_part, int B,
                                                                           int T, int NH, int HS, int nsplit) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    const int per_row = HS / 8;
    if (idx >= (long)B * T * NH * per_row) return;
    const int d0 = (int)(idx % per_row) * 8;
    const long rest = idx / per_row;
    const int h = (int)(rest % NH);
    const long bt = rest / NH;
    const int t = (int)(bt % T), b = (int)(bt / T);
    const int last = min(nsplit - 1, t / tc::BKT);
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int s = 0; s <= last; s++) {
        const float4* p = reinterpret_cast<const float4*>(dq_part + ((((long)s * B + b) * NH + h) * T + t) * HS + d0);
        const float4 x = p[0], y = p[1];
        acc[0] += x.x; acc[1] += x.y; acc[2] += x.z; acc[3] += x.w;
        acc[4] += y.x; acc[5] += y.y; acc[6] += y.z; acc[7] += y.w;
    }
    const float scale = rsqrtf((float)HS);
    __nv_bfloat162 packed[4];
#pragma unroll
    for (int e = 0; e < 4; e++) packed[e] = __floats2bfloat162_rn(acc[2 * e] * scale, acc[2 * e + 1] * scale);
    *reinterpret_cast<uint4*>(dqkv + bt * 3L * NH * HS + h * HS + d0) = *reinterpret_cast<uint4*>(packed);
}
