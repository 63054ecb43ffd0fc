// `ds3 tokenize` and `ds3 template` end to end, on a GGUF written here with only the
// tokenizer keys of the real DeepSeek-V3 tokenizer, and on v3-realvocab converted by `ds3 convert`.
#include <catch2/catch.hpp>

#include "runtime/gguf/gguf.h"
#include "runtime/sampling.h"
#include "tok_fixture.h"

using namespace ds3;
using namespace ds3::test;

namespace {
fs::path tokenizer_gguf(const fs::path& fx) {
    static fs::path p = [&] {
        fs::path out = scratch_dir("tok-cli") / "tokenizer-only.gguf";
        gguf::Writer w(out.string());
        w.set_kv("general.architecture", gguf::Value::str("deepseek2"));
        write_tokenizer(w, realvocab_data(fx));
        w.write_header();
        w.finish();
        return out;
    }();
    return p;
}
}  // namespace

TEST_CASE("ds3 tokenize --json prints the golden ids", "[tokenizer][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    fs::path m = tokenizer_gguf(fx);
    RunResult r = run_ds3({"tokenize", "-m", m.string(), "--text", "Hello world", "--json"});
    CHECK(r.exit_code == 0);
    CHECK(r.out == "[19923,2058]\n");
    r = run_ds3({"tokenize", "-m", m.string(), "--text", "<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>", "--json"});
    CHECK(r.out == "[128803,23166,128804,19923,3,1]\n");
    // Untrusted text: the markers stay text.
    r = run_ds3({"tokenize", "-m", m.string(), "--text", "<｜User｜>", "--json", "--no-special"});
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("128803") == std::string::npos);
    // --file, the plain and --show-pieces forms, and the HF directory form.
    fs::path f = scratch_dir("tok-cli") / "in.txt";
    write_file(f, "你好，世界！");
    r = run_ds3({"tokenize", "-m", m.string(), "--file", f.string()});
    CHECK(r.out == "30594 303 3427 1175\n");
    r = run_ds3({"tokenize", "-m", (fx / "v3-realvocab").string(), "--text", "Hello world", "--show-pieces"});
    CHECK(r.out == "19923\t\"Hello\"\n2058\t\" world\"\n");
}

TEST_CASE("ds3 tokenize errors", "[tokenizer][cli][errors]") {
    DS3_REQUIRE_FIXTURES(fx);
    fs::path m = tokenizer_gguf(fx);
    RunResult r = run_ds3({"tokenize", "-m", m.string()});
    CHECK(r.exit_code != 0);
    CHECK(r.err.find("--text or --file") != std::string::npos);
    r = run_ds3({"tokenize", "-m", m.string(), "--file", "/nonexistent/x.txt"});
    CHECK(r.exit_code != 0);
    CHECK(r.err.find("cannot open") != std::string::npos);
    // A GGUF without tokenizer keys.
    fs::path bare = scratch_dir("tok-cli") / "bare.gguf";
    {
        gguf::Writer w(bare.string());
        w.write_header();
        w.finish();
    }
    r = run_ds3({"tokenize", "-m", bare.string(), "--text", "x"});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("[gguf]") != std::string::npos);
}

TEST_CASE("ds3 template renders the golden chat rows", "[template][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    fs::path m = tokenizer_gguf(fx);
    for (const auto& row : golden_rows(fx)) {
        if (!row.contains("chat")) continue;
        fs::path msgs = scratch_dir("tok-cli") / "msgs.json";
        write_file(msgs, row["chat"].dump());
        std::vector<std::string> args = {"template", "-m", m.string(), "--messages", msgs.string()};
        if (row["add_generation_prompt"].get<bool>()) args.push_back("--add-generation-prompt");
        RunResult r = run_ds3(args);
        INFO(row.dump());
        CHECK(r.exit_code == 0);
        CHECK(r.out == row["rendered"].get<std::string>());
        CHECK(r.err.empty());
    }
    fs::path bad = scratch_dir("tok-cli") / "bad.json";
    write_file(bad, R"([{"role":"user"}])");
    RunResult r = run_ds3({"template", "-m", m.string(), "--messages", bad.string()});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("messages[0]") != std::string::npos);
    write_file(bad, R"([{"role":"user","content":"x"}])");
    r = run_ds3({"template", "-m", m.string(), "--messages", bad.string(), "--vars", "[1]"});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("--vars") != std::string::npos);
}

TEST_CASE("a converted v3-realvocab carries the tokenizer, template and sampling defaults", "[tokenizer][cli][convert]") {
    DS3_REQUIRE_FIXTURES(fx);
    fs::path out = scratch_dir("tok-convert") / "rv.gguf";
    RunResult c = run_ds3({"convert", (fx / "v3-realvocab").string(), "-o", out.string(), "--outtype", "f32", "--no-progress"});
    REQUIRE(c.exit_code == 0);
    gguf::File f = gguf::File::open(out.string());
    Tokenizer tok(read_tokenizer(f));
    CHECK(tok.n_vocab() == 129280);
    for (const auto& row : golden_rows(fx))
        if (row.contains("text")) CHECK(tok.encode(row["text"].get<std::string>()) == row["ids"].get<std::vector<int32_t>>());
    SamplingParams p = sampling_defaults(f);
    CHECK(p.temperature == Approx(0.6f));
    CHECK(p.top_p == Approx(0.95f));
    RunResult r = run_ds3({"tokenize", "-m", out.string(), "--text", "Hello world", "--json"});
    CHECK(r.out == "[19923,2058]\n");
    fs::path msgs = scratch_dir("tok-convert") / "m.json";
    write_file(msgs, R"([{"role":"user","content":"Hello!"}])");
    r = run_ds3({"template", "-m", out.string(), "--messages", msgs.string(), "--add-generation-prompt"});
    CHECK(r.out == "<｜begin▁of▁sentence｜><｜User｜>Hello!<｜Assistant｜>");
}
