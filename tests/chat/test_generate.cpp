// Generator and ChatSession in-process on the converted v3-realvocab: cache-prefix reuse,
// every stop reason, interrupts between prompt batches, context limits, history dropping.
#include <catch2/catch.hpp>

#include "backends/backend.h"
#include "chat_fixture.h"
#include "models/runner.h"
#include "runtime/error.h"
#include "runtime/generate.h"
#include "runtime/gguf/gguf.h"

using namespace ds3;
using namespace ds3::test;

namespace {

struct Rig {
    Tokenizer tok;
    ChatTemplate tmpl;
    Deepseek2Model model;
    std::unique_ptr<Backend> backend;
    Runner runner;
    Generator gen;

    Rig(const fs::path& path, int64_t n_ctx)
        : tok(read_tokenizer(gguf::File::open(path.string()))),
          tmpl(tok.data()),
          model(load_deepseek2(path.string())),
          backend(create_backend("cpu")),
          runner(model, {backend.get()}, n_ctx),
          gen(runner, tok) {}
};

SamplingParams greedy(int32_t max_tokens) {
    SamplingParams p;
    p.temperature = 0.0f;
    p.max_tokens = max_tokens;
    return p;
}

}  // namespace

TEST_CASE("Generator: greedy text, callback pieces, cache-prefix reuse", "[generate]") {
    DS3_REQUIRE_FIXTURES(fx);
    Rig rig(realvocab_gguf(fx), 256);
    const std::vector<int32_t> prompt = rig.tok.encode(rig.tmpl.render({{"user", "Hello there"}}, true));
    Sampler s(greedy(7));
    std::string streamed;
    int pieces = 0;
    GenerateResult a = rig.gen.generate(prompt, s, [&](std::string_view p) {
        streamed += p;
        ++pieces;
        return true;
    });
    REQUIRE(a.reason == StopReason::max_tokens);
    REQUIRE(a.ids.size() == 7);
    CHECK(streamed == a.text);
    CHECK(a.text == rig.tok.decode(a.ids));
    CHECK(pieces >= 1);
    CHECK(a.stats.n_prompt == static_cast<int64_t>(prompt.size()));
    CHECK(a.stats.n_reused == 0);
    CHECK(a.stats.n_gen == 7);
    // The last sampled token is not evaluated.
    CHECK(rig.gen.cached().size() == prompt.size() + 6);
    CHECK(rig.runner.n_past() == static_cast<int64_t>(prompt.size() + 6));

    // A prompt equal to the cache costs nothing: its logits were kept, so the first token
    // is the one sampled last time.
    const std::vector<int32_t> same = rig.gen.cached();
    GenerateResult b = rig.gen.generate(same, s, nullptr);
    CHECK(b.stats.n_reused == static_cast<int64_t>(same.size()));
    REQUIRE(!b.ids.empty());
    CHECK(b.ids[0] == a.ids[6]);
    // The original (shorter) prompt cannot reuse the longer cache: evaluated again, same tokens.
    GenerateResult b2 = rig.gen.generate(prompt, s, nullptr);
    CHECK(b2.stats.n_reused == 0);
    CHECK(b2.ids == a.ids);

    // A prompt extending the cache only evaluates its suffix, and matches a fresh run.
    std::vector<int32_t> longer = rig.gen.cached();
    for (int32_t id : rig.tok.encode(" and more")) longer.push_back(id);
    GenerateResult c = rig.gen.generate(longer, s, nullptr);
    CHECK(c.stats.n_reused == static_cast<int64_t>(prompt.size() + 6));
    Rig fresh(realvocab_gguf(fx), 256);
    GenerateResult d = fresh.gen.generate(longer, s, nullptr);
    CHECK(d.stats.n_reused == 0);
    CHECK(d.ids == c.ids);

    // A different prompt resets the cache.
    GenerateResult e = rig.gen.generate(std::vector<int32_t>{0, 19923}, s, nullptr);
    CHECK(e.stats.n_reused == 0);
    CHECK(rig.gen.cached().size() == 2 + 6);
}

