#include "matmul_emu.h"
#include <random>
static std::mt19937 rng(42);
static std::vector<float> rnd(size_t n, float s) { std::uniform_real_distribution<float> d(-s, s); std::vector<float> v(n); for (auto& x : v) x = d(rng); return v; }
static std::vector<bf16> tobf(const std::vector<float>& v) { std::vector<bf16> o(v.size()); for (size_t i = 0; i < v.size(); i++) o[i] = __float2bfloat16(v[i]); return o; }
static std::vector<float> rnd_bf(size_t n, float s) { auto v = rnd(n, s); for (auto& x : v) x = __bfloat162float(__float2bfloat16(x)); return v; }
static int fails = 0;
static void check(const char* what, const std::vector<double>& ref, const std::vector<float>& got, double tol) {
    double d2 = 0, r2 = 0, worst = 0; size_t wi = 0; bool nan = false;
    for (size_t i = 0; i < ref.size(); i++) { double d = got[i] - ref[i]; if (std::isnan(got[i])) nan = true; d2 += d * d; r2 += ref[i] * ref[i]; if (std::fabs(d) > worst) { worst = std::fabs(d); wi = i; } }
    double rel = std::sqrt(d2 / r2);
    bool ok = !nan && rel <= tol;
    if (!ok) fails++;
    printf("%s %-60s rel %.3e worst [%zu] got %g ref %g%s\n", ok ? "ok  " : "FAIL", what, rel, wi, got[wi], ref[wi], nan ? " NaN" : "");
}
static double gelu(double x) { double u = 0.7978845608 * (x + 0.044715 * x * x * x); return 0.5 * x * (1 + std::tanh(u)); }

// A(m,k), B(k,n) accessors from layouts
static void run(int M, int K, int N, bool outin, bool bias_on, bool gelu_on, bool bf) {
    char name[200]; snprintf(name, sizeof name, "%s fwd M=%d K=%d N=%d %s%s%s", bf ? "bf16" : "f32", M, K, N, outin ? "OutIn" : "InOut", bias_on ? " bias" : "", gelu_on ? " gelu" : "");
    auto inp = rnd_bf(M * K, 1), w = rnd_bf(K * N, 0.3f), bias = rnd_bf(N, 0.5f);
    std::vector<double> ref(M * N), pre_ref(M * N);
    for (int m = 0; m < M; m++) for (int n = 0; n < N; n++) {
        double s = bias_on ? bias[n] : 0; for (int k = 0; k < K; k++) s += (double)inp[m * K + k] * w[outin ? n * K + k : k * N + n];
        pre_ref[m * N + n] = s; ref[m * N + n] = gelu_on ? gelu(s) : s; }
    std::vector<float> got(M * N), pre(M * N);
    int vec = (K % 8 == 0) && ((outin ? K : N) % 8 == 0);
    if (bf) {
        auto ib = tobf(inp), wb = tobf(w), bb = tobf(bias); std::vector<bf16> ob(M * N, {0x7fc0}), pb(M * N, {0x7fc0});
        emu_launch({(unsigned)(N + 127) / 128, (unsigned)(M + 127) / 128, 1}, {256, 1, 1}, [&] { matmul_fwd_bf16(ob.data(), gelu_on ? pb.data() : nullptr, ib.data(), wb.data(), bias_on ? bb.data() : nullptr, M, K, N, outin, gelu_on, vec); });
        for (int i = 0; i < M * N; i++) { got[i] = __bfloat162float(ob[i]); pre[i] = __bfloat162float(pb[i]); }
    } else {
        std::fill(got.begin(), got.end(), NAN); std::fill(pre.begin(), pre.end(), NAN);
        emu_launch({(unsigned)(N + 63) / 64, (unsigned)(M + 63) / 64, 1}, {256, 1, 1}, [&] { matmul_fwd_f32(got.data(), gelu_on ? pre.data() : nullptr, inp.data(), w.data(), bias_on ? bias.data() : nullptr, M, K, N, outin, gelu_on); });
    }
    double tol = bf ? 1e-2 : 1e-5;
    check(name, ref, got, tol);
    if (gelu_on) { strcat(name, " (pre)"); check(name, pre_ref, pre, tol); }
}

