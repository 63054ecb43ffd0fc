// Synthetic in-memory models: every weight type builds and runs with finite logits, the
// mapped pool gives distinct addresses and valid blocks, and the byte accounting of a
// decoded token against a hand count.
#include <catch2/catch.hpp>

#include <cmath>
#include <set>

#include "tiny_model.h"
#include "backends/backend.h"
#include "models/footprint.h"
#include "models/presets.h"
#include "models/runner.h"
#include "models/synthetic.h"
#include "quantize/formats.h"
#include "runtime/error.h"

using namespace ds3;

namespace {

bool all_finite(const std::vector<float>& v) {
    for (float x : v)
        if (!std::isfinite(x)) return false;
    return true;
}


}  // namespace

TEST_CASE("synthetic: bytes read per decoded token, against a hand count", "[bench][synthetic]") {
    const auto target = quant::parse_target("f32");
    REQUIRE(target);
    const SyntheticModel sm = build_synthetic(test::tiny_hparams(), *target, 1);
    // Per layer, elements: norms 40 + 24 + 20 + 40, q_a 40*24, q_b 24*3*16, kv_a 40*26,
    // k_b 10*20*3, v_b 20*12*3, attn_output 36*40.
    const double attn = 40 + 960 + 24 + 1152 + 1040 + 20 + 600 + 720 + 1440 + 40;  // 6036
    const double dense = 3 * 40 * 36;                                              // layer 0's FFN
    const double moe_fixed = 40 * 8 + 8 + 3 * 40 * 14;  // router, its bias, one shared expert
    const double expert = 3 * 40 * 14;                  // gate + up + down of one routed expert
    const double output = 40 + 40 * 53;                 // output_norm + output
    const DecodeBytes d = decode_bytes(sm.model, 3, 10, 312);
    CHECK(d.embedding_row == 40 * 4);
    CHECK(d.non_expert == (3 * attn + dense + 2 * moe_fixed) * 4);
    CHECK(d.routed == 2 * 3 * expert * 4);
    CHECK(d.output == output * 4);
    CHECK(d.cache == 3120);
    CHECK(d.total() == (40 + 3 * attn + dense + 2 * moe_fixed + 6 * expert + output) * 4 + 3120);
    // The whole model, and count_params on the same shapes.
    const double total = 53 * 40 + 3 * attn + dense + 2 * (moe_fixed + 8 * expert) + output;
    const WeightBytes w = model_weight_bytes(sm.model);
    CHECK(w.params == total);
    CHECK(w.total == total * 4);
    CHECK(w.routed_experts == 2 * 8 * expert * 4);
    CHECK(sm.weight_bytes == w.total);
    const ParamCount c = count_params(sm.model.hp);
    CHECK(c.total == total);
    CHECK(c.activated == total - 53 * 40 - 2 * 5 * expert);
    // Expected experts: a fraction of each MoE layer's stack.
    CHECK(decode_bytes(sm.model, 0.5, 0, 0).routed == 2 * 0.5 * expert * 4);
    // The cache the runner keeps: (kv_lora + qk_rope) f32 per layer and position.
    auto cpu = create_backend("cpu", {1});
    Runner r(sm.model, {cpu.get()}, 8);
    CHECK(r.cache().bytes_per_token() == 312);
}

TEST_CASE("synthetic: every weight type runs with finite logits", "[bench][synthetic]") {
    auto cpu = create_backend("cpu", {1});
    const std::vector<int32_t> prompt = {1, 500, 3, 1023, 7};
    for (const char* type : {"f32", "bf16", "f16", "q8_0", "q4_K", "q6_K", "Q4_K_M", "Q2_K", "iq4_xs", "fp8"}) {
        INFO(type);
        const SyntheticModel sm = build_synthetic({"v3-tiny", type, 0, 3});
        CHECK(sm.model.hp.n_layer == 4);
        CHECK(sm.model.layers.size() == 4);
        CHECK(sm.weight_bytes == model_weight_bytes(sm.model).total);
        Runner r(sm.model, {cpu.get()}, 16);
        const auto batch = r.eval(prompt, true);
        CHECK(all_finite(batch));
        const int32_t next = 9;
        CHECK(all_finite(r.eval(std::span<const int32_t>(&next, 1), false)));
    }
    // A mix gives the routed experts fewer bits than attention.
    const SyntheticModel mix = build_synthetic({"v2-lite-tiny", "Q4_K_M", 0, 0});
    const Deepseek2Layer& L = mix.model.layers[1];
    CHECK(type_traits(L.gate_exps->type).block_size > 1);
    CHECK(L.gate_inp->type == TypeId::F32);
    CHECK(L.ffn_norm->type == TypeId::F32);
    CHECK(mix.n_fallback > 0);  // rows of 32 or 48 do not fit 256-element K-quant blocks
}

TEST_CASE("synthetic: same seed, same weights; large tensors are mapped views", "[bench][synthetic]") {
    const SyntheticModel a = build_synthetic({"v2-lite-tiny", "q8_0", 0, 5});
    const SyntheticModel b = build_synthetic({"v2-lite-tiny", "q8_0", 0, 5});
    const SyntheticModel c = build_synthetic({"v2-lite-tiny", "q8_0", 0, 6});
    const Weight& wa = *a.model.layers[2].down_exps;
    const Weight& wb = *b.model.layers[2].down_exps;
    const Weight& wc = *c.model.layers[2].down_exps;
    CHECK(std::equal(wa.data, wa.data + wa.nbytes, wb.data));
    CHECK_FALSE(std::equal(wa.data, wa.data + wa.nbytes, wc.data));

    // One real-width layer (dense): token_embd and output are 223 MB each, mapped from
    // one q8_0 pool at their own addresses; every row decodes to finite values.
    const SyntheticModel big = build_synthetic({"v2-lite", "q8_0", 1, 0});
    CHECK(big.aliased);
    const Weight* ws[] = {big.model.token_embd, big.model.output, big.model.layers[0].ffn_up};
    std::set<const uint8_t*> addr;
    std::vector<float> row(2048);
    for (const Weight* w : ws) {
        INFO(w->name);
        CHECK(w->type == TypeId::Q8_0);
        addr.insert(w->data);
        for (int64_t r : {int64_t{0}, w->ne[1] / 3, w->ne[1] - 1}) {
            dequantize_row(w->type, w->row(r), row.data(), w->ne[0]);
            CHECK(all_finite(row));
            float amax = 0;
            for (float x : row) amax = std::max(amax, std::abs(x));
            CHECK(amax > 0.01f);
            CHECK(amax < 1.0f);
        }
    }
    CHECK(addr.size() == 3);
}

TEST_CASE("synthetic: errors", "[bench][synthetic]") {
    CHECK_THROWS_WITH(build_synthetic({"v3-tiny", "q9_K", 0, 0}), Catch::Contains("[synthetic] unknown type 'q9_K'"));
    CHECK_THROWS_WITH(build_synthetic({"v3-tiny", "bf16", 9, 0}),
                      Catch::Contains("[synthetic] preset v3-tiny has 4 layers, asked for 9"));
    CHECK_THROWS_WITH(build_synthetic({"v3-tiny", "bf16", -2, 0}), Catch::Contains("[synthetic] --layers must be non-negative"));
    CHECK_THROWS_WITH(build_synthetic({"v9", "bf16", 0, 0}), Catch::Contains("[preset] unknown preset 'v9'"));
}
