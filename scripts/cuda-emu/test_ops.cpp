// Runs the elementwise/normalisation/loss/optimizer kernels (kernels/cuda/{gelu,residual,
// layernorm,crossentropy,adamw,norm,embedding}.cu) under ops_ext.h at small odd sizes, both
// dtypes, vector and scalar paths, against double-precision references. Outputs start as NaN.
#include "ops_ext.h"
#include <random>
namespace k_gelu {
#include "gelu_emu.h"
}
namespace k_res {
#include "residual_emu.h"
}
namespace k_ln {
#include "layernorm_emu.h"
}
namespace k_ce {
#include "crossentropy_emu.h"
}
namespace k_adam {
#include "adamw_emu.h"
}
namespace k_norm {
#include "norm_emu.h"
}
namespace k_emb {
#include "embedding_emu.h"
}
typedef __nv_bfloat16 bf;
typedef unsigned long long u64;
static std::mt19937 rng(7);
static std::vector<float> rnd(size_t n, float lo, float hi) { std::uniform_real_distribution<float> d(lo, hi); std::vector<float> v(n); for (auto& x : v) x = d(rng); return v; }
static float rb(float x) { return __bfloat162float(__float2bfloat16(x)); }
static int fails = 0;
static void check(const std::string& what, const std::vector<double>& ref, const std::vector<float>& got, double tol) {
    double d2 = 0, r2 = 0, worst = -1; size_t wi = 0; bool nan = false;
    for (size_t i = 0; i < ref.size(); i++) {
        double d = std::fabs(got[i] - ref[i]);
        if (std::isnan(got[i]) != std::isnan(ref[i])) { nan = true; d = INFINITY; }
        else if (std::isnan(ref[i])) d = 0;
        else { d2 += d * d; r2 += ref[i] * ref[i]; }
        if (d > worst) { worst = d; wi = i; }
    }
    double rel = r2 > 0 ? std::sqrt(d2 / r2) : std::sqrt(d2);
    bool ok = !nan && rel <= tol;
    if (!ok) fails++;
    printf("%s %-64s rel %.2e worst [%zu] got %g ref %g%s\n", ok ? "ok  " : "FAIL", what.c_str(), rel, wi, got[wi], ref[wi], nan ? " NaN mismatch" : "");
}
// storage helpers: T = float or bf
template <typename T> static std::vector<T> store(const std::vector<float>& v);
template <> std::vector<float> store<float>(const std::vector<float>& v) { return v; }
template <> std::vector<bf> store<bf>(const std::vector<float>& v) { std::vector<bf> o(v.size()); for (size_t i = 0; i < v.size(); i++) o[i] = __float2bfloat16(v[i]); return o; }
static float f(float x) { return x; }
static float f(bf x) { return __bfloat162float(x); }
template <typename T> static std::vector<float> load(const std::vector<T>& v) { std::vector<float> o(v.size()); for (size_t i = 0; i < v.size(); i++) o[i] = f(v[i]); return o; }
template <typename T> static std::vector<float> seen(const std::vector<float>& v) { return load(store<T>(v)); }
template <typename T> static std::vector<T> nans(size_t n) { return store<T>(std::vector<float>(n, NAN)); }
template <typename T> static const char* tn() { return sizeof(T) == 4 ? "f32" : "bf16"; }
template <typename T> static double tol() { return sizeof(T) == 4 ? 1e-5 : 1e-2; }
static dim3 d1(unsigned x, unsigned y = 1) { dim3 d; d.x = x; d.y = y; return d; }

// ------------------------------------------------------------------ gelu, residual
// sigmoid form in double: 0.5 (1 + tanh u) = sigmoid(2u) without the cancellation of 1 + tanh(u)
static double gelu(double x) { double u = 0.7978845608028654 * (x + 0.044715 * x * x * x); return x / (1 + std::exp(-2 * u)); }
static double dgelu(double x) { double u = 0.7978845608028654 * (x + 0.044715 * x * x * x), s = 1 / (1 + std::exp(-2 * u));
    return s + 2 * x * s * (1 - s) * 0.7978845608028654 * (1 + 3 * 0.044715 * x * x); }
