// Tokenizer pieces on hand-made data: UTF-8 repair and streaming, byte-level BPE merge
// order, added-token matching, GGUF key validation, HF-file errors, and random input.
#include <catch2/catch.hpp>

#include <random>

#include "common.h"
#include "convert/hf_tokenizer.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/tokenizer.h"
#include "tok_fixture.h"

using namespace ds3;
using namespace ds3::test;

namespace {

// A toy vocabulary in GPT-2 byte-level form: all 256 byte symbols, then merges.
std::string byte_symbol(unsigned b) {
    unsigned cp = b;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
        unsigned next = 256;
        for (unsigned x = 0; x < b; ++x)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++next;
        cp = next;
    }
    std::string s;
    if (cp < 0x80) s += static_cast<char>(cp);
    else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
}

TokenizerData toy() {
    TokenizerData d;
    for (unsigned b = 0; b < 256; ++b) d.tokens.push_back(byte_symbol(b));
    auto add = [&](std::string t) {
        d.tokens.push_back(std::move(t));
        return static_cast<int32_t>(d.tokens.size() - 1);
    };
    add("ab");     // 256
    add("bc");     // 257
    add("abc");    // 258
    add("Ġa");     // 259
    add("aa");     // 260
    d.types.assign(d.tokens.size(), TokenType::Normal);
    // rank 0: "b c" beats "a b", so "abc" = a + bc, and no "a bc" merge exists -> [a, bc]
    d.merges = {"b c", "a b", "ab c", "Ġ a", "a a"};
    d.tokens.push_back("<|sp|>");  // 261, Control
    d.types.push_back(TokenType::Control);
    d.tokens.push_back("<|sp|>x");  // 262, UserDefined (longer match wins)
    d.types.push_back(TokenType::UserDefined);
    d.tokens.push_back("[PAD263]");
    d.types.push_back(TokenType::Unused);
    d.bos_id = 261;
    d.eos_id = 261;
    return d;
}

}  // namespace

TEST_CASE("utf8_lossy replaces each maximal invalid subpart with one U+FFFD", "[tokenizer]") {
    const std::string R = "\xEF\xBF\xBD";
    CHECK(utf8_lossy("abc") == "abc");
    CHECK(utf8_lossy("\xC3\xA9") == "\xC3\xA9");
    CHECK(utf8_lossy("\xC3") == R);                       // truncated 2-byte
    CHECK(utf8_lossy("\xE4\xBD") == R);                   // truncated 3-byte: one replacement
    CHECK(utf8_lossy("\xE4\xBDx") == R + "x");
    CHECK(utf8_lossy("\xF0\x9F\x98") == R);               // truncated 4-byte
    CHECK(utf8_lossy("\x80\x80") == R + R);               // lone continuations: one each
    CHECK(utf8_lossy("\xC0\xAF") == R + R);               // overlong lead is invalid alone
    CHECK(utf8_lossy("\xED\xA0\x80") == R + R + R);       // surrogate: E0 ED then A0 out of range
    CHECK(utf8_lossy("\xF4\x90\x80\x80") == R + R + R + R);  // above U+10FFFF
    CHECK(utf8_lossy("\xFF") == R);
    CHECK(utf8_lossy(std::string("a\0b", 3)) == std::string("a\0b", 3));
}

TEST_CASE("utf8_stable_prefix holds back only a truncated valid character", "[tokenizer]") {
    CHECK(utf8_stable_prefix("abc") == 3);
    CHECK(utf8_stable_prefix("ab\xE4") == 2);
    CHECK(utf8_stable_prefix("ab\xE4\xBD") == 2);
    CHECK(utf8_stable_prefix("ab\xE4\xBD\xA0") == 5);
    CHECK(utf8_stable_prefix("ab\xE4x") == 4);     // already invalid: nothing to wait for
    CHECK(utf8_stable_prefix("ab\x80") == 3);
    CHECK(utf8_stable_prefix("\xF0\x9F\x98") == 0);
    CHECK(utf8_stable_prefix("") == 0);
}

