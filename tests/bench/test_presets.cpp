// The preset table: the real models' derived sizes (total and activated parameters as
// their publishers state them), the tiny presets against the fixtures' config.json, and
// hparams_from_config against what the loader reads from a converted file.
#include <catch2/catch.hpp>

#include "common.h"
#include "convert/hf_config.h"
#include "convert/synth.h"
#include "models/deepseek2.h"
#include "models/presets.h"
#include "runtime/error.h"

using namespace ds3;

namespace {

void check_near(uint64_t v, double expected, double rel) {
    INFO(v << " vs " << expected);
    CHECK(std::abs(static_cast<double>(v) - expected) <= rel * expected);
}

}  // namespace

TEST_CASE("presets: DeepSeek-V3/R1 is 671B total, 37B activated", "[bench][presets]") {
    const Deepseek2HParams hp = preset_hparams("v3");
    CHECK(hp.n_layer == 61);
    CHECK(hp.n_dense_lead == 3);
    CHECK(hp.n_expert == 256);
    CHECK(hp.n_expert_used == 8);
    CHECK(hp.n_group == 8);
    CHECK(hp.topk_group == 4);
    CHECK(hp.q_lora == 1536);
    CHECK(hp.topk == TopkMethod::noaux_tc);
    const ParamCount c = count_params(hp);
    check_near(c.total, 671e9, 0.002);
    check_near(c.activated, 37e9, 0.02);
    // 58 MoE layers of 256 experts of 3 x 7168 x 2048.
    CHECK(c.routed_experts == 58ull * 256 * 3 * 7168 * 2048);
    CHECK(c.embedding == 129280ull * 7168);
}

TEST_CASE("presets: DeepSeek-V2-Lite is 15.7B total, 2.4B activated", "[bench][presets]") {
    const Deepseek2HParams hp = preset_hparams("v2-lite");
    CHECK(hp.n_layer == 27);
    CHECK(hp.q_lora == 0);
    CHECK(hp.n_expert == 64);
    CHECK(hp.n_expert_used == 6);
    CHECK(hp.n_expert_shared == 2);
    CHECK(hp.scoring == ScoringFunc::softmax);
    CHECK(hp.topk == TopkMethod::greedy);
    const ParamCount c = count_params(hp);
    check_near(c.total, 15.7e9, 0.005);
    check_near(c.activated, 2.4e9, 0.03);
}

TEST_CASE("presets: Kimi-K2 is ~1.03T total, 32B activated", "[bench][presets]") {
    const Deepseek2HParams hp = preset_hparams("kimi-k2");
    CHECK(hp.n_head == 64);
    CHECK(hp.n_expert == 384);
    CHECK(hp.n_dense_lead == 1);
    CHECK(hp.n_group == 1);
    CHECK(hp.rope_base == 50000.0);
    CHECK(hp.beta_fast == 1.0);
    CHECK(hp.yarn_factor == 32.0);
    CHECK(hp.n_vocab == 163840);
    const ParamCount c = count_params(hp);
    check_near(c.total, 1.026e12, 0.005);
    check_near(c.activated, 32e9, 0.02);
}

TEST_CASE("presets: --layers keeps the leading dense layers", "[bench][presets]") {
    const Deepseek2HParams hp = preset_hparams("v3", 8);
    CHECK(hp.n_layer == 8);
    CHECK(hp.n_dense_lead == 3);
    int moe = 0;
    for (int64_t il = 0; il < hp.n_layer; ++il) moe += hp.is_moe_layer(il);
    CHECK(moe == 5);
    const Deepseek2HParams two = preset_hparams("v3", 2);  // fewer layers than dense ones
    CHECK_FALSE(two.is_moe_layer(0));
    CHECK_FALSE(two.is_moe_layer(1));
    CHECK(count_params(two).routed_experts == 0);
    CHECK_THROWS_WITH(preset_hparams("v4"), Catch::Contains("[preset] unknown preset 'v4'") && Catch::Contains("kimi-k2"));
    CHECK_THROWS_WITH(preset_hparams("v3", -1), Catch::Contains("[preset] layers must be non-negative"));
}

