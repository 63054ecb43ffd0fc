#include "models/presets.h"

#include <algorithm>

#include "convert/hf_config.h"
#include "runtime/error.h"

namespace ds3 {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error("preset", msg); }

// Shapes of the tiny conformance fixtures (../shared/fixtures), so that synthetic and
// fixture files exercise the same code paths.
const char* kV3Tiny = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 1024, "hidden_size": 256, "intermediate_size": 384, "moe_intermediate_size": 64,
  "num_hidden_layers": 4, "num_nextn_predict_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
  "n_shared_experts": 1, "n_routed_experts": 16, "routed_scaling_factor": 2.5, "kv_lora_rank": 64,
  "q_lora_rank": 96, "qk_rope_head_dim": 16, "v_head_dim": 32, "qk_nope_head_dim": 32,
  "topk_method": "noaux_tc", "n_group": 4, "topk_group": 2, "num_experts_per_tok": 4, "moe_layer_freq": 1,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "scoring_func": "sigmoid", "hidden_act": "silu",
  "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false, "attention_bias": false,
  "torch_dtype": "bfloat16",
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]}
})";

const char* kV2LiteTiny = R"({
  "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
  "vocab_size": 1024, "hidden_size": 192, "intermediate_size": 320, "moe_intermediate_size": 48,
  "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
  "n_shared_experts": 2, "n_routed_experts": 12, "routed_scaling_factor": 1.0, "kv_lora_rank": 64,
  "q_lora_rank": null, "qk_rope_head_dim": 16, "v_head_dim": 32, "qk_nope_head_dim": 32,
  "topk_method": "greedy", "n_group": 1, "topk_group": 1, "num_experts_per_tok": 3, "moe_layer_freq": 1,
  "first_k_dense_replace": 1, "norm_topk_prob": false, "scoring_func": "softmax", "hidden_act": "silu",
  "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
  "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false, "attention_bias": false,
  "torch_dtype": "bfloat16",
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]}
})";

// Real configurations (config.json of the public releases, fields the model uses). With
// SynthOptions::layers they give models of the real width and fewer layers.
const char* kV2Lite = R"({
  "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
  "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
  "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
  "n_shared_experts": 2, "n_routed_experts": 64, "routed_scaling_factor": 1.0, "kv_lora_rank": 512,
  "q_lora_rank": null, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
  "topk_method": "greedy", "n_group": 1, "topk_group": 1, "num_experts_per_tok": 6, "moe_layer_freq": 1,
  "first_k_dense_replace": 1, "norm_topk_prob": false, "scoring_func": "softmax", "hidden_act": "silu",
  "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
  "bos_token_id": 100000, "eos_token_id": 100001, "tie_word_embeddings": false, "attention_bias": false,
  "torch_dtype": "bfloat16",
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]}
})";

const char* kV3 = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
  "num_hidden_layers": 61, "num_nextn_predict_layers": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
  "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
  "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
  "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "moe_layer_freq": 1,
  "first_k_dense_replace": 3, "norm_topk_prob": true, "scoring_func": "sigmoid", "hidden_act": "silu",
  "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false, "attention_bias": false,
  "torch_dtype": "bfloat16",
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]}
})";

// Kimi-K2 (moonshotai/Kimi-K2-Instruct, July 2025): the V3 architecture with 384 experts,
// 64 heads, one dense layer, no expert groups, no MTP, rope_theta 50000 and YaRN with
// beta_fast = beta_slow = 1 over 32x.
const char* kKimiK2 = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2",
  "vocab_size": 163840, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
  "num_hidden_layers": 61, "num_nextn_predict_layers": 0, "num_attention_heads": 64, "num_key_value_heads": 64,
  "n_shared_experts": 1, "n_routed_experts": 384, "routed_scaling_factor": 2.827, "kv_lora_rank": 512,
  "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
  "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1, "num_experts_per_tok": 8, "moe_layer_freq": 1,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "scoring_func": "sigmoid", "hidden_act": "silu",
  "max_position_embeddings": 131072, "rms_norm_eps": 1e-06, "rope_theta": 50000.0,
  "rope_scaling": {"type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
                   "beta_fast": 1.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
  "bos_token_id": 163584, "eos_token_id": 163585, "tie_word_embeddings": false, "attention_bias": false,
  "torch_dtype": "bfloat16",
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]}
})";

}  // namespace

