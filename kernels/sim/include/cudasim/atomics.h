// CUDA atomics. Fibers switch only at synchronisation points and one grid runs at a time, so
// a read-modify-write can never be interleaved with another CUDA thread's; integer ones still
// use the compiler's atomic builtins (as cheap here, and safe should host code touch the same
// memory), floating-point ones a compare-and-swap loop on the bits. Included by runtime.h only.
#pragma once

#define CUDASIM_ATOMIC_INT(T)                                                                                  \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }                       \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }                       \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }                     \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }                       \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }                         \
    inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }                       \
    inline T atomicCAS(T* p, T cmp, T v) {                                                                     \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);                    \
        return cmp;                                                                                            \
    }                                                                                                          \
    inline T atomicMin(T* p, T v) {                                                                            \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                          \
        while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { } \
        return old;                                                                                            \
    }                                                                                                          \
    inline T atomicMax(T* p, T v) {                                                                            \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                          \
        while (v > old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { } \
        return old;                                                                                            \
    }
CUDASIM_ATOMIC_INT(int)
CUDASIM_ATOMIC_INT(unsigned int)
CUDASIM_ATOMIC_INT(unsigned long long)
CUDASIM_ATOMIC_INT(long long)
#undef CUDASIM_ATOMIC_INT

inline unsigned short atomicCAS(unsigned short* p, unsigned short cmp, unsigned short v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
// ((old >= limit) ? 0 : old + 1) and ((old == 0 || old > limit) ? limit : old - 1)
inline unsigned atomicInc(unsigned* p, unsigned limit) {
    unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &old, old >= limit ? 0u : old + 1, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { }
    return old;
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
    unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &old, (old == 0 || old > limit) ? limit : old - 1, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) { }
    return old;
}

namespace cudasim {
template <class F, class U, class Op> inline F atomic_float(F* p, Op op) {
    static_assert(sizeof(F) == sizeof(U), "bit view");
    U* u = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(u, __ATOMIC_RELAXED), nw;
    F f;
    do {
        memcpy(&f, &old, sizeof f);
        F r = op(f);
        memcpy(&nw, &r, sizeof nw);
    } while (!__atomic_compare_exchange_n(u, &old, nw, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return f;
}
}  // namespace cudasim
inline float atomicAdd(float* p, float v) { return ::cudasim::atomic_float<float, uint32_t>(p, [v](float x) { return x + v; }); }
inline double atomicAdd(double* p, double v) { return ::cudasim::atomic_float<double, uint64_t>(p, [v](double x) { return x + v; }); }
inline float atomicExch(float* p, float v) { return ::cudasim::atomic_float<float, uint32_t>(p, [v](float) { return v; }); }
inline float atomicMax(float* p, float v) { return ::cudasim::atomic_float<float, uint32_t>(p, [v](float x) { return fmaxf(x, v); }); }
inline float atomicMin(float* p, float v) { return ::cudasim::atomic_float<float, uint32_t>(p, [v](float x) { return fminf(x, v); }); }

// The scoped variants (_block, _system) behave the same with one grid at a time.
#define CUDASIM_ATOMIC_SCOPES(NAME)                                                                     \
    template <class P, class... A> inline auto NAME##_block(P p, A... a) -> decltype(NAME(p, a...)) { return NAME(p, a...); } \
    template <class P, class... A> inline auto NAME##_system(P p, A... a) -> decltype(NAME(p, a...)) { return NAME(p, a...); }
CUDASIM_ATOMIC_SCOPES(atomicAdd)
CUDASIM_ATOMIC_SCOPES(atomicSub)
CUDASIM_ATOMIC_SCOPES(atomicExch)
CUDASIM_ATOMIC_SCOPES(atomicMin)
CUDASIM_ATOMIC_SCOPES(atomicMax)
CUDASIM_ATOMIC_SCOPES(atomicInc)
CUDASIM_ATOMIC_SCOPES(atomicDec)
CUDASIM_ATOMIC_SCOPES(atomicCAS)
CUDASIM_ATOMIC_SCOPES(atomicAnd)
CUDASIM_ATOMIC_SCOPES(atomicOr)
CUDASIM_ATOMIC_SCOPES(atomicXor)
#undef CUDASIM_ATOMIC_SCOPES
