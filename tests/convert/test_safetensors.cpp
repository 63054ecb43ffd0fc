// Safetensors reader: the fixtures and goldens open, and each malformed header is
// rejected with a one-line error naming the defect.
#include <catch2/catch.hpp>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common.h"
#include "convert/safetensors.h"
#include "runtime/error.h"

using namespace ds3;
using namespace ds3::hf;
using ds3::test::fs::path;

namespace {

// A safetensors image from a header JSON text and a data section.
std::string make_st(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header + data;
}

std::string open_error(const std::string& bytes) {
    path p = ds3::test::scratch_dir("st") / "bad.safetensors";
    ds3::test::write_file(p, bytes);
    try {
        SafetensorsFile::open(p.string());
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("safetensors: fixtures and goldens open", "[convert][safetensors]") {
    DS3_REQUIRE_FIXTURES(fx);
    auto g = SafetensorsFile::open((fx / "golden/v3-tiny.golden.safetensors").string());
    const StTensor* tok = g.find("p1.tokens");
    REQUIRE(tok);
    CHECK(tok->dtype == DType::I32);
    REQUIRE(tok->shape.size() == 1);
    CHECK(tok->data.size() == tok->shape[0] * 4);

    auto f = SafetensorsFile::open((fx / "v3-tiny/model-00001-of-00002.safetensors").string());
    const StTensor* w = f.find("model.layers.0.self_attn.q_a_proj.weight");
    REQUIRE(w);
    CHECK(w->dtype == DType::F8_E4M3);
    CHECK(w->shape == std::vector<uint64_t>{96, 256});
    const StTensor* s = f.find("model.layers.0.self_attn.q_a_proj.weight_scale_inv");
    REQUIRE(s);
    CHECK(s->dtype == DType::F32);
    CHECK(s->shape == std::vector<uint64_t>{1, 2});
    CHECK(f.find("nope") == nullptr);
}

TEST_CASE("safetensors: to_f32 converts every float dtype", "[convert][safetensors]") {
    // 3 elements each: 1.0, -2.0, 0.5
    std::string data;
    const uint8_t f8[] = {0x38, 0xc0, 0x30};
    const uint8_t bf[] = {0x80, 0x3f, 0x00, 0xc0, 0x00, 0x3f};
    const uint8_t h[] = {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38};
    float f32[] = {1.0f, -2.0f, 0.5f};
    double f64[] = {1.0, -2.0, 0.5};
    data.append(reinterpret_cast<const char*>(f8), 3);
    data.append(reinterpret_cast<const char*>(bf), 6);
    data.append(reinterpret_cast<const char*>(h), 6);
    data.append(reinterpret_cast<const char*>(f32), 12);
    data.append(reinterpret_cast<const char*>(f64), 24);
    data.append(4, '\0');
    std::string hdr = R"({"__metadata__":{"format":"pt"},)"
                      R"("a":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[0,3]},)"
                      R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[3,9]},)"
                      R"("c":{"dtype":"F16","shape":[1,3],"data_offsets":[9,15]},)"
                      R"("d":{"dtype":"F32","shape":[3],"data_offsets":[15,27]},)"
                      R"("e":{"dtype":"F64","shape":[3],"data_offsets":[27,51]},)"
                      R"("i":{"dtype":"I32","shape":[1],"data_offsets":[51,55]}})";
    path p = ds3::test::scratch_dir("st") / "ok.safetensors";
    ds3::test::write_file(p, make_st(hdr, data));
    auto f = SafetensorsFile::open(p.string());
    CHECK(f.metadata().at("format") == "pt");
    REQUIRE(f.tensors().size() == 6);
    CHECK(f.tensors()[0].name == "a");  // in file order
    for (const char* n : {"a", "b", "c", "d", "e"}) {
        std::vector<float> out(3);
        to_f32(*f.find(n), out);
        CHECK(out == std::vector<float>{1.0f, -2.0f, 0.5f});
    }
    std::vector<float> one(1), two(2);
    CHECK_THROWS_WITH(to_f32(*f.find("i"), one), Catch::Contains("not a float type"));
    CHECK_THROWS_WITH(to_f32(*f.find("a"), two), Catch::Contains("output holds 2"));
}

TEST_CASE("safetensors: malformed files are rejected", "[convert][safetensors]") {
    const std::string ok_t = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    CHECK_THAT(open_error("abc"), Catch::Contains("too short"));
    CHECK_THAT(open_error(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}"), Catch::Contains("100 MB"));
    CHECK_THAT(open_error(std::string("\x40\0\0\0\0\0\0\0", 8) + "{}"), Catch::Contains("past the end"));
    CHECK_THAT(open_error(make_st("{\"t\":", "")), Catch::Contains("not valid JSON"));
    CHECK_THAT(open_error(make_st("[1,2]", "")), Catch::Contains("not a JSON object"));
    CHECK_THAT(open_error(make_st(R"({"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", "xx")),
               Catch::Contains("unsupported dtype 'Q4'"));
    CHECK_THAT(open_error(make_st(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", std::string(8, 'x'))),
               Catch::Contains("'dtype'"));
    CHECK_THAT(open_error(make_st(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, 'x'))),
               Catch::Contains("non-negative"));
    CHECK_THAT(open_error(make_st(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", std::string(8, 'x'))),
               Catch::Contains("data_offsets"));
    CHECK_THAT(open_error(make_st(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, 'x'))),
               Catch::Contains("reversed"));
    CHECK_THAT(open_error(make_st("{" + ok_t + "}", std::string(7, 'x'))), Catch::Contains("tensor t: data ends at 8"));
    CHECK_THAT(open_error(make_st(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 'x'))),
               Catch::Contains("need 12 bytes but data_offsets span 8"));
    CHECK_THAT(open_error(make_st(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                                  std::string(8, 'x'))),
               Catch::Contains("overflows"));
    CHECK_THAT(open_error(make_st("{" + ok_t + R"(,"u":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                  std::string(8, 'x'))),
               Catch::Contains("overlap"));
    CHECK_THAT(open_error(make_st(R"({"__metadata__":{"a":1}})", "")), Catch::Contains("not a string"));
    CHECK_THAT(open_error(make_st(R"({"t":3})", "")), Catch::Contains("not an object"));
    // The path is in every message.
    CHECK_THAT(open_error("abc"), Catch::Contains("bad.safetensors"));
    CHECK_THROWS_WITH(SafetensorsFile::open("/nonexistent/x.safetensors"), Catch::Contains("[safetensors]"));
}
