// `ds3 bench`: prompt-processing and generation throughput in the manner of llama-bench,
// and the effective memory bandwidth of decode against a roofline.
//   ds3 bench -m MODEL.gguf | --synthetic PRESET [--type TYPE] [--layers N] [--seed S]
//             [--backend cpu|cuda] [-p 512] [-n 128] [-r REPS] [-t THREADS]
//             [--roofline-gbs GBS] [--json]
// Each repetition clears the cache, runs the prompt of -p random tokens as one batch
// (ppP, tokens/s) and then -n random tokens one at a time after it (tgN, tokens/s); a
// warm-up repetition comes first (weight uploads, page faults, buffer pools, a CUDA
// graph's capture) and also records the routes the timed repetitions will take (same
// tokens, same positions): models/bench_loop.h.
// docs/performance.md "Benchmarks" explains the byte accounting.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backends/backend.h"
#include "cli/command.h"
#include "models/bench_loop.h"
#include "models/footprint.h"
#include "models/presets.h"
#include "models/runner.h"
#include "models/synthetic.h"
#include "runtime/clock.h"
#include "runtime/error.h"
#include "runtime/progress.h"

namespace ds3::cli {
namespace {

using json = nlohmann::ordered_json;

struct BenchArgs {
    std::string model;
    std::string synthetic;
    std::string type = "bf16";
    int64_t layers = 0;
    uint64_t seed = 0;
    std::string backend = "cpu";
    int64_t n_prompt = 512;
    int64_t n_gen = 128;
    int reps = 3;
    int threads = 0;
    double roofline_gbs = 0;
    bool json = false;
};

struct Stat {
    double mean = 0, stddev = 0;
};
Stat stat(const std::vector<double>& v) {
    Stat s;
    if (v.empty()) return s;
    for (double x : v) s.mean += x;
    s.mean /= static_cast<double>(v.size());
    if (v.size() > 1) {
        double q = 0;
        for (double x : v) q += (x - s.mean) * (x - s.mean);
        s.stddev = std::sqrt(q / static_cast<double>(v.size() - 1));
    }
    return s;
}

// Read bandwidth of this machine's memory: n_threads threads sum disjoint slices of a
// 512 MiB buffer; the best of three passes.
double measure_cpu_read_gbs(int n_threads) {
    const size_t n = size_t{64} << 20;  // uint64 words
    std::vector<uint64_t> buf(n);
    for (size_t i = 0; i < n; ++i) buf[i] = i;
    const int t = std::max(1, n_threads);
    double best = 1e30;
    uint64_t sink = 0;
    for (int pass = 0; pass < 3; ++pass) {
        std::vector<uint64_t> sums(static_cast<size_t>(t));
        const auto t0 = Clock::now();
        std::vector<std::thread> th;
        for (int k = 0; k < t; ++k)
            th.emplace_back([&, k] {
                const size_t a = n * static_cast<size_t>(k) / static_cast<size_t>(t);
                const size_t b = n * static_cast<size_t>(k + 1) / static_cast<size_t>(t);
                uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                size_t i = a;
                for (; i + 4 <= b; i += 4) {
                    s0 += buf[i];
                    s1 += buf[i + 1];
                    s2 += buf[i + 2];
                    s3 += buf[i + 3];
                }
                for (; i < b; ++i) s0 += buf[i];
                sums[static_cast<size_t>(k)] = s0 + s1 + s2 + s3;
            });
        for (auto& x : th) x.join();
        best = std::min(best, seconds_since(t0));
        for (uint64_t s : sums) sink += s;
    }
    if (sink == 42) std::fprintf(stderr, " ");  // keeps the sums observable
    return static_cast<double>(n * 8) / best / 1e9;
}

// The route nodes of the MoE layers ("lN.moe_route": k weights, then k expert ids).
std::vector<std::string> route_names(const Deepseek2Model& m) {
    std::vector<std::string> v;
    for (int64_t il = 0; il < m.hp.n_layer; ++il)
        if (m.hp.is_moe_layer(il)) v.push_back("l" + std::to_string(il) + ".moe_route");
    return v;
}

struct RouteStats {
    int64_t n_tokens = 0;
    double distinct_per_layer = 0;  // distinct experts the batch touched, mean over MoE layers
    double max_over_mean_load = 0;  // busiest expert's tokens / the mean, mean over layers
};

// Distinct experts per MoE layer over the rows of one batch's dumped routes.
RouteStats route_stats(const Deepseek2Model& m, const std::map<std::string, std::vector<float>>& dumped) {
    RouteStats rs;
    const int64_t k = m.hp.n_expert_used, N = m.hp.n_expert;
    int layers = 0;
    for (const auto& [name, v] : dumped) {
        const int64_t rows = static_cast<int64_t>(v.size()) / (2 * k);
        std::vector<int64_t> count(static_cast<size_t>(N));
        for (int64_t t = 0; t < rows; ++t)
            for (int64_t j = 0; j < k; ++j) {
                const float id = v[static_cast<size_t>(t * 2 * k + k + j)];
                if (!(id >= 0 && id < static_cast<float>(N)))
                    throw Error("bench", name + ": expert id " + std::to_string(id) + " outside [0, " + std::to_string(N) + ")");
                ++count[static_cast<size_t>(id)];
            }
        int64_t distinct = 0, mx = 0;
        for (int64_t c : count) {
            distinct += c > 0;
            mx = std::max(mx, c);
        }
        rs.n_tokens = rows;
        rs.distinct_per_layer += static_cast<double>(distinct);
        rs.max_over_mean_load += static_cast<double>(mx) / (static_cast<double>(rows * k) / static_cast<double>(N));
        ++layers;
    }
    if (layers > 0) {
        rs.distinct_per_layer /= layers;
        rs.max_over_mean_load /= layers;
    }
    return rs;
}

std::string fmt(const char* f, double v) {
    char b[64];
    std::snprintf(b, sizeof b, f, v);
    return b;
}

std::string params_string(uint64_t n) {
    if (n >= 1000000000ull) return fmt("%.2f B", static_cast<double>(n) / 1e9);
    if (n >= 1000000ull) return fmt("%.2f M", static_cast<double>(n) / 1e6);
    return fmt("%.0f", static_cast<double>(n));
}

int run_bench(const BenchArgs& a) {
    if (a.model.empty() == a.synthetic.empty())
        throw Error("cli", "bench: give exactly one of -m MODEL.gguf and --synthetic PRESET (" + model_preset_names() + ")");
    if (a.n_prompt < 0 || a.n_gen < 0 || a.n_prompt + a.n_gen == 0)
        throw Error("cli", "bench: -p and -n must be non-negative and not both 0, found -p " + std::to_string(a.n_prompt) +
                               " -n " + std::to_string(a.n_gen));
    if (a.reps < 1) throw Error("cli", "bench: -r must be at least 1, found " + std::to_string(a.reps));
    if (a.roofline_gbs < 0) throw Error("cli", "bench: --roofline-gbs must be positive");

    // The model.
    std::optional<SyntheticModel> syn;
    std::optional<Deepseek2Model> loaded;
    std::string label;
    double build_s = 0;
    const auto tb = Clock::now();
    if (!a.synthetic.empty()) {
        std::fprintf(stderr, "bench: building synthetic %s (%s)...\n", a.synthetic.c_str(), a.type.c_str());
        syn.emplace(build_synthetic({a.synthetic, a.type, a.layers, a.seed}));
        label = "synthetic " + a.synthetic + " " + syn->target.name;
        if (syn->model.hp.n_layer != syn->n_layer_full)
            label += " (" + std::to_string(syn->model.hp.n_layer) + "/" + std::to_string(syn->n_layer_full) + " layers)";
    } else {
        loaded.emplace(load_deepseek2(a.model));
        label = std::filesystem::path(a.model).filename().string();
    }
    build_s = seconds_since(tb);
    const Deepseek2Model& m = syn ? syn->model : *loaded;
    const WeightBytes wb = model_weight_bytes(m);

    // Backends: the one asked for, with the CPU after it for what it does not support.
    BackendOptions bo;
    bo.n_threads = a.threads;
    std::vector<std::unique_ptr<Backend>> owned;
    owned.push_back(create_backend(a.backend, bo));
    if (a.backend != "cpu") owned.push_back(create_backend("cpu", bo));
    std::vector<Backend*> bs;
    for (auto& b : owned) bs.push_back(b.get());
    const int threads = a.threads > 0 ? a.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

    // Where one decode step's nodes run.
    std::map<std::string, int> placement;
    {
        const Graph placed = Scheduler(bs).place(build_graph(m, {1, a.n_prompt, false}));
        for (const Node& n : placed.nodes())
            if (n.op != Op::input) ++placement[bs[static_cast<size_t>(n.backend)]->name()];
    }

    // Random tokens, as llama-bench uses.
    uint64_t s = a.seed * 0x9e3779b97f4a7c15ull + 12345;
    auto next_id = [&] {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<int32_t>((s >> 33) % static_cast<uint64_t>(m.hp.n_vocab));
    };
    std::vector<int32_t> prompt(static_cast<size_t>(a.n_prompt)), gen(static_cast<size_t>(a.n_gen));
    for (int32_t& t : prompt) t = next_id();
    for (int32_t& t : gen) t = next_id();

    Runner runner(m, bs, std::max<int64_t>(a.n_prompt + a.n_gen, 1));
    const std::vector<std::string> routes = route_names(m);

    // Warm-up, recording routes: the prompt batch, then up to 8 decode steps; then the
    // timed loop's own decode step (bench_warm_up).
    std::fprintf(stderr, "bench: %s, %s weights, warm-up...\n", label.c_str(), format_bytes(double(wb.total)).c_str());
    const BenchWarmUp warm = bench_warm_up(runner, prompt, gen, routes);
    const double warmup_s = warm.seconds;
    RouteStats prompt_routes;
    if (a.n_prompt > 0 && !routes.empty()) prompt_routes = route_stats(m, warm.prompt_dump);
    double experts_per_token = 0;
    int decode_route_steps = 0;
    if (!routes.empty())
        for (const auto& dumped : warm.decode_dumps) {
            experts_per_token += route_stats(m, dumped).distinct_per_layer;
            ++decode_route_steps;
        }
    const bool routes_seen = decode_route_steps > 0;
    if (routes_seen) experts_per_token /= decode_route_steps;
    else experts_per_token = static_cast<double>(m.hp.n_expert_used);  // expected k of n_expert

    // Timed repetitions.
    const BenchTimes times = bench_timed(runner, prompt, gen, a.reps, [&](int r) {
        std::fprintf(stderr, "bench: repetition %d/%d done\n", r + 1, a.reps);
    });
    const std::vector<double>& pp_ts = times.pp_ts;
    const std::vector<double>& tg_ts = times.tg_ts;
    const double tg_seconds = times.tg_seconds;

    // Decode bytes and bandwidth.
    const double cache_positions = static_cast<double>(a.n_prompt) + (static_cast<double>(a.n_gen) + 1.0) / 2.0;
    const DecodeBytes db =
        decode_bytes(m, experts_per_token, cache_positions, static_cast<double>(runner.cache().bytes_per_token()));
    const double sec_per_token = a.n_gen > 0 ? tg_seconds / static_cast<double>(a.reps * a.n_gen) : 0;
    const double gbs = sec_per_token > 0 ? db.total() / sec_per_token / 1e9 : 0;
    double roof = a.roofline_gbs;
    std::string roof_source = "--roofline-gbs";
    if (roof <= 0 && a.n_gen > 0) {
        if (a.backend == "cuda") {
            roof = 4800;
            roof_source = "NVIDIA H200 HBM3e, 4.8 TB/s (default for --backend cuda)";
        } else {
            roof = measure_cpu_read_gbs(threads);
            roof_source = "measured: " + std::to_string(threads) + " threads reading 512 MiB";
        }
    }
    const double pct = roof > 0 ? 100.0 * gbs / roof : 0;
    const Stat pp = stat(pp_ts), tg = stat(tg_ts);
    const std::string pp_name = "pp" + std::to_string(a.n_prompt), tg_name = "tg" + std::to_string(a.n_gen);

    if (a.json) {
        json j;
        j["model"] = label;
        j["source"] = syn ? "synthetic" : "gguf";
        if (syn) {
            j["preset"] = a.synthetic;
            j["type"] = syn->target.name;
            j["layers"] = syn->model.hp.n_layer;
            j["layers_full"] = syn->n_layer_full;
            j["type_fallbacks"] = syn->n_fallback;
            j["pool_mapped"] = syn->aliased;
        } else {
            j["path"] = a.model;
            j["layers"] = m.hp.n_layer;
        }
        j["size_bytes"] = wb.total;
        j["params"] = wb.params;
        j["build_s"] = build_s;
        j["backend"] = a.backend;
        j["threads"] = threads;
        j["placement"] = placement;
        j["n_prompt"] = a.n_prompt;
        j["n_gen"] = a.n_gen;
        j["reps"] = a.reps;
        j["warmup_s"] = warmup_s;
        json tests = json::array();
        if (a.n_prompt > 0)
            tests.push_back({{"test", pp_name}, {"n_tokens", a.n_prompt}, {"avg_ts", pp.mean}, {"stddev_ts", pp.stddev},
                             {"samples_ts", pp_ts}});
        if (a.n_gen > 0)
            tests.push_back({{"test", tg_name}, {"n_tokens", a.n_gen}, {"avg_ts", tg.mean}, {"stddev_ts", tg.stddev},
                             {"samples_ts", tg_ts}});
        j["tests"] = tests;
        if (a.n_prompt > 0 && !routes.empty())
            j["prompt_routing"] = {{"n_tokens", prompt_routes.n_tokens},
                                   {"distinct_experts_per_layer", prompt_routes.distinct_per_layer},
                                   {"n_expert", m.hp.n_expert},
                                   {"max_over_mean_load", prompt_routes.max_over_mean_load}};
        if (a.n_gen > 0)
            j["decode"] = {{"bytes_per_token", db.total()},
                           {"weight_bytes", db.weights()},
                           {"embedding_row_bytes", db.embedding_row},
                           {"non_expert_bytes", db.non_expert},
                           {"routed_expert_bytes", db.routed},
                           {"output_bytes", db.output},
                           {"cache_bytes", db.cache},
                           {"cache_positions_mean", cache_positions},
                           {"experts_per_moe_layer", experts_per_token},
                           {"experts_source", routes.empty() ? "none (no MoE layer)"
                                              : routes_seen  ? "routes"
                                                             : "expected (k of n_expert)"},
                           {"seconds_per_token", sec_per_token},
                           {"effective_gbs", gbs},
                           {"roofline_gbs", roof},
                           {"roofline_source", roof_source},
                           {"roofline_pct", pct}};
        std::printf("%s\n", j.dump(2).c_str());
        return 0;
    }

    std::printf("| model | size | params | backend | threads | test | t/s |\n");
    std::printf("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
    auto row = [&](const std::string& test, const Stat& st) {
        std::printf("| %s | %s | %s | %s | %d | %s | %.2f ± %.2f |\n", label.c_str(), format_bytes(double(wb.total)).c_str(),
                    params_string(wb.params).c_str(), a.backend.c_str(), threads, test.c_str(), st.mean, st.stddev);
    };
    if (a.n_prompt > 0) row(pp_name, pp);
    if (a.n_gen > 0) row(tg_name, tg);
    std::printf("\n");
    std::printf("model built/loaded in %.2f s; warm-up (first uploads included) %.2f s\n", build_s, warmup_s);
    if (placement.size() > 1) {
        std::string p;
        for (const auto& [b, n] : placement) p += (p.empty() ? "" : ", ") + std::to_string(n) + " on " + b;
        std::printf("placement of a decode step's nodes: %s\n", p.c_str());
    }
    if (a.n_prompt > 0 && !routes.empty())
        std::printf("prompt routing: %.1f of %lld experts per MoE layer touched by %lld tokens, busiest expert %.2fx the mean load\n",
                    prompt_routes.distinct_per_layer, static_cast<long long>(m.hp.n_expert),
                    static_cast<long long>(prompt_routes.n_tokens), prompt_routes.max_over_mean_load);
    if (a.n_gen > 0) {
        std::printf("decode reads %s per token: weights %s (attention/dense/shared/router %s, routed experts %s for %.2f "
                    "experts per MoE layer from %s, output %s), latent cache %s at %.0f positions\n",
                    format_bytes(db.total()).c_str(), format_bytes(db.weights()).c_str(),
                    format_bytes(db.non_expert + db.embedding_row).c_str(), format_bytes(db.routed).c_str(),
                    experts_per_token, routes.empty() ? "none" : routes_seen ? "the routes" : "k of n_expert",
                    format_bytes(db.output).c_str(), format_bytes(db.cache).c_str(), cache_positions);
        std::printf("decode bandwidth: %.1f GB/s effective = %.1f %% of %.0f GB/s (%s)\n", gbs, pct, roof,
                    roof_source.c_str());
    }
    return 0;
}

Registrar reg{"bench", "Measure prompt processing (ppN) and generation (tgN) throughput, llama-bench style",
              [](CLI::App& app) {
                  auto a = std::make_shared<BenchArgs>();
                  app.add_option("-m,--model", a->model, "Model file (GGUF)");
                  app.add_option("--synthetic", a->synthetic,
                                 "Build a random-weight model of this preset in memory instead: " + model_preset_names());
                  app.add_option("--type", a->type, "--synthetic: weight type or mix (bf16, q8_0, Q4_K_M, fp8, ...)");
                  app.add_option("--layers", a->layers, "--synthetic: main layers to keep (0: all)");
                  app.add_option("--seed", a->seed, "Seed of the synthetic weights and the random tokens");
                  app.add_option("--backend", a->backend, "Backend: cpu or cuda (the CPU runs what cuda does not)");
                  app.add_option("-p,--n-prompt", a->n_prompt, "Prompt tokens, processed as one batch (default 512)");
                  app.add_option("-n,--n-gen", a->n_gen, "Tokens generated one at a time after the prompt (default 128)");
                  app.add_option("-r,--repetitions", a->reps, "Timed repetitions after the warm-up (default 3)");
                  app.add_option("-t,--threads", a->threads, "CPU threads (0: all)");
                  app.add_option("--roofline-gbs", a->roofline_gbs,
                                 "Memory bandwidth roofline in GB/s (default: 4800 for cuda, measured for cpu)");
                  app.add_flag("--json", a->json, "One JSON object on stdout instead of the table");
                  return [a]() { return run_bench(*a); };
              }};

}  // namespace
}  // namespace ds3::cli
