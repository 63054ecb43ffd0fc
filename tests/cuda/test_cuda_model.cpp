// Whole models on the CUDA backend: the random in-memory models of tests/runtime
// (tiny_model), batch and token by token, against the CPU; experts split between the
// GPU and the CPU.
#include <catch2/catch.hpp>

#include <cstring>
#include <utility>

#include "backends/cuda/cuda_backend_impl.h"
#include "cuda_test.h"
#include "models/runner.h"
#include "tiny_model.h"

using namespace ds3;
using namespace ds3::test;

TEST_CASE("cuda: tiny models give the CPU's logits, batch and token by token", "[cuda][model]") {
    DS3_REQUIRE_CUDA(gpu);
    auto cpu = create_backend("cpu", {2});
    TinyOptions o;
    SECTION("V3 layout, F32") {}
    SECTION("BF16 weights") { o.matrix_type = TypeId::BF16; }
    SECTION("F16 weights") { o.matrix_type = TypeId::F16; }
    SECTION("no q_lora, V2 routing") {
        o.q_lora = false;
        o.v2_routing = true;
    }
    SECTION("attn_kv_b layout") { o.kv_b_only = true; }
    Deepseek2Model m = tiny_model(o);
    auto want = run_batch(m, {cpu.get()});
    auto batch = run_batch(m, {gpu.get()});
    auto inc = run_incremental(m, {gpu.get()});
    CHECK(all_finite(batch));
    CHECK(all_finite(inc));
    CHECK(max_diff(batch, want) < 1e-4f);
    CHECK(max_diff(inc, want) < 1e-4f);
}

TEST_CASE("cuda: experts split between the GPU and the CPU give the unsplit logits", "[cuda][model][sched]") {
    DS3_REQUIRE_CUDA(gpu);
    auto cpu = create_backend("cpu", {2});
    Deepseek2Model m = tiny_model({TypeId::BF16});
    ExpertPlacement pl;
    pl.expert_backend.resize(size_t(m.hp.n_layer));
    pl.expert_backend[1] = {1, 0, 0, 1, 1, 0, 1, 0};
    pl.expert_backend[2] = std::vector<int>(size_t(m.hp.n_expert), 1);
    auto want = run_batch(m, {cpu.get()});
    CHECK(max_diff(run_batch(m, {gpu.get(), cpu.get()}, pl), want) < 1e-4f);
    CHECK(max_diff(run_incremental(m, {gpu.get(), cpu.get()}, pl), want) < 1e-4f);
}

namespace {

// Decodes the tiny prompt token by token, then in 2-token batches, resets and decodes
// again: every step's logits, in order.
std::vector<float> decode_steps(const Deepseek2Model& m, Backend& b) {
    Runner r(m, {&b}, 64);
    std::vector<float> all;
    auto add = [&](std::span<const int32_t> t) {
        auto l = r.eval(t, true);
        all.insert(all.end(), l.begin(), l.end());
    };
    for (int32_t t : kTinyPrompt) add(std::span<const int32_t>(&t, 1));
    for (size_t i = 0; i + 1 < kTinyPrompt.size(); i += 2) add(std::span<const int32_t>(kTinyPrompt.data() + i, 2));
    r.reset();
    for (int32_t t : kTinyPrompt) add(std::span<const int32_t>(&t, 1));
    return all;
}

}  // namespace

TEST_CASE("cuda: decode steps replayed from CUDA graphs equal node-by-node runs bit for bit", "[cuda][model][graph]") {
    DS3_REQUIRE_CUDA(gpu);
    TinyOptions o;
    SECTION("F32, V3 layout") {}
    SECTION("BF16, no q_lora, V2 routing") {
        o.matrix_type = TypeId::BF16;
        o.q_lora = false;
        o.v2_routing = true;
    }
    Deepseek2Model m = tiny_model(o);
    auto on = cuda_with_graphs(true), off = cuda_with_graphs(false);
    const auto want = decode_steps(m, *off);
    const auto got = decode_steps(m, *on);
    CHECK(all_finite(got));
    CHECK(max_diff(got, want) == 0.0f);
    // The logits written by the output head straight into the step's pinned slot (mapped;
    // the default) are those copied there after the step.
    {
        EnvGuard copy("DS3_CUDA_MAPPED_OUT", "0");
        auto copying = cuda_with_graphs(true);
        CHECK(max_diff(decode_steps(m, *copying), got) == 0.0f);
    }
    // eval_last hands back the replayed step's pinned slot: each view holds that step's
    // logits (not the next step's, which reuses the slot) until the next eval.
    {
        Runner viewed(m, {on.get()}, 64), copied(m, {off.get()}, 64);
        for (int32_t t : kTinyPrompt) {
            const std::span<const int32_t> one(&t, 1);
            const std::span<const float> v = viewed.eval_last(one);
            const std::vector<float> c = copied.eval(one, false);
            REQUIRE(v.size() == c.size());
            CHECK(std::memcmp(v.data(), c.data(), c.size() * sizeof(float)) == 0);
        }
    }
    // The CPU agrees too (the replayed steps are not just self-consistent).
    auto cpu = create_backend("cpu", {2});
    CHECK(max_diff(run_incremental(m, {on.get()}), run_incremental(m, {cpu.get()})) < 1e-4f);
}

