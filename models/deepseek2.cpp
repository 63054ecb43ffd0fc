// deepseek2: hyperparameters from GGUF metadata and binding of the expected tensors.
// The graph itself is in deepseek2_graph.cpp.
#include "models/deepseek2.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "quantize/float.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

namespace ds3 {

namespace {

// DeepSeek's yarn_get_mscale: the attention-temperature correction of YaRN.
double yarn_get_mscale(double scale, double mscale) {
    if (scale <= 1.0) return 1.0;
    return 0.1 * mscale * std::log(scale) + 1.0;
}

// The rotary dimension at which a frequency completes n_rot rotations over the
// original context (YaRN's correction range endpoints).
double yarn_correction_dim(double n_rot, double dim, double base, double orig_ctx) {
    return dim * std::log(orig_ctx / (n_rot * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}

ScoringFunc parse_scoring(const std::string& s) {
    if (s == "softmax") return ScoringFunc::softmax;
    if (s == "sigmoid") return ScoringFunc::sigmoid;
    throw Error("model", "ds3.scoring_func: expected softmax or sigmoid, found '" + s + "'");
}

TopkMethod parse_topk(const std::string& s) {
    if (s == "greedy") return TopkMethod::greedy;
    if (s == "group_limited_greedy") return TopkMethod::group_limited_greedy;
    if (s == "noaux_tc") return TopkMethod::noaux_tc;
    throw Error("model", "ds3.topk_method: expected greedy, group_limited_greedy or noaux_tc, found '" + s + "'");
}

}  // namespace

float Deepseek2HParams::softmax_scale() const {
    double s = 1.0 / std::sqrt(static_cast<double>(qk_nope + qk_rope));
    if (yarn && mscale_all_dim != 0.0) {
        const double m = yarn_get_mscale(yarn_factor, mscale_all_dim);
        s *= m * m;
    }
    return static_cast<float>(s);
}

RopeTable Deepseek2HParams::rope_table() const {
    RopeTable t;
    const int64_t half = qk_rope / 2;
    t.inv_freq.resize(static_cast<size_t>(half));
    const double dim = static_cast<double>(qk_rope);
    double low = 0, high = 0;
    if (yarn) {
        low = std::max(std::floor(yarn_correction_dim(beta_fast, dim, rope_base, yarn_orig_ctx)), 0.0);
        high = std::min(std::ceil(yarn_correction_dim(beta_slow, dim, rope_base, yarn_orig_ctx)), dim - 1.0);
        if (low == high) high += 0.001;  // as DeepSeek's yarn_linear_ramp_mask: avoid 0/0
    }
    for (int64_t i = 0; i < half; ++i) {
        const double extra = 1.0 / std::pow(rope_base, static_cast<double>(2 * i) / dim);
        if (!yarn) {
            t.inv_freq[static_cast<size_t>(i)] = static_cast<float>(extra);
            continue;
        }
        const double inter = extra / yarn_factor;
        // Linear ramp over [low, high]: below low keep the original (extrapolated)
        // frequency, above high the interpolated one.
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double keep_extra = 1.0 - ramp;
        t.inv_freq[static_cast<size_t>(i)] = static_cast<float>(inter * (1.0 - keep_extra) + extra * keep_extra);
    }
    t.attn_factor = yarn ? static_cast<float>(yarn_get_mscale(yarn_factor, mscale) /
                                              yarn_get_mscale(yarn_factor, mscale_all_dim))
                         : 1.0f;
    return t;
}

RouteParams Deepseek2HParams::route_params() const {
    RouteParams p;
    p.n_expert = static_cast<int>(n_expert);
    p.n_used = static_cast<int>(n_expert_used);
    p.n_group = static_cast<int>(n_group);
    p.topk_group = static_cast<int>(topk_group);
    p.scoring = scoring;
    p.method = topk;
    p.norm_topk = norm_topk;
    p.scale = routed_scale;
    return p;
}

void Deepseek2HParams::validate() const {
    auto need = [](bool ok, const std::string& what) {
        if (!ok) throw Error("model", "deepseek2 hyperparameters: " + what);
    };
    need(n_vocab > 0 && n_embd > 0 && n_layer > 0 && n_head > 0, "vocab, embedding, layers and heads must be positive");
    need(kv_lora > 0 && qk_nope > 0 && v_head > 0, "kv_lora_rank, qk_nope_head_dim and v_head_dim must be positive");
    need(qk_rope > 0 && qk_rope % 2 == 0, "qk_rope_head_dim must be positive and even, found " + std::to_string(qk_rope));
    need(q_lora >= 0 && n_nextn >= 0 && n_dense_lead >= 0 && moe_layer_freq > 0, "negative size");
    need(rope_base > 0 && rms_eps > 0, "rope.freq_base and rms epsilon must be positive");
    need(!yarn || (yarn_factor > 0 && yarn_orig_ctx > 0), "YaRN factor and original context must be positive");
    bool any_moe = false;
    for (int64_t il = 0; il < n_layer + n_nextn; ++il) any_moe = any_moe || is_moe_layer(il);
    if (any_moe) {
        need(n_ff_exp > 0, "expert_feed_forward_length must be positive");
        need(n_expert_used > 0 && n_expert_used <= n_expert,
             "expert_used_count " + std::to_string(n_expert_used) + " must be in [1, " + std::to_string(n_expert) + "]");
        need(n_group > 0 && n_expert % n_group == 0,
             "expert_group_count " + std::to_string(n_group) + " must divide expert_count " + std::to_string(n_expert));
        need(topk_group > 0 && topk_group <= n_group, "expert_group_used_count must be in [1, expert_group_count]");
        need(n_expert_used <= (n_expert / n_group) * topk_group, "the kept groups hold fewer experts than expert_used_count");
        need(topk != TopkMethod::noaux_tc || n_expert / n_group >= 2, "noaux_tc needs at least 2 experts per group");
    }
    if (n_dense_lead > 0) need(n_ff > 0, "feed_forward_length must be positive with dense layers");
}

Deepseek2HParams deepseek2_hparams(const gguf::File& f) {
    const std::string arch = f.get_string("general.architecture");
    if (arch != "deepseek2")
        throw Error("model", f.path() + ": general.architecture is '" + arch + "', expected 'deepseek2'");
    const std::string a = "deepseek2.";
    auto u = [&](const std::string& k) { return static_cast<int64_t>(f.get_u64(a + k)); };
    auto u_or = [&](const std::string& k, uint64_t d) { return static_cast<int64_t>(f.get_u64(a + k, d)); };

    Deepseek2HParams hp;
    hp.n_embd = u("embedding_length");
    const int64_t n_block = u("block_count");
    hp.n_nextn = u_or("nextn_predict_layers", 0);
    if (hp.n_nextn >= n_block)
        throw Error("model", "nextn_predict_layers " + std::to_string(hp.n_nextn) + " must be below block_count " +
                                 std::to_string(n_block));
    hp.n_layer = n_block - hp.n_nextn;
    hp.n_ctx_train = u_or("context_length", 0);
    hp.n_head = u("attention.head_count");
    hp.q_lora = u_or("attention.q_lora_rank", 0);
    hp.kv_lora = u("attention.kv_lora_rank");
    hp.qk_rope = u("rope.dimension_count");
    // llama.cpp's current layout stores the per-head sizes under *_mla; older files
    // (one K/V head per query head) under key_length / value_length.
    if (f.has(a + "attention.key_length_mla")) {
        hp.qk_nope = u("attention.key_length_mla") - hp.qk_rope;
        hp.v_head = u("attention.value_length_mla");
    } else {
        hp.qk_nope = u("attention.key_length") - hp.qk_rope;
        hp.v_head = u("attention.value_length");
    }
    hp.n_ff = u_or("feed_forward_length", 0);
    hp.n_ff_exp = u_or("expert_feed_forward_length", 0);
    hp.n_expert = u_or("expert_count", 0);
    hp.n_expert_used = u_or("expert_used_count", 0);
    hp.n_expert_shared = u_or("expert_shared_count", 0);
    hp.n_group = u_or("expert_group_count", 1);
    hp.topk_group = u_or("expert_group_used_count", 1);
    if (hp.n_group == 0) hp.n_group = 1;
    if (hp.topk_group == 0) hp.topk_group = hp.n_group;
    hp.n_dense_lead = u_or("leading_dense_block_count", 0);
    hp.moe_layer_freq = static_cast<int64_t>(f.get_u64("ds3.moe_layer_freq", 1));
    hp.rms_eps = static_cast<float>(f.get_f64(a + "attention.layer_norm_rms_epsilon"));
    hp.rope_base = f.get_f64(a + "rope.freq_base", 10000.0);
    hp.norm_topk = f.get_bool(a + "expert_weights_norm", false);
    hp.routed_scale = static_cast<float>(f.get_f64(a + "expert_weights_scale", 1.0));

    if (f.has("ds3.scoring_func")) {
        hp.scoring = parse_scoring(f.get_string("ds3.scoring_func"));
    } else {
        const uint64_t g = f.get_u64(a + "expert_gating_func", 1);
        if (g != 1 && g != 2)
            throw Error("model", "expert_gating_func: expected 1 (softmax) or 2 (sigmoid), found " + std::to_string(g));
        hp.scoring = g == 2 ? ScoringFunc::sigmoid : ScoringFunc::softmax;
    }
    if (f.has("ds3.topk_method")) {
        hp.topk = parse_topk(f.get_string("ds3.topk_method"));
    } else if (hp.scoring == ScoringFunc::sigmoid) {
        hp.topk = TopkMethod::noaux_tc;
    } else {
        hp.topk = hp.n_group > 1 ? TopkMethod::group_limited_greedy : TopkMethod::greedy;
    }

    const std::string rtype = f.get_string(a + "rope.scaling.type", "none");
    if (rtype == "yarn") {
        hp.yarn = true;
        hp.yarn_factor = f.get_f64(a + "rope.scaling.factor");
        hp.yarn_orig_ctx = static_cast<double>(f.get_u64(a + "rope.scaling.original_context_length"));
        hp.beta_fast = f.get_f64("ds3.rope.scaling.beta_fast", f.get_f64(a + "rope.scaling.yarn_beta_fast", 32.0));
        hp.beta_slow = f.get_f64("ds3.rope.scaling.beta_slow", f.get_f64(a + "rope.scaling.yarn_beta_slow", 1.0));
        const double log_mul = f.get_f64(a + "rope.scaling.yarn_log_multiplier", 0.0);
        hp.mscale_all_dim = f.get_f64("ds3.rope.scaling.mscale_all_dim", log_mul / 0.1);
        // Without ds3.rope.scaling.mscale, assume mscale == mscale_all_dim (true of every
        // release): the cos/sin factor is then 1.
        hp.mscale = f.get_f64("ds3.rope.scaling.mscale", hp.mscale_all_dim);
    } else if (rtype != "none") {
        throw Error("model", "rope.scaling.type '" + rtype + "' is not supported (expected yarn or none)");
    }

    if (f.has(a + "vocab_size")) {
        hp.n_vocab = u("vocab_size");
    } else if (const gguf::TensorInfo* t = f.find_tensor("token_embd.weight"); t && t->ne.size() == 2) {
        hp.n_vocab = static_cast<int64_t>(t->ne[1]);
    } else {
        throw Error("model", "cannot tell the vocabulary size: no deepseek2.vocab_size and no 2-D token_embd.weight");
    }
    hp.validate();
    return hp;
}

namespace {

// W_kb / W_vb from an older file's attn_kv_b {kv_lora, n_head·(qk_nope + v_head)}:
// per head, rows [0, qk_nope) are W_kb (stored transposed as {qk_nope, kv_lora}) and
// rows [qk_nope, qk_nope + v_head) are W_vb (kept as {kv_lora, v_head}).
void split_kv_b(const Deepseek2HParams& hp, WeightStore& store, const Weight& kv_b, const std::string& prefix,
                Deepseek2Layer& L) {
    const int64_t H = hp.n_head, nope = hp.qk_nope, vh = hp.v_head, r = hp.kv_lora;
    std::vector<float> row(static_cast<size_t>(r));
    std::vector<uint8_t> kb(static_cast<size_t>(H * r * nope) * 4), vb(static_cast<size_t>(H * vh * r) * 4);
    float* kbf = reinterpret_cast<float*>(kb.data());
    float* vbf = reinterpret_cast<float*>(vb.data());
    for (int64_t h = 0; h < H; ++h) {
        for (int64_t i = 0; i < nope + vh; ++i) {
            const uint8_t* src = kv_b.row(h * (nope + vh) + i);
            switch (kv_b.type) {
                case TypeId::F32: std::memcpy(row.data(), src, static_cast<size_t>(r) * 4); break;
                case TypeId::BF16:
                case TypeId::F16:
                    for (int64_t j = 0; j < r; ++j) {
                        uint16_t v;
                        std::memcpy(&v, src + 2 * j, 2);
                        row[static_cast<size_t>(j)] = kv_b.type == TypeId::BF16 ? bf16_to_f32(v) : f16_to_f32(v);
                    }
                    break;
                default:
                    throw Error("model", kv_b.name + ": splitting attn_kv_b of type " +
                                             std::string(type_traits(kv_b.type).name) + " is not supported");
            }
            for (int64_t j = 0; j < r; ++j) {
                if (i < nope) kbf[(h * r + j) * nope + i] = row[static_cast<size_t>(j)];  // [h][kv_lora][nope]
                else vbf[(h * vh + (i - nope)) * r + j] = row[static_cast<size_t>(j)];    // [h][v_head][kv_lora]
            }
        }
    }
    L.k_b = &store.add_owned(prefix + "attn_k_b.derived", TypeId::F32, {nope, r, H}, std::move(kb));
    L.v_b = &store.add_owned(prefix + "attn_v_b.derived", TypeId::F32, {r, vh, H}, std::move(vb));
}

Deepseek2Layer bind_layer(const Deepseek2HParams& hp, WeightStore& s, int64_t il, bool mtp) {
    const std::string p = "blk." + std::to_string(il) + ".";
    const int64_t E = hp.n_embd, H = hp.n_head, qd = hp.qk_nope + hp.qk_rope;
    Deepseek2Layer L;
    L.attn_norm = &s.get(p + "attn_norm.weight", {E});
    if (hp.q_lora > 0) {
        L.q_a = &s.get(p + "attn_q_a.weight", {E, hp.q_lora});
        L.q_a_norm = &s.get(p + "attn_q_a_norm.weight", {hp.q_lora});
        L.q_b = &s.get(p + "attn_q_b.weight", {hp.q_lora, H * qd});
    } else {
        L.q = &s.get(p + "attn_q.weight", {E, H * qd});
    }
    L.kv_a_mqa = &s.get(p + "attn_kv_a_mqa.weight", {E, hp.kv_lora + hp.qk_rope});
    L.kv_a_norm = &s.get(p + "attn_kv_a_norm.weight", {hp.kv_lora});
    const Weight* kb = s.find(p + "attn_k_b.weight");
    const Weight* vb = s.find(p + "attn_v_b.weight");
    const Weight* kvb = s.find(p + "attn_kv_b.weight");
    // ik_llama.cpp keeps 2-D attn_k_b/attn_v_b next to attn_kv_b: split attn_kv_b then.
    if (kb && vb && (!kvb || (kb->n_dims == 3 && vb->n_dims == 3) || H == 1)) {
        L.k_b = &s.get(p + "attn_k_b.weight", {hp.qk_nope, hp.kv_lora, H});
        L.v_b = &s.get(p + "attn_v_b.weight", {hp.kv_lora, hp.v_head, H});
    } else if (kvb) {
        split_kv_b(hp, s, s.get(p + "attn_kv_b.weight", {hp.kv_lora, H * (hp.qk_nope + hp.v_head)}), p, L);
    } else {
        throw Error("model", "missing tensor " + p + "attn_k_b.weight / attn_v_b.weight (or " + p + "attn_kv_b.weight)");
    }
    L.attn_out = &s.get(p + "attn_output.weight", {H * hp.v_head, E});
    L.ffn_norm = &s.get(p + "ffn_norm.weight", {E});
    if (!hp.is_moe_layer(il)) {
        L.ffn_gate = &s.get(p + "ffn_gate.weight", {E, hp.n_ff});
        L.ffn_up = &s.get(p + "ffn_up.weight", {E, hp.n_ff});
        L.ffn_down = &s.get(p + "ffn_down.weight", {hp.n_ff, E});
    } else {
        const int64_t N = hp.n_expert, F = hp.n_ff_exp;
        L.gate_inp = &s.get(p + "ffn_gate_inp.weight", {E, N});
        L.exp_probs_b = s.get_optional(p + "exp_probs_b.bias", {N});
        if (hp.topk == TopkMethod::noaux_tc && !L.exp_probs_b)
            throw Error("model", "missing tensor " + p + "exp_probs_b.bias (noaux_tc routing needs the correction bias)");
        L.gate_exps = &s.get(p + "ffn_gate_exps.weight", {E, F, N});
        L.up_exps = &s.get(p + "ffn_up_exps.weight", {E, F, N});
        L.down_exps = &s.get(p + "ffn_down_exps.weight", {F, E, N});
        if (hp.n_expert_shared > 0) {
            const int64_t FS = F * hp.n_expert_shared;
            L.gate_shexp = &s.get(p + "ffn_gate_shexp.weight", {E, FS});
            L.up_shexp = &s.get(p + "ffn_up_shexp.weight", {E, FS});
            L.down_shexp = &s.get(p + "ffn_down_shexp.weight", {FS, E});
        }
    }
    if (mtp) {
        L.eh_proj = &s.get(p + "nextn.eh_proj.weight", {2 * E, E});
        L.enorm = &s.get(p + "nextn.enorm.weight", {E});
        L.hnorm = &s.get(p + "nextn.hnorm.weight", {E});
        L.nextn_embd = s.get_optional(p + "nextn.embed_tokens.weight", {E, hp.n_vocab});
        L.shared_head_norm = &s.get(p + "nextn.shared_head_norm.weight", {E});
        L.shared_head_head = s.get_optional(p + "nextn.shared_head_head.weight", {E, hp.n_vocab});
    }
    return L;
}

}  // namespace

Deepseek2Model bind_deepseek2(Deepseek2HParams hp, WeightStore store) {
    hp.validate();
    Deepseek2Model m;
    m.hp = hp;
    m.store = std::move(store);
    WeightStore& s = m.store;
    m.token_embd = &s.get("token_embd.weight", {hp.n_embd, hp.n_vocab});
    m.output_norm = &s.get("output_norm.weight", {hp.n_embd});
    m.output = s.get_optional("output.weight", {hp.n_embd, hp.n_vocab});
    if (!m.output) m.output = m.token_embd;  // tied embeddings
    for (int64_t il = 0; il < hp.n_layer; ++il) m.layers.push_back(bind_layer(hp, s, il, false));
    for (int64_t i = 0; i < hp.n_nextn; ++i) m.nextn.push_back(bind_layer(hp, s, hp.n_layer + i, true));
    m.rope = std::make_shared<const RopeTable>(hp.rope_table());
    return m;
}

Deepseek2Model load_deepseek2(const std::string& path) {
    auto file = std::make_shared<const gguf::File>(gguf::File::open(path));
    Deepseek2HParams hp = deepseek2_hparams(*file);
    return bind_deepseek2(hp, WeightStore::from_gguf(std::move(file)));
}

}  // namespace ds3