template <typename T> static void test_elementwise(size_t n, int skew) {
    // skew = 1 offsets every pointer by one element: the scalar path
    auto x = seen<T>(rnd(n + 1, -8, 5)), d = seen<T>(rnd(n + 1, -1, 1));
    auto xs = store<T>(x), ds = store<T>(d);
    std::vector<T> out = nans<T>(n + 1), din = nans<T>(n + 1);
    emu_launch(d1(2), d1(64), [&] {
        if constexpr (sizeof(T) == 4) k_gelu::gelu_fwd_f32((float*)out.data() + skew, (const float*)xs.data() + skew, n);
        else k_gelu::gelu_fwd_bf16((bf*)out.data() + skew, (const bf*)xs.data() + skew, n); });
    emu_launch(d1(2), d1(64), [&] {
        if constexpr (sizeof(T) == 4) k_gelu::gelu_bwd_f32((float*)din.data() + skew, (const float*)xs.data() + skew, (const float*)ds.data() + skew, n);
        else k_gelu::gelu_bwd_bf16((bf*)din.data() + skew, (const bf*)xs.data() + skew, (const bf*)ds.data() + skew, n); });
    std::vector<double> rf(n), rb_(n); std::vector<float> gf(n), gb(n);
    for (size_t i = 0; i < n; i++) { rf[i] = gelu(x[i + skew]); rb_[i] = d[i + skew] * dgelu(x[i + skew]); gf[i] = f(out[i + skew]); gb[i] = f(din[i + skew]); }
    std::string s = std::string(tn<T>()) + " n=" + std::to_string(n) + (skew ? " unaligned" : "");
    check("gelu fwd " + s, rf, gf, tol<T>());
    check("gelu bwd " + s, rb_, gb, tol<T>());
    // residual: out = a + b, dst += src, x *= s
    std::vector<T> o2 = nans<T>(n + 1), acc = xs;
    emu_launch(d1(2), d1(64), [&] {
        if constexpr (sizeof(T) == 4) k_res::residual_fwd_f32((float*)o2.data() + skew, (const float*)xs.data() + skew, (const float*)ds.data() + skew, n);
        else k_res::residual_fwd_bf16((bf*)o2.data() + skew, (const bf*)xs.data() + skew, (const bf*)ds.data() + skew, n); });
    emu_launch(d1(2), d1(64), [&] {
        if constexpr (sizeof(T) == 4) k_res::residual_accumulate_f32((float*)acc.data() + skew, (const float*)ds.data() + skew, n);
        else k_res::residual_accumulate_bf16((bf*)acc.data() + skew, (const bf*)ds.data() + skew, n); });
    emu_launch(d1(2), d1(64), [&] {
        if constexpr (sizeof(T) == 4) k_res::residual_scale_f32((float*)acc.data() + skew, -0.37f, n);
        else k_res::residual_scale_bf16((bf*)acc.data() + skew, -0.37f, n); });
    std::vector<double> ra(n), rs(n); std::vector<float> ga(n), gs(n);
    for (size_t i = 0; i < n; i++) { ra[i] = (double)x[i + skew] + d[i + skew]; rs[i] = ra[i] * -0.37; ga[i] = f(o2[i + skew]); gs[i] = f(acc[i + skew]); }
    check("residual fwd " + s, ra, ga, tol<T>());
    check("residual accumulate+scale " + s, rs, gs, tol<T>());
}

