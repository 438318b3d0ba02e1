// Multi-tensor launches: one kernel over every tensor of a table (a model's gradients and
// optimizer state), instead of one launch per tensor. CPU references: kernels/src/ops/norm.rs
// (sum of squares), kernels/src/ops/adamw.rs (the update), Tensor::fill_zero.
//
// The table (kernels/src/ops/multi_tensor.rs writes it, same layout) has one Desc per tensor;
// tensor t owns the launch's blocks [block_begin, block_begin + blocks), a count that depends
// on its length only (the launcher's `blocks_for`, the same rule as norm.cu's per-tensor
// launches), and walks its elements grid-stride within them. A block finds its tensor by a
// binary search over block_begin (uniform per block).
//
//   multi_norm_squares: partials[block] = sum of x^2 over the block's share: bit for bit what
//     the per-tensor norm_squares launches write, in the same order, so norm_finalize (norm.cu)
//     gives the same norm.
//   multi_adamw: AdamW (adamw.cu's arithmetic) on every tensor, the gradient scaled first by
//     the clip factor min(1, max_norm / (norm + 1e-6)) read from the device (max_norm > 0),
//     so clipping costs neither a host round trip nor a pass over the gradients; decay is
//     1 - lr wd for tensors flagged for weight decay, else 1.
//     It is also the trainer's guard (status[0], zeroed by the caller): a non-finite norm
//     (NaN or infinite gradients) skips the whole update, leaving every parameter and moment
//     as it was (status 1); an update that makes any parameter or moment non-finite is
//     flagged (status 2) so that no checkpoint is written from it.
//   multi_zero: zeroes every gradient (16-byte stores where aligned).
// Threads: 256 per block. Gradients are f32 or bf16 (flag bit 0), per tensor.

#include "common.cuh"

struct Desc {             // 64 bytes
    u64 param;            // fp32 master weights (multi_adamw), else 0
    u64 copy;             // bf16 working copy to refresh, or 0
    u64 grad;             // f32 or bf16 (flags bit 0)
    u64 m, v;             // fp32 optimizer state (multi_adamw), else 0
    u64 n;                // elements
    unsigned block_begin;  // first block of this tensor in the launch
    unsigned blocks;       // its block count
    unsigned flags;        // bit 0: grad is bf16; bit 1: weight decay applies
    unsigned pad;
};

#define GRAD_BF16 1u
#define DECAYS 2u

static __device__ __forceinline__ int find_tensor(const Desc* d, int count) {
    int lo = 0, hi = count - 1;
    const unsigned b = blockIdx.x;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (d[mid].block_begin <= b) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

static __device__ __forceinline__ float grad_at(const Desc& e, u64 i) {
    return (e.flags & GRAD_BF16) ? __bfloat162float(((const __nv_bfloat16*)e.grad)[i]) : ((const float*)e.grad)[i];
}

// partials (total blocks) = per-block sums of squares of every tensor's grad. The element
// order per thread is norm_squares' (16-byte packs when aligned, then a scalar tail).
extern "C" __global__ void __launch_bounds__(256) multi_norm_squares(float* partials, const Desc* table, int count) {
    const Desc e = table[find_tensor(table, count)];
    const u64 stride = (u64)e.blocks * blockDim.x;
    const u64 tid = (u64)(blockIdx.x - e.block_begin) * blockDim.x + threadIdx.x;
    const bool bf = e.flags & GRAD_BF16;
    const int P = bf ? 8 : 4;
    float acc = 0.0f;
    u64 done = 0;
    if ((e.grad & 15) == 0) {
        const u64 packs = e.n / P;
        for (u64 i = tid; i < packs; i += stride) {
            const int4 raw = *reinterpret_cast<const int4*>(e.grad + i * 16);
            if (bf) {
                const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    const float f = __bfloat162float(h[k]);
                    acc += f * f;
                }
            } else {
                const float* f = reinterpret_cast<const float*>(&raw);
#pragma unroll
                for (int k = 0; k < 4; k++) acc += f[k] * f[k];
            }
        }
        done = packs * P;
    }
    for (u64 i = done + tid; i < e.n; i += stride) {
        const float f = grad_at(e, i);
        acc += f * f;
    }
    const float total = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// AdamW on every tensor of the table (adamw.cu's per-element arithmetic), the gradient first
// scaled by the clip factor from norm[0] when max_norm > 0.
extern "C" __global__ void __launch_bounds__(256) multi_adamw(const Desc* table, int count, const float* norm,
                                                              float max_norm, float one_minus_beta1, float beta2,
                                                              float one_minus_beta2, float step_size, float bc2_sqrt,
                                                              float eps, float decay, float* status) {
    const float total = norm[0];
    if (!isfinite(total)) {
        if (blockIdx.x == 0 && threadIdx.x == 0) *status = 1.0f;
        return;
    }
    const Desc e = table[find_tensor(table, count)];
    const u64 stride = (u64)e.blocks * blockDim.x;
    const float s = max_norm > 0.0f ? fminf(max_norm / (total + 1e-6f), 1.0f) : 1.0f;
    const float dec = (e.flags & DECAYS) ? decay : 1.0f;
    bool finite = true;
    for (u64 i = (u64)(blockIdx.x - e.block_begin) * blockDim.x + threadIdx.x; i < e.n; i += stride) {
        float g = grad_at(e, i);
        if (max_norm > 0.0f) g *= s;
        finite &= adamw_element((float*)e.param, (bf16*)e.copy, (float*)e.m, (float*)e.v, i, g, one_minus_beta1, beta2,
                                one_minus_beta2, step_size, bc2_sqrt, eps, dec);
    }
    if (!finite) *status = 2.0f;  // every writer stores the same value
}

// Every tensor's grad = 0.
extern "C" __global__ void __launch_bounds__(256) multi_zero(const Desc* table, int count) {
    const Desc e = table[find_tensor(table, count)];
    const u64 stride = (u64)e.blocks * blockDim.x;
    const u64 tid = (u64)(blockIdx.x - e.block_begin) * blockDim.x + threadIdx.x;
    const u64 bytes = e.n * ((e.flags & GRAD_BF16) ? 2 : 4);
    u64 done = 0;
    if ((e.grad & 15) == 0) {
        const u64 packs = bytes / 16;
        for (u64 i = tid; i < packs; i += stride) *reinterpret_cast<int4*>(e.grad + i * 16) = make_int4(0, 0, 0, 0);
        done = packs * 16;
    }
    for (u64 i = done + tid; i < bytes; i += stride) *reinterpret_cast<unsigned char*>(e.grad + i) = 0;
}
