// `ds3 convert` on the public fixtures: tensor names, shapes and types, metadata against
// config.json, exact FP8 dequantisation, the kv_b split and expert stacking, and the
// error cases (each a one-line message naming file and tensor, a non-zero exit, and no
// file left at the output path).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <map>

#include "common.h"
#include "convert/convert.h"
#include "convert/hf_checkpoint.h"
#include "convert/mapping.h"
#include "quantize/float.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/progress.h"
#include "runtime/tokenizer_data.h"

using namespace ds3;
using namespace ds3::hf;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Converted fixtures, made once per (fixture, outtype) for the whole test run.
fs::path converted(const fs::path& fx, const std::string& name, OutType t) {
    static std::map<std::string, fs::path> cache;
    const std::string key = name + "." + std::string(outtype_name(t));
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    const fs::path out = ds3::test::scratch_dir("conv") / (key + ".gguf");
    ConvertOptions o;
    o.outtype = t;
    convert((fx / name).string(), out.string(), o);
    return cache[key] = out;
}

std::vector<float> tensor_f32(const gguf::File& f, const std::string& name) {
    const gguf::TensorInfo& t = f.tensor(name);
    const auto d = f.tensor_data(t);
    std::vector<float> v(t.n_elements());
    for (size_t i = 0; i < v.size(); ++i) {
        if (t.type == TypeId::F32) std::memcpy(&v[i], d.data() + 4 * i, 4);
        else if (t.type == TypeId::BF16) v[i] = bf16_to_f32(static_cast<uint16_t>(d[2 * i] | (d[2 * i + 1] << 8)));
        else v[i] = f16_to_f32(static_cast<uint16_t>(d[2 * i] | (d[2 * i + 1] << 8)));
    }
    return v;
}

fs::path copy_fixture(const fs::path& fx, const std::string& name) {
    const fs::path dst = ds3::test::scratch_dir("bad") / name;
    fs::copy(fx / name, dst, fs::copy_options::recursive);
    for (auto& e : fs::recursive_directory_iterator(dst))
        fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
    return dst;
}

// Runs the CLI on a damaged release and checks the one-line error and that nothing is left.
std::string cli_failure(const fs::path& dir) {
    const fs::path out = dir.parent_path() / "out.gguf";
    const auto r = ds3::test::run_ds3({"convert", dir.string(), "-o", out.string(), "--outtype", "f32"});
    CHECK(r.exit_code != 0);
    CHECK_FALSE(fs::exists(out));
    for (auto& e : fs::directory_iterator(dir.parent_path())) CHECK(e.path().filename().string().find("out.gguf") == std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    return r.err;
}

}  // namespace

TEST_CASE("convert: every fixture to f32, bf16 and f16", "[convert][fixtures]") {
    DS3_REQUIRE_FIXTURES(fx);
    for (const char* name : {"v3-tiny", "v3-tiny-bf16", "v2-lite-tiny", "v3-realvocab"}) {
        const HfConfig c = read_config((fx / name).string());
        const std::vector<TensorPlan> plan = plan_tensors(c);
        for (OutType ot : {OutType::F32, OutType::BF16, OutType::F16}) {
            INFO(name << " " << outtype_name(ot));
            const gguf::File f = gguf::File::open(converted(fx, name, ot).string());
            REQUIRE(f.tensors().size() == plan.size());
            for (size_t i = 0; i < plan.size(); ++i) {
                const gguf::TensorInfo& t = f.tensors()[i];
                INFO(t.name);
                CHECK(t.name == plan[i].gguf_name);
                CHECK(t.ne == plan[i].ne);
                const bool matrix = plan[i].role == Role::Matrix;
                CHECK(t.type == (matrix ? outtype_type(ot) : TypeId::F32));
            }
            CHECK(f.get_string("general.architecture") == "deepseek2");
            CHECK(f.get_string("general.name") == name);
            CHECK(f.get_u64("general.file_type") == outtype_file_type(ot));
            CHECK(f.has(gguf::kChecksumKey));
        }
    }
}

