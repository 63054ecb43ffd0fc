// Conformance: every fixture converted to F32 and to BF16 by `ds3 convert`, run in one
// batch and token by token, against the float64 goldens (logits, the residual stream
// layer by layer, greedy tokens). Skips when ../shared/fixtures is absent.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <map>

#include "backends/backend.h"
#include "golden.h"
#include "models/runner.h"

using namespace ds3;
using namespace ds3::test;

namespace {

constexpr float kLogitTol = 1e-3f;
constexpr float kHiddenTol = 1e-4f;

// Strings are appended piecewise: GCC 12 warns falsely (-Wrestrict) on "x" + std::string.
std::vector<std::string> hidden_names(int64_t n_layer) {
    std::vector<std::string> v = {"embd"};
    for (int64_t l = 0; l < n_layer; ++l) {
        std::string s = "l";
        s += std::to_string(l);
        s += ".resid";
        v.push_back(s);
    }
    return v;
}

// Logits [T][V] and the hidden states of `tokens`, in one batch or one token at a time.
std::vector<float> evaluate(const Deepseek2Model& m, Backend& be, const std::vector<int32_t>& tokens, bool incremental,
                            std::map<std::string, std::vector<float>>* hidden) {
    Runner r(m, {&be}, 256);
    const auto names = hidden ? hidden_names(m.hp.n_layer) : std::vector<std::string>{};
    if (!incremental) return r.eval(tokens, true, names, hidden);
    std::vector<float> all;
    std::map<std::string, std::vector<float>> step;
    for (int32_t t : tokens) {
        auto l = r.eval(std::span<const int32_t>(&t, 1), true, names, &step);
        all.insert(all.end(), l.begin(), l.end());
        if (hidden)
            for (auto& [k, v] : step) (*hidden)[k].insert((*hidden)[k].end(), v.begin(), v.end());
    }
    return all;
}

void check_fixture(const std::string& name, const std::string& outtype) {
    DS3_REQUIRE_FIXTURES(fx);
    const Golden g = golden(fx, name);
    Deepseek2Model m = load_deepseek2(converted(fx, name, outtype, "golden").string());
    auto cpu = create_backend("cpu", {2});
    const size_t V = size_t(m.hp.n_vocab), E = size_t(m.hp.n_embd);
    // The v3-tiny checkpoints carry one MTP block: loaded and validated, not run.
    const bool has_mtp = name.rfind("v3-tiny", 0) == 0;
    REQUIRE(m.nextn.size() == (has_mtp ? 1u : 0u));
    if (has_mtp) CHECK((m.nextn[0].eh_proj && m.nextn[0].shared_head_norm && m.nextn[0].gate_exps));

    for (bool incremental : {false, true}) {
        for (int p = 0; p < 3; ++p) {
            std::string pn = "p";
            pn += std::to_string(p);
            pn += '.';
            const auto tokens = g.i32(pn + "tokens");
            const size_t T = tokens.size();
            std::map<std::string, std::vector<float>> hidden;
            auto logits = evaluate(m, *cpu, tokens, incremental, p == 1 ? &hidden : nullptr);
            REQUIRE(logits.size() == T * V);
            INFO(name << " " << outtype << (incremental ? " incremental " : " batch ") << pn);
            check_logits(g, pn, logits, T, V, kLogitTol);
            if (p == 1) {
                // [n_layer + 1][T][n_embd]: after the embedding, then after each layer.
                const auto ref = g.f32("p1.hidden");
                const auto names = hidden_names(m.hp.n_layer);
                REQUIRE(ref.size() == names.size() * T * E);
                for (size_t l = 0; l < names.size(); ++l) {
                    INFO("hidden " << names[l]);
                    const auto& got = hidden[names[l]];
                    REQUIRE(got.size() == T * E);
                    float scale = 1.0f;
                    for (size_t i = 0; i < T * E; ++i) scale = std::max(scale, std::abs(ref[l * T * E + i]));
                    CHECK(max_diff(got.data(), ref.data() + l * T * E, T * E) <= kHiddenTol * scale);
                }
            }
        }
    }

    const auto prompt = g.i32("greedy.prompt");
    const auto want = g.i32("greedy.tokens");
    Runner r(m, {cpu.get()}, 256);
    CHECK(generate_greedy(r, prompt, int64_t(want.size())) == want);
}

}  // namespace

