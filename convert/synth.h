// `ds3 synth`: random-weight checkpoints in the exact layout of a DeepSeek Hugging Face
// release, for tests, benchmarks and the quickstart. What is written follows the V3
// release: attention and MLP linear weights (dense, routed and shared experts) as
// F8_E4M3 with F32 `<name>_scale_inv` 128x128 block scales (partial blocks included);
// embeddings, norms, the router, lm_head and the MTP extras as BF16;
// e_score_correction_bias as F32; tensors spread over shards listed by
// model.safetensors.index.json; config.json and generation_config.json beside them.
// Tensor names and shapes come from the one mapping table (convert/mapping.h).
//
// A preset is a config.json from the one table of models/presets.h (the fixtures' tiny
// shapes, V3/R1 671B, V2-Lite, Kimi-K2), which `ds3 bench --synthetic` shares. Generation streams tensor by tensor, so size is no limit
// beyond the disk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds3::hf {

struct SynthPreset {
    std::string name;
    std::string description;
    std::string config_json;  // the release's config.json
    uint32_t n_shards = 2;
};

const std::vector<SynthPreset>& synth_presets();
const SynthPreset* find_synth_preset(const std::string& name);

struct SynthOptions {
    std::string preset;
    std::string out_dir;
    uint64_t seed = 0;
    std::string tokenizer_dir;  // copy tokenizer.json / tokenizer_config.json from here
    uint64_t layers = 0;        // num_hidden_layers instead of the preset's (0: the preset's)
};

struct SynthStats {
    size_t n_tensors = 0;  // safetensors entries, scales included
    uint64_t bytes = 0;
};

// Throws Error("synth", ...) for an unknown preset or an unwritable directory.
SynthStats synth(const SynthOptions& opts);

}  // namespace ds3::hf