// backward gemm C (=|+=) A @ B with arbitrary majors
static void run_bwd(int M, int N, int K, bool a_k, bool b_k, bool acc, bool c32, bool bf) {
    char name[200]; snprintf(name, sizeof name, "%s bwd-gemm M=%d N=%d K=%d A%s B%s%s c%s", bf ? "bf16" : "f32", M, N, K, a_k ? "k" : "m", b_k ? "k" : "n", acc ? " acc" : "", c32 ? "f32" : "bf16");
    int lda = a_k ? K : M, ldb = b_k ? K : N;
    auto a = rnd_bf(M * K, 1), b = rnd_bf(K * N, 1), c0 = rnd_bf(M * N, 1);
    std::vector<double> ref(M * N);
    for (int m = 0; m < M; m++) for (int n = 0; n < N; n++) {
        double s = acc ? c0[m * N + n] : 0; for (int k = 0; k < K; k++) s += (double)a[a_k ? m * lda + k : k * lda + m] * b[b_k ? n * ldb + k : k * ldb + n];
        ref[m * N + n] = s; }
    std::vector<float> got(M * N);
    int vec = lda % 8 == 0 && ldb % 8 == 0;
    if (bf) {
        auto ab = tobf(a), bb = tobf(b);
        std::vector<float> cf = acc ? c0 : std::vector<float>(M * N, NAN); auto cb = tobf(cf);
        void* c = c32 ? (void*)cf.data() : (void*)cb.data();
        emu_launch({(unsigned)(N + 127) / 128, (unsigned)(M + 127) / 128, 1}, {256, 1, 1}, [&] { matmul_bwd_bf16(c, c32, acc, ab.data(), lda, a_k, bb.data(), ldb, b_k, M, N, K, vec); });
        for (int i = 0; i < M * N; i++) got[i] = c32 ? cf[i] : __bfloat162float(cb[i]);
    } else {
        got = acc ? c0 : std::vector<float>(M * N, NAN);
        emu_launch({(unsigned)(N + 63) / 64, (unsigned)(M + 63) / 64, 1}, {256, 1, 1}, [&] { matmul_bwd_f32(got.data(), acc, a.data(), lda, a_k, b.data(), ldb, b_k, M, N, K); });
    }
    check(name, ref, got, bf ? 1e-2 : 1e-5);
}

static void run_bias(int M, int N, bool bf, bool d32) {
    char name[200]; snprintf(name, sizeof name, "%s bias_bwd M=%d N=%d dbias %s", bf ? "bf16" : "f32", M, N, d32 ? "f32" : "bf16");
    auto dout = rnd_bf(M * N, 1), d0 = rnd_bf(N, 1);
    std::vector<double> ref(N); for (int n = 0; n < N; n++) { double s = d0[n]; for (int m = 0; m < M; m++) s += dout[m * N + n]; ref[n] = s; }
    std::vector<float> got = d0;
    if (bf) { auto db = tobf(dout); auto gb = tobf(got);
        emu_launch({(unsigned)(N + 31) / 32, 1, 1}, {32, 16, 1}, [&] { matmul_bias_bwd_bf16(d32 ? (void*)got.data() : (void*)gb.data(), d32, db.data(), M, N); });
        if (!d32) for (int n = 0; n < N; n++) got[n] = __bfloat162float(gb[n]);
    } else emu_launch({(unsigned)(N + 31) / 32, 1, 1}, {32, 16, 1}, [&] { matmul_bias_bwd_f32(got.data(), dout.data(), M, N); });
    check(name, ref, got, bf && !d32 ? 1e-2 : 1e-5);
}

int main() {
    for (int bf = 1; bf >= 0; bf--) {
        run(37, 40, 72, false, true, false, bf);
        run(37, 40, 72, true, true, false, bf);
        run(37, 37, 50, false, true, true, bf);
        run(33, 50, 37, true, false, false, bf);
        run(5, 3, 5, true, true, true, bf);
        run(130, 136, 200, false, true, true, bf);
        run(130, 72, 136, true, false, false, bf);
        for (int ak = 0; ak < 2; ak++) for (int bk = 0; bk < 2; bk++) {
            run_bwd(72, 40, 37, ak, bk, true, true, bf);
            run_bwd(130, 136, 72, ak, bk, ak, false, bf);
            run_bwd(37, 50, 45, ak, bk, false, true, bf);
        }
        run_bias(37, 50, bf, true); run_bias(70, 72, bf, false);
    }
    printf("%d failures\n", fails);
    return fails != 0;
}
