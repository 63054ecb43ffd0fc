// Runs every file of the fuzz seed corpus (and the crash regressions kept there) through
// the fuzz target's entry point, so that plain builds without libFuzzer still check them.
#include <catch2/catch.hpp>

#include <filesystem>

#include "common.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

TEST_CASE("the GGUF fuzz corpus replays without crashing", "[fuzz]") {
    const std::filesystem::path dir = DS3_FUZZ_CORPUS_DIR;
    size_t files = 0, valid = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
        const std::string bytes = ds3::test::read_file(e.path());
        const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
        INFO(e.path().string());
        CHECK(LLVMFuzzerTestOneInput(p, bytes.size()) == 0);
        try {
            ds3::gguf::File::parse({p, bytes.size()});
            ++valid;
        } catch (const ds3::Error& err) {
            CHECK(std::string(err.what()).find('\n') == std::string::npos);
        }
        ++files;
    }
    CHECK(files >= 8);
    CHECK(valid >= 4);  // the generator's valid seeds
}
