#include "backend_ops.h"

#include <cmath>
#include <cstring>
#include <random>

#include "quantize/float.h"
#include "runtime/error.h"
#include "runtime/kv_cache.h"
#include "runtime/sched/sched.h"

namespace ds3::test {

namespace {

std::vector<uint8_t> random_f32(int64_t n, std::mt19937& rng, float scale = 1.0f) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<uint8_t> b(static_cast<size_t>(n) * 4);
    for (int64_t i = 0; i < n; ++i) {
        const float v = d(rng);
        std::memcpy(b.data() + 4 * i, &v, 4);
    }
    return b;
}

std::vector<uint8_t> i32_bytes(const std::vector<int32_t>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
}

const Weight& add_weight(WeightStore& s, const std::string& name, TypeId t, std::vector<int64_t> ne,
                         std::mt19937& rng, float scale = 0.3f, float offset = 0.0f) {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<uint8_t> b(static_cast<size_t>(n) * (t == TypeId::F32 ? 4 : 2));
    for (int64_t i = 0; i < n; ++i) {
        const float v = offset + d(rng);
        if (t == TypeId::F32) std::memcpy(b.data() + 4 * i, &v, 4);
        else {
            const uint16_t h = t == TypeId::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
            std::memcpy(b.data() + 2 * i, &h, 2);
        }
    }
    return s.add_owned(name, t, ne, std::move(b));
}

std::string tname(TypeId t) { return std::string(type_traits(t).name); }

}  // namespace

bool OpResult::ok() const { return !supported || (finite && nmse <= max_nmse); }

