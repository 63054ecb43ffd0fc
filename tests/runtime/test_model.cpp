// The executor on in-memory random models: batch vs incremental, experts split across
// two CPU backends, the MLA layouts, the context limit and the error paths.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "backends/backend.h"
#include "backends/cpu/cpu_backend.h"
#include "models/runner.h"
#include "quantize/float.h"
#include "runtime/error.h"
#include "tiny_model.h"

using namespace ds3;
using namespace ds3::test;

namespace {

// A CPU backend that refuses nodes with BF16 weights, to exercise fallback placement.
class PickyBackend final : public Backend {
public:
    PickyBackend() : inner_(make_cpu_backend({}, "picky")) {}
    const std::string& name() const override { return inner_->name(); }
    bool supports(const Node& n) const override {
        for (const Weight* w : n.w)
            if (w->type == TypeId::BF16) return false;
        return inner_->supports(n);
    }
    std::unique_ptr<Buffer> alloc(size_t n) override { return inner_->alloc(n); }
    void upload(Buffer& d, size_t o, const void* s, size_t n) override { inner_->upload(d, o, s, n); }
    void download(const Buffer& s, size_t o, void* d, size_t n) override { inner_->download(s, o, d, n); }
    void compute(const Node& n, std::span<Buffer* const> in, Buffer& out, Buffer* st) override {
        ++computed;
        inner_->compute(n, in, out, st);
    }
    int computed = 0;

private:
    std::unique_ptr<Backend> inner_;
};

}  // namespace

TEST_CASE("batch and token-by-token decoding give the same logits", "[model]") {
    auto cpu = create_backend("cpu", {2});
    TinyOptions o;
    SECTION("V3 layout, F32") {}
    SECTION("BF16 weights") { o.matrix_type = TypeId::BF16; }
    SECTION("F16 weights") { o.matrix_type = TypeId::F16; }
    SECTION("no q_lora, V2 routing") {
        o.q_lora = false;
        o.v2_routing = true;
    }
    Deepseek2Model m = tiny_model(o);
    auto batch = run_batch(m, {cpu.get()});
    auto inc = run_incremental(m, {cpu.get()});
    REQUIRE(batch.size() == kTinyPrompt.size() * size_t(m.hp.n_vocab));
    for (float v : batch) REQUIRE(std::isfinite(v));
    CHECK(max_diff(batch, inc) < 1e-5f);
    // Logits of the last token only, from a prefix then a continuation batch.
    Runner r(m, {cpu.get()}, 64);
    r.eval(std::span<const int32_t>(kTinyPrompt.data(), 4), false);
    auto last = r.eval(std::span<const int32_t>(kTinyPrompt.data() + 4, kTinyPrompt.size() - 4), false);
    std::vector<float> want(batch.end() - m.hp.n_vocab, batch.end());
    CHECK(max_diff(last, want) < 1e-5f);
    CHECK(r.n_past() == int64_t(kTinyPrompt.size()));
}

TEST_CASE("Fetched: values owned or viewed, and a node never fetched is an error", "[sched]") {
    Fetched f;
    const std::vector<float> backing = {4.0f, 5.0f};
    f.owned[3] = {1.0f, 2.0f, 3.0f};
    f.viewed[7] = std::span<const float>(backing);
    CHECK(f.at(3).size() == 3);
    CHECK(f.at(7).data() == backing.data());  // a view, not a copy
    const std::vector<float> copied = f.take(7);
    CHECK(copied == backing);
    CHECK(copied.data() != backing.data());
    CHECK(f.take(3) == std::vector<float>{1.0f, 2.0f, 3.0f});  // moved out
    try {
        f.at(5);
        FAIL("no error for a node never fetched");
    } catch (const Error& e) {
        CHECK(std::string(e.what()) == "[sched] node 5 was not fetched");
    }
}

TEST_CASE("eval_last views the logits eval copies, until the next eval", "[model]") {
    auto cpu = create_backend("cpu", {2});
    Deepseek2Model m = tiny_model({TypeId::F32});
    Runner viewed(m, {cpu.get()}, 64), copied(m, {cpu.get()}, 64);
    const std::span<const int32_t> prompt(kTinyPrompt.data(), 3);
    std::span<const float> v = viewed.eval_last(prompt);
    std::vector<float> c = copied.eval(prompt, false);
    for (size_t i = 3; i <= kTinyPrompt.size(); ++i) {
        INFO("position " << i);
        REQUIRE(v.size() == size_t(m.hp.n_vocab));
        CHECK(std::memcmp(v.data(), c.data(), c.size() * sizeof(float)) == 0);
        if (i == kTinyPrompt.size()) break;
        v = viewed.eval_last(std::span<const int32_t>(&kTinyPrompt[i], 1));
        c = copied.eval(std::span<const int32_t>(&kTinyPrompt[i], 1), false);
    }
    CHECK(viewed.n_past() == copied.n_past());
    // A batch that cannot run leaves no stale view behind it to read.
    CHECK_THROWS_AS(viewed.eval_last(std::span<const int32_t>()), Error);
}

