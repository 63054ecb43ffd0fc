// The fixtures' goldens end to end on the CUDA backend (label conformance): every
// fixture converted to F32 and BF16, in one batch and token by token, logits within
// 1e-3 of the float64 goldens and the greedy tokens identical — the CPU golden test's
// limits — and `ds3 eval` / `ds3 run` with --backend cuda. Skips without fixtures or GPU.
#include <catch2/catch.hpp>

#include <cstring>

#include "golden.h"
#include "cuda_test.h"
#include "models/runner.h"

using namespace ds3;
using namespace ds3::test;

namespace {

constexpr float kLogitTol = 1e-3f;

void check_fixture(const std::string& name, const std::string& outtype) {
    DS3_REQUIRE_FIXTURES(fx);
    if (!fs::exists(fx / name)) {
        WARN("skipped: fixture " << name << " is absent");
        return;
    }
    DS3_REQUIRE_CUDA(gpu);
    const Golden g = golden(fx, name);
    Deepseek2Model m = load_deepseek2(converted(fx, name, outtype, "cuda-golden").string());
    const size_t V = size_t(m.hp.n_vocab);
    for (bool incremental : {false, true}) {
        for (int p = 0; p < 3; ++p) {
            // Appended piecewise: GCC 12 warns falsely (-Wrestrict) on "x" + std::string.
            std::string pn = "p";
            pn += std::to_string(p);
            pn += '.';
            const auto tokens = g.i32(pn + "tokens");
            const size_t T = tokens.size();
            Runner r(m, {gpu.get()}, 256);
            std::vector<float> logits;
            if (incremental) {
                for (int32_t t : tokens) {
                    auto l = r.eval(std::span<const int32_t>(&t, 1), true);
                    logits.insert(logits.end(), l.begin(), l.end());
                }
            } else {
                logits = r.eval(tokens, true);
            }
            REQUIRE(logits.size() == T * V);
            INFO(name << " " << outtype << (incremental ? " incremental " : " batch ") << pn);
            CHECK(all_finite(logits));
            check_logits(g, pn, logits, T, V, kLogitTol);
        }
    }
    const auto prompt = g.i32("greedy.prompt");
    const auto want = g.i32("greedy.tokens");
    Runner r(m, {gpu.get()}, 256);
    CHECK(generate_greedy(r, prompt, int64_t(want.size())) == want);
}

}  // namespace

TEST_CASE("cuda: v3-tiny matches its goldens", "[cuda][golden]") { check_fixture("v3-tiny", GENERATE(as<std::string>(), "f32", "bf16")); }
TEST_CASE("cuda: v3-tiny-bf16 matches its goldens", "[cuda][golden]") { check_fixture("v3-tiny-bf16", GENERATE(as<std::string>(), "f32", "bf16")); }
TEST_CASE("cuda: v2-lite-tiny matches its goldens", "[cuda][golden]") { check_fixture("v2-lite-tiny", GENERATE(as<std::string>(), "f32", "bf16")); }
TEST_CASE("cuda: v3-realvocab matches its goldens", "[cuda][golden]") { check_fixture("v3-realvocab", GENERATE(as<std::string>(), "f32", "bf16")); }

TEST_CASE("cuda: ds3 eval and ds3 run --backend cuda reproduce the goldens", "[cuda][golden][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    DS3_REQUIRE_CUDA(gpu);
    gpu.reset();  // the CLI makes its own
    const Golden g = golden(fx, "v2-lite-tiny");
    const fs::path model = converted(fx, "v2-lite-tiny", "bf16", "cuda-golden");
    const fs::path dir = scratch_dir("cuda-cli");
    const auto tokens = g.i32("p1.tokens");
    const auto ref = g.f32("p1.logits");
    for (bool inc : {false, true}) {
        std::vector<std::string> args = {"eval", "-m", model.string(), "--backend", "cuda", "--tokens", join_ids(tokens),
                                         "--logits-out", (dir / "l.bin").string()};
        if (inc) args.push_back("--incremental");
        RunResult r = run_ds3(args);
        INFO(r.err);
        REQUIRE(r.exit_code == 0);
        const std::string bytes = read_file(dir / "l.bin");
        REQUIRE(bytes.size() == ref.size() * 4);
        std::vector<float> got(ref.size());
        std::memcpy(got.data(), bytes.data(), bytes.size());
        CHECK(max_diff(got.data(), ref.data(), ref.size()) <= kLogitTol);
    }
    RunResult r = run_ds3({"run", "-m", model.string(), "--backend", "cuda", "--tokens", join_ids(g.i32("greedy.prompt")),
                           "-n", "12", "--temp", "0", "--print-ids"});
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.out == join_ids(g.i32("greedy.tokens")) + "\n");
}

TEST_CASE("cuda: an unknown backend name lists the available ones", "[cuda][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path model = converted(fx, "v2-lite-tiny", "bf16", "cuda-golden");
    RunResult r = run_ds3({"eval", "-m", model.string(), "--backend", "tpu", "--tokens", "1", "--logits-out",
                           (scratch_dir("cuda-cli-bad") / "x.bin").string()});
    CHECK(r.exit_code != 0);
    CHECK(r.err.find("unknown or unavailable backend 'tpu'") != std::string::npos);
    CHECK(r.err.find(cuda_device_count() > 0 ? "cpu, cuda" : "(available: cpu)") != std::string::npos);
}
