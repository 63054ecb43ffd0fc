// config.json and generation_config.json of a Hugging Face DeepSeek release, parsed into
// plain structs. Accepted: DeepSeek-V2 / V2-Lite (DeepseekV2ForCausalLM, model_type
// deepseek_v2; V2-Lite has q_lora_rank null), DeepSeek-V3 / R1 (DeepseekV3ForCausalLM,
// deepseek_v3) and Kimi-K2 (model_type kimi_k2 with the V3 fields). Anything else, a
// missing required field or a field of the wrong JSON type is rejected with an
// Error("config", "<path>: field 'x': ...") naming the field. Defaults for optional
// fields are those of the transformers config classes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ds3::hf {

enum class Family { V2, V3 };

struct RopeScaling {
    std::string type = "yarn";  // the only kind DeepSeek releases use
    double factor = 1.0;
    uint64_t original_max_position_embeddings = 0;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double mscale = 1.0;
    double mscale_all_dim = 0.0;  // 0 when absent (transformers' default)
};

// quantization_config of the FP8 releases.
struct QuantConfig {
    std::string quant_method;  // "fp8"
    std::string fmt;           // "e4m3"
    uint32_t block_out = 128;  // weight_block_size[0]: rows per scale block
    uint32_t block_in = 128;   // weight_block_size[1]: columns per scale block
};

struct HfConfig {
    Family family = Family::V3;
    std::string architecture;  // architectures[0], e.g. "DeepseekV3ForCausalLM"
    std::string model_type;    // "deepseek_v3", "deepseek_v2", "kimi_k2"

    uint64_t hidden_size = 0;
    uint64_t vocab_size = 0;
    uint64_t num_hidden_layers = 0;  // without the MTP layers
    uint64_t num_attention_heads = 0;
    uint64_t num_key_value_heads = 0;  // informational: MLA has one latent "head"
    std::optional<uint64_t> q_lora_rank;  // absent/null: plain q_proj (V2-Lite)
    uint64_t kv_lora_rank = 0;
    uint64_t qk_nope_head_dim = 0;
    uint64_t qk_rope_head_dim = 0;
    uint64_t v_head_dim = 0;
    uint64_t intermediate_size = 0;      // dense FFN
    uint64_t moe_intermediate_size = 0;  // one routed expert (and one shared expert)
    uint64_t n_routed_experts = 0;
    uint64_t n_shared_experts = 0;
    uint64_t num_experts_per_tok = 0;
    uint64_t first_k_dense_replace = 0;
    uint64_t moe_layer_freq = 1;
    uint64_t n_group = 1;
    uint64_t topk_group = 1;
    std::string topk_method = "greedy";  // greedy | group_limited_greedy | noaux_tc
    std::string scoring_func = "softmax";  // softmax | sigmoid
    bool norm_topk_prob = false;
    double routed_scaling_factor = 1.0;
    double rms_norm_eps = 1e-6;
    double rope_theta = 10000.0;
    std::optional<RopeScaling> rope_scaling;
    uint64_t max_position_embeddings = 0;
    uint64_t num_nextn_predict_layers = 0;
    std::optional<int64_t> bos_token_id, eos_token_id;
    bool tie_word_embeddings = false;
    std::optional<QuantConfig> quantization_config;

    uint64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
    uint64_t n_layers_total() const { return num_hidden_layers + num_nextn_predict_layers; }
    // transformers' rule: routed experts from first_k_dense_replace on, every moe_layer_freq-th.
    bool is_moe_layer(uint64_t il) const {
        return n_routed_experts > 0 && il >= first_k_dense_replace && il % moe_layer_freq == 0;
    }
    bool is_mtp_layer(uint64_t il) const { return il >= num_hidden_layers; }
};

// generation_config.json: sampling defaults, all optional.
struct GenerationConfig {
    std::optional<double> temperature;
    std::optional<double> top_p;
    std::optional<int64_t> top_k;
    std::optional<bool> do_sample;
    std::optional<int64_t> bos_token_id;
    std::vector<int64_t> eos_token_ids;  // an int or a list in the file
};

// Parses config.json text; `path` is only used in messages.
HfConfig parse_config(const std::string& json_text, const std::string& path = "config.json");
// Reads <dir>/config.json.
HfConfig read_config(const std::string& dir);

GenerationConfig parse_generation_config(const std::string& json_text,
                                         const std::string& path = "generation_config.json");
// Reads <dir>/generation_config.json, or nullopt when the release has none.
std::optional<GenerationConfig> read_generation_config(const std::string& dir);

}  // namespace ds3::hf
