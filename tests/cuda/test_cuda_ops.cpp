// Every op of the CUDA backend against the CPU backend (the reference), in the spirit
// of ggml's test-backend-ops: odd shapes, outputs poisoned with NaN before each run (an
// unwritten element shows up), NaN/inf checks and a normalised-error limit per op.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "backends/cpu/cpu_backend.h"
#include "backends/cuda/branches.h"
#include "backends/cuda/kernels.h"
#include "cuda_test.h"
#include "op_inputs.h"
#include "quantize/float.h"
#include "runtime/error.h"
#include "runtime/kv_cache.h"
#include "runtime/sched/sched.h"
#include "runtime/weights.h"

using namespace ds3;
using namespace ds3::test;

namespace {

const char* tname(TypeId t) { return type_traits(t).name.data(); }

// Leaves NaN-filled blocks of every size class the run will ask for in the backend's
// pool, so an output element the kernel never writes reads as NaN.
void poison(Backend& b, const Graph& g) {
    std::vector<std::unique_ptr<Buffer>> held;
    for (const Node& n : g.nodes()) {
        for (int i = 0; i < 2; ++i) {
            auto buf = b.alloc(n.nbytes());
            std::vector<float> nan(n.nbytes() / 4 + 1, std::numeric_limits<float>::quiet_NaN());
            b.upload(*buf, 0, nan.data(), n.nbytes());
            held.push_back(std::move(buf));
        }
    }
    b.synchronize();
}

struct In {
    int node;
    const void* data;
};

// Runs g on one backend and returns node `out`.
std::vector<float> run_on(Backend& b, const Graph& g, const std::vector<In>& ins, int out, KvCache* cache = nullptr) {
    Scheduler s({&b});
    Graph placed = s.place(g);
    poison(b, placed);
    std::vector<GraphInput> gi;
    for (const In& i : ins) gi.push_back({i.node, i.data});
    const int fetch[] = {out};
    return s.run(placed, gi, cache, fetch).take(out);
}

// CPU and CUDA results of node `out`; checks the CUDA result is finite and within `tol`
// normalised error of the CPU's.
void compare(Backend& gpu, const Graph& g, const std::vector<In>& ins, int out, double tol) {
    auto cpu = create_backend("cpu", {2});
    auto want = run_on(*cpu, g, ins, out);
    auto got = run_on(gpu, g, ins, out);
    REQUIRE(got.size() == want.size());
    CHECK(all_finite(got));
    CHECK(nmse_root(got, want) <= tol);
}

const TypeId kTypes[] = {TypeId::F32, TypeId::BF16, TypeId::F16};

}  // namespace

TEST_CASE("cuda: get_rows converts the embedding rows of the ids", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    for (TypeId t : kTypes)
        for (int64_t cols : {1, 33, 129, 4099})  // 4099: a row over several blocks
            for (int64_t T : {1, 3, 7}) {
                WeightStore s;
                const Weight& e = add_weight(s, "embd", t, {cols, 129}, randn(size_t(cols * 129), 1));
                Graph g;
                int ids = g.input("ids", DType::i32, T, 1);
                int y = g.get_rows("y", e, ids);
                std::vector<int32_t> iv;
                for (int64_t i = 0; i < T; ++i) iv.push_back(int32_t((i * 57 + 128) % 129));
                INFO(tname(t) << " cols " << cols << " T " << T);
                compare(*gpu, g, {{ids, iv.data()}}, y, 0.0);
            }
}