// ------------------------------------------------------------------ layernorm
template <typename T> static void test_layernorm(int N, int C, bool fused) {
    auto a = seen<T>(rnd((size_t)N * C, -1, 3)), b = seen<T>(rnd((size_t)N * C, -1, 1));
    auto w = seen<T>(rnd(C, 0.5, 1.5)), bi = seen<T>(rnd(C, -0.5, 0.5));
    auto as = store<T>(a), bs = store<T>(b), ws = store<T>(w), bis = store<T>(bi);
    std::vector<T> out = nans<T>((size_t)N * C), res = nans<T>((size_t)N * C);
    std::vector<float> mean(N, NAN), rstd(N, NAN);
    emu_launch(d1(2), d1(64), [&] {
        if constexpr (sizeof(T) == 4) {
            if (fused) k_ln::residual_layernorm_fwd_f32(res.data(), out.data(), mean.data(), rstd.data(), as.data(), bs.data(), ws.data(), bis.data(), N, C);
            else k_ln::layernorm_fwd_f32(out.data(), mean.data(), rstd.data(), as.data(), ws.data(), bis.data(), N, C);
        } else {
            if (fused) k_ln::residual_layernorm_fwd_bf16(res.data(), out.data(), mean.data(), rstd.data(), as.data(), bs.data(), ws.data(), bis.data(), N, C);
            else k_ln::layernorm_fwd_bf16(out.data(), mean.data(), rstd.data(), as.data(), ws.data(), bis.data(), N, C);
        } });
    // reference in double on the (rounded) input; the fused bf16 kernel normalises the rounded residual
    std::vector<double> x(a.size()), rout(a.size()), rmean(N), rrstd(N), rres(a.size());
    for (size_t i = 0; i < a.size(); i++) { rres[i] = fused ? (double)a[i] + b[i] : a[i]; x[i] = fused ? (sizeof(T) == 4 ? rres[i] : rb((float)rres[i])) : a[i]; }
    for (int r = 0; r < N; r++) {
        double m = 0, v = 0; for (int i = 0; i < C; i++) m += x[(size_t)r * C + i]; m /= C;
        for (int i = 0; i < C; i++) v += (x[(size_t)r * C + i] - m) * (x[(size_t)r * C + i] - m); v /= C;
        double s = 1 / std::sqrt(v + 1e-5); rmean[r] = m; rrstd[r] = s;
        for (int i = 0; i < C; i++) rout[(size_t)r * C + i] = (x[(size_t)r * C + i] - m) * s * w[i] + bi[i];
    }
    std::string s = std::string(tn<T>()) + " N=" + std::to_string(N) + " C=" + std::to_string(C);
    std::string op = fused ? "residual_layernorm" : "layernorm";
    check(op + " out " + s, rout, load(out), tol<T>());
    check(op + " mean " + s, rmean, mean, 1e-5);
    check(op + " rstd " + s, rrstd, rstd, 1e-5);
    if (fused) { check(op + " residual " + s, rres, load(res), tol<T>()); return; }

    // backward with the reference statistics, R = 32 rows per block
    auto dout = seen<T>(rnd(a.size(), -1, 1)), dw0 = seen<T>(rnd(C, -1, 1)), db0 = seen<T>(rnd(C, -1, 1));
    auto douts = store<T>(dout); std::vector<T> dw = store<T>(dw0), db = store<T>(db0), dinp = nans<T>(a.size());
    std::vector<float> fm(N), fr(N); for (int r = 0; r < N; r++) { fm[r] = (float)rmean[r]; fr[r] = (float)rrstd[r]; }
    const int R = 32, blocks = (N + R - 1) / R;
    std::vector<float> partials((size_t)blocks * 2 * C, NAN);
    emu_launch(d1(blocks), d1(64), [&] {
        if constexpr (sizeof(T) == 4) k_ln::layernorm_bwd_f32(dinp.data(), partials.data(), douts.data(), as.data(), ws.data(), fm.data(), fr.data(), N, C, R);
        else k_ln::layernorm_bwd_bf16(dinp.data(), partials.data(), douts.data(), as.data(), ws.data(), fm.data(), fr.data(), N, C, R); });
    emu_launch(d1((2 * C + 31) / 32), d1(32, 8), [&] {
        if constexpr (sizeof(T) == 4) k_ln::layernorm_bwd_reduce_f32(dw.data(), db.data(), partials.data(), blocks, C);
        else k_ln::layernorm_bwd_reduce_bf16(dw.data(), db.data(), partials.data(), blocks, C); });
    std::vector<double> rdinp(a.size()), rdw(dw0.begin(), dw0.end()), rdb(db0.begin(), db0.end());
    for (int r = 0; r < N; r++) {
        double m1 = 0, m2 = 0;
        for (int i = 0; i < C; i++) { size_t k = (size_t)r * C + i; double nrm = (a[k] - fm[r]) * (double)fr[r], dn = dout[k] * (double)w[i]; m1 += dn; m2 += dn * nrm; }
        m1 /= C; m2 /= C;
        for (int i = 0; i < C; i++) { size_t k = (size_t)r * C + i; double nrm = (a[k] - fm[r]) * (double)fr[r], dn = dout[k] * (double)w[i];
            rdinp[k] = fr[r] * (dn - m1 - nrm * m2); rdw[i] += dout[k] * nrm; rdb[i] += dout[k]; }
    }
    check("layernorm dinp " + s, rdinp, load(dinp), tol<T>());
    check("layernorm dweight " + s, rdw, load(dw), tol<T>());
    check("layernorm dbias " + s, rdb, load(db), tol<T>());
}

