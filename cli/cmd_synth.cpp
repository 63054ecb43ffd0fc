// `ds3 synth --preset NAME -o DIR [--seed N] [--tokenizer DIR] [--layers N]`: a random-weight
// checkpoint in the layout of a DeepSeek Hugging Face release (see convert/synth.h).
#include <cstdio>

#include "cli/command.h"
#include "convert/synth.h"
#include "runtime/progress.h"

namespace {

struct Args {
    std::string preset;
    std::string out;
    uint64_t seed = 0;
    std::string tokenizer;
    uint64_t layers = 0;
    bool list = false;
};

ds3::cli::Registrar reg{"synth", "Write a random-weight checkpoint in the Hugging Face release layout", [](CLI::App& sub) {
    auto a = std::make_shared<Args>();
    sub.add_option("--preset", a->preset, "Model shape (--list shows them)");
    sub.add_option("-o,--output", a->out, "Output directory");
    sub.add_option("--seed", a->seed, "Random seed (default 0); the same seed gives the same files");
    sub.add_option("--tokenizer", a->tokenizer, "Copy tokenizer.json and tokenizer_config.json from this directory");
    sub.add_option("--layers", a->layers, "Main layers instead of the preset's (MTP layers are kept)");
    sub.add_flag("--list", a->list, "List the presets");
    return [a]() {
        if (a->list) {
            for (const auto& p : ds3::hf::synth_presets()) std::printf("%-16s %s\n", p.name.c_str(), p.description.c_str());
            return 0;
        }
        if (a->preset.empty() || a->out.empty()) {
            std::fprintf(stderr, "ds3 synth: --preset and -o are required (--list shows the presets)\n");
            return 2;
        }
        ds3::hf::SynthOptions o{a->preset, a->out, a->seed, a->tokenizer, a->layers};
        const auto s = ds3::hf::synth(o);
        std::fprintf(stderr, "synth: wrote %s: %zu tensors, %s\n", a->out.c_str(), s.n_tensors,
                     ds3::format_bytes(double(s.bytes)).c_str());
        return 0;
    };
}};

}  // namespace
