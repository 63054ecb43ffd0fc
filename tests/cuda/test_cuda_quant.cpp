// Quantized weights on the CUDA backend: every block format the kernels decode, in every
// op that reads matrices (get_rows, mul_mat and logits on the GEMV and tiled paths,
// shared_ffn, moe_ffn on the decode and grouped paths, mla_attn's per-head products).
//
// Two references, both on the CPU backend:
//  - the same graph with F32 twins of the weights, holding exactly the dequantised values
//    (quantize/formats_ref.cpp's to_float). The GPU decodes blocks to f32 in registers and
//    multiplies in f32, so only the summation order differs: normalised error ≤ 1e-5
//    (get_rows: 1e-6, the last bit of a fused multiply-add in the decode).
//  - the same graph with the quantized weights, where the CPU quantises the activations to
//    Q8_0 / Q8_K (ggml's pairing) before its integer dot products. An 8-bit block of n
//    values has a step of amax/127 and a rounding error of step/√12 per element; normal
//    activations have amax ≈ 3σ in a block, so the product's normalised error is about
//    3/(127·√12) ≈ 0.007 per matmul. Two chained matmuls (FFNs) with heavier-tailed
//    SwiGLU activations stay well under the 0.05 used here. FP8 meets f32 activations on
//    the CPU, so it is held to the tight limit there too.
// The decode GEMVs (≤ 8 rows) of Q8_0, Q4_0, Q4_K, Q5_K and Q6_K round the activations to
// 8-bit blocks of 32 as well (integer dot products): there the F32 twin is held to the
// loose limit, and activations that are already integers with a block maximum of 127
// (which the rounding keeps exactly) to the tight one.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cuda/kernels.h"
#include "cuda_test.h"
#include "op_inputs.h"
#include "quantize/formats.h"
#include "runtime/error.h"
#include "runtime/kv_cache.h"
#include "runtime/sched/sched.h"
#include "runtime/weights.h"

using namespace ds3;
using namespace ds3::test;

namespace {

const char* tname(TypeId t) { return type_traits(t).name.data(); }

const TypeId kQuantTypes[] = {TypeId::Q8_0, TypeId::Q4_0,   TypeId::Q2_K, TypeId::Q3_K,         TypeId::Q4_K,
                              TypeId::Q5_K, TypeId::Q6_K,   TypeId::IQ4_XS, TypeId::FP8_E4M3_B128};

int64_t block_of(TypeId t) { return type_traits(t).block_size; }

// A quantized weight and its F32 twin holding the dequantised values.
struct QWeight {
    const Weight* q = nullptr;
    const Weight* f = nullptr;
};
QWeight add_qweight(WeightStore& s, const std::string& name, TypeId t, std::vector<int64_t> ne, uint32_t seed,
                    float scale = 1.0f) {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    auto v = randn(size_t(n), seed, scale);
    const TypeTraits& tr = type_traits(t);
    const int64_t row = ne[0], rows = n / row, rb = row / tr.block_size * tr.type_size;
    std::vector<uint8_t> bytes(size_t(rows * rb));
    for (int64_t r = 0; r < rows; ++r) {
        quantize_row(t, v.data() + r * row, bytes.data() + r * rb, row);
        dequantize_row(t, bytes.data() + r * rb, v.data() + r * row, row);
    }
    QWeight w;
    w.q = &s.add_owned(name, t, ne, std::move(bytes));
    w.f = &add_weight(s, name + ".f32", TypeId::F32, ne, v);
    return w;
}

void poison(Backend& b, const Graph& g) {
    std::vector<std::unique_ptr<Buffer>> held;
    for (const Node& n : g.nodes())
        for (int i = 0; i < 2; ++i) {
            auto buf = b.alloc(n.nbytes());
            std::vector<float> nan(n.nbytes() / 4 + 1, std::numeric_limits<float>::quiet_NaN());
            b.upload(*buf, 0, nan.data(), n.nbytes());
            held.push_back(std::move(buf));
        }
    b.synchronize();
}

std::vector<float> run_on(Backend& b, const Graph& g, const std::vector<GraphInput>& ins, int out,
                          KvCache* cache = nullptr) {
    Scheduler s({&b});
    Graph placed = s.place(g);
    for (const Node& n : placed.nodes()) REQUIRE(n.backend == 0);
    poison(b, placed);
    const int fetch[] = {out};
    return s.run(placed, ins, cache, fetch).take(out);
}

// Builds the graph twice (quantized weights, then their F32 twins) with `build`, which
// returns the output node; checks the GPU against both CPU references.
// Types whose decode GEMVs take the integer path (activations rounded to 8 bits).
// The routed experts' gate, up and down stacks (E matrices each) and a shared expert's
// three matrices, all of type t, seeds seed .. seed + 5.
struct FfnWeights {
    QWeight g, u, d, sg, su, sd;
};
FfnWeights add_ffn_weights(WeightStore& s, TypeId t, int64_t D, int64_t F, int64_t E, uint32_t seed) {
    FfnWeights w;
    w.g = add_qweight(s, "g", t, {D, F, E}, seed, 0.3f);
    w.u = add_qweight(s, "u", t, {D, F, E}, seed + 1, 0.3f);
    w.d = add_qweight(s, "d", t, {F, D, E}, seed + 2, 0.3f);
    w.sg = add_qweight(s, "sg", t, {D, F}, seed + 3, 0.3f);
    w.su = add_qweight(s, "su", t, {D, F}, seed + 4, 0.3f);
    w.sd = add_qweight(s, "sd", t, {F, D}, seed + 5, 0.3f);
    return w;
}

bool int_path(TypeId t) {
    return t == TypeId::Q8_0 || t == TypeId::Q4_0 || t == TypeId::Q4_K || t == TypeId::Q5_K || t == TypeId::Q6_K;
}

// rows × cols integers in [-127, 127] with one ±127 in every 32-value block: the 8-bit
// activation blocks hold them exactly (scale 1).
std::vector<float> int_rows(int64_t rows, int64_t cols, uint32_t seed) {
    auto v = randn(size_t(rows * cols), seed, 50.0f);
    for (size_t i = 0; i < v.size(); ++i) {
        v[i] = std::clamp(std::round(v[i]), -127.0f, 127.0f);
        if (i % 32 == (i / 32 * 7) % 32) v[i] = (i / 32) % 2 ? 127.0f : -127.0f;
    }
    return v;
}

// A route for T tokens of k slots each among E experts ([T][2k]: weights, then ids).
std::vector<float> test_route(int64_t T, int k, int E) {
    std::vector<float> route(size_t(T * 2 * k));
    for (int64_t i = 0; i < T; ++i)
        for (int j = 0; j < k; ++j) {
            route[size_t(i * 2 * k + j)] = 0.4f + 0.3f * float(j);
            route[size_t(i * 2 * k + k + j)] = float((i * 2 + j * 3) % E);
        }
    return route;
}

// `rounds`: the GPU path rounds activations to 8 bits too, so the F32 twin gets `loose`.
template <typename Build>
void check_op(Backend& gpu, TypeId t, const std::vector<GraphInput>& ins, Build build, double loose,
              double tight = 1e-5, bool rounds = false) {
    Graph gq, gf;
    const int oq = build(gq, true), of = build(gf, false);
    REQUIRE(gpu.supports(gq.node(oq)));
    auto cpu = create_backend("cpu", {2});
    const auto got = run_on(gpu, gq, ins, oq);
    const auto ref = run_on(*cpu, gf, ins, of);
    const auto cpu_q = run_on(*cpu, gq, ins, oq);
    REQUIRE(got.size() == ref.size());
    CHECK(all_finite(got));
    CHECK(nmse_root(got, ref) <= (rounds ? loose : tight));
    CHECK(nmse_root(got, cpu_q) <= (t == TypeId::FP8_E4M3_B128 ? std::max(tight, 1e-5) : loose));
}

// check_op on x [rows, in] times w (y = mul_mat).
void check_mul_mat(Backend& gpu, TypeId t, const QWeight& w, int64_t rows, int64_t in, const std::vector<float>& x,
                   double loose, double tight = 1e-5, bool rounds = false) {
    check_op(gpu, t, {{0, x.data()}}, [&](Graph& g, bool q) {
        int xi = g.input("x", DType::f32, rows, in);
        return g.mul_mat("y", xi, q ? *w.q : *w.f);
    }, loose, tight, rounds);
}

}  // namespace

