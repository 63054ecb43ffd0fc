#include "convert/mapping.h"

#include <functional>

namespace ds3::hf {

namespace {

using Shape = std::vector<uint64_t>;

// When a per-layer entry applies.
enum class When { Always, QLora, NoQLora, Dense, Moe, MoeBias, Shared, Mtp };

struct LayerEntry {
    When when;
    const char* hf;    // after "model.layers.N."
    const char* gguf;  // after "blk.N."
    Role role;
    Source source;
    std::function<Shape(const HfConfig&)> shape;  // PyTorch shape (per expert for stacks)
};

uint64_t shexp_ff(const HfConfig& c) { return c.moe_intermediate_size * c.n_shared_experts; }

// The table. Order within a block is the order tensors are written in.
const std::vector<LayerEntry>& layer_table() {
    using C = const HfConfig&;
    static const std::vector<LayerEntry> t = {
        {When::Always, "input_layernorm.weight", "attn_norm.weight", Role::Norm, Source::Direct,
         [](C c) { return Shape{c.hidden_size}; }},
        {When::QLora, "self_attn.q_a_proj.weight", "attn_q_a.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{*c.q_lora_rank, c.hidden_size}; }},
        {When::QLora, "self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight", Role::Norm, Source::Direct,
         [](C c) { return Shape{*c.q_lora_rank}; }},
        {When::QLora, "self_attn.q_b_proj.weight", "attn_q_b.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.num_attention_heads * c.qk_head_dim(), *c.q_lora_rank}; }},
        {When::NoQLora, "self_attn.q_proj.weight", "attn_q.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.num_attention_heads * c.qk_head_dim(), c.hidden_size}; }},
        {When::Always, "self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size}; }},
        {When::Always, "self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight", Role::Norm, Source::Direct,
         [](C c) { return Shape{c.kv_lora_rank}; }},
        {When::Always, "self_attn.kv_b_proj.weight", "attn_k_b.weight", Role::Matrix, Source::KvbK,
         [](C c) { return Shape{c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}; }},
        {When::Always, "self_attn.kv_b_proj.weight", "attn_v_b.weight", Role::Matrix, Source::KvbV,
         [](C c) { return Shape{c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}; }},
        {When::Always, "self_attn.o_proj.weight", "attn_output.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.hidden_size, c.num_attention_heads * c.v_head_dim}; }},
        {When::Always, "post_attention_layernorm.weight", "ffn_norm.weight", Role::Norm, Source::Direct,
         [](C c) { return Shape{c.hidden_size}; }},
        {When::Dense, "mlp.gate_proj.weight", "ffn_gate.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.intermediate_size, c.hidden_size}; }},
        {When::Dense, "mlp.up_proj.weight", "ffn_up.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.intermediate_size, c.hidden_size}; }},
        {When::Dense, "mlp.down_proj.weight", "ffn_down.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.hidden_size, c.intermediate_size}; }},
        {When::Moe, "mlp.gate.weight", "ffn_gate_inp.weight", Role::Router, Source::Direct,
         [](C c) { return Shape{c.n_routed_experts, c.hidden_size}; }},
        {When::MoeBias, "mlp.gate.e_score_correction_bias", "exp_probs_b.bias", Role::Bias, Source::Direct,
         [](C c) { return Shape{c.n_routed_experts}; }},
        {When::Moe, "mlp.experts.{e}.gate_proj.weight", "ffn_gate_exps.weight", Role::Matrix, Source::ExpertStack,
         [](C c) { return Shape{c.moe_intermediate_size, c.hidden_size}; }},
        {When::Moe, "mlp.experts.{e}.up_proj.weight", "ffn_up_exps.weight", Role::Matrix, Source::ExpertStack,
         [](C c) { return Shape{c.moe_intermediate_size, c.hidden_size}; }},
        {When::Moe, "mlp.experts.{e}.down_proj.weight", "ffn_down_exps.weight", Role::Matrix, Source::ExpertStack,
         [](C c) { return Shape{c.hidden_size, c.moe_intermediate_size}; }},
        {When::Shared, "mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{shexp_ff(c), c.hidden_size}; }},
        {When::Shared, "mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{shexp_ff(c), c.hidden_size}; }},
        {When::Shared, "mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.hidden_size, shexp_ff(c)}; }},
        // The multi-token-prediction block's own tensors (llama.cpp's NextN names).
        {When::Mtp, "eh_proj.weight", "nextn.eh_proj.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.hidden_size, 2 * c.hidden_size}; }},
        {When::Mtp, "embed_tokens.weight", "nextn.embed_tokens.weight", Role::Embedding, Source::Direct,
         [](C c) { return Shape{c.vocab_size, c.hidden_size}; }},
        {When::Mtp, "enorm.weight", "nextn.enorm.weight", Role::Norm, Source::Direct,
         [](C c) { return Shape{c.hidden_size}; }},
        {When::Mtp, "hnorm.weight", "nextn.hnorm.weight", Role::Norm, Source::Direct,
         [](C c) { return Shape{c.hidden_size}; }},
        {When::Mtp, "shared_head.head.weight", "nextn.shared_head_head.weight", Role::Matrix, Source::Direct,
         [](C c) { return Shape{c.vocab_size, c.hidden_size}; }},
        {When::Mtp, "shared_head.norm.weight", "nextn.shared_head_norm.weight", Role::Norm, Source::Direct,
         [](C c) { return Shape{c.hidden_size}; }},
    };
    return t;
}

bool applies(When w, const HfConfig& c, uint64_t il) {
    switch (w) {
    case When::Always: return true;
    case When::QLora: return c.q_lora_rank.has_value();
    case When::NoQLora: return !c.q_lora_rank.has_value();
    case When::Dense: return !c.is_moe_layer(il);
    case When::Moe: return c.is_moe_layer(il);
    case When::MoeBias: return c.is_moe_layer(il) && c.topk_method == "noaux_tc";
    case When::Shared: return c.is_moe_layer(il) && c.n_shared_experts > 0;
    case When::Mtp: return c.is_mtp_layer(il);
    }
    return false;
}

Shape reversed(Shape s) { return Shape(s.rbegin(), s.rend()); }

std::string replace_e(std::string s, uint64_t e) {
    const auto pos = s.find("{e}");
    return pos == std::string::npos ? s : s.replace(pos, 3, std::to_string(e));
}

}  // namespace

std::vector<TensorPlan> plan_tensors(const HfConfig& c) {
    std::vector<TensorPlan> plan;
    plan.push_back({"token_embd.weight", {c.hidden_size, c.vocab_size}, Role::Embedding, Source::Direct,
                    {"model.embed_tokens.weight"}, {c.vocab_size, c.hidden_size}});

    for (uint64_t il = 0; il < c.n_layers_total(); ++il) {
        const std::string hf_prefix = "model.layers." + std::to_string(il) + ".";
        const std::string gg_prefix = "blk." + std::to_string(il) + ".";
        for (const LayerEntry& e : layer_table()) {
            if (!applies(e.when, c, il)) continue;
            TensorPlan p;
            p.gguf_name = gg_prefix + e.gguf;
            p.role = e.role;
            p.source = e.source;
            p.hf_shape = e.shape(c);
            switch (e.source) {
            case Source::Direct:
                p.hf_names = {hf_prefix + e.hf};
                p.ne = reversed(p.hf_shape);
                break;
            case Source::KvbK:
                p.hf_names = {hf_prefix + e.hf};
                p.ne = {c.qk_nope_head_dim, c.kv_lora_rank, c.num_attention_heads};
                break;
            case Source::KvbV:
                p.hf_names = {hf_prefix + e.hf};
                p.ne = {c.kv_lora_rank, c.v_head_dim, c.num_attention_heads};
                break;
            case Source::ExpertStack:
                for (uint64_t x = 0; x < c.n_routed_experts; ++x) p.hf_names.push_back(replace_e(hf_prefix + e.hf, x));
                p.ne = {p.hf_shape[1], p.hf_shape[0], c.n_routed_experts};
                break;
            }
            plan.push_back(std::move(p));
        }
    }

    plan.push_back({"output_norm.weight", {c.hidden_size}, Role::Norm, Source::Direct, {"model.norm.weight"},
                    {c.hidden_size}});
    // Tied embeddings: llama.cpp falls back to token_embd when "output" is absent.
    if (!c.tie_word_embeddings)
        plan.push_back({"output.weight", {c.hidden_size, c.vocab_size}, Role::Matrix, Source::Direct,
                        {"lm_head.weight"}, {c.vocab_size, c.hidden_size}});
    return plan;
}

bool is_ignorable_hf_tensor(const std::string& hf_name) {
    const std::string_view suffix = "rotary_emb.inv_freq";
    return hf_name.size() >= suffix.size() &&
           hf_name.compare(hf_name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace ds3::hf
