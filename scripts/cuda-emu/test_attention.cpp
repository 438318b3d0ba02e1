#include "attention_emu.h"
#include <random>
static std::mt19937 rng(7);
static std::vector<float> rnd_bf(size_t n, float s) { std::uniform_real_distribution<float> d(-s, s); std::vector<float> v(n); for (auto& x : v) x = __bfloat162float(__float2bfloat16(d(rng))); return v; }
static std::vector<bf16> tobf(const std::vector<float>& v) { std::vector<bf16> o(v.size()); for (size_t i = 0; i < v.size(); i++) o[i] = __float2bfloat16(v[i]); return o; }
static int fails = 0;
static void check(const std::string& what, const std::vector<double>& ref, const std::vector<float>& got, double tol) {
    double d2 = 0, r2 = 0, worst = 0; size_t wi = 0; bool nan = false;
    for (size_t i = 0; i < ref.size(); i++) { double d = got[i] - ref[i]; if (std::isnan(got[i])) nan = true; d2 += d * d; r2 += ref[i] * ref[i]; if (std::fabs(d) > worst) { worst = std::fabs(d); wi = i; } }
    double rel = r2 > 0 ? std::sqrt(d2 / r2) : std::sqrt(d2); bool ok = !nan && rel <= tol; if (!ok) fails++;
    printf("%s %-50s rel %.3e worst [%zu] got %g ref %g%s\n", ok ? "ok  " : "FAIL", what.c_str(), rel, wi, got[wi], ref[wi], nan ? " NaN" : "");
}

