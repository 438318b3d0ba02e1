// Token + position embedding, forward and backward. CPU reference: kernels/src/ops/embedding.rs.
//
//   forward:  out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]          tokens (B,T) u32, out (B,T,C)
//   backward: dwte[tokens[b,t],:] += dout[b,t,:];  dwpe[t,:] += sum_b dout[b,t,:]
//             (both are parameter gradients: they accumulate; token ids have no gradient)
//   Without learned positions (Llama): embedding_fwd_nopos_<dtype> writes out = wte[tokens]
//   (the same loop with the wpe term compiled out), and the launcher skips the dwpe kernel.
//   A token id >= V (the CPU reference refuses it with an error) makes its output row NaN in the
//   forward and is skipped by the backward: loud, without a device-to-host check in the launcher.
//
// Forward threads: a grid-stride loop over 16-byte packs (8 bf16 / 4 f32) of out; each thread
// reads the matching packs of wte and (with positions) wpe. Traffic: out written once, wpe rows
// (T*C) and the used wte rows read once per use, mostly from L2 for repeated tokens/positions.
//
// Backward, deterministic, no float atomics, and in the CPU's exact summation order:
//   dwpe: embedding_bwd_dwpe_<dtype>: one thread per (t, pack of columns) walks b = 0..B in
//     order: acc = dwpe[t]; acc += dout[b,t] ... (coalesced over columns).
//   dwte: a stable counting sort of the positions by token id, then one owner per token:
//     1. embedding_bwd_count: counts[tok]++ (integer atomics: the totals do not depend on order)
//     2. embedding_bwd_scan: one block turns counts (V+1) into exclusive offsets in place, so
//        bucket v is sorted[offsets[v] .. offsets[v+1]).
//     3. embedding_bwd_place: warp w owns the token ids [w*S, w*S + S) (S = slice) and scans
//        all N positions in order, 32 at a time: __ballot_sync finds the positions whose token
//        it owns, __match_any_sync groups equal tokens in the chunk, and each position goes to
//        offsets[tok] + (count already placed, in shared memory) + (rank among equal lanes
//        below it). Every bucket therefore lists its positions in increasing n: stable, and
//        independent of scheduling. Cost per warp: N/32 cheap iterations, ~N/32 * 100 cycles.
//     4. embedding_bwd_dwte_<dtype>: grid (N, column chunks); the block at sorted index i works
//        only if i starts a bucket. Its threads own packs of columns and walk the bucket in
//        order: acc = dwte[tok]; acc += dout[n] for each position n; one store (so bf16 dwte
//        is rounded once per step, not once per occurrence of the token). A frequent token is
//        one long in-order walk by one block per column chunk; its loads are independent, so
//        they pipeline (a 10K-position bucket reads 10K rows of one column chunk: ~0.1 ms).
//   In fp32 both sums are bitwise equal to the CPU reference, which adds in row order.
//   Scratch (launcher-owned): offsets (V+1 u32, zeroed before step 1) and sorted (N u32).
//
// Preconditions (launchers check): C >= 1, 1 <= T, V < 2^32 - 1. Vector paths when C * sizeof(T)
// is a multiple of 16 and the pointers are 16-byte aligned (checked here, uniform), else scalar.

#include "common.cuh"

#define NAN_F __int_as_float(0x7fc00000)

// ---------------------------------------------------------------------------------------------
// forward

// POS: add wpe[t]; without it wpe is not read (the nopos kernels pass nullptr and Tlen = 1).
template <typename T, bool POS>
static __device__ void embedding_fwd(T* out, const unsigned* tokens, const T* wte, const T* wpe, u64 N, int Tlen, int C,
                                     unsigned V) {
    constexpr int P = Pack<T>::N;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if ((C % P == 0) && aligned16(out) && aligned16(wte) && (!POS || aligned16(wpe))) {
        const int cp = C / P;
        for (u64 i = tid; i < N * cp; i += stride) {
            const u64 row = i / cp;
            const int c = (int)(i - row * cp) * P;
            const unsigned tok = tokens[row];
            const int t = (int)(row % Tlen);
            Pack<T> o;
            if (tok >= V) {
#pragma unroll
                for (int k = 0; k < P; k++) o.v[k] = from_f32<T>(NAN_F);
            } else if (POS) {
                Pack<T> a = load_pack(wte + (u64)tok * C + c), b = load_pack(wpe + (u64)t * C + c);
#pragma unroll
                for (int k = 0; k < P; k++) o.v[k] = from_f32<T>(to_f32(a.v[k]) + to_f32(b.v[k]));
            } else {
                o = load_pack(wte + (u64)tok * C + c);
            }
            store_pack(out + row * C + c, o);
        }
    } else {
        for (u64 i = tid; i < N * C; i += stride) {
            const u64 row = i / C;
            const int c = (int)(i - row * C);
            const unsigned tok = tokens[row];
            const int t = (int)(row % Tlen);
            if (tok >= V) out[i] = from_f32<T>(NAN_F);
            else if (POS) out[i] = from_f32<T>(to_f32(wte[(u64)tok * C + c]) + to_f32(wpe[(u64)t * C + c]));
            else out[i] = wte[(u64)tok * C + c];
        }
    }
}