TEST_CASE("v3-tiny matches its goldens", "[golden]") { check_fixture("v3-tiny", GENERATE(as<std::string>(), "f32", "bf16")); }
TEST_CASE("v3-tiny-bf16 matches its goldens", "[golden]") { check_fixture("v3-tiny-bf16", GENERATE(as<std::string>(), "f32", "bf16")); }
TEST_CASE("v2-lite-tiny matches its goldens", "[golden]") { check_fixture("v2-lite-tiny", GENERATE(as<std::string>(), "f32", "bf16")); }
TEST_CASE("v3-realvocab matches its goldens", "[golden]") { check_fixture("v3-realvocab", GENERATE(as<std::string>(), "f32", "bf16")); }

TEST_CASE("v3-tiny (FP8 release) and v3-tiny-bf16 give the same logits", "[golden]") {
    DS3_REQUIRE_FIXTURES(fx);
    const auto tokens = golden(fx, "v3-tiny").i32("p2.tokens");
    auto cpu = create_backend("cpu", {2});
    Deepseek2Model a = load_deepseek2(converted(fx, "v3-tiny", "f32", "golden").string());
    Deepseek2Model b = load_deepseek2(converted(fx, "v3-tiny-bf16", "f32", "golden").string());
    auto la = evaluate(a, *cpu, tokens, false, nullptr);
    auto lb = evaluate(b, *cpu, tokens, false, nullptr);
    REQUIRE(la.size() == lb.size());
    CHECK(max_diff(la.data(), lb.data(), la.size()) == 0.0f);
}

TEST_CASE("ds3 eval and ds3 run reproduce the goldens through the CLI", "[golden][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    const Golden g = golden(fx, "v2-lite-tiny");
    const fs::path model = converted(fx, "v2-lite-tiny", "bf16", "golden");
    const fs::path dir = scratch_dir("cli-eval");
    const auto tokens = g.i32("p1.tokens");
    const std::string ids = join_ids(tokens);
    const auto ref = g.f32("p1.logits");

    for (bool inc : {false, true}) {
        std::vector<std::string> args = {"eval", "-m", model.string(), "--tokens", ids, "--logits-out",
                                         (dir / "l.bin").string(), "--threads", "2"};
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

    RunResult d = run_ds3({"eval", "-m", model.string(), "--tokens", ids, "--logits-out", (dir / "d.bin").string(),
                           "--dump", "l1.kv_latent,l2.resid", "--dump-dir", (dir / "dump").string()});
    INFO(d.err);
    REQUIRE(d.exit_code == 0);
    CHECK(fs::file_size(dir / "dump" / "l1.kv_latent.f32") == tokens.size() * 64 * 4);
    const std::string resid = read_file(dir / "dump" / "l2.resid.f32");
    const auto hidden = g.f32("p1.hidden");  // layer 2's output is slot 3
    std::vector<float> got(resid.size() / 4);
    std::memcpy(got.data(), resid.data(), resid.size());
    REQUIRE(got.size() == tokens.size() * 192);
    CHECK(max_diff(got.data(), hidden.data() + 3 * got.size(), got.size()) <= kHiddenTol * 10);

    const std::string prompt = join_ids(g.i32("greedy.prompt"));
    const std::string want = join_ids(g.i32("greedy.tokens"));
    RunResult r = run_ds3({"run", "-m", model.string(), "--tokens", prompt, "-n", "12", "--temp", "0", "--print-ids"});
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.out == want + "\n");

    RunResult small = run_ds3({"run", "-m", model.string(), "--tokens", prompt, "-n", "12", "--print-ids", "-c", "20"});
    CHECK(small.exit_code != 0);
    CHECK(small.err.find("need a context of 28, -c is 20") != std::string::npos);

    RunResult over = run_ds3({"eval", "-m", model.string(), "--tokens", ids, "--logits-out", (dir / "x.bin").string(), "-c", "8"});
    CHECK(over.exit_code != 0);
    CHECK(over.err.find("context size exceeded") != std::string::npos);
    CHECK_FALSE(fs::exists(dir / "x.bin"));
    RunResult badtok = run_ds3({"eval", "-m", model.string(), "--tokens", "0,5000", "--logits-out", (dir / "y.bin").string()});
    CHECK(badtok.exit_code != 0);
    CHECK(badtok.err.find("token id 5000 outside the vocabulary [0, 1024)") != std::string::npos);
    RunResult badlist = run_ds3({"eval", "-m", model.string(), "--tokens", "0,x", "--logits-out", (dir / "y.bin").string()});
    CHECK(badlist.exit_code != 0);
    CHECK(badlist.err.find("found 'x'") != std::string::npos);
    RunResult dumpless = run_ds3({"eval", "-m", model.string(), "--tokens", "0", "--logits-out", (dir / "y.bin").string(),
                                  "--dump", "embd"});
    CHECK(dumpless.err.find("--dump needs --dump-dir") != std::string::npos);
}