// ------------------------------------------------------------------ crossentropy
template <typename T> static void test_crossentropy(int N, int V, int Vp, bool grad) {
    auto lg = rnd((size_t)N * Vp, -4, 4);
    for (int r = 0; r < N; r++) for (int i = V; i < Vp; i++) lg[(size_t)r * Vp + i] = 1e4f;  // padding must be ignored
    lg = seen<T>(lg);
    std::vector<unsigned> tg(N); for (int r = 0; r < N; r++) tg[r] = rng() % V;
    tg[N - 1] = V;  // out of range: NaN loss and NaN row
    auto ls = store<T>(lg); std::vector<float> losses(N, NAN);
    float dloss = 1.0f / N;
    int packs = (Vp + (16 / (int)sizeof(T)) - 1) / (16 / (int)sizeof(T)); int block = std::min(1024, std::max(32, (packs + 31) / 32 * 32));
    emu_launch(d1(N), d1(block), [&] {
        if constexpr (sizeof(T) == 4) k_ce::crossentropy_fwd_f32(losses.data(), ls.data(), tg.data(), Vp, V, dloss, grad);
        else k_ce::crossentropy_fwd_bf16(losses.data(), ls.data(), tg.data(), Vp, V, dloss, grad); });
    std::vector<double> rl(N), rg((size_t)N * Vp);
    for (int r = 0; r < N; r++) {
        const float* x = &lg[(size_t)r * Vp]; double mx = -INFINITY, sum = 0;
        for (int i = 0; i < V; i++) mx = std::max(mx, (double)x[i]);
        for (int i = 0; i < V; i++) sum += std::exp(x[i] - mx);
        bool bad = tg[r] >= (unsigned)V;
        rl[r] = bad ? NAN : std::log(sum) + mx - x[tg[r]];
        for (int i = 0; i < Vp; i++) rg[(size_t)r * Vp + i] = !grad ? x[i] : bad ? NAN : i < V ? dloss * std::exp(x[i] - mx) / sum - (i == (int)tg[r] ? dloss : 0) : 0;
    }
    std::string s = std::string(tn<T>()) + " N=" + std::to_string(N) + " V=" + std::to_string(V) + " Vp=" + std::to_string(Vp) + (grad ? " grad" : "");
    check("crossentropy losses " + s, rl, losses, 1e-5);
    check("crossentropy logits/dlogits " + s, rg, load(ls), tol<T>());
}

// ------------------------------------------------------------------ adamw
template <typename G> static void test_adamw(size_t n, bool copy) {
    auto p = rnd(n, -1, 1), g = seen<G>(rnd(n, -0.1, 0.1)), m = rnd(n, -0.01, 0.01), v = rnd(n, 0, 1e-4);
    auto gs = store<G>(g); std::vector<float> pg = p, mg = m, vg = v; std::vector<bf> cp = nans<bf>(n);
    float lr = 3e-4f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f; int step = 3;
    float bc1 = 1 - std::pow(b1, step), bc2s = std::sqrt(1 - std::pow(b2, step)), ss = lr / bc1, decay = 1 - lr * wd;
    emu_launch(d1(2), d1(64), [&] {
        if constexpr (sizeof(G) == 4) k_adam::adamw_step_f32(pg.data(), copy ? cp.data() : nullptr, gs.data(), mg.data(), vg.data(), n, 1 - b1, b2, 1 - b2, ss, bc2s, eps, decay);
        else k_adam::adamw_step_bf16(pg.data(), copy ? cp.data() : nullptr, gs.data(), mg.data(), vg.data(), n, 1 - b1, b2, 1 - b2, ss, bc2s, eps, decay); });
    std::vector<double> rp(n), rm(n), rv(n), rc(n);
    for (size_t i = 0; i < n; i++) {
        double mm = b1 * (double)m[i] + (1 - (double)b1) * g[i], vv = b2 * (double)v[i] + (1 - (double)b2) * g[i] * g[i];
        double pp = p[i] * (1 - (double)lr * wd) - (double)lr / (1 - std::pow((double)b1, step)) * mm / (std::sqrt(vv) / std::sqrt(1 - std::pow((double)b2, step)) + eps);
        rp[i] = pp; rm[i] = mm; rv[i] = vv; rc[i] = copy ? pp : NAN;
    }
    std::string s = std::string("grad ") + tn<G>() + " n=" + std::to_string(n) + (copy ? " +bf16 copy" : "");
    check("adamw param " + s, rp, pg, 1e-5);
    check("adamw m " + s, rm, mg, 1e-5);
    check("adamw v " + s, rv, vg, 1e-5);
    check("adamw copy " + s, rc, load(cp), 1e-2);
}