TEST_CASE("cuda quant: the device decoders, run on the host, equal the CPU references", "[cuda][quant]") {
    // No GPU needed: quant.cuh is host and device code, so CI checks the decoders too.
    const std::pair<TypeId, cuda::WType> types[] = {
        {TypeId::Q8_0, cuda::WType::q8_0}, {TypeId::Q4_0, cuda::WType::q4_0},     {TypeId::Q2_K, cuda::WType::q2_K},
        {TypeId::Q3_K, cuda::WType::q3_K}, {TypeId::Q4_K, cuda::WType::q4_K},     {TypeId::Q5_K, cuda::WType::q5_K},
        {TypeId::Q6_K, cuda::WType::q6_K}, {TypeId::IQ4_XS, cuda::WType::iq4_xs}, {TypeId::FP8_E4M3_B128, cuda::WType::fp8_b128}};
    for (auto [t, wt] : types) {
        const TypeTraits& tr = type_traits(t);
        REQUIRE(cuda::wtype_block(wt) == int(tr.block_size));
        REQUIRE(cuda::wtype_block_bytes(wt) == int(tr.type_size));
        const int64_t n = 5 * tr.block_size;
        for (float scale : {1.0f, 1e-3f, 300.0f}) {
            auto v = randn(size_t(n), 40, scale);
            v[3] = 0.0f;
            std::vector<uint8_t> bytes(size_t(n / tr.block_size * tr.type_size));
            std::vector<float> ref(static_cast<size_t>(n));
            quantize_row(t, v.data(), bytes.data(), n);
            dequantize_row(t, bytes.data(), ref.data(), n);
            int bad = 0;
            for (int64_t blk = 0; blk < n / tr.block_size; ++blk)
                for (int c = 0; c < int(tr.block_size / 16); ++c) {
                    float o[16];
                    REQUIRE(cuda::decode_chunk_host(wt, bytes.data() + blk * tr.type_size, c, o));
                    for (int i = 0; i < 16; ++i) bad += o[i] != ref[size_t(blk * tr.block_size + 16 * c + i)];
                }
            INFO(tname(t) << " scale " << scale);
            CHECK(bad == 0);
        }
    }
    // Every e4m3 byte, NaN included, through a block with scale 1.
    std::vector<uint8_t> blk(132, 0);
    const float one = 1.0f;
    std::memcpy(blk.data(), &one, 4);
    for (int b = 0; b < 256; ++b) {
        blk[4 + 16 * (b % 8) + 3] = uint8_t(b);
        float o[16], ref[128];
        cuda::decode_chunk_host(cuda::WType::fp8_b128, blk.data(), b % 8, o);
        dequantize_row(TypeId::FP8_E4M3_B128, blk.data(), ref, 128);
        INFO("e4m3 byte " << b);
        CHECK((o[3] == ref[16 * (b % 8) + 3] || (std::isnan(o[3]) && std::isnan(ref[16 * (b % 8) + 3]))));
    }
    float o[16];
    CHECK_FALSE(cuda::decode_chunk_host(cuda::WType::bf16, blk.data(), 0, o));
    CHECK_FALSE(cuda::decode_chunk_host(cuda::WType::q6_K_g, blk.data(), 0, o));  // row-addressed
}

TEST_CASE("cuda quant: the layouts regrouped on upload (q4_K_g, q5_K_g, q6_K_g) decode to the same values",
          "[cuda][quant]") {
    // No GPU needed: the regrouping and its decoders are host and device code.
    struct Case {
        TypeId t;
        cuda::WType plain, g;
        std::vector<int64_t> ks;
    };
    const Case cases[] = {{TypeId::Q4_K, cuda::WType::q4_K, cuda::WType::q4_K_g, {256, 768, 7168}},
                          {TypeId::Q5_K, cuda::WType::q5_K, cuda::WType::q5_K_g, {256, 768, 7168}},
                          {TypeId::Q6_K, cuda::WType::q6_K, cuda::WType::q6_K_g, {512, 1536, 7168}}};
    for (const Case& c : cases) {
        const TypeTraits& tr = type_traits(c.t);
        REQUIRE(cuda::wtype_block(c.g) == 256);
        REQUIRE(cuda::wtype_block_bytes(c.g) == int(tr.type_size));
        for (int64_t K : c.ks) {
            REQUIRE(cuda::gpu_layout(c.plain, K) == c.g);
            const int64_t rows = 3, rb = K / 256 * int64_t(tr.type_size);
            for (float scale : {1.0f, 1e-3f, 300.0f}) {
                auto v = randn(size_t(rows * K), 41, scale);
                std::vector<uint8_t> bytes(size_t(rows * rb)), grouped(bytes.size(), 0xAB);
                std::vector<float> ref(v.size()), got(v.size(), -1.0f);
                for (int64_t r = 0; r < rows; ++r) {
                    quantize_row(c.t, v.data() + r * K, bytes.data() + r * rb, K);
                    dequantize_row(c.t, bytes.data() + r * rb, ref.data() + r * K, K);
                }
                cuda::regroup_host(c.g, bytes.data(), grouped.data(), rows * rb / cuda::regroup_unit(c.g));
                CHECK(grouped != bytes);
                for (int64_t r = 0; r < rows; ++r)
                    REQUIRE(cuda::decode_row_host(c.g, grouped.data() + r * rb, K, got.data() + r * K));
                INFO(tname(c.t) << " regrouped, K " << K << " scale " << scale);
                CHECK(got == ref);
                // The plain layout through the same row decoder, for comparison.
                REQUIRE(cuda::decode_row_host(c.plain, bytes.data(), K, got.data()));
                CHECK(std::equal(got.begin(), got.begin() + K, ref.begin()));
            }
        }
    }
    CHECK(cuda::gpu_layout(cuda::WType::q6_K, 768) == cuda::WType::q6_K);  // odd block count: kept plain
    CHECK(cuda::gpu_layout(cuda::WType::q8_0, 4096) == cuda::WType::q8_0);
    CHECK(cuda::regroup_unit(cuda::WType::q8_0) == 0);
    std::vector<uint8_t> row(210 * 3);
    std::vector<float> out(768);
    CHECK(cuda::q6k_groupable(512));
    CHECK_FALSE(cuda::q6k_groupable(768));  // an odd number of blocks: pairs would straddle rows
    CHECK_FALSE(cuda::q6k_groupable(0));
    CHECK_FALSE(cuda::decode_row_host(cuda::WType::q6_K_g, row.data(), 768, out.data()));
    CHECK_FALSE(cuda::decode_row_host(cuda::WType::f32, row.data(), 16, out.data()));
}

// Row n of an interleaved matrix (rows of K values, ts bytes a block) at `base` (32-byte
// aligned), as the kernels name it: its group's start plus its index in the group.
const uint8_t* irow(const uint8_t* base, int64_t n, int64_t K, int64_t ts) {
    return base + (n / 32) * 32 * (K / 256 * ts) + n % 32;
}

// The interleaved layouts and the plain block types they come from.
const std::pair<TypeId, cuda::WType> kInterleaved[] = {
    {TypeId::Q4_K, cuda::WType::q4_K_i}, {TypeId::Q5_K, cuda::WType::q5_K_i}, {TypeId::Q6_K, cuda::WType::q6_K_i}};
cuda::WType plain_of(TypeId t) {
    return t == TypeId::Q4_K ? cuda::WType::q4_K : t == TypeId::Q5_K ? cuda::WType::q5_K : cuda::WType::q6_K;
}

