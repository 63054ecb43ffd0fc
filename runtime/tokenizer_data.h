// What a file carries about its tokenizer: the vocabulary and merges of a byte-level BPE,
// token kinds, special ids, and the chat template. convert/ fills it from a Hugging Face
// tokenizer.json + tokenizer_config.json; runtime/ stores it under llama.cpp's
// tokenizer.ggml.* keys and reads it back (docs/gguf.md lists the keys).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ds3::gguf {
class File;
class Writer;
}  // namespace ds3::gguf

namespace ds3 {

// llama.cpp's token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
    Normal = 1,
    Unknown = 2,
    Control = 3,      // special added tokens: <｜begin▁of▁sentence｜>, ...
    UserDefined = 4,  // non-special added tokens
    Unused = 5,
    Byte = 6,
};

struct TokenizerData {
    std::string model = "gpt2";        // tokenizer.ggml.model
    std::string pre = "deepseek-v3";   // tokenizer.ggml.pre
    std::vector<std::string> tokens;   // id -> token text in byte-level form ("Ġthe")
    std::vector<TokenType> types;      // id -> kind
    std::vector<std::string> merges;   // "a b", by rank
    std::optional<int32_t> bos_id, eos_id, pad_id, unk_id;
    bool add_bos = false;
    bool add_eos = false;
    std::string chat_template;         // Jinja source; empty when absent
};

// Writes the tokenizer.ggml.* keys.
void write_tokenizer(gguf::Writer& w, const TokenizerData& t);
// Reads them back; throws Error("tokenizer", ...) naming the missing or bad key.
TokenizerData read_tokenizer(const gguf::File& f);

}  // namespace ds3
