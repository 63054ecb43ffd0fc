// `ds3 convert --outtype MIX --imatrix FILE`: the one-pass quantizing convert applies an
// importance matrix exactly as `ds3 quantize --imatrix` does, so its file is byte for byte
// the one convert-to-f32-then-quantize gives (per routed expert and per attention head
// included), and its errors (float outtype, not an imatrix, another model's imatrix).
#include <catch2/catch.hpp>

#include "common.h"
#include "convert/convert.h"
#include "quantize/imatrix.h"
#include "quantize/mixes.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

using namespace ds3;
namespace fs = std::filesystem;

namespace {

// Calibration ids below every fixture's vocabulary; 77 tokens in chunks of 25: three
// whole chunks (the last two tokens unused), an odd count on purpose.
std::string calib_ids() {
    std::string ids;
    for (int i = 0; i < 77; ++i) {
        if (i) ids += ',';
        ids += std::to_string((i * 53 + 7) % 1000);
    }
    return ids;
}

// f32 GGUF and its imatrix for one fixture.
struct Made {
    fs::path f32, im;
};

Made make(const fs::path& fixtures, const std::string& name, const fs::path& dir) {
    Made m{dir / (name + "-f32.gguf"), dir / (name + ".imatrix")};
    auto r = test::run_ds3({"convert", (fixtures / name).string(), "-o", m.f32.string(), "--outtype", "f32"});
    REQUIRE(r.exit_code == 0);
    r = test::run_ds3({"imatrix", "-m", m.f32.string(), "--tokens", calib_ids(), "-o", m.im.string(), "-c", "25", "-t",
                       "2"});
    REQUIRE(r.exit_code == 0);
    return m;
}

}  // namespace

TEST_CASE("convert --imatrix equals convert then quantize --imatrix, byte for byte", "[convert][imatrix][conformance]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path dir = test::scratch_dir("convert_imatrix");
    for (const char* fixture : {"v3-tiny", "v2-lite-tiny"}) {
        const Made m = make(fx, fixture, dir);
        for (const char* type : {"Q4_K_M", "Q2_K", "iq4_xs"}) {
            INFO(fixture << " " << type);
            const fs::path one = dir / (std::string(fixture) + "-one.gguf");
            const fs::path two = dir / (std::string(fixture) + "-two.gguf");
            const fs::path plain = dir / (std::string(fixture) + "-plain.gguf");
            auto r = test::run_ds3({"convert", (fx / fixture).string(), "-o", one.string(), "--outtype", type,
                                    "--imatrix", m.im.string(), "--no-progress"});
            REQUIRE(r.exit_code == 0);
            r = test::run_ds3({"quantize", m.f32.string(), two.string(), type, "--imatrix", m.im.string(), "-t", "2"});
            REQUIRE(r.exit_code == 0);
            const std::string a = test::read_file(one), b = test::read_file(two);
            CHECK(a.size() == b.size());
            CHECK(a == b);
            // The importance changed the bytes (else the equality above proves nothing).
            r = test::run_ds3({"convert", (fx / fixture).string(), "-o", plain.string(), "--outtype", type});
            REQUIRE(r.exit_code == 0);
            CHECK(test::read_file(plain) != a);
            const gguf::File f = gguf::File::open(one.string());
            CHECK(f.get_string("quantize.imatrix.file") == m.im.filename().string());
            CHECK(f.get_string("ds3.quantize.type") == type);
        }
    }
}

TEST_CASE("convert --imatrix errors", "[convert][imatrix][conformance]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path dir = test::scratch_dir("convert_imatrix_err");
    const Made v2 = make(fx, "v2-lite-tiny", dir);
    const fs::path out = dir / "out.gguf";
    const std::string v3 = (fx / "v3-tiny").string();

    // A float outtype has nothing to weight.
    auto r = test::run_ds3({"convert", v3, "-o", out.string(), "--outtype", "bf16", "--imatrix", v2.im.string()});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("--imatrix needs a quantized --outtype"));
    CHECK_FALSE(fs::exists(out));
    // Not an imatrix file.
    r = test::run_ds3({"convert", v3, "-o", out.string(), "--outtype", "Q4_K_M", "--imatrix", v2.f32.string()});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("expected 'imatrix'"));
    CHECK_FALSE(fs::exists(out));
    // Another model's imatrix: the shapes disagree; nothing is left at the output.
    r = test::run_ds3({"convert", v3, "-o", out.string(), "--outtype", "Q4_K_M", "--imatrix", v2.im.string()});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("another model"));
    CHECK_FALSE(fs::exists(out));
    // The library refuses an imatrix without a quantized target too.
    const quant::Imatrix im = quant::Imatrix::load(v2.im.string());
    hf::ConvertOptions o;
    o.outtype = hf::OutType::F16;
    o.imatrix = &im;
    CHECK_THROWS_WITH(hf::convert(v3, out.string(), o), Catch::Contains("needs a quantized --outtype"));
    CHECK_FALSE(fs::exists(out));
}