TEST_CASE("cuda quant: the interleaved layouts (q4_K_i q5_K_i q6_K_i) decode and dot as the plain ones",
          "[cuda][quant]") {
    // No GPU needed: the interleaving, its row decoder and its block dot are host and device code.
    for (auto [tq, wi] : kInterleaved)
    for (int64_t K : {256, 768, 7168})
        for (int64_t N : {32, 96}) {
            const TypeTraits& tr = type_traits(tq);
            const int64_t ts = int64_t(tr.type_size), rb = K / 256 * ts;
            REQUIRE(cuda::regroup_unit(wi, K) == 32 * rb);
            REQUIRE(cuda::wtype_block_bytes(wi) == int(ts));
            for (float scale : {1.0f, 1e-3f, 300.0f}) {
                auto v = randn(size_t(N * K), 56, scale);
                std::vector<uint8_t> bytes(size_t(N * rb)), store(bytes.size() + 32, 0xAB);
                uint8_t* grouped = store.data() + (32 - reinterpret_cast<uintptr_t>(store.data()) % 32) % 32;
                std::vector<float> ref(v.size()), got(v.size(), -1.0f);
                for (int64_t r = 0; r < N; ++r) {
                    quantize_row(tq, v.data() + r * K, bytes.data() + r * rb, K);
                    dequantize_row(tq, bytes.data() + r * rb, ref.data() + r * K, K);
                }
                cuda::regroup_host(wi, bytes.data(), grouped, N / 32, K);
                CHECK(!std::equal(bytes.begin(), bytes.end(), grouped));
                for (int64_t r = 0; r < N; ++r)
                    REQUIRE(cuda::decode_row_host(wi, irow(grouped, r, K, ts), K, got.data() + r * K));
                INFO(tname(tq) << " K " << K << " N " << N << " scale " << scale);
                CHECK(got == ref);
                // The integer dot: the plain layout's sums up to order; exact on integer activations.
                auto x = randn(size_t(K), 57);
                auto xi = int_rows(1, K, 58);
                std::vector<float> a, b, ai, exact_i;
                for (int64_t r = 0; r < N; ++r) {
                    float fa = 0.0f, fb = 0.0f, fi = 0.0f;
                    REQUIRE(cuda::dot_q8_host(wi, irow(grouped, r, K, ts), K, x.data(), &fa));
                    REQUIRE(cuda::dot_q8_host(plain_of(tq), bytes.data() + r * rb, K, x.data(), &fb));
                    REQUIRE(cuda::dot_q8_host(wi, irow(grouped, r, K, ts), K, xi.data(), &fi));
                    double e = 0.0;
                    for (int64_t i = 0; i < K; ++i) e += double(ref[size_t(r * K + i)]) * xi[size_t(i)];
                    a.push_back(fa), b.push_back(fb), ai.push_back(fi), exact_i.push_back(float(e));
                }
                CHECK(nmse_root(a, b) <= 1e-5);
                CHECK(nmse_root(ai, exact_i) <= 1e-6);
            }
        }
    // Which matrices get it: matrices of ≥ 4096 rows (DS3_CUDA_Q6I_ROWS) in whole groups of 32.
    {
        EnvGuard env("DS3_CUDA_Q6I_ROWS", "");
        CHECK(cuda::interleave_rows(cuda::WType::q6_K) == 4096);
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 7168, 129280) == cuda::WType::q6_K_i);
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 768, 4096) == cuda::WType::q6_K_i);  // an odd block count is fine
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 7168, 4064) == cuda::WType::q6_K_g);  // too few rows
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 7168, 4100) == cuda::WType::q6_K_g);  // not whole groups
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 2048, 7168, 8) == cuda::WType::q6_K_i);  // a stack (experts' down)
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 7168, 2048, 256) == cuda::WType::q6_K_i);  // their gate, up
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 7168, 256, 8) == cuda::WType::q6_K_g);
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 768, 4100) == cuda::WType::q6_K);
        CHECK(cuda::gpu_layout(cuda::WType::q4_K, 7168, 4064) == cuda::WType::q4_K_g);
    }
    {
        EnvGuard env("DS3_CUDA_Q45I_ROWS", "");
        CHECK(cuda::interleave_rows(cuda::WType::q4_K) == 4096);
        CHECK(cuda::gpu_layout(cuda::WType::q4_K, 7168, 2048, 256) == cuda::WType::q4_K_i);  // V3's experts' gate, up
        CHECK(cuda::gpu_layout(cuda::WType::q5_K, 18432, 7168) == cuda::WType::q5_K_i);  // a dense down
        CHECK(cuda::gpu_layout(cuda::WType::q5_K, 7168, 2048) == cuda::WType::q5_K_g);  // a shared expert's gate
        CHECK(cuda::gpu_layout(cuda::WType::q4_K, 7168, 4100) == cuda::WType::q4_K_g);
    }
    {
        EnvGuard env("DS3_CUDA_Q45I_ROWS", "0");
        CHECK(cuda::gpu_layout(cuda::WType::q4_K, 7168, 2048, 256) == cuda::WType::q4_K_g);
    }
    {
        EnvGuard env("DS3_CUDA_Q6I_ROWS", "0");
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 7168, 129280) == cuda::WType::q6_K_g);
    }
    {
        EnvGuard env("DS3_CUDA_Q6I_ROWS", "32");
        CHECK(cuda::gpu_layout(cuda::WType::q6_K, 256, 32) == cuda::WType::q6_K_i);
    }
    float o[16];
    std::vector<uint8_t> blk(210 * 32 + 32);
    for (auto [tq, wi] : kInterleaved) {
        CHECK(cuda::regroup_unit(wi, 0) == 0);
        CHECK(cuda::regroup_unit(wi, 300) == 0);
        CHECK_FALSE(cuda::decode_chunk_host(wi, blk.data(), 0, o));  // row-addressed
        CHECK(cuda::wtype_interleaved(wi));
    }
    CHECK_FALSE(cuda::wtype_interleaved(cuda::WType::q6_K_g));
}

TEST_CASE("cuda quant: the integer block dots, run on the host, match the exact and CPU dots", "[cuda][quant]") {
    // No GPU needed: dot_q8.cuh is host and device code (dp4a emulated on the host).
    const std::pair<TypeId, cuda::WType> types[] = {{TypeId::Q8_0, cuda::WType::q8_0},
                                                    {TypeId::Q4_0, cuda::WType::q4_0},
                                                    {TypeId::Q4_K, cuda::WType::q4_K},
                                                    {TypeId::Q5_K, cuda::WType::q5_K},
                                                    {TypeId::Q6_K, cuda::WType::q6_K}};
    for (auto [t, wt] : types) {
        const TypeTraits& tr = type_traits(t);
        for (int64_t kb : {1, 3, 7}) {
            const int64_t K = kb * tr.block_size, rows = 24, rb = kb * int64_t(tr.type_size);
            for (float scale : {1.0f, 1e-3f, 300.0f}) {
                auto wv = randn(size_t(rows * K), 50, scale);
                std::vector<uint8_t> w(size_t(rows * rb));
                std::vector<float> deq(wv.size());
                for (int64_t r = 0; r < rows; ++r) {
                    quantize_row(t, wv.data() + r * K, w.data() + r * rb, K);
                    dequantize_row(t, w.data() + r * rb, deq.data() + r * K, K);
                }
                auto x = randn(size_t(K), 51);
                auto xi = int_rows(1, K, 52);
                std::vector<float> got, exact, cpu, got_i, exact_i;
                for (int64_t r = 0; r < rows; ++r) {
                    const uint8_t* row = w.data() + r * rb;
                    float g = 0.0f, gi = 0.0f, gs = 0.0f, gf = 0.0f;
                    REQUIRE(cuda::dot_q8_host(wt, row, K, x.data(), &g));
                    REQUIRE(cuda::dot_q8_host(wt, row, K, xi.data(), &gi));
                    // Reading 2 or 4 rows per lane group splits the row differently: the same sum, up to order.
                    REQUIRE(cuda::dot_q8_host(wt, row, K, x.data(), &gs, 2));
                    REQUIRE(cuda::dot_q8_host(wt, row, K, x.data(), &gf, 4));
                    CHECK(std::fabs(gs - g) <= 1e-5f * (1.0f + std::fabs(g)));
                    CHECK(std::fabs(gf - g) <= 1e-5f * (1.0f + std::fabs(g)));
                    double e = 0.0, ei = 0.0;
                    for (int64_t i = 0; i < K; ++i) {
                        e += double(deq[size_t(r * K + i)]) * x[size_t(i)];
                        ei += double(deq[size_t(r * K + i)]) * xi[size_t(i)];
                    }
                    got.push_back(g), exact.push_back(float(e)), got_i.push_back(gi), exact_i.push_back(float(ei));
                    cpu.push_back(vec_dot_f32(t, K, row, x.data()));
                }
                INFO(tname(t) << " K " << K << " scale " << scale);
                // 8-bit blocks of 32: ≤ 0.0074 normalised error on these activations (the
                // CPU's Q8_K/Q8_0 rounding is of the same size). With s = Σx instead of
                // d·Σq in the min terms, Q4_K/Q5_K land at 0.010–0.013: above the limit.
                CHECK(nmse_root(got, exact) <= 0.009);
                CHECK(nmse_root(got, cpu) <= 0.015);
                CHECK(nmse_root(got_i, exact_i) <= 1e-6);  // exactly representable activations
            }
        }
    }
    // The regrouped layouts: the plain layout's sums up to order, the same bounds.
    const std::pair<TypeId, cuda::WType> regrouped[] = {
        {TypeId::Q4_K, cuda::WType::q4_K_g}, {TypeId::Q5_K, cuda::WType::q5_K_g}, {TypeId::Q6_K, cuda::WType::q6_K_g}};
    for (auto [t, g] : regrouped) {
        const TypeTraits& tr = type_traits(t);
        const cuda::WType plain = t == TypeId::Q4_K   ? cuda::WType::q4_K
                                  : t == TypeId::Q5_K ? cuda::WType::q5_K
                                                      : cuda::WType::q6_K;
        for (int64_t kb : {2, 6}) {
            const int64_t K = kb * 256, rows = 24, rb = kb * int64_t(tr.type_size);
            for (float scale : {1.0f, 1e-3f, 300.0f}) {
                auto wv = randn(size_t(rows * K), 53, scale);
                std::vector<uint8_t> w(size_t(rows * rb)), wg(w.size());
                std::vector<float> deq(wv.size());
                for (int64_t r = 0; r < rows; ++r) {
                    quantize_row(t, wv.data() + r * K, w.data() + r * rb, K);
                    dequantize_row(t, w.data() + r * rb, deq.data() + r * K, K);
                }
                cuda::regroup_host(g, w.data(), wg.data(), rows * rb / cuda::regroup_unit(g));
                auto x = randn(size_t(K), 54);
                auto xi = int_rows(1, K, 55);
                std::vector<float> got, base, exact, got_i, exact_i;
                for (int64_t r = 0; r < rows; ++r) {
                    float a = 0.0f, b = 0.0f, ai = 0.0f, a4 = 0.0f;
                    REQUIRE(cuda::dot_q8_host(g, wg.data() + r * rb, K, x.data(), &a));
                    REQUIRE(cuda::dot_q8_host(g, wg.data() + r * rb, K, x.data(), &a4, 4));
                    REQUIRE(cuda::dot_q8_host(plain, w.data() + r * rb, K, x.data(), &b));
                    REQUIRE(cuda::dot_q8_host(g, wg.data() + r * rb, K, xi.data(), &ai));
                    CHECK(std::fabs(a4 - a) <= 1e-5f * (1.0f + std::fabs(a)));
                    double e = 0.0, ei = 0.0;
                    for (int64_t i = 0; i < K; ++i) {
                        e += double(deq[size_t(r * K + i)]) * x[size_t(i)];
                        ei += double(deq[size_t(r * K + i)]) * xi[size_t(i)];
                    }
                    got.push_back(a), base.push_back(b), exact.push_back(float(e));
                    got_i.push_back(ai), exact_i.push_back(float(ei));
                }
                INFO(tname(t) << " regrouped, K " << K << " scale " << scale);
                // The same integer sums as the plain layout's, in another float order: the
                // same rounding error against the exact product (the loop above bounds it).
                CHECK(nmse_root(got, base) <= 1e-5);
                CHECK(std::fabs(nmse_root(got, exact) - nmse_root(base, exact)) <= 1e-4);
                CHECK(nmse_root(got_i, exact_i) <= 1e-6);
            }
        }
    }
    // NaN in an activation block reaches the output; unsupported types are declined.
    std::vector<uint8_t> q8(34 * 2, 0);
    q8[0] = 0x00, q8[1] = 0x3c;  // d = 1
    std::vector<float> x(64, 1.0f);
    x[40] = std::numeric_limits<float>::quiet_NaN();
    float o = 0.0f;
    REQUIRE(cuda::dot_q8_host(cuda::WType::q8_0, q8.data(), 64, x.data(), &o));
    CHECK(std::isnan(o));
    CHECK_FALSE(cuda::dot_q8_host(cuda::WType::q2_K, q8.data(), 256, x.data(), &o));
    CHECK_FALSE(cuda::dot_q8_host(cuda::WType::q8_0, q8.data(), 48, x.data(), &o));
}

