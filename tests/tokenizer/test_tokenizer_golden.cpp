// Every row of golden/tokenizer-deepseek-v3.json (made with Hugging Face `tokenizers` and
// `transformers.apply_chat_template`) against ds3's tokenizer, loaded two ways: straight
// from the fixture's tokenizer files, and through a GGUF written and read back.
#include <catch2/catch.hpp>

#include "runtime/chat_template.h"
#include "runtime/gguf/gguf.h"
#include "tok_fixture.h"

using namespace ds3;
using namespace ds3::test;
using nlohmann::json;

namespace {

std::vector<int32_t> ids_of(const json& row) { return row["ids"].get<std::vector<int32_t>>(); }

std::vector<ChatMessage> messages_of(const json& row) {
    std::vector<ChatMessage> msgs;
    for (const json& m : row["chat"]) msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    return msgs;
}

// Runs all rows against `tok`; returns the number of rows checked.
size_t check_rows(const Tokenizer& tok, const json& rows) {
    size_t n = 0;
    for (const json& row : rows) {
        std::vector<int32_t> ids = ids_of(row);
        if (row.contains("text")) {
            std::string text = row["text"].get<std::string>();
            INFO("encode row: " << row.dump());
            CHECK(tok.encode(text) == ids);
            CHECK(tok.decode(ids) == row["decoded"].get<std::string>());
        } else if (row.contains("decode_only")) {
            INFO("decode row: " << row.dump());
            CHECK(tok.decode(ids) == row["decoded"].get<std::string>());
            // The streaming decoder gives the same text token by token.
            StreamDecoder sd(tok);
            std::string streamed;
            for (int32_t id : ids) streamed += sd.push(id);
            streamed += sd.flush();
            CHECK(streamed == row["decoded"].get<std::string>());
        } else if (row.contains("chat")) {
            INFO("chat row: " << row.dump());
            ChatTemplate tmpl(tok.data());
            std::string rendered = tmpl.render(messages_of(row), row["add_generation_prompt"].get<bool>());
            CHECK(rendered == row["rendered"].get<std::string>());
            CHECK(tok.encode(rendered) == ids);
        } else {
            FAIL("unknown golden row kind: " << row.dump());
        }
        ++n;
    }
    return n;
}

}  // namespace

TEST_CASE("golden tokenizer rows, tokenizer loaded from the HF files", "[tokenizer][golden]") {
    DS3_REQUIRE_FIXTURES(fx);
    const json& rows = golden_rows(fx);
    REQUIRE(rows.size() > 70);
    CHECK(check_rows(realvocab_tokenizer(fx), rows) == rows.size());
}

TEST_CASE("HF tokenizer files: dense vocabulary, types, special ids", "[tokenizer][golden]") {
    DS3_REQUIRE_FIXTURES(fx);
    const TokenizerData& d = realvocab_data(fx);
    // config.json's vocab_size is 129280; the tokenizer's ids stop at 128814.
    REQUIRE(d.tokens.size() == 129280);
    REQUIRE(d.types.size() == d.tokens.size());
    CHECK(d.model == "gpt2");
    CHECK(d.pre == "deepseek-v3");
    CHECK(d.tokens[0] == "<｜begin▁of▁sentence｜>");
    CHECK(d.types[0] == TokenType::Control);
    CHECK(d.tokens[128803] == "<｜User｜>");
    CHECK(d.types[128803] == TokenType::UserDefined);
    CHECK(d.tokens[128815] == "[PAD128815]");
    CHECK(d.types[128815] == TokenType::Unused);
    CHECK(d.tokens[129279] == "[PAD129279]");
    CHECK(d.types[300] == TokenType::Normal);
    CHECK(d.merges.size() == 127741);
    CHECK(d.merges[0] == "Ġ t");
    CHECK(d.bos_id == 0);
    CHECK(d.eos_id == 1);
    CHECK(d.pad_id == 1);
    CHECK(!d.unk_id);
    CHECK(d.add_bos);
    CHECK(!d.add_eos);
    CHECK(d.chat_template.find("<｜Assistant｜>") != std::string::npos);
}

TEST_CASE("golden tokenizer rows, tokenizer through a GGUF round trip", "[tokenizer][golden][gguf]") {
    DS3_REQUIRE_FIXTURES(fx);
    const TokenizerData& d = realvocab_data(fx);
    fs::path path = scratch_dir("tok-gguf") / "tok.gguf";
    {
        gguf::Writer w(path.string());
        w.set_kv("general.architecture", gguf::Value::str("deepseek2"));
        write_tokenizer(w, d);
        w.write_header();
        w.finish();
    }
    gguf::File f = gguf::File::open(path.string());
    TokenizerData back = read_tokenizer(f);
    CHECK(back.tokens == d.tokens);
    CHECK(back.types == d.types);
    CHECK(back.merges == d.merges);
    CHECK(back.bos_id == d.bos_id);
    CHECK(back.eos_id == d.eos_id);
    CHECK(back.pad_id == d.pad_id);
    CHECK(back.unk_id == d.unk_id);
    CHECK(back.add_bos == d.add_bos);
    CHECK(back.add_eos == d.add_eos);
    CHECK(back.chat_template == d.chat_template);
    CHECK(back.model == "gpt2");
    CHECK(back.pre == "deepseek-v3");
    Tokenizer tok(std::move(back));
    const json& rows = golden_rows(fx);
    CHECK(check_rows(tok, rows) == rows.size());
}

TEST_CASE("the hard-coded deepseek-v3 regexes are those of the real tokenizer.json", "[tokenizer][golden]") {
    DS3_REQUIRE_FIXTURES(fx);
    json tj = json::parse(read_file(fx / "v3-realvocab" / "tokenizer.json"));
    std::vector<std::string> regexes;
    for (const json& s : tj["pre_tokenizer"]["pretokenizers"])
        if (s["type"] == "Split") regexes.push_back(s["pattern"]["Regex"].get<std::string>());
    CHECK(regexes == pre_tokenizer_regexes("deepseek-v3"));
    CHECK(pre_tokenizer_name(regexes) == "deepseek-v3");
}
