// Reads a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json, and config.json's
// vocab_size when present) into ds3::TokenizerData, the form runtime/ stores in GGUF.
//
// What is taken from where:
//   tokenizer.json        model.vocab + model.merges ("a b" strings or ["a","b"] pairs),
//                         added_tokens (id, content, special), and the normalizer and
//                         pre_tokenizer, which must be ones runtime/tokenizer knows
//                         (DeepSeek-V3's Split regexes + ByteLevel): their regex text
//                         selects tokenizer.ggml.pre.
//   tokenizer_config.json bos_token / eos_token / pad_token (a string or {"content": ...}),
//                         add_bos_token, add_eos_token, chat_template.
//   config.json           vocab_size: the embedding's row count; the token list is padded
//                         to it.
// The vocabulary is made dense as llama.cpp's converter does: every id 0..n-1 once; an id
// with no token becomes "[PAD<id>]" of type Unused. Special added tokens are Control,
// other added tokens UserDefined, the rest Normal.
#pragma once

#include <string>

#include "runtime/tokenizer_data.h"

namespace ds3::hf {

// Throws Error("tokenizer", ...) naming the file and what is missing or malformed.
TokenizerData read_tokenizer_dir(const std::string& dir);

}  // namespace ds3::hf
