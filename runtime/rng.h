// SplitMix64: the one deterministic random generator of synthetic weights (ds3 synth, the
// in-memory models of ds3 bench). std:: distributions differ across standard libraries;
// this gives the same numbers on every platform for the same seed.
#pragma once

#include <cmath>
#include <cstdint>

namespace ds3 {

struct SplitMix64 {
    uint64_t s = 0;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // In (0, 1): never 0, so log(uniform01()) is finite.
    double uniform01() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1p-53; }
    // In (-a, a).
    float uniform(float a) { return static_cast<float>((uniform01() * 2.0 - 1.0) * a); }
    // N(0, sigma²), Box-Muller, one value per call.
    float normal(float sigma) {
        const double u = uniform01(), v = uniform01();
        return static_cast<float>(sigma * std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v));
    }
};

}  // namespace ds3