const std::vector<ModelPreset>& model_presets() {
    static const std::vector<ModelPreset> p = {
        {"v3-tiny", "DeepSeek-V3 layout at the v3-tiny fixture's shapes: FP8, q_lora, YaRN, noaux_tc, 1 dense + 3 MoE + MTP",
         kV3Tiny, 2},
        {"v2-lite-tiny", "DeepSeek-V2-Lite layout at the v2-lite-tiny fixture's shapes: q_proj, softmax, greedy",
         kV2LiteTiny, 2},
        {"v2-lite", "DeepSeek-V2-Lite's real configuration (27 layers, 15.7B parameters, 2.4B activated; --layers for fewer)",
         kV2Lite, 4},
        {"v3", "DeepSeek-V3 / R1's real configuration (61 layers + MTP, 671B parameters, 37B activated; --layers for fewer)",
         kV3, 8},
        {"kimi-k2", "Kimi-K2's real configuration (61 layers, 384 experts, 1.03T parameters, 32B activated; --layers for fewer)",
         kKimiK2, 8},
    };
    return p;
}

const ModelPreset* find_model_preset(std::string_view name) {
    for (const ModelPreset& p : model_presets())
        if (p.name == name) return &p;
    return nullptr;
}

std::string model_preset_names() {
    std::string names;
    for (const ModelPreset& p : model_presets()) names += (names.empty() ? "" : ", ") + p.name;
    return names;
}

Deepseek2HParams hparams_from_config(const hf::HfConfig& c, int64_t layers) {
    if (layers < 0) fail("layers must be non-negative, found " + std::to_string(layers));
    auto i64 = [](uint64_t v) { return static_cast<int64_t>(v); };
    Deepseek2HParams hp;
    hp.n_vocab = i64(c.vocab_size);
    hp.n_embd = i64(c.hidden_size);
    hp.n_layer = layers > 0 ? layers : i64(c.num_hidden_layers);
    hp.n_nextn = 0;
    hp.n_head = i64(c.num_attention_heads);
    hp.q_lora = c.q_lora_rank ? i64(*c.q_lora_rank) : 0;
    hp.kv_lora = i64(c.kv_lora_rank);
    hp.qk_nope = i64(c.qk_nope_head_dim);
    hp.qk_rope = i64(c.qk_rope_head_dim);
    hp.v_head = i64(c.v_head_dim);
    hp.n_ff = i64(c.intermediate_size);
    hp.n_ff_exp = i64(c.moe_intermediate_size);
    hp.n_expert = i64(c.n_routed_experts);
    hp.n_expert_used = i64(c.num_experts_per_tok);
    hp.n_expert_shared = i64(c.n_shared_experts);
    hp.n_group = std::max<int64_t>(1, i64(c.n_group));
    hp.topk_group = c.topk_group == 0 ? hp.n_group : i64(c.topk_group);
    hp.n_dense_lead = i64(c.first_k_dense_replace);
    hp.moe_layer_freq = std::max<int64_t>(1, i64(c.moe_layer_freq));
    hp.n_ctx_train = i64(c.max_position_embeddings);
    hp.rms_eps = static_cast<float>(c.rms_norm_eps);
    hp.rope_base = c.rope_theta;
    if (c.rope_scaling) {
        const hf::RopeScaling& r = *c.rope_scaling;
        if (r.type != "yarn") fail("rope_scaling type '" + r.type + "' is not supported (expected yarn)");
        hp.yarn = true;
        hp.yarn_factor = r.factor;
        hp.yarn_orig_ctx = static_cast<double>(r.original_max_position_embeddings);
        hp.beta_fast = r.beta_fast;
        hp.beta_slow = r.beta_slow;
        hp.mscale = r.mscale;
        hp.mscale_all_dim = r.mscale_all_dim;
    }
    hp.scoring = c.scoring_func == "sigmoid" ? ScoringFunc::sigmoid : ScoringFunc::softmax;
    hp.topk = c.topk_method == "noaux_tc"               ? TopkMethod::noaux_tc
              : c.topk_method == "group_limited_greedy" ? TopkMethod::group_limited_greedy
                                                        : TopkMethod::greedy;
    hp.norm_topk = c.norm_topk_prob;
    hp.routed_scale = static_cast<float>(c.routed_scaling_factor);
    hp.validate();
    return hp;
}

Deepseek2HParams preset_hparams(std::string_view name, int64_t layers) {
    const ModelPreset* p = find_model_preset(name);
    if (!p) fail("unknown preset '" + std::string(name) + "' (known: " + model_preset_names() + ")");
    return hparams_from_config(hf::parse_config(p->config_json, "preset " + p->name), layers);
}

