// `ds3 kld -m QUANT.gguf --reference REF.gguf (-f TEXT | --tokens IDS | --tokens-file F)
// [-c N] [--json]`: runs both models on the same tokens (chunks of N, each from an empty
// cache) and compares their next-token distributions: mean and 99th-percentile
// KL(ref || quant) per token, top-1 agreement, and the perplexity of each over the
// chunk's next-token targets with their ratio ppl(quant) / ppl(ref); also the median gap
// between the reference's two best logits (how easily a small change flips top-1).
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
    bool json = false;
};

// log-softmax of one row, in double.
void log_softmax(const float* x, int64_t n, std::vector<double>& out) {
    out.resize(static_cast<size_t>(n));
    const double mx = *std::max_element(x, x + n);
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - mx);
    const double lse = mx + std::log(s);
    for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<double>(x[i]) - lse;
}

int run_kld(const Args& a) {
    if (a.m.n_ctx < 2) throw Error("cli", "kld: -c must be at least 2");
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
    const int64_t c = a.m.n_ctx, V = qm.hp.n_vocab, N = static_cast<int64_t>(ids.size());
    Runner rq(qm, {backend.get()}, c), rr(rm, {backend.get()}, c);

    std::vector<double> kl, lq, lr;
    std::vector<double> margin;  // reference's top-1 minus top-2 logit: how easily top-1 flips
    int64_t top1 = 0, n_targets = 0;
    double nll_q = 0.0, nll_r = 0.0;
    for (int64_t c0 = 0; c0 < N; c0 += c) {
        const int64_t n = std::min(c, N - c0);
        if (n < 1) break;
        const std::span<const int32_t> chunk(ids.data() + c0, static_cast<size_t>(n));
        rq.reset();
        rr.reset();
        const std::vector<float> q = rq.eval(chunk, true);
        const std::vector<float> r = rr.eval(chunk, true);
        for (int64_t t = 0; t < n; ++t) {
            const float* qt = q.data() + t * V;
            const float* rt = r.data() + t * V;
            log_softmax(qt, V, lq);
            log_softmax(rt, V, lr);
            double k = 0.0;
            for (int64_t i = 0; i < V; ++i) {
                const double p = std::exp(lr[static_cast<size_t>(i)]);
                k += p * (lr[static_cast<size_t>(i)] - lq[static_cast<size_t>(i)]);
            }
            kl.push_back(std::max(k, 0.0));  // rounding can leave -1e-17 for identical rows
            double b1 = -1e300, b2 = -1e300;
            for (int64_t i = 0; i < V; ++i) {
                const double v = rt[i];
                if (v > b1) b2 = b1, b1 = v;
                else if (v > b2) b2 = v;
            }
            margin.push_back(b1 - b2);
            top1 += argmax(std::span<const float>(qt, static_cast<size_t>(V))) ==
                    argmax(std::span<const float>(rt, static_cast<size_t>(V)));
            if (t + 1 < n) {
                const int32_t y = chunk[static_cast<size_t>(t + 1)];
                nll_q -= lq[static_cast<size_t>(y)];
                nll_r -= lr[static_cast<size_t>(y)];
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
    const double ppl_q = n_targets ? std::exp(nll_q / static_cast<double>(n_targets)) : 0.0;
    const double ppl_r = n_targets ? std::exp(nll_r / static_cast<double>(n_targets)) : 0.0;
    const double ratio = ppl_r > 0 ? ppl_q / ppl_r : 0.0;
    std::sort(margin.begin(), margin.end());
    const double margin_median = margin[margin.size() / 2];
    if (a.json) {
        nlohmann::json j = {{"model", a.m.model},        {"reference", a.reference}, {"tokens", kl.size()},
                            {"chunk", c},                {"kld_mean", mean},         {"kld_p99", p99},
                            {"top1_agreement", agree},   {"ppl", ppl_q},             {"ppl_reference", ppl_r},
                            {"ppl_ratio", ratio},        {"targets", n_targets},
                            {"ref_top1_margin_median", margin_median}};
        std::printf("%s\n", j.dump(2).c_str());
    } else {
        std::printf("tokens          %zu (chunks of %lld)\n", kl.size(), static_cast<long long>(c));
        std::printf("mean KLD        %.6f\n", mean);
        std::printf("99%% KLD         %.6f\n", p99);
        std::printf("top-1 agreement %.2f%%\n", 100.0 * agree);
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
    app.add_flag("--json", a->json, "Print the results as JSON");
    return [a]() { return run_kld(*a); };
}};

}  // namespace
}  // namespace ds3::cli
