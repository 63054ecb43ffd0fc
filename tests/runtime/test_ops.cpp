// CPU kernels against naive reference code (double accumulation, no absorption, no
// grouping tricks), on odd sizes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstring>
#include <numeric>
#include <random>

#include "backends/cpu/ops.h"
#include "backends/cpu/simd.h"
#include "op_inputs.h"
#include "quantize/float.h"
#include "runtime/error.h"
#include "runtime/weights.h"

using namespace ds3;
using ds3::test::add_weight;
using ds3::test::randn;

namespace {

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
    return m;
}

}  // namespace

TEST_CASE("matmul matches a naive product for F32, BF16 and F16 weights", "[ops]") {
    for (TypeId t : {TypeId::F32, TypeId::BF16, TypeId::F16}) {
        for (int64_t rows : {1, 3, 7}) {
            const int64_t in = 37, out = 19;
            WeightStore s;
            auto wv = randn(static_cast<size_t>(in * out), 3);
            const Weight& w = add_weight(s, "w", t, {in, out}, wv);
            auto x = randn(static_cast<size_t>(rows * in), 4);
            std::vector<float> y(static_cast<size_t>(rows * out));
            cpu::matmul(w, 0, x.data(), rows, y.data(), 2);
            std::vector<double> ref(y.size());
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t o = 0; o < out; ++o) {
                    double acc = 0;
                    for (int64_t i = 0; i < in; ++i) acc += double(wv[size_t(o * in + i)]) * x[size_t(r * in + i)];
                    ref[size_t(r * out + o)] = acc;
                }
            INFO("type " << type_traits(t).name << " rows " << rows);
            CHECK(max_abs_diff(y, ref) < 1e-4);
        }
    }
}

TEST_CASE("matmul addresses each matrix of a 3-D expert stack", "[ops]") {
    const int64_t in = 9, out = 5, n_mat = 3;
    WeightStore s;
    auto wv = randn(size_t(in * out * n_mat), 5);
    const Weight& w = add_weight(s, "w", TypeId::BF16, {in, out, n_mat}, wv);
    auto x = randn(size_t(in), 6);
    std::vector<float> y(static_cast<size_t>(out));
    cpu::matmul(w, 2, x.data(), 1, y.data(), 1);
    std::vector<double> ref(static_cast<size_t>(out));
    for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) ref[size_t(o)] += double(wv[size_t((2 * out + o) * in + i)]) * x[size_t(i)];
    CHECK(max_abs_diff(y, ref) < 1e-5);
}

TEST_CASE("unsupported weight types are refused with the type named", "[ops]") {
    // Every type with a dequantiser runs (quantization issue); IQ2_XXS has none.
    CHECK_FALSE(cpu::weight_type_supported(TypeId::IQ2_XXS));
    float out[256];
    uint8_t blk[66] = {};
    CHECK_THROWS_WITH(cpu::dequant_row(TypeId::IQ2_XXS, blk, out, 256), Catch::Contains("iq2_xxs"));
    WeightStore s;
    const Weight& q = s.add_owned("blk.0.ffn_up.weight", TypeId::IQ2_XXS, {256, 2}, std::vector<uint8_t>(2 * 66));
    std::vector<float> x(256), y(2);
    CHECK_THROWS_WITH(cpu::matmul(q, 0, x.data(), 1, y.data(), 2),
                      Catch::Contains("blk.0.ffn_up.weight: weight type iq2_xxs is not supported yet"));
}

TEST_CASE("rms_norm and swiglu match their definitions", "[ops]") {
    const int64_t rows = 3, cols = 23;
    WeightStore s;
    auto g = randn(size_t(cols), 7);
    const Weight& gw = add_weight(s, "g", TypeId::F32, {cols}, g);
    auto x = randn(size_t(rows * cols), 8, 3.0f);
    std::vector<float> y(x.size());
    cpu::rms_norm(x.data(), gw, 1e-6f, rows, cols, y.data());
    std::vector<double> ref(x.size());
    for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < cols; ++i) ss += double(x[size_t(r * cols + i)]) * x[size_t(r * cols + i)];
        double inv = 1.0 / std::sqrt(ss / cols + 1e-6);
        for (int64_t i = 0; i < cols; ++i) ref[size_t(r * cols + i)] = x[size_t(r * cols + i)] * inv * g[size_t(i)];
    }
    CHECK(max_abs_diff(y, ref) < 1e-5);

    auto a = randn(11, 9), b = randn(11, 10);
    std::vector<float> z(11);
    cpu::swiglu(a.data(), b.data(), 11, z.data());
    std::vector<double> zr(11);
    for (size_t i = 0; i < 11; ++i) zr[i] = a[i] / (1.0 + std::exp(-double(a[i]))) * b[i];
    CHECK(max_abs_diff(z, zr) < 1e-6);
}