std::vector<OpCase> make_op_cases() {
    std::vector<OpCase> cases;
    std::mt19937 rng(1234);
    const TypeId types[] = {TypeId::F32, TypeId::BF16, TypeId::F16};

    auto simple = [&](std::string name) {
        OpCase c;
        c.name = std::move(name);
        c.weights = std::make_shared<WeightStore>();
        c.steps.emplace_back();
        return c;
    };

    for (TypeId t : types) {
        for (int64_t T : {1, 3, 8}) {
            OpCase c = simple("mul_mat " + tname(t) + " in=37 out=19 T=" + std::to_string(T));
            const Weight& w = add_weight(*c.weights, "w", t, {37, 19}, rng);
            OpStep& s = c.steps[0];
            int x = s.graph.input("x", DType::f32, T, 37);
            s.inputs.push_back(random_f32(T * 37, rng));
            s.op_node = s.graph.mul_mat("mm", x, w);
            cases.push_back(std::move(c));
        }
        {
            OpCase c = simple("logits last_only " + tname(t) + " in=33 vocab=101 T=4");
            const Weight& w = add_weight(*c.weights, "out", t, {33, 101}, rng);
            OpStep& s = c.steps[0];
            int x = s.graph.input("x", DType::f32, 4, 33);
            s.inputs.push_back(random_f32(4 * 33, rng));
            s.op_node = s.graph.logits("logits", x, w, true);
            cases.push_back(std::move(c));
        }
        {
            OpCase c = simple("get_rows " + tname(t) + " 23x41 T=5");
            const Weight& w = add_weight(*c.weights, "embd", t, {23, 41}, rng, 1.0f);
            OpStep& s = c.steps[0];
            int ids = s.graph.input("ids", DType::i32, 5, 1);
            s.inputs.push_back(i32_bytes({0, 40, 7, 7, 19}));
            s.op_node = s.graph.get_rows("rows", w, ids);
            cases.push_back(std::move(c));
        }
        {
            OpCase c = simple("shared_ffn " + tname(t) + " 29->11 T=3");
            auto& ws = *c.weights;
            const Weight& g = add_weight(ws, "g", t, {29, 11}, rng);
            const Weight& u = add_weight(ws, "u", t, {29, 11}, rng);
            const Weight& d = add_weight(ws, "d", t, {11, 29}, rng);
            OpStep& s = c.steps[0];
            int x = s.graph.input("x", DType::f32, 3, 29);
            s.inputs.push_back(random_f32(3 * 29, rng));
            s.op_node = s.graph.shared_ffn("sh", x, g, u, d);
            cases.push_back(std::move(c));
        }
        for (bool subset : {false, true}) {
            OpCase c = simple(std::string("moe_ffn ") + tname(t) + " 7 experts of 9, k=3, T=6" + (subset ? ", subset" : ""));
            auto& ws = *c.weights;
            const Weight& g = add_weight(ws, "g", t, {21, 9, 7}, rng);
            const Weight& u = add_weight(ws, "u", t, {21, 9, 7}, rng);
            const Weight& d = add_weight(ws, "d", t, {9, 21, 7}, rng);
            RouteParams p{7, 3, 1, 1, ScoringFunc::softmax, TopkMethod::greedy, false, 1.0f};
            OpStep& s = c.steps[0];
            int x = s.graph.input("x", DType::f32, 6, 21);
            int r = s.graph.input("route", DType::f32, 6, 6);
            s.inputs.push_back(random_f32(6 * 21, rng));
            std::vector<float> route;
            for (int t2 = 0; t2 < 6; ++t2) {
                const float ids[3] = {float(t2 % 7), float((t2 + 3) % 7), float((2 * t2 + 1) % 7)};
                for (int j = 0; j < 3; ++j) route.push_back(0.2f + 0.1f * float(j + t2));
                for (int j = 0; j < 3; ++j) route.push_back(ids[j]);
            }
            std::vector<uint8_t> rb(route.size() * 4);
            std::memcpy(rb.data(), route.data(), rb.size());
            s.inputs.push_back(std::move(rb));
            s.op_node = s.graph.moe_ffn("moe", x, r, g, u, d, p);
            if (subset) s.graph.node(s.op_node).experts = {1, 0, 0, 1, 1, 0, 1};
            cases.push_back(std::move(c));
        }
        for (int pass = 0; pass < 2; ++pass) {
            const bool v3 = pass == 0;
            OpCase c = simple(std::string("moe_route ") + tname(t) + (v3 ? " sigmoid noaux_tc" : " softmax group_limited_greedy") +
                              " 12 experts, 4 groups, k=3, T=5");
            auto& ws = *c.weights;
            const Weight& gate = add_weight(ws, "gate", t, {19, 12}, rng, 0.5f);
            const Weight& bias = add_weight(ws, "bias", TypeId::F32, {12}, rng, 0.05f);
            RouteParams p{12, 3, 4, 2, v3 ? ScoringFunc::sigmoid : ScoringFunc::softmax,
                          v3 ? TopkMethod::noaux_tc : TopkMethod::group_limited_greedy, v3, v3 ? 2.5f : 1.0f};
            OpStep& s = c.steps[0];
            int x = s.graph.input("x", DType::f32, 5, 19);
            s.inputs.push_back(random_f32(5 * 19, rng));
            s.op_node = s.graph.moe_route("route", x, gate, v3 ? &bias : nullptr, p);
            c.max_nmse = 1e-9;  // ids must match exactly; weights nearly so
            cases.push_back(std::move(c));
        }
        {
            // Two batches through the cache: 5 tokens, then 2 more attending to all 7.
            OpCase c = simple("mla_attn " + tname(t) + " 3 heads, nope 10, rope 6, v 7, lora 13, 5+2 tokens");
            c.steps.clear();
            auto& ws = *c.weights;
            const Weight& kb = add_weight(ws, "k_b", t, {10, 13, 3}, rng);
            const Weight& vb = add_weight(ws, "v_b", t, {13, 7, 3}, rng);
            c.cache_ctx = 9;
            c.cache_lora = 13;
            c.cache_rope = 6;
            int64_t pos0 = 0;
            for (int64_t T : {5, 2}) {
                OpStep s;
                int q = s.graph.input("q", DType::f32, T, 3 * 16);
                int lat = s.graph.input("lat", DType::f32, T, 13);
                int kpe = s.graph.input("kpe", DType::f32, T, 6);
                s.inputs.push_back(random_f32(T * 48, rng));
                s.inputs.push_back(random_f32(T * 13, rng));
                s.inputs.push_back(random_f32(T * 6, rng));
                AttnParams p{3, 10, 6, 7, 13, 0.29f, pos0};
                s.op_node = s.graph.mla_attn("attn", q, lat, kpe, kb, vb, p, 0);
                c.steps.push_back(std::move(s));
                pos0 += T;
            }
            cases.push_back(std::move(c));
        }
    }
    {
        OpCase c = simple("rms_norm 3x23");
        const Weight& g = add_weight(*c.weights, "g", TypeId::F32, {23}, rng, 0.1f, 1.0f);
        OpStep& s = c.steps[0];
        int x = s.graph.input("x", DType::f32, 3, 23);
        s.inputs.push_back(random_f32(3 * 23, rng, 3.0f));
        s.op_node = s.graph.rms_norm("norm", x, g, 1e-6f);
        cases.push_back(std::move(c));
    }
    for (Op op : {Op::add, Op::swiglu}) {
        OpCase c = simple(std::string(op_name(op)) + " 5x17");
        OpStep& s = c.steps[0];
        int a = s.graph.input("a", DType::f32, 5, 17);
        int b = s.graph.input("b", DType::f32, 5, 17);
        s.inputs.push_back(random_f32(85, rng));
        s.inputs.push_back(random_f32(85, rng));
        s.op_node = op == Op::add ? s.graph.add("out", a, b) : s.graph.swiglu("out", a, b);
        cases.push_back(std::move(c));
    }
    {
        OpCase c = simple("view cols [7, 18) of 4x25");
        OpStep& s = c.steps[0];
        int x = s.graph.input("x", DType::f32, 4, 25);
        s.inputs.push_back(random_f32(100, rng));
        s.op_node = s.graph.view("v", x, 7, 11);
        cases.push_back(std::move(c));
    }
    {
        OpCase c = simple("rope_yarn 3 heads of 14, rope [4, 14), positions up to 65000");
        auto table = std::make_shared<RopeTable>();
        for (int i = 0; i < 5; ++i) table->inv_freq.push_back(static_cast<float>(std::pow(10000.0, -0.2 * i) / (i > 2 ? 40 : 1)));
        table->attn_factor = 0.93f;
        OpStep& s = c.steps[0];
        int x = s.graph.input("x", DType::f32, 4, 42);
        int pos = s.graph.input("pos", DType::i32, 4, 1);
        s.inputs.push_back(random_f32(4 * 42, rng));
        s.inputs.push_back(i32_bytes({0, 1, 4095, 65000}));
        s.op_node = s.graph.rope_yarn("rope", x, pos, 3, 14, 4, 10, table);
        cases.push_back(std::move(c));
    }
    return cases;
}