// ------------------------------------------------------------------ norm
template <typename T> static void test_norm() {
    std::vector<size_t> sizes = {1, 37, 1001, 5000};
    std::vector<std::vector<T>> ts; double ss = 0;
    int total = 0; std::vector<int> blocks;
    for (size_t n : sizes) { auto v = seen<T>(rnd(n, -1, 1)); for (float x : v) ss += (double)x * x; ts.push_back(store<T>(v)); int b = (int)std::min<size_t>(3, (n + 63) / 64); blocks.push_back(b); total += b; }
    std::vector<float> partials(total, NAN), norm(1, NAN);
    int off = 0;
    for (size_t t = 0; t < sizes.size(); t++) {
        emu_launch(d1(blocks[t]), d1(64), [&] {
            if constexpr (sizeof(T) == 4) k_norm::norm_squares_f32(partials.data() + off, ts[t].data(), sizes[t]);
            else k_norm::norm_squares_bf16(partials.data() + off, ts[t].data(), sizes[t]); });
        off += blocks[t];
    }
    emu_launch(d1(1), d1(64), [&] { k_norm::norm_finalize(norm.data(), partials.data(), total); });
    check(std::string("global norm ") + tn<T>(), {std::sqrt(ss)}, norm, 1e-6);
    float maxn = (float)std::sqrt(ss) * 0.25f; auto x = ts[2]; auto x0 = load(x);
    emu_launch(d1(2), d1(64), [&] {
        if constexpr (sizeof(T) == 4) k_norm::norm_clip_f32(x.data(), x.size(), norm.data(), maxn);
        else k_norm::norm_clip_bf16(x.data(), x.size(), norm.data(), maxn); });
    std::vector<double> rc(x.size()); double c = std::min(1.0, maxn / (std::sqrt(ss) + 1e-6)); for (size_t i = 0; i < x.size(); i++) rc[i] = x0[i] * c;
    check(std::string("norm clip ") + tn<T>(), rc, load(x), tol<T>());
}

