// Grouped-query attention's key/value head sharing (Hugging Face's `repeat_kv`) on a fused
// [q | k | v] row, forward and backward. CPU reference: kernels/src/ops/kv_expand.rs.
//
//   forward:  inp (N, (NH + 2KV) HS) = [q | k | v];  out (N, 3 NH HS) = [q | k' | v'],
//             k'[h] = k[h / G], v'[h] = v[h / G],  G = NH / KV
//   backward: dq = dout's q;  dk[j] = sum over r = 0 .. G - 1 of dout's k'[jG + r], same for dv
//             (dinp overwritten: an activation gradient)
//
// Threads: grid-stride loops. Forward, a thread per output element: it reads the one input
// element it copies (consecutive threads read consecutive columns of a head: coalesced; the G
// heads of a group read the same input head, from L2). Backward, a thread per input element:
// it sums its G gradient elements in order r = 0, 1, ..., in fp32 starting from the r = 0
// term (the CPU reference's order: bitwise equal in f32; for G = 1 an exact copy), one
// rounding at the store. No atomics: deterministic. Pure bandwidth.
//
// Preconditions (launchers check): KV >= 1, NH % KV == 0.

#include "common.cuh"

template <typename T>
static __device__ void kv_expand_fwd(T* out, const T* inp, u64 N, u64 NH, u64 KV, u64 HS) {
    const u64 QW = NH * HS, W_in = (NH + 2 * KV) * HS, W_out = 3 * QW, G = NH / KV;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x; k < N * W_out; k += stride) {
        const u64 r = k / W_out, col = k % W_out;
        u64 src = col;  // q: the same column
        if (col >= QW) {
            const u64 part = (col - QW) / QW, within = (col - QW) % QW;  // part 0: k, 1: v
            const u64 h = within / HS, d = within % HS;
            src = QW + part * KV * HS + (h / G) * HS + d;
        }
        out[k] = inp[r * W_in + src];
    }
}

template <typename T>
static __device__ void kv_expand_bwd(T* dinp, const T* dout, u64 N, u64 NH, u64 KV, u64 HS) {
    const u64 QW = NH * HS, KW = KV * HS, W_in = QW + 2 * KW, W_out = 3 * QW, G = NH / KV;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x; k < N * W_in; k += stride) {
        const u64 r = k / W_in, col = k % W_in;
        const T* d = dout + r * W_out;
        if (col < QW) {
            dinp[k] = d[col];
        } else {
            const u64 part = (col - QW) / KW, within = (col - QW) % KW;  // part 0: k, 1: v
            const u64 j = within / HS, c = within % HS;
            const T* src = d + QW + part * QW + j * G * HS + c;  // head jG of k' (or v')
            float acc = to_f32(src[0]);
            for (u64 g = 1; g < G; g++) acc += to_f32(src[g * HS]);
            dinp[k] = from_f32<T>(acc);
        }
    }
}

// out (N, 3 NH HS) from inp (N, (NH + 2KV) HS). Grid-stride, block 256.
extern "C" __global__ void __launch_bounds__(256) kv_expand_fwd_f32(float* out, const float* inp, u64 N, u64 NH, u64 KV,
                                                                    u64 HS) {
    kv_expand_fwd(out, inp, N, NH, KV, HS);
}
extern "C" __global__ void __launch_bounds__(256) kv_expand_fwd_bf16(bf16* out, const bf16* inp, u64 N, u64 NH, u64 KV,
                                                                     u64 HS) {
    kv_expand_fwd(out, inp, N, NH, KV, HS);
}

// dinp (N, (NH + 2KV) HS) from dout (N, 3 NH HS). Grid-stride, block 256.
extern "C" __global__ void __launch_bounds__(256) kv_expand_bwd_f32(float* dinp, const float* dout, u64 N, u64 NH,
                                                                    u64 KV, u64 HS) {
    kv_expand_bwd(dinp, dout, N, NH, KV, HS);
}
extern "C" __global__ void __launch_bounds__(256) kv_expand_bwd_bf16(bf16* dinp, const bf16* dout, u64 N, u64 NH,
                                                                     u64 KV, u64 HS) {
    kv_expand_bwd(dinp, dout, N, NH, KV, HS);
}
