// Rotary position embedding, the Hugging Face Llama convention (rotate_half), forward and
// backward (sign = -1: the inverse rotation). CPU reference: kernels/src/ops/rope.rs.
//
// Each row of (B, T, W) is at position t = start + row % T (start > 0: incremental decoding).
// In the first `cols` columns (whole heads of HS), column d = col % HS pairs i = d mod HS/2 with its partner HS/2 away:
//   d <  HS/2: y = x cos a - x[col + HS/2] sin a
//   d >= HS/2: y = x cos a + x[col - HS/2] sin a,     a = t * inv_freq[i], sin taken times sign
// Columns past `cols` are copied. inv_freq (HS/2) comes from the host (f64 rounded to f32),
// so both backends use the same angles; sincosf in fp32 (no fast math).
// Threads: a grid-stride loop over every element; each output reads its input and its
// partner, both in the same row (coalesced).

#include "common.cuh"

template <typename T>
static __device__ void rope(T* out, const T* inp, const float* inv_freq, u64 total, int T_len, int W, int cols,
                            int HS, float sign, int start) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const int half = HS / 2;
    for (u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += stride) {
        const int col = (int)(k % W);
        if (col >= cols) {
            out[k] = inp[k];
            continue;
        }
        const u64 row = k / W;
        const float pos = (float)(start + (int)(row % T_len));
        const int d = col % HS;
        const bool first = d < half;
        const float a = pos * inv_freq[first ? d : d - half];
        float s, c;
        sincosf(a, &s, &c);
        s *= sign;
        const float x = to_f32(inp[k]);
        const float y = first ? x * c - to_f32(inp[k + half]) * s : x * c + to_f32(inp[k - half]) * s;
        out[k] = from_f32<T>(y);
    }
}

// out (B, T, W) from inp (B, T, W), rows at positions start .. start + T. Grid-stride, block 256.
extern "C" __global__ void __launch_bounds__(256) rope_f32(float* out, const float* inp, const float* inv_freq,
                                                           u64 total, int T, int W, int cols, int HS, float sign, int start) {
    rope(out, inp, inv_freq, total, T, W, cols, HS, sign, start);
}
extern "C" __global__ void __launch_bounds__(256) rope_bf16(bf16* out, const bf16* inp, const float* inv_freq,
                                                            u64 total, int T, int W, int cols, int HS, float sign, int start) {
    rope(out, inp, inv_freq, total, T, W, cols, HS, sign, start);
}
