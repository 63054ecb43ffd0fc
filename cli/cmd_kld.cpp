// `ds3 kld -m QUANT.gguf --reference REF.gguf (-f TEXT | --tokens IDS | --tokens-file F)
// [-c N] [--score-from K] [--json]`: runs both models on the same tokens (chunks of N, each
// from an empty cache) and compares their next-token distributions: mean and
// 99th-percentile KL(ref || quant) per token, top-1 agreement, and the perplexity of each
// over the chunk's next-token targets with their ratio ppl(quant) / ppl(ref); also the
// median gap between the reference's two best logits (how easily a small change flips
// top-1). --score-from K scores only positions K.. of each chunk (the first K are context
// only); llama.cpp's `perplexity --kl-divergence` scores the second half (K = N/2), where
// every scored position sees at least N/2 tokens. The default, 0, scores every position.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/model_args.h"
#include "cli/token_source.h"
#include "models/runner.h"
#include "runtime/error.h"

namespace ds3::cli {
namespace {

struct Args {
    ModelArgs m;
    std::string reference;
    TokenSource src;
    int64_t score_from = 0;
    bool json = false;
};

// One scored position's comparison.
struct Score {
    double kl = 0.0;      // KL(ref || quant)
    double margin = 0.0;  // reference's top-1 minus top-2 logit: how easily top-1 flips
    double nll_q = 0.0, nll_r = 0.0;  // of the next token (when the chunk has one)
    bool agree = false;
};

// Compares one position's logit rows. `e` (V entries) is scratch for the reference's
// exp(x - max).
// KL = sum_i p_i (lr_i - lq_i) with lr = xr - lse_r, lq = xq - lse_q and sum p = 1, i.e.
// sum_i p_i (xr_i - xq_i) - (lse_r - lse_q): two exponentials per entry, in double.
Score compare(const float* qt, const float* rt, int64_t V, int32_t next, std::vector<double>& e) {
    const double mr = *std::max_element(rt, rt + V), mq = *std::max_element(qt, qt + V);
    double sr = 0.0, sq = 0.0;
    for (int64_t i = 0; i < V; ++i) {
        e[static_cast<size_t>(i)] = std::exp(static_cast<double>(rt[i]) - mr);
        sr += e[static_cast<size_t>(i)];
        sq += std::exp(static_cast<double>(qt[i]) - mq);
    }
    const double lse_r = mr + std::log(sr), lse_q = mq + std::log(sq);
    double cross = 0.0;
    for (int64_t i = 0; i < V; ++i)
        cross += e[static_cast<size_t>(i)] * (static_cast<double>(rt[i]) - static_cast<double>(qt[i]));
    Score s;
    s.kl = std::max(cross / sr - (lse_r - lse_q), 0.0);  // rounding can leave -1e-17 for identical rows
    double b1 = -1e300, b2 = -1e300;
    for (int64_t i = 0; i < V; ++i) {
        const double v = rt[i];
        if (v > b1) b2 = b1, b1 = v;
        else if (v > b2) b2 = v;
    }
    s.margin = b1 - b2;
    s.agree = argmax(std::span<const float>(qt, static_cast<size_t>(V))) ==
              argmax(std::span<const float>(rt, static_cast<size_t>(V)));
    if (next >= 0) {
        s.nll_q = lse_q - static_cast<double>(qt[next]);
        s.nll_r = lse_r - static_cast<double>(rt[next]);
    }
    return s;
}

int run_kld(const Args& a) {
    if (a.m.n_ctx < 2) throw Error("cli", "kld: -c must be at least 2");
    if (a.score_from < 0 || a.score_from >= a.m.n_ctx)
        throw Error("cli", "kld: --score-from must be in [0, -c) so that each chunk has a scored position: -c " +
                               std::to_string(a.m.n_ctx) + ", --score-from " + std::to_string(a.score_from));
    const std::vector<int32_t> ids = a.src.load(a.reference, "kld");
    if (ids.size() < 2) throw Error("cli", "kld: need at least 2 tokens");
    Deepseek2Model qm = load_deepseek2(a.m.model);
    Deepseek2Model rm = load_deepseek2(a.reference);
    if (qm.hp.n_vocab != rm.hp.n_vocab)
        throw Error("cli", "kld: vocabularies differ: " + std::to_string(qm.hp.n_vocab) + " (" + a.m.model + ") vs " +
                               std::to_string(rm.hp.n_vocab) + " (" + a.reference + ")");
    BackendOptions bo;
    bo.n_threads = a.m.threads;
    auto backend = create_backend(a.m.backend, bo);
    const int64_t c = a.m.n_ctx, V = qm.hp.n_vocab, N = static_cast<int64_t>(ids.size()), k0 = a.score_from;
    if (N <= k0)  // (N > -c always leaves a full first chunk)
        throw Error("cli", "kld: " + std::to_string(N) + " tokens leave no position to score with --score-from " +
                               std::to_string(k0));
    Runner rq(qm, {backend.get()}, c), rr(rm, {backend.get()}, c);
    const int n_threads = a.m.threads > 0 ? a.m.threads : omp_get_max_threads();

    std::vector<double> kl, margin;
    std::vector<Score> scores;
    // Allocated here: nothing may throw inside the OpenMP region below.
    std::vector<std::vector<double>> scratch(static_cast<size_t>(n_threads),
                                             std::vector<double>(static_cast<size_t>(V)));
    int64_t top1 = 0, n_targets = 0, n_evaluated = 0;
    double nll_q = 0.0, nll_r = 0.0;
    for (int64_t c0 = 0; c0 < N; c0 += c) {
        const int64_t n = std::min(c, N - c0);
        n_evaluated += n;
        if (n <= k0) continue;  // a short last chunk: all context
        const std::span<const int32_t> chunk(ids.data() + c0, static_cast<size_t>(n));
        rq.reset();
        rr.reset();
        const std::vector<float> q = rq.eval(chunk, true);
        const std::vector<float> r = rr.eval(chunk, true);
        // The positions are independent: threads fill their slots, the sums below run in
        // order, so the result does not depend on the thread count.
        scores.assign(static_cast<size_t>(n - k0), Score{});
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 4)
        for (int64_t t = k0; t < n; ++t) {
            const int32_t next = t + 1 < n ? chunk[static_cast<size_t>(t + 1)] : -1;
            scores[static_cast<size_t>(t - k0)] = compare(q.data() + t * V, r.data() + t * V, V, next,
                                                          scratch[static_cast<size_t>(omp_get_thread_num())]);
        }
        for (int64_t t = k0; t < n; ++t) {
            const Score& s = scores[static_cast<size_t>(t - k0)];
            kl.push_back(s.kl);
            margin.push_back(s.margin);
            top1 += s.agree;
            if (t + 1 < n) {
                nll_q += s.nll_q;
                nll_r += s.nll_r;
                ++n_targets;
            }
        }
    }
    const double n_tok = static_cast<double>(kl.size());
    double mean = 0.0;
    for (double v : kl) mean += v;
    mean /= n_tok;
    std::vector<double> sorted = kl;
    std::sort(sorted.begin(), sorted.end());
    // Nearest-rank 99th percentile.
    const size_t rank = static_cast<size_t>(std::ceil(0.99 * n_tok));
    const double p99 = sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
    const double agree = static_cast<double>(top1) / n_tok;
    // Binomial standard error of the agreement: how far the same text length could move it.
    const double agree_se = std::sqrt(agree * (1.0 - agree) / n_tok);
    const double ppl_q = n_targets ? std::exp(nll_q / static_cast<double>(n_targets)) : 0.0;
    const double ppl_r = n_targets ? std::exp(nll_r / static_cast<double>(n_targets)) : 0.0;
    const double ratio = ppl_r > 0 ? ppl_q / ppl_r : 0.0;
    std::sort(margin.begin(), margin.end());
    const double margin_median = margin[margin.size() / 2];
    const std::string scoring = k0 == 0 ? "every position of each chunk"
                                        : "positions " + std::to_string(k0) + ".. of each chunk (the first " +
                                              std::to_string(k0) + " are context only)";
    if (a.json) {
        nlohmann::json j = {{"model", a.m.model},        {"reference", a.reference}, {"tokens", kl.size()},
                            {"chunk", c},                {"score_from", k0},         {"tokens_evaluated", n_evaluated},
                            {"scoring", scoring},        {"kld_mean", mean},         {"kld_p99", p99},
                            {"top1_agreement", agree},   {"top1_agreement_se", agree_se},
                            {"ppl", ppl_q},              {"ppl_reference", ppl_r},   {"ppl_ratio", ratio},
                            {"targets", n_targets},      {"ref_top1_margin_median", margin_median}};
        std::printf("%s\n", j.dump(2).c_str());
    } else {
        std::printf("tokens          %zu scored of %lld (chunks of %lld; scored: %s)\n", kl.size(),
                    static_cast<long long>(n_evaluated), static_cast<long long>(c), scoring.c_str());
        std::printf("mean KLD        %.6f\n", mean);
        std::printf("99%% KLD         %.6f\n", p99);
        std::printf("top-1 agreement %.2f%% (standard error %.2f%%)\n", 100.0 * agree, 100.0 * agree_se);
        std::printf("ppl quant/ref   %.4f / %.4f = %.4f\n", ppl_q, ppl_r, ratio);
        std::printf("ref top-1 margin (median logit gap) %.4f\n", margin_median);
    }
    return 0;
}

Registrar reg{"kld", "KL divergence of a quantized model against a reference", [](CLI::App& app) {
    auto a = std::make_shared<Args>();
    a->m.add_to(app);
    a->m.n_ctx = 512;
    app.add_option("--reference", a->reference, "Reference GGUF (e.g. the f32 file)")->required();
    a->src.add_to(app);
    app.add_option("--score-from", a->score_from,
                   "Score positions K.. of each chunk only; the first K are context (default 0: every position; "
                   "llama.cpp's perplexity --kl-divergence uses -c/2)");
    app.add_flag("--json", a->json, "Print the results as JSON");
    return [a]() { return run_kld(*a); };
}};

}  // namespace
}  // namespace ds3::cli
