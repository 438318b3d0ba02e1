// bfloat16 for the CUDA simulator: the types, conversions and intrinsics of CUDA's
// cuda_bf16.h that kernels use, computed on the host CPU. Storage is bit-identical to CUDA's
// (2 bytes, alignment 2; pairs alignment 4) so device buffers are exchanged unchanged.
#pragma once
#include <cudasim/fpconv.h>
#include <cudasim/half_ops.h>
#include <cudasim/vector_types.h>
#include <type_traits>

struct __nv_bfloat16_raw { unsigned short x; };
struct __nv_bfloat162_raw { unsigned short x, y; };

struct alignas(2) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(::cudasim::f32_to_bf16_rn(f)) {}
    __nv_bfloat16(double d) : __x(::cudasim::f64_to_bf16_rn(d)) {}
    template <class I, std::enable_if_t<std::is_integral<I>::value, int> = 0>
    __nv_bfloat16(I i) : __x(::cudasim::f64_to_bf16_rn((double)i)) {}
    __nv_bfloat16& operator=(const __nv_bfloat16_raw& r) { __x = r.x; return *this; }
    operator __nv_bfloat16_raw() const { return {__x}; }
    operator float() const { return ::cudasim::bf16_to_f32(__x); }
    explicit operator bool() const { return (__x & 0x7fffu) != 0; }
};

struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
    __nv_bfloat162() = default;
    constexpr __nv_bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) : x(a), y(b) {}
    __nv_bfloat162(const __nv_bfloat162_raw& r) { x.__x = r.x; y.__x = r.y; }
    __nv_bfloat162& operator=(const __nv_bfloat162_raw& r) { x.__x = r.x; y.__x = r.y; return *this; }
    operator __nv_bfloat162_raw() const { return {x.__x, y.__x}; }
};

typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "bf16 layout");
static_assert(sizeof(__nv_bfloat162) == 4 && alignof(__nv_bfloat162) == 4, "bf162 layout");

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 r; r.__x = u; return r; }
inline __nv_bfloat16 __short_as_bfloat16(short s) { return __ushort_as_bfloat16((unsigned short)s); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return (short)h.__x; }

inline float __bfloat162float(__nv_bfloat16 h) { return ::cudasim::bf16_to_f32(h.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __ushort_as_bfloat16(::cudasim::f32_to_bf16_rn(f)); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat16 __float2bfloat16_rz(float f) { return __ushort_as_bfloat16(::cudasim::f32_to_bf16_rz(f)); }
inline __nv_bfloat16 __float2bfloat16_ru(float f) { return __ushort_as_bfloat16(::cudasim::f32_to_bf16_dir(f, true)); }
inline __nv_bfloat16 __float2bfloat16_rd(float f) { return __ushort_as_bfloat16(::cudasim::f32_to_bf16_dir(f, false)); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __ushort_as_bfloat16(::cudasim::f64_to_bf16_rn(d)); }
inline __nv_bfloat16 __int2bfloat16_rn(int i) { return __double2bfloat16((double)i); }
inline __nv_bfloat16 __uint2bfloat16_rn(unsigned i) { return __double2bfloat16((double)i); }
inline __nv_bfloat16 __ll2bfloat16_rn(long long i) { return __double2bfloat16((double)i); }
inline int __bfloat162int_rz(__nv_bfloat16 h) {
    float f = __bfloat162float(h);
    if (f != f) return 0;
    if (f >= 2147483648.0f) return 2147483647;
    if (f <= -2147483648.0f) return (-2147483647 - 1);
    return (int)f;
}
inline unsigned __bfloat162uint_rz(__nv_bfloat16 h) {
    float f = __bfloat162float(h);
    if (!(f > 0.0f)) return 0;
    return f >= 4294967296.0f ? 4294967295u : (unsigned)f;
}

inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162(a, b); }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return __nv_bfloat162(a, a); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162(__float2bfloat16_rn(a), __float2bfloat16_rn(b)); }
inline __nv_bfloat162 __float2bfloat162_rn(float a) { return __floats2bfloat162_rn(a, a); }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 v) { return v.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 v) { return v.y; }
inline __nv_bfloat162 __low2bfloat162(__nv_bfloat162 v) { return __nv_bfloat162(v.x, v.x); }
inline __nv_bfloat162 __high2bfloat162(__nv_bfloat162 v) { return __nv_bfloat162(v.y, v.y); }
inline __nv_bfloat162 __lows2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(a.x, b.x); }
inline __nv_bfloat162 __highs2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(a.y, b.y); }
inline __nv_bfloat162 __lowhigh2highlow(__nv_bfloat162 v) { return __nv_bfloat162(v.y, v.x); }

namespace cudasim {
inline float bf16f(__nv_bfloat16 h) { return __bfloat162float(h); }
inline __nv_bfloat16 f2bf16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat16 d2bf16(double d) { return __double2bfloat16(d); }
}  // namespace cudasim

CUDASIM_HALF_OPS(__nv_bfloat16, __nv_bfloat162, ::cudasim::bf16f, ::cudasim::f2bf16, ::cudasim::d2bf16)

inline float2 __bfloat1622float2(__nv_bfloat162 v) { return make_float2(__low2float(v), __high2float(v)); }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }

#define CUDART_INF_BF16 __ushort_as_bfloat16((unsigned short)0x7F80U)
#define CUDART_NAN_BF16 __ushort_as_bfloat16((unsigned short)0x7FFFU)
#define CUDART_MIN_DENORM_BF16 __ushort_as_bfloat16((unsigned short)0x0001U)
#define CUDART_MAX_NORMAL_BF16 __ushort_as_bfloat16((unsigned short)0x7F7FU)
#define CUDART_NEG_ZERO_BF16 __ushort_as_bfloat16((unsigned short)0x8000U)
#define CUDART_ZERO_BF16 __ushort_as_bfloat16((unsigned short)0x0000U)
#define CUDART_ONE_BF16 __ushort_as_bfloat16((unsigned short)0x3F80U)