TEST_CASE("convert: tensor names of the V3 and V2-Lite layouts", "[convert][fixtures]") {
    DS3_REQUIRE_FIXTURES(fx);
    const gguf::File v3 = gguf::File::open(converted(fx, "v3-tiny", OutType::BF16).string());
    for (const char* n : {"token_embd.weight", "output_norm.weight", "output.weight", "blk.0.attn_norm.weight",
                          "blk.0.attn_q_a.weight", "blk.0.attn_q_a_norm.weight", "blk.0.attn_q_b.weight",
                          "blk.0.attn_kv_a_mqa.weight", "blk.0.attn_kv_a_norm.weight", "blk.0.attn_k_b.weight",
                          "blk.0.attn_v_b.weight", "blk.0.attn_output.weight", "blk.0.ffn_norm.weight",
                          "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight",
                          "blk.1.ffn_gate_inp.weight", "blk.1.exp_probs_b.bias", "blk.1.ffn_gate_exps.weight",
                          "blk.1.ffn_up_exps.weight", "blk.1.ffn_down_exps.weight", "blk.1.ffn_gate_shexp.weight",
                          "blk.1.ffn_up_shexp.weight", "blk.1.ffn_down_shexp.weight", "blk.4.nextn.eh_proj.weight",
                          "blk.4.nextn.embed_tokens.weight", "blk.4.nextn.enorm.weight", "blk.4.nextn.hnorm.weight",
                          "blk.4.nextn.shared_head_head.weight", "blk.4.nextn.shared_head_norm.weight",
                          "blk.4.ffn_gate_exps.weight"})
        CHECK(v3.find_tensor(n));
    CHECK_FALSE(v3.find_tensor("blk.0.attn_kv_b.weight"));
    CHECK_FALSE(v3.find_tensor("blk.0.ffn_gate_inp.weight"));
    CHECK_FALSE(v3.find_tensor("blk.1.ffn_gate.weight"));
    CHECK(v3.tensor("blk.1.ffn_gate_exps.weight").ne == std::vector<uint64_t>{256, 64, 16});
    CHECK(v3.tensor("blk.1.ffn_down_exps.weight").ne == std::vector<uint64_t>{64, 256, 16});
    CHECK(v3.tensor("blk.2.attn_k_b.weight").ne == std::vector<uint64_t>{32, 64, 4});
    CHECK(v3.tensor("blk.2.attn_v_b.weight").ne == std::vector<uint64_t>{64, 32, 4});
    CHECK(v3.tensor("blk.4.nextn.eh_proj.weight").ne == std::vector<uint64_t>{512, 256});

    const gguf::File v2 = gguf::File::open(converted(fx, "v2-lite-tiny", OutType::BF16).string());
    CHECK(v2.find_tensor("blk.0.attn_q.weight"));
    CHECK_FALSE(v2.find_tensor("blk.0.attn_q_a.weight"));
    CHECK_FALSE(v2.find_tensor("blk.1.exp_probs_b.bias"));
    CHECK(v2.tensor("blk.1.ffn_gate_shexp.weight").ne == std::vector<uint64_t>{192, 96});  // 2 shared experts
}

