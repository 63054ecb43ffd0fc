// Helpers of the quantization tests: seeded random rows and byte buffers of whole rows.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "quantize/types.h"

namespace ds3::test {

inline std::vector<float> gaussian(size_t n, uint64_t seed, float sigma = 1.0f) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, sigma);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}

inline std::vector<uint8_t> row_buffer(TypeId t, int64_t n) {
    const TypeTraits& tr = type_traits(t);
    return std::vector<uint8_t>(static_cast<size_t>(n / tr.block_size * tr.type_size));
}

}  // namespace ds3::test