static void run(int B, int T, int NH, int HS, bool bf) {
    int C = NH * HS, R = HS == 128 ? 32 : 64, nt = (T + R - 1) / R;
    std::string tag = std::string(bf ? "bf16" : "f32") + " B=" + std::to_string(B) + " T=" + std::to_string(T) + " NH=" + std::to_string(NH) + " HS=" + std::to_string(HS);
    auto qkv = rnd_bf((size_t)B * T * 3 * C, 1.5f), dout = rnd_bf((size_t)B * T * C, 1.0f);
    // reference
    std::vector<double> out_r((size_t)B * T * C), lse_r((size_t)B * NH * T), dqkv_r((size_t)B * T * 3 * C, 0.0);
    double sc = 1.0 / std::sqrt((double)HS);
    for (int b = 0; b < B; b++) for (int h = 0; h < NH; h++) {
        auto Q = [&](int i, int d) { return (double)qkv[((size_t)b * T + i) * 3 * C + h * HS + d]; };
        auto K = [&](int i, int d) { return (double)qkv[((size_t)b * T + i) * 3 * C + C + h * HS + d]; };
        auto V = [&](int i, int d) { return (double)qkv[((size_t)b * T + i) * 3 * C + 2 * C + h * HS + d]; };
        auto dO = [&](int i, int d) { return (double)dout[((size_t)b * T + i) * C + h * HS + d]; };
        std::vector<double> P((size_t)T * T, 0.0), dS((size_t)T * T, 0.0);
        for (int i = 0; i < T; i++) {
            double mx = -1e300; for (int j = 0; j <= i; j++) { double s = 0; for (int d = 0; d < HS; d++) s += Q(i, d) * K(j, d); P[(size_t)i * T + j] = s * sc; mx = std::max(mx, s * sc); }
            double sum = 0; for (int j = 0; j <= i; j++) sum += std::exp(P[(size_t)i * T + j] - mx);
            lse_r[((size_t)b * NH + h) * T + i] = mx + std::log(sum);
            for (int j = 0; j <= i; j++) P[(size_t)i * T + j] = std::exp(P[(size_t)i * T + j] - mx) / sum;
            for (int d = 0; d < HS; d++) { double o = 0; for (int j = 0; j <= i; j++) o += P[(size_t)i * T + j] * V(j, d); out_r[((size_t)b * T + i) * C + h * HS + d] = o; }
            double D = 0; std::vector<double> dP(i + 1);
            for (int j = 0; j <= i; j++) { double s = 0; for (int d = 0; d < HS; d++) s += dO(i, d) * V(j, d); dP[j] = s; D += P[(size_t)i * T + j] * s; }
            for (int j = 0; j <= i; j++) dS[(size_t)i * T + j] = P[(size_t)i * T + j] * (dP[j] - D);
        }
        for (int i = 0; i < T; i++) for (int d = 0; d < HS; d++) {
            double dq = 0, dk = 0, dv = 0;
            for (int j = 0; j <= i; j++) dq += dS[(size_t)i * T + j] * K(j, d);
            for (int r = i; r < T; r++) { dk += dS[(size_t)r * T + i] * Q(r, d); dv += P[(size_t)r * T + i] * dO(r, d); }
            size_t base = ((size_t)b * T + i) * 3 * C + h * HS + d;
            dqkv_r[base] = dq * sc; dqkv_r[base + C] = dk * sc; dqkv_r[base + 2 * C] = dv;
        }
    }
    // device
    std::vector<float> out((size_t)B * T * C), dqkv((size_t)B * T * 3 * C), saved((size_t)B * NH * T * (HS + 1), NAN);
    dim3 fg{(unsigned)nt, (unsigned)NH, (unsigned)B}, bg{(unsigned)nt, (unsigned)NH, (unsigned)(2 * B)}, blk{(unsigned)(4 * R), 1, 1};
    if (bf) {
        auto qb = tobf(qkv), db = tobf(dout); std::vector<bf16> ob(out.size(), {0x7fc0}), gb(dqkv.size(), {0x7fc0});
        emu_launch(fg, blk, [&] { attention_fwd_bf16(ob.data(), saved.data(), qb.data(), B, T, NH, HS); });
        emu_launch(bg, blk, [&] { attention_bwd_bf16(gb.data(), db.data(), qb.data(), saved.data(), B, T, NH, HS); });
        for (size_t i = 0; i < out.size(); i++) out[i] = __bfloat162float(ob[i]);
        for (size_t i = 0; i < dqkv.size(); i++) dqkv[i] = __bfloat162float(gb[i]);
    } else {
        std::fill(out.begin(), out.end(), NAN); std::fill(dqkv.begin(), dqkv.end(), NAN);
        emu_launch(fg, blk, [&] { attention_fwd_f32(out.data(), saved.data(), qkv.data(), B, T, NH, HS); });
        emu_launch(bg, blk, [&] { attention_bwd_f32(dqkv.data(), dout.data(), qkv.data(), saved.data(), B, T, NH, HS); });
    }
    double tol = bf ? 1e-2 : 1e-5;
    check(tag + " out", out_r, out, tol);
    check(tag + " lse", lse_r, std::vector<float>(saved.begin(), saved.begin() + (size_t)B * NH * T), 1e-6);
    auto cols = [&](auto& v, int k) { std::vector<typename std::decay_t<decltype(v)>::value_type> r; for (size_t row = 0; row < (size_t)B * T; row++) for (int c = 0; c < C; c++) r.push_back(v[row * 3 * C + k * C + c]); return r; };
    check(tag + " dq", cols(dqkv_r, 0), cols(dqkv, 0), tol);
    check(tag + " dk", cols(dqkv_r, 1), cols(dqkv, 1), tol);
    check(tag + " dv", cols(dqkv_r, 2), cols(dqkv, 2), tol);
}

int main(int argc, char** argv) {
    for (int bf = 0; bf < 2; bf++) {
        run(1, 1, 1, 32, bf);
        run(2, 37, 2, 32, bf);
        run(1, 130, 1, 64, bf);
        run(1, 65, 2, 128, bf);
        run(1, 33, 1, 128, bf);
    }
    printf("%d failures\n", fails);
    return fails != 0;
}
