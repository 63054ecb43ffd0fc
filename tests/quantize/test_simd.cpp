// Every SIMD kernel this CPU can run against the scalar reference, on odd sizes: the
// activation quantisers byte for byte, the K-quant dots bit for bit, the Q8_0 / Q4_0
// dots within the float-reordering bound of docs/quantization.md.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>

#include "quant_test_util.h"
#include "quantize/blocks.h"
#include "quantize/float.h"
#include "quantize/formats.h"
#include "quantize/simd.h"

using namespace ds3;
using namespace ds3::quant;

namespace {

const SimdLevel kSimd[] = {SimdLevel::avx2, SimdLevel::avx512};
const int64_t kBlockCounts[] = {1, 2, 3, 7, 33};  // odd counts (and the AVX-512 pair + tail)

// Random bytes for a row of t whose f16 scales are finite (any other byte pattern is a
// valid block): exercises every level and scale bit, -128 in Q8_0 included.
std::vector<uint8_t> random_row(TypeId t, int64_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    auto buf = test::row_buffer(t, n);
    for (auto& b : buf) b = static_cast<uint8_t>(rng());
    const TypeTraits& tr = type_traits(t);
    auto half = [&]() { return f32_to_f16(std::ldexp(static_cast<float>(rng() % 2000) / 1000.0f - 1.0f, -4)); };
    for (int64_t i = 0; i < n / tr.block_size; ++i) {
        uint8_t* blk = buf.data() + i * tr.type_size;
        auto put = [&](size_t off) {
            const uint16_t h = half();
            std::memcpy(blk + off, &h, 2);
        };
        switch (t) {
            case TypeId::Q8_0:
            case TypeId::Q4_0: put(0); break;
            case TypeId::Q4_K: put(0); put(2); break;
            case TypeId::Q6_K: put(offsetof(BlockQ6_K, d)); break;
            default: break;
        }
    }
    return buf;
}

std::vector<uint8_t> activations(TypeId at, int64_t n, uint64_t seed) {
    auto x = test::gaussian(static_cast<size_t>(n), seed, 2.0f);
    for (size_t i = 0; i < x.size(); i += 37) x[i] = 0.0f;  // zeros and a zero block at the end
    auto buf = test::row_buffer(at, n);
    type_traits(at).from_float_ref(x.data(), buf.data(), n, nullptr);
    return buf;
}

}  // namespace

TEST_CASE("SIMD level detection", "[simd]") {
    CHECK(simd_level_available(SimdLevel::scalar));
    CHECK(simd_level_available(simd_level()));
    for (SimdLevel l : kSimd) {
        if (!simd_level_available(l)) {
            CHECK(vec_dot_kernel(TypeId::Q8_0, l) == nullptr);
            WARN(std::string(simd_level_name(l)) + " not available here: its kernels are not tested");
        }
    }
    // Types without a kernel at a level report none (the dispatch then falls back).
    CHECK(vec_dot_kernel(TypeId::Q5_K, SimdLevel::avx2) == nullptr);
    CHECK(vec_dot_kernel(TypeId::Q5_K, SimdLevel::scalar) == &q5_K_vec_dot_ref);
}

TEST_CASE("SIMD activation quantisers equal the reference byte for byte", "[simd]") {
    for (TypeId t : {TypeId::Q8_0, TypeId::Q8_K}) {
        const int64_t bs = type_traits(t).block_size;
        for (SimdLevel l : kSimd) {
            FromFloatFn f = from_float_kernel(t, l);
            if (!simd_level_available(l)) continue;
            REQUIRE(f != nullptr);
            for (int64_t nb : kBlockCounts) {
                INFO(std::string(type_traits(t).name) + " " + std::string(simd_level_name(l)) + " blocks " + std::to_string(nb));
                const int64_t n = nb * bs;
                auto x = test::gaussian(static_cast<size_t>(n), static_cast<uint64_t>(nb) * 31, 0.7f);
                // Hard cases: a zero block, a block whose +max and -max tie (first one wins),
                // exact .5 ties after scaling, a single non-zero element.
                std::fill(x.begin(), x.begin() + bs, 0.0f);
                if (nb > 1) {
                    x[static_cast<size_t>(bs + 3)] = -5.0f;
                    x[static_cast<size_t>(bs + 9)] = 5.0f;
                }
                if (nb > 2) {
                    for (int64_t i = 0; i < bs; ++i) x[static_cast<size_t>(2 * bs + i)] = 0.5f * static_cast<float>(i % 9) - 2.0f;
                    x[static_cast<size_t>(2 * bs)] = 127.0f;
                }
                if (nb > 3) {
                    std::fill(x.begin() + 3 * bs, x.begin() + 4 * bs, 0.0f);
                    x[static_cast<size_t>(3 * bs + 1)] = -1e-3f;
                }
                auto a = test::row_buffer(t, n), b = test::row_buffer(t, n);
                type_traits(t).from_float_ref(x.data(), a.data(), n, nullptr);
                f(x.data(), b.data(), n, nullptr);
                CHECK(a == b);
            }
        }
    }
}