TEST_CASE("a runner's reused graphs give the logits of freshly built ones at every position", "[model]") {
    // Without dumps the runner keeps one placed graph per batch shape and only moves the
    // position on; with a dump it builds and places afresh. Both must agree exactly, over
    // 1- and 2-token batches, across a reset, and with the other shape interleaved.
    auto cpu = create_backend("cpu", {2});
    Deepseek2Model m = tiny_model({TypeId::F32});
    Runner reused(m, {cpu.get()}, 64), fresh(m, {cpu.get()}, 64);
    const std::vector<std::string> dump = {"embd"};
    std::map<std::string, std::vector<float>> dumped;
    auto step = [&](std::span<const int32_t> t) {
        const auto a = reused.eval(t, true);
        const auto b = fresh.eval(t, true, dump, &dumped);
        REQUIRE(a.size() == b.size());
        CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    };
    for (int round = 0; round < 2; ++round) {
        for (size_t i = 0; i < kTinyPrompt.size(); ++i) {
            if (i % 3 == 2 && i + 1 < kTinyPrompt.size()) {
                step(std::span<const int32_t>(kTinyPrompt.data() + i, 2));
                ++i;
            } else {
                step(std::span<const int32_t>(kTinyPrompt.data() + i, 1));
            }
        }
        CHECK(reused.n_past() == int64_t(kTinyPrompt.size()));
        reused.reset();
        fresh.reset();
    }
}

TEST_CASE("a graph's version changes with every access that may change its nodes", "[graph]") {
    // Backends keep what they derive from a graph's nodes (the CUDA replay key) for as long
    // as its version stays: only const access and set_attn_pos0 keep it.
    const Deepseek2Model m = tiny_model({TypeId::F32});
    Graph g = build_graph(m, {1, 3, false});
    const Graph& cg = g;
    const uint64_t v0 = g.version();
    CHECK(cg.node(0).op == Op::input);
    CHECK(cg.nodes().size() == size_t(g.size()));
    CHECK(g.find("logits") >= 0);
    CHECK(g.version() == v0);
    g.set_attn_pos0(7);
    CHECK(g.version() == v0);
    int mla = -1;
    for (int i = 0; i < g.size(); ++i)
        if (cg.node(i).op == Op::mla_attn) {
            mla = i;
            CHECK(cg.node(i).attn.pos0 == 7);
        }
    REQUIRE(mla >= 0);
    const Graph copy = g;  // the same nodes: the same version
    CHECK(copy.version() == v0);
    g.node(mla);  // a writable reference: a new version, whether written or not
    const uint64_t v1 = g.version();
    CHECK(v1 != v0);
    g.nodes();
    CHECK(g.version() != v1);
    CHECK(copy.version() == v0);
    // A moved-from graph is empty under a version of its own; the graph moved into takes
    // the nodes and their version.
    const uint64_t v2 = g.version();
    const int n_nodes = g.size();
    Graph moved = std::move(g);
    CHECK(moved.version() == v2);
    CHECK(moved.size() == n_nodes);
    CHECK(g.size() == 0);
    CHECK(g.version() != v2);
    Graph assigned;
    assigned = std::move(moved);
    CHECK(assigned.version() == v2);
    CHECK(assigned.size() == n_nodes);
    CHECK(moved.size() == 0);
    CHECK(moved.version() != v2);
    // A graph built alike gets a version of its own, never an earlier graph's.
    const Graph again = build_graph(m, {1, 3, false});
    CHECK(again.version() != v0);
    CHECK(again.version() != v2);
}

