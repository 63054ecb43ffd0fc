// The runs `ds3 bench` times (models/bench_loop.h), through a backend that logs the whole
// graphs it is offered: every timed decode step must be of a graph the warm-up ran at
// least twice (a CUDA backend records a step on its first run and captures it on its
// second), so no capture falls in a timed repetition.
#include <catch2/catch.hpp>

#include <cstdio>
#include <map>
#include <tuple>
#include <vector>

#include "backends/backend.h"
#include "models/bench_loop.h"
#include "models/runner.h"
#include "models/synthetic.h"

using namespace ds3;

namespace {

// The CPU backend, logging each graph offered to run_graph by what a replaying backend
// keys it on: its tokens, its size and the nodes it fetches (then declining, so that the
// scheduler runs it on the CPU node by node).
class LoggingBackend final : public Backend {
public:
    using Key = std::tuple<int64_t, int, std::vector<int>>;
    explicit LoggingBackend(std::unique_ptr<Backend> cpu) : cpu_(std::move(cpu)) {}
    const std::string& name() const override { return cpu_->name(); }
    bool supports(const Node& n) const override { return cpu_->supports(n); }
    std::unique_ptr<Buffer> alloc(size_t bytes) override { return cpu_->alloc(bytes); }
    void upload(Buffer& dst, size_t offset, const void* src, size_t n) override { cpu_->upload(dst, offset, src, n); }
    void download(const Buffer& src, size_t offset, void* dst, size_t n) override {
        cpu_->download(src, offset, dst, n);
    }
    void compute(const Node& n, std::span<Buffer* const> in, Buffer& out, Buffer* state) override {
        cpu_->compute(n, in, out, state);
    }
    bool run_graph(const Graph& g, std::span<const GraphInput>, KvCache*, std::span<const int> fetch,
                   Fetched&) override {
        log.emplace_back(g.node(g.find("tokens")).rows, g.size(), std::vector<int>(fetch.begin(), fetch.end()));
        return false;
    }
    std::vector<Key> log;

private:
    std::unique_ptr<Backend> cpu_;
};

}  // namespace

TEST_CASE("bench: every timed decode step is of a graph the warm-up ran twice", "[bench]") {
    const SyntheticModel sm = build_synthetic({"v3-tiny", "q8_0", 0, 3});
    LoggingBackend b(create_backend("cpu", {1}));
    std::vector<std::string> routes;
    for (int64_t il = 0; il < sm.model.hp.n_layer; ++il)
        if (sm.model.hp.is_moe_layer(il)) {
            char name[32];
            std::snprintf(name, sizeof name, "l%lld.moe_route", static_cast<long long>(il));
            routes.emplace_back(name);
        }
    REQUIRE(!routes.empty());
    for (size_t n_gen : {1, 4, 12}) {
        INFO("n_gen " << n_gen);
        const std::vector<int32_t> prompt = {5, 9, 2, 7, 11, 3}, gen(n_gen, 4);
        Runner r(sm.model, {&b}, static_cast<int64_t>(prompt.size() + gen.size()));
        b.log.clear();
        const BenchWarmUp w = bench_warm_up(r, prompt, gen, routes);
        CHECK(w.decode_dumps.size() == std::min<size_t>(n_gen, 8));
        CHECK(w.prompt_dump.size() == routes.size());
        std::map<LoggingBackend::Key, int> warm_runs;
        for (const auto& k : b.log) ++warm_runs[k];
        b.log.clear();
        const BenchTimes t = bench_timed(r, prompt, gen, 2);
        CHECK(t.pp_ts.size() == 2);
        CHECK(t.tg_ts.size() == 2);
        REQUIRE(b.log.size() == 2 * (1 + n_gen));
        for (const auto& k : b.log)
            if (std::get<0>(k) == 1) CHECK(warm_runs[k] >= 2);
    }
}
