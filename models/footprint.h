// What a model reads from memory: its weight bytes, and the bytes one decoded token reads
// (the roofline accounting of `ds3 bench`, docs/performance.md "Benchmarks").
#pragma once

#include <cstdint>

#include "models/deepseek2.h"

namespace ds3 {

struct WeightBytes {
    uint64_t total = 0;
    uint64_t params = 0;         // elements
    uint64_t routed_experts = 0;  // bytes of all routed experts
};
// The bound main model: embeddings, output, every main layer (MTP blocks not counted).
WeightBytes model_weight_bytes(const Deepseek2Model& m);

// Bytes one decoded token reads:
//   embedding_row  its row of token_embd;
//   non_expert     every other weight of every main layer except the routed experts —
//                  attention (q, kv_a, W_kb, W_vb, output), norms, dense FFNs, router and
//                  its bias, shared experts — read in full;
//   routed         the chosen experts' gate/up/down: experts_per_moe_layer of each MoE
//                  layer's n_expert (k when a token's routes are known);
//   output         output_norm and the output matrix, in full;
//   cache          the latent cache rows attention reads: cache_positions (the context
//                  including the token) × cache_bytes_per_position (all layers).
struct DecodeBytes {
    double embedding_row = 0, non_expert = 0, routed = 0, output = 0, cache = 0;
    double weights() const { return embedding_row + non_expert + routed + output; }
    double total() const { return weights() + cache; }
};
DecodeBytes decode_bytes(const Deepseek2Model& m, double experts_per_moe_layer, double cache_positions,
                         double cache_bytes_per_position);

}  // namespace ds3