TEST_CASE("experts split across two CPU backends give the unsplit logits", "[model][sched]") {
    auto a = make_cpu_backend({2}, "cpu0");
    auto b = make_cpu_backend({1}, "cpu1");
    Deepseek2Model m = tiny_model({TypeId::BF16});
    ExpertPlacement pl;
    pl.expert_backend.resize(size_t(m.hp.n_layer));
    // Layer 0 is dense (no entry needed); layer 1 an arbitrary split; layer 2 all remote.
    pl.expert_backend[1] = {1, 0, 0, 1, 1, 0, 1, 0};
    pl.expert_backend[2] = std::vector<int>(size_t(m.hp.n_expert), 1);
    auto unsplit = run_batch(m, {a.get()});
    auto split = run_batch(m, {a.get(), b.get()}, pl);
    CHECK(max_diff(unsplit, split) < 1e-5f);

    // The placed graph shows one partial node per backend and the sum on the primary.
    Scheduler s({a.get(), b.get()}, pl);
    Graph g = s.place(build_graph(m, {5, 0, true}));
    REQUIRE(g.find("l1.moe_out.part0") >= 0);
    REQUIRE(g.find("l1.moe_out.part1") >= 0);
    CHECK(g.node(g.find("l1.moe_out.part0")).backend == 0);
    CHECK(g.node(g.find("l1.moe_out.part1")).backend == 1);
    CHECK(g.node(g.find("l1.moe_out")).op == Op::add);
    CHECK(g.node(g.find("l1.moe_out")).backend == 0);
    CHECK(g.node(g.find("l2.moe_out")).backend == 1);
    CHECK(g.node(g.find("l2.attn_ctx")).backend == 0);

    // Incremental decoding through the split gives the same logits too.
    Runner r(m, {a.get(), b.get()}, 32, pl);
    std::vector<float> inc;
    for (int32_t t : kTinyPrompt) {
        auto l = r.eval(std::span<const int32_t>(&t, 1), true);
        inc.insert(inc.end(), l.begin(), l.end());
    }
    CHECK(max_diff(unsplit, inc) < 1e-5f);
}

TEST_CASE("the scheduler places nodes by supports() and explains what nothing supports", "[sched]") {
    Deepseek2Model m = tiny_model({TypeId::BF16});
    PickyBackend picky;
    auto cpu = create_backend("cpu");
    auto want = run_batch(m, {cpu.get()});
    auto got = run_batch(m, {&picky, cpu.get()});
    CHECK(max_diff(want, got) < 1e-6f);
    CHECK(picky.computed > 0);  // norms, views, rope, adds stay on the primary
    Scheduler only_picky({&picky});
    CHECK_THROWS_WITH(only_picky.place(build_graph(m, {3, 0, true})),
                      Catch::Contains("no backend supports op get_rows") && Catch::Contains("bf16"));
    ExpertPlacement pl;
    pl.expert_backend = {{}, std::vector<int>(8, 0)};
    Scheduler to_picky({&picky, cpu.get()}, pl);
    CHECK_THROWS_WITH(to_picky.place(build_graph(m, {3, 0, true})), Catch::Contains("holds experts but does not support"));
    pl.expert_backend = {{}, std::vector<int>(8, 2)};
    CHECK_THROWS_WITH(Scheduler({cpu.get()}, pl), Catch::Contains("names backend 2"));
    pl.expert_backend = {{}, std::vector<int>(5, 0)};
    CHECK_THROWS_WITH(Scheduler({cpu.get()}, pl).place(build_graph(m, {3, 0, true})),
                      Catch::Contains("5 entries, layer has 8 experts"));
    CHECK_THROWS_WITH(create_backend("tpu"), Catch::Contains("unknown or unavailable backend 'tpu'"));
}

TEST_CASE("older files with only attn_kv_b are split into W_kb and W_vb", "[model]") {
    TinyOptions o;
    o.kv_b_only = true;
    o.matrix_type = TypeId::BF16;
    Deepseek2Model m = tiny_model(o);
    const auto& hp = m.hp;
    const Weight& kvb = *m.store.find("blk.1.attn_kv_b.weight");
    const Weight& kb = *m.layers[1].k_b;
    const Weight& vb = *m.layers[1].v_b;
    REQUIRE(kb.type == TypeId::F32);
    auto at = [&](int64_t row, int64_t col) {
        uint16_t h;
        std::memcpy(&h, kvb.row(row) + 2 * col, 2);
        return bf16_to_f32(h);
    };
    const float* kbf = reinterpret_cast<const float*>(kb.data);
    const float* vbf = reinterpret_cast<const float*>(vb.data);
    const int64_t per = hp.qk_nope + hp.v_head;
    for (int64_t h = 0; h < hp.n_head; ++h)
        for (int64_t j = 0; j < hp.kv_lora; ++j) {
            for (int64_t i = 0; i < hp.qk_nope; ++i)
                REQUIRE(kbf[(h * hp.kv_lora + j) * hp.qk_nope + i] == at(h * per + i, j));
            for (int64_t i = 0; i < hp.v_head; ++i)
                REQUIRE(vbf[(h * hp.v_head + i) * hp.kv_lora + j] == at(h * per + hp.qk_nope + i, j));
        }
    auto cpu = create_backend("cpu");
    CHECK(max_diff(run_batch(m, {cpu.get()}), run_incremental(m, {cpu.get()})) < 1e-5f);
}

