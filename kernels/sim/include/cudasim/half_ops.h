// Arithmetic shared by __nv_bfloat16 (cuda_bf16.h) and __half (cuda_fp16.h), generated once
// per type. Every operation computes in f32 and rounds once to the 16-bit type: for + - * /
// and sqrt of 16-bit inputs the f32 intermediate (24 >= 2*11 + 2 bits) makes that the
// correctly rounded result, as the hardware gives; fma goes through f64 (exact product) and a
// round-to-odd f32 for the same reason. Transcendentals use libm in f32 and are, like the
// hardware's, not correctly rounded.
#pragma once
#include <cudasim/fpconv.h>

#define CUDASIM_HALF_OPS(T, T2, TO_F, FROM_F, FROM_D)                                              \
    inline T __hadd(T a, T b) { return FROM_F(TO_F(a) + TO_F(b)); }                                \
    inline T __hsub(T a, T b) { return FROM_F(TO_F(a) - TO_F(b)); }                                \
    inline T __hmul(T a, T b) { return FROM_F(TO_F(a) * TO_F(b)); }                                \
    inline T __hdiv(T a, T b) { return FROM_F(TO_F(a) / TO_F(b)); }                                \
    inline T __hadd_rn(T a, T b) { return __hadd(a, b); }                                          \
    inline T __hsub_rn(T a, T b) { return __hsub(a, b); }                                          \
    inline T __hmul_rn(T a, T b) { return __hmul(a, b); }                                          \
    inline T __hadd_sat(T a, T b) { return FROM_F(::cudasim::sat01(TO_F(__hadd(a, b)))); }             \
    inline T __hmul_sat(T a, T b) { return FROM_F(::cudasim::sat01(TO_F(__hmul(a, b)))); }             \
    inline T __hfma(T a, T b, T c) { return FROM_D((double)TO_F(a) * TO_F(b) + TO_F(c)); }         \
    inline T __hfma_relu(T a, T b, T c) { T r = __hfma(a, b, c); return TO_F(r) < 0.0f ? FROM_F(0.0f) : r; } \
    inline T __hneg(T a) { T r = a; r.__x ^= 0x8000u; return r; }                                  \
    inline T __habs(T a) { T r = a; r.__x &= 0x7fffu; return r; }                                  \
    inline T __hmax(T a, T b) { return FROM_F(fmaxf(TO_F(a), TO_F(b))); }                          \
    inline T __hmin(T a, T b) { return FROM_F(fminf(TO_F(a), TO_F(b))); }                          \
    inline T __hmax_nan(T a, T b) { return (isnan(TO_F(a)) || isnan(TO_F(b))) ? FROM_F(NAN) : __hmax(a, b); } \
    inline T __hmin_nan(T a, T b) { return (isnan(TO_F(a)) || isnan(TO_F(b))) ? FROM_F(NAN) : __hmin(a, b); } \
    inline bool __heq(T a, T b) { return TO_F(a) == TO_F(b); }                                     \
    inline bool __hne(T a, T b) { return TO_F(a) < TO_F(b) || TO_F(a) > TO_F(b); }                 \
    inline bool __hlt(T a, T b) { return TO_F(a) < TO_F(b); }                                      \
    inline bool __hle(T a, T b) { return TO_F(a) <= TO_F(b); }                                     \
    inline bool __hgt(T a, T b) { return TO_F(a) > TO_F(b); }                                      \
    inline bool __hge(T a, T b) { return TO_F(a) >= TO_F(b); }                                     \
    inline bool __hequ(T a, T b) { return !__hne(a, b); }                                          \
    inline bool __hneu(T a, T b) { return !__heq(a, b); }                                          \
    inline bool __hltu(T a, T b) { return !__hge(a, b); }                                          \
    inline bool __hleu(T a, T b) { return !__hgt(a, b); }                                          \
    inline bool __hgtu(T a, T b) { return !__hle(a, b); }                                          \
    inline bool __hgeu(T a, T b) { return !__hlt(a, b); }                                          \
    inline bool __hisnan(T a) { return isnan(TO_F(a)); }                                           \
    inline int __hisinf(T a) { float f = TO_F(a); return isinf(f) ? (f < 0 ? -1 : 1) : 0; }       \
    inline T hsqrt(T a) { return FROM_F(sqrtf(TO_F(a))); }                                         \
    inline T hrsqrt(T a) { return FROM_F(1.0f / sqrtf(TO_F(a))); }                                 \
    inline T hrcp(T a) { return FROM_F(1.0f / TO_F(a)); }                                          \
    inline T hexp(T a) { return FROM_F(expf(TO_F(a))); }                                           \
    inline T hexp2(T a) { return FROM_F(exp2f(TO_F(a))); }                                         \
    inline T hlog(T a) { return FROM_F(logf(TO_F(a))); }                                           \
    inline T hlog2(T a) { return FROM_F(log2f(TO_F(a))); }                                         \
    inline T hsin(T a) { return FROM_F(sinf(TO_F(a))); }                                           \
    inline T hcos(T a) { return FROM_F(cosf(TO_F(a))); }                                           \
    inline T htanh(T a) { return FROM_F(tanhf(TO_F(a))); }                                         \
    inline T htrunc(T a) { return FROM_F(truncf(TO_F(a))); }                                       \
    inline T hfloor(T a) { return FROM_F(floorf(TO_F(a))); }                                       \
    inline T hceil(T a) { return FROM_F(ceilf(TO_F(a))); }                                         \
    inline T hrint(T a) { return FROM_F(rintf(TO_F(a))); }                                         \
    inline T operator+(const T& a, const T& b) { return __hadd(a, b); }                            \
    inline T operator-(const T& a, const T& b) { return __hsub(a, b); }                            \
    inline T operator*(const T& a, const T& b) { return __hmul(a, b); }                            \
    inline T operator/(const T& a, const T& b) { return __hdiv(a, b); }                            \
    inline T& operator+=(T& a, const T& b) { return a = __hadd(a, b); }                            \
    inline T& operator-=(T& a, const T& b) { return a = __hsub(a, b); }                            \
    inline T& operator*=(T& a, const T& b) { return a = __hmul(a, b); }                            \
    inline T& operator/=(T& a, const T& b) { return a = __hdiv(a, b); }                            \
    inline T operator+(const T& a) { return a; }                                                   \
    inline T operator-(const T& a) { return __hneg(a); }                                           \
    inline bool operator==(const T& a, const T& b) { return __heq(a, b); }                         \
    inline bool operator!=(const T& a, const T& b) { return __hneu(a, b); }                        \
    inline bool operator<(const T& a, const T& b) { return __hlt(a, b); }                          \
    inline bool operator<=(const T& a, const T& b) { return __hle(a, b); }                         \
    inline bool operator>(const T& a, const T& b) { return __hgt(a, b); }                          \
    inline bool operator>=(const T& a, const T& b) { return __hge(a, b); }                         \
    inline T2 __hadd2(T2 a, T2 b) { return T2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }               \
    inline T2 __hsub2(T2 a, T2 b) { return T2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }               \
    inline T2 __hmul2(T2 a, T2 b) { return T2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }               \
    inline T2 __h2div(T2 a, T2 b) { return T2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }               \
    inline T2 __hfma2(T2 a, T2 b, T2 c) { return T2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); } \
    inline T2 __hneg2(T2 a) { return T2(__hneg(a.x), __hneg(a.y)); }                               \
    inline T2 __habs2(T2 a) { return T2(__habs(a.x), __habs(a.y)); }                               \
    inline T2 __hmax2(T2 a, T2 b) { return T2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }               \
    inline T2 __hmin2(T2 a, T2 b) { return T2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }               \
    inline T2 operator+(const T2& a, const T2& b) { return __hadd2(a, b); }                        \
    inline T2 operator-(const T2& a, const T2& b) { return __hsub2(a, b); }                        \
    inline T2 operator*(const T2& a, const T2& b) { return __hmul2(a, b); }                        \
    inline T2 operator/(const T2& a, const T2& b) { return __h2div(a, b); }                        \
    inline T2& operator+=(T2& a, const T2& b) { return a = __hadd2(a, b); }                        \
    inline T2& operator-=(T2& a, const T2& b) { return a = __hsub2(a, b); }                        \
    inline T2& operator*=(T2& a, const T2& b) { return a = __hmul2(a, b); }                        \
    inline T2& operator/=(T2& a, const T2& b) { return a = __h2div(a, b); }                        \
    inline T2 operator-(const T2& a) { return __hneg2(a); }                                        \
    inline bool operator==(const T2& a, const T2& b) { return a.x == b.x && a.y == b.y; }          \
    inline bool operator!=(const T2& a, const T2& b) { return a.x != b.x || a.y != b.y; }          \
    inline T atomicAdd(T* p, T v) {                                                                \
        unsigned short old = __atomic_load_n(&p->__x, __ATOMIC_RELAXED), nw;                       \
        do { T o; o.__x = old; nw = __hadd(o, v).__x; }                                            \
        while (!__atomic_compare_exchange_n(&p->__x, &old, nw, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)); \
        T r; r.__x = old; return r;                                                                \
    }                                                                                              \
    inline T2 atomicAdd(T2* p, T2 v) { return T2(atomicAdd(&p->x, v.x), atomicAdd(&p->y, v.y)); }