// out (N=B*T, C) <- tokens (N), wte (V,C), wpe (maxT,C); T = sequence length (position = row % T)
extern "C" __global__ void embedding_fwd_f32(float* out, const unsigned* tokens, const float* wte, const float* wpe, u64 N,
                                             int T, int C, unsigned V) {
    embedding_fwd<float, true>(out, tokens, wte, wpe, N, T, C, V);
}
extern "C" __global__ void embedding_fwd_bf16(__nv_bfloat16* out, const unsigned* tokens, const __nv_bfloat16* wte,
                                              const __nv_bfloat16* wpe, u64 N, int T, int C, unsigned V) {
    embedding_fwd<__nv_bfloat16, true>(out, tokens, wte, wpe, N, T, C, V);
}

// out (N=B*T, C) <- tokens (N), wte (V,C): no position table
extern "C" __global__ void embedding_fwd_nopos_f32(float* out, const unsigned* tokens, const float* wte, u64 N, int C,
                                                   unsigned V) {
    embedding_fwd<float, false>(out, tokens, wte, nullptr, N, 1, C, V);
}
extern "C" __global__ void embedding_fwd_nopos_bf16(__nv_bfloat16* out, const unsigned* tokens, const __nv_bfloat16* wte,
                                                    u64 N, int C, unsigned V) {
    embedding_fwd<__nv_bfloat16, false>(out, tokens, wte, nullptr, N, 1, C, V);
}

// ---------------------------------------------------------------------------------------------
// backward: dwpe

template <typename T>
static __device__ void embedding_bwd_dwpe(T* dwpe, const T* dout, int B, int Tlen, int C) {
    constexpr int P = Pack<T>::N;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const u64 TC = (u64)Tlen * C;
    if ((C % P == 0) && aligned16(dwpe) && aligned16(dout)) {
        for (u64 i = tid; i < TC / P; i += stride) {
            Pack<T> w = load_pack(dwpe + i * P);
            float acc[P];
#pragma unroll
            for (int k = 0; k < P; k++) acc[k] = to_f32(w.v[k]);
            for (int b = 0; b < B; b++) {
                Pack<T> d = load_pack(dout + (u64)b * TC + i * P);
#pragma unroll
                for (int k = 0; k < P; k++) acc[k] += to_f32(d.v[k]);
            }
#pragma unroll
            for (int k = 0; k < P; k++) w.v[k] = from_f32<T>(acc[k]);
            store_pack(dwpe + i * P, w);
        }
    } else {
        for (u64 i = tid; i < TC; i += stride) {
            float acc = to_f32(dwpe[i]);
            for (int b = 0; b < B; b++) acc += to_f32(dout[(u64)b * TC + i]);
            dwpe[i] = from_f32<T>(acc);
        }
    }
}

// dwpe (maxT,C), rows 0..T += sum_b dout (B,T,C)
extern "C" __global__ void embedding_bwd_dwpe_f32(float* dwpe, const float* dout, int B, int T, int C) {
    embedding_bwd_dwpe(dwpe, dout, B, T, C);
}
extern "C" __global__ void embedding_bwd_dwpe_bf16(__nv_bfloat16* dwpe, const __nv_bfloat16* dout, int B, int T, int C) {
    embedding_bwd_dwpe(dwpe, dout, B, T, C);
}

// ---------------------------------------------------------------------------------------------
// backward: dwte, step 1 (count), 2 (scan), 3 (place)

// offsets (V+1), zeroed by the launcher: offsets[tok] += 1 for every valid token.
extern "C" __global__ void embedding_bwd_count(unsigned* offsets, const unsigned* tokens, u64 N, unsigned V) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        const unsigned tok = tokens[i];
        if (tok < V) atomicAdd(offsets + tok, 1u);
    }
}

