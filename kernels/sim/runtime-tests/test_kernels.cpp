// Kernels for test_runtime.cpp, written as the nvrtc translator emits them: the runtime header
// first, inline asm already turned into ::cudasim::inline_ptx calls, extern __shared__ into
// dynamic_smem(), and the kernel table at the end.
#include <cudasim/runtime.h>
#line 1 "test_kernels.cu"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#define PTX ::cudasim::inline_ptx
#define IN ::cudasim::ptx_in
#define OUT ::cudasim::ptx_out
#define INOUT ::cudasim::ptx_inout

__device__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// Neighbour exchange through shared memory, `rounds` times, on a 3-D block (barriers from
// __syncthreads and from `bar.sync 0`); then the predicate forms of the barrier.
extern "C" __global__ void k_barrier(int* out, int rounds) {
    __shared__ int s[1024];
    unsigned n = blockDim.x * blockDim.y * blockDim.z;
    unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int v = (int)t + 1000 * (int)blockIdx.x;
    for (int r = 0; r < rounds; r++) {
        s[t] = v;
        __syncthreads();
        v = s[(t + 37) % n] + 1;
        PTX("bar.sync 0;", {});
    }
    out[blockIdx.x * n + t] = v;
    int c = __syncthreads_count(t % 3 == 0);
    int a = __syncthreads_and(t < n);
    int o = __syncthreads_or(t == 5);
    int a2 = __syncthreads_and(t != 7);
    if (t == 0) {
        int* r = out + gridDim.x * n + 4 * blockIdx.x;
        r[0] = c; r[1] = a; r[2] = o; r[3] = a2;
    }
}

// Every warp intrinsic, 24 results per thread (test_runtime.cpp has the scalar references).
extern "C" __global__ void k_warp(const int* in, int* out, int srcsel) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
    int v = in[t];
    float f = (float)v * 0.5f;
    double d = v * 0.25;
    long long ll = (long long)v << 33;
    int* o = out + t * 24;
    o[0] = __shfl_sync(0xffffffffu, v, (int)(lane * 7 + srcsel) % 32);
    o[1] = __shfl_sync(0xffffffffu, v, (int)(lane ^ 3) + 5, 8);
    o[2] = __shfl_up_sync(0xffffffffu, v, 3);
    o[3] = __shfl_up_sync(0xffffffffu, v, 2, 16);
    o[4] = __shfl_down_sync(0xffffffffu, v, 5);
    o[5] = __shfl_down_sync(0xffffffffu, v, 1, 4);
    o[6] = __shfl_xor_sync(0xffffffffu, v, 9);
    o[7] = __shfl_xor_sync(0xffffffffu, v, 3, 4);
    o[8] = (int)(__shfl_xor_sync(0xffffffffu, f, 1) * 2.0f);
    o[9] = (int)(__shfl_down_sync(0xffffffffu, d, 2) * 4.0);
    o[10] = (int)(__shfl_sync(0xffffffffu, ll, 31 - (int)lane) >> 33);
    o[11] = (int)__ballot_sync(0xffffffffu, v & 1);
    o[12] = __any_sync(0xffffffffu, v == in[blockIdx.x * blockDim.x + 17]);
    o[13] = __all_sync(0xffffffffu, v >= 0);
    o[14] = (int)__match_any_sync(0xffffffffu, v % 5);
    int pred = -1;
    o[15] = (int)__match_all_sync(0xffffffffu, v / 1000000, &pred);
    o[16] = pred;
    o[17] = (int)__reduce_add_sync(0xffffffffu, (unsigned)v);
    o[18] = __reduce_min_sync(0xffffffffu, v - 500);
    o[19] = (int)__reduce_max_sync(0xffffffffu, (unsigned)v);
    // the two halves of the warp exchange independently, in a different order
    unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    if (lane < 16) {
        o[20] = __shfl_xor_sync(half, v, 4);
        o[21] = (int)__ballot_sync(half, v & 2);
    } else {
        o[21] = (int)__ballot_sync(half, v & 2);
        o[20] = __shfl_xor_sync(half, v, 4);
    }
    __syncwarp(half);
    PTX("bar.warp.sync %0;", {IN(0xffffffffu, "r")});
    o[22] = (int)__activemask();
    unsigned laneid = 99, tied = 5;
    PTX("mov.u32 %0, %%laneid;", {OUT(laneid, "=r")});
    // a tied input ("0") is the output's initial value; the instruction leaves it alone
    PTX("membar.cta;", {OUT(tied, "=r"), IN(laneid + 1000, "0")});
    o[23] = (int)laneid + (tied == laneid + 1000 ? 0 : 100);
}