TEST_CASE("Generator: stop reasons", "[generate]") {
    DS3_REQUIRE_FIXTURES(fx);
    Rig rig(realvocab_gguf(fx), 11);  // odd, small context
    const std::vector<int32_t> prompt = {0, 19923, 2058};

    Sampler zero(greedy(0));
    GenerateResult r = rig.gen.generate(prompt, zero, nullptr);
    CHECK(r.reason == StopReason::max_tokens);
    CHECK(r.ids.empty());

    // The callback says stop after the first piece of text.
    Sampler s(greedy(-1));
    int calls = 0;
    r = rig.gen.generate(prompt, s, [&](std::string_view) { return ++calls < 1; });
    CHECK(r.reason == StopReason::callback);
    CHECK(calls == 1);

    // The context fills: 3 prompt tokens + 8 evaluated = 11, and a 9th sampled.
    r = rig.gen.generate(prompt, s, nullptr);
    CHECK(r.reason == StopReason::context_full);
    CHECK(r.ids.size() == 9);
    CHECK(rig.runner.n_past() == 11);

    // A stop string made of the greedy text's own characters.
    Sampler full(greedy(6));
    const GenerateResult ref = rig.gen.generate(prompt, full, nullptr);
    REQUIRE(ref.text.size() > 4);
    size_t cut = ref.text.size() / 2;
    while (cut > 0 && (static_cast<unsigned char>(ref.text[cut]) & 0xC0) == 0x80) --cut;
    const unsigned char lead = static_cast<unsigned char>(ref.text[cut]);
    const size_t len = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    const std::string stop_str = ref.text.substr(cut, len);
    SamplingParams sp = greedy(6);
    sp.stop = {stop_str, "never-appears-\x01"};
    Sampler stopping(sp);
    r = rig.gen.generate(prompt, stopping, nullptr);
    CHECK(r.reason == StopReason::stop_string);
    CHECK(r.text == ref.text.substr(0, ref.text.find(stop_str)));

    // An interrupt before the first token.
    GenerateOptions opt;
    opt.interrupted = [] { return true; };
    r = rig.gen.generate(prompt, s, nullptr, opt);
    CHECK(r.reason == StopReason::interrupted);
    CHECK(r.ids.empty());

    // An interrupt between prompt batches leaves the cache holding the first batch.
    rig.gen.reset();
    opt.n_batch = 2;
    r = rig.gen.generate(prompt, s, nullptr, opt);
    CHECK(r.reason == StopReason::interrupted);
    CHECK(rig.gen.cached() == std::vector<int32_t>{0, 19923});
    // ... and the next call carries on from there.
    opt = {};
    opt.n_batch = 2;
    r = rig.gen.generate(prompt, full, nullptr, opt);
    CHECK(r.stats.n_reused == 2);
    CHECK(r.ids == ref.ids);
}

TEST_CASE("Generator: errors", "[generate][errors]") {
    DS3_REQUIRE_FIXTURES(fx);
    Rig rig(realvocab_gguf(fx), 5);
    Sampler s(greedy(2));
    CHECK_THROWS_WITH(rig.gen.generate(std::vector<int32_t>{}, s, nullptr), Catch::Contains("[generate] empty prompt"));
    CHECK_THROWS_WITH(rig.gen.generate(std::vector<int32_t>{0, 1, 2, 3, 4, 5}, s, nullptr),
                      Catch::Contains("prompt of 6 tokens does not fit in the context of 5"));
    CHECK_THROWS_WITH(rig.gen.generate(std::vector<int32_t>{0, 129280}, s, nullptr), Catch::Contains("[model]"));
    // After a failed eval the next call starts cleanly.
    GenerateResult r = rig.gen.generate(std::vector<int32_t>{0, 5}, s, nullptr);
    CHECK(r.ids.size() == 2);
}

TEST_CASE("ChatSession: incremental turns, dropping, too-long messages", "[generate][chat]") {
    DS3_REQUIRE_FIXTURES(fx);
    Rig rig(realvocab_gguf(fx), 61);
    ChatSession chat(rig.gen, rig.tmpl, 7);
    chat.set_system("Be brief.");
    Sampler s(greedy(7));
    ChatTurn t1 = chat.send("Hello", s, nullptr);
    CHECK(t1.n_dropped == 0);
    CHECK(t1.gen.stats.n_reused == 0);
    ChatTurn t2 = chat.send("Again?", s, nullptr);
    // Everything but the answer's last (sampled, not evaluated) token is reused.
    CHECK(t2.gen.stats.n_reused > t1.gen.stats.n_prompt);
    // The history renders the answers as given.
    std::vector<ChatMessage> m = chat.messages();
    REQUIRE(m.size() == 5);
    CHECK(m[0].role == "system");
    CHECK(m[2].content == t1.gen.text);
    CHECK(m[4].content == t2.gen.text);
    // The same turn from scratch gives the same answer as the incremental one.
    {
        Rig fresh(realvocab_gguf(fx), 61);
        ChatSession c2(fresh.gen, fresh.tmpl, 7);
        c2.set_messages({m[0], m[1], m[2]});
        ChatTurn u = c2.send("Again?", s, nullptr);
        CHECK(u.gen.stats.n_reused == 0);
        CHECK(u.gen.text == t2.gen.text);
    }
    // Turns are dropped, oldest first, to keep room; the system message stays.
    int dropped = 0;
    for (int i = 0; i < 4; ++i) dropped += chat.send("Turn " + std::to_string(i), s, nullptr).n_dropped;
    CHECK(dropped > 0);
    m = chat.messages();
    CHECK(m[0].role == "system");
    CHECK(m[1].role == "user");
    CHECK(m.back().role == "assistant");
    CHECK(m[m.size() - 2].content == "Turn 3");
    CHECK(m[1].content != "Hello");
    // A message that cannot fit even alone is refused, the history unchanged.
    const std::vector<ChatMessage> before = chat.messages();
    std::string huge;
    for (int i = 0; i < 40; ++i) huge += " word" + std::to_string(i);
    CHECK_THROWS_WITH(chat.send(huge, s, nullptr), Catch::Contains("[chat] the message does not fit in the context"));
    CHECK(chat.messages().size() == before.size());
    // reset keeps the system message; set_messages takes a leading system message.
    chat.reset();
    REQUIRE(chat.messages().size() == 1);
    chat.set_messages({{"user", "x"}, {"assistant", "y"}});
    CHECK(chat.system().empty());
    CHECK(chat.messages().size() == 2);
}
