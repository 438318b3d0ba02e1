// Matmul with bias (and an optional fused GeLU), forward and backward.
//
// Semantics (kernels/src/ops/matmul.rs is the reference):
//   forward:  out (M,N) = inp (M,K) @ W (+ bias (N)) (+ GeLU)        M = B*T rows, K = IC, N = OC
//   backward: dinp (M,K)  = dout (M,N) @ W^T                         (overwrites)
//             dW          += inp^T @ dout, in W's own layout          (accumulates)
//             dbias (N)   += column sums of dout                      (accumulates)
//   W is [K, N] (WeightLayout::InOut, HF Conv1D) or [N, K] (WeightLayout::OutIn, the tied wte).
//
// Every one of these is one GEMM C (M,N) (=|+=) A (M,K) @ B (K,N) in which each operand is
// read in place through a leading dimension, either "K-major" (k contiguous) or not:
//   A(m,k) = a_kmajor ? a[m*lda + k] : a[k*lda + m]
//   B(k,n) = b_kmajor ? b[n*ldb + k] : b[k*ldb + n]
//   forward InOut : A = inp (K-major),   B = W [K,N] (N-major)
//   forward OutIn : A = inp (K-major),   B = W [N,K] (K-major)
//   dinp InOut    : A = dout (K-major),  B(k=oc,n=ic) = W[ic][oc]  (K-major)
//   dinp OutIn    : A = dout (K-major),  B(k=oc,n=ic) = W[oc][ic]  (N-major)
//   dW InOut      : C = dW [IC,OC], A(m=ic,k=row) = inp  (M-major), B = dout (N-major)
//   dW OutIn      : C = dW [OC,IC], A(m=oc,k=row) = dout (M-major), B = inp  (N-major)
// so nothing is ever transposed in memory: the tile loader copies each operand into shared
// memory in its own layout and `ldmatrix` (or `ldmatrix.trans`) turns it into mma fragments.
//
// bf16 kernels (tensor cores): block tile 128 x 128, k-step 32, 256 threads = 8 warps as
// 2 (M) x 4 (N); each warp owns 64 x 32 of C = 4 x 4 mma.m16n8k16 tiles, 64 fp32 accumulators
// per thread. Per k-step a block reads (128 + 128) x 32 bf16 = 16 KB from global (L2) and does
// 128 x 128 x 32 MACs: 32 FLOP per byte of operand traffic, enough to keep the tensor cores
// fed from L2 on A100/H100 at these sizes (no wgmma/TMA yet: that is sm_90a work for later).
// Three shared-memory stages (60 KB, dynamic): two k-tiles in flight while one is multiplied,
// one barrier per k-tile. The epilogue stores pairs of adjacent columns (4- or 8-byte stores).
// Rows of shared tiles are padded by 8 bf16 (16 bytes) so the 8 row addresses of every
// ldmatrix phase fall in distinct 16-byte bank groups (80-byte and 272-byte row strides).
//
// Edge handling: any M, N, K. The tile loader copies 8-element chunks; a chunk that runs off
// the matrix is zero-filled (cp.async src-size < 16 reads only the valid bytes), and the
// epilogue checks every row and column. The cp.async fast path needs each operand's leading
// dimension to be a multiple of 8 elements and its base 16-byte aligned (`vec = 1`; the
// launcher checks); otherwise (`vec = 0`) the same loader reads element by element with
// bounds checks and stores to shared memory synchronously. Zero-filled k-columns add 0 to
// every dot product, so partial k-tiles are exact.
//
// Epilogue (fp32, per element): v = acc (+ bias[n]); if pre: pre = v; if gelu: v = gelu(v);
// if accumulate: v += C_old; C = v, stored as bf16 or fp32 (`c_f32`; parameter gradients may
// be kept in fp32 while activations are bf16). With the fused GeLU the forward can also write
// the pre-GeLU value (`pre`, may be null) for the backward; a caller that prefers memory over
// FLOPs passes null and recomputes it with a plain matmul_fwd before gelu_backward.
// GeLU is the tanh approximation written as x * sigmoid(2u), u = sqrt(2/pi)(x + 0.044715 x^3),
// exactly as the CPU reference (kernels/src/ops/gelu.rs) and gelu.cu (common.cuh's
// gelu_fwd_one, one definition for both), of the pre-GeLU value
// as stored (rounded to bf16 in the bf16 kernels): the fused output is bit for bit
// gelu_forward(pre), so selective recomputation (which rebuilds it that way) can use it.
//
// fp32 kernels (tests and fp32 mode): plain FMA tiles, 64 x 64 per block, k-step 16, 256
// threads each owning 4 x 4 outputs (rows ty + 16 i, columns tx + 16 j), bounds-checked loads
// in either layout, the same epilogue. No tensor cores (and no TF32): fp32 mode is the one
// that must agree with the CPU to 1e-5.
//
// Bias gradient (matmul_bias_partial_*, matmul_bias_reduce): deterministic column sums in
// two passes: blocks of (32 columns x `rows` rows) write fp32 partial sums, a second kernel
// adds a column's partials in order: the same bits every run (no atomics), and enough blocks
// to fill the GPU at K = B*T rows.
//
// Split-K (the weight gradients, whose K = B*T is long and whose M x N has few tiles): the
// launcher picks a split count from the shape alone; each split's fp32 partial is summed in
// a fixed order by matmul_split_reduce, so the result is bit-deterministic on every GPU.
//
// Gradient rule: parameter gradients accumulate (+=), activation gradients overwrite (=).

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// shared helpers