TEST_CASE("rope rotates interleaved pairs of each head's rope part as a complex product", "[ops]") {
    const int n_head = 3, head_dim = 14, off = 4, dim = 10;
    const int64_t T = 5;
    auto table = std::make_shared<RopeTable>();
    for (int i = 0; i < dim / 2; ++i) table->inv_freq.push_back(static_cast<float>(std::pow(10000.0, -2.0 * i / dim)));
    table->attn_factor = 0.875f;
    Graph g;
    int x = g.input("x", DType::f32, T, n_head * head_dim);
    int pos = g.input("pos", DType::i32, T, 1);
    int r = g.rope_yarn("r", x, pos, n_head, head_dim, off, dim, table);
    const Node& n = g.node(r);
    auto xv = randn(size_t(T * n_head * head_dim), 11);
    std::vector<int32_t> positions = {0, 1, 7, 300, 65000};
    std::vector<float> y = xv;
    cpu::rope(n, positions.data(), y.data());
    std::vector<double> ref(xv.begin(), xv.end());
    for (int64_t t = 0; t < T; ++t)
        for (int h = 0; h < n_head; ++h)
            for (int i = 0; i < dim / 2; ++i) {
                size_t k = size_t(t * n_head * head_dim + h * head_dim + off + 2 * i);
                std::complex<double> z(xv[k], xv[k + 1]);
                z *= std::polar(double(table->attn_factor), double(positions[size_t(t)]) * table->inv_freq[size_t(i)]);
                ref[k] = z.real();
                ref[k + 1] = z.imag();
            }
    CHECK(max_abs_diff(y, ref) < 1e-4);
}

TEST_CASE("absorbed MLA equals naive attention with materialised per-head K and V", "[ops]") {
    const int H = 3, nope = 10, rope = 6, vh = 7, R = 13;
    const int64_t T1 = 4, T2 = 3, T = T1 + T2, n_ctx = 9;
    const TypeId wt = GENERATE(TypeId::F32, TypeId::BF16);
    WeightStore s;
    auto kbv = randn(size_t(H * R * nope), 21, 0.3f), vbv = randn(size_t(H * vh * R), 22, 0.3f);
    const Weight& kb = add_weight(s, "k_b", wt, {nope, R, H}, kbv);  // [h][j][i]
    const Weight& vb = add_weight(s, "v_b", wt, {R, vh, H}, vbv);    // [h][i][j]
    auto q = randn(size_t(T * H * (nope + rope)), 23), lat = randn(size_t(T * R), 24), kpe = randn(size_t(T * rope), 25);
    const float scale = 0.37f;

    // Two batches through the cache: positions 0..3, then 4..6 attending to all before.
    std::vector<float> cache(size_t(n_ctx * (R + rope)), std::nanf(""));
    std::vector<float> out(size_t(T * H * vh));
    for (auto [t0, tn] : {std::pair<int64_t, int64_t>{0, T1}, {T1, T2}}) {
        Graph g;
        int qi = g.input("q", DType::f32, tn, H * (nope + rope));
        int li = g.input("lat", DType::f32, tn, R);
        int ki = g.input("kpe", DType::f32, tn, rope);
        AttnParams p{H, nope, rope, vh, R, scale, t0};
        int a = g.mla_attn("a", qi, li, ki, kb, vb, p, 0);
        cpu::mla_attn(g.node(a), q.data() + t0 * H * (nope + rope), lat.data() + t0 * R, kpe.data() + t0 * rope,
                      cache.data(), n_ctx, out.data() + t0 * H * vh, 2);
    }

    std::vector<double> ref(out.size());
    for (int64_t t = 0; t < T; ++t)
        for (int h = 0; h < H; ++h) {
            std::vector<double> sc(size_t(t + 1));
            for (int64_t s2 = 0; s2 <= t; ++s2) {
                double acc = 0;
                for (int i = 0; i < nope; ++i) {
                    double k = 0;  // k_nope[s][h][i] = Σ_j W_kb[h][i][j] c[s][j]
                    for (int j = 0; j < R; ++j) k += double(kbv[size_t((h * R + j) * nope + i)]) * lat[size_t(s2 * R + j)];
                    acc += q[size_t(t * H * (nope + rope) + h * (nope + rope) + i)] * k;
                }
                for (int i = 0; i < rope; ++i)
                    acc += double(q[size_t(t * H * (nope + rope) + h * (nope + rope) + nope + i)]) * kpe[size_t(s2 * rope + i)];
                sc[size_t(s2)] = acc * scale;
            }
            double mx = *std::max_element(sc.begin(), sc.end()), sum = 0;
            for (auto& v : sc) sum += (v = std::exp(v - mx));
            for (int i = 0; i < vh; ++i) {
                double o = 0;
                for (int64_t s2 = 0; s2 <= t; ++s2) {
                    double v = 0;  // V[s][h][i] = Σ_j W_vb[h][i][j] c[s][j]
                    for (int j = 0; j < R; ++j) v += double(vbv[size_t((h * vh + i) * R + j)]) * lat[size_t(s2 * R + j)];
                    o += sc[size_t(s2)] / sum * v;
                }
                ref[size_t(t * H * vh + h * vh + i)] = o;
            }
        }
    CHECK(max_abs_diff(out, ref) < 1e-4);
    // The cache holds exactly the latent and k_pe rows, nothing per head.
    for (int64_t t = 0; t < T; ++t) {
        CHECK(std::memcmp(&cache[size_t(t * (R + rope))], &lat[size_t(t * R)], size_t(R) * 4) == 0);
        CHECK(std::memcmp(&cache[size_t(t * (R + rope) + R)], &kpe[size_t(t * rope)], size_t(rope) * 4) == 0);
    }
}

