// The v3-realvocab fixture converted once per test process (f32, so greedy decoding is
// the same in every process), shared by the chat and generation tests.
#pragma once

#include <catch2/catch.hpp>

#include "common.h"

namespace ds3::test {

inline fs::path realvocab_gguf(const fs::path& fx) {
    static const fs::path p = [&] {
        fs::path out = scratch_dir("chat-model") / "v3-realvocab-f32.gguf";
        RunResult r = run_ds3({"convert", (fx / "v3-realvocab").string(), "-o", out.string(), "--outtype", "f32"});
        INFO(r.err);
        REQUIRE(r.exit_code == 0);
        return out;
    }();
    return p;
}

}  // namespace ds3::test