// The GeLU input: the pre-GeLU value as stored (rounded to bf16 when the output is bf16).
__device__ __forceinline__ float as_stored(float v, int f32) { return f32 ? v : __bfloat162float(__float2bfloat16(v)); }


// The fp32 epilogue shared by every GEMM kernel: one output element.
struct Epilogue {
    void* c;            // (M, N) with leading dimension ldc; bf16 or fp32
    int c_f32;          // 1: c is float*, 0: c is bf16*
    long ldc;
    const void* bias;   // (N) or null; same dtype as the operands
    int bias_f32;
    bf16* pre;          // bf16 path only: pre-GeLU value, (M, N) with ldc, or null
    float* pre_f32;     // fp32 path only
    int gelu;
    int accumulate;
};

__device__ __forceinline__ void epilogue_store(const Epilogue& e, int m, int n, float v) {
    if (e.bias) v += e.bias_f32 ? ((const float*)e.bias)[n] : __bfloat162float(((const bf16*)e.bias)[n]);
    long idx = (long)m * e.ldc + n;
    if (e.pre) e.pre[idx] = __float2bfloat16(v);
    if (e.pre_f32) e.pre_f32[idx] = v;
    if (e.gelu) v = gelu_fwd_one(as_stored(v, e.c_f32));
    if (e.c_f32) {
        float* c = (float*)e.c;
        if (e.accumulate) v += c[idx];
        c[idx] = v;
    } else {
        bf16* c = (bf16*)e.c;
        if (e.accumulate) v += __bfloat162float(c[idx]);
        c[idx] = __float2bfloat16(v);
    }
}