TEST_CASE("mla_attn refuses positions beyond the cache", "[ops]") {
    WeightStore s;
    auto kbv = randn(2 * 3 * 2, 1), vbv = randn(3 * 2 * 2, 2);
    const Weight& kb = add_weight(s, "k_b", TypeId::F32, {2, 3, 2}, kbv);
    const Weight& vb = add_weight(s, "v_b", TypeId::F32, {3, 2, 2}, vbv);
    Graph g;
    int qi = g.input("q", DType::f32, 2, 2 * 4);
    int li = g.input("lat", DType::f32, 2, 3);
    int ki = g.input("kpe", DType::f32, 2, 2);
    AttnParams p{2, 2, 2, 2, 3, 1.0f, 4};
    int a = g.mla_attn("a", qi, li, ki, kb, vb, p, 0);
    std::vector<float> q(16), lat(6), kpe(4), cache(5 * 5), out(8);
    CHECK_THROWS_WITH(cpu::mla_attn(g.node(a), q.data(), lat.data(), kpe.data(), cache.data(), 5, out.data(), 1),
                      Catch::Contains("exceed the context of 5"));
}

namespace {

// Naive routing straight from the reference implementations' description.
void naive_route(const RouteParams& p, const std::vector<float>& logits, const std::vector<float>& bias,
                 std::vector<int>& ids, std::vector<double>& w) {
    const int E = p.n_expert, per = E / p.n_group;
    std::vector<double> score(static_cast<size_t>(E)), choice(static_cast<size_t>(E));
    double mx = *std::max_element(logits.begin(), logits.end()), z = 0;
    for (int e = 0; e < E; ++e) z += std::exp(logits[size_t(e)] - mx);
    for (int e = 0; e < E; ++e) {
        score[size_t(e)] = p.scoring == ScoringFunc::sigmoid ? 1.0 / (1.0 + std::exp(-double(logits[size_t(e)])))
                                                             : std::exp(logits[size_t(e)] - mx) / z;
        choice[size_t(e)] = score[size_t(e)] + bias[size_t(e)];
    }
    std::vector<std::pair<double, int>> groups;
    for (int g = 0; g < p.n_group; ++g) {
        std::vector<double> c(choice.begin() + g * per, choice.begin() + (g + 1) * per);
        std::sort(c.rbegin(), c.rend());
        double gs = p.method == TopkMethod::noaux_tc ? c[0] + c[1] : c[0];
        groups.push_back({gs, g});
    }
    std::stable_sort(groups.begin(), groups.end(), [](auto& a, auto& b) { return a.first > b.first; });
    std::vector<std::pair<double, int>> cand;
    for (int gi = 0; gi < (p.method == TopkMethod::greedy ? p.n_group : p.topk_group); ++gi)
        for (int e = groups[size_t(gi)].second * per; e < (groups[size_t(gi)].second + 1) * per; ++e)
            cand.push_back({choice[size_t(e)], e});
    std::sort(cand.begin(), cand.end(), [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    ids.clear();
    w.clear();
    double sum = 0;
    for (int j = 0; j < p.n_used; ++j) {
        ids.push_back(cand[size_t(j)].second);
        w.push_back(score[size_t(cand[size_t(j)].second)]);
        sum += w.back();
    }
    for (auto& x : w) {
        if (p.norm_topk) x /= sum;
        if (p.scoring == ScoringFunc::sigmoid || !p.norm_topk) x *= p.scale;
    }
}

}  // namespace

TEST_CASE("moe_route matches naive routing for V3 and V2 methods", "[ops]") {
    struct Case { ScoringFunc sf; TopkMethod m; int n_group, topk_group; bool norm; };
    const Case cases[] = {
        {ScoringFunc::sigmoid, TopkMethod::noaux_tc, 5, 2, true},
        {ScoringFunc::sigmoid, TopkMethod::noaux_tc, 1, 1, true},
        {ScoringFunc::softmax, TopkMethod::greedy, 1, 1, false},
        {ScoringFunc::softmax, TopkMethod::group_limited_greedy, 5, 3, false},
        {ScoringFunc::softmax, TopkMethod::greedy, 1, 1, true},
    };
    const int64_t T = 6, D = 17;
    const int E = 15, k = 4;
    for (const Case& c : cases) {
        WeightStore s;
        auto gw = randn(size_t(D * E), 31);
        auto bv = randn(size_t(E), 32, 0.2f);
        const Weight& gate = add_weight(s, "gate", TypeId::F32, {D, E}, gw);
        const Weight& bias = add_weight(s, "bias", TypeId::F32, {E}, bv);
        RouteParams p{E, k, c.n_group, c.topk_group, c.sf, c.m, c.norm, 2.5f};
        const bool use_bias = c.sf == ScoringFunc::sigmoid;
        Graph g;
        int x = g.input("x", DType::f32, T, D);
        int r = g.moe_route("r", x, gate, use_bias ? &bias : nullptr, p);
        auto xv = randn(size_t(T * D), 33);
        std::vector<float> out(size_t(T * 2 * k));
        cpu::moe_route(g.node(r), xv.data(), out.data(), 1);
        for (int64_t t = 0; t < T; ++t) {
            std::vector<float> lg(static_cast<size_t>(E));
            for (int e = 0; e < E; ++e) lg[size_t(e)] = cpu::dot_f32(gw.data() + e * D, xv.data() + t * D, D);
            std::vector<float> b(size_t(E), 0.0f);
            if (use_bias) b = bv;
            std::vector<int> ids;
            std::vector<double> w;
            naive_route(p, lg, b, ids, w);
            for (int j = 0; j < k; ++j) {
                INFO("case method " << int(c.m) << " token " << t << " slot " << j);
                CHECK(int(out[size_t(t * 2 * k + k + j)]) == ids[size_t(j)]);
                CHECK(out[size_t(t * 2 * k + j)] == Approx(w[size_t(j)]).epsilon(1e-5));
            }
        }
    }
}

TEST_CASE("moe_ffn over an expert subset gives that subset's share of the weighted sum", "[ops]") {
    const int64_t T = 5, D = 13, F = 7;
    const int E = 6, k = 2;
    WeightStore s;
    auto gv = randn(size_t(D * F * E), 41), uv = randn(size_t(D * F * E), 42), dv = randn(size_t(F * D * E), 43);
    const Weight& gate = add_weight(s, "g", TypeId::BF16, {D, F, E}, gv);
    const Weight& up = add_weight(s, "u", TypeId::BF16, {D, F, E}, uv);
    const Weight& down = add_weight(s, "d", TypeId::BF16, {F, D, E}, dv);
    RouteParams p{E, k, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
    auto xv = randn(size_t(T * D), 44);
    std::vector<float> route = {0.5f, 0.25f, 1, 4, 0.1f, 0.2f, 5, 0, 1.0f, 0.5f, 2, 3, 0.3f, 0.3f, 4, 1, 0.7f, 0.1f, 0, 5};
    Graph g;
    int x = g.input("x", DType::f32, T, D);
    int r = g.input("r", DType::f32, T, 2 * k);
    int m = g.moe_ffn("m", x, r, gate, up, down, p);
    Node n = g.node(m);
    const std::vector<uint8_t> subset = {1, 0, 1, 1, 0, 0};
    n.experts = subset;
    std::vector<float> out(size_t(T * D));
    cpu::moe_ffn(n, xv.data(), route.data(), out.data(), 2);
    std::vector<double> ref(out.size(), 0.0);
    for (int64_t t = 0; t < T; ++t)
        for (int j = 0; j < k; ++j) {
            const int e = int(route[size_t(t * 2 * k + k + j)]);
            if (!subset[size_t(e)]) continue;
            std::vector<double> h(static_cast<size_t>(F));
            for (int64_t f = 0; f < F; ++f) {
                double a = 0, b = 0;
                for (int64_t i = 0; i < D; ++i) {
                    a += double(gv[size_t((e * F + f) * D + i)]) * xv[size_t(t * D + i)];
                    b += double(uv[size_t((e * F + f) * D + i)]) * xv[size_t(t * D + i)];
                }
                h[size_t(f)] = a / (1 + std::exp(-a)) * b;
            }
            for (int64_t o = 0; o < D; ++o) {
                double acc = 0;
                for (int64_t f = 0; f < F; ++f) acc += double(dv[size_t((e * D + o) * F + f)]) * h[size_t(f)];
                ref[size_t(t * D + o)] += route[size_t(t * 2 * k + j)] * acc;
            }
        }
    CHECK(max_abs_diff(out, ref) < 1e-4);
}

TEST_CASE("graph builders reject shapes that do not fit", "[graph]") {
    WeightStore s;
    std::vector<float> v(12 * 5, 0.5f), gv(7, 1.0f);
    const Weight& w = add_weight(s, "w", TypeId::F32, {12, 5}, v);
    const Weight& gain = add_weight(s, "gain", TypeId::F32, {7}, gv);
    Graph g;
    int x = g.input("x", DType::f32, 3, 11);
    CHECK_THROWS_WITH(g.mul_mat("mm", x, w), Catch::Contains("mm: w is {12, 5}, expected {11, *}"));
    CHECK_THROWS_WITH(g.rms_norm("n", x, gain, 1e-6f), Catch::Contains("expected 11"));
    CHECK_THROWS_WITH(g.view("v", x, 8, 4), Catch::Contains("outside [0, 11)"));
    CHECK_THROWS_WITH(g.input("x", DType::f32, 1, 1), Catch::Contains("already exists"));
    int y = g.input("y", DType::f32, 3, 12);
    CHECK_THROWS_WITH(g.add("a", x, y), Catch::Contains("differ in shape"));
    CHECK_THROWS_WITH(g.get_rows("e", w, x), Catch::Contains("i32"));
    RouteParams bad{5, 3, 2, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};  // 2 groups do not divide 5
    int z = g.input("z", DType::f32, 3, 12);
    CHECK_THROWS_WITH(g.moe_route("r", z, w, nullptr, bad), Catch::Contains("inconsistent routing"));
}

TEST_CASE("the run-time-selected row kernels agree with the scalar reference", "[ops][simd]") {
    const cpu::RowKernels& best = cpu::best_kernels();
    const cpu::RowKernels& ref = cpu::scalar_kernels();
    INFO("kernels: " << best.name);
    for (int64_t n : {1, 7, 8, 15, 16, 17, 33, 129, 1000}) {
        auto a = randn(size_t(n), uint32_t(100 + n)), b = randn(size_t(n), uint32_t(200 + n));
        std::vector<uint8_t> bf(size_t(n) * 2), hf(size_t(n) * 2);
        for (int64_t i = 0; i < n; ++i) {
            uint16_t h = f32_to_bf16(a[size_t(i)]);
            std::memcpy(&bf[size_t(2 * i)], &h, 2);
            h = f32_to_f16(a[size_t(i)]);
            std::memcpy(&hf[size_t(2 * i)], &h, 2);
        }
        const float tol = 1e-5f * float(n);
        CHECK(std::abs(best.dot_f32(a.data(), b.data(), n) - ref.dot_f32(a.data(), b.data(), n)) <= tol);
        CHECK(std::abs(best.dot_bf16(bf.data(), b.data(), n) - ref.dot_bf16(bf.data(), b.data(), n)) <= tol);
        CHECK(std::abs(best.dot_f16(hf.data(), b.data(), n) - ref.dot_f16(hf.data(), b.data(), n)) <= tol);
        auto c = randn(size_t(4 * n), uint32_t(300 + n)), d = randn(size_t(n), uint32_t(400 + n));
        const float* w4[4] = {c.data(), c.data() + n, c.data() + 2 * n, c.data() + 3 * n};
        float o1[8], o2[8];
        best.dot_4x2_f32(w4, b.data(), d.data(), n, o1);
        ref.dot_4x2_f32(w4, b.data(), d.data(), n, o2);
        for (int i = 0; i < 8; ++i) CHECK(std::abs(o1[i] - o2[i]) <= tol);
        std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
        best.bf16_to_f32(bf.data(), x.data(), n);
        ref.bf16_to_f32(bf.data(), y.data(), n);
        CHECK(x == y);
        best.f16_to_f32(hf.data(), x.data(), n);
        ref.f16_to_f32(hf.data(), y.data(), n);
        CHECK(x == y);
    }
}
