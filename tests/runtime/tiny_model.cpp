#include "tiny_model.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "quantize/float.h"

namespace ds3::test {

Deepseek2HParams tiny_hparams(const TinyOptions& o) {
    Deepseek2HParams hp;
    hp.n_vocab = 53;
    hp.n_embd = 40;
    hp.n_layer = 3;
    hp.n_head = 3;
    hp.q_lora = o.q_lora ? 24 : 0;
    hp.kv_lora = 20;
    hp.qk_nope = 10;
    hp.qk_rope = 6;
    hp.v_head = 12;
    hp.n_ff = 36;
    hp.n_ff_exp = 14;
    hp.n_expert = 8;
    hp.n_expert_used = 3;
    hp.n_expert_shared = 1;
    hp.n_group = 4;
    hp.topk_group = 2;
    hp.n_dense_lead = 1;
    hp.rms_eps = 1e-6f;
    hp.rope_base = 10000.0;
    hp.yarn = true;
    hp.yarn_factor = 40.0;
    hp.yarn_orig_ctx = 64.0;
    hp.mscale = 0.9;
    hp.mscale_all_dim = 0.8;
    if (o.v2_routing) {
        hp.scoring = ScoringFunc::softmax;
        hp.topk = TopkMethod::group_limited_greedy;
        hp.norm_topk = false;
        hp.routed_scale = 1.5f;
    } else {
        hp.scoring = ScoringFunc::sigmoid;
        hp.topk = TopkMethod::noaux_tc;
        hp.norm_topk = true;
        hp.routed_scale = 2.5f;
    }
    return hp;
}

namespace {

struct Builder {
    WeightStore& s;
    std::mt19937 rng;
    TypeId mtype;

    void add(const std::string& name, std::vector<int64_t> ne, TypeId type, float scale, float offset) {
        int64_t n = 1;
        for (int64_t d : ne) n *= d;
        std::normal_distribution<float> dist(0.0f, 1.0f);
        std::vector<uint8_t> bytes(static_cast<size_t>(n) * (type == TypeId::F32 ? 4 : 2));
        for (int64_t i = 0; i < n; ++i) {
            const float v = offset + scale * dist(rng);
            if (type == TypeId::F32) std::memcpy(bytes.data() + 4 * i, &v, 4);
            else {
                const uint16_t h = type == TypeId::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
                std::memcpy(bytes.data() + 2 * i, &h, 2);
            }
        }
        s.add_owned(name, type, ne, std::move(bytes));
    }
    // A matrix {in, out}: scaled so activations stay O(1) through the layers.
    void mat(const std::string& name, std::vector<int64_t> ne) {
        add(name, ne, mtype, 1.0f / std::sqrt(static_cast<float>(ne[0])), 0.0f);
    }
    void norm(const std::string& name, int64_t n) { add(name, {n}, TypeId::F32, 0.1f, 1.0f); }
};

}  // namespace

Deepseek2Model tiny_model(const TinyOptions& o) {
    const Deepseek2HParams hp = tiny_hparams(o);
    WeightStore s;
    Builder b{s, std::mt19937(o.seed), o.matrix_type};
    const int64_t E = hp.n_embd, H = hp.n_head, qd = hp.qk_nope + hp.qk_rope;
    b.add("token_embd.weight", {E, hp.n_vocab}, o.matrix_type, 1.0f, 0.0f);
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        b.norm(p + "attn_norm.weight", E);
        if (hp.q_lora) {
            b.mat(p + "attn_q_a.weight", {E, hp.q_lora});
            b.norm(p + "attn_q_a_norm.weight", hp.q_lora);
            b.mat(p + "attn_q_b.weight", {hp.q_lora, H * qd});
        } else {
            b.mat(p + "attn_q.weight", {E, H * qd});
        }
        b.mat(p + "attn_kv_a_mqa.weight", {E, hp.kv_lora + hp.qk_rope});
        b.norm(p + "attn_kv_a_norm.weight", hp.kv_lora);
        if (o.kv_b_only) {
            b.mat(p + "attn_kv_b.weight", {hp.kv_lora, H * (hp.qk_nope + hp.v_head)});
        } else {
            b.mat(p + "attn_k_b.weight", {hp.qk_nope, hp.kv_lora, H});
            b.mat(p + "attn_v_b.weight", {hp.kv_lora, hp.v_head, H});
        }
        b.mat(p + "attn_output.weight", {H * hp.v_head, E});
        b.norm(p + "ffn_norm.weight", E);
        if (!hp.is_moe_layer(il)) {
            b.mat(p + "ffn_gate.weight", {E, hp.n_ff});
            b.mat(p + "ffn_up.weight", {E, hp.n_ff});
            b.mat(p + "ffn_down.weight", {hp.n_ff, E});
        } else {
            b.mat(p + "ffn_gate_inp.weight", {E, hp.n_expert});
            if (hp.topk == TopkMethod::noaux_tc) b.add(p + "exp_probs_b.bias", {hp.n_expert}, TypeId::F32, 0.05f, 0.0f);
            b.mat(p + "ffn_gate_exps.weight", {E, hp.n_ff_exp, hp.n_expert});
            b.mat(p + "ffn_up_exps.weight", {E, hp.n_ff_exp, hp.n_expert});
            b.mat(p + "ffn_down_exps.weight", {hp.n_ff_exp, E, hp.n_expert});
            const int64_t fs = hp.n_ff_exp * hp.n_expert_shared;
            b.mat(p + "ffn_gate_shexp.weight", {E, fs});
            b.mat(p + "ffn_up_shexp.weight", {E, fs});
            b.mat(p + "ffn_down_shexp.weight", {fs, E});
        }
    }
    b.norm("output_norm.weight", E);
    b.mat("output.weight", {E, hp.n_vocab});
    return bind_deepseek2(hp, std::move(s));
}

const std::vector<int32_t> kTinyPrompt = {0, 7, 52, 3, 3, 19, 41, 2, 30, 11, 5};

std::vector<float> run_batch(const Deepseek2Model& m, std::vector<Backend*> bs, ExpertPlacement pl) {
    Runner r(m, std::move(bs), 64, std::move(pl));
    return r.eval(kTinyPrompt, true);
}

std::vector<float> run_incremental(const Deepseek2Model& m, std::vector<Backend*> bs, ExpertPlacement pl) {
    Runner r(m, std::move(bs), 64, std::move(pl));
    std::vector<float> all;
    for (int32_t t : kTinyPrompt) {
        auto l = r.eval(std::span<const int32_t>(&t, 1), true);
        all.insert(all.end(), l.begin(), l.end());
    }
    return all;
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    float m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
    return m;
}

}  // namespace ds3::test