// Two horizontally adjacent elements (m, n), (m, n + 1), n even: one 4- or 8-byte access per
// operand when both exist and the leading dimension is even (then m * ldc + n is even, so
// the pair is aligned); else element by element. Same arithmetic as epilogue_store.
__device__ __forceinline__ void epilogue_store2(const Epilogue& e, int m, int n, int N, float v0, float v1) {
    if (n + 1 >= N || (e.ldc & 1)) {
        if (n < N) epilogue_store(e, m, n, v0);
        if (n + 1 < N) epilogue_store(e, m, n + 1, v1);
        return;
    }
    if (e.bias) {
        if (e.bias_f32) {
            const float2 b = *reinterpret_cast<const float2*>((const float*)e.bias + n);
            v0 += b.x;
            v1 += b.y;
        } else {
            const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>((const bf16*)e.bias + n));
            v0 += b.x;
            v1 += b.y;
        }
    }
    const long idx = (long)m * e.ldc + n;
    if (e.pre) *reinterpret_cast<__nv_bfloat162*>(e.pre + idx) = __floats2bfloat162_rn(v0, v1);
    if (e.pre_f32) *reinterpret_cast<float2*>(e.pre_f32 + idx) = make_float2(v0, v1);
    if (e.gelu) {
        v0 = gelu_fwd_one(as_stored(v0, e.c_f32));
        v1 = gelu_fwd_one(as_stored(v1, e.c_f32));
    }
    if (e.c_f32) {
        float2* c = reinterpret_cast<float2*>((float*)e.c + idx);
        if (e.accumulate) {
            const float2 old = *c;
            v0 += old.x;
            v1 += old.y;
        }
        *c = make_float2(v0, v1);
    } else {
        __nv_bfloat162* c = reinterpret_cast<__nv_bfloat162*>((bf16*)e.c + idx);
        if (e.accumulate) {
            const float2 old = __bfloat1622float2(*c);
            v0 += old.x;
            v1 += old.y;
        }
        *c = __floats2bfloat162_rn(v0, v1);
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 tensor-core GEMM

namespace tc {

constexpr int BM = 128, BN = 128, BK = 32;
constexpr int WARPS_M = 2, WARPS_N = 4, THREADS = 32 * WARPS_M * WARPS_N;
constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // 64 x 32 per warp
constexpr int MT = WM / 16, NT = WN / 8;             // 4 x 4 mma tiles per warp
constexpr int PAD = 8;
constexpr int LD_KMAJ = BK + PAD;                    // row stride of a [rows][k] tile: 40
constexpr int LD_MMAJ = BM + PAD;                    // row stride of a [k][rows] tile: 136
constexpr int TILE_ELEMS = BM * LD_KMAJ;             // 5120 >= BK * LD_MMAJ = 4352
static_assert(BM == BN, "one tile size serves both operands");
static_assert(BK * LD_MMAJ <= TILE_ELEMS, "tile buffer too small");
constexpr int STAGES = 3;
constexpr int SMEM_BYTES = STAGES * 2 * TILE_ELEMS * 2;  // dynamic shared memory of every tc kernel: 61440

// Copies a (rows x cols) tile whose `cols` are contiguous in global memory (leading
// dimension ld) into shared memory with row stride `sld`. Global rows r0.., columns c0..;
// rows >= rdim and columns >= cdim read as zero. THREADS threads, 8-element chunks.
template <int ROWS, int COLS>
__device__ __forceinline__ void load_tile(bf16* s, int sld, const bf16* g, long ld, int r0, int rdim, int c0, int cdim,
                                          int vec) {
    constexpr int CHUNKS_PER_ROW = COLS / 8;
    constexpr int CHUNKS = ROWS * CHUNKS_PER_ROW;
    static_assert(CHUNKS % THREADS == 0, "tile must split evenly over the block");
#pragma unroll
    for (int i = 0; i < CHUNKS / THREADS; i++) {
        int chunk = threadIdx.x + i * THREADS;
        int r = chunk / CHUNKS_PER_ROW;
        int c = (chunk % CHUNKS_PER_ROW) * 8;
        int gr = r0 + r, gc = c0 + c;
        int valid = (gr < rdim) ? min(8, cdim - gc) : 0;
        if (valid < 0) valid = 0;
        bf16* dst = s + r * sld + c;
        if (vec) {
            const bf16* src = valid > 0 ? g + (long)gr * ld + gc : g;  // any valid address when nothing is read
            cp_async16(dst, src, valid * 2);
        } else {
            const bf16* src = g + (long)gr * ld + gc;
#pragma unroll
            for (int e = 0; e < 8; e++) dst[e] = e < valid ? src[e] : __float2bfloat16(0.0f);
        }
    }
}

// C tile (blockIdx.y, blockIdx.x) of C (M,N) = A (M,K) @ B (K,N), layouts as in the header.
// The shared buffer is declared by the calling kernel (one allocation however many
// instantiations the kernel branches between).
typedef bf16 Smem[STAGES][2][TILE_ELEMS];
static_assert(sizeof(Smem) == SMEM_BYTES, "the launcher passes SMEM_BYTES of dynamic shared memory");

template <bool A_KMAJOR, bool B_KMAJOR>
__device__ __forceinline__ void gemm(Smem& smem, const Epilogue& ep, const bf16* __restrict__ a, long lda,
                                     const bf16* __restrict__ b, long ldb, int M, int N, int K, int k_begin, int k_end,
                                     int vec) {

    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    auto load_stage = [&](int stage, int k0) {
        bf16* sa = smem[stage][0];
        bf16* sb = smem[stage][1];
        if (A_KMAJOR) load_tile<BM, BK>(sa, LD_KMAJ, a, lda, m0, M, k0, K, vec);   // sa[m][k]
        else          load_tile<BK, BM>(sa, LD_MMAJ, a, lda, k0, K, m0, M, vec);   // sa[k][m]
        if (B_KMAJOR) load_tile<BN, BK>(sb, LD_KMAJ, b, ldb, n0, N, k0, K, vec);   // sb[n][k]
        else          load_tile<BK, BN>(sb, LD_MMAJ, b, ldb, k0, K, n0, N, vec);   // sb[k][n]
    };

    // k-tiles k_begin / BK .. of this block's k range [k_begin, k_end) (k_begin a multiple of
    // BK; k_end a multiple of BK or K), STAGES - 1 of them in flight ahead of the one multiplied
    const int kt0 = k_begin / BK, ktiles = (k_end - k_begin + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ktiles) load_stage(s, (kt0 + s) * BK);
        cp_async_commit();  // possibly empty group keeps the wait count uniform
    }
    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait_1();  // all but the newest STAGES - 2 = 1 groups done: k-tile kt has landed ...
        __syncthreads();    // ... for every thread's copies (and the synchronous stores), and every
                            // warp is done multiplying stage (kt - 1) % STAGES, refilled next
        if (kt + STAGES - 1 < ktiles) load_stage((kt + STAGES - 1) % STAGES, (kt0 + kt + STAGES - 1) * BK);
        cp_async_commit();

        const bf16* sa = smem[kt % STAGES][0];
        const bf16* sb = smem[kt % STAGES][1];
        #pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned af[MT][4];
#pragma unroll
            for (int i = 0; i < MT; i++) {
                int mrow = wm0 + i * 16;
                if (A_KMAJOR) {
                    // matrices: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) = a0..a3
                    ldmatrix_x4(af[i], sa + (mrow + lane % 16) * LD_KMAJ + kk + (lane / 16) * 8);
                } else {
                    // stored [k][m]; .trans hands thread (group, tig) the pair (m = group, k = 2 tig + {0,1})
                    ldmatrix_x4_trans(af[i], sa + (kk + (lane & 7) + ((lane >> 4) << 3)) * LD_MMAJ + mrow + ((lane >> 3) & 1) * 8);
                }
            }
            unsigned bfr[NT][2];
#pragma unroll
            for (int p = 0; p < NT / 2; p++) {
                int ncol = wn0 + p * 16;
                unsigned r[4];
                if (B_KMAJOR) {
                    // matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
                    ldmatrix_x4(r, sb + (ncol + (lane & 7) + ((lane >> 4) << 3)) * LD_KMAJ + kk + ((lane >> 3) & 1) * 8);
                } else {
                    // stored [k][n]: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15), transposed
                    ldmatrix_x4_trans(r, sb + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * LD_MMAJ + ncol + (lane >> 4) * 8);
                }
                bfr[2 * p][0] = r[0];
                bfr[2 * p][1] = r[1];
                bfr[2 * p + 1][0] = r[2];
                bfr[2 * p + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) mma_bf16(acc[i][j], af[i], bfr[j][0], bfr[j][1]);
        }
    }

    // Accumulator layout of m16n8: c0,c1 at (row group, cols 2 tig + {0,1}), c2,c3 at row group + 8.
    const int group = lane / 4, tig = lane % 4;
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int m = m0 + wm0 + i * 16 + group + h * 8;
                int n = n0 + wn0 + j * 8 + tig * 2;
                if (m < M) epilogue_store2(ep, m, n, N, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
            }
}

}  // namespace tc