TEST_CASE("convert: metadata against config.json", "[convert][fixtures]") {
    DS3_REQUIRE_FIXTURES(fx);
    const gguf::File f = gguf::File::open(converted(fx, "v3-tiny", OutType::BF16).string());
    const std::string a = "deepseek2.";
    CHECK(f.get_u64(a + "block_count") == 5);
    CHECK(f.get_u64(a + "nextn_predict_layers") == 1);
    CHECK(f.get_u64(a + "context_length") == 163840);
    CHECK(f.get_u64(a + "embedding_length") == 256);
    CHECK(f.get_u64(a + "feed_forward_length") == 384);
    CHECK(f.get_u64(a + "vocab_size") == 1024);
    CHECK(f.get_u64(a + "attention.head_count") == 4);
    CHECK(f.get_u64(a + "attention.head_count_kv") == 1);
    CHECK(f.get_u64(a + "attention.key_length") == 64 + 16);
    CHECK(f.get_u64(a + "attention.value_length") == 64);
    CHECK(f.get_u64(a + "attention.key_length_mla") == 48);
    CHECK(f.get_u64(a + "attention.value_length_mla") == 32);
    CHECK(f.get_u64(a + "attention.q_lora_rank") == 96);
    CHECK(f.get_u64(a + "attention.kv_lora_rank") == 64);
    CHECK(f.get_f64(a + "attention.layer_norm_rms_epsilon") == Approx(1e-6));
    CHECK(f.get_f64(a + "rope.freq_base") == 10000);
    CHECK(f.get_u64(a + "rope.dimension_count") == 16);
    CHECK(f.get_string(a + "rope.scaling.type") == "yarn");
    CHECK(f.get_f64(a + "rope.scaling.factor") == 40);
    CHECK(f.get_u64(a + "rope.scaling.original_context_length") == 4096);
    CHECK(f.get_f64(a + "rope.scaling.yarn_log_multiplier") == Approx(0.1));
    CHECK(f.get_f64(a + "rope.scaling.yarn_beta_fast") == 32);
    CHECK(f.get_f64(a + "rope.scaling.yarn_beta_slow") == 1);
    CHECK(f.get_u64(a + "leading_dense_block_count") == 1);
    CHECK(f.get_u64(a + "expert_count") == 16);
    CHECK(f.get_u64(a + "expert_used_count") == 4);
    CHECK(f.get_u64(a + "expert_shared_count") == 1);
    CHECK(f.get_u64(a + "expert_feed_forward_length") == 64);
    CHECK(f.get_f64(a + "expert_weights_scale") == 2.5);
    CHECK(f.get_bool(a + "expert_weights_norm") == true);
    CHECK(f.get_u64(a + "expert_gating_func") == 2);
    CHECK(f.get_u64(a + "expert_group_count") == 4);
    CHECK(f.get_u64(a + "expert_group_used_count") == 2);
    CHECK(f.get_string("ds3.topk_method") == "noaux_tc");
    CHECK(f.get_string("ds3.scoring_func") == "sigmoid");
    CHECK(f.get_u64("ds3.moe_layer_freq") == 1);
    CHECK(f.get_f64("ds3.rope.scaling.mscale") == 1.0);
    CHECK(f.get_f64("ds3.rope.scaling.mscale_all_dim") == 1.0);
    CHECK(f.get_f64("ds3.rope.scaling.beta_fast") == 32);
    CHECK(f.get_f64("ds3.rope.scaling.beta_slow") == 1);
    CHECK(f.get_string("ds3.source") == "hf:deepseek_v3 fp8");
    CHECK(f.get_f64("ds3.generation.temperature") == Approx(0.6));
    CHECK(f.get_f64("ds3.generation.top_p") == Approx(0.95));
    CHECK(f.get_bool("ds3.generation.do_sample") == true);

    const gguf::File v2 = gguf::File::open(converted(fx, "v2-lite-tiny", OutType::BF16).string());
    CHECK_FALSE(v2.has(a + "attention.q_lora_rank"));
    CHECK(v2.get_u64(a + "expert_gating_func") == 1);
    CHECK(v2.get_bool(a + "expert_weights_norm") == false);
    CHECK(v2.get_u64(a + "nextn_predict_layers") == 0);
    CHECK(v2.get_u64(a + "block_count") == 3);
    CHECK(v2.get_string("ds3.topk_method") == "greedy");
    CHECK(v2.get_f64("ds3.rope.scaling.mscale") == Approx(0.707));
    CHECK(v2.get_f64(a + "rope.scaling.yarn_log_multiplier") == Approx(0.0707));
    CHECK(gguf::File::open(converted(fx, "v3-tiny-bf16", OutType::F32).string()).get_string("ds3.source") ==
          "hf:deepseek_v3 bf16");
}

