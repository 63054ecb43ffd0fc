// `ds3 imatrix -m MODEL (-f TEXT | --tokens IDS | --tokens-file F) -o FILE [-c N]
// [--chunks K]`: runs the model over the calibration tokens in chunks of N (each from an
// empty cache) and writes the importance matrix (quantize/imatrix.h) for `ds3 quantize
// --imatrix`.
#include <cstdio>
#include <filesystem>

#include "cli/command.h"
#include "cli/model_args.h"
#include "cli/token_source.h"
#include "models/runner.h"
#include "quantize/imatrix.h"
#include "runtime/error.h"
#include "runtime/signals.h"

namespace ds3::cli {
namespace {

struct Args {
    ModelArgs m;
    TokenSource src;
    std::string out;
    int64_t chunks = 0;
};

int run_imatrix(Args a) {
    if (a.m.n_ctx < 2) throw Error("cli", "imatrix: -c must be at least 2");
    if (a.chunks < 0) throw Error("cli", "imatrix: --chunks must be non-negative");
    // The statistics come from the CPU backend's product hooks: another backend would
    // collect nothing, so it is refused rather than ignored.
    if (a.m.backend != "cpu")
        throw Error("cli", "imatrix: statistics are collected on the CPU backend only (--backend " + a.m.backend +
                               " is not supported)");
    const std::vector<int32_t> ids = a.src.load(a.m.model, "imatrix");
    const int64_t c = a.m.n_ctx;
    int64_t n_chunks = static_cast<int64_t>(ids.size()) / c;
    if (n_chunks == 0) {
        if (static_cast<int64_t>(ids.size()) < 2)
            throw Error("cli", "imatrix: " + std::to_string(ids.size()) + " tokens, need at least 2");
        n_chunks = 1;  // shorter than one chunk: use what there is
    }
    if (a.chunks > 0) n_chunks = std::min(n_chunks, a.chunks);
    install_interrupt_handler();
    Deepseek2Model model = load_deepseek2(a.m.model);
    BackendOptions bo;
    bo.n_threads = a.m.threads;
    auto backend = create_backend("cpu", bo);
    Runner runner(model, {backend.get()}, c);
    quant::Imatrix im;
    im.dataset = a.src.text_file.empty() ? (a.src.tokens_file.empty() ? "--tokens" : std::filesystem::path(a.src.tokens_file).filename().string())
                                         : std::filesystem::path(a.src.text_file).filename().string();
    {
        const gguf::File f = gguf::File::open(a.m.model);
        im.model = f.get_string("general.name", std::filesystem::path(a.m.model).filename().string());
    }
    quant::ImatrixCollector col(model, im, a.m.threads);
    col.attach(runner);
    for (int64_t k = 0; k < n_chunks; ++k) {
        const int64_t n = std::min<int64_t>(c, static_cast<int64_t>(ids.size()) - k * c);
        runner.reset();
        runner.eval(std::span<const int32_t>(ids.data() + k * c, static_cast<size_t>(n)), true);
        im.n_tokens += static_cast<uint64_t>(n);
        std::fprintf(stderr, "\rimatrix: chunk %lld/%lld", static_cast<long long>(k + 1), static_cast<long long>(n_chunks));
    }
    runner.set_observer({});
    im.chunk_count = static_cast<uint64_t>(n_chunks);
    im.chunk_size = static_cast<uint64_t>(c);
    im.save(a.out);
    std::fprintf(stderr, "\nimatrix: %llu tokens, %zu matrices -> %s\n", static_cast<unsigned long long>(im.n_tokens),
                 im.entries.size(), a.out.c_str());
    return 0;
}

Registrar reg{"imatrix", "Collect an importance matrix for ds3 quantize --imatrix", [](CLI::App& app) {
    auto a = std::make_shared<Args>();
    a->m.add_to(app);
    a->m.n_ctx = 512;
    a->src.add_to(app);
    app.add_option("-o,--output", a->out, "Output imatrix file (GGUF)")->required();
    app.add_option("--chunks", a->chunks, "At most this many chunks of -c tokens (0: all)");
    return [a]() { return run_imatrix(*a); };
}};

}  // namespace
}  // namespace ds3::cli
