// Token sampling: logits -> next token id, and stop-string handling on decoded text.
//
// Order of the chain (that of Hugging Face `generate`, whose generation_config supplies the
// defaults): repetition/presence/frequency penalties over the last `penalty_last_n` tokens,
// then temperature, top-k, top-p, min-p, then a draw. temperature <= 0 is greedy (argmax,
// lowest id on ties). Candidates are sorted by (logit desc, id asc), so results never
// depend on sort stability.
//
// Reproducibility: the generator is std::mt19937_64 seeded with `seed` (its output is fixed
// by the standard); a uniform draw in [0, 1) is (x >> 11) * 2^-53, written out here rather
// than std::uniform_real_distribution, whose output differs between standard libraries.
// Same seed, same logits -> same tokens on every platform.
#pragma once

#include <cstdint>
#include <deque>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ds3::gguf {
class File;
}

namespace ds3 {

struct SamplingParams {
    float temperature = 1.0f;        // <= 0: greedy
    int32_t top_k = 0;               // 0: off
    float top_p = 1.0f;              // 1: off
    float min_p = 0.0f;              // 0: off
    float repetition_penalty = 1.0f; // 1: off; >1 divides positive logits, multiplies negative
    float presence_penalty = 0.0f;   // subtracted once from every token seen in the window
    float frequency_penalty = 0.0f;  // subtracted per occurrence in the window
    int32_t penalty_last_n = 64;     // window of past tokens the penalties look at; -1: all
    uint64_t seed = 0;
    int32_t max_tokens = -1;         // the generation loop stops after this many; -1: no limit
    std::vector<std::string> stop;   // stop strings, matched on decoded text
};

// Defaults from a file: ds3.generation.{temperature,top_p,top_k} (the converter writes
// them from generation_config.json) when present, else the SamplingParams defaults.
// A key of the wrong type throws Error("gguf", ...).
SamplingParams sampling_defaults(const gguf::File& f);

// Throws Error("sampling", ...) on out-of-range parameters (top_p outside (0, 1], ...).
void validate(const SamplingParams& p);

class Sampler {
public:
    explicit Sampler(SamplingParams p);

    // Picks a token from `logits` (one per vocabulary entry), applying the penalties with
    // the history of accepted tokens. Throws Error("sampling", ...) on empty or all-NaN logits.
    int32_t sample(std::span<const float> logits);
    // Records a token (prompt or generated) in the penalty history.
    void accept(int32_t id);
    void reset();  // history and generator back to the start (same seed)

    const SamplingParams& params() const { return p_; }
    // The uniform draw in [0, 1) described above (exposed for tests).
    static double uniform(std::mt19937_64& rng);

private:
    SamplingParams p_;
    std::mt19937_64 rng_;
    std::deque<int32_t> history_;
};

// Watches streamed text for stop strings. push() returns the text that is safe to show
// now: text that might be the start of a stop string is held back until it is decided.
// When a stop string completes, the text before it is returned and stopped() turns true;
// the stop string itself and anything after it are dropped.
class StopMatcher {
public:
    explicit StopMatcher(std::vector<std::string> stops);
    std::string push(std::string_view text);
    std::string flush();  // end of generation: the held-back text, nothing is a stop now
    bool stopped() const { return stopped_; }

private:
    std::vector<std::string> stops_;
    std::string pending_;
    bool stopped_ = false;
};

}  // namespace ds3
