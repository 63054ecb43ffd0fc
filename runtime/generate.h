// Text generation: the loop shared by `ds3 run -p`, `ds3 chat` and the C API.
//
//   prompt ids -> Runner (the part already in its cache is not evaluated again)
//              -> Sampler -> StreamDecoder -> StopMatcher -> a callback per piece of text
//
// Generator owns the bookkeeping of what the Runner's KV cache holds (the ids evaluated so
// far), so a prompt that extends the cached sequence only costs its new suffix. Any other
// prompt resets the cache and is evaluated from scratch (the cache cannot be cut back).
//
// ChatSession is a conversation on top of it: the history is rendered through the chat
// template every turn, and the new prompt is fed incrementally when its *text* starts with
// the text the cache holds (prompt text + the answer's evaluated tokens). Comparing text
// rather than re-tokenized ids matters: the tokens a model samples are often not the ones
// the tokenizer would produce for the same text, so re-tokenizing the history would almost
// never match the cache. When the rendered prompt does not fit the context, the oldest
// turns are dropped (the system message is kept).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "models/runner.h"
#include "runtime/chat_template.h"
#include "runtime/sampling.h"
#include "runtime/tokenizer.h"

namespace ds3 {

enum class StopReason {
    eos,           // an end-of-generation token was sampled
    stop_string,   // a stop string appeared in the text
    max_tokens,    // SamplingParams::max_tokens reached
    context_full,  // the KV cache is full
    interrupted,   // GenerateOptions::interrupted returned true
    callback,      // the text callback returned false
};
const char* to_string(StopReason r);

struct GenerateOptions {
    bool ignore_eos = false;  // keep generating past end-of-generation tokens
    int64_t n_batch = 512;    // prompt tokens per Runner::eval; interrupts are polled between
    // Polled before each token and between prompt batches; true stops the generation.
    std::function<bool()> interrupted;
};

struct GenerateStats {
    int64_t n_prompt = 0;  // prompt tokens
    int64_t n_reused = 0;  // of which were already in the cache (not evaluated again)
    double prompt_s = 0;   // time evaluating the others
    int64_t n_gen = 0;     // tokens generated (an end-of-generation token is not counted)
    double gen_s = 0;      // time from the end of the prompt to the last token
    double prompt_tps() const;  // (n_prompt - n_reused) / prompt_s; 0 when nothing ran
    double gen_tps() const;
};

struct GenerateResult {
    std::string text;          // everything passed to the callback
    std::vector<int32_t> ids;  // generated ids, without the end-of-generation token
    StopReason reason = StopReason::eos;
    GenerateStats stats;
};

// Receives each piece of text as soon as it is final; returning false stops generation.
using TextSink = std::function<bool(std::string_view piece)>;

class Generator {
public:
    // End-of-generation ids: the tokenizer's eos_id, and "<｜end▁of▁sentence｜>" and
    // "<|im_end|>" (Kimi-K2) when the vocabulary has them. Clears the runner's cache: from
    // here on the Generator is the only one that should call runner.eval (if someone else
    // does, the next generate() notices the mismatch and starts over).
    Generator(Runner& runner, const Tokenizer& tok);

    // Makes the cache hold `prompt` (evaluating only what is not cached yet), then samples
    // until an end-of-generation token, a stop string, sampler.params().max_tokens, a full
    // context, an interrupt or the callback says stop. The sampler is reset first (so the
    // same seed gives the same text for the same prompt) and sees the prompt tokens as
    // penalty history. The last sampled token is not evaluated. Throws Error("generate",
    // ...) for an empty prompt or one longer than the context; Runner errors pass through.
    GenerateResult generate(std::span<const int32_t> prompt, Sampler& sampler, const TextSink& on_text,
                            const GenerateOptions& opt = {});

    // The ids the Runner's cache holds, in order.
    const std::vector<int32_t>& cached() const { return cached_; }
    void reset();
    int64_t n_ctx() const { return runner_.cache().n_ctx(); }
    bool is_eog(int32_t id) const;
    const Tokenizer& tokenizer() const { return tok_; }

private:
    // Brings the cache to `prompt`, leaving the logits after its last token in last_logits_.
    void feed(std::span<const int32_t> prompt, const GenerateOptions& opt, GenerateStats& st,
                            bool& interrupted);

    Runner& runner_;
    const Tokenizer& tok_;
    std::vector<int32_t> cached_;
    std::vector<float> last_logits_;  // after cached_.back(), so an identical prompt costs nothing
    std::vector<int32_t> eog_;
};

struct ChatTurn {
    GenerateResult gen;
    int n_dropped = 0;  // messages dropped from the start of the history to make room
};

class ChatSession {
public:
    // `reserve`: tokens kept free for the answer when deciding whether the prompt fits;
    // clamped to [1, n_ctx / 2].
    ChatSession(Generator& gen, const ChatTemplate& tmpl, int64_t reserve);

    // Replaces the system message ("" removes it); the turns are kept.
    void set_system(std::string text);
    const std::string& system() const { return system_; }
    // Forgets the turns, keeps the system message.
    void reset() { turns_.clear(); }
    // The whole conversation, system message first when there is one.
    std::vector<ChatMessage> messages() const;
    // Replaces the conversation (e.g. /load); a leading system message becomes the system.
    void set_messages(std::vector<ChatMessage> msgs);

    // Adds the user message, renders the history with the generation prompt, drops the
    // oldest turns while it does not fit (prompt + reserve > n_ctx), generates, and adds
    // the answer as an assistant message, also when it was cut short (interrupt, context
    // full). Throws Error("chat", ...) — leaving the history unchanged — when the message
    // does not fit even alone with the system message.
    ChatTurn send(const std::string& user_text, Sampler& sampler, const TextSink& on_text,
                  const GenerateOptions& opt = {});

    // The prompt ids for `msgs` with the generation prompt: the cached ids plus the new
    // suffix when the rendered text extends the cached text, else a full encoding.
    std::vector<int32_t> prompt_ids(const std::vector<ChatMessage>& msgs) const;

private:
    Generator& gen_;
    const ChatTemplate& tmpl_;
    int64_t reserve_;
    std::string system_;
    std::vector<ChatMessage> turns_;
    // The text the ids in known_ids_ stand for; valid while gen_.cached() == known_ids_.
    std::string known_text_;
    std::vector<int32_t> known_ids_;
};

}  // namespace ds3