TEST_CASE("cuda: rms_norm, add, swiglu and view", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    for (TypeId t : kTypes)
        for (int64_t rows : {1, 3, 7})
            // 1536 and 7168: rows a cluster of blocks shares on sm_90 (fused.cu).
            for (int64_t cols : {1, 33, 129, 1536, 4099, 7168}) {
                WeightStore s;
                const Weight& gain = add_weight(s, "gain", t, {cols}, randn(size_t(cols), 2));
                auto av = randn(size_t(rows * cols), 3), bv = randn(size_t(rows * cols), 4);
                Graph g;
                int a = g.input("a", DType::f32, rows, cols);
                int b = g.input("b", DType::f32, rows, cols);
                int n = g.rms_norm("n", a, gain, 1e-6f);
                int sum = g.add("sum", a, b);
                int sw = g.swiglu("sw", a, b);
                const int64_t c0 = cols / 3, vc = std::max<int64_t>(1, cols / 2);
                int v = g.view("v", b, c0, vc);
                INFO(tname(t) << " rows " << rows << " cols " << cols);
                compare(*gpu, g, {{a, av.data()}, {b, bv.data()}}, n, 1e-6);
                compare(*gpu, g, {{a, av.data()}, {b, bv.data()}}, sum, 0.0);
                compare(*gpu, g, {{a, av.data()}, {b, bv.data()}}, sw, 1e-6);
                compare(*gpu, g, {{a, av.data()}, {b, bv.data()}}, v, 0.0);
            }
}

TEST_CASE("cuda: mul_mat and logits for every row count (GEMV and tiled paths)", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    const std::pair<int64_t, int64_t> shapes[] = {{1, 3}, {33, 7}, {64, 129}, {129, 33}, {256, 65}, {1000, 17}};
    for (TypeId t : kTypes)
        for (auto [in, out] : shapes)
            for (int64_t rows : {1, 2, 3, 4, 5, 8, 9, 33, 129}) {
                WeightStore s;
                const Weight& w = add_weight(s, "w", t, {in, out}, randn(size_t(in * out), 5));
                auto xv = randn(size_t(rows * in), 6);
                Graph g;
                int x = g.input("x", DType::f32, rows, in);
                int y = g.mul_mat("y", x, w);
                int l = g.logits("l", x, w, true);
                INFO(tname(t) << " in " << in << " out " << out << " rows " << rows);
                compare(*gpu, g, {{x, xv.data()}}, y, 1e-5);
                compare(*gpu, g, {{x, xv.data()}}, l, 1e-5);
            }
}

TEST_CASE("cuda: a large weight is used right after its upload on a fresh backend", "[cuda][ops]") {
    // Regression: the upload must be ordered before the kernels that read it (a
    // pageable copy on another stream may still be in flight).
    DS3_REQUIRE_CUDA(gpu);
    for (TypeId t : {TypeId::F32, TypeId::BF16}) {
        auto fresh = create_backend("cuda");
        const int64_t in = 4096, out = 4099;
        WeightStore s;
        const Weight& w = add_weight(s, "big", t, {in, out}, randn(size_t(in * out), 23));
        auto xv = randn(size_t(in), 24);
        Graph g;
        int x = g.input("x", DType::f32, 1, in);
        int y = g.mul_mat("y", x, w);
        INFO(tname(t));
        compare(*fresh, g, {{x, xv.data()}}, y, 1e-5);
    }
}

TEST_CASE("cuda: rope_yarn rotates every head's rope part, large positions included", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    auto table = std::make_shared<RopeTable>();
    for (int i = 0; i < 8; ++i) table->inv_freq.push_back(std::pow(10000.0f, -float(i) / 8.0f));
    table->attn_factor = 1.07f;
    for (int64_t T : {1, 3, 7}) {
        const int H = 3, hd = 24;
        auto xv = randn(size_t(T * H * hd), 7);
        std::vector<int32_t> pos;
        for (int64_t i = 0; i < T; ++i) pos.push_back(int32_t(i == 0 ? 100000 : i * 13));
        Graph g;
        int x = g.input("x", DType::f32, T, H * hd);
        int p = g.input("pos", DType::i32, T, 1);
        int y = g.rope_yarn("y", x, p, H, hd, 8, 16, table);
        INFO("T " << T);
        compare(*gpu, g, {{x, xv.data()}, {p, pos.data()}}, y, 1e-6);
    }
}