TEST_CASE("cuda quant: get_rows decodes every format exactly", "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    for (TypeId t : kQuantTypes)
        for (int64_t blocks : {1, 2, 3}) {  // 2: Q6_K regrouped on upload (an even block count)
            const int64_t cols = blocks * block_of(t);
            WeightStore s;
            QWeight e = add_qweight(s, "embd", t, {cols, 37}, 1);
            std::vector<int32_t> ids = {36, 0, 17, 17, 5};
            for (int64_t T : {1, 5}) {
                INFO(tname(t) << " cols " << cols << " T " << T);
                auto build = [&](Graph& g, bool q) {
                    int in = g.input("ids", DType::i32, T, 1);
                    return g.get_rows("y", q ? *e.q : *e.f, in);
                };
                check_op(*gpu, t, {{0, ids.data()}}, build, 1e-6, 1e-6);
            }
        }
}

TEST_CASE("cuda quant: mul_mat and logits, GEMV (1-8 rows) and tiled (> 8) paths", "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    for (TypeId t : kQuantTypes)
        for (auto [kb, out] : {std::pair<int64_t, int64_t>{1, 3}, {2, 40}, {3, 33}, {7, 129}})
            for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 33}) {
                const int64_t in = kb * block_of(t);
                WeightStore s;
                QWeight w = add_qweight(s, "w", t, {in, out}, 2);
                auto xv = randn(size_t(rows * in), 3);
                const bool rounds = int_path(t) && rows <= 8;
                INFO(tname(t) << " in " << in << " out " << out << " rows " << rows);
                check_mul_mat(*gpu, t, w, rows, in, xv, 0.05, 1e-5, rounds);
                // logits keeps the last row only: one row, on the GEMV path whatever `rows` is.
                check_op(*gpu, t, {{0, xv.data()}}, [&](Graph& g, bool q) {
                    int x = g.input("x", DType::f32, rows, in);
                    return g.logits("l", x, q ? *w.q : *w.f, true);
                }, 0.05, 1e-5, int_path(t));
                if (!rounds) continue;
                // Activations the 8-bit blocks hold exactly: the integer path equals the
                // dequantised f32 product up to summation order.
                auto xi = int_rows(rows, in, 4);
                check_mul_mat(*gpu, t, w, rows, in, xi, 0.05);
            }
}

// Long rows (V3's wo is 16384 long) and few of them, one token: many rounds of chunks a
// lane (the shapes above give each lane one or two), and rows past N in the last block.
TEST_CASE("cuda quant: single-token GEMV over long rows", "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    for (TypeId t : kQuantTypes) {
        if (!int_path(t)) continue;
        // 512 chunks of 32 values a row at least.
        const int64_t in = std::max<int64_t>(16384, 64 * block_of(t));
        for (int64_t out : {40, 129}) {
            WeightStore s;
            QWeight w = add_qweight(s, "w", t, {in, out}, 5);
            auto xv = randn(size_t(in), 6);
            INFO(tname(t) << " in " << in << " out " << out);
            check_mul_mat(*gpu, t, w, 1, in, xv, 0.05, 1e-5, true);
            auto xi = int_rows(1, in, 7);
            check_mul_mat(*gpu, t, w, 1, in, xi, 0.05);
        }
    }
}

// Single-token products of one wave at 4 rows a lane group that go to 2 or 3 (one_wave_rw
// in gemv_q8.cu; on an H200, q6_K_g to 3, q4_K_g and q5_K_g to 2): 7168 rows, and 7170
// with rows past N in the last CTA; 24000 rows of 512 stay at 4 (more than a wave); and
// products of two waves made one with half the lanes a row (fewer_lanes: q_b's 24576 rows
// of 1536, and 24580).
TEST_CASE("cuda quant: single-token GEMVs of one wave at fewer rows a lane group", "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    const std::pair<int64_t, int64_t> shapes[] = {{512, 7168}, {512, 7170}, {512, 24000}, {1536, 24576}, {1536, 24580}};
    for (TypeId t : {TypeId::Q4_K, TypeId::Q5_K, TypeId::Q6_K})
        for (auto [in, out] : shapes) {
            WeightStore s;
            QWeight w = add_qweight(s, "w", t, {in, out}, 61, 0.3f);
            auto xv = randn(size_t(in), 62);
            INFO(tname(t) << " in " << in << " out " << out);
            check_mul_mat(*gpu, t, w, 1, in, xv, 0.05, 1e-5, true);
        }
}

