// The fused classifier tail: logits -> softmax -> cross-entropy loss -> dlogits in place.
// CPU reference: kernels/src/ops/crossentropy.rs.
//
//   logits (N,Vp): only the first V columns are real; the padding V..Vp never enters the softmax.
//   forward:  losses[n] = log(sum_{i<V} exp(logits[n,i] - max)) + max - logits[n, targets[n]]
//   with write_grad: logits[n,:] is overwritten in place by
//             dlogits[n,i] = dloss * softmax(logits[n,:V])_i - (i == target ? dloss : 0),  i < V
//             dlogits[n,i] = 0 in the padding (so padding gets zero gradient, never garbage).
//   A target >= V (the CPU reference refuses it with an error) gives losses[n] = NaN and a NaN
//   dlogits row: loud, without a device-to-host check in the launcher.
//
// Threads: one block per row (block = multiple of 32, <= 1024). Pass 1 walks the row in 16-byte
// packs (8 bf16 / 4 f32) keeping an online (max, sum of exp(x - max)) per thread, then the block
// combines the pairs: warp shuffles, then warp 0 over the per-warp pairs, in a fixed order. The
// loss needs logits[target], read by thread 0 before any thread can overwrite it in pass 2.
// Pass 2 (only with write_grad) re-reads the row (Vp * 2 bytes = 100 KB at GPT-2 sizes, mostly
// from L2) and writes dlogits. DRAM traffic per row: one read (two if L2 misses), one write.
// All math in fp32; the bf16 variant uses the fast __expf (error ~1e-6 relative, far below bf16's
// 4e-3), the fp32 variant the accurate expf, for the 1e-5 test tolerance.
// Preconditions (launcher checks): 1 <= V <= Vp, targets has N entries. The vector path is used
// when Vp * sizeof(T) is a multiple of 16 and logits is 16-byte aligned (uniform), else scalar.

#include "common.cuh"

#define NEG_INF __int_as_float(0xff800000)

template <bool FAST> static __device__ __forceinline__ float exp_(float x) { return FAST ? __expf(x) : expf(x); }

// Online softmax state: m = running max, s = sum of exp(x - m). Empty state: (-inf, 0).
struct MaxSum {
    float m, s;
};
template <bool FAST> static __device__ __forceinline__ void push(MaxSum& a, float x) {
    if (x > a.m) {
        a.s = a.s * exp_<FAST>(a.m - x) + 1.0f;  // exp(-inf) = 0 for the empty state
        a.m = x;
    } else if (x != NEG_INF) {  // a -inf logit adds exp(-inf) = 0; skip it so (-inf) - (-inf) never occurs
        a.s += exp_<FAST>(x - a.m);
    }
}
template <bool FAST> static __device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
    if (b.m == NEG_INF) return a;  // also keeps (-inf) - (-inf) = NaN out of the sums
    if (a.m == NEG_INF) return b;
    float m = fmaxf(a.m, b.m);
    return MaxSum{m, a.s * exp_<FAST>(a.m - m) + b.s * exp_<FAST>(b.m - m)};
}

