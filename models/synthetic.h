// Synthetic models in memory: random weights of any type (a plain type or a mix of
// quantize/mixes.h, chosen per tensor exactly as `ds3 quantize` would) in the shape of a
// preset (models/presets.h), bound like a loaded file — for `ds3 bench --synthetic`,
// which runs the real V3 / Kimi-K2 shapes without their 400+ GB on disk.
//
// The generator (docs/performance.md "Benchmarks"): per weight type, a seed of 64 Ki
// values ~ N(0, 0.02²) (the usual init scale) is quantised with the type's own quantiser,
// so every block has sane d/dmin; a pool of up to 512 MiB is filled with 4 KiB runs of
// whole blocks copied from random places in the seed. Each large tensor is then a range
// of its own addresses onto which the pool is mapped again and again (memfd +
// MAP_FIXED), starting at a random pool offset: building takes well under a second,
// host memory is the pools only, yet every tensor has distinct addresses (a device
// backend keeps one resident copy per address, so the GPU holds and reads the full
// model's bytes) and the CPU streams at least a pool's worth of distinct memory, far
// beyond any cache. Where memfd is missing the ranges are plain copies of the pool.
// Norms (1 ± 0.1), the router (N(0, 1/n_embd), so router logits are ~N(0, 1) and the
// choice of experts spreads over all of them, as a trained, load-balanced router does)
// and the routing bias (± 0.05) are F32 and generated one by one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "models/deepseek2.h"
#include "quantize/mixes.h"

namespace ds3 {

struct SyntheticOptions {
    std::string preset;          // a name of model_presets()
    std::string type = "bf16";   // a plain type or a mix: quant::parse_target
    int64_t layers = 0;          // main layers to keep (0: the preset's)
    uint64_t seed = 0;
};

struct SyntheticModel {
    std::shared_ptr<void> memory;  // the pools and mapped ranges; outlives `model`
    Deepseek2Model model;
    std::string preset;
    quant::Target target;
    int64_t n_layer_full = 0;  // the preset's main layers
    uint64_t weight_bytes = 0;
    size_t n_fallback = 0;     // matrices whose rows did not fit the wanted type
    bool aliased = false;      // pool mapped (memfd), not copied
    double build_seconds = 0;
};

// Throws Error("synthetic", ...) for an unknown type, Error("preset", ...) for an
// unknown preset.
SyntheticModel build_synthetic(const SyntheticOptions& o);
// The same from hyperparameters directly (tests); `name` is only recorded.
SyntheticModel build_synthetic(const Deepseek2HParams& hp, const quant::Target& target, uint64_t seed,
                               const std::string& name = "custom");

}  // namespace ds3