namespace {

// Runs a case on one backend; returns the op outputs of every step, or nothing when the
// backend does not claim the op.
std::vector<std::vector<float>> run_case(const OpCase& c, Backend& be, bool& supported) {
    Scheduler sched({&be});
    std::unique_ptr<KvCache> cache;
    if (c.cache_ctx) cache = std::make_unique<KvCache>(1, c.cache_ctx, c.cache_lora, c.cache_rope);
    std::vector<std::vector<float>> outs;
    supported = true;
    for (const OpStep& s : c.steps) {
        if (!be.supports(s.graph.node(s.op_node))) {
            supported = false;
            return {};
        }
        Graph placed = sched.place(s.graph);
        std::vector<GraphInput> inputs;
        size_t k = 0;
        for (int i = 0; i < placed.size(); ++i)
            if (placed.node(i).op == Op::input) inputs.push_back({i, s.inputs.at(k++).data()});
        const int fetch[] = {placed.find(s.graph.node(s.op_node).name)};
        auto r = sched.run(placed, inputs, cache.get(), fetch);
        outs.push_back(r.take(fetch[0]));
    }
    return outs;
}

}  // namespace

std::vector<OpResult> compare_backends(Backend& test, Backend& ref) {
    std::vector<OpResult> results;
    for (const OpCase& c : make_op_cases()) {
        OpResult r;
        r.name = c.name;
        r.max_nmse = c.max_nmse;
        bool ref_ok = false;
        auto want = run_case(c, ref, ref_ok);
        if (!ref_ok) throw Error("test", "reference backend " + ref.name() + " does not support " + c.name);
        auto got = run_case(c, test, r.supported);
        if (r.supported) {
            for (size_t k = 0; k < want.size(); ++k) {
                double err = 0, norm = 0;
                for (size_t i = 0; i < want[k].size(); ++i) {
                    if (!std::isfinite(got[k][i])) r.finite = false;
                    const double d = double(got[k][i]) - want[k][i];
                    err += d * d;
                    norm += double(want[k][i]) * want[k][i];
                }
                r.nmse = std::max(r.nmse, norm > 0 ? err / norm : err);
            }
        }
        results.push_back(std::move(r));
    }
    return results;
}

}  // namespace ds3::test
