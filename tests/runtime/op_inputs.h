// Random inputs of the op tests (CPU kernels in tests/runtime, CUDA ops in tests/cuda):
// normal-distributed vectors from a fixed seed, and weights stored in F32, BF16 or F16.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quantize/types.h"
#include "runtime/weights.h"

namespace ds3::test {

// n values from N(0, scale²), the same for the same seed.
std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f);

// Stores `v` as a weight of `type` (F32, BF16 or F16) and rounds `v` in place to the
// values it really holds, so a reference computed from `v` sees the stored weights.
const Weight& add_weight(WeightStore& s, const std::string& name, TypeId type, std::vector<int64_t> ne,
                         std::vector<float>& v);
// The same for values the caller does not keep.
inline const Weight& add_weight(WeightStore& s, const std::string& name, TypeId type, std::vector<int64_t> ne,
                                std::vector<float>&& v) {
    return add_weight(s, name, type, std::move(ne), v);
}

}  // namespace ds3::test
