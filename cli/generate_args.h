// Options shared by the commands that generate text (`run -p`, `chat`): sampling
// overrides on top of the file's generation defaults, and the text path of `ds3 run`
// (implemented in cmd_chat.cpp next to the chat, which shares its setup).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/model_args.h"
#include "runtime/sampling.h"

namespace ds3::gguf {
class File;
}

namespace ds3::cli {

// Each option overrides the file's default (sampling_defaults) only when given.
struct SamplingArgs {
    double temp = 0.0;
    int64_t n_predict = -1;
    int32_t top_k = 0;
    double top_p = 1.0, min_p = 0.0;
    double repeat_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0;
    int32_t repeat_last_n = 64;
    uint64_t seed = 0;
    std::vector<std::string> stop;
    bool ignore_eos = false;
    // Set by add_to; --temp and -n may be declared by the command itself (`run` has them).
    CLI::Option *o_temp = nullptr, *o_n = nullptr, *o_top_k = nullptr, *o_top_p = nullptr, *o_min_p = nullptr,
                *o_rep = nullptr, *o_pres = nullptr, *o_freq = nullptr, *o_last_n = nullptr, *o_seed = nullptr;

    // Declares the options; with own_temp_n false, --temp and -n are left to the caller.
    void add_to(CLI::App& app, bool own_temp_n);
    // File defaults + the given options; a random seed when --seed is absent.
    SamplingParams resolve(const gguf::File& f) const;
};

// `ds3 run -p TEXT [--chat [--system S]]`: the text path of `run`.
struct TextRunArgs {
    std::string prompt;
    bool chat = false;
    std::string system;
    SamplingArgs s;
    CLI::Option* o_prompt = nullptr;

    // Declares -p, --chat, --system and the sampling options other than --temp and -n,
    // which `run` declares itself.
    void add_to(CLI::App& app);
    bool given() const { return o_prompt && o_prompt->count() > 0; }
};

// Runs the text path. temp / n_predict: the values of `run`'s own --temp and -n (used only
// when given); print_ids prints the generated ids instead of the text.
int run_text(const ModelArgs& m, TextRunArgs t, double temp, int64_t n_predict, bool print_ids);

}  // namespace ds3::cli