TEST_CASE("BPE merges by rank, leftmost first", "[tokenizer]") {
    Tokenizer t(toy());
    CHECK(t.n_vocab() == 264);
    // "abc": b c (rank 0) first -> a, bc; no merge for (a, bc).
    CHECK(t.encode("abc") == std::vector<int32_t>{'a', 257});
    CHECK(t.encode("ab") == std::vector<int32_t>{256});
    // "aaa": a a merges leftmost -> aa, a
    CHECK(t.encode("aaa") == std::vector<int32_t>{260, 'a'});
    // " a": Ġ + a -> "Ġa" (the pre-tokenizer keeps " a" as one piece)
    CHECK(t.encode(" a") == std::vector<int32_t>{259});
    CHECK(t.decode(std::vector<int32_t>{259, 256}) == " aab");
    // Bytes that are not printable map through the byte-level table both ways.
    std::vector<int32_t> ids = t.encode("\n\t");
    CHECK(t.decode(ids) == "\n\t");
}

TEST_CASE("added tokens: leftmost-longest, before pre-tokenization, and can be turned off", "[tokenizer]") {
    Tokenizer t(toy());
    CHECK(t.encode("<|sp|>ab") == std::vector<int32_t>{261, 256});
    CHECK(t.encode("<|sp|>xab") == std::vector<int32_t>{262, 256});
    CHECK(t.encode("ab<|sp|") == std::vector<int32_t>{256, '<', '|', 's', 'p', '|'});
    EncodeOptions plain;
    plain.parse_special = false;
    std::vector<int32_t> ids = t.encode("<|sp|>", plain);
    CHECK(std::find(ids.begin(), ids.end(), 261) == ids.end());
    CHECK(t.decode(ids) == "<|sp|>");
    EncodeOptions be;
    be.add_bos = true;
    be.add_eos = true;
    CHECK(t.encode("ab", be) == std::vector<int32_t>{261, 256, 261});
    // Control tokens decode to their text unless skipped.
    CHECK(t.decode(std::vector<int32_t>{261, 256}) == "<|sp|>ab");
    CHECK(t.decode(std::vector<int32_t>{261, 256}, true) == "ab");
    CHECK(t.find_token("ab") == 256);
    CHECK(!t.find_token("[PAD263]"));  // placeholders are not findable
    // ... and decode to nothing (HF's tokenizer has no such ids), not to "[PAD263]".
    CHECK(t.decode(std::vector<int32_t>{256, 263, 256}) == "abab");
    CHECK(t.token_bytes(263).empty());
    CHECK(t.token_type(262) == TokenType::UserDefined);
}

TEST_CASE("StreamDecoder holds back a character split across tokens", "[tokenizer]") {
    Tokenizer t(toy());
    // "é" = C3 A9: two byte tokens.
    StreamDecoder sd(t);
    CHECK(sd.push(0xC3) == "");
    CHECK(sd.push(0xA9) == "\xC3\xA9");
    CHECK(sd.push('a') == "a");
    CHECK(sd.push(0xE4) == "");
    CHECK(sd.push('x') == "\xEF\xBF\xBDx");  // the pending lead byte turned out invalid
    CHECK(sd.push(0xF0) == "");
    CHECK(sd.flush() == "\xEF\xBF\xBD");
    CHECK(sd.flush() == "");
    StreamDecoder skip(t, true);
    CHECK(skip.push(261) == "");
    CHECK_THROWS_AS(sd.push(9999), Error);
}