TEST_CASE("cuda: mla_attn over the latent cache, batches then decode steps", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    struct Case {
        int H, nope, rope, v_head, kv_lora;
        std::vector<int64_t> batches;
        TypeId t;
    };
    const Case cases[] = {
        {1, 12, 8, 10, 33, {7, 1, 3}, TypeId::F32},
        {3, 16, 8, 16, 64, {1, 1, 5}, TypeId::BF16},
        {9, 12, 4, 7, 129, {5, 1, 1}, TypeId::F16},
        {16, 32, 16, 32, 128, {600, 1, 9}, TypeId::BF16},  // long: several splits per query
        // V2-Lite's shape (16 heads, 512 + 64): two head groups, so decode steps of ~130
        // splits, which the merge takes in blocks of 64 latent dimensions.
        {16, 128, 64, 128, 512, {300, 1, 1}, TypeId::BF16},
        // DeepSeek-V3's shape (128 heads, 512 + 64): decode steps over a context of 300+.
        {128, 128, 64, 128, 512, {300, 1, 1, 3}, TypeId::BF16},
        // A partial head group, and decode splits of one position or none; then 32 head
        // groups, so that 3 queries get 2 splits of ~200 positions each.
        {12, 16, 16, 16, 64, {5, 1, 1, 2, 1}, TypeId::F32},
        {256, 16, 16, 16, 64, {401, 1, 3}, TypeId::F32},
        // Rows wider than DeepSeek's 576 (the split kernel's other instance) and a latent
        // wider than two dimensions a merge thread (the merge's form for many splits).
        {8, 16, 64, 16, 640, {40, 1, 1, 2}, TypeId::F32},
    };
    for (const Case& c : cases) {
        WeightStore s;
        const Weight& kb = add_weight(s, "kb", c.t, {c.nope, c.kv_lora, c.H}, randn(size_t(c.nope * c.kv_lora * c.H), 8, 0.3f));
        const Weight& vb = add_weight(s, "vb", c.t, {c.kv_lora, c.v_head, c.H}, randn(size_t(c.kv_lora * c.v_head * c.H), 9, 0.3f));
        int64_t n_ctx = 0;
        for (int64_t b : c.batches) n_ctx += b;
        KvCache cc(1, n_ctx, c.kv_lora, c.rope), gc(1, n_ctx, c.kv_lora, c.rope);
        auto cpu = create_backend("cpu", {2});
        int64_t pos0 = 0;
        uint32_t seed = 100;
        for (int64_t T : c.batches) {
            AttnParams p{c.H, c.nope, c.rope, c.v_head, c.kv_lora, 1.0f / std::sqrt(float(c.nope + c.rope)), pos0};
            Graph g;
            int q = g.input("q", DType::f32, T, c.H * (c.nope + c.rope));
            int lat = g.input("lat", DType::f32, T, c.kv_lora);
            int kpe = g.input("kpe", DType::f32, T, c.rope);
            int o = g.mla_attn("o", q, lat, kpe, kb, vb, p, 0);
            auto qv = randn(size_t(T * c.H * (c.nope + c.rope)), seed++);
            auto lv = randn(size_t(T * c.kv_lora), seed++);
            auto kv = randn(size_t(T * c.rope), seed++);
            const std::vector<In> ins = {{q, qv.data()}, {lat, lv.data()}, {kpe, kv.data()}};
            auto want = run_on(*cpu, g, ins, o, &cc);
            auto got = run_on(*gpu, g, ins, o, &gc);
            INFO("H " << c.H << " kv_lora " << c.kv_lora << " batch of " << T << " at " << pos0);
            CHECK(all_finite(got));
            CHECK(nmse_root(got, want) <= 2e-5);
            cc.advance(T);
            gc.advance(T);
            pos0 += T;
        }
    }
}

