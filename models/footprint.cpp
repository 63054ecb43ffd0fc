#include "models/footprint.h"

#include <initializer_list>

namespace ds3 {

namespace {

uint64_t bytes(std::initializer_list<const Weight*> ws) {
    uint64_t n = 0;
    for (const Weight* w : ws)
        if (w) n += w->nbytes;
    return n;
}

uint64_t elements(std::initializer_list<const Weight*> ws) {
    uint64_t n = 0;
    for (const Weight* w : ws)
        if (w) n += static_cast<uint64_t>(w->n_elements());
    return n;
}

// f(every weight of the layer but the routed experts, the routed expert stacks).
template <class F>
void for_layer_weights(const Deepseek2Layer& L, F&& f) {
    f({L.attn_norm, L.q_a, L.q_a_norm, L.q_b, L.q, L.kv_a_mqa, L.kv_a_norm, L.k_b, L.v_b, L.attn_out, L.ffn_norm,
       L.ffn_gate, L.ffn_up, L.ffn_down, L.gate_inp, L.exp_probs_b, L.gate_shexp, L.up_shexp, L.down_shexp},
      {L.gate_exps, L.up_exps, L.down_exps});
}

}  // namespace

WeightBytes model_weight_bytes(const Deepseek2Model& m) {
    WeightBytes w;
    const bool tied = m.output == m.token_embd;
    w.total = bytes({m.token_embd, m.output_norm}) + (tied ? 0 : bytes({m.output}));
    w.params = elements({m.token_embd, m.output_norm}) + (tied ? 0 : elements({m.output}));
    for (const Deepseek2Layer& L : m.layers)
        for_layer_weights(L, [&](std::initializer_list<const Weight*> dense, std::initializer_list<const Weight*> exps) {
            w.total += bytes(dense) + bytes(exps);
            w.params += elements(dense) + elements(exps);
            w.routed_experts += bytes(exps);
        });
    return w;
}

DecodeBytes decode_bytes(const Deepseek2Model& m, double experts_per_moe_layer, double cache_positions,
                         double cache_bytes_per_position) {
    DecodeBytes d;
    d.embedding_row = static_cast<double>(m.token_embd->row_bytes());
    d.output = static_cast<double>(bytes({m.output_norm, m.output}));
    for (const Deepseek2Layer& L : m.layers)
        for_layer_weights(L, [&](std::initializer_list<const Weight*> dense, std::initializer_list<const Weight*> exps) {
            d.non_expert += static_cast<double>(bytes(dense));
            if (L.gate_exps)
                d.routed += static_cast<double>(bytes(exps)) * experts_per_moe_layer / static_cast<double>(L.gate_exps->ne[2]);
        });
    d.cache = cache_positions * cache_bytes_per_position;
    return d;
}

}  // namespace ds3
