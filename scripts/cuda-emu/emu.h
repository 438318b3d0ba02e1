// Minimal CUDA emulation for running kernel source on the CPU: one OS thread per CUDA thread,
// one block at a time; __syncthreads = block barrier; warp collectives through per-warp
// exchange buffers and 32-thread barriers.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <memory>
#include <thread>
#include <vector>
#include <functional>
#include <cstdio>
using std::min; using std::max;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx;
inline dim3 blockIdx, gridDim, blockDim;
struct float4 { float x, y, z, w; };
struct __nv_bfloat16 { uint16_t bits; };
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = (uint32_t)b.bits << 16; float f; memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if (std::isnan(f)) return {0x7fc0};
    uint32_t r = u + 0x7fff + ((u >> 16) & 1);
    return {(uint16_t)(r >> 16)};
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned long __cvta_generic_to_shared(const void* p) { return (unsigned long)(uintptr_t)p; }

alignas(16) inline float4 emu_dyn_smem[1 << 16];

struct EmuWarp {
    std::barrier<> bar{32};
    float f[32];
    const void* addr[32];
    unsigned a[32][4], b[32][2];
};
inline std::unique_ptr<std::barrier<>> emu_block_bar;
inline std::vector<std::unique_ptr<EmuWarp>> emu_warps;
inline EmuWarp& emu_warp() { return *emu_warps[threadIdx.x / 32 + (threadIdx.y * blockDim.x) / 32]; }
inline int emu_lane() { return (threadIdx.y * blockDim.x + threadIdx.x) % 32; }

inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
inline float __shfl_sync(unsigned, float v, int src) {
    EmuWarp& w = emu_warp(); int l = emu_lane();
    w.f[l] = v; w.bar.arrive_and_wait(); float r = w.f[src & 31]; w.bar.arrive_and_wait(); return r;
}
inline float __shfl_xor_sync(unsigned m, float v, int x) { return __shfl_sync(m, v, emu_lane() ^ x); }

inline uint16_t emu_b16(const void* p, int i) { uint16_t v; memcpy(&v, (const char*)p + 2 * i, 2); return v; }
// ldmatrix .x4 (.trans): thread lane supplies the row address of matrix lane/8, row lane%8.
inline void emu_ldmatrix(unsigned (&r)[4], const void* p, bool trans) {
    EmuWarp& w = emu_warp(); int l = emu_lane();
    w.addr[l] = p; w.bar.arrive_and_wait();
    for (int q = 0; q < 4; q++) {
        uint16_t lo, hi;
        if (!trans) { const void* row = w.addr[q * 8 + l / 4]; lo = emu_b16(row, 2 * (l % 4)); hi = emu_b16(row, 2 * (l % 4) + 1); }
        else { lo = emu_b16(w.addr[q * 8 + 2 * (l % 4)], l / 4); hi = emu_b16(w.addr[q * 8 + 2 * (l % 4) + 1], l / 4); }
        r[q] = (unsigned)lo | ((unsigned)hi << 16);
    }
    w.bar.arrive_and_wait();
}
inline float emu_half(unsigned reg, int h) { __nv_bfloat16 b{(uint16_t)(h ? reg >> 16 : reg & 0xffff)}; return __bfloat162float(b); }
// mma.m16n8k16.row.col bf16 -> f32, fragment layouts of the PTX ISA.
inline void emu_mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    EmuWarp& w = emu_warp(); int l = emu_lane();
    for (int i = 0; i < 4; i++) w.a[l][i] = a[i];
    w.b[l][0] = b0; w.b[l][1] = b1;
    w.bar.arrive_and_wait();
    int g = l / 4, t = l % 4;
    for (int e = 0; e < 4; e++) {
        int row = g + (e / 2) * 8, col = 2 * t + (e % 2);
        float acc = d[e];
        for (int k = 0; k < 16; k++) {
            int kk = k % 8;
            float av = emu_half(w.a[(row % 8) * 4 + kk / 2][row / 8 + 2 * (k / 8)], kk % 2);
            float bv = emu_half(w.b[col * 4 + kk / 2][k / 8], kk % 2);
            acc += av * bv;
        }
        d[e] = acc;
    }
    w.bar.arrive_and_wait();
}

// Runs kernel(args) over grid x block, one block at a time.
inline void emu_launch(dim3 grid, dim3 block, std::function<void()> kernel) {
    gridDim = grid; blockDim = block;
    int n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = {bx, by, bz};
                emu_block_bar = std::make_unique<std::barrier<>>(n);
                emu_warps.clear();
                for (int i = 0; i < (n + 31) / 32; i++) emu_warps.push_back(std::make_unique<EmuWarp>());
                std::vector<std::thread> th;
                for (int i = 0; i < n; i++)
                    th.emplace_back([&, i] { threadIdx = {(unsigned)(i % block.x), (unsigned)(i / block.x), 0}; kernel(); });
                for (auto& x : th) x.join();
            }
}
