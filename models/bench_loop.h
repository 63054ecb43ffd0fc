// The runs `ds3 bench` times (cli/cmd_bench.cpp), apart from its report: a warm-up, then
// repetitions of a prompt batch and a decode loop, in the manner of llama-bench.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "models/runner.h"

namespace ds3 {

struct BenchWarmUp {
    std::map<std::string, std::vector<float>> prompt_dump;                // `dump` after the prompt
    std::vector<std::map<std::string, std::vector<float>>> decode_dumps;  // after each recorded decode step
    double seconds = 0;
};

// The prompt as one batch, then up to 8 tokens of `gen` one at a time, fetching the
// intermediates named in `dump` (the bench's routes: the timed repetitions take the same
// tokens at the same positions). Then 3 decode steps (gen's first tokens, each from an
// empty cache) as the timed loop runs them, fetching the logits only: another graph than
// the one with `dump`, and a backend that records a decode step on its first run and
// captures it on its second (CUDA graphs, a capture costing milliseconds) must have done
// both before the timing.
BenchWarmUp bench_warm_up(Runner& r, std::span<const int32_t> prompt, std::span<const int32_t> gen,
                          const std::vector<std::string>& dump);

struct BenchTimes {
    std::vector<double> pp_ts, tg_ts;  // tokens/s of each repetition's prompt batch and decode loop
    double tg_seconds = 0;             // the decode loops' time in all
};

// `reps` times: the cache cleared, the prompt as one batch (ppN), then `gen` one token at a
// time after it (tgN), each token's logits made and brought back as llama-bench's waits do.
// An empty prompt or gen is not timed. `done(rep)` is called after each repetition.
BenchTimes bench_timed(Runner& r, std::span<const int32_t> prompt, std::span<const int32_t> gen, int reps,
                       const std::function<void(int)>& done = {});

}  // namespace ds3
