// Bit-exact conversions between f32/f64 and the 16-bit float formats, shared by cuda_bf16.h,
// cuda_fp16.h and the mma emulation (which must not depend on those headers being included).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

namespace cudasim {

inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// __saturatef: NaN gives 0.
inline float sat01(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }

inline float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// Round to nearest even. NaN becomes 0x7FFF, the canonical NaN cvt.rn.bf16.f32 produces.
inline uint16_t f32_to_bf16_rn(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
inline uint16_t f32_to_bf16_rz(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    return (uint16_t)(u >> 16);
}
// Directed roundings: truncation moves toward zero, so away-from-zero is truncation plus one
// unit whenever discarded bits are non-zero (never applied to infinities or NaN).
inline uint16_t f32_to_bf16_dir(float f, bool up) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    uint16_t t = (uint16_t)(u >> 16);
    bool neg = u >> 31, inexact = (u & 0xffffu) != 0;
    if (inexact && (up != neg)) t++;
    return t;
}

// f64 -> f32 rounded to odd keeps the later f32 -> 16-bit rounding free of double rounding
// (24 >= 16 + 2 bits).
inline float f64_to_f32_odd(double d) {
    float f = (float)d;
    if (isfinite(f) && (double)f != d && (f32_bits(f) & 1u) == 0)
        f = nextafterf(f, (double)f < d ? INFINITY : -INFINITY);
    return f;
}
inline uint16_t f64_to_bf16_rn(double d) { return f32_to_bf16_rn(f64_to_f32_odd(d)); }

inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f;  // m * 2^-24, exact
        return sign ? -v : v;
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

// Round to nearest even; NaN becomes 0x7FFF (cvt.rn.f16.f32's canonical NaN).
inline uint16_t f32_to_f16_rn(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) return 0x7fff;
    if (u >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity
    if (u >= 0x38800000u) {                      // normal: >= 2^-14
        uint32_t r = u - 0x38000000u;            // rebias 127 -> 15
        r += 0xfffu + ((r >> 13) & 1u);
        return sign | (uint16_t)(r >> 13);
    }
    // subnormal: units of 2^-24, scaled exactly, rounded by rintf (default mode: to even)
    return sign | (uint16_t)rintf(bits_f32(u) * 16777216.0f);
}
inline uint16_t f64_to_f16_rn(double d) { return f32_to_f16_rn(f64_to_f32_odd(d)); }

}  // namespace cudasim