// ------------------------------------------------------------------ embedding
template <typename T> static void test_embedding(int B, int Tl, int C, int V, int below) {
    const int N = B * Tl, maxT = Tl + 2;
    std::vector<unsigned> tok(N); for (auto& t : tok) t = rng() % below;
    tok[N / 2] = V + 5;  // out of range: NaN row forward, skipped backward
    auto wte = seen<T>(rnd((size_t)V * C, -1, 1)), wpe = seen<T>(rnd((size_t)maxT * C, -1, 1));
    auto wtes = store<T>(wte), wpes = store<T>(wpe); std::vector<T> out = nans<T>((size_t)N * C);
    emu_launch(d1(3), d1(64), [&] {
        if constexpr (sizeof(T) == 4) k_emb::embedding_fwd_f32(out.data(), tok.data(), wtes.data(), wpes.data(), N, Tl, C, V);
        else k_emb::embedding_fwd_bf16(out.data(), tok.data(), wtes.data(), wpes.data(), N, Tl, C, V); });
    std::vector<double> ro((size_t)N * C);
    for (int r = 0; r < N; r++) for (int i = 0; i < C; i++) ro[(size_t)r * C + i] = tok[r] < (unsigned)V ? (double)wte[(size_t)tok[r] * C + i] + wpe[(size_t)(r % Tl) * C + i] : NAN;
    std::string s = std::string(tn<T>()) + " B=" + std::to_string(B) + " T=" + std::to_string(Tl) + " C=" + std::to_string(C) + " V=" + std::to_string(V) + " ids<" + std::to_string(below);
    check("embedding fwd " + s, ro, load(out), tol<T>());

    auto dout = seen<T>(rnd((size_t)N * C, -1, 1)), dwte0 = seen<T>(rnd((size_t)V * C, -0.5, 0.5)), dwpe0 = seen<T>(rnd((size_t)maxT * C, -0.5, 0.5));
    auto douts = store<T>(dout); std::vector<T> dwte = store<T>(dwte0), dwpe = store<T>(dwpe0);
    std::vector<unsigned> offsets(V + 1, 0), sorted(N, 0xdeadbeef);
    const int P = 16 / sizeof(T);
    emu_launch(d1(2), d1(64), [&] {
        if constexpr (sizeof(T) == 4) k_emb::embedding_bwd_dwpe_f32(dwpe.data(), douts.data(), B, Tl, C);
        else k_emb::embedding_bwd_dwpe_bf16(dwpe.data(), douts.data(), B, Tl, C); });
    emu_launch(d1(2), d1(64), [&] { k_emb::embedding_bwd_count(offsets.data(), tok.data(), N, V); });
    emu_launch(d1(1), d1(128), [&] { k_emb::embedding_bwd_scan(offsets.data(), V); });
    emu_launch(d1((V + 1023) / 1024), d1(128), [&] { k_emb::embedding_bwd_place(sorted.data(), offsets.data(), tok.data(), N, V); });
    int packs = (C + P - 1) / P, block = std::min(4, (packs + 31) / 32) * 32;
    emu_launch(d1(N, (packs + block - 1) / block), d1(block), [&] {
        if constexpr (sizeof(T) == 4) k_emb::embedding_bwd_dwte_f32(dwte.data(), douts.data(), sorted.data(), offsets.data(), tok.data(), C, V);
        else k_emb::embedding_bwd_dwte_bf16(dwte.data(), douts.data(), sorted.data(), offsets.data(), tok.data(), C, V); });
    // reference: the CPU's row-order f32 sums (bitwise for f32), and double for the norm check
    std::vector<float> fwte = dwte0, fwpe = dwpe0;
    for (int r = 0; r < N; r++) { if (tok[r] >= (unsigned)V) continue; for (int i = 0; i < C; i++) { fwte[(size_t)tok[r] * C + i] += dout[(size_t)r * C + i]; fwpe[(size_t)(r % Tl) * C + i] += dout[(size_t)r * C + i]; } }
    // dwpe: the CPU includes the bad-token row too (it would have errored in the forward)
    fwpe = dwpe0; for (int r = 0; r < N; r++) for (int i = 0; i < C; i++) fwpe[(size_t)(r % Tl) * C + i] += dout[(size_t)r * C + i];
    check("embedding dwte " + s, std::vector<double>(fwte.begin(), fwte.end()), load(dwte), tol<T>());
    check("embedding dwpe " + s, std::vector<double>(fwpe.begin(), fwpe.end()), load(dwpe), tol<T>());
    if (sizeof(T) == 4) {
        bool same = memcmp(fwte.data(), load(dwte).data(), fwte.size() * 4) == 0 && memcmp(fwpe.data(), load(dwpe).data(), fwpe.size() * 4) == 0;
        if (!same) fails++;
        printf("%s embedding f32 bitwise equal to row-order sums %s\n", same ? "ok  " : "FAIL", s.c_str());
    }
    // stable: each bucket lists its positions in increasing order
    bool stable = true; for (int i = 1; i < (int)offsets[V]; i++) if (tok[sorted[i - 1]] == tok[sorted[i]] && sorted[i - 1] >= sorted[i]) stable = false;
    for (int v = 0; v < V; v++) for (unsigned i = offsets[v]; i < offsets[v + 1]; i++) if (tok[sorted[i]] != (unsigned)v) stable = false;
    if (!stable) fails++;
    printf("%s embedding buckets sorted and stable %s\n", stable ? "ok  " : "FAIL", s.c_str());
}

int main() {
    for (size_t n : {1, 7, 37 * 5 + 3, 1024}) for (int skew : {0, 1}) { test_elementwise<float>(n, skew); test_elementwise<bf>(n, skew); }
    for (auto [N, C] : std::vector<std::pair<int, int>>{{37, 40}, {37, 37}, {5, 768}, {70, 8}}) for (bool fused : {false, true}) {
        test_layernorm<float>(N, C, fused); test_layernorm<bf>(N, C, fused); }
    for (auto [N, V, Vp] : std::vector<std::tuple<int, int, int>>{{5, 300, 384}, {4, 300, 301}, {3, 1, 8}, {3, 2000, 2048}}) for (bool g : {false, true}) {
        test_crossentropy<float>(N, V, Vp, g); test_crossentropy<bf>(N, V, Vp, g); }
    for (size_t n : {1, 1001}) { test_adamw<float>(n, false); test_adamw<float>(n, true); test_adamw<bf>(n, true); }
    test_norm<float>(); test_norm<bf>();
    for (auto [B, T, C, V, below] : std::vector<std::tuple<int, int, int, int, int>>{{3, 7, 40, 300, 300}, {3, 37, 40, 300, 5}, {2, 9, 37, 300, 300}, {4, 16, 16, 1500, 1500}, {2, 40, 8, 65, 3}}) {
        test_embedding<float>(B, T, C, V, below); test_embedding<bf>(B, T, C, V, below); }
    printf("%s: %d failure(s)\n", fails ? "FAILED" : "all passed", fails);
    return fails ? 1 : 0;
}
