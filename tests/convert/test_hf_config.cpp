// config.json / generation_config.json parsing: the fixtures' values, Kimi-K2 and
// V2-Lite variants, and every rejection naming its field.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "common.h"
#include "convert/hf_config.h"
#include "runtime/error.h"

using namespace ds3;
using namespace ds3::hf;
using json = nlohmann::json;

namespace {

json fixture_config(const char* name) {
    auto fx = ds3::test::fixtures_dir();
    return json::parse(ds3::test::read_file(*fx / name / "config.json"));
}

std::string error_of(const json& j) {
    try {
        parse_config(j.dump(), "cfg.json");
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("config: v3-tiny", "[convert][config]") {
    DS3_REQUIRE_FIXTURES(fx);
    const HfConfig c = read_config((fx / "v3-tiny").string());
    CHECK(c.family == Family::V3);
    CHECK(c.architecture == "DeepseekV3ForCausalLM");
    CHECK(c.hidden_size == 256);
    CHECK(c.vocab_size == 1024);
    CHECK(c.num_hidden_layers == 4);
    CHECK(c.num_nextn_predict_layers == 1);
    CHECK(c.n_layers_total() == 5);
    CHECK(c.q_lora_rank == std::optional<uint64_t>(96));
    CHECK(c.kv_lora_rank == 64);
    CHECK(c.qk_head_dim() == 48);
    CHECK(c.topk_method == "noaux_tc");
    CHECK(c.scoring_func == "sigmoid");
    CHECK(c.n_group == 4);
    CHECK(c.topk_group == 2);
    CHECK(c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 2.5);
    REQUIRE(c.rope_scaling);
    CHECK(c.rope_scaling->factor == 40);
    CHECK(c.rope_scaling->original_max_position_embeddings == 4096);
    CHECK(c.rope_scaling->mscale_all_dim == 1.0);
    REQUIRE(c.quantization_config);
    CHECK(c.quantization_config->block_out == 128);
    CHECK(c.bos_token_id == std::optional<int64_t>(0));
    CHECK(c.eos_token_id == std::optional<int64_t>(1));
    CHECK_FALSE(c.is_moe_layer(0));
    CHECK(c.is_moe_layer(1));
    CHECK(c.is_mtp_layer(4));
    CHECK_FALSE(read_config((fx / "v3-tiny-bf16").string()).quantization_config);

    const auto g = read_generation_config((fx / "v3-tiny").string());
    REQUIRE(g);
    CHECK(g->temperature == Approx(0.6));
    CHECK(g->top_p == Approx(0.95));
    CHECK(g->do_sample == std::optional<bool>(true));
    CHECK_FALSE(g->top_k);
    CHECK(g->eos_token_ids == std::vector<int64_t>{1});
}

TEST_CASE("config: v2-lite-tiny has no q_lora and softmax routing", "[convert][config]") {
    DS3_REQUIRE_FIXTURES(fx);
    const HfConfig c = read_config((fx / "v2-lite-tiny").string());
    CHECK(c.family == Family::V2);
    CHECK_FALSE(c.q_lora_rank);
    CHECK(c.topk_method == "greedy");
    CHECK(c.scoring_func == "softmax");
    CHECK_FALSE(c.norm_topk_prob);
    CHECK(c.num_nextn_predict_layers == 0);
    CHECK(c.rope_scaling->mscale == Approx(0.707));
}

TEST_CASE("config: Kimi-K2 model_type and defaults", "[convert][config]") {
    DS3_REQUIRE_FIXTURES(fx);
    json j = fixture_config("v3-tiny");
    j["model_type"] = "kimi_k2";
    j["eos_token_id"] = json::array({7, 8});
    j.erase("rope_scaling");
    j.erase("first_k_dense_replace");
    const HfConfig c = parse_config(j.dump());
    CHECK(c.family == Family::V3);
    CHECK(c.model_type == "kimi_k2");
    CHECK(c.eos_token_id == std::optional<int64_t>(7));
    CHECK_FALSE(c.rope_scaling);
    CHECK(c.first_k_dense_replace == 0);
}

TEST_CASE("config: rejections name the field", "[convert][config]") {
    DS3_REQUIRE_FIXTURES(fx);
    const json base = fixture_config("v3-tiny");
    json j = base;
    j.erase("hidden_size");
    CHECK_THAT(error_of(j), Catch::Contains("cfg.json: field 'hidden_size': missing"));
    j = base;
    j["kv_lora_rank"] = "64";
    CHECK_THAT(error_of(j), Catch::Contains("field 'kv_lora_rank': expected a non-negative integer, found a string"));
    j = base;
    j["rms_norm_eps"] = true;
    CHECK_THAT(error_of(j), Catch::Contains("field 'rms_norm_eps': expected a number"));
    j = base;
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    CHECK_THAT(error_of(j), Catch::Contains("unsupported architecture 'LlamaForCausalLM'"));
    j = base;
    j["architectures"] = {"MixtralForCausalLM"};
    CHECK_THAT(error_of(j), Catch::Contains("unsupported architecture 'MixtralForCausalLM'"));
    j = base;
    j["topk_method"] = "random";
    CHECK_THAT(error_of(j), Catch::Contains("field 'topk_method': unsupported value 'random'"));
    j = base;
    j["rope_scaling"]["type"] = "linear";
    CHECK_THAT(error_of(j), Catch::Contains("field 'rope_scaling.type'"));
    j = base;
    j["rope_scaling"].erase("factor");
    CHECK_THAT(error_of(j), Catch::Contains("field 'rope_scaling.factor': missing"));
    j = base;
    j["quantization_config"]["quant_method"] = "gptq";
    CHECK_THAT(error_of(j), Catch::Contains("field 'quantization_config.quant_method'"));
    j = base;
    j["quantization_config"]["weight_block_size"] = {128};
    CHECK_THAT(error_of(j), Catch::Contains("weight_block_size"));
    j = base;
    j["num_experts_per_tok"] = 17;
    CHECK_THAT(error_of(j), Catch::Contains("field 'num_experts_per_tok'"));
    j = base;
    j["n_group"] = 3;
    CHECK_THAT(error_of(j), Catch::Contains("field 'n_group': 3 does not divide"));
    j = base;
    j["topk_group"] = 5;
    CHECK_THAT(error_of(j), Catch::Contains("field 'topk_group'"));
    j = base;
    j["q_lora_rank"] = 0;
    CHECK_THAT(error_of(j), Catch::Contains("field 'q_lora_rank'"));
    CHECK_THROWS_WITH(parse_config("{", "x.json"), Catch::Contains("x.json: not valid JSON"));
    CHECK_THROWS_WITH(parse_config("[]", "x.json"), Catch::Contains("JSON object"));
    CHECK_THROWS_WITH(read_config("/nonexistent"), Catch::Contains("cannot open"));
}

TEST_CASE("generation config: types and absence", "[convert][config]") {
    const GenerationConfig g = parse_generation_config(R"({"top_k": 40, "temperature": 1, "eos_token_id": [1, 2]})");
    CHECK(g.top_k == std::optional<int64_t>(40));
    CHECK(g.temperature == 1.0);
    CHECK(g.eos_token_ids == std::vector<int64_t>{1, 2});
    CHECK_THROWS_WITH(parse_generation_config(R"({"top_p": "high"})"), Catch::Contains("field 'top_p'"));
    CHECK_THROWS_WITH(parse_generation_config(R"({"eos_token_id": "x"})"), Catch::Contains("field 'eos_token_id'"));
    const auto dir = ds3::test::scratch_dir("gen");
    CHECK_FALSE(read_generation_config(dir.string()));
}
