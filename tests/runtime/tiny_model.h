// In-memory random deepseek2 models for the runtime tests: no file, no fixtures.
// Sizes are deliberately odd so that no kernel can lean on a power of two.
#pragma once

#include <cstdint>

#include "models/deepseek2.h"

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

}  // namespace ds3::test