TEST_CASE("tokenizer rejects bad data with a clear message", "[tokenizer][errors]") {
    TokenizerData d = toy();
    d.model = "llama";
    CHECK_THROWS_WITH(Tokenizer(d), Catch::Contains("[tokenizer]") && Catch::Contains("gpt2"));
    d = toy();
    d.pre = "qwen2";
    CHECK_THROWS_WITH(Tokenizer(d), Catch::Contains("unknown pre-tokenizer \"qwen2\""));
    d = toy();
    d.merges.push_back("zz q");
    CHECK_THROWS_WITH(Tokenizer(d), Catch::Contains("merge 5"));
    d = toy();
    d.merges.push_back("nospace");
    CHECK_THROWS_WITH(Tokenizer(d), Catch::Contains("expected \"a b\""));
    d = toy();
    d.types.pop_back();
    CHECK_THROWS_WITH(Tokenizer(d), Catch::Contains("token_type has"));
    d = toy();
    d.tokens.clear();
    d.types.clear();
    CHECK_THROWS_WITH(Tokenizer(d), Catch::Contains("empty vocabulary"));
    Tokenizer t(toy());
    CHECK_THROWS_WITH(t.decode(std::vector<int32_t>{-1}), Catch::Contains("out of range"));
    CHECK_THROWS_AS(t.token_text(264), Error);
}

namespace {
// Writes `d` plus `extra` keys to a GGUF, then reads the tokenizer back.
TokenizerData roundtrip(const TokenizerData& d, const std::vector<std::pair<std::string, gguf::Value>>& extra = {},
                        const std::vector<std::string>& drop = {}) {
    fs::path p = scratch_dir("tok-keys") / "t.gguf";
    {
        gguf::Writer w(p.string());
        write_tokenizer(w, d);
        for (const auto& [k, v] : extra) w.set_kv(k, v);
        (void)drop;
        w.write_header();
        w.finish();
    }
    gguf::File f = gguf::File::open(p.string());
    return read_tokenizer(f);
}
}  // namespace

TEST_CASE("read_tokenizer validates the GGUF keys", "[tokenizer][gguf][errors]") {
    TokenizerData d = toy();
    d.chat_template = "{{ messages[0]['content'] }}";
    d.add_bos = true;
    TokenizerData back = roundtrip(d);
    CHECK(back.tokens == d.tokens);
    CHECK(back.types == d.types);
    CHECK(back.merges == d.merges);
    CHECK(back.bos_id == 261);
    CHECK(!back.pad_id);
    CHECK(back.add_bos);
    CHECK(back.chat_template == d.chat_template);

    using gguf::Value;
    using gguf::ValueType;
    CHECK_THROWS_WITH(roundtrip(d, {{"tokenizer.ggml.bos_token_id", Value::u32(264)}}),
                      Catch::Contains("[tokenizer]") && Catch::Contains("bos_token_id") && Catch::Contains("out of range"));
    CHECK_THROWS_WITH(roundtrip(d, {{"tokenizer.ggml.eos_token_id", Value::str("x")}}),
                      Catch::Contains("eos_token_id") && Catch::Contains("integer"));
    CHECK_THROWS_WITH(roundtrip(d, {{"tokenizer.ggml.token_type", Value::i32s({1, 1, 1})}}),
                      Catch::Contains("3 entries") && Catch::Contains("264"));
    std::vector<int32_t> bad_types(264, 1);
    bad_types[7] = 9;
    CHECK_THROWS_WITH(roundtrip(d, {{"tokenizer.ggml.token_type", Value::i32s(bad_types)}}),
                      Catch::Contains("token_type[7]") && Catch::Contains("found 9"));
    CHECK_THROWS_WITH(roundtrip(d, {{"tokenizer.ggml.tokens", Value::i32s({1, 2})}}),
                      Catch::Contains("tokens") && Catch::Contains("array of strings"));
    CHECK_THROWS_WITH(roundtrip(d, {{"tokenizer.ggml.tokens", Value::str("x")}}),
                      Catch::Contains("array of strings"));
    CHECK_THROWS_WITH(roundtrip(d, {{"tokenizer.ggml.merges", Value::i32s({1})}}),
                      Catch::Contains("merges") && Catch::Contains("array of strings"));

    // write_tokenizer refuses inconsistent data before anything is written.
    TokenizerData bad = d;
    bad.types.pop_back();
    fs::path p = scratch_dir("tok-bad") / "t.gguf";
    gguf::Writer w(p.string());
    CHECK_THROWS_WITH(write_tokenizer(w, bad), Catch::Contains("differ in length"));
    bad = d;
    bad.eos_id = 5000;
    CHECK_THROWS_WITH(write_tokenizer(w, bad), Catch::Contains("out of range"));
}

