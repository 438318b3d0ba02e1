// Self-test of the simulator runtime (kernels/sim/include/cudasim) without the driver or the
// translator: loads test_kernels.so and checks barriers, warp collectives, error reports,
// cp.async, ldmatrix + mma, block order, shared-memory poisoning and parameter passing
// against scalar references written from the CUDA / PTX documentation.
//   test_runtime path/to/test_kernels.so
//   test_runtime path/to/test_kernels.so --oob 0|1   (ASan builds: an access ASan must report)
#include "harness.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <set>

static void test_barrier(Module& m) {
    printf("barrier across warps (3-D block 8x4x8, 16 rounds, 5 blocks)\n");
    const unsigned n = 256, blocks = 5;
    const int rounds = 16;
    std::vector<int> out(blocks * n + 4 * blocks, -1);
    int* p = out.data();
    int rc = m.launch("k_barrier", {blocks}, {8, 4, 8}, 0, 1, p, rounds);
    EXPECT(rc == 0, "rc %d %s", rc, m.msg.c_str());
    int bad = 0;
    for (unsigned b = 0; b < blocks; b++) {
        std::vector<int> v(n), w(n);
        for (unsigned t = 0; t < n; t++) v[t] = (int)t + 1000 * (int)b;
        for (int r = 0; r < rounds; r++) {
            for (unsigned t = 0; t < n; t++) w[t] = v[(t + 37) % n] + 1;
            v = w;
        }
        for (unsigned t = 0; t < n; t++) bad += out[b * n + t] != v[t];
        int* r = p + blocks * n + 4 * b;
        EXPECT(r[0] == 86 && r[1] == 1 && r[2] == 1 && r[3] == 0, "block %u: count %d and %d or %d and(t!=7) %d", b, r[0],
               r[1], r[2], r[3]);
    }
    EXPECT(bad == 0, "%d wrong values after the exchange rounds", bad);
}

static void test_warp(Module& m) {
    printf("shuffles, votes, matches, reductions against scalar references\n");
    const unsigned bd = 64, blocks = 3, n = bd * blocks;
    Rng rng(7);
    std::vector<int> in(n), out(n * 24, 0x7777);
    for (unsigned i = 0; i < n; i++) in[i] = (int)(rng.next() % 2000000) - (i >= 32 ? 1000000 : 0);
    for (unsigned i = 0; i < 32; i++) in[i] = 3000000 + (int)(rng.next() % 500000);  // warp 0: equal v / 1e6
    const int srcsel = 11;
    int rc = m.launch("k_warp", {blocks}, {bd}, 0, 3, (const int*)in.data(), out.data(), srcsel);
    EXPECT(rc == 0, "rc %d %s", rc, m.msg.c_str());
    int bad = 0;
    for (unsigned w0 = 0; w0 < n; w0 += 32) {
        const int* v = &in[w0];
        unsigned block_first = (w0 / bd) * bd;
        for (unsigned l = 0; l < 32; l++) {
            int e[24];
            e[0] = v[(l * 7 + srcsel) % 32];
            e[1] = v[(l / 8) * 8 + (((l ^ 3) + 5) % 8)];
            e[2] = l >= 3 ? v[l - 3] : v[l];
            e[3] = l % 16 >= 2 ? v[l - 2] : v[l];
            e[4] = l + 5 < 32 ? v[l + 5] : v[l];
            e[5] = l % 4 + 1 < 4 ? v[l + 1] : v[l];
            e[6] = v[l ^ 9];
            e[7] = v[l ^ 3];
            e[8] = v[l ^ 1];
            e[9] = l + 2 < 32 ? v[l + 2] : v[l];
            e[10] = v[31 - l];
            unsigned ballot = 0, any = 0, all = 1, match = 0, sum = 0, umax = 0, half_ballot = 0;
            int smin = INT32_MAX;
            bool same = true;
            unsigned half = l < 16 ? 0x0000ffffu : 0xffff0000u;
            for (unsigned k = 0; k < 32; k++) {
                ballot |= (unsigned)(v[k] & 1) << k;
                any |= v[k] == in[block_first + 17];
                all &= v[k] >= 0;
                if (v[k] % 5 == v[l] % 5) match |= 1u << k;
                same = same && v[k] / 1000000 == v[0] / 1000000;
                sum += (unsigned)v[k];
                smin = std::min(smin, v[k] - 500);
                umax = std::max(umax, (unsigned)v[k]);
                if ((half >> k & 1) && (v[k] & 2)) half_ballot |= 1u << k;
            }
            e[11] = (int)ballot;
            e[12] = (int)any;
            e[13] = (int)all;
            e[14] = (int)match;
            e[15] = same ? -1 : 0;
            e[16] = same ? 1 : 0;
            e[17] = (int)sum;
            e[18] = smin;
            e[19] = (int)umax;
            e[20] = v[l ^ 4];
            e[21] = (int)half_ballot;
            e[22] = -1;
            e[23] = (int)l;
            for (int j = 0; j < 24; j++) {
                int got = out[(w0 + l) * 24 + j];
                if (got != e[j]) {
                    if (bad++ < 10) printf("  thread %u result %d: got %d, want %d\n", w0 + l, j, got, e[j]);
                }
            }
        }
    }
    EXPECT(bad == 0, "%d wrong warp results", bad);
}

