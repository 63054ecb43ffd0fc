#include "op_inputs.h"

#include <cstring>
#include <random>

#include "quantize/float.h"

namespace ds3::test {

std::vector<float> randn(size_t n, uint32_t seed, float scale) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

const Weight& add_weight(WeightStore& s, const std::string& name, TypeId type, std::vector<int64_t> ne,
                         std::vector<float>& v) {
    std::vector<uint8_t> bytes(v.size() * (type == TypeId::F32 ? 4 : 2));
    for (size_t i = 0; i < v.size(); ++i) {
        if (type == TypeId::F32) {
            std::memcpy(bytes.data() + 4 * i, &v[i], 4);
        } else if (type == TypeId::BF16) {
            uint16_t h = f32_to_bf16(v[i]);
            v[i] = bf16_to_f32(h);
            std::memcpy(bytes.data() + 2 * i, &h, 2);
        } else {
            uint16_t h = f32_to_f16(v[i]);
            v[i] = f16_to_f32(h);
            std::memcpy(bytes.data() + 2 * i, &h, 2);
        }
    }
    return s.add_owned(name, type, ne, std::move(bytes));
}

}  // namespace ds3::test
