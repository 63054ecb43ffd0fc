// Byte-level BPE tokenizer, exact against Hugging Face `tokenizers` for the DeepSeek
// families (tokenizer.ggml.model "gpt2", tokenizer.ggml.pre "deepseek-v3").
//
// Encoding, in the order `tokenizers` runs it:
//   1. added tokens (types Control and UserDefined) are cut out of the text first,
//      leftmost-longest, and become their ids directly (EncodeOptions::parse_special off
//      skips this, for untrusted text);
//   2. the normalizer is empty for these models: nothing to do;
//   3. the pre-tokenizer splits each remaining segment with its Split regexes in turn
//      (behaviour Isolated: matches and the gaps between them both become pieces), using
//      PCRE2 with UTF+UCP (JIT when available); the regex text is hard-coded per
//      tokenizer.ggml.pre, copied from the model's tokenizer.json (see docs/tokenizer.md);
//   4. each piece's bytes become GPT-2 byte-level symbols and merge by rank (lowest
//      first, leftmost on ties), with a bounded per-piece cache.
// Text that is not valid UTF-8 is first repaired as decoding would (U+FFFD for each
// maximal invalid subpart), since `tokenizers` only ever sees valid Unicode.
//
// Decoding follows the ByteLevel decoder: a token whose text maps entirely through the
// byte-level table yields those bytes, any other token (e.g. "<｜User｜>") its own UTF-8
// text; the concatenated bytes are then read as UTF-8 with U+FFFD for invalid parts,
// exactly like Rust's String::from_utf8_lossy. StreamDecoder gives the same text
// incrementally, holding back the bytes of a character that is split across tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tokenizer_data.h"

namespace ds3 {

// Split regexes of the pre-tokenizers ds3 knows, by tokenizer.ggml.pre; empty when unknown.
std::vector<std::string> pre_tokenizer_regexes(std::string_view pre);
// The tokenizer.ggml.pre whose regexes are exactly `regexes`; "" when none.
std::string_view pre_tokenizer_name(const std::vector<std::string>& regexes);

// Rust's String::from_utf8_lossy: one U+FFFD per maximal invalid subpart.
std::string utf8_lossy(std::string_view bytes);
// Length of the longest prefix of `bytes` that does not end inside a truncated (but so far
// valid) multi-byte character; utf8_lossy of that prefix never changes as bytes are added.
size_t utf8_stable_prefix(std::string_view bytes);

struct EncodeOptions {
    bool parse_special = true;  // match added/special tokens written in the text
    bool add_bos = false;       // prepend bos_id (when the file has one)
    bool add_eos = false;       // append eos_id (when the file has one)
};

class Tokenizer {
public:
    // Validates and indexes `data`; throws Error("tokenizer", ...) for an unknown model or
    // pre-tokenizer, or a merge whose parts are not tokens.
    explicit Tokenizer(TokenizerData data);
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    // Thread-safe (the piece cache is locked).
    std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt = {}) const;
    // The pre-tokenizer's pieces of `text` (added tokens cut out as in encode), for
    // `ds3 tokenize --show-pieces` and tests.
    std::vector<std::string> pre_tokenize(std::string_view text, bool parse_special = true) const;

    // Whole-sequence decode; ids out of range throw Error. skip_control drops Control
    // tokens (BOS/EOS...), as `skip_special_tokens` does for special ones.
    std::string decode(std::span<const int32_t> ids, bool skip_control = false) const;
    // Raw bytes a token contributes to decoding (not necessarily valid UTF-8).
    const std::string& token_bytes(int32_t id) const;
    // Stored (byte-level) text of a token.
    const std::string& token_text(int32_t id) const;
    TokenType token_type(int32_t id) const;
    std::optional<int32_t> find_token(std::string_view text) const;  // by stored text

    int32_t n_vocab() const;
    const TokenizerData& data() const;
    bool is_valid(int32_t id) const { return id >= 0 && id < n_vocab(); }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Incremental decoding for streaming output. push() returns the text that is final now;
// flush() returns the rest (a dangling partial character becomes U+FFFD). The
// concatenation of all outputs equals Tokenizer::decode of all ids.
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer& tok, bool skip_control = false)
        : tok_(&tok), skip_control_(skip_control) {}
    std::string push(int32_t id);
    std::string flush();
    void reset() { pending_.clear(); }

private:
    const Tokenizer* tok_;
    bool skip_control_;
    std::string pending_;  // bytes not yet emitted (an incomplete character)
};

}  // namespace ds3
