// The C API through its C half (capi_c_part.c): token-level use on a synthetic model,
// errors, and text-level use on the converted v3-realvocab fixture.
#include <catch2/catch.hpp>

#include "common.h"

extern "C" {
int capi_eval_consistency(const char* path);
int capi_errors(const char* missing_path);
int capi_text(const char* path);
}

namespace fs = std::filesystem;
using ds3::test::run_ds3;

namespace {
fs::path synth_model() {
    static fs::path out;
    if (!out.empty()) return out;
    const fs::path dir = ds3::test::scratch_dir("capi");
    REQUIRE(run_ds3({"synth", "--preset", "v3-tiny", "-o", (dir / "hf").string()}).exit_code == 0);
    out = dir / "v3-tiny.gguf";
    REQUIRE(run_ds3({"convert", (dir / "hf").string(), "-o", out.string(), "--outtype", "f32", "--no-progress"})
                .exit_code == 0);
    return out;
}
}  // namespace

TEST_CASE("C API: eval in a batch equals eval token by token; context limits", "[capi]") {
    CHECK(capi_eval_consistency(synth_model().c_str()) == 0);
}

TEST_CASE("C API: bad arguments and files give statuses and messages", "[capi]") {
    const fs::path missing = ds3::test::scratch_dir("capi-missing") / "nope.gguf";
    CHECK(capi_errors(missing.c_str()) == 0);
}

TEST_CASE("C API: tokenize, template, generate on a model with a tokenizer", "[capi]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path out = ds3::test::scratch_dir("capi-rv") / "rv.gguf";
    REQUIRE(run_ds3({"convert", (fx / "v3-realvocab").string(), "-o", out.string(), "--outtype", "f32",
                     "--no-progress"})
                .exit_code == 0);
    CHECK(capi_text(out.c_str()) == 0);
}