// Host only (CI too): a replayed step's key from its nodes ignores the position (each
// step's graph is the same but for it) and follows every other field; the backend keeps it
// for the graph's version (graph.h), so each change here also takes a new version.
TEST_CASE("cuda: the replay key of a step's nodes ignores the position and follows the rest", "[cuda][graph]") {
    const Deepseek2Model m = tiny_model({});
    Graph g = build_graph(m, {1, 5, false});
    const uint64_t k0 = cuda::graph_nodes_key(g);
    CHECK(cuda::graph_nodes_key(Graph(g)) == k0);
    g.set_attn_pos0(9);
    CHECK(cuda::graph_nodes_key(g) == k0);
    auto changed = [&](auto&& edit) {
        Graph h = build_graph(m, {1, 5, false});
        const uint64_t v = h.version();
        edit(h);
        return h.version() != v && cuda::graph_nodes_key(h) != k0;
    };
    const int mla = g.find("l0.attn_ctx"), norm = g.find("l0.attn_norm");
    int moe = -1;
    for (int i = 0; i < g.size() && moe < 0; ++i)
        if (std::as_const(g).node(i).op == Op::moe_ffn) moe = i;
    REQUIRE(mla >= 0);
    REQUIRE(norm >= 0);
    REQUIRE(moe >= 0);
    CHECK(changed([&](Graph& h) { h.node(norm).eps *= 2.0f; }));
    CHECK(changed([&](Graph& h) { h.node(mla).attn.scale *= 2.0f; }));
    CHECK(changed([&](Graph& h) { h.node(norm).w[0] = h.node(mla).w[0]; }));
    CHECK(changed([&](Graph& h) { h.node(norm).src[0] = 0; }));
    CHECK(changed([&](Graph& h) { h.node(moe).experts.assign(size_t(m.hp.n_expert), 1); }));
    Graph h = build_graph(m, {1, 5, false});
    CHECK(cuda::graph_nodes_key(h) == k0);  // built alike: the same key, though a new version
}