TEST_CASE("SIMD K-quant dots equal the reference bit for bit", "[simd]") {
    for (TypeId t : {TypeId::Q4_K, TypeId::Q6_K}) {
        const VecDotFn ref = vec_dot_kernel(t, SimdLevel::scalar);
        for (SimdLevel l : kSimd) {
            if (!simd_level_available(l)) continue;
            const VecDotFn f = vec_dot_kernel(t, l);
            REQUIRE(f != nullptr);
            for (int64_t nb : kBlockCounts) {
                INFO(std::string(type_traits(t).name) + " " + std::string(simd_level_name(l)) + " blocks " + std::to_string(nb));
                const int64_t n = nb * 256;
                const auto act = activations(TypeId::Q8_K, n, 100 + static_cast<uint64_t>(nb));
                const auto w1 = random_row(t, n, 7 + static_cast<uint64_t>(nb));  // every bit pattern
                const auto x = test::gaussian(static_cast<size_t>(n), 8);
                auto w2 = test::row_buffer(t, n);  // a realistic row
                quantize_row(t, x.data(), w2.data(), n);
                const std::vector<uint8_t>* rows[] = {&w1, &w2};
                for (const std::vector<uint8_t>* w : rows) {
                    const float r = ref(n, w->data(), act.data());
                    const float s = f(n, w->data(), act.data());
                    CHECK(f32_bits(r) == f32_bits(s));
                }
            }
        }
    }
}

// Q8_0 / Q4_0: the integer sum of every block is exact, but the SIMD kernels add the
// per-block terms t_b = isum_b·d_b in vector lanes. Both orders are recursive sums of the
// same m = blocks terms, each within (m - 1)·u·Σ|t_b| of the exact sum (u = 2^-24), and
// the products d_x·d_y·isum round once more: |simd - ref| ≤ 2·(m + 1)·u·Σ|t_b|.
TEST_CASE("SIMD Q8_0 / Q4_0 dots equal the reference within the reordering bound", "[simd]") {
    for (TypeId t : {TypeId::Q8_0, TypeId::Q4_0}) {
        const VecDotFn ref = vec_dot_kernel(t, SimdLevel::scalar);
        const int64_t wb = type_traits(t).type_size;
        for (SimdLevel l : kSimd) {
            if (!simd_level_available(l)) continue;
            const VecDotFn f = vec_dot_kernel(t, l);
            REQUIRE(f != nullptr);
            for (int64_t nb : kBlockCounts) {
                INFO(std::string(type_traits(t).name) + " " + std::string(simd_level_name(l)) + " blocks " + std::to_string(nb));
                const int64_t n = nb * 32;
                const auto act = activations(TypeId::Q8_0, n, 200 + static_cast<uint64_t>(nb));
                const auto w = random_row(t, n, 17 + static_cast<uint64_t>(nb));
                double sum_abs = 0;
                for (int64_t b = 0; b < nb; ++b)
                    sum_abs += std::fabs(ref(32, w.data() + b * wb, act.data() + b * 34));
                const double bound = 2.0 * static_cast<double>(nb + 1) * std::ldexp(1.0, -24) * sum_abs;
                const float r = ref(n, w.data(), act.data());
                const float s = f(n, w.data(), act.data());
                CHECK(std::fabs(static_cast<double>(r) - s) <= bound);
            }
        }
    }
}

TEST_CASE("the table's kernels are the dispatched ones", "[simd]") {
    const int64_t n = 256 * 3;
    const auto x = test::gaussian(static_cast<size_t>(n), 1);
    for (TypeId t : {TypeId::Q8_0, TypeId::Q4_0, TypeId::Q4_K, TypeId::Q6_K}) {
        INFO(type_traits(t).name);
        const TypeId at = type_traits(t).vec_dot_type;
        auto w = test::row_buffer(t, n), a = test::row_buffer(at, n);
        quantize_row(t, x.data(), w.data(), n);
        type_traits(at).from_float(x.data(), a.data(), n, nullptr);
        VecDotFn best = nullptr;
        for (SimdLevel l = simd_level();; l = l == SimdLevel::avx512 ? SimdLevel::avx2 : SimdLevel::scalar) {
            if ((best = vec_dot_kernel(t, l))) break;
            if (l == SimdLevel::scalar) break;
        }
        REQUIRE(best != nullptr);
        CHECK(f32_bits(type_traits(t).vec_dot(n, w.data(), a.data())) == f32_bits(best(n, w.data(), a.data())));
    }
}
