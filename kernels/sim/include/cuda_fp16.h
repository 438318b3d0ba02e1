// IEEE half precision for the CUDA simulator: the basics of CUDA's cuda_fp16.h (types,
// conversions, arithmetic), bit-identical storage (2 bytes, alignment 2; pairs 4).
#pragma once
#include <cudasim/fpconv.h>
#include <cudasim/half_ops.h>
#include <cudasim/vector_types.h>
#include <type_traits>

struct __half_raw { unsigned short x; };
struct __half2_raw { unsigned short x, y; };

struct alignas(2) __half {
    unsigned short __x;
    __half() = default;
    constexpr __half(const __half_raw& r) : __x(r.x) {}
    __half(float f) : __x(::cudasim::f32_to_f16_rn(f)) {}
    __half(double d) : __x(::cudasim::f64_to_f16_rn(d)) {}
    template <class I, std::enable_if_t<std::is_integral<I>::value, int> = 0>
    __half(I i) : __x(::cudasim::f64_to_f16_rn((double)i)) {}
    __half& operator=(const __half_raw& r) { __x = r.x; return *this; }
    operator __half_raw() const { return {__x}; }
    operator float() const { return ::cudasim::f16_to_f32(__x); }
    explicit operator bool() const { return (__x & 0x7fffu) != 0; }
};

struct alignas(4) __half2 {
    __half x, y;
    __half2() = default;
    constexpr __half2(__half a, __half b) : x(a), y(b) {}
    __half2(const __half2_raw& r) { x.__x = r.x; y.__x = r.y; }
    __half2& operator=(const __half2_raw& r) { x.__x = r.x; y.__x = r.y; return *this; }
    operator __half2_raw() const { return {x.__x, y.__x}; }
};
typedef __half half;
typedef __half2 half2;
static_assert(sizeof(__half) == 2 && alignof(__half2) == 4, "half layout");

inline __half __ushort_as_half(unsigned short u) { __half r; r.__x = u; return r; }
inline __half __short_as_half(short s) { return __ushort_as_half((unsigned short)s); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return (short)h.__x; }
inline float __half2float(__half h) { return ::cudasim::f16_to_f32(h.__x); }
inline __half __float2half_rn(float f) { return __ushort_as_half(::cudasim::f32_to_f16_rn(f)); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half __double2half(double d) { return __ushort_as_half(::cudasim::f64_to_f16_rn(d)); }
inline __half __int2half_rn(int i) { return __double2half((double)i); }
inline __half __uint2half_rn(unsigned i) { return __double2half((double)i); }

inline __half2 __halves2half2(__half a, __half b) { return __half2(a, b); }
inline __half2 __half2half2(__half a) { return __half2(a, a); }
inline __half2 __floats2half2_rn(float a, float b) { return __half2(__float2half_rn(a), __float2half_rn(b)); }
inline __half2 __float2half2_rn(float a) { return __floats2half2_rn(a, a); }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline float2 __half22float2(__half2 v) { return make_float2(__half2float(v.x), __half2float(v.y)); }
inline float __low2float(__half2 v) { return __half2float(v.x); }
inline float __high2float(__half2 v) { return __half2float(v.y); }
inline __half __low2half(__half2 v) { return v.x; }
inline __half __high2half(__half2 v) { return v.y; }
inline __half2 __lowhigh2highlow(__half2 v) { return __half2(v.y, v.x); }

namespace cudasim {
inline float h2f(__half h) { return __half2float(h); }
inline __half f2h(float f) { return __float2half_rn(f); }
inline __half d2h(double d) { return __double2half(d); }
}  // namespace cudasim

CUDASIM_HALF_OPS(__half, __half2, ::cudasim::h2f, ::cudasim::f2h, ::cudasim::d2h)

#define CUDART_INF_FP16 __ushort_as_half((unsigned short)0x7C00U)
#define CUDART_NAN_FP16 __ushort_as_half((unsigned short)0x7FFFU)
#define CUDART_ZERO_FP16 __ushort_as_half((unsigned short)0x0000U)
#define CUDART_ONE_FP16 __ushort_as_half((unsigned short)0x3C00U)