// Host only (CI too): in a decode step's graph each layer's query RoPE leads to its MLA
// node, so that a replayed step launches the store and k_b ahead (cuda_step.cpp); a batch
// of two, or a query also read by another node, keeps the MLA node whole.
TEST_CASE("cuda: a decode step's MLA nodes are found from their query's RoPE", "[cuda][graph]") {
    for (bool q_lora : {true, false}) {
        TinyOptions o;
        o.q_lora = q_lora;
        const Deepseek2Model m = tiny_model(o);
        const Graph g = build_graph(m, {1, 5, false});
        for (int64_t il = 0; il < m.hp.n_layer; ++il) {
            std::string l = "l";  // appended piecewise: GCC 12 warns falsely on "l" + std::string
            l += std::to_string(il);
            l += '.';
            INFO(l << " q_lora " << q_lora);
            const int rope_q = g.find(l + "q_roped"), mla = g.find(l + "attn_ctx");
            REQUIRE(rope_q >= 0);
            REQUIRE(mla > rope_q);
            CHECK(cuda::mla_early_node(g, rope_q) == mla);
            const cuda::MlaLatent lt = cuda::mla_latent_nodes(g, mla);
            CHECK(lt.lat == g.find(l + "kv_latent"));
            CHECK(lt.kpe == g.find(l + "k_pe"));
            CHECK(cuda::mla_early_node(g, g.find(l + "k_pe")) == -1);  // the key's RoPE is not a query
            CHECK(cuda::mla_early_node(g, mla) == -1);
        }
        const Graph g2 = build_graph(m, {2, 5, false});
        CHECK(cuda::mla_early_node(g2, g2.find("l0.q_roped")) == -1);
        // An MoE layer's shared experts wait for its routing; a dense layer's MLP waits for nothing.
        int moe_layers = 0;
        for (int64_t il = 0; il < m.hp.n_layer; ++il) {
            std::string l = "l";
            l += std::to_string(il);
            l += '.';
            const int route = g.find(l + "moe_route"), sh = g.find(l + (route >= 0 ? "shexp_out" : "ffn_out"));
            REQUIRE(sh >= 0);
            CHECK(cuda::shared_after_route(g, sh) == route);
            // The tiny model's shared experts (14) are wide next to its 3 routed ones of 14.
            CHECK(cuda::shared_ffn_wide(g, sh) == (route >= 0));
            moe_layers += route >= 0;
        }
        CHECK(moe_layers > 0);
    }
    // Shared experts of width 4 next to 2 routed experts of 8 are not wide (V3's ratio:
    // they start beside the router); of width 5, they are.
    {
        WeightStore s;
        auto w = [&](const std::string& name, std::vector<int64_t> ne) -> const Weight& {
            int64_t n = 1;
            for (int64_t d : ne) n *= d;
            return s.add_owned(name, TypeId::F32, ne, std::vector<uint8_t>(size_t(n) * 4));
        };
        const RouteParams rp{8, 2, 1, 1, ScoringFunc::sigmoid, TopkMethod::greedy, false, 1.0f};
        for (int64_t fs : {4, 5}) {
            const std::string f = std::to_string(fs);
            Graph g;
            const int x = g.input("x", DType::f32, 1, 16);
            const int r = g.moe_route("r", x, w("inp" + f, {16, 8}), nullptr, rp);
            g.moe_ffn("m", x, r, w("g" + f, {16, 8, 8}), w("u" + f, {16, 8, 8}), w("d" + f, {8, 16, 8}), rp);
            const int sh = g.shared_ffn("sh", x, w("sg" + f, {16, fs}), w("su" + f, {16, fs}), w("sd" + f, {fs, 16}));
            INFO("shared width " << fs);
            CHECK(cuda::shared_ffn_wide(g, sh) == (fs == 5));
            CHECK(cuda::shared_after_route(g, sh) == r);
            CHECK_FALSE(cuda::shared_ffn_wide(g, x));
        }
    }
    // One layer's MLA by hand: found; not when the roped query is also read before the MLA
    // node, nor without the positions input.
    const Deepseek2Model m = tiny_model();
    const Deepseek2HParams& hp = m.hp;
    const Deepseek2Layer& L = m.layers[0];
    const int H = int(hp.n_head), nope = int(hp.qk_nope), rope = int(hp.qk_rope);
    AttnParams ap{H, nope, rope, int(hp.v_head), int(hp.kv_lora), hp.softmax_scale(), 3};
    for (int variant = 0; variant < 3; ++variant) {
        Graph g;
        const int q = g.input("q", DType::f32, 1, H * (nope + rope)), ps = g.input("pos", DType::i32, 1, 1);
        const int lat = g.input("lat", DType::f32, 1, hp.kv_lora), kpe = g.input("kpe", DType::f32, 1, rope);
        const int qr = g.rope_yarn("q_roped", q, ps, H, nope + rope, nope, rope, m.rope);
        if (variant == 1) g.view("peek", qr, 0, 8);
        const int o = g.mla_attn("o", qr, lat, kpe, *L.k_b, *L.v_b, ap, 0, variant == 2 ? -1 : ps);
        INFO("variant " << variant);
        CHECK(cuda::mla_early_node(g, qr) == (variant == 0 ? o : -1));
        CHECK(cuda::mla_latent_nodes(g, o).lat == -1);  // lat and kpe are inputs here
    }
    // The latent side on views of one kv_a row: found; not when another node reads the
    // latent, nor when the key's RoPE reads a row of its own.
    for (int variant = 0; variant < 3; ++variant) {
        Graph g;
        const int q = g.input("q", DType::f32, 1, H * (nope + rope)), ps = g.input("pos", DType::i32, 1, 1);
        const int kv = g.input("kv", DType::f32, 1, hp.kv_lora + rope), k2 = g.input("k2", DType::f32, 1, rope);
        const int qr = g.rope_yarn("q_roped", q, ps, H, nope + rope, nope, rope, m.rope);
        const int lat = g.rms_norm("kv_latent", g.view("kv_c", kv, 0, hp.kv_lora), *L.kv_a_norm, hp.rms_eps);
        const int kraw = variant == 2 ? k2 : g.view("k_pe_raw", kv, hp.kv_lora, rope);
        const int kpe = g.rope_yarn("k_pe", kraw, ps, 1, rope, 0, rope, m.rope);
        if (variant == 1) g.view("peek", lat, 0, 8);
        const int o = g.mla_attn("o", qr, lat, kpe, *L.k_b, *L.v_b, ap, 0, ps);
        INFO("latent variant " << variant);
        CHECK(cuda::mla_early_node(g, qr) == o);
        const cuda::MlaLatent lt = cuda::mla_latent_nodes(g, o);
        CHECK(lt.lat == (variant == 0 ? lat : -1));
        CHECK(lt.kpe == (variant == 0 ? kpe : -1));
    }
}

TEST_CASE("cuda: two models on one backend keep their own decode graphs", "[cuda][model][graph]") {
    DS3_REQUIRE_CUDA(gpu);
    Deepseek2Model a = tiny_model({TypeId::F32}), b = tiny_model({TypeId::BF16});
    auto cpu = create_backend("cpu", {2});
    Runner ra(a, {gpu.get()}, 64), rb(b, {gpu.get()}, 64), ca(a, {cpu.get()}, 64), cb(b, {cpu.get()}, 64);
    float worst = 0;
    for (int32_t t : kTinyPrompt) {
        const std::span<const int32_t> one(&t, 1);
        worst = std::max(worst, max_diff(ra.eval(one, true), ca.eval(one, true)));
        worst = std::max(worst, max_diff(rb.eval(one, true), cb.eval(one, true)));
    }
    CHECK(worst < 1e-4f);
}