TEST_CASE("convert: v3-tiny (FP8) and v3-tiny-bf16 give identical tensors", "[convert][fixtures]") {
    DS3_REQUIRE_FIXTURES(fx);
    for (OutType ot : {OutType::F32, OutType::BF16, OutType::F16}) {
        const gguf::File a = gguf::File::open(converted(fx, "v3-tiny", ot).string());
        const gguf::File b = gguf::File::open(converted(fx, "v3-tiny-bf16", ot).string());
        REQUIRE(a.tensors().size() == b.tensors().size());
        for (size_t i = 0; i < a.tensors().size(); ++i) {
            INFO(a.tensors()[i].name);
            const auto da = a.tensor_data(a.tensors()[i]);
            const auto db = b.tensor_data(b.tensors()[i]);
            CHECK(std::equal(da.begin(), da.end(), db.begin(), db.end()));
        }
    }
}

TEST_CASE("convert: f32 data equals the release, k_b/v_b are kv_b slices, experts in order", "[convert][fixtures]") {
    DS3_REQUIRE_FIXTURES(fx);
    const HfConfig c = read_config((fx / "v3-tiny").string());
    Checkpoint ck = Checkpoint::open((fx / "v3-tiny").string());
    const gguf::File f = gguf::File::open(converted(fx, "v3-tiny", OutType::F32).string());
    for (const TensorPlan& p : plan_tensors(c))
        if (p.source == Source::Direct) CHECK(tensor_f32(f, p.gguf_name) == ck.read_f32(p.hf_names[0]));

    const uint64_t H = c.num_attention_heads, nope = c.qk_nope_head_dim, v = c.v_head_dim, kvl = c.kv_lora_rank;
    for (uint64_t il : {0, 3, 4}) {
        const auto kvb = ck.read_f32("model.layers." + std::to_string(il) + ".self_attn.kv_b_proj.weight");
        const auto kb = tensor_f32(f, "blk." + std::to_string(il) + ".attn_k_b.weight");
        const auto vb = tensor_f32(f, "blk." + std::to_string(il) + ".attn_v_b.weight");
        bool ok_k = true, ok_v = true;
        for (uint64_t h = 0; h < H; ++h)
            for (uint64_t j = 0; j < kvl; ++j) {
                // k_b ne [nope, kvl, H]: element (i, j, h) at h*kvl*nope + j*nope + i
                for (uint64_t i = 0; i < nope; ++i)
                    ok_k &= kb[h * kvl * nope + j * nope + i] == kvb[(h * (nope + v) + i) * kvl + j];
                // v_b ne [kvl, v, H]: element (j, i, h) at h*v*kvl + i*kvl + j
                for (uint64_t i = 0; i < v; ++i)
                    ok_v &= vb[h * v * kvl + i * kvl + j] == kvb[(h * (nope + v) + nope + i) * kvl + j];
            }
        CHECK(ok_k);
        CHECK(ok_v);
    }

    for (const char* w : {"gate", "up", "down"}) {
        const auto stacked = tensor_f32(f, std::string("blk.2.ffn_") + w + "_exps.weight");
        size_t off = 0;
        for (uint64_t e = 0; e < c.n_routed_experts; ++e) {
            const auto one = ck.read_f32("model.layers.2.mlp.experts." + std::to_string(e) + "." + w + "_proj.weight");
            CHECK(std::equal(one.begin(), one.end(), stacked.begin() + off));
            off += one.size();
        }
        CHECK(off == stacked.size());
    }
}

TEST_CASE("convert: bf16/f16 outputs round the f32 values", "[convert][fixtures]") {
    DS3_REQUIRE_FIXTURES(fx);
    const gguf::File f32 = gguf::File::open(converted(fx, "v2-lite-tiny", OutType::F32).string());
    const gguf::File f16 = gguf::File::open(converted(fx, "v2-lite-tiny", OutType::F16).string());
    const gguf::File b16 = gguf::File::open(converted(fx, "v2-lite-tiny", OutType::BF16).string());
    for (const char* n : {"blk.1.ffn_up_exps.weight", "blk.0.attn_q.weight", "output.weight"}) {
        const auto a = tensor_f32(f32, n);
        const auto h = tensor_f32(f16, n);
        const auto b = tensor_f32(b16, n);
        bool ok = true;
        for (size_t i = 0; i < a.size(); ++i) {
            ok &= h[i] == f16_to_f32(f32_to_f16(a[i]));
            ok &= b[i] == bf16_to_f32(f32_to_bf16(a[i]));
        }
        CHECK(ok);
    }
}