TEST_CASE("read_tokenizer names a missing tokens key", "[tokenizer][gguf][errors]") {
    fs::path p = scratch_dir("tok-missing") / "t.gguf";
    {
        gguf::Writer w(p.string());
        w.set_kv("tokenizer.ggml.model", gguf::Value::str("gpt2"));
        w.write_header();
        w.finish();
    }
    gguf::File f = gguf::File::open(p.string());
    CHECK_THROWS_WITH(read_tokenizer(f), Catch::Contains("tokenizer.ggml.tokens is missing"));
}

TEST_CASE("read_tokenizer_dir: shapes of tokenizer files and their errors", "[tokenizer][errors]") {
    fs::path dir = scratch_dir("hf-tok");
    auto tok_json = [](const std::string& merges, const std::string& pre_regex, const std::string& added) {
        std::string regexes;
        for (const auto& r : pre_tokenizer_regexes("deepseek-v3"))
            regexes += R"({"type":"Split","pattern":{"Regex":)" + nlohmann::json(r).dump() +
                       R"(},"behavior":"Isolated","invert":false},)";
        if (!pre_regex.empty()) regexes = pre_regex;
        return std::string(R"({"normalizer":{"type":"Sequence","normalizers":[]},)") +
               R"("pre_tokenizer":{"type":"Sequence","pretokenizers":[)" + regexes +
               R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]},)" +
               R"("added_tokens":[)" + added + "]," +
               R"("model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2,"c":5},"merges":)" + merges + "}}";
    };
    const std::string added = R"({"id":3,"content":"<s>","special":true},{"id":4,"content":"<u>","special":false})";
    write_file(dir / "tokenizer.json", tok_json(R"(["a b"])", "", added));
    write_file(dir / "tokenizer_config.json",
               R"({"bos_token":{"content":"<s>"},"eos_token":"<s>","add_bos_token":true,"chat_template":"x"})");
    TokenizerData d = hf::read_tokenizer_dir(dir.string());
    REQUIRE(d.tokens.size() == 6);
    CHECK(d.tokens == std::vector<std::string>{"a", "b", "ab", "<s>", "<u>", "c"});
    CHECK(d.types == std::vector<TokenType>{TokenType::Normal, TokenType::Normal, TokenType::Normal,
                                            TokenType::Control, TokenType::UserDefined, TokenType::Normal});
    CHECK(d.merges == std::vector<std::string>{"a b"});
    CHECK(d.bos_id == 3);
    CHECK(d.eos_id == 3);
    CHECK(d.add_bos);
    CHECK(d.chat_template == "x");

    // Pair-form merges, a hole (id 4 missing) and config.json padding.
    write_file(dir / "tokenizer.json", tok_json(R"([["a","b"]])", "", R"({"id":3,"content":"<s>","special":true})"));
    write_file(dir / "config.json", R"({"vocab_size": 9})");
    d = hf::read_tokenizer_dir(dir.string());
    CHECK(d.merges == std::vector<std::string>{"a b"});
    REQUIRE(d.tokens.size() == 9);
    CHECK(d.tokens[4] == "[PAD4]");
    CHECK(d.types[4] == TokenType::Unused);
    CHECK(d.tokens[8] == "[PAD8]");

    write_file(dir / "config.json", R"({"vocab_size": 3})");
    CHECK_THROWS_WITH(hf::read_tokenizer_dir(dir.string()), Catch::Contains("smaller than"));
    fs::remove(dir / "config.json");

    write_file(dir / "tokenizer.json", tok_json(R"([1])", "", added));
    CHECK_THROWS_WITH(hf::read_tokenizer_dir(dir.string()), Catch::Contains("merge 1"));
    write_file(dir / "tokenizer.json", tok_json(R"(["a b"])", R"({"type":"Split","pattern":{"Regex":"\\w+"},"behavior":"Isolated","invert":false},)", added));
    CHECK_THROWS_WITH(hf::read_tokenizer_dir(dir.string()), Catch::Contains("unknown pre-tokenizer regexes"));
    write_file(dir / "tokenizer.json", tok_json(R"(["a b"])", "", R"({"id":0,"content":"zz","special":true})"));
    CHECK_THROWS_WITH(hf::read_tokenizer_dir(dir.string()), Catch::Contains("differs from vocab entry"));
    write_file(dir / "tokenizer.json", tok_json(R"(["a b"])", "", added));
    write_file(dir / "tokenizer_config.json", R"({"bos_token":"<nope>"})");
    CHECK_THROWS_WITH(hf::read_tokenizer_dir(dir.string()), Catch::Contains("<nope>") && Catch::Contains("not in the vocabulary"));
    write_file(dir / "tokenizer_config.json", R"({"bos_token":7})");
    CHECK_THROWS_WITH(hf::read_tokenizer_dir(dir.string()), Catch::Contains("bos_token"));
    write_file(dir / "tokenizer_config.json", R"({"add_bos_token":"yes"})");
    CHECK_THROWS_WITH(hf::read_tokenizer_dir(dir.string()), Catch::Contains("add_bos_token") && Catch::Contains("boolean"));
    write_file(dir / "tokenizer_config.json", "{not json");
    CHECK_THROWS_WITH(hf::read_tokenizer_dir(dir.string()), Catch::Contains("invalid JSON"));
    CHECK_THROWS_WITH(hf::read_tokenizer_dir((dir / "nowhere").string()), Catch::Contains("not found"));
}