// ---------------------------------------------------------------------------------------------
// fp32 FMA GEMM

namespace simt {

constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;

template <typename T>
__device__ __forceinline__ void gemm(const Epilogue& ep, const T* __restrict__ a, long lda, int a_kmajor,
                                     const T* __restrict__ b, long ldb, int b_kmajor, int M, int N, int K) {
    __shared__ float sa[BK][BM + 4];  // sa[k][m]
    __shared__ float sb[BK][BN + 4];  // sb[k][n]
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int i = 0; i < BM * BK / THREADS; i++) {
            int e = threadIdx.x + i * THREADS;
            // consecutive threads walk the contiguous dimension of each operand (coalesced)
            int m, k;
            if (a_kmajor) { m = e / BK; k = e % BK; } else { k = e / BM; m = e % BM; }
            int gm = m0 + m, gk = k0 + k;
            sa[k][m] = (gm < M && gk < K) ? load_f(a_kmajor ? a + (long)gm * lda + gk : a + (long)gk * lda + gm) : 0.0f;
            int n;
            if (b_kmajor) { n = e / BK; k = e % BK; } else { k = e / BN; n = e % BN; }
            int gn = n0 + n;
            gk = k0 + k;
            sb[k][n] = (gn < N && gk < K) ? load_f(b_kmajor ? b + (long)gn * ldb + gk : b + (long)gk * ldb + gn) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; k++) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) av[i] = sa[k][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) bv[j] = sb[k][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
            if (m < M && n < N) epilogue_store(ep, m, n, acc[i][j]);
        }
}

}  // namespace simt