static void test_activemask(Module& m) {
    printf("__activemask in divergent branches\n");
    std::vector<unsigned> out(64, 0);
    int rc = m.launch("k_activemask", {2}, {64}, 0, 1, out.data());
    EXPECT(rc == 0, "rc %d %s", rc, m.msg.c_str());
    int bad = 0;
    for (unsigned t = 0; t < 64; t++) {
        unsigned l = t % 32, want = l < 10 ? 0x3ffu : l < 20 ? 0xffc00u : l < 31 ? 0x7ff00000u : 0u;
        bad += out[t] != want;
    }
    EXPECT(bad == 0, "%d lanes got another mask (lane 0: 0x%08x, lane 12: 0x%08x, lane 25: 0x%08x)", bad, out[0], out[12], out[25]);
}

static void test_deadlock(Module& m) {
    printf("a deadlock is reported, not hung\n");
    std::vector<int> out(256);
    int rc = m.launch("k_deadlock", {2}, {256}, 0, 1, out.data());
    printf("  -> %d: %s\n", rc, m.msg.c_str());
    EXPECT(rc == 719, "rc %d", rc);
    EXPECT(m.msg.find("deadlock") != std::string::npos && m.msg.find("__syncthreads reached by 255 of 256") != std::string::npos &&
               m.msg.find("__shfl_sync(mask 0xffffffff) reached by lanes 0, not by lanes 1-31") != std::string::npos &&
               m.msg.find("k_deadlock") != std::string::npos,
           "message: %s", m.msg.c_str());
    // the module is usable after an abandoned block
    rc = m.launch("k_deadlock", {1}, {32}, 0, 1, out.data());
    EXPECT(rc == 719, "second launch rc %d", rc);
}

static void test_errors(Module& m) {
    printf("launch errors name the kernel, block, thread and cause\n");
    struct Case {
        int mode;
        unsigned threads;
        size_t smem;
        int code;
        const char* text;
    } cases[] = {
        {0, 64, 0, 719, "the calling lane 3 is not in the mask"},
        {1, 64, 0, 719, "exited"},
        {2, 64, 0, 719, "lanes disagree on the mask"},
        {3, 48, 0, 719, "which do not exist"},
        {4, 32, 0, 710, "assertion `p == nullptr` failed at test_kernels.cu"},
        {5, 64, 0, 719, "thread (40,0,0): __trap() called"},
        {6, 32, 0, 715, "inline PTX instruction `prmt.b32 %0, %1, %1, 0x3210` is not emulated"},
        {7, 32, 0, 716, "(lane 9) is not 16-byte aligned"},
        {8, 32, 0, 700, "is not shared memory of this module"},
        {9, 32, 1024, 700, "past the 1024 bytes of dynamic shared memory"},
        {10, 32, 0, 719, "lanes meet at different operations"},
        {11, 32, 0, 719, "width 3 is not a power of 2"},
        {12, 32, 0, 715, "cp.async.cg copies 16 bytes"},
    };
    float dummy[64] = {};
    for (const Case& c : cases) {
        int rc = m.launch("k_errors", {3}, {c.threads}, c.smem, 5, c.mode, dummy);
        printf("  mode %2d -> %d: %s\n", c.mode, rc, m.msg.c_str());
        EXPECT(rc == c.code, "mode %d: rc %d, want %d", c.mode, rc, c.code);
        EXPECT(m.msg.find(c.text) != std::string::npos && m.msg.find("kernel `k_errors` block (") == 0,
               "mode %d: message lacks \"%s\"", c.mode, c.text);
    }
    int rc = m.launch("k_empty", {4}, {32}, 0, 1);
    EXPECT(rc == 0 && m.msg.empty(), "a clean launch after errors: rc %d %s", rc, m.msg.c_str());
}

static bool is_poison(float f) { return f32_bits_host(f) == 0xFFFFFFFFu; }

