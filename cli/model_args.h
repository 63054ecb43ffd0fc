// Options shared by the commands that run a model (eval, run): the model path, backend,
// context size and threads, and the token-id list parser.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <climits>
#include <sstream>

#include "runtime/error.h"

#include "backends/backend.h"

namespace ds3::cli {

struct ModelArgs {
    std::string model;
    std::string backend = "cpu";
    int64_t n_ctx = 4096;
    int threads = 0;

    void add_to(CLI::App& app) {
        app.add_option("-m,--model", model, "Model file (GGUF)")->required();
        app.add_option("--backend", backend, "Backend: cpu, or cuda (a CUDA build with an NVIDIA GPU)");
        app.add_option("-c,--ctx-size", n_ctx, "Context size in tokens (the KV cache)");
        app.add_option("-t,--threads", threads, "CPU threads (0: all)");
    }
};

// "0,15,27" → {0, 15, 27}; throws Error("cli", ...) on anything else.
inline std::vector<int32_t> parse_token_ids(const std::string& s) {
    std::vector<int32_t> ids;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        size_t used = 0;
        long long v = 0;
        try {
            v = std::stoll(item, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != item.size() || v < 0 || v > INT32_MAX)
            throw Error("cli", "--tokens: expected comma-separated non-negative ids, found '" + item + "'");
        ids.push_back(static_cast<int32_t>(v));
    }
    if (ids.empty()) throw Error("cli", "--tokens: no token ids given");
    return ids;
}

}  // namespace ds3::cli
