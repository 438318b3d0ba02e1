// CUDA's built-in vector types with their device alignment (a float4 load is one 16-byte
// access, so structs of them and reinterpret_casts keep CUDA's layout), dim3 and make_*.
#pragma once

#define CUDASIM_VEC1(T, N) struct N##1 { T x; };
#define CUDASIM_VEC2(T, N, A) struct alignas(A) N##2 { T x, y; };
#define CUDASIM_VEC3(T, N) struct N##3 { T x, y, z; };
#define CUDASIM_VEC4(T, N, A) struct alignas(A) N##4 { T x, y, z, w; };
#define CUDASIM_MAKE(T, N)                                                                   \
    inline N##1 make_##N##1(T x) { return N##1{x}; }                                         \
    inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }                                 \
    inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }                         \
    inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
#define CUDASIM_VEC(T, N, A2, A4) CUDASIM_VEC1(T, N) CUDASIM_VEC2(T, N, A2) CUDASIM_VEC3(T, N) CUDASIM_VEC4(T, N, A4) CUDASIM_MAKE(T, N)

CUDASIM_VEC(signed char, char, 2, 4)
CUDASIM_VEC(unsigned char, uchar, 2, 4)
CUDASIM_VEC(short, short, 4, 8)
CUDASIM_VEC(unsigned short, ushort, 4, 8)
CUDASIM_VEC(int, int, 8, 16)
CUDASIM_VEC(unsigned int, uint, 8, 16)
CUDASIM_VEC(long, long, 16, 16)
CUDASIM_VEC(unsigned long, ulong, 16, 16)
CUDASIM_VEC(long long, longlong, 16, 16)
CUDASIM_VEC(unsigned long long, ulonglong, 16, 16)
CUDASIM_VEC(float, float, 8, 16)
CUDASIM_VEC(double, double, 16, 16)

#undef CUDASIM_VEC1
#undef CUDASIM_VEC2
#undef CUDASIM_VEC3
#undef CUDASIM_VEC4
#undef CUDASIM_MAKE
#undef CUDASIM_VEC

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

static_assert(alignof(float4) == 16 && alignof(int4) == 16 && alignof(float2) == 8 && alignof(double2) == 16,
              "CUDA vector alignment");