TEST_CASE("presets: one table for ds3 synth and ds3 bench", "[bench][presets]") {
    REQUIRE(hf::synth_presets().size() == model_presets().size());
    for (size_t i = 0; i < model_presets().size(); ++i) {
        CHECK(hf::synth_presets()[i].name == model_presets()[i].name);
        CHECK(hf::synth_presets()[i].config_json == model_presets()[i].config_json);
    }
    CHECK(find_model_preset("kimi-k2"));
    CHECK_FALSE(find_model_preset("nope"));
}

TEST_CASE("presets: the tiny presets have the fixtures' shapes", "[bench][presets]") {
    DS3_REQUIRE_FIXTURES(fx);
    for (const char* name : {"v3-tiny", "v2-lite-tiny"}) {
        INFO(name);
        const Deepseek2HParams a = preset_hparams(name);
        const Deepseek2HParams b = hparams_from_config(hf::read_config((fx / name).string()));
        CHECK(a.n_vocab == b.n_vocab);
        CHECK(a.n_embd == b.n_embd);
        CHECK(a.n_layer == b.n_layer);
        CHECK(a.n_head == b.n_head);
        CHECK(a.q_lora == b.q_lora);
        CHECK(a.kv_lora == b.kv_lora);
        CHECK(a.qk_nope == b.qk_nope);
        CHECK(a.qk_rope == b.qk_rope);
        CHECK(a.v_head == b.v_head);
        CHECK(a.n_ff == b.n_ff);
        CHECK(a.n_ff_exp == b.n_ff_exp);
        CHECK(a.n_expert == b.n_expert);
        CHECK(a.n_expert_used == b.n_expert_used);
        CHECK(a.n_expert_shared == b.n_expert_shared);
        CHECK(a.n_group == b.n_group);
        CHECK(a.topk_group == b.topk_group);
        CHECK(a.n_dense_lead == b.n_dense_lead);
        CHECK(a.scoring == b.scoring);
        CHECK(a.topk == b.topk);
        CHECK(count_params(a).total == count_params(b).total);
    }
}

TEST_CASE("presets: hparams_from_config agrees with the loader on a converted file", "[bench][presets]") {
    const auto d = ds3::test::scratch_dir("preset-rt");
    const std::string rel = (d / "v2l").string(), gguf = (d / "v2l.gguf").string();
    REQUIRE(ds3::test::run_ds3({"synth", "--preset", "v2-lite-tiny", "-o", rel}).exit_code == 0);
    REQUIRE(ds3::test::run_ds3({"convert", rel, "-o", gguf, "--outtype", "f32", "--no-tokenizer"}).exit_code == 0);
    const Deepseek2Model m = load_deepseek2(gguf);
    const Deepseek2HParams a = preset_hparams("v2-lite-tiny"), &b = m.hp;
    CHECK(a.n_vocab == b.n_vocab);
    CHECK(a.n_layer == b.n_layer);
    CHECK(a.n_dense_lead == b.n_dense_lead);
    CHECK(a.n_ctx_train == b.n_ctx_train);
    CHECK(a.rms_eps == b.rms_eps);
    CHECK(a.rope_base == Approx(b.rope_base));
    CHECK(a.yarn == b.yarn);
    CHECK(a.yarn_factor == Approx(b.yarn_factor));
    CHECK(a.yarn_orig_ctx == b.yarn_orig_ctx);
    CHECK(a.mscale == Approx(b.mscale));
    CHECK(a.mscale_all_dim == Approx(b.mscale_all_dim));
    CHECK(a.beta_fast == Approx(b.beta_fast));
    CHECK(a.norm_topk == b.norm_topk);
    CHECK(a.routed_scale == Approx(b.routed_scale));
    CHECK(a.scoring == b.scoring);
    CHECK(a.topk == b.topk);
    CHECK(a.softmax_scale() == Approx(b.softmax_scale()));
    CHECK(count_params(a).total == count_params(b).total);
}