// In place: offsets (V+1) counts -> exclusive prefix sums (offsets[V] = number of valid tokens).
// grid: 1 block of 1024 threads. Thread t owns the contiguous chunk [t*K, t*K + K), K = ceil((V+1)/1024).
extern "C" __global__ void embedding_bwd_scan(unsigned* offsets, unsigned V) {
    __shared__ unsigned s_warp[32];
    const unsigned len = V + 1;
    const unsigned K = (len + blockDim.x - 1) / blockDim.x;
    const unsigned lo = min(len, threadIdx.x * K), hi = min(len, lo + K);
    unsigned local = 0;
    for (unsigned i = lo; i < hi; i++) local += offsets[i];
    // inclusive scan of the per-thread totals: within warps, then over warp totals
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    unsigned incl = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        unsigned y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
    }
    if (lane == 31) s_warp[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        const int nwarps = blockDim.x / 32;
        unsigned w = lane < nwarps ? s_warp[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            unsigned y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        s_warp[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    unsigned run = incl - local + (warp > 0 ? s_warp[warp - 1] : 0);  // exclusive start of this chunk
    for (unsigned i = lo; i < hi; i++) {
        const unsigned c = offsets[i];
        offsets[i] = run;
        run += c;
    }
}

#define PLACE_SLICE 256
#define PLACE_WARPS 4

// sorted (N): positions grouped by token, increasing n within a bucket. grid: ceil(V / (S * 4))
// blocks of 128 threads (4 warps); warp w of the grid owns token ids [w*S, w*S + S), S = 256.
extern "C" __global__ void embedding_bwd_place(unsigned* sorted, const unsigned* offsets, const unsigned* tokens, u64 N,
                                               unsigned V) {
    __shared__ unsigned s_placed[PLACE_WARPS][PLACE_SLICE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    const unsigned v0 = (blockIdx.x * PLACE_WARPS + warp) * PLACE_SLICE;
    if (v0 >= V) return;  // whole warp
    const unsigned v1 = min(V, v0 + PLACE_SLICE);
    unsigned* placed = s_placed[warp];
    for (int i = lane; i < PLACE_SLICE; i += 32) placed[i] = 0;
    __syncwarp();
    const unsigned below = (1u << lane) - 1;
    unsigned next = lane < N ? tokens[lane] : 0xffffffffu;
    for (u64 base = 0; base < N; base += 32) {
        const unsigned tok = next;
        const u64 ahead = base + 32 + lane;  // prefetch the next chunk while this one is placed
        next = ahead < N ? tokens[ahead] : 0xffffffffu;
        const bool mine = tok >= v0 && tok < v1;
        const unsigned mask = __ballot_sync(0xffffffffu, mine);
        if (mask == 0) continue;  // uniform over the warp
        // All 32 lanes take part; lanes not placing anything share a sentinel no owned id equals
        // (owned ids are < V < 0xffffffff), so for an owned token `peers` is exactly its lanes.
        const unsigned peers = __match_any_sync(0xffffffffu, mine ? tok : 0xffffffffu);
        if (mine) sorted[offsets[tok] + placed[tok - v0] + __popc(peers & below)] = (unsigned)(base + lane);
        __syncwarp();  // every lane has read placed[] before the leaders advance it
        if (mine && (peers & below) == 0) placed[tok - v0] += __popc(peers);
        __syncwarp();
    }
}

// ---------------------------------------------------------------------------------------------
// backward: dwte, step 4 (one owner per token, in-order sum)

template <typename T>
static __device__ void embedding_bwd_dwte(T* dwte, const T* dout, const unsigned* sorted, const unsigned* offsets,
                                          const unsigned* tokens, int C, unsigned V) {
    constexpr int P = Pack<T>::N;
    const unsigned i = blockIdx.x;
    if (i >= offsets[V]) return;  // only valid tokens were placed
    const unsigned tok = tokens[sorted[i]];
    if (i > 0 && tokens[sorted[i - 1]] == tok) return;  // not the start of its bucket
    const unsigned end = offsets[tok + 1];
    T* w = dwte + (u64)tok * C;
    if ((C % P == 0) && aligned16(dwte) && aligned16(dout)) {
        const int c = (blockIdx.y * blockDim.x + threadIdx.x) * P;
        if (c >= C) return;
        Pack<T> acc_p = load_pack(w + c);
        float acc[P];
#pragma unroll
        for (int k = 0; k < P; k++) acc[k] = to_f32(acc_p.v[k]);
        for (unsigned j = i; j < end; j++) {
            Pack<T> d = load_pack(dout + (u64)sorted[j] * C + c);
#pragma unroll
            for (int k = 0; k < P; k++) acc[k] += to_f32(d.v[k]);
        }
#pragma unroll
        for (int k = 0; k < P; k++) acc_p.v[k] = from_f32<T>(acc[k]);
        store_pack(w + c, acc_p);
    } else {
        // scalar: the same grid covers C * P columns' worth of threads; each takes P columns
        const int c0 = (blockIdx.y * blockDim.x + threadIdx.x) * P;
        for (int c = c0; c < min(C, c0 + P); c++) {
            float acc = to_f32(w[c]);
            for (unsigned j = i; j < end; j++) acc += to_f32(dout[(u64)sorted[j] * C + c]);
            w[c] = from_f32<T>(acc);
        }
    }
}

// dwte (V,C) += dout (N,C) scattered by token. grid: (N, ceil(ceil(C/P) / block)), P = 16 / sizeof(T).
extern "C" __global__ void embedding_bwd_dwte_f32(float* dwte, const float* dout, const unsigned* sorted,
                                                  const unsigned* offsets, const unsigned* tokens, int C, unsigned V) {
    embedding_bwd_dwte(dwte, dout, sorted, offsets, tokens, C, V);
}
extern "C" __global__ void embedding_bwd_dwte_bf16(__nv_bfloat16* dwte, const __nv_bfloat16* dout, const unsigned* sorted,
                                                   const unsigned* offsets, const unsigned* tokens, int C, unsigned V) {
    embedding_bwd_dwte(dwte, dout, sorted, offsets, tokens, C, V);
}