TEST_CASE("cuda: two-stream placement of a decode step's units (host only)", "[cuda][graph]") {
    // No GPU needed: BranchPlan is the decisions Branches carries out with events.
    struct Unit {
        std::vector<int> srcs;
        int stream, wait;
    };
    auto run = [](const std::vector<Unit>& units, int want_join) {
        cuda::BranchPlan plan;
        plan.begin(int(units.size()));
        for (int i = 0; i < int(units.size()); ++i) {
            const cuda::BranchPlan::Step st = plan.place(units[size_t(i)].srcs);
            INFO("unit " << i);
            CHECK(st.stream == units[size_t(i)].stream);
            CHECK(st.wait == units[size_t(i)].wait);
            plan.done(i, i);
        }
        CHECK(plan.join() == want_join);
        CHECK(plan.join() == -1);  // joined once
    };
    // A V3 MoE layer and the next layer's start: 0 attn_norm, 1 q_a, 2 q_norm, 3 q_b,
    // 4 RoPE(q), 5 kv_a, 6 kv_norm, 7 RoPE(k_pe), 8 mla_attn, 9 wo, 10 add + ffn_norm,
    // 11 route, 12 moe_ffn, 13 shared_ffn, 14 adds + attn_norm, 15 q_a, 16 kv_a.
    run({{{}, 0, -1},
         {{0}, 0, -1},
         {{1}, 0, -1},
         {{2}, 0, -1},
         {{3}, 0, -1},
         {{0}, 1, 0},  // the latent-KV path forks from attn_norm
         {{5}, 1, -1},
         {{5}, 1, -1},
         {{4, 6, 7}, 0, 7},  // attention waits for the KV path
         {{8}, 0, -1},
         {{9}, 0, -1},
         {{10}, 0, -1},
         {{10, 11}, 0, -1},
         {{10}, 1, 10},  // the shared experts beside routing and the routed experts
         {{12, 13, 9}, 0, 13},
         {{14}, 0, -1},
         {{14}, 1, 14}},  // the next layer forks again: stream 1 was waited for
        16);
    // A branch while the other stream is busy stays home; no branch, no join.
    run({{{}, 0, -1}, {{0}, 0, -1}, {{0}, 1, 0}, {{0}, 0, -1}, {{2, 3}, 0, 2}}, -1);
    run({{{}, 0, -1}, {{0}, 0, -1}, {{1}, 0, -1}}, -1);
}

