// Samplers on hand-made logits: each stage alone, the seed contract, penalties, stop strings.
#include <catch2/catch.hpp>

#include <cmath>
#include <map>

#include "common.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/sampling.h"

using namespace ds3;

namespace {
SamplingParams greedy() {
    SamplingParams p;
    p.temperature = 0;
    return p;
}
// Frequencies of each token over many draws.
std::map<int32_t, int> histogram(SamplingParams p, const std::vector<float>& logits, int n = 4000) {
    Sampler s(p);
    std::map<int32_t, int> h;
    for (int i = 0; i < n; ++i) ++h[s.sample(logits)];
    return h;
}
}  // namespace

TEST_CASE("greedy picks the largest logit, lowest id on ties, ignoring NaN", "[sampling]") {
    Sampler s(greedy());
    CHECK(s.sample(std::vector<float>{0.1f, 3.0f, -2.0f, 2.9f, 1.0f}) == 1);
    CHECK(s.sample(std::vector<float>{1.0f, 5.0f, 5.0f}) == 1);
    CHECK(s.sample(std::vector<float>{NAN, -1.0f, NAN}) == 1);
    CHECK_THROWS_WITH(s.sample(std::vector<float>{NAN, NAN}), Catch::Contains("[sampling]") && Catch::Contains("NaN"));
    CHECK_THROWS_WITH(s.sample(std::vector<float>{}), Catch::Contains("empty logits"));
}

TEST_CASE("the uniform draw is the documented (x >> 11) * 2^-53 of mt19937_64", "[sampling]") {
    std::mt19937_64 a(42), b(42);
    for (int i = 0; i < 5; ++i) {
        double u = Sampler::uniform(a);
        CHECK(u == static_cast<double>(b() >> 11) / 9007199254740992.0);
        CHECK(u >= 0.0);
        CHECK(u < 1.0);
    }
    // mt19937_64's 10000th output is fixed by the C++ standard.
    std::mt19937_64 std_check;
    std_check.discard(9999);
    CHECK(std_check() == 9981545732273789042ull);
}

TEST_CASE("same seed, same tokens; another seed, another sequence", "[sampling]") {
    std::vector<float> logits = {1.0f, 1.1f, 0.9f, 1.05f, 0.95f, 1.02f, 0.7f};
    SamplingParams p;
    p.seed = 7;
    auto run = [&](SamplingParams q) {
        Sampler s(q);
        std::vector<int32_t> out;
        for (int i = 0; i < 40; ++i) out.push_back(s.sample(logits));
        return out;
    };
    auto a = run(p), b = run(p);
    CHECK(a == b);
    p.seed = 8;
    CHECK(run(p) != a);
    Sampler s(p);
    int32_t first = s.sample(logits);
    for (int i = 0; i < 5; ++i) s.sample(logits);
    s.reset();
    CHECK(s.sample(logits) == first);
}

TEST_CASE("temperature sharpens and flattens the distribution", "[sampling]") {
    std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 1/4, 3/4 at T = 1
    SamplingParams p;
    p.seed = 1;
    auto h = histogram(p, logits);
    CHECK(h[1] / 4000.0 == Approx(0.75).margin(0.03));
    p.temperature = 1000.0f;  // nearly uniform
    h = histogram(p, logits);
    CHECK(h[1] / 4000.0 == Approx(0.5).margin(0.03));
    p.temperature = 0.05f;  // nearly greedy
    h = histogram(p, logits);
    CHECK(h[1] == 4000);
}

TEST_CASE("top-k keeps the k best", "[sampling]") {
    std::vector<float> logits = {0.0f, 0.1f, 0.2f, 0.3f, 0.4f};
    SamplingParams p;
    p.top_k = 2;
    p.seed = 3;
    auto h = histogram(p, logits, 1000);
    CHECK(h.size() == 2);
    CHECK(h.count(4) == 1);
    CHECK(h.count(3) == 1);
    p.top_k = 1;
    CHECK(histogram(p, logits, 50) == std::map<int32_t, int>{{4, 50}});
}

TEST_CASE("top-p keeps the smallest set reaching the mass", "[sampling]") {
    // probabilities 0.5, 0.3, 0.15, 0.05
    std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
    SamplingParams p;
    p.seed = 5;
    p.top_p = 0.75f;  // 0.5 + 0.3 reaches it
    auto h = histogram(p, logits);
    CHECK(h.size() == 2);
    CHECK(h[0] / 4000.0 == Approx(0.5 / 0.8).margin(0.03));
    p.top_p = 0.4f;  // the first alone
    CHECK(histogram(p, logits, 100).size() == 1);
}

TEST_CASE("min-p drops tokens below a fraction of the best", "[sampling]") {
    std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
    SamplingParams p;
    p.seed = 9;
    p.min_p = 0.5f;  // keeps p >= 0.25: tokens 0 and 1
    auto h = histogram(p, logits);
    CHECK(h.size() == 2);
    CHECK(h.count(2) == 0);
}

