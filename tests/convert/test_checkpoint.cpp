// HF checkpoints: sharded and single-file releases, FP8 block dequantisation (equal to the
// BF16 release exactly, partial blocks included), row-range reads, and the index errors.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "common.h"
#include "convert/hf_checkpoint.h"
#include "convert/safetensors_writer.h"
#include "quantize/float.h"
#include "runtime/error.h"

using namespace ds3;
using namespace ds3::hf;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
fs::path copy_fixture(const fs::path& fx, const std::string& name) {
    const fs::path dst = ds3::test::scratch_dir("ck") / name;
    fs::copy(fx / name, dst, fs::copy_options::recursive);
    for (auto& e : fs::recursive_directory_iterator(dst))
        fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
    return dst;
}
}  // namespace

TEST_CASE("checkpoint: FP8 release dequantises to the BF16 release exactly", "[convert][checkpoint]") {
    DS3_REQUIRE_FIXTURES(fx);
    Checkpoint fp8 = Checkpoint::open((fx / "v3-tiny").string());
    Checkpoint bf = Checkpoint::open((fx / "v3-tiny-bf16").string());
    CHECK(fp8.sharded());
    CHECK(fp8.n_shards() == 2);
    CHECK_FALSE(bf.sharded());
    size_t n_fp8 = 0, n_partial = 0;
    for (const std::string& n : bf.names()) {
        INFO(n);
        REQUIRE(fp8.has(n));
        const StTensor& t = fp8.tensor(n);
        if (t.dtype == DType::F8_E4M3) {
            ++n_fp8;
            if (t.shape[0] % 128 || t.shape[1] % 128) ++n_partial;
        }
        CHECK(fp8.read_f32(n) == bf.read_f32(n));
    }
    CHECK(n_fp8 > 50);
    CHECK(n_partial > 10);  // shapes like [96, 256] and [384, 256]: partial blocks at the edges
    // Every FP8 weight has its scale, and the scales are not in the BF16 release.
    for (const std::string& n : fp8.names())
        if (n.size() > 10 && n.substr(n.size() - 10) == "_scale_inv") CHECK_FALSE(bf.has(n));
}

TEST_CASE("checkpoint: row ranges equal slices of the whole tensor", "[convert][checkpoint]") {
    DS3_REQUIRE_FIXTURES(fx);
    Checkpoint ck = Checkpoint::open((fx / "v3-tiny").string());
    const std::string n = "model.layers.0.mlp.gate_proj.weight";  // [384, 256] FP8: 3 x 2 blocks
    const auto all = ck.read_f32(n);
    REQUIRE(ck.shape(n) == std::vector<uint64_t>{384, 256});
    for (auto [r0, nr] : {std::pair<uint64_t, uint64_t>{0, 1}, {127, 2}, {129, 130}, {383, 1}, {5, 0}}) {
        std::vector<float> part(nr * 256);
        ck.read_rows_f32(n, r0, nr, part);
        CHECK(std::equal(part.begin(), part.end(), all.begin() + r0 * 256));
    }
    std::vector<float> bad(256);
    CHECK_THROWS_WITH(ck.read_rows_f32(n, 384, 1, bad), Catch::Contains("outside its 384 rows"));
    CHECK_THROWS_WITH(ck.read_rows_f32(n, 0, 2, bad), Catch::Contains("output holds 256"));
    CHECK(ck.file_of(n).find("model-00001-of-00002.safetensors") != std::string::npos);
}

TEST_CASE("checkpoint: FP8 with non-power-of-two scales and odd block sizes", "[convert][checkpoint]") {
    // 5 x 7 weight in 2 x 3 blocks -> scales [3, 3], with partial last blocks both ways.
    const fs::path dir = ds3::test::scratch_dir("ck-odd");
    std::vector<uint8_t> w(35);
    for (int i = 0; i < 35; ++i) w[i] = static_cast<uint8_t>((i * 37 + 11) % 0x7e);
    std::vector<float> sc = {0.5f, 3.0f, 0.1f, 7.0f, 1.0f, 2.0f, 0.25f, 9.0f, 0.3f};
    {
        SafetensorsWriter sw((dir / "model.safetensors").string(),
                             {{"w", DType::F8_E4M3, {5, 7}}, {"w_scale_inv", DType::F32, {3, 3}}, {"v", DType::F8_E4M3, {2, 2}}});
        sw.write(w);
        sw.write({reinterpret_cast<const uint8_t*>(sc.data()), 36});
        sw.write(std::vector<uint8_t>(4, 0x38));
        sw.finish();
    }
    Checkpoint ck = Checkpoint::open(dir.string());
    ck.set_fp8_block(2, 3);
    const auto got = ck.read_f32("w");
    for (int r = 0; r < 5; ++r)
        for (int c = 0; c < 7; ++c) CHECK(got[r * 7 + c] == fp8_e4m3_to_f32(w[r * 7 + c]) * sc[(r / 2) * 3 + c / 3]);
    CHECK_THROWS_WITH(ck.read_f32("v"), Catch::Contains("v_scale_inv is missing"));
    ck.set_fp8_block(128, 128);
    CHECK_THROWS_WITH(ck.read_f32("w"), Catch::Contains("w_scale_inv: shape [3, 3]") && Catch::Contains("needs [1, 1]"));
    CHECK_THROWS_WITH(ck.tensor("nope"), Catch::Contains("no tensor nope"));
}

