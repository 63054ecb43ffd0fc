// Model presets: the config.json of each model shape we synthesise — the tiny shapes of
// the conformance fixtures and the real releases (DeepSeek-V3/R1, DeepSeek-V2-Lite,
// Kimi-K2). One table serves `ds3 synth` (files on disk) and `ds3 bench --synthetic`
// (weights in memory). Also the hyperparameters a config gives (as the loader would
// read them from the GGUF file `ds3 convert` writes) and parameter counts.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "models/deepseek2.h"

namespace ds3 {
namespace hf {
struct HfConfig;
}

struct ModelPreset {
    std::string name;
    std::string description;
    std::string config_json;  // the release's config.json (the fields the model uses)
    uint32_t n_shards = 2;    // ds3 synth: safetensors shards
};

const std::vector<ModelPreset>& model_presets();
const ModelPreset* find_model_preset(std::string_view name);  // nullptr when unknown
std::string model_preset_names();                            // "v3-tiny, v2-lite-tiny, ..."

// Hyperparameters of a config (what deepseek2_hparams() reads from the converted file),
// without the MTP blocks. layers > 0 keeps that many main layers: the leading dense
// layers stay as the config has them (all of them when layers <= first_k_dense_replace).
// Throws Error("preset", ...) for a rope scaling other than YaRN or layers < 0.
Deepseek2HParams hparams_from_config(const hf::HfConfig& c, int64_t layers = 0);
// Throws Error("preset", ...) for an unknown name (listing the known ones).
Deepseek2HParams preset_hparams(std::string_view name, int64_t layers = 0);

// One weight of the main model (no MTP blocks) in the layout bind_deepseek2() expects
// (3-D attn_k_b / attn_v_b, untied output), with its role for accounting.
enum class TensorRole : uint8_t { Embedding, Output, Norm, Attention, DenseFfn, Router, SharedExpert, RoutedExpert };
struct TensorSpec {
    std::string name;       // GGUF name
    std::vector<int64_t> ne;  // ggml order
    TensorRole role;
    int64_t n_elements() const;
};
std::vector<TensorSpec> deepseek2_tensor_specs(const Deepseek2HParams& hp);

struct ParamCount {
    uint64_t total = 0;      // every weight of the main model (MTP blocks excluded)
    // Used per token: everything but the routed experts not chosen (k of n_expert per
    // MoE layer) and the token-embedding table (a row lookup, not a matmul) — the
    // convention of DeepSeek's "37B activated" and "2.4B activated".
    uint64_t activated = 0;
    uint64_t embedding = 0, output = 0, norms = 0, attention = 0, dense_ffn = 0, router = 0, shared_experts = 0,
             routed_experts = 0;
};
ParamCount count_params(const Deepseek2HParams& hp);

}  // namespace ds3