TEST_CASE("cuda: a captured step puts independent branches on the second stream", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    // One layer's shape: x → q chain (1, 2) and, from x too, the kv chain (3, 4) → both
    // meet (5); then a branch from 5 (7) beside a chain on it (6), joined at the end.
    cudaStream_t s0 = nullptr, s1 = nullptr;
    REQUIRE(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess);
    void* buf = nullptr;
    REQUIRE(cudaMalloc(&buf, 8 * 256) == cudaSuccess);
    const std::vector<std::vector<int>> srcs = {{}, {0}, {1}, {0}, {3}, {2, 4}, {5}, {5}};
    const int want[] = {0, 0, 0, 1, 1, 0, 0, 1};
    std::vector<int> got;
    {
        cuda::Branches b;
        REQUIRE(cudaStreamBeginCapture(s0, cudaStreamCaptureModeRelaxed) == cudaSuccess);
        b.begin(s0, s1, int(srcs.size()));
        for (int i = 0; i < int(srcs.size()); ++i) {
            cudaStream_t s = b.place(srcs[size_t(i)]);
            got.push_back(s == s0 ? 0 : s == s1 ? 1 : -1);
            // Node i writes its own slot: the replay must run every node.
            REQUIRE(cudaMemsetAsync(static_cast<uint8_t*>(buf) + 256 * i, i + 1, 256, s) == cudaSuccess);
            b.done(i, i);
        }
        b.join();
        cudaGraph_t graph = nullptr;
        // Fails ("unjoined") if stream 1's work were not joined back into stream 0.
        REQUIRE(cudaStreamEndCapture(s0, &graph) == cudaSuccess);
        size_t n = 0;
        REQUIRE(cudaGraphGetNodes(graph, nullptr, &n) == cudaSuccess);
        CHECK(n >= srcs.size());
        cudaGraphExec_t exec = nullptr;
        REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
        REQUIRE(cudaGraphLaunch(exec, s0) == cudaSuccess);
        REQUIRE(cudaStreamSynchronize(s0) == cudaSuccess);
        std::vector<uint8_t> host(8 * 256);
        REQUIRE(cudaMemcpy(host.data(), buf, host.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
        for (int i = 0; i < 8; ++i) CHECK(int(host[size_t(256 * i + 255)]) == i + 1);
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
    }
    CHECK(got == std::vector<int>(std::begin(want), std::end(want)));
    cudaFree(buf);
    cudaStreamDestroy(s1);
    cudaStreamDestroy(s0);
}

// Host-only (CI too): the split kernel holds two blocks an SM, so a plan must not ask for
// more than that where the context allows (rounding the split count up once put 8 of 272
// blocks in a second wave on the H200's 132 SMs), and a split never holds more than 512
// positions (its scores live in shared memory).
TEST_CASE("cuda: MLA plans fill the SMs at most once and bound each split", "[cuda][mla]") {
    for (int n_sm : {1, 80, 114, 132})
        for (int n_head : {3, 16, 128})
            for (int64_t T : {1, 2, 8, 64})
                for (int64_t n : {1, 31, 512, 4096, 163840}) {
                    const int64_t groups = (n_head + 7) / 8, per_split = groups * T;
                    const int64_t fit = 2 * n_sm / per_split;  // splits two blocks an SM allow
                    for (bool decode : {true, false}) {
                        if (decode && T > 8) continue;
                        const cuda::MlaPlan p = decode ? cuda::mla_plan_decode(n_head, T, n, 512, n_sm)
                                                       : cuda::mla_plan(n_head, T, n, 512, n_sm);
                        INFO((decode ? "decode" : "prefill") << " n_sm " << n_sm << " heads " << n_head << " T " << T
                                                             << " positions " << n);
                        REQUIRE(p.n_split >= 1);
                        CHECK(int64_t(p.chunk_cap) * p.n_split >= n);
                        CHECK(p.chunk_cap <= 512);
                        if (fit >= 1 && (n + 511) / 512 <= fit) CHECK(per_split * p.n_split <= 2 * n_sm);
                    }
                }
}

TEST_CASE("cuda: moe_route picks the CPU's experts and weights (V3 and V2 methods)", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    struct Case {
        ScoringFunc sf;
        TopkMethod m;
        int E, k, n_group, topk_group;
        bool norm;
    };
    const Case cases[] = {
        {ScoringFunc::sigmoid, TopkMethod::noaux_tc, 256, 8, 8, 4, true},
        {ScoringFunc::sigmoid, TopkMethod::noaux_tc, 15, 4, 5, 2, true},
        {ScoringFunc::softmax, TopkMethod::greedy, 64, 6, 1, 1, false},
        {ScoringFunc::softmax, TopkMethod::group_limited_greedy, 160, 6, 8, 3, false},
        {ScoringFunc::softmax, TopkMethod::greedy, 7, 3, 1, 1, true},
    };
    for (const Case& c : cases)
        for (int64_t T : {1, 9}) {
            const int64_t D = 33;
            WeightStore s;
            const Weight& gate = add_weight(s, "gate", TypeId::F32, {D, c.E}, randn(size_t(D * c.E), 10));
            const Weight& bias = add_weight(s, "bias", TypeId::F32, {c.E}, randn(size_t(c.E), 11, 0.2f));
            RouteParams p{c.E, c.k, c.n_group, c.topk_group, c.sf, c.m, c.norm, 2.5f};
            Graph g;
            int x = g.input("x", DType::f32, T, D);
            int r = g.moe_route("r", x, gate, c.sf == ScoringFunc::sigmoid ? &bias : nullptr, p);
            auto xv = randn(size_t(T * D), 12);
            auto cpu = create_backend("cpu", {2});
            auto want = run_on(*cpu, g, {{x, xv.data()}}, r);
            auto got = run_on(*gpu, g, {{x, xv.data()}}, r);
            INFO("E " << c.E << " k " << c.k << " method " << int(c.m) << " T " << T);
            REQUIRE(got.size() == want.size());
            CHECK(all_finite(got));
            for (int64_t t = 0; t < T; ++t)
                for (int j = 0; j < c.k; ++j) {
                    const size_t w = size_t(t * 2 * c.k + j), id = w + size_t(c.k);
                    CHECK(got[id] == want[id]);
                    CHECK(got[w] == Approx(want[w]).epsilon(1e-5));
                }
        }
}

// Ties everywhere: a zero router leaves every score at sigmoid(0) and the correction bias
// takes four values, so groups tie on their best two and experts on their choice values;
// the GPU's warp-per-group scores and kept-groups-only ranking must break them as the
// CPU's sequential top-k does (lower index first).
TEST_CASE("cuda: moe_route breaks ties as the CPU does", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    for (auto [E, k, G, keep] : {std::array<int, 4>{256, 8, 8, 4}, {160, 6, 8, 3}, {64, 8, 4, 2}}) {
        const int64_t T = 3, D = 32;
        WeightStore s;
        std::vector<float> bv(static_cast<size_t>(E));
        for (int e = 0; e < E; ++e) bv[size_t(e)] = 0.25f * float((e * 7 + e / 5) % 4);
        const Weight& gate = add_weight(s, "gate", TypeId::F32, {D, E}, std::vector<float>(size_t(D * E), 0.0f));
        const Weight& bias = add_weight(s, "bias", TypeId::F32, {E}, bv);
        RouteParams p{E, k, G, keep, ScoringFunc::sigmoid, TopkMethod::noaux_tc, true, 2.5f};
        Graph g;
        int x = g.input("x", DType::f32, T, D);
        int r = g.moe_route("r", x, gate, &bias, p);
        auto xv = randn(size_t(T * D), 13);
        auto cpu = create_backend("cpu", {2});
        auto want = run_on(*cpu, g, {{x, xv.data()}}, r);
        auto got = run_on(*gpu, g, {{x, xv.data()}}, r);
        INFO("E " << E << " k " << k << " groups " << G << " kept " << keep);
        REQUIRE(got.size() == want.size());
        for (int64_t t = 0; t < T; ++t)
            for (int j = 0; j < k; ++j) {
                const size_t w = size_t(t * 2 * k + j), id = w + size_t(k);
                CHECK(got[id] == want[id]);
                CHECK(got[w] == Approx(want[w]).epsilon(1e-6));
            }
    }
}

TEST_CASE("cuda: moe_ffn (decode pairs and grouped prefill), expert subsets, shared_ffn", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    const int E = 6, k = 2;
    for (TypeId t : kTypes)
        for (auto [D, F] : {std::pair<int64_t, int64_t>{33, 17}, {64, 128}})
            for (int64_t T : {1, 3, 9, 33}) {
                WeightStore s;
                const Weight& gate = add_weight(s, "g", t, {D, F, E}, randn(size_t(D * F * E), 13, 0.3f));
                const Weight& up = add_weight(s, "u", t, {D, F, E}, randn(size_t(D * F * E), 14, 0.3f));
                const Weight& down = add_weight(s, "d", t, {F, D, E}, randn(size_t(F * D * E), 15, 0.3f));
                const Weight& sg = add_weight(s, "sg", t, {D, F}, randn(size_t(D * F), 16, 0.3f));
                const Weight& su = add_weight(s, "su", t, {D, F}, randn(size_t(D * F), 17, 0.3f));
                const Weight& sd = add_weight(s, "sd", t, {F, D}, randn(size_t(F * D), 18, 0.3f));
                RouteParams p{E, k, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
                // Hand-made routes: experts repeat across tokens (grouping), weights vary.
                std::vector<float> route(size_t(T * 2 * k));
                for (int64_t i = 0; i < T; ++i)
                    for (int j = 0; j < k; ++j) {
                        route[size_t(i * 2 * k + j)] = 0.25f + 0.5f * float(j) + 0.01f * float(i);
                        route[size_t(i * 2 * k + k + j)] = float((i * 5 + j * 3) % E);
                    }
                auto xv = randn(size_t(T * D), 19);
                for (bool subset : {false, true}) {
                    Graph g;
                    int x = g.input("x", DType::f32, T, D);
                    int r = g.input("r", DType::f32, T, 2 * k);
                    int m = g.moe_ffn("m", x, r, gate, up, down, p);
                    if (subset) g.node(m).experts = {1, 0, 1, 1, 0, 0};
                    int sh = g.shared_ffn("sh", x, sg, su, sd);
                    INFO(tname(t) << " D " << D << " F " << F << " T " << T << (subset ? " subset" : ""));
                    compare(*gpu, g, {{x, xv.data()}, {r, route.data()}}, m, 1e-5);
                    compare(*gpu, g, {{x, xv.data()}, {r, route.data()}}, sh, 1e-5);
                }
            }
}

// Many slots a token (70 of 80 experts, more than any release uses), one expert masked out:
// the decode pairs (one token) and the grouped prefill (nine) against the CPU.
TEST_CASE("cuda: moe_ffn with 70 slots a token and a masked expert", "[cuda][ops]") {
    DS3_REQUIRE_CUDA(gpu);
    const int E = 80, k = 70;
    const int64_t D = 33, F = 17;
    WeightStore s;
    const Weight& gate = add_weight(s, "g", TypeId::F32, {D, F, E}, randn(size_t(D * F * E), 23, 0.3f));
    const Weight& up = add_weight(s, "u", TypeId::F32, {D, F, E}, randn(size_t(D * F * E), 24, 0.3f));
    const Weight& down = add_weight(s, "d", TypeId::F32, {F, D, E}, randn(size_t(F * D * E), 25, 0.3f));
    RouteParams p{E, k, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
    for (int64_t T : {1, 9}) {
        std::vector<float> route(size_t(T * 2 * k));
        for (int64_t i = 0; i < T; ++i)
            for (int j = 0; j < k; ++j) {
                route[size_t(i * 2 * k + j)] = 0.01f * float(j + 1) + 0.001f * float(i);
                route[size_t(i * 2 * k + k + j)] = float((i * 7 + j) % E);
            }
        auto xv = randn(size_t(T * D), 26);
        Graph g;
        int x = g.input("x", DType::f32, T, D);
        int r = g.input("r", DType::f32, T, 2 * k);
        int m = g.moe_ffn("m", x, r, gate, up, down, p);
        g.node(m).experts.assign(size_t(E), 1);
        g.node(m).experts[3] = 0;
        INFO("T " << T);
        compare(*gpu, g, {{x, xv.data()}, {r, route.data()}}, m, 1e-5);
    }
}

// A decode-sized step is run node by node, then captured, then replayed: its inputs reach
// the replay through the step's pinned slots (copied by the graph itself), and an error a
// replayed kernel records comes back in the step's one wait.
TEST_CASE("cuda: a replayed step reads new inputs and reports a bad id", "[cuda][errors][graph]") {
    DS3_REQUIRE_CUDA(gpu);
    WeightStore s;
    auto ev = randn(45, 23);
    const Weight& e = add_weight(s, "embd", TypeId::F32, {5, 9}, ev);
    Graph g;
    int ids = g.input("ids", DType::i32, 1, 1);
    int y = g.get_rows("y", e, ids);
    auto row = [&](int i) { return std::vector<float>(ev.begin() + 5 * i, ev.begin() + 5 * i + 5); };
    for (int32_t id : {1, 4, 7, 2, 8})  // the first run records, the second captures, then replays
        CHECK(run_on(*gpu, g, {{ids, &id}}, y) == row(id));
    const int32_t bad = 9;
    try {
        run_on(*gpu, g, {{ids, &bad}}, y);
        FAIL("no error for token id 9 in a replayed step");
    } catch (const Error& err) {
        CHECK(std::string(err.what()).find("token id 9 outside [0, 9)") != std::string::npos);
    }
    const int32_t good = 6;
    CHECK(run_on(*gpu, g, {{ids, &good}}, y) == row(good));
}

TEST_CASE("cuda: bad ids are reported, unsupported weights fall back to the CPU", "[cuda][errors]") {
    DS3_REQUIRE_CUDA(gpu);
    WeightStore s;
    const Weight& e = add_weight(s, "embd", TypeId::F32, {5, 9}, randn(45, 20));
    Graph g;
    int ids = g.input("ids", DType::i32, 2, 1);
    int y = g.get_rows("y", e, ids);
    const int32_t bad[] = {3, 9};
    try {
        run_on(*gpu, g, {{ids, bad}}, y);
        FAIL("no error for token id 9");
    } catch (const Error& err) {
        CHECK(std::string(err.what()).find("token id 9 outside [0, 9)") != std::string::npos);
    }
    // The backend stays usable after a reported error.
    const int32_t good[] = {3, 8};
    CHECK(all_finite(run_on(*gpu, g, {{ids, good}}, y)));

    for (int64_t T : {1, 9}) {
        std::string gn = "g", dn_name = "d";
        gn += std::to_string(T);
        dn_name += std::to_string(T);
        const Weight& gt = add_weight(s, gn, TypeId::F32, {4, 3, 2}, randn(24, 21));
        const Weight& dn = add_weight(s, dn_name, TypeId::F32, {3, 4, 2}, randn(24, 22));
        RouteParams p{2, 1, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
        Graph m;
        int x = m.input("x", DType::f32, T, 4);
        int r = m.input("r", DType::f32, T, 2);
        int o = m.moe_ffn("o", x, r, gt, gt, dn, p);
        std::vector<float> xv(size_t(T * 4), 1.0f), rv;
        for (int64_t i = 0; i < T; ++i) rv.insert(rv.end(), {1.0f, i == 0 ? 7.0f : 1.0f});
        INFO("T " << T);
        try {
            run_on(*gpu, m, {{x, xv.data()}, {r, rv.data()}}, o);
            FAIL("no error for expert id 7");
        } catch (const Error& err) {
            CHECK(std::string(err.what()).find("expert id 7") != std::string::npos);
        }
    }

    // An IQ2_XXS matrix (no device decoder): the CUDA backend declines it, the scheduler
    // places it on the CPU.
    std::vector<uint8_t> iq(66 * 3, 0);
    const Weight& wq = s.add_owned("wq", TypeId::IQ2_XXS, {256, 3}, iq);
    Graph h;
    int x = h.input("x", DType::f32, 1, 256);
    int mm = h.mul_mat("mm", x, wq);
    CHECK_FALSE(gpu->supports(h.node(mm)));
    auto cpu = create_backend("cpu", {1});
    Scheduler sched({gpu.get(), cpu.get()});
    if (cpu->supports(h.node(mm))) {
        CHECK(sched.place(h).node(mm).backend == 1);
    } else {
        CHECK_THROWS_WITH(sched.place(h), Catch::Contains("no backend supports op mul_mat"));
    }
}

TEST_CASE("cuda: create_backend(\"cuda\") is listed and named", "[cuda]") {
    DS3_REQUIRE_CUDA(gpu);
    CHECK(gpu->name() == "cuda");
    const auto names = available_backends();
    CHECK(std::find(names.begin(), names.end(), "cuda") != names.end());
}

TEST_CASE("cuda: without a device, create_backend(\"cuda\") says why", "[cuda][errors]") {
    if (cuda_device_count() > 0) return;  // the GPU cases above cover the other branch
    CHECK_THROWS_WITH(create_backend("cuda"), Catch::Contains("[cuda] no CUDA device is available"));
}
