// `ds3 run`: generate tokens from a prompt.
//   ds3 run -m MODEL --tokens IDS [-n N] [--temp 0] [--print-ids]
//   ds3 run -m MODEL -p TEXT [--chat] [sampling options] [--print-ids]
// A text prompt goes through the shared generation loop (run_text in cmd_chat.cpp,
// docs/chat.md); --tokens runs stay the greedy id path below.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "cli/command.h"
#include "cli/generate_args.h"
#include "cli/model_args.h"
#include "models/runner.h"
#include "runtime/error.h"

namespace ds3::cli {
namespace {

struct RunArgs {
    ModelArgs m;
    std::string tokens;
    int64_t n_predict = 32;
    double temp = 0.0;
    bool print_ids = false;
    TextRunArgs text;  // -p TEXT [--chat]: the text path (cmd_chat.cpp)
};

// The prompt as ids: from --tokens now; a text prompt would be tokenized here.
std::vector<int32_t> prompt_ids(const RunArgs& a) {
    if (a.tokens.empty()) throw Error("cli", "run: give the prompt with -p TEXT or --tokens IDS");
    return parse_token_ids(a.tokens);
}

int run_run(const RunArgs& a) {
    if (a.text.given()) return run_text(a.m, a.text, a.temp, a.n_predict, a.print_ids);
    if (a.temp != 0.0) throw Error("cli", "run: only greedy decoding (--temp 0) is implemented so far");
    if (!a.print_ids) throw Error("cli", "run: without a tokenizer only --print-ids output is available");
    const std::vector<int32_t> prompt = prompt_ids(a);
    if (a.n_predict < 0) throw Error("cli", "run: -n must be non-negative");
    // The last generated token is never fed back, so the cache needs prompt + n - 1.
    const int64_t needed = static_cast<int64_t>(prompt.size()) + std::max<int64_t>(a.n_predict - 1, 0);
    if (needed > a.m.n_ctx)
        throw Error("cli", "run: " + std::to_string(prompt.size()) + " prompt tokens + " + std::to_string(a.n_predict) +
                               " new ones need a context of " + std::to_string(needed) + ", -c is " +
                               std::to_string(a.m.n_ctx));
    Deepseek2Model model = load_deepseek2(a.m.model);
    BackendOptions bo;
    bo.n_threads = a.m.threads;
    auto backend = create_backend(a.m.backend, bo);
    Runner runner(model, {backend.get()}, a.m.n_ctx);
    // Prompt in one batch, then one token at a time (generate_greedy's steps, timed).
    using clock = std::chrono::steady_clock;
    std::vector<int32_t> out;
    const auto t0 = clock::now();
    std::span<const float> logits = runner.eval_last(prompt);
    const auto t1 = clock::now();
    for (int64_t i = 0; i < a.n_predict; ++i) {
        const int32_t next = argmax(logits);
        out.push_back(next);
        if (i + 1 < a.n_predict) logits = runner.eval_last(std::span<const int32_t>(&next, 1));
    }
    const auto t2 = clock::now();
    const double tp = std::chrono::duration<double>(t1 - t0).count();
    const double td = std::chrono::duration<double>(t2 - t1).count();
    const int64_t n_dec = std::max<int64_t>(a.n_predict - 1, 0);
    std::fprintf(stderr, "run: prompt %zu tokens in %.3f s (%.2f tok/s); decode %lld tokens in %.3f s (%.2f tok/s)\n",
                 prompt.size(), tp, static_cast<double>(prompt.size()) / tp, static_cast<long long>(n_dec), td,
                 n_dec > 0 ? static_cast<double>(n_dec) / td : 0.0);
    std::string line;
    for (size_t i = 0; i < out.size(); ++i) line += (i ? "," : "") + std::to_string(out[i]);
    std::printf("%s\n", line.c_str());
    return 0;
}

Registrar reg{"run", "Generate tokens from a prompt", [](CLI::App& app) {
    auto a = std::make_shared<RunArgs>();
    a->m.add_to(app);
    app.add_option("--tokens", a->tokens, "Prompt as comma-separated token ids");
    app.add_option("-n,--n-predict", a->n_predict, "Number of tokens to generate");
    app.add_option("--temp", a->temp, "Sampling temperature (0: greedy)");
    app.add_flag("--print-ids", a->print_ids, "Print the generated ids, comma-separated, on one line");
    a->text.add_to(app);
    return [a]() { return run_run(*a); };
}};

}  // namespace
}  // namespace ds3::cli