// ---------------------------------------------------------------------------------------------
// kernels
//
// Grid for every GEMM: (ceil(N / 128), ceil(M / 128), splits) blocks of 256 threads with
// tc::SMEM_BYTES of dynamic shared memory for bf16 (the launcher raises the 48 KB limit),
// (ceil(N / 64), ceil(M / 64)) blocks of 256 threads for f32.

// out (M,N) = inp (M,K) @ W (+ bias) (+ GeLU). weight_outin: W is [N,K] (else [K,N]).
// pre (M,N) receives the pre-GeLU value when non-null. bias may be null.
extern "C" __global__ void __launch_bounds__(256) matmul_fwd_bf16(bf16* out, bf16* pre, const bf16* inp,
                                                                  const bf16* weight, const bf16* bias, int M, int K,
                                                                  int N, int weight_outin, int gelu, int vec) {
    extern __shared__ float4 smem4[];
    tc::Smem& smem = *reinterpret_cast<tc::Smem*>(smem4);
    Epilogue ep{out, 0, N, bias, 0, pre, nullptr, gelu, 0};
    if (weight_outin) tc::gemm<true, true>(smem, ep, inp, K, weight, K, M, N, K, 0, K, vec);
    else              tc::gemm<true, false>(smem, ep, inp, K, weight, N, M, N, K, 0, K, vec);
}

extern "C" __global__ void __launch_bounds__(256) matmul_fwd_f32(float* out, float* pre, const float* inp,
                                                                 const float* weight, const float* bias, int M, int K,
                                                                 int N, int weight_outin, int gelu) {
    Epilogue ep{out, 1, N, bias, 1, nullptr, pre, gelu, 0};
    if (weight_outin) simt::gemm<float>(ep, inp, K, 1, weight, K, 1, M, N, K);
    else              simt::gemm<float>(ep, inp, K, 1, weight, N, 0, M, N, K);
}