template <typename T, bool FAST>
static __device__ void crossentropy_fwd(float* losses, T* logits, const unsigned* targets, int Vp, int V, float dloss,
                                        int write_grad) {
    constexpr int P = Pack<T>::N;
    __shared__ MaxSum s_warp[32];
    __shared__ MaxSum s_total;
    const u64 row = blockIdx.x;
    T* x = logits + row * (u64)Vp;
    const unsigned target = targets[row];
    const bool bad_target = target >= (unsigned)V;
    const bool vec = (Vp % P == 0) && aligned16(logits);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid / 32;

    // logits[target] before pass 2 may overwrite it (ordered by the __syncthreads below)
    float x_target = 0.0f;
    if (tid == 0 && !bad_target) x_target = to_f32(x[target]);

    // pass 1: per-thread online max / sum over the real columns
    MaxSum st{NEG_INF, 0.0f};
    if (vec) {
        for (int i = tid * P; i < V; i += blockDim.x * P) {
            Pack<T> v = load_pack(x + i);
#pragma unroll
            for (int k = 0; k < P; k++)
                if (i + k < V) push<FAST>(st, to_f32(v.v[k]));
        }
    } else {
        for (int i = tid; i < V; i += blockDim.x) push<FAST>(st, to_f32(x[i]));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
        st = combine<FAST>(st, other);
    }
    if (lane == 0) s_warp[warp] = st;
    __syncthreads();
    if (tid == 0) {
        MaxSum t = s_warp[0];
        for (int w = 1; w < (int)(blockDim.x / 32); w++) t = combine<FAST>(t, s_warp[w]);
        s_total = t;
        losses[row] = bad_target ? __int_as_float(0x7fc00000) : logf(t.s) + t.m - x_target;
    }
    __syncthreads();
    if (!write_grad) return;

    // pass 2: dlogits in place
    const float mx = s_total.m, scale = dloss / s_total.s;
    const float nan = __int_as_float(0x7fc00000);
    if (vec) {
        for (int i = tid * P; i < Vp; i += blockDim.x * P) {
            Pack<T> v = load_pack(x + i), g;
#pragma unroll
            for (int k = 0; k < P; k++) {
                const int j = i + k;
                float d = j < V ? scale * exp_<FAST>(to_f32(v.v[k]) - mx) : 0.0f;
                if (j == (int)target) d -= dloss;
                g.v[k] = from_f32<T>(bad_target ? nan : d);
            }
            store_pack(x + i, g);
        }
    } else {
        for (int j = tid; j < Vp; j += blockDim.x) {
            float d = j < V ? scale * exp_<FAST>(to_f32(x[j]) - mx) : 0.0f;
            if (j == (int)target) d -= dloss;
            x[j] = from_f32<T>(bad_target ? nan : d);
        }
    }
}

// losses (N) fp32; logits (N,Vp) in, dlogits out when write_grad != 0; targets (N) u32.
// grid: N blocks; block: multiple of 32, at most 1024.
extern "C" __global__ void crossentropy_fwd_f32(float* losses, float* logits, const unsigned* targets, int Vp, int V,
                                                float dloss, int write_grad) {
    crossentropy_fwd<float, false>(losses, logits, targets, Vp, V, dloss, write_grad);
}
extern "C" __global__ void crossentropy_fwd_bf16(float* losses, __nv_bfloat16* logits, const unsigned* targets, int Vp, int V,
                                                 float dloss, int write_grad) {
    crossentropy_fwd<__nv_bfloat16, true>(losses, logits, targets, Vp, V, dloss, write_grad);
}

// The step's loss on the device: out[0] = (accumulate ? out[0] : 0) + scale * sum(losses (N)),
// so a trainer can average the per-row losses of every micro-batch of a step (scale =
// 1 / (N * micro-batches)) without the host reading them back. CPU reference:
// crossentropy::cpu::loss_mean.
// Threads: one block of 1024; thread i sums rows i, i + 1024, ... in fp32, then the block
// combines the 1024 sums with warp shuffles and warp 0 over the warp sums, in a fixed order,
// so the value is the same on every run and every GPU. Precision: fp32 over a chain of
// N / 1024 + 15 additions of positive terms (<= ~1e-6 relative at N = 16K rows); the CPU
// sums in f64. Traffic: N floats, negligible next to the logits.
// grid: 1 block; block: 1024 threads (the launcher's).
extern "C" __global__ void crossentropy_mean_f32(float* out, const float* losses, int N, float scale, int accumulate) {
    __shared__ float s_warp[32];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) acc += losses[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    if (lane == 0) s_warp[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) total += s_warp[w];
        out[0] = (accumulate ? out[0] : 0.0f) + scale * total;
    }
}