TEST_CASE("a sequence beyond the context size is refused and leaves the cache intact", "[model][kv_cache]") {
    Deepseek2Model m = tiny_model();
    auto cpu = create_backend("cpu");
    Runner r(m, {cpu.get()}, 6);
    r.eval(std::span<const int32_t>(kTinyPrompt.data(), 4), false);
    CHECK_THROWS_WITH(r.eval(std::span<const int32_t>(kTinyPrompt.data() + 4, 3), false),
                      Catch::Contains("[kv_cache] context size exceeded: 4 cached + 3 new tokens > 6"));
    CHECK(r.n_past() == 4);
    r.eval(std::span<const int32_t>(kTinyPrompt.data() + 4, 2), false);
    CHECK(r.n_past() == 6);
    CHECK_THROWS_WITH(r.eval(std::span<const int32_t>(kTinyPrompt.data(), 1), false), Catch::Contains("context size exceeded"));
    r.reset();
    CHECK(r.n_past() == 0);
    CHECK(r.cache().bytes_per_token() == uint64_t((m.hp.kv_lora + m.hp.qk_rope) * 4 * m.hp.n_layer));
    CHECK_THROWS_WITH(KvCache(2, 0, 8, 4), Catch::Contains("context size must be positive"));
}

TEST_CASE("bad token ids and unknown dump names are errors; dumps return named intermediates", "[model]") {
    Deepseek2Model m = tiny_model();
    auto cpu = create_backend("cpu");
    Runner r(m, {cpu.get()}, 16);
    const int32_t bad[] = {0, 53};
    CHECK_THROWS_WITH(r.eval(bad, true), Catch::Contains("token id 53 outside the vocabulary [0, 53)"));
    const int32_t neg[] = {-1};
    CHECK_THROWS_WITH(r.eval(neg, true), Catch::Contains("token id -1"));
    CHECK(r.n_past() == 0);
    CHECK_THROWS_WITH(r.eval(std::span<const int32_t>(kTinyPrompt.data(), 2), true, {"l9.nothing"}),
                      Catch::Contains("no intermediate named 'l9.nothing'"));
    std::map<std::string, std::vector<float>> d;
    r.eval(std::span<const int32_t>(kTinyPrompt.data(), 3), true, {"embd", "l1.kv_latent", "l2.resid", "l1.moe_route"}, &d);
    CHECK(d["embd"].size() == size_t(3 * m.hp.n_embd));
    CHECK(d["l1.kv_latent"].size() == size_t(3 * m.hp.kv_lora));
    CHECK(d["l2.resid"].size() == size_t(3 * m.hp.n_embd));
    CHECK(d["l1.moe_route"].size() == size_t(3 * 2 * m.hp.n_expert_used));
}

TEST_CASE("hyperparameters and tensors are validated with the culprit named", "[model]") {
    Deepseek2HParams hp = tiny_hparams();
    hp.n_group = 3;  // does not divide 8 experts
    CHECK_THROWS_WITH(hp.validate(), Catch::Contains("expert_group_count 3 must divide expert_count 8"));
    hp = tiny_hparams();
    hp.qk_rope = 5;
    CHECK_THROWS_WITH(hp.validate(), Catch::Contains("qk_rope_head_dim must be positive and even"));
    hp = tiny_hparams();
    hp.n_expert_used = 9;
    CHECK_THROWS_WITH(hp.validate(), Catch::Contains("expert_used_count 9"));

    WeightStore s;
    std::vector<uint8_t> bytes(40 * 53 * 4);
    s.add_owned("token_embd.weight", TypeId::F32, {40, 53}, bytes);
    CHECK_THROWS_WITH(bind_deepseek2(tiny_hparams(), std::move(s)), Catch::Contains("missing tensor output_norm.weight"));
    WeightStore s2;
    s2.add_owned("token_embd.weight", TypeId::F32, {40, 52}, std::vector<uint8_t>(40 * 52 * 4));
    CHECK_THROWS_WITH(bind_deepseek2(tiny_hparams(), std::move(s2)),
                      Catch::Contains("token_embd.weight: expected shape {40, 53}, found {40, 52}"));
    WeightStore s3;
    CHECK_THROWS_WITH(s3.add_owned("x", TypeId::F32, {3, 4}, std::vector<uint8_t>(7)), Catch::Contains("7 bytes given, 48 expected"));
}