static void test_cpasync(Module& m) {
    printf("cp.async: asynchronous copies, groups, zero fill, completion at exit\n");
    std::vector<float> src(512), out(512);
    for (int i = 0; i < 512; i++) src[i] = (float)i + 0.5f;
    const float* s = src.data();
    auto run = [&](int mode) {
        std::fill(out.begin(), out.end(), -1.0f);
        int rc = m.launch("k_cpasync", {2}, {64}, 0, 9, s, out.data(), mode);
        EXPECT(rc == 0, "mode %d: rc %d %s", mode, rc, m.msg.c_str());
    };
    run(0);
    int bad = 0;
    for (int i = 0; i < 256; i++) bad += out[i] != src[(i + 64) % 256] || out[256 + i] != src[256 + (i + 64) % 256];
    EXPECT(bad == 0, "double buffering: %d wrong", bad);
    run(1);
    int nan = 0;
    for (int i = 0; i < 256; i++) nan += is_poison(out[i]);
    printf("  missing wait: %d of 256 reads saw the 0xFF poison\n", nan);
    EXPECT(nan >= 128 && is_poison(out[0]), "a read before the wait must see poison (%d did)", nan);
    run(2);
    bad = 0;
    for (int t = 0; t < 64; t++) bad += out[t] != src[t * 4] || !is_poison(out[64 + t]);
    EXPECT(bad == 0, "wait_group 1: %d wrong (the newest group must still be in flight)", bad);
    run(3);
    bad = 0;
    for (int t = 0; t < 64; t++)
        bad += out[t * 4] != src[t * 4] || out[t * 4 + 1] != src[t * 4 + 1] || out[t * 4 + 2] != 0 || out[t * 4 + 3] != 0;
    EXPECT(bad == 0, "src-size 8: %d wrong", bad);
    run(4);
    bad = 0;
    for (int i = 0; i < 128; i++) bad += out[i] != src[i];
    EXPECT(bad == 0, "copies of exited threads: %d wrong", bad);
    run(5);
    bad = 0;
    for (int t = 0; t < 64; t++) bad += out[t] != src[t] || out[64 + 2 * t] != src[2 * t] || out[65 + 2 * t] != src[2 * t + 1];
    EXPECT(bad == 0, ".ca 4/8-byte copies: %d wrong", bad);
    run(6);
    bad = 0;
    for (int i = 0; i < 256; i++) bad += !is_poison(out[i]);
    EXPECT(bad == 0, "reads of a destination with a copy in flight: %d saw the old data instead of poison", bad);
}

static void test_mma(Module& m) {
    printf("ldmatrix (x4, x4.trans, x2, x2.trans) + mma.m16n8k16 against a scalar product\n");
    Rng rng(11);
    for (int f16 = 0; f16 < 2; f16++) {
        float A[16][16], B[16][8], C[16][8];
        for (auto& r : A) for (float& x : r) x = rng.uniform(-2, 2);
        for (auto& r : B) for (float& x : r) x = rng.uniform(-2, 2);
        for (auto& r : C) for (float& x : r) x = rng.uniform(-4, 4);
        auto bits = [&](float x) -> unsigned short { return f16 ? __float2half(x).__x : __float2bfloat16(x).__x; };
        auto val = [&](unsigned short b) -> float {
            return f16 ? __half2float(__ushort_as_half(b)) : __bfloat162float(__ushort_as_bfloat16(b));
        };
        for (int a_trans = 0; a_trans < 2; a_trans++) {
            for (int b_k = 0; b_k < 2; b_k++) {
                std::vector<unsigned short> a(256), b(128);
                for (int i = 0; i < 16; i++)
                    for (int k = 0; k < 16; k++) a[a_trans ? k * 16 + i : i * 16 + k] = bits(A[i][k]);
                for (int k = 0; k < 16; k++)
                    for (int n = 0; n < 8; n++) b[b_k ? n * 16 + k : k * 8 + n] = bits(B[k][n]);
                std::vector<float> c(128), d(128, NAN);
                for (int i = 0; i < 16; i++)
                    for (int n = 0; n < 8; n++) c[i * 8 + n] = C[i][n];
                int rc = m.launch("k_mma", {1}, {32}, 0, 1, d.data(), (const unsigned short*)a.data(),
                                  (const unsigned short*)b.data(), (const float*)c.data(), a_trans, b_k, f16);
                EXPECT(rc == 0, "rc %d %s", rc, m.msg.c_str());
                int exact = 0, close = 0;
                for (int i = 0; i < 16; i++)
                    for (int n = 0; n < 8; n++) {
                        // the documented order: exact products, summed in k order in f32, then + C
                        float sum = 0.0f;
                        double ref = C[i][n];
                        for (int k = 0; k < 16; k++) {
                            float ak = val(bits(A[i][k])), bk = val(bits(B[k][n]));
                            sum += ak * bk;
                            ref += (double)ak * bk;
                        }
                        float want = C[i][n] + sum;
                        exact += d[i * 8 + n] == want;
                        close += fabs(d[i * 8 + n] - ref) <= 1e-5 * (1 + fabs(ref));
                    }
                EXPECT(exact == 128 && close == 128, "%s A%s B%s: %d of 128 exact, %d close to the f64 product",
                       f16 ? "f16" : "bf16", a_trans ? "[k][m]" : "[m][k]", b_k ? "[n][k]" : "[k][n]", exact, close);
            }
        }
    }
}

