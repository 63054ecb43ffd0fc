// deepseek2 metadata: llama.cpp's keys alone (files made elsewhere), ds3.* keys on top,
// the error paths, and a whole model written to GGUF and loaded back (older kv_b layout).
#include <catch2/catch.hpp>

#include <cmath>

#include "backends/backend.h"
#include "common.h"
#include "models/runner.h"
#include "runtime/gguf/gguf.h"
#include "tiny_model.h"

using namespace ds3;
using namespace ds3::test;
using gguf::Value;

namespace {

// llama.cpp's deepseek2 metadata for hp (old MLA layout: per-head key/value lengths).
void write_llama_keys(gguf::Writer& w, const Deepseek2HParams& hp) {
    const std::string a = "deepseek2.";
    auto u = [](int64_t v) { return Value::u32(static_cast<uint32_t>(v)); };
    w.set_kv("general.architecture", Value::str("deepseek2"));
    w.set_kv(a + "block_count", u(hp.n_layer + hp.n_nextn));
    w.set_kv(a + "context_length", u(4096));
    w.set_kv(a + "embedding_length", u(hp.n_embd));
    w.set_kv(a + "feed_forward_length", u(hp.n_ff));
    w.set_kv(a + "attention.head_count", u(hp.n_head));
    w.set_kv(a + "attention.head_count_kv", u(hp.n_head));
    w.set_kv(a + "attention.key_length", u(hp.qk_nope + hp.qk_rope));
    w.set_kv(a + "attention.value_length", u(hp.v_head));
    if (hp.q_lora) w.set_kv(a + "attention.q_lora_rank", u(hp.q_lora));
    w.set_kv(a + "attention.kv_lora_rank", u(hp.kv_lora));
    w.set_kv(a + "attention.layer_norm_rms_epsilon", Value::f32(hp.rms_eps));
    w.set_kv(a + "rope.freq_base", Value::f32(static_cast<float>(hp.rope_base)));
    w.set_kv(a + "rope.dimension_count", u(hp.qk_rope));
    if (hp.yarn) {
        w.set_kv(a + "rope.scaling.type", Value::str("yarn"));
        w.set_kv(a + "rope.scaling.factor", Value::f32(static_cast<float>(hp.yarn_factor)));
        w.set_kv(a + "rope.scaling.original_context_length", u(static_cast<int64_t>(hp.yarn_orig_ctx)));
        w.set_kv(a + "rope.scaling.yarn_log_multiplier", Value::f32(static_cast<float>(0.1 * hp.mscale_all_dim)));
    }
    w.set_kv(a + "leading_dense_block_count", u(hp.n_dense_lead));
    w.set_kv(a + "expert_count", u(hp.n_expert));
    w.set_kv(a + "expert_used_count", u(hp.n_expert_used));
    w.set_kv(a + "expert_shared_count", u(hp.n_expert_shared));
    w.set_kv(a + "expert_feed_forward_length", u(hp.n_ff_exp));
    w.set_kv(a + "expert_weights_scale", Value::f32(hp.routed_scale));
    w.set_kv(a + "expert_weights_norm", Value::boolean(hp.norm_topk));
    w.set_kv(a + "expert_gating_func", u(hp.scoring == ScoringFunc::sigmoid ? 2 : 1));
    w.set_kv(a + "expert_group_count", u(hp.n_group));
    w.set_kv(a + "expert_group_used_count", u(hp.topk_group));
}

// Writes the model's file tensors (not the ones derived at load time).
void write_model(const fs::path& path, const Deepseek2Model& m, bool ds3_keys,
                 const std::vector<gguf::KeyValue>& extra = {}) {
    gguf::Writer w(path.string());
    write_llama_keys(w, m.hp);
    if (ds3_keys) {
        w.set_kv("ds3.scoring_func", Value::str(m.hp.scoring == ScoringFunc::sigmoid ? "sigmoid" : "softmax"));
        w.set_kv("ds3.topk_method", Value::str(m.hp.topk == TopkMethod::noaux_tc ? "noaux_tc"
                                              : m.hp.topk == TopkMethod::greedy ? "greedy" : "group_limited_greedy"));
        w.set_kv("ds3.rope.scaling.mscale", Value::f32(static_cast<float>(m.hp.mscale)));
        w.set_kv("ds3.rope.scaling.mscale_all_dim", Value::f32(static_cast<float>(m.hp.mscale_all_dim)));
    }
    for (const auto& kv : extra) w.set_kv(kv.key, kv.value);
    std::vector<const Weight*> ws;
    for (const std::string& name : {std::string("token_embd.weight"), std::string("output_norm.weight"), std::string("output.weight")})
        ws.push_back(m.store.find(name));
    for (int64_t il = 0; il < m.hp.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        for (const char* n : {"attn_norm.weight", "attn_q_a.weight", "attn_q_a_norm.weight", "attn_q_b.weight", "attn_q.weight",
                              "attn_kv_a_mqa.weight", "attn_kv_a_norm.weight", "attn_kv_b.weight", "attn_k_b.weight",
                              "attn_v_b.weight", "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                              "ffn_down.weight", "ffn_gate_inp.weight", "exp_probs_b.bias", "ffn_gate_exps.weight",
                              "ffn_up_exps.weight", "ffn_down_exps.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight",
                              "ffn_down_shexp.weight"})
            if (const Weight* x = m.store.find(p + n)) ws.push_back(x);
    }
    for (const Weight* x : ws) {
        std::vector<uint64_t> ne(x->ne.begin(), x->ne.begin() + x->n_dims);
        w.add_tensor(x->name, ne, x->type);
    }
    w.write_header();
    for (const Weight* x : ws) w.write_tensor_data(std::span<const uint8_t>(x->data, x->nbytes));
    w.finish();
}

}  // namespace