TEST_CASE("random bytes never crash encode or decode", "[tokenizer][fuzz]") {
    Tokenizer t(toy());
    std::mt19937_64 rng(1234);
    for (int iter = 0; iter < 2000; ++iter) {
        size_t len = rng() % 67;
        std::string s(len, '\0');
        for (char& c : s) c = static_cast<char>(rng() & 0xFF);
        if (iter % 3 == 0 && len > 2) s.replace(rng() % len, 0, "<|sp|>");
        std::vector<int32_t> ids = t.encode(s);
        for (int32_t id : ids) REQUIRE(t.is_valid(id));
        std::string back = t.decode(ids);
        // Valid UTF-8 input round-trips exactly; any input decodes to what utf8_lossy gives.
        REQUIRE(back == utf8_lossy(s));
        std::vector<int32_t> rnd(rng() % 13);
        for (int32_t& id : rnd) id = static_cast<int32_t>(rng() % t.n_vocab());
        StreamDecoder sd(t);
        std::string streamed;
        for (int32_t id : rnd) streamed += sd.push(id);
        streamed += sd.flush();
        REQUIRE(streamed == t.decode(rnd));
    }
}

TEST_CASE("random bytes through the real DeepSeek-V3 tokenizer", "[tokenizer][fuzz][golden]") {
    DS3_REQUIRE_FIXTURES(fx);
    const Tokenizer& t = realvocab_tokenizer(fx);
    std::mt19937_64 rng(99);
    for (int iter = 0; iter < 300; ++iter) {
        size_t len = rng() % 200;
        std::string s(len, '\0');
        for (char& c : s) c = static_cast<char>(rng() & 0xFF);
        std::vector<int32_t> ids = t.encode(s);
        REQUIRE(t.decode(ids) == utf8_lossy(s));
        std::vector<int32_t> rnd(rng() % 9);
        for (int32_t& id : rnd) id = static_cast<int32_t>(rng() % t.n_vocab());
        StreamDecoder sd(t);
        std::string streamed;
        for (int32_t id : rnd) streamed += sd.push(id);
        streamed += sd.flush();
        REQUIRE(streamed == t.decode(rnd));
    }
}