TEST_CASE("repetition, presence and frequency penalties over a window", "[sampling]") {
    std::vector<float> logits = {2.0f, 1.9f, -1.0f};
    SamplingParams p = greedy();
    p.repetition_penalty = 2.0f;  // 2.0 -> 1.0 for a seen token
    Sampler s(p);
    s.accept(0);
    CHECK(s.sample(logits) == 1);
    // Negative logits are multiplied: token 2 gets worse, never better.
    p.repetition_penalty = 100.0f;
    Sampler neg(p);
    neg.accept(0);
    neg.accept(1);
    CHECK(neg.sample(std::vector<float>{2.0f, 1.9f, -0.01f}) == 0);  // 0.02 > 0.019 > -1

    p = greedy();
    p.presence_penalty = 0.5f;
    Sampler pres(p);
    pres.accept(0);
    pres.accept(0);
    CHECK(pres.sample(logits) == 1);  // 2.0 - 0.5 < 1.9

    p = greedy();
    p.frequency_penalty = 0.06f;
    Sampler freq(p);
    freq.accept(0);
    CHECK(freq.sample(logits) == 0);  // 2.0 - 0.06 > 1.9
    freq.accept(0);
    CHECK(freq.sample(logits) == 1);  // 2.0 - 0.12 < 1.9

    // The window forgets: with penalty_last_n = 1 only the last token counts.
    p = greedy();
    p.presence_penalty = 1.0f;
    p.penalty_last_n = 1;
    Sampler win(p);
    win.accept(0);
    win.accept(2);
    CHECK(win.sample(logits) == 0);
    // Ids outside the vocabulary in the history are ignored.
    win.accept(1000);
    CHECK(win.sample(logits) == 0);
}

TEST_CASE("invalid sampling parameters are refused", "[sampling][errors]") {
    SamplingParams p;
    p.top_p = 0.0f;
    CHECK_THROWS_WITH(Sampler(p), Catch::Contains("top_p"));
    p = {};
    p.top_k = -1;
    CHECK_THROWS_WITH(Sampler(p), Catch::Contains("top_k"));
    p = {};
    p.min_p = 1.5f;
    CHECK_THROWS_WITH(Sampler(p), Catch::Contains("min_p"));
    p = {};
    p.repetition_penalty = 0.0f;
    CHECK_THROWS_WITH(Sampler(p), Catch::Contains("repetition_penalty"));
    p = {};
    p.temperature = INFINITY;
    CHECK_THROWS_WITH(Sampler(p), Catch::Contains("temperature"));
    p = {};
    p.penalty_last_n = -2;
    CHECK_THROWS_WITH(Sampler(p), Catch::Contains("penalty_last_n"));
    p = {};
    p.stop = {""};
    CHECK_THROWS_WITH(Sampler(p), Catch::Contains("stop strings"));
}

TEST_CASE("stop strings hold back a possible partial match", "[sampling]") {
    StopMatcher m({"</s>", "STOP"});
    CHECK(m.push("Hello <") == "Hello ");
    CHECK(m.push("/") == "");
    CHECK(m.push("x") == "</x");  // not a stop after all
    CHECK(m.push(" ST") == " ");
    CHECK(!m.stopped());
    CHECK(m.push("OP and more") == "");
    CHECK(m.stopped());
    CHECK(m.push("ignored") == "");
    CHECK(m.flush() == "");

    StopMatcher m2({"\n\n"});
    CHECK(m2.push("a\n") == "a");
    CHECK(m2.flush() == "\n");  // end of generation: nothing held any more
    StopMatcher m3({"ab"});
    CHECK(m3.push("xxaby") == "xx");
    CHECK(m3.stopped());
    StopMatcher none({});
    CHECK(none.push("abc") == "abc");
}

TEST_CASE("defaults come from ds3.generation.* keys when present", "[sampling][gguf]") {
    auto path = ds3::test::scratch_dir("sampling") / "g.gguf";
    {
        gguf::Writer w(path.string());
        w.set_kv("ds3.generation.temperature", gguf::Value::f32(0.6f));
        w.set_kv("ds3.generation.top_p", gguf::Value::f32(0.95f));
        w.set_kv("ds3.generation.top_k", gguf::Value::u32(40));
        w.write_header();
        w.finish();
    }
    SamplingParams p = sampling_defaults(gguf::File::open(path.string()));
    CHECK(p.temperature == Approx(0.6f));
    CHECK(p.top_p == Approx(0.95f));
    CHECK(p.top_k == 40);
    auto empty = ds3::test::scratch_dir("sampling") / "e.gguf";
    {
        gguf::Writer w(empty.string());
        w.write_header();
        w.finish();
    }
    SamplingParams d = sampling_defaults(gguf::File::open(empty.string()));
    CHECK(d.temperature == 1.0f);
    CHECK(d.top_p == 1.0f);
    CHECK(d.top_k == 0);
}
