// In-memory random deepseek2 models for the runtime tests: no file, no fixtures.
// Sizes are deliberately odd so that no kernel can lean on a power of two. Also the
// prompt the model tests (CPU and CUDA) run them on, and how they run it.
#pragma once

#include <cstdint>
#include <vector>

#include "models/deepseek2.h"
#include "models/runner.h"

namespace ds3::test {

struct TinyOptions {
    TypeId matrix_type = TypeId::F32;  // F32, BF16 or F16 for every matrix
    bool q_lora = true;                // false: V2-Lite's q_proj
    bool kv_b_only = false;            // older MLA layout: attn_kv_b instead of attn_k_b/attn_v_b
    bool v2_routing = false;           // softmax + group_limited_greedy instead of sigmoid + noaux_tc
    uint32_t seed = 1;
};

Deepseek2HParams tiny_hparams(const TinyOptions& o = {});
Deepseek2Model tiny_model(const TinyOptions& o = {});

// Eleven ids below the tiny vocabulary, with a repeat.
extern const std::vector<int32_t> kTinyPrompt;

// Logits [T][n_vocab] of kTinyPrompt in one batch, or one token at a time, on a fresh
// Runner (64 positions) over `bs` with placement `pl`.
std::vector<float> run_batch(const Deepseek2Model& m, std::vector<Backend*> bs, ExpertPlacement pl = {});
std::vector<float> run_incremental(const Deepseek2Model& m, std::vector<Backend*> bs, ExpertPlacement pl = {});

// max |a - b|; REQUIREs equal sizes.
float max_diff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace ds3::test
