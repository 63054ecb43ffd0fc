// `ds3 inspect` through the real binary: the tensor table, --json, and --verify on a fresh
// file, a file with one flipped data byte, and a file without checksums.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "common.h"
#include "runtime/gguf/gguf.h"

using namespace ds3;
using namespace ds3::gguf;
namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> bytes_of(uint64_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (uint64_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed * 31 + i);
    return v;
}

fs::path make_model(const fs::path& dir, bool checksums = true) {
    const fs::path p = dir / "model.gguf";
    Writer w(p.string());
    w.set_checksums(checksums);
    w.set_kv("general.architecture", Value::str("deepseek2"));
    std::vector<std::string> toks;
    for (int i = 0; i < 1000; ++i) toks.push_back("tok" + std::to_string(i));
    toks[0] = "<｜begin▁of▁sentence｜>";
    w.set_kv("tokenizer.ggml.tokens", Value::strings(toks));
    w.set_kv("long.string", Value::str(std::string(500, 'x')));
    w.add_tensor("token_embd.weight", {7, 13}, TypeId::F32);
    w.add_tensor("blk.0.attn_q_a.weight", {64, 3}, TypeId::Q8_0);
    w.add_tensor("output_norm.weight", {7}, TypeId::BF16);
    w.write_header();
    uint8_t seed = 0;
    for (const auto& t : w.tensors()) w.write_tensor_data(bytes_of(t.nbytes, ++seed));
    w.finish();
    return p;
}

}  // namespace

TEST_CASE("inspect prints metadata, the tensor table and totals", "[inspect]") {
    const fs::path p = make_model(test::scratch_dir("inspect"));
    const auto r = test::run_ds3({"inspect", p.string()});
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::Contains("general.architecture"));
    CHECK_THAT(r.out, Catch::Contains("[1000 strings: \"<｜begin▁of▁sentence｜>\", \"tok1\", \"tok2\", ... ]"));
    CHECK_THAT(r.out, Catch::Contains("... (500 bytes)"));
    CHECK_THAT(r.out, Catch::Contains("token_embd.weight"));
    CHECK_THAT(r.out, Catch::Matches("(.|\\n)*blk\\.0\\.attn_q_a\\.weight +q8_0 +\\[64, 3\\] +204\\n(.|\\n)*"));
    CHECK_THAT(r.out, Catch::Matches("(.|\\n)*output_norm\\.weight +bf16 +\\[7\\] +14\\n(.|\\n)*"));
    CHECK_THAT(r.out, Catch::Contains("totals by type"));
    CHECK_THAT(r.out, Catch::Matches("(.|\\n)*\\n  f32 +1 +364 (.|\\n)*"));
}

TEST_CASE("inspect --json is one JSON object", "[inspect]") {
    const fs::path p = make_model(test::scratch_dir("inspect-json"));
    const auto r = test::run_ds3({"inspect", p.string(), "--json"});
    REQUIRE(r.exit_code == 0);
    const auto j = nlohmann::json::parse(r.out);
    CHECK(j["file_size"].get<uint64_t>() == fs::file_size(p));
    CHECK(j["metadata"]["general.architecture"]["value"] == "deepseek2");
    CHECK(j["metadata"]["tokenizer.ggml.tokens"]["count"] == 1000);
    CHECK(j["metadata"]["tokenizer.ggml.tokens"]["head"][0] == "<｜begin▁of▁sentence｜>");
    REQUIRE(j["tensors"].size() == 3);
    CHECK(j["tensors"][1]["name"] == "blk.0.attn_q_a.weight");
    CHECK(j["tensors"][1]["type"] == "q8_0");
    CHECK(j["tensors"][1]["shape"] == nlohmann::json::array({64, 3}));
    CHECK(j["tensors"][1]["bytes"] == 204);
    CHECK(j["totals"]["q8_0"]["count"] == 1);
    CHECK(j["tensor_bytes"] == 364 + 204 + 14);
}

TEST_CASE("inspect --verify", "[inspect]") {
    const fs::path dir = test::scratch_dir("inspect-verify");
    const fs::path p = make_model(dir);
    {
        const auto r = test::run_ds3({"inspect", "--verify", p.string()});
        INFO(r.out << r.err);
        CHECK(r.exit_code == 0);
        CHECK_THAT(r.out, Catch::Contains("verify: OK, 3 tensors"));
        const auto rj = test::run_ds3({"inspect", "--verify", "--json", p.string()});
        CHECK(rj.exit_code == 0);
        CHECK(nlohmann::json::parse(rj.out)["verify"]["ok"] == true);
    }
    // Flip one byte inside the q8_0 tensor's data.
    std::string img = test::read_file(p);
    {
        const File f = File::parse({reinterpret_cast<const uint8_t*>(img.data()), img.size()});
        const TensorInfo& t = f.tensor("blk.0.attn_q_a.weight");
        img[f.data_offset() + t.offset + 100] ^= 0x10;
    }
    const fs::path bad = dir / "flipped.gguf";
    test::write_file(bad, img);
    {
        const auto r = test::run_ds3({"inspect", "--verify", bad.string()});
        INFO(r.out << r.err);
        CHECK(r.exit_code != 0);
        CHECK_THAT(r.out, Catch::Contains("checksum mismatch: blk.0.attn_q_a.weight"));
        CHECK_THAT(r.out, Catch::Contains("1 of 3 tensors do not match"));
        CHECK_THAT(r.out, !Catch::Contains("mismatch: token_embd.weight"));
        CHECK_THAT(r.err, Catch::Contains("verify failed"));
        const auto rj = test::run_ds3({"inspect", "--verify", "--json", bad.string()});
        CHECK(rj.exit_code != 0);
        const auto j = nlohmann::json::parse(rj.out);
        CHECK(j["verify"]["ok"] == false);
        REQUIRE(j["verify"]["mismatches"].size() == 1);
        CHECK_THAT(j["verify"]["mismatches"][0].get<std::string>(), Catch::StartsWith("blk.0.attn_q_a.weight"));
        CHECK_THAT(rj.err, Catch::Contains("checksum mismatch: blk.0.attn_q_a.weight"));
    }
    // Without inspect --verify, the flipped file is still a valid file.
    CHECK(test::run_ds3({"inspect", bad.string()}).exit_code == 0);
}

TEST_CASE("inspect --verify on a file without checksums fails and says so", "[inspect]") {
    const fs::path p = make_model(test::scratch_dir("inspect-nosum"), false);
    const auto r = test::run_ds3({"inspect", "--verify", p.string()});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("no checksums"));
    CHECK_THAT(r.out, Catch::Contains("verify: FAILED: no checksums"));
}

TEST_CASE("inspect reports a broken file in one line", "[inspect]") {
    const fs::path dir = test::scratch_dir("inspect-bad");
    const fs::path p = make_model(dir);
    std::string img = test::read_file(p);
    img.resize(img.size() - 20);  // past the trailing padding, into the last tensor
    test::write_file(dir / "cut.gguf", img);
    const auto r = test::run_ds3({"inspect", (dir / "cut.gguf").string()});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("[gguf]") && Catch::Contains("cut.gguf") && Catch::Contains("extends past the end"));
    const auto missing = test::run_ds3({"inspect", (dir / "none.gguf").string()});
    CHECK(missing.exit_code != 0);
    CHECK_THAT(missing.err, Catch::Contains("none.gguf"));
}