TEST_CASE("YaRN tables follow DeepSeek's correction range, ramp and mscale", "[model]") {
    Deepseek2HParams hp = tiny_hparams();
    hp.qk_rope = 64;
    hp.rope_base = 10000;
    hp.yarn_factor = 40;
    hp.yarn_orig_ctx = 4096;
    hp.mscale = 1.0;
    hp.mscale_all_dim = 1.0;
    RopeTable t = hp.rope_table();
    // DeepSeek-V3's numbers: correction range [10, 23] of 32 frequencies.
    for (int i = 0; i <= 10; ++i) CHECK(t.inv_freq[size_t(i)] == Approx(std::pow(10000.0, -2.0 * i / 64)));
    for (int i = 23; i < 32; ++i) CHECK(t.inv_freq[size_t(i)] == Approx(std::pow(10000.0, -2.0 * i / 64) / 40));
    CHECK(t.attn_factor == 1.0f);
    const double m = 0.1 * std::log(40.0) + 1.0;
    CHECK(hp.softmax_scale() == Approx((1.0 / std::sqrt(double(hp.qk_nope + 64))) * m * m));
    hp.mscale = 0.707;
    hp.mscale_all_dim = 0.5;
    CHECK(hp.rope_table().attn_factor == Approx((0.0707 * std::log(40.0) + 1) / (0.05 * std::log(40.0) + 1)));
    hp.yarn = false;
    RopeTable plain = hp.rope_table();
    CHECK(plain.attn_factor == 1.0f);
    CHECK(plain.inv_freq[31] == Approx(std::pow(10000.0, -62.0 / 64)));
    CHECK(hp.softmax_scale() == Approx(1.0 / std::sqrt(double(hp.qk_nope + 64))));
}

TEST_CASE("inputs of a remote expert partial are staged before the primary queues its own partial", "[sched]") {
    // Logs what the scheduler asks of a backend, to check the order that lets an
    // asynchronous device overlap its moe_ffn partial with the CPU's.
    class Logging final : public Backend {
    public:
        Logging(std::string name, std::vector<std::string>& log) : cpu_(make_cpu_backend({1}, std::move(name))), log_(log) {}
        const std::string& name() const override { return cpu_->name(); }
        bool supports(const Node& n) const override { return cpu_->supports(n); }
        std::unique_ptr<Buffer> alloc(size_t n) override { return cpu_->alloc(n); }
        void upload(Buffer& d, size_t o, const void* s, size_t n) override { cpu_->upload(d, o, s, n); }
        void download(const Buffer& s, size_t o, void* d, size_t n) override {
            log_.push_back(name() + " download");
            cpu_->download(s, o, d, n);
        }
        void compute(const Node& n, std::span<Buffer* const> in, Buffer& out, Buffer* st) override {
            log_.push_back(name() + " " + n.name);
            cpu_->compute(n, in, out, st);
        }

    private:
        std::unique_ptr<Backend> cpu_;
        std::vector<std::string>& log_;
    };
    std::vector<std::string> log;
    Logging dev("dev", log), host("host", log);
    Deepseek2Model m = tiny_model();
    ExpertPlacement pl;
    pl.expert_backend = {{}, {0, 1, 0, 1, 0, 1, 0, 1}, {}};
    Runner r(m, {&dev, &host}, 16, pl);
    r.eval(kTinyPrompt, true);
    auto at = [&](const std::string& s) {
        auto it = std::find(log.begin(), log.end(), s);
        REQUIRE(it != log.end());
        return it - log.begin();
    };
    const auto route = at("dev l1.moe_route"), dev_part = at("dev l1.moe_out.part0"), host_part = at("host l1.moe_out.part1");
    // Both inputs of the host partial (ffn_norm, moe_route) are downloaded from the
    // device right after the route exists, before the device's own partial is queued.
    int downloads = 0;
    for (auto i = route + 1; i < dev_part; ++i) downloads += log[size_t(i)] == "dev download";
    CHECK(downloads == 2);
    CHECK(dev_part < host_part);
    CHECK(at("dev l1.moe_out") > host_part);
}