TEST_CASE("convert: v3-realvocab carries the tokenizer", "[convert][fixtures]") {
    DS3_REQUIRE_FIXTURES(fx);
    const gguf::File f = gguf::File::open(converted(fx, "v3-realvocab", OutType::BF16).string());
    const TokenizerData t = read_tokenizer(f);
    CHECK(t.tokens.size() == 129280);
    CHECK(t.pre == "deepseek-v3");
    CHECK_FALSE(t.chat_template.empty());
    CHECK_FALSE(gguf::File::open(converted(fx, "v3-tiny", OutType::BF16).string()).has("tokenizer.ggml.tokens"));
}

TEST_CASE("convert: bad releases fail with one line naming file and tensor", "[convert][errors]") {
    DS3_REQUIRE_FIXTURES(fx);
    SECTION("missing shard") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        fs::remove(d / "model-00001-of-00002.safetensors");
        CHECK_THAT(cli_failure(d), Catch::Contains("model-00001-of-00002.safetensors: shard is missing") &&
                                       Catch::Contains("for tensor model."));
    }
    SECTION("tensor named by the index but absent from the shard") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        json idx = json::parse(ds3::test::read_file(d / "model.safetensors.index.json"));
        REQUIRE(idx["weight_map"]["lm_head.weight"] == "model-00002-of-00002.safetensors");
        idx["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors";
        ds3::test::write_file(d / "model.safetensors.index.json", idx.dump());
        CHECK_THAT(cli_failure(d), Catch::Contains("model-00001-of-00002.safetensors: tensor lm_head.weight is named by"));
    }
    SECTION("tensor missing from the release") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        json idx = json::parse(ds3::test::read_file(d / "model.safetensors.index.json"));
        idx["weight_map"].erase("model.layers.3.mlp.gate.e_score_correction_bias");
        ds3::test::write_file(d / "model.safetensors.index.json", idx.dump());
        CHECK_THAT(cli_failure(d), Catch::Contains("tensor model.layers.3.mlp.gate.e_score_correction_bias (for "
                                                   "blk.3.exp_probs_b.bias) is missing"));
    }
    SECTION("shape disagreeing with config.json") {
        const fs::path d = copy_fixture(fx, "v2-lite-tiny");
        json cfg = json::parse(ds3::test::read_file(d / "config.json"));
        cfg["moe_intermediate_size"] = 40;
        ds3::test::write_file(d / "config.json", cfg.dump());
        CHECK_THAT(cli_failure(d), Catch::Contains("model.safetensors: tensor model.layers.1.mlp.experts.0.gate_proj.weight: "
                                                   "shape [48, 192] but config.json implies [40, 192]"));
    }
    SECTION("config.json missing a field") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        json cfg = json::parse(ds3::test::read_file(d / "config.json"));
        cfg.erase("kv_lora_rank");
        ds3::test::write_file(d / "config.json", cfg.dump());
        CHECK_THAT(cli_failure(d), Catch::Contains("config.json: field 'kv_lora_rank': missing"));
    }
    SECTION("unknown architecture") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        json cfg = json::parse(ds3::test::read_file(d / "config.json"));
        cfg["architectures"] = {"Qwen2ForCausalLM"};
        cfg["model_type"] = "qwen2";
        ds3::test::write_file(d / "config.json", cfg.dump());
        CHECK_THAT(cli_failure(d), Catch::Contains("unsupported architecture 'Qwen2ForCausalLM'"));
    }
    SECTION("more layers in the release than in the config") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        json cfg = json::parse(ds3::test::read_file(d / "config.json"));
        cfg["num_nextn_predict_layers"] = 0;
        ds3::test::write_file(d / "config.json", cfg.dump());
        CHECK_THAT(cli_failure(d), Catch::Contains("tensor model.layers.4.") && Catch::Contains("has no place"));
    }
    SECTION("a damaged shard header") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        std::string s = ds3::test::read_file(d / "model-00002-of-00002.safetensors");
        s[8] = '#';  // the header's opening brace
        ds3::test::write_file(d / "model-00002-of-00002.safetensors", s);
        CHECK_THAT(cli_failure(d), Catch::Contains("[safetensors]") && Catch::Contains("model-00002-of-00002") &&
                                       Catch::Contains("not valid JSON"));
    }
    SECTION("bad --outtype") {
        const auto r = ds3::test::run_ds3({"convert", (fx / "v3-tiny").string(), "-o", "/tmp/x.gguf", "--outtype", "q9"});
        CHECK(r.exit_code != 0);
        CHECK_THAT(r.err, Catch::Contains("--outtype 'q9'"));
    }
}

