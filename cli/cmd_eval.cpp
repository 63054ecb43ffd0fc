// `ds3 eval`: logits of a token sequence, for conformance checks against goldens.
//   ds3 eval -m MODEL --tokens 0,15,27 --logits-out FILE [--incremental] [--backend cpu]
//            [-c N] [--threads N] [--dump NAMES --dump-dir DIR]
// FILE: raw little-endian float32 [n_tokens][n_vocab]. --incremental feeds the tokens
// one at a time through the KV cache instead of one batch. --dump writes each named
// intermediate to DIR/NAME.f32 ([n_tokens][cols] float32).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "cli/command.h"
#include "cli/model_args.h"
#include "models/runner.h"
#include "runtime/error.h"

namespace ds3::cli {

namespace {

// Writes bytes to path through a temporary name, so a failure never leaves a partial file.
void write_atomic(const std::string& path, const void* data, size_t n) {
    const std::string tmp = path + ".tmp";
    std::error_code ec;
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw Error("cli", "cannot write " + tmp);
        f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
        f.close();
        if (!f) {
            std::filesystem::remove(tmp, ec);
            throw Error("cli", "write to " + tmp + " failed");
        }
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        const std::string why = ec.message();
        std::filesystem::remove(tmp, ec);
        throw Error("cli", "cannot rename " + tmp + " to " + path + ": " + why);
    }
}

struct EvalArgs {
    ModelArgs m;
    std::string tokens;
    std::string logits_out;
    bool incremental = false;
    std::string dump;
    std::string dump_dir;
};

int run_eval(const EvalArgs& a) {
    const std::vector<int32_t> ids = parse_token_ids(a.tokens);
    std::vector<std::string> dump;
    if (!a.dump.empty()) {
        std::stringstream ss(a.dump);
        std::string item;
        while (std::getline(ss, item, ','))
            if (!item.empty()) dump.push_back(item);
        if (a.dump_dir.empty()) throw Error("cli", "--dump needs --dump-dir");
        std::filesystem::create_directories(a.dump_dir);
    }
    Deepseek2Model model = load_deepseek2(a.m.model);
    BackendOptions bo;
    bo.n_threads = a.m.threads;
    auto backend = create_backend(a.m.backend, bo);
    Runner runner(model, {backend.get()}, a.m.n_ctx);

    std::vector<float> logits;
    std::map<std::string, std::vector<float>> dumped, step;
    if (a.incremental) {
        for (size_t i = 0; i < ids.size(); ++i) {
            auto l = runner.eval(std::span<const int32_t>(&ids[i], 1), true, dump, &step);
            logits.insert(logits.end(), l.begin(), l.end());
            for (auto& [k, v] : step) dumped[k].insert(dumped[k].end(), v.begin(), v.end());
        }
    } else {
        logits = runner.eval(ids, true, dump, &dumped);
    }
    write_atomic(a.logits_out, logits.data(), logits.size() * sizeof(float));
    for (const auto& [name, v] : dumped)
        write_atomic((std::filesystem::path(a.dump_dir) / (name + ".f32")).string(), v.data(), v.size() * sizeof(float));
    std::fprintf(stderr, "eval: %zu tokens, %lld logits each -> %s\n", ids.size(),
                 static_cast<long long>(runner.n_vocab()), a.logits_out.c_str());
    return 0;
}

Registrar reg{"eval", "Compute the logits of a token sequence (conformance checks)", [](CLI::App& app) {
    auto a = std::make_shared<EvalArgs>();
    a->m.add_to(app);
    app.add_option("--tokens", a->tokens, "Comma-separated token ids")->required();
    app.add_option("--logits-out", a->logits_out, "Output: raw float32 [n_tokens][n_vocab]")->required();
    app.add_flag("--incremental", a->incremental, "Feed tokens one at a time through the KV cache");
    app.add_option("--dump", a->dump, "Comma-separated intermediates to write (e.g. l0.kv_latent,l2.resid)");
    app.add_option("--dump-dir", a->dump_dir, "Directory for --dump (NAME.f32, [n_tokens][cols])");
    return [a]() { return run_eval(*a); };
}};

}  // namespace
}  // namespace ds3::cli
