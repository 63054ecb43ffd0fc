// Runner: one model, its backends, the scheduler and the latent KV cache — what the
// CLI and the C API drive. eval() appends a batch of tokens to the sequence (the
// prompt in one batch, or decoding one token at a time) and returns logits.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "models/deepseek2.h"
#include "runtime/kv_cache.h"
#include "runtime/sched/sched.h"

namespace ds3 {

class Runner {
public:
    // backends[0] is the primary. n_ctx: the context size (positions) of the cache.
    // The model and the backends must outlive the runner (it keeps references).
    Runner(const Deepseek2Model& model, std::vector<Backend*> backends, int64_t n_ctx,
           ExpertPlacement placement = {});

    // Runs `tokens` at positions n_past()..n_past()+T-1 and returns logits, row-major
    // [T][n_vocab] (all_logits) or [1][n_vocab] (the last token's). Intermediates named
    // in `dump` are returned in *dumped ([T][cols] each). Throws Error("kv_cache", ...)
    // when the batch would not fit in the context, Error("model", ...) for a token id
    // outside the vocabulary or an unknown dump name.
    std::vector<float> eval(std::span<const int32_t> tokens, bool all_logits,
                            const std::vector<std::string>& dump = {},
                            std::map<std::string, std::vector<float>>* dumped = nullptr);
    // As eval(tokens, false), without copying the logits out: a view of n_vocab values
    // that stays valid until the next step run on the same backends, by this runner or
    // another (decode loops that read the logits once: greedy generation, the benchmark).
    std::span<const float> eval_last(std::span<const int32_t> tokens);

    void reset() { cache_.clear(); }
    // Sees every node's inputs after it runs (Scheduler::set_observer); {} removes it.
    void set_observer(Scheduler::NodeObserver f) { sched_.set_observer(std::move(f)); }
    int64_t n_past() const { return cache_.n_past(); }
    int64_t n_vocab() const { return model_.hp.n_vocab; }
    const KvCache& cache() const { return cache_; }
    const Deepseek2Model& model() const { return model_; }

private:
    // Runs the batch and keeps what it fetched (the logits first, then `dump`) in last_.
    std::vector<int> run(std::span<const int32_t> tokens, bool all_logits, const std::vector<std::string>& dump);

    const Deepseek2Model& model_;
    Scheduler sched_;
    KvCache cache_;
    std::map<std::pair<int64_t, bool>, Graph> graphs_;  // placed graphs by (tokens, all_logits)
    Fetched last_;                                      // the last run's results (eval_last's view)
};

// Greedy generation (temperature 0): feeds `prompt` as one batch, then decodes n_new
// tokens one at a time; returns the new ids.
std::vector<int32_t> generate_greedy(Runner& r, std::span<const int32_t> prompt, int64_t n_new);

int32_t argmax(std::span<const float> logits);

}  // namespace ds3