TEST_CASE("convert: a failure mid-way leaves no file at the output", "[convert][errors]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path dir = ds3::test::scratch_dir("midway");
    const fs::path out = dir / "out.gguf";
    ds3::test::write_file(out, "old");  // an existing file is left as it was
    ConvertOptions o;
    size_t seen = 0;
    o.on_tensor = [&](size_t i, size_t, const std::string&) {
        seen = i + 1;
        if (i == 40) throw Error("test", "interrupted");
    };
    CHECK_THROWS_WITH(convert((fx / "v3-tiny").string(), out.string(), o), Catch::Contains("interrupted"));
    CHECK(seen == 41);
    CHECK(ds3::test::read_file(out) == "old");
    size_t n = 0;
    for (auto& e : fs::directory_iterator(dir)) (void)e, ++n;
    CHECK(n == 1);  // no temporary file left either
}

TEST_CASE("convert: the CLI converts and reports", "[convert][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path out = ds3::test::scratch_dir("cli") / "m.gguf";
    const auto r = ds3::test::run_ds3({"convert", (fx / "v2-lite-tiny").string(), "-o", out.string()});
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.err, Catch::Contains("44 tensors"));
    CHECK(r.err.find('\r') == std::string::npos);  // no progress bar on a pipe
    const gguf::File f = gguf::File::open(out.string());
    CHECK(f.get_u64("general.file_type") == 32);  // bf16 by default
    CHECK(f.tensor("blk.0.attn_q.weight").type == TypeId::BF16);
    CHECK(f.tensor("blk.0.attn_norm.weight").type == TypeId::F32);
    CHECK(f.tensor("token_embd.weight").type == TypeId::F32);
    CHECK(f.tensor("blk.1.ffn_gate_inp.weight").type == TypeId::F32);
}

TEST_CASE("progress: rendering", "[convert][progress]") {
    const std::string s = Progress::render("convert", 512ull << 20, 2048ull << 20, 2.0, "blk.3.ffn_up_exps.weight", 200);
    CHECK_THAT(s, Catch::StartsWith("convert  25% [#####               ] 512.00 MiB/2.00 GiB  256.00 MiB/s  ETA 0:06"));
    CHECK_THAT(s, Catch::EndsWith("blk.3.ffn_up_exps.weight"));
    CHECK(Progress::render("x", 0, 0, 0.0, "", 80).find("100%") != std::string::npos);
    CHECK(Progress::render("x", 5, 10, 1.0, std::string(300, 'a'), 60).size() == 60);
    CHECK(format_bytes(17) == "17 B");
    CHECK(format_bytes(1.5 * 1024 * 1024 * 1024) == "1.50 GiB");
    Progress off("t", 10, Progress::Mode::Off);
    off.add(5);
    CHECK(off.done() == 5);
    CHECK_FALSE(off.enabled());
}