TEST_CASE("a file with only llama.cpp's keys and attn_kv_b loads and runs like the in-memory model", "[model][gguf]") {
    TinyOptions o;
    o.kv_b_only = true;
    o.matrix_type = TypeId::BF16;
    o.v2_routing = GENERATE(false, true);
    Deepseek2Model mem = tiny_model(o);
    const fs::path path = scratch_dir("hparams") / "tiny.gguf";
    // llama.cpp has no mscale key: a file from it implies mscale == mscale_all_dim.
    mem.hp.mscale = mem.hp.mscale_all_dim;
    mem.rope = std::make_shared<const RopeTable>(mem.hp.rope_table());
    write_model(path, mem, false);

    Deepseek2Model file = load_deepseek2(path.string());
    const Deepseek2HParams& hp = file.hp;
    CHECK(hp.scoring == mem.hp.scoring);
    CHECK(hp.topk == (o.v2_routing ? TopkMethod::group_limited_greedy : TopkMethod::noaux_tc));
    CHECK(hp.mscale_all_dim == Approx(mem.hp.mscale_all_dim).epsilon(1e-6));
    CHECK(hp.qk_nope == mem.hp.qk_nope);
    CHECK(hp.v_head == mem.hp.v_head);
    CHECK(hp.n_vocab == mem.hp.n_vocab);
    CHECK(hp.beta_fast == 32.0);
    CHECK(hp.beta_slow == 1.0);

    auto cpu = create_backend("cpu");
    const std::vector<int32_t> toks = {1, 9, 33, 4, 17};
    Runner a(mem, {cpu.get()}, 16), b(file, {cpu.get()}, 16);
    auto la = a.eval(toks, true), lb = b.eval(toks, true);
    float d = 0;
    for (size_t i = 0; i < la.size(); ++i) d = std::max(d, std::abs(la[i] - lb[i]));
    CHECK(d < 1e-5f);
}

TEST_CASE("ds3.* keys override llama.cpp's defaults", "[model][gguf]") {
    TinyOptions o;
    o.v2_routing = true;
    Deepseek2Model mem = tiny_model(o);
    mem.hp.topk = TopkMethod::greedy;  // n_group 4 alone would imply group_limited_greedy
    const fs::path path = scratch_dir("hparams") / "ds3keys.gguf";
    write_model(path, mem, true);
    Deepseek2Model file = load_deepseek2(path.string());
    CHECK(file.hp.topk == TopkMethod::greedy);
    CHECK(file.hp.mscale == Approx(0.9));
    CHECK(file.hp.mscale_all_dim == Approx(0.8));
    CHECK(file.rope->attn_factor == Approx(mem.rope->attn_factor));
}

TEST_CASE("bad deepseek2 metadata is refused with the key named", "[model][gguf]") {
    Deepseek2Model mem = tiny_model();
    struct Bad { gguf::KeyValue kv; const char* msg; };
    const Bad cases[] = {
        {{"general.architecture", Value::str("llama")}, "general.architecture is 'llama', expected 'deepseek2'"},
        {{"ds3.scoring_func", Value::str("relu")}, "ds3.scoring_func: expected softmax or sigmoid, found 'relu'"},
        {{"ds3.topk_method", Value::str("best")}, "ds3.topk_method: expected greedy"},
        {{"deepseek2.expert_gating_func", Value::u32(3)}, "expert_gating_func: expected 1 (softmax) or 2 (sigmoid), found 3"},
        {{"deepseek2.rope.scaling.type", Value::str("linear")}, "rope.scaling.type 'linear' is not supported"},
        {{"deepseek2.nextn_predict_layers", Value::u32(3)}, "nextn_predict_layers 3 must be below block_count 3"},
        {{"deepseek2.expert_group_count", Value::u32(3)}, "expert_group_count 3 must divide expert_count 8"},
    };
    int i = 0;
    for (const Bad& c : cases) {
        const fs::path path = scratch_dir("hparams") / ("bad" + std::to_string(i++) + ".gguf");
        write_model(path, mem, false, {c.kv});
        INFO(c.kv.key);
        CHECK_THROWS_WITH(load_deepseek2(path.string()), Catch::Contains(c.msg));
    }
    const fs::path path = scratch_dir("hparams") / "nokey.gguf";
    {
        gguf::Writer w(path.string());
        w.set_kv("general.architecture", Value::str("deepseek2"));
        w.write_header();
        w.finish();
    }
    CHECK_THROWS_WITH(load_deepseek2(path.string()), Catch::Contains("deepseek2.embedding_length"));
}
