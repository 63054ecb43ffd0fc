// Issue "foundation", done-when: every public fixture converts to f32, bf16 and f16 through
// the CLI; `ds3 inspect --verify` passes on each output and fails, naming the tensor, on a
// copy with one data byte flipped.
#include <catch2/catch.hpp>

#include "common.h"
#include "runtime/gguf/gguf.h"

namespace fs = std::filesystem;
using ds3::test::run_ds3;

TEST_CASE("fixtures convert via the CLI and verify; a flipped byte fails verify", "[convert][inspect]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path dir = ds3::test::scratch_dir("verify");
    for (const char* fixture : {"v3-tiny", "v3-tiny-bf16", "v2-lite-tiny", "v3-realvocab"}) {
        for (const char* outtype : {"f32", "bf16", "f16"}) {
            const std::string tag = std::string(fixture) + "." + outtype;
            INFO(tag);
            const fs::path out = dir / (tag + ".gguf");
            const auto c = run_ds3({"convert", (fx / fixture).string(), "-o", out.string(),
                                    "--outtype", outtype, "--no-progress"});
            REQUIRE(c.exit_code == 0);
            const auto v = run_ds3({"inspect", "--verify", out.string()});
            CHECK(v.exit_code == 0);
            CHECK_THAT(v.out, Catch::Contains("verify: OK"));

            // Flip one byte in the middle of the last tensor's data.
            std::string bytes = ds3::test::read_file(out);
            std::string victim;
            uint64_t pos = 0;
            {
                const auto f = ds3::gguf::File::open(out.string());
                const auto& t = f.tensors().back();
                victim = t.name;
                pos = f.data_offset() + t.offset + t.nbytes / 2;
            }
            bytes[pos] = static_cast<char>(bytes[pos] ^ 0x40);
            const fs::path bad = dir / (tag + ".flipped.gguf");
            ds3::test::write_file(bad, bytes);
            const auto b = run_ds3({"inspect", "--verify", bad.string()});
            CHECK(b.exit_code != 0);
            CHECK_THAT(b.out + b.err, Catch::Contains(victim));
            fs::remove(out);
            fs::remove(bad);
        }
    }
}