static void test_big_block(Module& m) {
    printf("block of 1024 threads\n");
    const unsigned blocks = 6;
    Rng rng(3);
    std::vector<float> in(1024 * blocks), out(blocks, NAN);
    for (float& x : in) x = rng.uniform(-1, 1);
    int rc = m.launch("k_big", {blocks}, {1024}, 0, 2, (const float*)in.data(), out.data());
    EXPECT(rc == 0, "rc %d %s", rc, m.msg.c_str());
    for (unsigned b = 0; b < blocks; b++) {
        double ref = 0;
        for (int i = 0; i < 1024; i++) ref += in[b * 1024 + i];
        EXPECT(fabs(out[b] - ref) < 1e-4, "block %u: %g vs %g", b, out[b], ref);
    }
}

static void test_order(Module& m) {
    printf("blocks run in a shuffled, reproducible order\n");
    auto order = [&](uint64_t seed) {
        unsigned counter = 0;
        std::vector<unsigned> o(105, ~0u);
        int rc = m.launch("k_order", {7, 5, 3}, {32}, 0, seed, &counter, o.data());
        EXPECT(rc == 0 && counter == 105, "rc %d counter %u", rc, counter);
        return o;
    };
    auto a = order(1), b = order(1), c = order(2);
    std::vector<unsigned> sorted = a;
    std::sort(sorted.begin(), sorted.end());
    bool perm = true, identity = true;
    for (unsigned i = 0; i < 105; i++) perm = perm && sorted[i] == i, identity = identity && a[i] == i;
    EXPECT(perm, "every block ran exactly once");
    EXPECT(!identity, "the order is shuffled");
    EXPECT(a == b, "the same seed gives the same order");
    EXPECT(a != c, "another seed gives another order");
    printf("  seed 1: %u %u %u %u %u ...\n", a[0], a[1], a[2], a[3], a[4]);
}

static void test_poison(Module& m) {
    printf("unwritten shared memory reads as 0xFF bytes in every block\n");
    std::vector<unsigned> out(3 * 128, 0);
    int rc = m.launch("k_poison", {3}, {64}, 256, 4, out.data());
    EXPECT(rc == 0, "rc %d %s", rc, m.msg.c_str());
    int dyn = 0, st = 0;
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < 64; t++) dyn += out[b * 128 + t] == 0xFFFFFFFFu, st += out[b * 128 + 64 + t] == 0xFFFFFFFFu;
    EXPECT(dyn == 192, "dynamic shared memory: %d of 192 poisoned", dyn);
#ifdef CUDASIM_TEST_ASAN
    printf("  (ASan build: static __shared__ variables are left to ASan's redzones, %d of 192 poisoned)\n", st);
#else
    EXPECT(st == 192, "static __shared__: %d of 192 poisoned", st);
#endif
}

struct Pod {
    int a;
    double b;
    char c[3];
};

static void test_params(Module& m) {
    printf("kernel parameters of assorted types, printf\n");
    const cudasim_kernel* k = m.find("k_params");
    size_t want[] = {8, sizeof(Pod), 1, 2, 4, 8, 8};
    bool sizes = k->num_params == 7 && k->param_sizes;
    for (int i = 0; sizes && i < 7; i++) sizes = k->param_sizes[i] == want[i];
    EXPECT(sizes, "param_sizes");
    EXPECT(m.find("k_big")->max_threads_per_block == 1024 && m.find("k_empty")->num_params == 0, "table entries");
    std::vector<double> out(8, -1);
    int forty_two = 42;
    Pod p{7, 2.5, {1, 2, 3}};
    int rc = m.launch("k_params", {2}, {2}, 0, 1, out.data(), p, 'x', (short)-5, 1.25f, 1ull << 40, (const int*)&forty_two);
    fflush(stdout);
    EXPECT(rc == 0 && out[0] == 7 && out[1] == 2.5 && out[2] == 3 && out[3] == 'x' && out[4] == -5 && out[5] == 1.25 &&
               out[6] == (double)(1ull << 40) && out[7] == 42,
           "values %g %g %g %g %g %g %g %g", out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]);
}