// The decode GEMV's modes at V3-like row lengths, 1 and 2 tokens: plain, gate+up
// (shared experts), the MoE pairs' gate/up and down, with rows of 14 and 6 blocks (a lane's
// last round partly past the row), q6_K_g rows that start 4, 8 or 12 bytes past a 16-byte
// boundary (7 and 3 block pairs a row), 1, 2 and 4 rows a lane group (N of 131, 2100 and
// 4100) and rows past N in the last block.
TEST_CASE("cuda quant: decode GEMVs of every mode at V3-like row lengths", "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    const int E = 5, k = 2;
    const int64_t D = 3584, F = 1536;
    for (TypeId t : {TypeId::Q4_K, TypeId::Q5_K, TypeId::Q6_K}) {
        WeightStore s;
        const FfnWeights fw = add_ffn_weights(s, t, D, F, E, 40);
        const QWeight &g = fw.g, &u = fw.u, &d = fw.d, &sg = fw.sg, &su = fw.su, &sd = fw.sd;
        RouteParams p{E, k, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
        for (int64_t T : {1, 2}) {
            const std::vector<float> route = test_route(T, k, E);
            auto xv = randn(size_t(T * D), 46);
            const std::vector<GraphInput> ins = {{0, xv.data()}, {1, route.data()}};
            INFO(tname(t) << " T " << T);
            check_op(*gpu, t, ins, [&](Graph& gr, bool q) {
                int x = gr.input("x", DType::f32, T, D);
                int r = gr.input("r", DType::f32, T, 2 * k);
                return gr.moe_ffn("m", x, r, q ? *g.q : *g.f, q ? *u.q : *u.f, q ? *d.q : *d.f, p);
            }, 0.05, 1e-5, true);
            check_op(*gpu, t, ins, [&](Graph& gr, bool q) {
                int x = gr.input("x", DType::f32, T, D);
                gr.input("r", DType::f32, T, 2 * k);
                return gr.shared_ffn("sh", x, q ? *sg.q : *sg.f, q ? *su.q : *su.f, q ? *sd.q : *sd.f);
            }, 0.05, 1e-5, true);
            for (int64_t out : {131, 2100, 4100}) {
                INFO("mul_mat out " << out);
                std::string name = "w";  // (not "w" + to_string: GCC 12 warns falsely, -Wrestrict)
                name += std::to_string(out);
                QWeight w = add_qweight(s, name, t, {F, out}, 47, 0.3f);
                auto xf = randn(size_t(T * F), 48);
                check_op(*gpu, t, {{0, xf.data()}}, [&](Graph& gr, bool q) {
                    int x = gr.input("x", DType::f32, T, F);
                    return gr.mul_mat("y", x, q ? *w.q : *w.f);
                }, 0.05, 1e-5, true);
            }
        }
    }
}

TEST_CASE("cuda quant: shared_ffn (fused gate/up GEMV) and moe_ffn (decode pairs, grouped prefill)",
          "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    const int E = 5, k = 2;
    for (TypeId t : kQuantTypes) {
        // Two blocks a row both ways (F is the down matrix's K): Q6_K is regrouped on upload.
        const int64_t D = block_of(t) * 2, F = block_of(t) * 2;
        WeightStore s;
        const FfnWeights fw = add_ffn_weights(s, t, D, F, E, 4);
        const QWeight &g = fw.g, &u = fw.u, &d = fw.d, &sg = fw.sg, &su = fw.su, &sd = fw.sd;
        RouteParams p{E, k, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
        for (int64_t T : {1, 3, 8, 9, 21}) {
            std::vector<float> route(size_t(T * 2 * k));
            for (int64_t i = 0; i < T; ++i)
                for (int j = 0; j < k; ++j) {
                    route[size_t(i * 2 * k + j)] = 0.3f + 0.4f * float(j) + 0.01f * float(i);
                    route[size_t(i * 2 * k + k + j)] = float((i * 3 + j * 2) % E);
                }
            auto xv = randn(size_t(T * D), 10);
            const std::vector<GraphInput> ins = {{0, xv.data()}, {1, route.data()}};
            for (bool subset : {false, true}) {
                INFO(tname(t) << " D " << D << " F " << F << " T " << T << (subset ? " subset" : ""));
                check_op(*gpu, t, ins, [&](Graph& gr, bool q) {
                    int x = gr.input("x", DType::f32, T, D);
                    int r = gr.input("r", DType::f32, T, 2 * k);
                    int m = gr.moe_ffn("m", x, r, q ? *g.q : *g.f, q ? *u.q : *u.f, q ? *d.q : *d.f, p);
                    if (subset) gr.node(m).experts = {0, 1, 1, 0, 1};
                    return m;
                }, 0.05, 1e-5, int_path(t) && T <= 8);
            }
            INFO(tname(t) << " shared_ffn T " << T);
            check_op(*gpu, t, ins, [&](Graph& gr, bool q) {
                int x = gr.input("x", DType::f32, T, D);
                gr.input("r", DType::f32, T, 2 * k);
                return gr.shared_ffn("sh", x, q ? *sg.q : *sg.f, q ? *su.q : *su.f, q ? *sd.q : *sd.f);
            }, 0.05, 1e-5, int_path(t) && T <= 8);
        }
    }
}

TEST_CASE("cuda quant: mla_attn with quantized k_b / v_b", "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    for (TypeId t : {TypeId::Q8_0, TypeId::Q4_0, TypeId::Q6_K, TypeId::FP8_E4M3_B128}) {
        // v_b's rows are kv_lora long: two blocks, so Q6_K's v_b is regrouped on upload.
        const int H = 3, rope = 8, nope = int(block_of(t)), kv_lora = 2 * int(block_of(t)), v_head = 7;
        WeightStore s;
        QWeight kb = add_qweight(s, "kb", t, {nope, kv_lora, H}, 11, 0.3f);
        QWeight vb = add_qweight(s, "vb", t, {kv_lora, v_head, H}, 12, 0.3f);
        auto cpu = create_backend("cpu", {2});
        KvCache gc(1, 16, kv_lora, rope), rc(1, 16, kv_lora, rope);
        int64_t pos0 = 0;
        uint32_t seed = 200;
        for (int64_t T : {5, 1, 2}) {
            AttnParams p{H, nope, rope, v_head, kv_lora, 1.0f / std::sqrt(float(nope + rope)), pos0};
            auto build = [&](Graph& g, bool q) {
                int qn = g.input("q", DType::f32, T, H * (nope + rope));
                int lat = g.input("lat", DType::f32, T, kv_lora);
                int kpe = g.input("kpe", DType::f32, T, rope);
                return g.mla_attn("o", qn, lat, kpe, q ? *kb.q : *kb.f, q ? *vb.q : *vb.f, p, 0);
            };
            auto qv = randn(size_t(T * H * (nope + rope)), seed++);
            auto lv = randn(size_t(T * kv_lora), seed++);
            auto kv = randn(size_t(T * rope), seed++);
            const std::vector<GraphInput> ins = {{0, qv.data()}, {1, lv.data()}, {2, kv.data()}};
            Graph gq, gf;
            const int oq = build(gq, true), of = build(gf, false);
            const auto got = run_on(*gpu, gq, ins, oq, &gc);
            const auto want = run_on(*cpu, gf, ins, of, &rc);
            INFO(tname(t) << " batch of " << T << " at " << pos0);
            CHECK(all_finite(got));
            // One-token steps run the per-head products on the integer GEMV, which rounds
            // q and the attended latent to 8-bit blocks (≈ 1 % per product).
            CHECK(nmse_root(got, want) <= (T == 1 && int_path(t) ? 0.05 : 2e-5));
            gc.advance(T);
            rc.advance(T);
            pos0 += T;
        }
    }
}

// In a replayed decode step the RMS norms quantise their outputs for the integer GEMVs
// that read them, MLA's merge quantises the attended latent for v_b, and v_b (at V3's 128
// rows a head: 32 a block) quantises MLA's output for wo: the products must see the very
// bytes their own quantise kernels make node by node.
// With a product (wo) reading MLA's output, and v_b in regrouped Q6_K at V3's 128 rows a head.
TEST_CASE("cuda quant: a replayed decode step (fused quantisation) equals node by node bit for bit",
          "[cuda][quant][graph]") {
    DS3_REQUIRE_CUDA(gpu);
    struct Case {
        TypeId t, t_out;  // t_out: v_b and wo
        int64_t H, kv_lora, v_head;
    };
    // The last: v_b in regrouped Q6_K (kv_lora 512) with V3's 128 rows a head.
    // shape 1: q and k_pe through their RoPE nodes first, so that a replayed step launches
    // k_b ahead of the MLA node (the query's RoPE quantising q_nope for it) and the store
    // after the key's RoPE; shape 2: also the latent norm and the key's RoPE on views of
    // one kv_a row, as in a model, which a replayed step launches as one kernel with the
    // store, and the query is left unrotated (k_b quantises it itself, the split rotates
    // q_pe with the latent kernel's angles); shape 3: shape 2 with the roped query read
    // back, so that its RoPE runs (cuda_step.cpp). The fused kernels' outputs are fetched
    // too: their bits.
    auto table = std::make_shared<RopeTable>();
    for (int i = 0; i < 4; ++i) table->inv_freq.push_back(std::pow(10000.0f, -float(i) / 4.0f));
    table->attn_factor = 1.07f;
    for (int shape : {0, 1, 2, 3})
    for (const Case& c : {Case{TypeId::Q8_0, TypeId::Q8_0, 3, 64, 32}, Case{TypeId::Q4_0, TypeId::Q4_0, 3, 64, 32},
                          Case{TypeId::Q8_0, TypeId::Q6_K, 4, 512, 128}}) {
        const TypeId t = c.t;
        const int64_t D = 96, H = c.H, rope = 8, nope = 32, kv_lora = c.kv_lora, v_head = c.v_head;
        WeightStore s;
        const Weight& gain = add_weight(s, "gain", TypeId::F32, {D}, randn(size_t(D), 60, 0.5f));
        const Weight& lgain = add_weight(s, "lgain", TypeId::F32, {kv_lora}, randn(size_t(kv_lora), 66, 0.5f));
        QWeight w1 = add_qweight(s, "w1", t, {D, 4099}, 61, 0.3f);
        QWeight w2 = add_qweight(s, "w2", t, {D, 40}, 62, 0.3f);
        QWeight kb = add_qweight(s, "kb", t, {nope, kv_lora, H}, 63, 0.3f);
        QWeight vb = add_qweight(s, "vb", c.t_out, {kv_lora, v_head, H}, 64, 0.3f);
        QWeight wo = add_qweight(s, "wo", c.t_out, {H * v_head, 40}, 65, 0.3f);
        std::vector<std::vector<float>> outs[2];  // per fetched node and position
        std::vector<std::string> names;
        for (int on = 0; on < 2; ++on) {
            auto b = cuda_with_graphs(on == 1);
            KvCache cache(1, 16, kv_lora, rope);
            uint32_t seed = 300;
            for (int64_t pos = 0; pos < 4; ++pos) {  // node by node, eager record, capture, replay
                AttnParams p{int(H), int(nope), int(rope), int(v_head), int(kv_lora), 0.2f, pos};
                Graph g;
                const int x = g.input("x", DType::f32, 1, D), r = g.input("r", DType::f32, 1, D);
                const int qin = g.input("q", DType::f32, 1, H * (nope + rope));
                // shape ≥ 2: lin is the kv_a row [kv_lora | rope]; else lat and kpe themselves.
                const bool row = shape >= 2;
                const int lin = g.input("lat", DType::f32, 1, row ? kv_lora + rope : kv_lora);
                const int kin = g.input("kpe", DType::f32, 1, rope);
                const int ps = g.input("pos", DType::i32, 1, 1);
                const int n = g.rms_norm("norm", g.add("sum", x, r), gain, 1e-6f);
                const int y1 = g.mul_mat("y1", n, *w1.q), y2 = g.mul_mat("y2", n, *w2.q);
                const int qn = shape > 0 ? g.rope_yarn("q_roped", qin, ps, int(H), int(nope + rope), int(nope),
                                                       int(rope), table)
                                         : qin;
                const int lat = row ? g.rms_norm("kv_latent", g.view("kv_c", lin, 0, kv_lora), lgain, 1e-6f) : lin;
                const int kpe = row          ? g.rope_yarn("k_pe", g.view("k_pe_raw", lin, kv_lora, rope), ps, 1,
                                                           int(rope), 0, int(rope), table)
                                : shape == 1 ? g.rope_yarn("k_pe", kin, ps, 1, int(rope), 0, int(rope), table)
                                             : kin;
                const int o = g.mla_attn("o", qn, lat, kpe, *kb.q, *vb.q, p, 0, ps);
                const int y3 = g.mul_mat("wo", o, *wo.q);
                auto xv = randn(size_t(D), seed++), rv = randn(size_t(D), seed++);
                auto qv = randn(size_t(H * (nope + rope)), seed++);
                auto lv = randn(size_t(row ? kv_lora + rope : kv_lora), seed++);
                auto kv = randn(size_t(rope), seed++);
                const int32_t pv = int32_t(pos);
                const std::vector<GraphInput> ins = {{x, xv.data()},   {r, rv.data()},   {qin, qv.data()},
                                                     {lin, lv.data()}, {kin, kv.data()}, {ps, &pv}};
                Scheduler sch({b.get()});
                const Graph placed = sch.place(g);
                std::vector<int> fetch = {y1, y2, o, y3};
                if (shape == 1 || shape == 3) fetch.push_back(qn);  // rope_rows_q8's y: rope_rows' bits
                if (row) fetch.insert(fetch.end(), {lat, kpe});          // mla_latent's
                auto res = sch.run(placed, ins, &cache, fetch);
                for (int id : fetch) outs[on].push_back(std::vector<float>(res.at(id).begin(), res.at(id).end()));
                if (on == 0)
                    for (int id : fetch) names.push_back(g.node(id).name + " at " + std::to_string(pos));
                cache.advance(1);
            }
        }
        REQUIRE(outs[0].size() == outs[1].size());
        for (size_t k = 0; k < outs[0].size(); ++k) {
            INFO(tname(t) << " / " << tname(c.t_out) << ", shape " << shape << ": " << names[k]);
            CHECK(all_finite(outs[1][k]));
            CHECK(outs[0][k] == outs[1][k]);
        }
    }
}

TEST_CASE("cuda quant: a replayed step's fused adds and RMS norm at V3's width match the CPU", "[cuda][quant][graph]") {
    // add → add → rms_norm, as at a layer's end: one kernel in a replayed step (on sm_90 a
    // cluster of blocks a row), with its quantised copy feeding the product after it.
    DS3_REQUIRE_CUDA(gpu);
    const int64_t D = 7168, N = 64;
    WeightStore s;
    const Weight& gain = add_weight(s, "gain", TypeId::F32, {D}, randn(size_t(D), 70, 0.5f));
    QWeight w = add_qweight(s, "w", TypeId::Q8_0, {D, N}, 71, 0.3f);
    for (int64_t T : {1, 3}) {
        Graph g;
        const int x = g.input("x", DType::f32, T, D), a = g.input("a", DType::f32, T, D);
        const int b = g.input("b", DType::f32, T, D);
        const int h = g.add("h", x, g.add("ab", a, b));
        const int n = g.rms_norm("n", h, gain, 1e-6f);
        const int y = g.mul_mat("y", n, *w.q);
        auto xv = randn(size_t(T * D), 72), av = randn(size_t(T * D), 73), bv = randn(size_t(T * D), 74);
        const std::vector<GraphInput> ins = {{x, xv.data()}, {a, av.data()}, {b, bv.data()}};
        auto cpu = create_backend("cpu", {2});
        Scheduler cs({cpu.get()});
        const Graph cp = cs.place(g);
        const int fetch[] = {h, n, y};
        auto want = cs.run(cp, ins, nullptr, fetch);
        auto b2 = cuda_with_graphs(true);
        Scheduler gs({b2.get()});
        const Graph gp = gs.place(g);
        for (int run = 0; run < 3; ++run) {  // eager record, capture, replay
            auto got = gs.run(gp, ins, nullptr, fetch);
            INFO("T " << T << " run " << run);
            CHECK(nmse_root(got.at(h), want.at(h)) == 0.0);
            CHECK(nmse_root(got.at(n), want.at(n)) <= 1e-6);
            CHECK(nmse_root(got.at(y), want.at(y)) <= 0.05);  // 8-bit activations on both sides
        }
    }
}

TEST_CASE("cuda quant: supports() names exactly the types that run", "[cuda][quant][errors]") {
    DS3_REQUIRE_CUDA(gpu);
    WeightStore s;
    auto node_with = [&](TypeId t, int64_t in) {
        const TypeTraits& tr = type_traits(t);
        std::vector<uint8_t> bytes(size_t(in / tr.block_size * tr.type_size * 3), 0);
        const Weight& w = s.add_owned(std::string("w") + tname(t) + std::to_string(in), t, {in, 3}, std::move(bytes));
        Graph g;
        int x = g.input("x", DType::f32, 1, in);
        return g.node(g.mul_mat("y", x, w));
    };
    for (TypeId t : kQuantTypes) CHECK(gpu->supports(node_with(t, 256)));
    for (TypeId t : {TypeId::F32, TypeId::BF16, TypeId::F16}) CHECK(gpu->supports(node_with(t, 256)));
    // Formats without a device decoder go to the next backend.
    CHECK_FALSE(gpu->supports(node_with(TypeId::IQ2_XXS, 256)));
    CHECK_FALSE(gpu->supports(node_with(TypeId::Q5_0, 32)));
    // Gains are read element by element: plain floats only.
    std::vector<uint8_t> q8(34, 0);
    const Weight& gain = s.add_owned("gain", TypeId::Q8_0, {32}, q8);
    Graph g;
    int x = g.input("x", DType::f32, 1, 32);
    CHECK_FALSE(gpu->supports(g.node(g.rms_norm("n", x, gain, 1e-6f))));
    // moe_ffn: down may have its own type (Q4_K_M's mix); gate and up of different
    // types are declined (the CPU runs them).
    QWeight a = add_qweight(s, "ga", TypeId::Q8_0, {32, 32, 2}, 13);
    RouteParams p{2, 1, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
    Graph m;
    int mx = m.input("x", DType::f32, 1, 32);
    int mr = m.input("r", DType::f32, 1, 2);
    CHECK(gpu->supports(m.node(m.moe_ffn("m1", mx, mr, *a.q, *a.q, *a.f, p))));
    CHECK_FALSE(gpu->supports(m.node(m.moe_ffn("m2", mx, mr, *a.q, *a.f, *a.q, p))));
}

TEST_CASE("cuda quant: moe_ffn and shared_ffn with down in another type (the Q4_K_M mix)", "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    const int E = 4, k = 2;
    const int64_t D = 512, F = 256;
    WeightStore s;
    QWeight g = add_qweight(s, "g", TypeId::Q4_K, {D, F, E}, 30, 0.3f), u = add_qweight(s, "u", TypeId::Q4_K, {D, F, E}, 31, 0.3f),
            d = add_qweight(s, "d", TypeId::Q6_K, {F, D, E}, 32, 0.3f);
    QWeight sg = add_qweight(s, "sg", TypeId::Q4_K, {D, F}, 33, 0.3f), su = add_qweight(s, "su", TypeId::Q5_K, {D, F}, 34, 0.3f),
            sd = add_qweight(s, "sd", TypeId::Q6_K, {F, D}, 35, 0.3f);
    RouteParams p{E, k, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
    for (int64_t T : {1, 4, 17}) {
        std::vector<float> route(size_t(T * 2 * k));
        for (int64_t i = 0; i < T; ++i)
            for (int j = 0; j < k; ++j) {
                route[size_t(i * 2 * k + j)] = 0.5f + 0.1f * float(j);
                route[size_t(i * 2 * k + k + j)] = float((i + j * 3) % E);
            }
        auto xv = randn(size_t(T * D), 36);
        const std::vector<GraphInput> ins = {{0, xv.data()}, {1, route.data()}};
        INFO("T " << T);
        check_op(*gpu, TypeId::Q4_K, ins, [&](Graph& gr, bool q) {
            int x = gr.input("x", DType::f32, T, D);
            int r = gr.input("r", DType::f32, T, 2 * k);
            return gr.moe_ffn("m", x, r, q ? *g.q : *g.f, q ? *u.q : *u.f, q ? *d.q : *d.f, p);
        }, 0.05, 1e-5, T <= 8);
        // Gate and up of different types: the fused GEMV is skipped, three matmuls run.
        check_op(*gpu, TypeId::Q4_K, ins, [&](Graph& gr, bool q) {
            int x = gr.input("x", DType::f32, T, D);
            gr.input("r", DType::f32, T, 2 * k);
            return gr.shared_ffn("sh", x, q ? *sg.q : *sg.f, q ? *su.q : *su.f, q ? *sd.q : *sd.f);
        }, 0.05, 1e-5, T <= 8);
    }
}

// The interleaved layouts on the device (DS3_CUDA_Q6I_ROWS and DS3_CUDA_Q45I_ROWS lowered so
// that small matrices take them): the
// single-token and few-row GEMVs (2, 4 and 8 warps a group: 1, 3, 6 and 28 blocks a row,
// so some warps have no block), gate+up (shared_ffn), the MoE pairs' gate/up and down and
// the grouped prefill (moe_ffn), the tiled path (> 8 rows), logits and get_rows, which read
// it through the row loader.
TEST_CASE("cuda quant: interleaved products: GEMVs of 1 to 8 rows and gate+up, MoE, tiled, logits and get_rows",
          "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    EnvGuard env("DS3_CUDA_Q6I_ROWS", "32"), env45("DS3_CUDA_Q45I_ROWS", "32");
    for (auto [t, wi] : kInterleaved) {
    INFO(tname(t));
    for (auto [in, out] : {std::pair<int64_t, int64_t>{256, 32}, {768, 96}, {1536, 4096}, {7168, 64}})
        for (int64_t rows : {1, 2, 3, 5, 8, 9}) {
            if (in == 7168 && rows > 2) continue;
            WeightStore s;
            QWeight w = add_qweight(s, "w", t, {in, out}, 63, 0.3f);
            auto xv = randn(size_t(rows * in), 64);
            INFO("in " << in << " out " << out << " rows " << rows);
            check_mul_mat(*gpu, t, w, rows, in, xv, 0.05, 1e-5, rows <= 8);
            if (rows <= 8) check_mul_mat(*gpu, t, w, rows, in, int_rows(rows, in, 65), 0.05);
            check_op(*gpu, t, {{0, xv.data()}}, [&](Graph& g, bool q) {
                int x = g.input("x", DType::f32, rows, in);
                return g.logits("l", x, q ? *w.q : *w.f, true);
            }, 0.05, 1e-5, true);
        }
    {
        const int64_t D = 512, F = 256;
        WeightStore s;
        QWeight sg = add_qweight(s, "sg", t, {D, F}, 66, 0.3f), su = add_qweight(s, "su", t, {D, F}, 67, 0.3f),
                sd = add_qweight(s, "sd", t, {F, D}, 68, 0.3f);
        for (int64_t T : {1, 3, 8, 17}) {
            auto xv = randn(size_t(T * D), 69);
            INFO("shared_ffn T " << T);
            check_op(*gpu, t, {{0, xv.data()}}, [&](Graph& gr, bool q) {
                int x = gr.input("x", DType::f32, T, D);
                return gr.shared_ffn("sh", x, q ? *sg.q : *sg.f, q ? *su.q : *su.f, q ? *sd.q : *sd.f);
            }, 0.05, 1e-5, T <= 8);
        }
        // Routed experts: stacks of 5 (gate and up of 256 rows, down of 512), 2 a token.
        const int E = 5, k = 2;
        const FfnWeights fw = add_ffn_weights(s, t, D, F, E, 71);
        RouteParams p{E, k, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
        for (int64_t T : {1, 2, 17}) {
            const std::vector<float> route = test_route(T, k, E);
            auto xv = randn(size_t(T * D), 72);
            INFO("moe_ffn T " << T);
            check_op(*gpu, t, {{0, xv.data()}, {1, route.data()}}, [&](Graph& gr, bool q) {
                int x = gr.input("x", DType::f32, T, D);
                int r = gr.input("r", DType::f32, T, 2 * k);
                return gr.moe_ffn("m", x, r, q ? *fw.g.q : *fw.g.f, q ? *fw.u.q : *fw.u.f, q ? *fw.d.q : *fw.d.f, p);
            }, 0.05, 1e-5, T <= 8);
        }
    }
    {
        WeightStore s;
        QWeight e = add_qweight(s, "embd", t, {512, 64}, 70);
        std::vector<int32_t> ids = {63, 0, 31, 32, 5};
        check_op(*gpu, t, {{0, ids.data()}}, [&](Graph& g, bool q) {
            int in = g.input("ids", DType::i32, 5, 1);
            return g.get_rows("y", q ? *e.q : *e.f, in);
        }, 1e-6, 1e-6);
        // Rows of 4096 values: two blocks a row (get_rows splits rows of more than 2048).
        QWeight wide = add_qweight(s, "embd_wide", t, {4096, 64}, 73);
        check_op(*gpu, t, {{0, ids.data()}}, [&](Graph& g, bool q) {
            int in = g.input("ids", DType::i32, 5, 1);
            return g.get_rows("y", q ? *wide.q : *wide.f, in);
        }, 1e-6, 1e-6);
    }
    }
}

// Decode's FFN kernels on the interleaved layouts: the gate/up writes the down's input
// already quantised (DS3_CUDA_ACT_Q8=0: the down quantises it, to the same bits), and the
// MoE down adds a token's slots itself (8 slots, one expert masked; rows of 1, 3 and 4
// blocks for the next-block loads; DS3_CUDA_MOE_SUM=0: the pairs' rows and moe_combine).
TEST_CASE("cuda quant: interleaved FFN decode: the down's input quantised by the gate/up, the MoE down's own sum",
          "[cuda][quant]") {
    DS3_REQUIRE_CUDA(gpu);
    EnvGuard env("DS3_CUDA_Q6I_ROWS", "32"), env45("DS3_CUDA_Q45I_ROWS", "32");
    auto with = [](const char* name) {
        EnvGuard off(name, "0");
        return create_backend("cuda");
    };
    const auto unquantised = with("DS3_CUDA_ACT_Q8"), combined = with("DS3_CUDA_MOE_SUM");
    const int E = 10, k = 8;
    const int64_t D = 512;
    RouteParams p{E, k, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
    for (auto [t, wi] : kInterleaved)
        for (int64_t F : {256, 768, 1024}) {
            WeightStore s;
            const FfnWeights fw = add_ffn_weights(s, t, D, F, E, 74);
            for (int64_t T : {1, 2, 3}) {
                INFO(tname(t) << " F " << F << " T " << T);
                const std::vector<float> route = test_route(T, k, E);
                auto xv = randn(size_t(T * D), 75);
                const std::vector<GraphInput> ins = {{0, xv.data()}, {1, route.data()}};
                auto moe = [&](Graph& gr, bool q) {
                    int x = gr.input("x", DType::f32, T, D);
                    int r = gr.input("r", DType::f32, T, 2 * k);
                    int m = gr.moe_ffn("m", x, r, q ? *fw.g.q : *fw.g.f, q ? *fw.u.q : *fw.u.f,
                                       q ? *fw.d.q : *fw.d.f, p);
                    gr.node(m).experts.assign(size_t(E), 1);
                    gr.node(m).experts[6] = 0;  // token 0's third slot
                    return m;
                };
                auto shared = [&](Graph& gr, bool q) {
                    int x = gr.input("x", DType::f32, T, D);
                    return gr.shared_ffn("sh", x, q ? *fw.sg.q : *fw.sg.f, q ? *fw.su.q : *fw.su.f,
                                         q ? *fw.sd.q : *fw.sd.f);
                };
                check_op(*gpu, t, ins, moe, 0.05, 1e-5, true);
                const std::vector<GraphInput> x_only = {ins[0]};
                check_op(*gpu, t, x_only, shared, 0.05, 1e-5, true);
                auto same = [&](auto&& build, const std::vector<GraphInput>& in) {
                    Graph g;
                    const int o = build(g, true);
                    const auto got = run_on(*gpu, g, in, o);
                    CHECK(std::memcmp(got.data(), run_on(*unquantised, g, in, o).data(), got.size() * 4) == 0);
                    CHECK(nmse_root(got, run_on(*combined, g, in, o)) <= 1e-6);
                };
                same(moe, ins);
                same(shared, x_only);
            }
        }
}

// Hidden (run it by name on the device): timings of the decode products at DeepSeek-V3's
// shapes, integer path against the f32-activation kernels, as effective bandwidth.
TEST_CASE("cuda quant: decode GEMV timings at V3 shapes", "[.bench]") {
    DS3_REQUIRE_CUDA(gpu);
    struct Shape {
        const char* name;
        int kind;
        int64_t N, K;
    };
    const Shape shapes[] = {{"wq_a 7168->1536", 0, 1536, 7168},   {"wkv_a 7168->576", 0, 576, 7168},
                            {"wq_b 1536->24576", 0, 24576, 1536}, {"wo 16384->7168", 0, 7168, 16384},
                            {"ffn gate+up 7168->18432", 1, 18432, 7168}, {"ffn down 18432->7168", 0, 7168, 18432},
                            {"shexp gate+up 7168->2048", 1, 2048, 7168}, {"shexp down 2048->7168", 0, 7168, 2048},
                            {"moe 8 experts 7168<->2048", 2, 2048, 7168}, {"output 7168->129280", 0, 129280, 7168}};
    const std::pair<TypeId, cuda::WType> types[] = {
        {TypeId::Q4_K, cuda::WType::q4_K}, {TypeId::Q4_K, cuda::WType::q4_K_g}, {TypeId::Q5_K, cuda::WType::q5_K},
        {TypeId::Q5_K, cuda::WType::q5_K_g}, {TypeId::Q6_K, cuda::WType::q6_K}, {TypeId::Q6_K, cuda::WType::q6_K_g},
        {TypeId::Q6_K, cuda::WType::q6_K_i}, {TypeId::Q4_K, cuda::WType::q4_K_i}, {TypeId::Q5_K, cuda::WType::q5_K_i},
        {TypeId::Q8_0, cuda::WType::q8_0},   {TypeId::Q4_0, cuda::WType::q4_0}};
    for (auto [t, wt] : types)
        for (const Shape& sh : shapes)
            for (int64_t M : {1, 4}) {
                if (M > 1 && sh.kind == 2) continue;
                const TypeTraits& tr = type_traits(t);
                const double mats = sh.kind == 0 ? 1 : sh.kind == 1 ? 2 : 24;
                const double bytes = mats * double(sh.N) * double(sh.K) / double(tr.block_size) * double(tr.type_size);
                const int iters = bytes > 1e8 ? 20 : 200;
                const double ti = cuda::time_decode_us(sh.kind, wt, M, sh.N, sh.K, true, iters);
                const double tf = cuda::time_decode_us(sh.kind, wt, M, sh.N, sh.K, false, iters);
                std::printf("gemv %-6s M=%lld %-28s int %8.1f us %7.0f GB/s | f32 %8.1f us %7.0f GB/s\n",
                            wt == cuda::WType::q6_K_g   ? "q6_K_g"
                            : wt == cuda::WType::q6_K_i ? "q6_K_i"
                            : wt == cuda::WType::q4_K_i ? "q4_K_i"
                            : wt == cuda::WType::q5_K_i ? "q5_K_i"
                            : wt == cuda::WType::q5_K_g ? "q5_K_g"
                            : wt == cuda::WType::q4_K_g ? "q4_K_g"
                                                        : tname(t),
                            static_cast<long long>(M), sh.name, ti, bytes / ti / 1e3, tf, bytes / tf / 1e3);
                CHECK(ti > 0.0);
            }
}

// Hidden (run it by name on the device): the time a kernel that only streams the bytes
// takes at the sizes of V3's decode products (launched back to back under dependent launch,
// as the GEMVs are), against which the GEMV timings above read as a share of what a product
// of that size could reach (docs/performance-cuda.md, slice 20).
TEST_CASE("cuda quant: decode read ceiling by product size", "[.bench]") {
    DS3_REQUIRE_CUDA(gpu);
    const std::pair<const char*, double> sizes[] = {
        {"wkv_a q6_K", 576.0 * 7168 * 210 / 256},       {"wq_a q6_K", 1536.0 * 7168 * 210 / 256},
        {"wq_b q6_K", 24576.0 * 1536 * 210 / 256},      {"moe down 8 x q6_K", 8.0 * 7168 * 2048 * 210 / 256},
        {"wo q6_K", 7168.0 * 16384 * 210 / 256},        {"moe gate+up 8 x q4_K", 16.0 * 2048 * 7168 * 144 / 256},
        {"ffn down q5_K", 7168.0 * 18432 * 176 / 256},  {"ffn gate+up q5_K", 2.0 * 18432 * 7168 * 176 / 256},
        {"output q6_K", 129280.0 * 7168 * 210 / 256}};
    for (const auto& [name, bytes] : sizes) {
        const double us = cuda::time_read_us(static_cast<int64_t>(bytes), bytes > 1e8 ? 20 : 200);
        std::printf("read %-22s %8.1f MB %8.1f us %7.0f GB/s\n", name, bytes / 1e6, us, bytes / us / 1e3);
        CHECK(us > 0.0);
    }
}

// Hidden (run it by name on the device): one integer GEMV kernel across grid sizes and row
// lengths, M = 1. The output head (129,280 rows) streams at ~84 % of DRAM peak and `wo`
// (7168 rows of 16384) at ~57 % with the same kernel and format (docs/performance-cuda.md,
// slice 10): this separates the rows a product has (blocks to fill the SMs) from how long
// they are (rounds a lane makes).
TEST_CASE("cuda quant: decode GEMV bandwidth by rows and row length", "[.bench]") {
    DS3_REQUIRE_CUDA(gpu);
    // DS3_BENCH_SHAPES="K:N,K:N,...": those shapes instead of the grid below (K a multiple
    // of 256; the occupancy of one wave is what such a list usually probes).
    std::vector<std::pair<int64_t, int64_t>> shapes;
    if (const char* e = std::getenv("DS3_BENCH_SHAPES")) {
        const std::string list = e;
        for (size_t at = 0; at < list.size();) {
            const size_t comma = std::min(list.find(',', at), list.size());
            const std::string item = list.substr(at, comma - at);
            long long K = 0, N = 0;
            char tail = 0;
            INFO("DS3_BENCH_SHAPES item '" << item << "'");
            REQUIRE(std::sscanf(item.c_str(), "%lld:%lld%c", &K, &N, &tail) == 2);
            REQUIRE((K > 0 && K % 256 == 0 && N > 0));
            shapes.emplace_back(K, N);
            at = comma + 1;
        }
    } else {
        for (int64_t K : {2048, 7168, 16384})
            for (int64_t N : {1792, 3584, 7168, 14336, 28672, 57344, 129280}) shapes.emplace_back(K, N);
    }
    for (cuda::WType wt : {cuda::WType::q6_K_g, cuda::WType::q4_K_g})
        for (const auto& [K, N] : shapes) {
            const TypeTraits& tr = type_traits(wt == cuda::WType::q6_K_g ? TypeId::Q6_K : TypeId::Q4_K);
            const double bytes = double(N) * double(K) / double(tr.block_size) * double(tr.type_size);
            const double us = cuda::time_decode_us(0, wt, 1, N, K, true, bytes > 1e8 ? 20 : 200);
            std::printf("gemv %-6s K=%-6lld N=%-7lld %8.1f us %7.0f GB/s\n", wt == cuda::WType::q6_K_g ? "q6_K_g" : "q4_K_g",
                        static_cast<long long>(K), static_cast<long long>(N), us, bytes / us / 1e3);
            CHECK(us > 0.0);
        }
}
