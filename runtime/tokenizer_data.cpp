// TokenizerData <-> the tokenizer.ggml.* keys (names as in gguf-py's Keys.Tokenizer).
#include "runtime/tokenizer_data.h"

#include <string_view>

#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

namespace ds3 {

namespace {
constexpr std::string_view kModel = "tokenizer.ggml.model";
constexpr std::string_view kPre = "tokenizer.ggml.pre";
constexpr std::string_view kTokens = "tokenizer.ggml.tokens";
constexpr std::string_view kTypes = "tokenizer.ggml.token_type";
constexpr std::string_view kMerges = "tokenizer.ggml.merges";
constexpr std::string_view kBos = "tokenizer.ggml.bos_token_id";
constexpr std::string_view kEos = "tokenizer.ggml.eos_token_id";
constexpr std::string_view kPad = "tokenizer.ggml.padding_token_id";
constexpr std::string_view kUnk = "tokenizer.ggml.unknown_token_id";
constexpr std::string_view kAddBos = "tokenizer.ggml.add_bos_token";
constexpr std::string_view kAddEos = "tokenizer.ggml.add_eos_token";
constexpr std::string_view kTemplate = "tokenizer.chat_template";

[[noreturn]] void fail(const std::string& msg) { throw Error("tokenizer", msg); }

const gguf::Array& string_array(const gguf::File& f, std::string_view key) {
    const gguf::Value* v = f.find(key);
    if (!v) fail("key " + std::string(key) + " is missing");
    if (v->type != gguf::ValueType::ARRAY)
        fail("key " + std::string(key) + ": expected an array of strings, found " +
             std::string(gguf::value_type_name(v->type)));
    const gguf::Array& a = v->as_array();
    if (!a.items.empty() && a.elem_type != gguf::ValueType::STRING)
        fail("key " + std::string(key) + ": expected an array of strings, found an array of " +
             std::string(gguf::value_type_name(a.elem_type)));
    return a;
}

std::optional<int32_t> token_id(const gguf::File& f, std::string_view key, size_t n_tokens) {
    const gguf::Value* v = f.find(key);
    if (!v) return std::nullopt;
    if (!v->is_integer())
        fail("key " + std::string(key) + ": expected an integer token id, found " +
             std::string(gguf::value_type_name(v->type)));
    int64_t id = -1;
    try {
        id = v->as_i64();
    } catch (const Error&) {
        fail("key " + std::string(key) + ": token id does not fit in 64 bits");
    }
    if (id < 0 || static_cast<uint64_t>(id) >= n_tokens)
        fail("key " + std::string(key) + ": token id " + std::to_string(id) + " out of range [0, " +
             std::to_string(n_tokens) + ")");
    return static_cast<int32_t>(id);
}
}  // namespace

void write_tokenizer(gguf::Writer& w, const TokenizerData& t) {
    if (t.types.size() != t.tokens.size())
        fail("token types (" + std::to_string(t.types.size()) + ") and tokens (" +
             std::to_string(t.tokens.size()) + ") differ in length");
    w.set_kv(std::string(kModel), gguf::Value::str(t.model));
    w.set_kv(std::string(kPre), gguf::Value::str(t.pre));
    w.set_kv(std::string(kTokens), gguf::Value::strings(t.tokens));
    std::vector<int32_t> types(t.types.size());
    for (size_t i = 0; i < t.types.size(); ++i) types[i] = static_cast<int32_t>(t.types[i]);
    w.set_kv(std::string(kTypes), gguf::Value::i32s(types));
    w.set_kv(std::string(kMerges), gguf::Value::strings(t.merges));
    auto put_id = [&](std::string_view key, const std::optional<int32_t>& id) {
        if (!id) return;
        if (*id < 0 || static_cast<size_t>(*id) >= t.tokens.size())
            fail(std::string(key) + ": token id " + std::to_string(*id) + " out of range [0, " +
                 std::to_string(t.tokens.size()) + ")");
        w.set_kv(std::string(key), gguf::Value::u32(static_cast<uint32_t>(*id)));
    };
    put_id(kBos, t.bos_id);
    put_id(kEos, t.eos_id);
    put_id(kPad, t.pad_id);
    put_id(kUnk, t.unk_id);
    w.set_kv(std::string(kAddBos), gguf::Value::boolean(t.add_bos));
    w.set_kv(std::string(kAddEos), gguf::Value::boolean(t.add_eos));
    if (!t.chat_template.empty()) w.set_kv(std::string(kTemplate), gguf::Value::str(t.chat_template));
}

TokenizerData read_tokenizer(const gguf::File& f) {
    TokenizerData t;
    t.model = f.get_string(kModel);
    t.pre = f.get_string(kPre, "default");

    const gguf::Array& toks = string_array(f, kTokens);
    if (toks.items.empty()) fail("key " + std::string(kTokens) + " is empty");
    t.tokens.reserve(toks.items.size());
    for (const gguf::Value& v : toks.items) t.tokens.push_back(v.as_string());
    const size_t n = t.tokens.size();

    if (const gguf::Value* v = f.find(kTypes)) {
        if (v->type != gguf::ValueType::ARRAY) fail("key " + std::string(kTypes) + ": expected an array");
        const gguf::Array& a = v->as_array();
        if (a.items.size() != n)
            fail("key " + std::string(kTypes) + ": " + std::to_string(a.items.size()) +
                 " entries, but " + std::string(kTokens) + " has " + std::to_string(n));
        t.types.reserve(n);
        for (size_t i = 0; i < n; ++i) {
            const gguf::Value& e = a.items[i];
            int64_t ty = e.is_integer() ? e.as_i64() : -1;
            if (ty < static_cast<int64_t>(TokenType::Normal) || ty > static_cast<int64_t>(TokenType::Byte))
                fail("key " + std::string(kTypes) + "[" + std::to_string(i) +
                     "]: expected a token type 1..6, found " +
                     (e.is_integer() ? std::to_string(ty) : std::string(gguf::value_type_name(e.type))));
            t.types.push_back(static_cast<TokenType>(ty));
        }
    } else {
        t.types.assign(n, TokenType::Normal);
    }

    if (f.has(kMerges)) {
        const gguf::Array& m = string_array(f, kMerges);
        t.merges.reserve(m.items.size());
        for (const gguf::Value& v : m.items) t.merges.push_back(v.as_string());
    }
    t.bos_id = token_id(f, kBos, n);
    t.eos_id = token_id(f, kEos, n);
    t.pad_id = token_id(f, kPad, n);
    t.unk_id = token_id(f, kUnk, n);
    t.add_bos = f.get_bool(kAddBos, false);
    t.add_eos = f.get_bool(kAddEos, false);
    t.chat_template = f.get_string(kTemplate, "");
    return t;
}

}  // namespace ds3