static void test_math(Module& m) {
    printf("math, integer intrinsics, atomics, bf16/fp16 arithmetic\n");
    float x[2] = {0.75f, -2.5f}, a = x[0], b = x[1];
    int ai = 1;
    unsigned au = 2;
    unsigned long long aull = 3;
    float af = 0.25f;
    std::vector<double> o(64, -999);
    int rc = m.launch("k_math", {1}, {1}, 0, 1, o.data(), (const float*)x, &ai, &au, &aull, &af);
    EXPECT(rc == 0, "rc %d %s", rc, m.msg.c_str());
    double want[] = {expf(a), expf(a), logf(a), logf(a), tanhf(b), sqrtf(a), 1.0f / sqrtf(a), a, b, 2.5, erff(a),
                     powf(a, b), exp2f(b), log2f(a), a / b, 1.0f / b, 1, 1, 1, 0x3f800000, 2.0, 0x80000000u,
                     8, 8, 31, 32, -4, 7, 1.5, 9, -5, 1, 1.0, 2, 0x80000000u, 0x44332211u,
                     1, 2, 3, 0.25, 6, 100, -7, 11,
                     12, 4.5, 4.5, 1, (double)__half2float(__float2half(__half2float(__float2half(0.1f)) + __half2float(__float2half(0.2f)))), 7, 0xabcd + 77, 51};
    int bad = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (o[i] != want[i]) {
            bad++;
            printf("  result %zu: got %.9g, want %.9g\n", i, o[i], want[i]);
        }
    EXPECT(bad == 0 && ai == 12 && au == 5 && aull == 3 + (1ull << 40) && af == 0.75f, "%d wrong", bad);
}

static void bench(Module& m) {
    printf("cost of fibers\n");
    std::vector<int> out(256 * 256 + 4 * 256);
    int* p = out.data();
    m.launch("k_barrier", {8}, {256}, 0, 1, p, 16);  // warm up the stacks
    double t0 = now_ms();
    int rc = m.launch("k_barrier", {256}, {256}, 0, 1, p, 16);
    double ms = now_ms() - t0;
    double switches = 256.0 * 256 * 36;
    EXPECT(rc == 0, "rc %d", rc);
    printf("  256 blocks x 256 threads x 36 barriers: %.1f ms, %.1f ns per thread per barrier\n", ms, ms * 1e6 / switches);
    t0 = now_ms();
    rc = m.launch("k_empty", {20000}, {32}, 0, 1);
    ms = now_ms() - t0;
    printf("  20000 empty blocks of 32 threads: %.1f ms, %.2f us per block\n", ms, ms * 1e3 / 20000);
    std::vector<int> in(256 * 64), wout(256 * 64 * 24);
    t0 = now_ms();
    rc = m.launch("k_warp", {64}, {256}, 0, 1, (const int*)in.data(), wout.data(), 0);
    ms = now_ms() - t0;
    printf("  k_warp, 64 blocks x 256 threads x 24 warp collectives: %.1f ms, %.1f ns per thread per collective\n", ms,
           ms * 1e6 / (64.0 * 256 * 24));
}

int main(int argc, char** argv) {
    if (argc < 2) {
        printf("usage: %s test_kernels.so\n", argv[0]);
        return 2;
    }
    Module m(argv[1]);
    if (argc == 4 && !strcmp(argv[2], "--oob")) {  // for the ASan build: must not return
        int mode = atoi(argv[3]), n = 64;
        float* buf = (float*)malloc(n * sizeof(float));
        float out = 0;
        int rc = m.launch("k_oob", {2}, {32}, (size_t)n * 4, 1, (const float*)buf, n, mode, &out);
        printf("k_oob returned %d (%s): the access was not caught\n", rc, m.msg.c_str());
        return 1;
    }
    test_barrier(m);
    test_warp(m);
    test_activemask(m);
    test_deadlock(m);
    test_errors(m);
    test_cpasync(m);
    test_mma(m);
    test_big_block(m);
    test_order(m);
    test_poison(m);
    test_params(m);
    test_math(m);
    bench(m);
    printf("%d of %d checks failed\n", g_failures, g_checks);
    return g_failures != 0;
}
