#include "models/bench_loop.h"

#include <algorithm>

#include "runtime/clock.h"

namespace ds3 {

BenchWarmUp bench_warm_up(Runner& r, std::span<const int32_t> prompt, std::span<const int32_t> gen,
                          const std::vector<std::string>& dump) {
    BenchWarmUp w;
    const auto t0 = Clock::now();
    if (!prompt.empty()) r.eval(prompt, false, dump, &w.prompt_dump);
    for (size_t i = 0; i < std::min<size_t>(gen.size(), 8); ++i)
        r.eval(gen.subspan(i, 1), false, dump, &w.decode_dumps.emplace_back());
    for (size_t i = 0; i < (gen.empty() ? 0 : 3); ++i) {
        r.reset();  // each at position 0: the cache may be sized for a single token
        r.eval_last(gen.subspan(i % gen.size(), 1));
    }
    w.seconds = seconds_since(t0);
    return w;
}

BenchTimes bench_timed(Runner& r, std::span<const int32_t> prompt, std::span<const int32_t> gen, int reps,
                       const std::function<void(int)>& done) {
    BenchTimes t;
    for (int rep = 0; rep < reps; ++rep) {
        r.reset();
        if (!prompt.empty()) {
            const auto t0 = Clock::now();
            r.eval_last(prompt);
            t.pp_ts.push_back(static_cast<double>(prompt.size()) / seconds_since(t0));
        }
        if (!gen.empty()) {
            const auto t0 = Clock::now();
            for (size_t i = 0; i < gen.size(); ++i) r.eval_last(gen.subspan(i, 1));
            const double sec = seconds_since(t0);
            t.tg_seconds += sec;
            t.tg_ts.push_back(static_cast<double>(gen.size()) / sec);
        }
        if (done) done(rep);
    }
    return t;
}

}  // namespace ds3
