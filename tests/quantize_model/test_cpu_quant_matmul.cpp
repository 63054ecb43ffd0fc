// The CPU backend's matmul with quantized weights against dequantise-then-f32-matmul.
// The only difference between the two is the activation side: the vec_dot path rounds
// each activation block to its vec_dot_type (Q8_0: 32 values, Q8_K: 256, step amax/127),
// so |y - y_ref| ≤ Σ_blocks (step_b / 2)·Σ_{i∈b} |w_i| plus float rounding of the sums.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "backends/cpu/ops.h"
#include "quantize/formats.h"
#include "quantize/types.h"
#include "runtime/weights.h"

using namespace ds3;

namespace {

std::vector<float> gauss(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}

// Bound on |Σ w·x − Σ w·x̂| for x̂ the activation row rounded to `act` blocks.
double act_bound(TypeId act, const float* w, const float* x, int64_t n) {
    if (act == TypeId::F32) return 0.0;
    const int64_t bs = type_traits(act).block_size;
    double b = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += bs) {
        double amax = 0.0, wsum = 0.0;
        for (int64_t i = i0; i < i0 + bs; ++i) {
            amax = std::max(amax, static_cast<double>(std::fabs(x[i])));
            wsum += std::fabs(w[i]);
        }
        b += amax / 127.0 / 2.0 * wsum;
    }
    return b * 1.01;  // the f16 rounding of Q8_0's stored scale
}

}  // namespace

TEST_CASE("cpu matmul: every quantized type against dequantise-then-f32", "[cpu][quant]") {
    const TypeId types[] = {TypeId::Q8_0, TypeId::Q4_0,  TypeId::Q2_K,   TypeId::Q3_K,          TypeId::Q4_K,
                            TypeId::Q5_K, TypeId::Q6_K, TypeId::IQ4_XS, TypeId::FP8_E4M3_B128, TypeId::F16};
    for (TypeId t : types) {
        const TypeTraits& tr = type_traits(t);
        INFO("type " << tr.name);
        REQUIRE(cpu::weight_type_supported(t));
        // 3 blocks of 256 (or 128 for FP8) per row: odd counts of blocks and rows.
        const int64_t in = 3 * std::max<int64_t>(256, tr.block_size), out = 37, n_mat = 2;
        for (int64_t n_rows : {int64_t{1}, int64_t{5}}) {
            INFO("rows " << n_rows);
            WeightStore store;
            const std::vector<float> wf = gauss(static_cast<size_t>(in * out * n_mat), 11 + static_cast<uint64_t>(t));
            const uint64_t rb = *type_nbytes(t, static_cast<uint64_t>(in));
            std::vector<uint8_t> bytes(static_cast<size_t>(rb * out * n_mat));
            for (int64_t r = 0; r < out * n_mat; ++r) quantize_row(t, wf.data() + r * in, bytes.data() + r * rb, in);
            const Weight& w = store.add_owned("w", t, {in, out, n_mat}, bytes);
            const std::vector<float> x = gauss(static_cast<size_t>(in * n_rows), 99);
            std::vector<float> deq(static_cast<size_t>(in));
            for (int64_t mat = 0; mat < n_mat; ++mat) {
                std::vector<float> y(static_cast<size_t>(n_rows * out));
                cpu::matmul(w, mat, x.data(), n_rows, y.data(), 2);
                for (int64_t o = 0; o < out; ++o) {
                    dequantize_row(t, w.row(o, mat), deq.data(), in);
                    for (int64_t r = 0; r < n_rows; ++r) {
                        double ref = 0.0, mag = 0.0;
                        for (int64_t i = 0; i < in; ++i) {
                            ref += static_cast<double>(deq[static_cast<size_t>(i)]) * x[static_cast<size_t>(r * in + i)];
                            mag += std::fabs(static_cast<double>(deq[static_cast<size_t>(i)]) * x[static_cast<size_t>(r * in + i)]);
                        }
                        const double bound = act_bound(tr.vec_dot_type, deq.data(), x.data() + r * in, in) + 4e-6 * mag;
                        const double got = y[static_cast<size_t>(r * out + o)];
                        if (!(std::fabs(got - ref) <= bound)) {
                            INFO("mat " << mat << " row " << o << " act " << r << ": " << got << " vs " << ref
                                        << " bound " << bound);
                            CHECK(std::fabs(got - ref) <= bound);
                        }
                    }
                }
            }
        }
    }
}

TEST_CASE("cpu get_rows and row dequantisation of quantized embeddings", "[cpu][quant]") {
    const int64_t in = 512, rows = 9;
    const std::vector<float> wf = gauss(static_cast<size_t>(in * rows), 5);
    for (TypeId t : {TypeId::Q4_K, TypeId::Q8_0, TypeId::Q6_K}) {
        INFO(type_traits(t).name);
        const uint64_t rb = *type_nbytes(t, static_cast<uint64_t>(in));
        std::vector<uint8_t> bytes(static_cast<size_t>(rb * rows));
        for (int64_t r = 0; r < rows; ++r) quantize_row(t, wf.data() + r * in, bytes.data() + r * rb, in);
        WeightStore store;
        const Weight& w = store.add_owned("embd", t, {in, rows}, bytes);
        const int32_t ids[] = {8, 0, 3};
        std::vector<float> y(3 * static_cast<size_t>(in)), ref(static_cast<size_t>(in));
        cpu::get_rows(w, ids, 3, y.data());
        for (int k = 0; k < 3; ++k) {
            dequantize_row(t, w.row(ids[k]), ref.data(), in);
            for (int64_t i = 0; i < in; ++i) REQUIRE(y[static_cast<size_t>(k * in + i)] == ref[static_cast<size_t>(i)]);
        }
    }
}

TEST_CASE("cpu backend refuses a type without a dequantiser", "[cpu][quant]") {
    CHECK_FALSE(cpu::weight_type_supported(TypeId::IQ2_XXS));
    CHECK_FALSE(cpu::weight_type_supported(TypeId::I32));
    CHECK(cpu::weight_type_supported(TypeId::Q3_K));
}