// The backward GEMM, launched once for dinp and once for dweight (see the table above):
// c (M,N), leading dimension N, (=|+=) A @ B. c is fp32 when c_f32, else bf16.
// Split-K (gridDim.z > 1, deterministic): block z multiplies k in [z kchunk, (z + 1) kchunk)
// (kchunk a multiple of BK) and stores its fp32 partial, plainly, to c + z M N (c is then the
// (splits, M, N) fp32 partial buffer, c_f32 = 1, accumulate = 0); matmul_split_reduce adds the
// partials in order into the real C. With gridDim.z = 1, kchunk >= K.
extern "C" __global__ void __launch_bounds__(256) matmul_bwd_bf16(void* c, int c_f32, int accumulate, const bf16* a,
                                                                  int lda, int a_kmajor, const bf16* b, int ldb,
                                                                  int b_kmajor, int M, int N, int K, int kchunk,
                                                                  int vec) {
    extern __shared__ float4 smem4[];
    tc::Smem& smem = *reinterpret_cast<tc::Smem*>(smem4);
    void* cz = gridDim.z > 1 ? (void*)((float*)c + (long)blockIdx.z * M * N) : c;
    Epilogue ep{cz, c_f32, N, nullptr, 0, nullptr, nullptr, 0, accumulate};
    const int k_begin = blockIdx.z * kchunk, k_end = min(K, k_begin + kchunk);
    if (a_kmajor) {
        if (b_kmajor) tc::gemm<true, true>(smem, ep, a, lda, b, ldb, M, N, K, k_begin, k_end, vec);
        else          tc::gemm<true, false>(smem, ep, a, lda, b, ldb, M, N, K, k_begin, k_end, vec);
    } else {
        if (b_kmajor) tc::gemm<false, true>(smem, ep, a, lda, b, ldb, M, N, K, k_begin, k_end, vec);
        else          tc::gemm<false, false>(smem, ep, a, lda, b, ldb, M, N, K, k_begin, k_end, vec);
    }
}

// c[i] (=|+=) sum over z = 0 .. splits - 1, in that order, of partial[z * MN + i] (fp32); c is
// fp32 when c_f32, else bf16. One thread per element, grid ceil(MN / 256).
extern "C" __global__ void __launch_bounds__(256) matmul_split_reduce(void* c, int c_f32, int accumulate,
                                                                      const float* partial, long MN, int splits) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= MN) return;
    float v = 0.0f;
    for (int z = 0; z < splits; z++) v += partial[z * MN + i];
    if (c_f32) {
        float* d = (float*)c;
        d[i] = accumulate ? d[i] + v : v;
    } else {
        bf16* d = (bf16*)c;
        d[i] = __float2bfloat16(accumulate ? __bfloat162float(d[i]) + v : v);
    }
}

extern "C" __global__ void __launch_bounds__(256) matmul_bwd_f32(float* c, int accumulate, const float* a, int lda,
                                                                 int a_kmajor, const float* b, int ldb, int b_kmajor,
                                                                 int M, int N, int K) {
    Epilogue ep{c, 1, N, nullptr, 0, nullptr, nullptr, 0, accumulate};
    simt::gemm<float>(ep, a, lda, a_kmajor, b, ldb, b_kmajor, M, N, K);
}

// dbias (N) += column sums of dout (M,N), deterministic, in two passes over many blocks
// (common.cuh's column_chunk_sums, then add_column_chunks).
template <typename T>
__device__ __forceinline__ void bias_partial(float* partial, const T* __restrict__ dout, int M, int N, int rows) {
    column_chunk_sums(partial, M, N, rows, [&](int m, int n) { return load_f(dout + (long)m * N + n); });
}

extern "C" __global__ void __launch_bounds__(512) matmul_bias_partial_bf16(float* partial, const bf16* dout, int M,
                                                                           int N, int rows) {
    bias_partial<bf16>(partial, dout, M, N, rows);
}

extern "C" __global__ void __launch_bounds__(512) matmul_bias_partial_f32(float* partial, const float* dout, int M,
                                                                          int N, int rows) {
    bias_partial<float>(partial, dout, M, N, rows);
}

// Pass 2: dbias[n] += sum over the chunks, in order. Grid ceil(N / 256), block 256.
extern "C" __global__ void __launch_bounds__(256) matmul_bias_reduce(void* dbias, int dbias_f32,
                                                                     const float* partial, int N, int chunks) {
    add_column_chunks(dbias, dbias_f32, partial, N, chunks);
}