TEST_CASE("checkpoint: missing shard and tensors absent from their shard", "[convert][checkpoint]") {
    DS3_REQUIRE_FIXTURES(fx);
    SECTION("missing shard") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        fs::remove(d / "model-00002-of-00002.safetensors");
        CHECK_THROWS_WITH(Checkpoint::open(d.string()),
                          Catch::Contains("model-00002-of-00002.safetensors: shard is missing") &&
                              Catch::Contains("for tensor"));
    }
    SECTION("shard removed after open") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        Checkpoint ck = Checkpoint::open(d.string());
        fs::remove(d / "model-00002-of-00002.safetensors");
        CHECK_THROWS_WITH(ck.tensor("model.norm.weight"),
                          Catch::Contains("shard is missing (needed for tensor model.norm.weight)"));
    }
    SECTION("index names a tensor the shard lacks") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        json idx = json::parse(ds3::test::read_file(d / "model.safetensors.index.json"));
        idx["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
        ds3::test::write_file(d / "model.safetensors.index.json", idx.dump());
        Checkpoint ck = Checkpoint::open(d.string());
        CHECK_THROWS_WITH(ck.tensor("model.norm.weight"),
                          Catch::Contains("model-00001-of-00002.safetensors: tensor model.norm.weight is named by "
                                          "model.safetensors.index.json but absent from the shard"));
    }
    SECTION("bad index") {
        const fs::path d = copy_fixture(fx, "v3-tiny");
        ds3::test::write_file(d / "model.safetensors.index.json", R"({"weight_map": {"a": "../etc/passwd"}})");
        CHECK_THROWS_WITH(Checkpoint::open(d.string()), Catch::Contains("bad shard file name"));
        ds3::test::write_file(d / "model.safetensors.index.json", R"({"metadata": {}})");
        CHECK_THROWS_WITH(Checkpoint::open(d.string()), Catch::Contains("missing object 'weight_map'"));
        ds3::test::write_file(d / "model.safetensors.index.json", "{");
        CHECK_THROWS_WITH(Checkpoint::open(d.string()), Catch::Contains("not valid JSON"));
    }
    SECTION("no weights at all") {
        CHECK_THROWS_WITH(Checkpoint::open(ds3::test::scratch_dir("empty").string()),
                          Catch::Contains("neither model.safetensors nor model.safetensors.index.json"));
    }
}

TEST_CASE("safetensors writer: round trip and misuse", "[convert][safetensors]") {
    const fs::path p = ds3::test::scratch_dir("stw") / "x.safetensors";
    {
        SafetensorsWriter w(p.string(), {{"a", DType::BF16, {3}}, {"b", DType::I32, {1, 1}}}, {{"k", "v"}});
        CHECK_THROWS_WITH(w.write(std::vector<uint8_t>(5)), Catch::Contains("5 bytes written, 6 declared"));
        w.write(std::vector<uint8_t>{0x80, 0x3f, 0, 0x40, 0, 0});
        CHECK_THROWS_WITH(w.finish(), Catch::Contains("1 of 2 tensors written"));
    }
    CHECK_FALSE(fs::exists(p));
    CHECK_FALSE(fs::exists(p.string() + ".tmp"));
    {
        SafetensorsWriter w(p.string(), {{"a", DType::BF16, {3}}, {"b", DType::I32, {1, 1}}}, {{"k", "v"}});
        w.write(std::vector<uint8_t>{0x80, 0x3f, 0, 0x40, 0, 0});
        w.write(std::vector<uint8_t>{1, 0, 0, 0});
        w.finish();
    }
    auto f = SafetensorsFile::open(p.string());
    CHECK(f.metadata().at("k") == "v");
    std::vector<float> a(3);
    to_f32(*f.find("a"), a);
    CHECK(a == std::vector<float>{1.0f, 2.0f, 0.0f});
    CHECK(f.find("b")->shape == std::vector<uint64_t>{1, 1});
    CHECK_THROWS_WITH(SafetensorsWriter(p.string(), {{"a", DType::F32, {1}}, {"a", DType::F32, {1}}}),
                      Catch::Contains("duplicate tensor a"));
}