// __activemask in divergent branches: each branch's lanes, without those that exited.
extern "C" __global__ void k_activemask(unsigned* out) {
    unsigned lane = threadIdx.x % 32, m;
    if (lane < 10) {
        m = __activemask();
    } else if (lane < 20) {
        m = __activemask();
    } else {
        if (lane == 31) return;
        m = __activemask();
    }
    out[threadIdx.x] = m;
}

// Thread 0 waits in a shuffle for lane 1, which waits at the barrier for thread 0.
extern "C" __global__ void k_deadlock(int* out) {
    int v = (int)threadIdx.x;
    if (threadIdx.x == 0) v = __shfl_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

// Each mode misuses the runtime in one way; every one must stop the launch with a message.
extern "C" __global__ void k_errors(int mode, float* p) {
    __shared__ __align__(16) unsigned short s[64 * 8];
    unsigned lane = threadIdx.x % 32;
    unsigned r0, r1, r2, r3;
    switch (mode) {
        case 0: if (lane == 3) __syncwarp(0x1u); break;
        case 1: if (lane >= 16) return; __shfl_sync(0xffffffffu, 1, 0); break;
        case 2: if (lane < 16) __shfl_sync(0x1ffffu, 1, 0); else __shfl_sync(0xffffffffu, 1, 0); break;
        case 3: __syncwarp(); break;  // launched with 48 threads: warp 1 has lanes 0-15 only
        case 4: assert(p == nullptr); break;
        case 5: if (threadIdx.x == 40) __trap(); break;
        case 6: { unsigned x = 1, y; PTX("prmt.b32 %0, %1, %1, 0x3210;", {OUT(y, "=r"), IN(x, "r")}); p[0] = (float)y; } break;
        case 7:
            PTX("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n",
                {OUT(r0, "=r"), OUT(r1, "=r"), OUT(r2, "=r"), OUT(r3, "=r"), IN(smem_u32(s + lane * 8 + (lane == 9) * 4), "r")});
            break;
        case 8: PTX("cp.async.cg.shared.global [%0], [%1], 16;\n", {IN(smem_u32(p), "r"), IN(p, "l")}); break;
        case 9: {
            char* dyn = (char*)::cudasim::dynamic_smem();
            PTX("cp.async.cg.shared.global [%0], [%1], 16;\n", {IN(smem_u32(dyn + 1024 + 16 * lane), "r"), IN(p, "l")});
        } break;
        case 10: if (lane < 16) __syncwarp(); else __ballot_sync(0xffffffffu, 1); break;
        case 11: __shfl_xor_sync(0xffffffffu, 1, 1, 3); break;
        case 12: PTX("cp.async.cg.shared.global [%0], [%1], 8;\n", {IN(smem_u32(s), "r"), IN(p, "l")}); break;
    }
}

// cp.async with real asynchronous semantics. 64 threads, 16 bytes each = one 256-float stage.
extern "C" __global__ void k_cpasync(const float* src, float* out, int mode) {
    __shared__ __align__(16) float s[2][256];
    unsigned t = threadIdx.x;
    auto cp = [&](int stage, int bytes) {
        PTX("cp.async.cg.shared.global [%0], [%1], 16, %2;\n",
            {IN(smem_u32(&s[stage][t * 4]), "r"), IN(src + stage * 256 + t * 4, "l"), IN(bytes, "r")});
    };
    auto commit = [] { PTX("cp.async.commit_group;\n", {}); };
    switch (mode) {
        case 0:  // correct double buffering
            cp(0, 16); commit(); cp(1, 16); commit();
            PTX("cp.async.wait_group 1;\n", {});
            __syncthreads();
            for (int i = 0; i < 4; i++) out[t * 4 + i] = s[0][(t * 4 + i + 64) % 256];
            PTX("cp.async.wait_group %0;\n", {IN(0, "n")});
            __syncthreads();
            for (int i = 0; i < 4; i++) out[256 + t * 4 + i] = s[1][(t * 4 + i + 64) % 256];
            break;
        case 1:  // the wait is missing
            cp(0, 16); commit();
            __syncthreads();
            for (int i = 0; i < 4; i++) out[t * 4 + i] = s[0][(t * 4 + i + 64) % 256];
            break;
        case 2:  // wait_group 1 leaves the newest group in flight
            cp(0, 16); commit(); cp(1, 16); commit();
            PTX("cp.async.wait_group 1;\n", {});
            __syncthreads();
            out[t] = s[0][t * 4];
            out[64 + t] = s[1][t * 4];
            break;
        case 3:  // src-size 8: the last 8 bytes are zero-filled
            cp(0, 8);
            PTX("cp.async.wait_all;\n", {});
            for (int i = 0; i < 4; i++) out[t * 4 + i] = s[0][t * 4 + i];
            break;
        case 4:  // threads 0-31 exit with their copies pending: exit completes them
            if (t < 32) { cp(0, 16); commit(); return; }
            __syncthreads();
            for (int i = 0; i < 4; i++) out[(t - 32) * 4 + i] = s[0][(t - 32) * 4 + i];
            break;
        case 5:  // .ca with 4- and 8-byte copies
            PTX("cp.async.ca.shared.global [%0], [%1], 4;\n", {IN(smem_u32(&s[0][t]), "r"), IN(src + t, "l")});
            PTX("cp.async.ca.shared.global.L2::128B [%0], [%1], 8;\n", {IN(smem_u32(&s[1][2 * t]), "r"), IN(src + 2 * t, "l")});
            PTX("cp.async.commit_group;\ncp.async.wait_group 0;\n", {});
            out[t] = s[0][t];
            out[64 + 2 * t] = s[1][2 * t];
            out[64 + 2 * t + 1] = s[1][2 * t + 1];
            break;
        case 6:  // a buffer refilled while it is still being read: the read sees the copy's poison
            for (int i = 0; i < 4; i++) s[0][t * 4 + i] = 7.0f;
            __syncthreads();
            cp(0, 16); commit();
            for (int i = 0; i < 4; i++) out[t * 4 + i] = s[0][t * 4 + i];
            PTX("cp.async.wait_all;\n", {});
            break;
    }
}

// One warp: D (16x8) = A (16x16) B (16x8) + C through ldmatrix and mma.sync. A is row-major
// (a_trans = 0) or stored k-major [k][m] (a_trans = 1); B is stored [k][n] (b_kmajor = 0,
// loaded with .trans) or [n][k] (b_kmajor = 1). f16 = 1 uses the .f16 variant on the same
// bit patterns reinterpreted (the host passes f16 data then).
extern "C" __global__ void k_mma(float* d, const unsigned short* a, const unsigned short* b, const float* c, int a_trans,
                                 int b_kmajor, int f16) {
    __shared__ __align__(16) unsigned short sa[16 * 24];  // 16 rows padded to 24 elements
    __shared__ __align__(16) unsigned short sb[16 * 24];
    unsigned lane = threadIdx.x;
    for (unsigned i = lane; i < 256; i += 32) sa[(i / 16) * 24 + i % 16] = a[i];
    for (unsigned i = lane; i < 128; i += 32) {
        if (b_kmajor) sb[(i / 16) * 24 + i % 16] = b[i];  // b is [8][16]
        else sb[(i / 8) * 24 + i % 8] = b[i];             // b is [16][8]
    }
    __syncthreads();
    unsigned af[4], bf[2];
    if (!a_trans) {
        PTX("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n",
            {OUT(af[0], "=r"), OUT(af[1], "=r"), OUT(af[2], "=r"), OUT(af[3], "=r"),
             IN(smem_u32(sa + (lane % 16) * 24 + (lane / 16) * 8), "r")});
    } else {
        PTX("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n",
            {OUT(af[0], "=r"), OUT(af[1], "=r"), OUT(af[2], "=r"), OUT(af[3], "=r"),
             IN(smem_u32(sa + ((lane & 7) + ((lane >> 4) << 3)) * 24 + ((lane >> 3) & 1) * 8), "r")});
    }
    if (b_kmajor) {
        PTX("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n",
            {OUT(bf[0], "=r"), OUT(bf[1], "=r"), IN(smem_u32(sb + (lane & 7) * 24 + ((lane >> 3) & 1) * 8), "r")});
    } else {
        PTX("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n",
            {OUT(bf[0], "=r"), OUT(bf[1], "=r"), IN(smem_u32(sb + ((lane & 7) + ((lane >> 3) & 1) * 8) * 24), "r")});
    }
    float acc[4];
    for (int i = 0; i < 4; i++) acc[i] = c[(lane / 4 + 8 * (i / 2)) * 8 + 2 * (lane % 4) + i % 2];
    if (f16)
        PTX("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n",
            {INOUT(acc[0], "+f"), INOUT(acc[1], "+f"), INOUT(acc[2], "+f"), INOUT(acc[3], "+f"), IN(af[0], "r"),
             IN(af[1], "r"), IN(af[2], "r"), IN(af[3], "r"), IN(bf[0], "r"), IN(bf[1], "r")});
    else
        PTX("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n",
            {INOUT(acc[0], "+f"), INOUT(acc[1], "+f"), INOUT(acc[2], "+f"), INOUT(acc[3], "+f"), IN(af[0], "r"),
             IN(af[1], "r"), IN(af[2], "r"), IN(af[3], "r"), IN(bf[0], "r"), IN(bf[1], "r")});
    for (int i = 0; i < 4; i++) d[(lane / 4 + 8 * (i / 2)) * 8 + 2 * (lane % 4) + i % 2] = acc[i];
}

// 1024 threads: warp sums by shuffles, then the block sum through shared memory.
extern "C" __global__ void __launch_bounds__(1024) k_big(const float* in, float* out) {
    __shared__ float partial[32];
    float v = in[blockIdx.x * blockDim.x + threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float w = partial[threadIdx.x];
        for (int o = 16; o > 0; o >>= 1) w += __shfl_down_sync(0xffffffffu, w, o);
        if (threadIdx.x == 0) out[blockIdx.x] = w;
    }
}

// Records the order in which blocks run.
extern "C" __global__ void k_order(unsigned* counter, unsigned* order) {
    if (threadIdx.x == 0) order[atomicAdd(counter, 1u)] = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
}

// What a block sees in shared memory it has not written (0xFF bytes), then writes it all.
extern "C" __global__ void k_poison(unsigned* out) {
    static unsigned* const dyn = reinterpret_cast<unsigned*>(::cudasim::dynamic_smem());
    __shared__ unsigned st[64];
    unsigned t = threadIdx.x;
    out[blockIdx.x * 128 + t] = dyn[t];
    out[blockIdx.x * 128 + 64 + t] = st[t];
    __syncthreads();
    dyn[t] = t;
    st[t] = t;
}

// The math and integer intrinsics and atomics, one result each (test_runtime.cpp has the list).
extern "C" __global__ void k_math(double* o, const float* x, int* ai, unsigned* au, unsigned long long* aull, float* af) {
    float a = __ldg(x), b = x[1];  // 0.75, -2.5
    int i = 0;
    o[i++] = expf(a); o[i++] = __expf(a); o[i++] = logf(a); o[i++] = __logf(a); o[i++] = tanhf(b);
    o[i++] = sqrtf(a); o[i++] = rsqrtf(a); o[i++] = fmaxf(a, b); o[i++] = fminf(a, b); o[i++] = fabsf(b);
    o[i++] = erff(a); o[i++] = powf(a, b); o[i++] = exp2f(b); o[i++] = log2f(a); o[i++] = __fdividef(a, b);
    o[i++] = __frcp_rn(b); o[i++] = isnan(__int_as_float(0x7fc00000)); o[i++] = isinf(-CUDART_INF_F);
    o[i++] = isfinite(a); o[i++] = __float_as_int(1.0f); o[i++] = __uint_as_float(0x40000000u); o[i++] = __float_as_uint(-0.0f);
    o[i++] = __popc(0xF0F0u); o[i++] = __ffs(0x80); o[i++] = __clz(1); o[i++] = __clz(0);
    o[i++] = min(3, -4); o[i++] = max(3u, 7u); o[i++] = min(2.5f, 1.5f); o[i++] = max((size_t)9, (size_t)4);
    o[i++] = (double)min(-5ll, 3ll); o[i++] = min(-1, 1u);  // int vs unsigned: unsigned, as CUDA's overloads
    o[i++] = __saturatef(1.5f); o[i++] = __float2int_rn(2.5f); o[i++] = __brev(1u); o[i++] = __byte_perm(0x33221100u, 0x77665544u, 0x4321);
    __threadfence();
    o[i++] = atomicAdd(ai, 5); o[i++] = atomicAdd(au, 3u); o[i++] = (double)atomicAdd(aull, 1ull << 40); o[i++] = atomicAdd(af, 0.5f);
    o[i++] = atomicMax(ai, 100); o[i++] = atomicMin(ai, -7); o[i++] = atomicCAS(ai, -7, 11); o[i++] = atomicExch(ai, 12);
    o[i++] = *ai;
    __nv_bfloat16 h = __float2bfloat16(1.5f), k = 2.0f;
    o[i++] = __bfloat162float(h * k + h); o[i++] = __bfloat162float(__hfma(h, k, h)); o[i++] = (h < k);
    o[i++] = __half2float(__hadd(__float2half(0.1f), __float2half(0.2f)));
    o[i++] = __low2float(__floats2bfloat162_rn(3.0f, 4.0f)) + __high2float(__floats2bfloat162_rn(3.0f, 4.0f));
    unsigned mv = 0, mi = 0;
    PTX("mov.b32 %0, %1;", {OUT(mv, "=r"), IN(0xabcdu, "r")});
    PTX("mov.u32 %0, 77;", {OUT(mi, "=r")});
    o[i++] = mv + mi;
    o[i++] = i;
}

struct Pod { int a; double b; char c[3]; };
extern "C" __global__ void k_params(double* out, Pod p, char c, short s, float f, unsigned long long u, const int* ptr) {
    if (threadIdx.x || blockIdx.x) return;
    out[0] = p.a; out[1] = p.b; out[2] = p.c[2]; out[3] = c; out[4] = s; out[5] = f; out[6] = (double)u; out[7] = ptr[0];
    printf("cuda-sim test: printf from kernel k_params, block %u thread %u, p.a = %d\n", blockIdx.x, threadIdx.x, p.a);
}

extern "C" __global__ void k_empty() {}

// Out-of-bounds accesses for the AddressSanitizer build: past a global buffer (mode 0) and
// past the dynamic shared memory the launch asked for (mode 1).
extern "C" __global__ void k_oob(const float* p, int n, int mode, float* out) {
    static float* const dyn = reinterpret_cast<float*>(::cudasim::dynamic_smem());
    if (blockIdx.x != 1 || threadIdx.x != 5) return;
    out[0] = mode == 0 ? p[n] : dyn[n];
}

CUDASIM_KERNELS_BEGIN
CUDASIM_KERNEL(k_barrier, 1024)
CUDASIM_KERNEL(k_warp, 1024)
CUDASIM_KERNEL(k_deadlock, 1024)
CUDASIM_KERNEL(k_activemask, 1024)
CUDASIM_KERNEL(k_errors, 1024)
CUDASIM_KERNEL(k_cpasync, 1024)
CUDASIM_KERNEL(k_mma, 1024)
CUDASIM_KERNEL(k_big, (1024))
CUDASIM_KERNEL(k_order, 1024)
CUDASIM_KERNEL(k_poison, 1024)
CUDASIM_KERNEL(k_params, 1024)
CUDASIM_KERNEL(k_math, 1024)
CUDASIM_KERNEL(k_empty, 1024)
CUDASIM_KERNEL(k_oob, 1024)
CUDASIM_KERNELS_END
