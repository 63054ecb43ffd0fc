// `ds3 synth`: the release layout it writes (FP8 + scales, shards, index, configs), that
// it is deterministic per seed, and that synth -> convert -> load works.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "common.h"
#include "convert/convert.h"
#include "convert/hf_checkpoint.h"
#include "convert/mapping.h"
#include "convert/synth.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

using namespace ds3;
using namespace ds3::hf;
namespace fs = std::filesystem;
using json = nlohmann::json;

TEST_CASE("synth: every preset's config parses", "[convert][synth]") {
    CHECK(synth_presets().size() >= 4);
    for (const SynthPreset& p : synth_presets()) {
        INFO(p.name);
        const HfConfig c = parse_config(p.config_json, p.name);
        CHECK(c.hidden_size > 0);
        CHECK(p.n_shards >= 2);
    }
    CHECK(parse_config(find_synth_preset("v3")->config_json).n_layers_total() == 62);
    CHECK_FALSE(parse_config(find_synth_preset("v2-lite")->config_json).q_lora_rank);
}

TEST_CASE("synth: release layout of the tiny presets", "[convert][synth]") {
    for (const char* name : {"v3-tiny", "v2-lite-tiny"}) {
        const SynthPreset& p = *find_synth_preset(name);
        INFO(p.name);
        const fs::path d = ds3::test::scratch_dir("synth") / p.name;
        synth({p.name, d.string(), 1, ""});
        for (const char* f : {"config.json", "generation_config.json", "model.safetensors.index.json",
                              "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
            CHECK(fs::exists(d / f));
        const HfConfig c = read_config(d.string());
        Checkpoint ck = Checkpoint::open(d.string());
        CHECK(ck.n_shards() == 2);
        size_t fp8 = 0;
        for (const TensorPlan& t : plan_tensors(c))
            for (const std::string& n : t.hf_names) {
                const StTensor& st = ck.tensor(n);
                CHECK(st.shape == t.hf_shape);
                if (st.dtype == DType::F8_E4M3) {
                    ++fp8;
                    CHECK(ck.tensor(n + "_scale_inv").dtype == DType::F32);
                    CHECK(ck.file_of(n) == ck.file_of(n + "_scale_inv"));
                } else if (t.role == Role::Bias) {
                    CHECK(st.dtype == DType::F32);
                } else {
                    CHECK(st.dtype == DType::BF16);
                }
            }
        CHECK(fp8 > 20);
        CHECK(ck.tensor("lm_head.weight").dtype == DType::BF16);
        const auto g = read_generation_config(d.string());
        REQUIRE(g);
        CHECK(g->temperature);
    }
}

TEST_CASE("synth: same seed same bytes, other seed other bytes", "[convert][synth]") {
    const fs::path a = ds3::test::scratch_dir("sa"), b = ds3::test::scratch_dir("sb"), c = ds3::test::scratch_dir("sc");
    synth({"v2-lite-tiny", a.string(), 7, ""});
    synth({"v2-lite-tiny", b.string(), 7, ""});
    synth({"v2-lite-tiny", c.string(), 8, ""});
    const char* shard = "model-00002-of-00002.safetensors";
    CHECK(ds3::test::read_file(a / shard) == ds3::test::read_file(b / shard));
    CHECK(ds3::test::read_file(a / shard) != ds3::test::read_file(c / shard));
}

TEST_CASE("synth -> convert -> load", "[convert][synth]") {
    const fs::path d = ds3::test::scratch_dir("s2c") / "v3";
    const fs::path out = d.parent_path() / "v3.gguf";
    const auto r1 = ds3::test::run_ds3({"synth", "--preset", "v3-tiny", "-o", d.string(), "--seed", "3"});
    REQUIRE(r1.exit_code == 0);
    const auto r2 = ds3::test::run_ds3({"convert", d.string(), "-o", out.string(), "--outtype", "f32"});
    REQUIRE(r2.exit_code == 0);
    const gguf::File f = gguf::File::open(out.string());
    const HfConfig c = read_config(d.string());
    CHECK(f.tensors().size() == plan_tensors(c).size());
    CHECK(f.get_string("ds3.source") == "hf:deepseek_v3 fp8");
    // FP8 weights with power-of-two block scales: the f32 data is the exact dequantisation,
    // and no weight is NaN or absurdly large.
    Checkpoint ck = Checkpoint::open(d.string());
    const auto w = ck.read_f32("model.layers.1.self_attn.q_b_proj.weight");
    const auto& ti = f.tensor("blk.1.attn_q_b.weight");
    const auto data = f.tensor_data(ti);
    REQUIRE(data.size() == w.size() * 4);
    CHECK(std::memcmp(data.data(), w.data(), data.size()) == 0);
    float amax = 0;
    for (float x : w) amax = std::max(amax, std::fabs(x));
    CHECK(amax > 0.01f);
    CHECK(amax < 1.0f);
}

TEST_CASE("synth: --layers", "[convert][synth]") {
    const fs::path d = ds3::test::scratch_dir("layers");
    synth({"v3-tiny", d.string(), 0, "", 2});
    const HfConfig c = read_config(d.string());
    CHECK(c.num_hidden_layers == 2);
    CHECK(c.num_nextn_predict_layers == 1);
    Checkpoint ck = Checkpoint::open(d.string());
    CHECK(ck.has("model.layers.2.eh_proj.weight"));  // the MTP layer follows the main ones
    CHECK_FALSE(ck.has("model.layers.3.input_layernorm.weight"));
}

TEST_CASE("synth: errors and --tokenizer", "[convert][synth]") {
    CHECK_THROWS_WITH(synth({"v9-huge", ds3::test::scratch_dir("x").string(), 0, ""}),
                      Catch::Contains("unknown preset 'v9-huge'") && Catch::Contains("v3-tiny"));
    CHECK_THROWS_WITH(synth({"v3-tiny", ds3::test::scratch_dir("y").string(), 0, "/nonexistent"}),
                      Catch::Contains("no tokenizer.json"));
    const auto r = ds3::test::run_ds3({"synth", "--list"});
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::Contains("v2-lite-tiny"));
    CHECK(ds3::test::run_ds3({"synth", "--preset", "v3-tiny"}).exit_code != 0);

    auto fx = ds3::test::fixtures_dir();
    if (!fx) return;
    const fs::path d = ds3::test::scratch_dir("tok");
    synth({"v3-tiny", d.string(), 0, (*fx / "v3-realvocab").string()});
    CHECK(ds3::test::read_file(d / "tokenizer.json") == ds3::test::read_file(*fx / "v3-realvocab/tokenizer.json"));
    CHECK(fs::exists(d / "tokenizer_config.json"));
}
