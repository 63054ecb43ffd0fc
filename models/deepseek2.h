// The DeepSeek MLA + sparse-MoE family (V2, V2-Lite, V3, R1, Kimi-K2, ...), GGUF
// architecture "deepseek2": hyperparameters from metadata, the expected tensors, and
// build_graph() for one batch of tokens.
//
// Metadata: llama.cpp's deepseek2.* keys, plus ds3.* keys for what llama.cpp does not
// store (topk_method, scoring_func, YaRN mscale/mscale_all_dim/beta_*). Files without
// the ds3.* keys get llama.cpp's meaning: expert_gating_func 1 = softmax, 2 = sigmoid;
// mscale_all_dim = yarn_log_multiplier / 0.1; beta_fast 32, beta_slow 1.
//
// MLA layouts accepted (ARCHITECTURE.md "The file"): llama.cpp's current one (3-D
// attn_k_b / attn_v_b), older files with only attn_kv_b, and ik_llama.cpp's (attn_kv_b
// plus 2-D attn_k_b / attn_v_b); for the last two W_kb / W_vb are split from attn_kv_b
// at load time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/graph/graph.h"
#include "runtime/weights.h"

namespace ds3 {
namespace gguf {
class File;
}

struct Deepseek2HParams {
    int64_t n_vocab = 0;
    int64_t n_embd = 0;
    int64_t n_layer = 0;  // main blocks (the MTP blocks are not counted here)
    int64_t n_nextn = 0;  // MTP blocks, stored after the main ones
    int64_t n_head = 0;
    int64_t q_lora = 0;  // 0: no q compression (V2-Lite's q_proj)
    int64_t kv_lora = 0;
    int64_t qk_nope = 0;
    int64_t qk_rope = 0;
    int64_t v_head = 0;
    int64_t n_ff = 0;      // dense MLP width
    int64_t n_ff_exp = 0;  // routed expert width (the shared MLP is n_ff_exp * n_expert_shared)
    int64_t n_expert = 0;
    int64_t n_expert_used = 0;
    int64_t n_expert_shared = 0;
    int64_t n_group = 1;
    int64_t topk_group = 1;
    int64_t n_dense_lead = 0;  // first_k_dense_replace
    int64_t moe_layer_freq = 1;
    int64_t n_ctx_train = 0;
    float rms_eps = 1e-6f;
    double rope_base = 10000.0;

    bool yarn = false;  // rope_scaling present (type yarn)
    double yarn_factor = 1.0;
    double yarn_orig_ctx = 4096.0;
    double mscale = 1.0;
    double mscale_all_dim = 0.0;
    double beta_fast = 32.0;
    double beta_slow = 1.0;

    ScoringFunc scoring = ScoringFunc::softmax;
    TopkMethod topk = TopkMethod::greedy;
    bool norm_topk = false;
    float routed_scale = 1.0f;

    bool is_moe_layer(int64_t il) const {
        return n_expert > 0 && il >= n_dense_lead && il % moe_layer_freq == 0;
    }
    // 1/sqrt(qk_nope + qk_rope), times mscale² when YaRN has mscale_all_dim.
    float softmax_scale() const;
    // inv_freq (plain, or YaRN-blended with DeepSeek's correction range and linear
    // ramp) and the cos/sin factor yarn_get_mscale(factor, mscale) /
    // yarn_get_mscale(factor, mscale_all_dim).
    RopeTable rope_table() const;
    RouteParams route_params() const;
    // Throws Error("model", ...) on inconsistent values.
    void validate() const;
};

Deepseek2HParams deepseek2_hparams(const gguf::File& f);

struct Deepseek2Layer {
    const Weight* attn_norm = nullptr;
    const Weight* q_a = nullptr;       // q_lora only
    const Weight* q_a_norm = nullptr;  // q_lora only
    const Weight* q_b = nullptr;       // q_lora only
    const Weight* q = nullptr;         // without q_lora
    const Weight* kv_a_mqa = nullptr;
    const Weight* kv_a_norm = nullptr;
    const Weight* k_b = nullptr;  // {qk_nope, kv_lora, n_head}
    const Weight* v_b = nullptr;  // {kv_lora, v_head, n_head}
    const Weight* attn_out = nullptr;
    const Weight* ffn_norm = nullptr;
    // dense layers
    const Weight* ffn_gate = nullptr;
    const Weight* ffn_up = nullptr;
    const Weight* ffn_down = nullptr;
    // MoE layers
    const Weight* gate_inp = nullptr;
    const Weight* exp_probs_b = nullptr;  // optional (noaux_tc)
    const Weight* gate_exps = nullptr;
    const Weight* up_exps = nullptr;
    const Weight* down_exps = nullptr;
    const Weight* gate_shexp = nullptr;  // when n_expert_shared > 0
    const Weight* up_shexp = nullptr;
    const Weight* down_shexp = nullptr;
    // MTP blocks
    const Weight* eh_proj = nullptr;
    const Weight* enorm = nullptr;
    const Weight* hnorm = nullptr;
    const Weight* nextn_embd = nullptr;  // optional: the main token_embd otherwise
    const Weight* shared_head_norm = nullptr;
    const Weight* shared_head_head = nullptr;  // optional: the main output otherwise
};

struct Deepseek2Model {
    Deepseek2HParams hp;
    WeightStore store;
    const Weight* token_embd = nullptr;
    const Weight* output_norm = nullptr;
    const Weight* output = nullptr;  // token_embd when tied
    std::vector<Deepseek2Layer> layers;
    std::vector<Deepseek2Layer> nextn;  // loaded and validated; used by speculative decoding
    std::shared_ptr<const RopeTable> rope;
};

// Binds and validates every expected tensor (shapes; W_kb / W_vb derived when needed).
Deepseek2Model bind_deepseek2(Deepseek2HParams hp, WeightStore store);
// Opens a GGUF file of architecture deepseek2.
Deepseek2Model load_deepseek2(const std::string& path);

struct BatchSpec {
    int64_t n_tokens = 0;
    int64_t pos0 = 0;         // position of the first token (tokens already cached)
    bool all_logits = true;   // false: only the last token's logits
};

// The graph of one batch. Inputs: "tokens" (i32 [T,1]) and "positions" (i32 [T,1]).
// Output: "logits" ([T or 1, n_vocab]). Intermediates: "embd", then per layer l
// "l{l}.attn_norm", "l{l}.q", "l{l}.q_roped", "l{l}.kv_a", "l{l}.kv_latent",
// "l{l}.k_pe", "l{l}.attn_ctx", "l{l}.attn_out", "l{l}.attn_resid", "l{l}.ffn_norm",
// "l{l}.moe_route", "l{l}.moe_out", "l{l}.shexp_out", "l{l}.ffn_out", "l{l}.resid",
// and "result_norm".
Graph build_graph(const Deepseek2Model& m, const BatchSpec& b);

}  // namespace ds3
