// Attention of new queries against a key/value cache (incremental decoding), forward only.
// CPU reference: kernels/src/ops/attention.rs `cpu::attention_cached_forward`.
//
// qkv (B, n, (NH + 2KV) HS) holds the fused [q | k | v] rows of the positions start .. start+n;
// the caches kc, vc are (B, Tmax, KV HS). Two kernels on one stream:
//   kv_cache_append:      kc[b, start + i] = k row of qkv[b, i], vc likewise (a copy)
//   attention_cached_fwd: for new row i of head h (KV head g = h / (NH / KV)), over the keys
//                         j = 0 .. start + i:  s_j = q . k_j / sqrt(HS), p = softmax(s),
//                         out[b, i, h] = sum_j p_j v_j
//
// Threads. Append: a grid-stride loop, a thread per copied element (of k and of v). Attention:
// one block per (i, h, b) (grid (n, NH, B)), 128 threads (4 warps). The block stages q (scaled,
// f32) and the start + i + 1 scores (f32) in dynamic shared memory: (HS + start + n) floats,
// sized by the launcher (which checks it fits). Scores: a warp per key, its lanes over d, a xor
// tree sum. Softmax in f32: the block's max and sum by warp shuffles then the warps' results
// in order (deterministic). Output: a thread per d, summing p_j v_j in key order, one rounding
// at the store. Any even or odd HS works (loops over d); decoding is one row at a time, so this
// is bandwidth- and latency-bound, not a tensor-core kernel.

#include "common.cuh"

template <typename T>
static __device__ void kv_cache_append(T* kc, T* vc, const T* qkv, u64 rows, u64 n, u64 t_max, u64 start, u64 NH,
                                       u64 KV, u64 HS) {
    const u64 KW = KV * HS, W = NH * HS + 2 * KW;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x; k < rows * KW; k += stride) {
        const u64 r = k / KW, col = k % KW;  // r = b * n + i
        const u64 b = r / n, i = r % n;
        const T* src = qkv + r * W + NH * HS + col;
        const u64 dst = (b * t_max + start + i) * KW + col;
        kc[dst] = src[0];
        vc[dst] = src[KW];
    }
}

static constexpr int CACHED_THREADS = 128;
static constexpr int CACHED_WARPS = CACHED_THREADS / 32;

// The block's max (op 0) or sum (op 1) of v, the same in every thread.
static __device__ float cached_block_reduce(float v, bool max, float* s_warp) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = max ? fmaxf(v, w) : v + w;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    __syncthreads();  // s_warp may still be read from an earlier call
    if (lane == 0) s_warp[warp] = v;
    __syncthreads();
    float r = s_warp[0];
    for (int w = 1; w < CACHED_WARPS; w++) r = max ? fmaxf(r, s_warp[w]) : r + s_warp[w];
    return r;
}

template <typename T>
static __device__ void attention_cached_fwd(T* out, const T* qkv, const T* kc, const T* vc, int n, int t_max, int start,
                                            int NH, int KV, int HS, float scale) {
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    __shared__ float s_warp[CACHED_WARPS];
    float* q = smem;       // HS
    float* s = smem + HS;  // start + i + 1 scores, then probabilities
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    const u64 KW = (u64)KV * HS, W = (u64)NH * HS + 2 * KW;
    const int g = h / (NH / KV);
    const int len = start + i + 1;
    const T* qrow = qkv + ((u64)b * n + i) * W + (u64)h * HS;
    for (int d = threadIdx.x; d < HS; d += CACHED_THREADS) q[d] = to_f32(qrow[d]) * scale;
    __syncthreads();
    const T* kb = kc + (u64)b * t_max * KW + (u64)g * HS;
    const T* vb = vc + (u64)b * t_max * KW + (u64)g * HS;
    float local_max = -3.402823466e38f;  // -FLT_MAX; every block has a key (len >= 1)
    for (int j = warp; j < len; j += CACHED_WARPS) {
        const T* kj = kb + (u64)j * KW;
        float acc = 0.0f;
        for (int d = lane; d < HS; d += 32) acc += q[d] * to_f32(kj[d]);
        acc = warp_sum(acc);
        if (lane == 0) s[j] = acc;
        local_max = fmaxf(local_max, acc);
    }
    const float m = cached_block_reduce(local_max, true, s_warp);  // syncs: every s[j] is written
    float local_sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += CACHED_THREADS) {
        const float e = expf(s[j] - m);
        s[j] = e;
        local_sum += e;
    }
    const float inv = 1.0f / cached_block_reduce(local_sum, false, s_warp);  // syncs: every p_j is written
    T* orow = out + ((u64)b * n + i) * NH * HS + (u64)h * HS;
    for (int d = threadIdx.x; d < HS; d += CACHED_THREADS) {
        float acc = 0.0f;
        for (int j = 0; j < len; j++) acc += s[j] * to_f32(vb[(u64)j * KW + d]);
        orow[d] = from_f32<T>(acc * inv);
    }
}

// kc, vc (B, Tmax, KV HS) rows start .. start + n from qkv (B, n, (NH + 2KV) HS). Grid-stride,
// block 256, rows = B n.
extern "C" __global__ void __launch_bounds__(256) kv_cache_append_f32(float* kc, float* vc, const float* qkv, u64 rows,
                                                                      u64 n, u64 t_max, u64 start, u64 NH, u64 KV,
                                                                      u64 HS) {
    kv_cache_append(kc, vc, qkv, rows, n, t_max, start, NH, KV, HS);
}
extern "C" __global__ void __launch_bounds__(256) kv_cache_append_bf16(bf16* kc, bf16* vc, const bf16* qkv, u64 rows,
                                                                       u64 n, u64 t_max, u64 start, u64 NH, u64 KV,
                                                                       u64 HS) {
    kv_cache_append(kc, vc, qkv, rows, n, t_max, start, NH, KV, HS);
}

// out (B, n, NH HS) from qkv and the caches. Grid (n, NH, B), 128 threads, (HS + start + n)
// floats of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(CACHED_THREADS)
    attention_cached_fwd_f32(float* out, const float* qkv, const float* kc, const float* vc, int n, int t_max,
                             int start, int NH, int KV, int HS, float scale) {
    attention_cached_fwd(out, qkv, kc, vc, n, t_max, start, NH, KV, HS, scale);
}
extern "C" __global__ void __launch_bounds__(CACHED_THREADS)
    attention_cached_fwd_bf16(bf16* out, const bf16* qkv, const bf16* kc, const bf16* vc, int n, int t_max, int start,
                              int NH, int KV, int HS, float scale) {
    attention_cached_fwd(out, qkv, kc, vc, n, t_max, start, NH, KV, HS, scale);
}