int64_t TensorSpec::n_elements() const {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    return n;
}

std::vector<TensorSpec> deepseek2_tensor_specs(const Deepseek2HParams& hp) {
    using R = TensorRole;
    const int64_t E = hp.n_embd, H = hp.n_head, qd = hp.qk_nope + hp.qk_rope;
    std::vector<TensorSpec> t;
    t.push_back({"token_embd.weight", {E, hp.n_vocab}, R::Embedding});
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        t.push_back({p + "attn_norm.weight", {E}, R::Norm});
        if (hp.q_lora > 0) {
            t.push_back({p + "attn_q_a.weight", {E, hp.q_lora}, R::Attention});
            t.push_back({p + "attn_q_a_norm.weight", {hp.q_lora}, R::Norm});
            t.push_back({p + "attn_q_b.weight", {hp.q_lora, H * qd}, R::Attention});
        } else {
            t.push_back({p + "attn_q.weight", {E, H * qd}, R::Attention});
        }
        t.push_back({p + "attn_kv_a_mqa.weight", {E, hp.kv_lora + hp.qk_rope}, R::Attention});
        t.push_back({p + "attn_kv_a_norm.weight", {hp.kv_lora}, R::Norm});
        t.push_back({p + "attn_k_b.weight", {hp.qk_nope, hp.kv_lora, H}, R::Attention});
        t.push_back({p + "attn_v_b.weight", {hp.kv_lora, hp.v_head, H}, R::Attention});
        t.push_back({p + "attn_output.weight", {H * hp.v_head, E}, R::Attention});
        t.push_back({p + "ffn_norm.weight", {E}, R::Norm});
        if (!hp.is_moe_layer(il)) {
            t.push_back({p + "ffn_gate.weight", {E, hp.n_ff}, R::DenseFfn});
            t.push_back({p + "ffn_up.weight", {E, hp.n_ff}, R::DenseFfn});
            t.push_back({p + "ffn_down.weight", {hp.n_ff, E}, R::DenseFfn});
            continue;
        }
        const int64_t N = hp.n_expert, F = hp.n_ff_exp;
        t.push_back({p + "ffn_gate_inp.weight", {E, N}, R::Router});
        if (hp.topk == TopkMethod::noaux_tc) t.push_back({p + "exp_probs_b.bias", {N}, R::Router});
        t.push_back({p + "ffn_gate_exps.weight", {E, F, N}, R::RoutedExpert});
        t.push_back({p + "ffn_up_exps.weight", {E, F, N}, R::RoutedExpert});
        t.push_back({p + "ffn_down_exps.weight", {F, E, N}, R::RoutedExpert});
        if (hp.n_expert_shared > 0) {
            const int64_t FS = F * hp.n_expert_shared;
            t.push_back({p + "ffn_gate_shexp.weight", {E, FS}, R::SharedExpert});
            t.push_back({p + "ffn_up_shexp.weight", {E, FS}, R::SharedExpert});
            t.push_back({p + "ffn_down_shexp.weight", {FS, E}, R::SharedExpert});
        }
    }
    t.push_back({"output_norm.weight", {E}, R::Norm});
    t.push_back({"output.weight", {E, hp.n_vocab}, R::Output});
    return t;
}

ParamCount count_params(const Deepseek2HParams& hp) {
    ParamCount c;
    for (const TensorSpec& s : deepseek2_tensor_specs(hp)) {
        const uint64_t n = static_cast<uint64_t>(s.n_elements());
        c.total += n;
        switch (s.role) {
            case TensorRole::Embedding: c.embedding += n; break;
            case TensorRole::Output: c.output += n; break;
            case TensorRole::Norm: c.norms += n; break;
            case TensorRole::Attention: c.attention += n; break;
            case TensorRole::DenseFfn: c.dense_ffn += n; break;
            case TensorRole::Router: c.router += n; break;
            case TensorRole::SharedExpert: c.shared_experts += n; break;
            case TensorRole::RoutedExpert: c.routed_experts += n; break;
        }
    }
    const uint64_t chosen = hp.n_expert > 0 ? c.routed_experts / static_cast<uint64_t>(hp.n_expert) *
                                                  static_cast<uint64_t>(hp.n_expert_used)
                                            : 0;
    c.activated = c.total - c.embedding - c.routed_experts + chosen;
    return c;
}

}  // namespace ds3
