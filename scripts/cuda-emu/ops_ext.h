// Additions to emu.h for the elementwise/normalisation/loss/optimizer kernels
// (embedding, layernorm, gelu, residual, crossentropy, adamw, norm): 128-bit int4, integer
// shuffles, ballot, match_any, __syncwarp, popc, integer atomicAdd, fast-math aliases.
// Same model as emu.h: one OS thread per CUDA thread, warp collectives via per-warp
// exchange buffers and 32-thread barriers (so every lane of a warp must reach them).
#pragma once
#include "emu.h"
#include <atomic>
#include <cmath>
struct alignas(16) int4 { int x, y, z, w; };
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __expf(float x) { return std::exp(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp().bar.arrive_and_wait(); }
inline unsigned emu_exchange(unsigned v, int src) {
    EmuWarp& w = emu_warp(); int l = emu_lane();
    memcpy(&w.f[l], &v, 4); w.bar.arrive_and_wait();
    unsigned r; memcpy(&r, &w.f[src & 31], 4); w.bar.arrive_and_wait(); return r;
}
inline unsigned __shfl_sync(unsigned, unsigned v, int src) { return emu_exchange(v, src); }
inline unsigned __shfl_up_sync(unsigned, unsigned v, int d) { int l = emu_lane(); unsigned r = emu_exchange(v, l >= d ? l - d : l); return r; }
inline unsigned __ballot_sync(unsigned, bool p) {
    EmuWarp& w = emu_warp(); int l = emu_lane();
    w.a[l][0] = p; w.bar.arrive_and_wait();
    unsigned m = 0; for (int i = 0; i < 32; i++) m |= (w.a[i][0] ? 1u : 0u) << i;
    w.bar.arrive_and_wait(); return m;
}
inline unsigned __match_any_sync(unsigned, unsigned v) {
    EmuWarp& w = emu_warp(); int l = emu_lane();
    w.a[l][1] = v; w.bar.arrive_and_wait();
    unsigned m = 0; for (int i = 0; i < 32; i++) m |= (w.a[i][1] == v ? 1u : 0u) << i;
    w.bar.arrive_and_wait(); return m;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
