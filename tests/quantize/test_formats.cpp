// The formats against their definitions: ggml's block offsets, hand-built blocks
// dequantised to hand-computed values (ggml's formulas), round trips within the RMSE
// bounds of docs/quantization.md, exact round trips on the grid, importance weights,
// the dot products against dequantise-then-multiply, and the error paths.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "quant_test_util.h"
#include "quantize/blocks.h"
#include "quantize/float.h"
#include "quantize/formats.h"
#include "runtime/error.h"

using namespace ds3;
using namespace ds3::quant;

namespace {

constexpr uint16_t kOne = 0x3C00, kHalf = 0x3800, kTwo = 0x4000;  // f16 1.0, 0.5, 2.0

std::vector<float> dequant(TypeId t, const void* blocks, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n));
    dequantize_row(t, blocks, out.data(), n);
    return out;
}

double rmse(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    return std::sqrt(s / static_cast<double>(a.size()));
}

const TypeId kFormats[] = {TypeId::F32,  TypeId::F16,  TypeId::BF16, TypeId::Q8_0,   TypeId::Q4_0,
                           TypeId::Q8_K, TypeId::Q2_K, TypeId::Q3_K, TypeId::Q4_K,   TypeId::Q5_K,
                           TypeId::Q6_K, TypeId::IQ4_XS, TypeId::FP8_E4M3_B128};

}  // namespace

TEST_CASE("block structs have ggml's sizes and field offsets", "[quantize][layout]") {
    CHECK(offsetof(BlockQ8_0, qs) == 2);
    CHECK(offsetof(BlockQ4_0, qs) == 2);
    CHECK(offsetof(BlockQ8_K, qs) == 4);
    CHECK(offsetof(BlockQ8_K, bsums) == 260);
    CHECK(offsetof(BlockQ2_K, qs) == 16);
    CHECK(offsetof(BlockQ2_K, d) == 80);
    CHECK(offsetof(BlockQ2_K, dmin) == 82);
    CHECK(offsetof(BlockQ3_K, qs) == 32);
    CHECK(offsetof(BlockQ3_K, scales) == 96);
    CHECK(offsetof(BlockQ3_K, d) == 108);
    CHECK(offsetof(BlockQ4_K, dmin) == 2);
    CHECK(offsetof(BlockQ4_K, scales) == 4);
    CHECK(offsetof(BlockQ4_K, qs) == 16);
    CHECK(offsetof(BlockQ5_K, qh) == 16);
    CHECK(offsetof(BlockQ5_K, qs) == 48);
    CHECK(offsetof(BlockQ6_K, qh) == 128);
    CHECK(offsetof(BlockQ6_K, scales) == 192);
    CHECK(offsetof(BlockQ6_K, d) == 208);
    CHECK(offsetof(BlockIQ4_XS, scales_h) == 2);
    CHECK(offsetof(BlockIQ4_XS, scales_l) == 4);
    CHECK(offsetof(BlockIQ4_XS, qs) == 8);
    CHECK(offsetof(BlockFp8B128, qs) == 4);
}

TEST_CASE("the type table carries every format's kernels", "[quantize][table]") {
    for (TypeId t : kFormats) {
        const TypeTraits& tr = type_traits(t);
        INFO(tr.name);
        CHECK(tr.to_float != nullptr);
        CHECK(tr.from_float_ref != nullptr);
        CHECK(tr.from_float != nullptr);
        if (t == TypeId::Q8_K) {
            CHECK(tr.vec_dot == nullptr);  // activation-only
        } else {
            CHECK(tr.vec_dot != nullptr);
            // The activation type quantises and has a block size dividing ours.
            const TypeTraits& at = type_traits(tr.vec_dot_type);
            CHECK(at.from_float != nullptr);
            CHECK(tr.block_size % at.block_size == 0);
        }
    }
    CHECK(type_traits(TypeId::Q4_0).vec_dot_type == TypeId::Q8_0);
    CHECK(type_traits(TypeId::Q8_0).vec_dot_type == TypeId::Q8_0);
    CHECK(type_traits(TypeId::Q6_K).vec_dot_type == TypeId::Q8_K);
    CHECK(type_traits(TypeId::IQ4_XS).vec_dot_type == TypeId::Q8_K);
    CHECK(type_traits(TypeId::BF16).vec_dot_type == TypeId::F32);
    const TypeTraits* fp8 = type_traits(1000u);
    REQUIRE(fp8 != nullptr);
    CHECK(fp8->name == "fp8_e4m3_b128");
    CHECK(fp8->block_size == 128);
    CHECK(fp8->type_size == 132);
    CHECK(type_from_name("FP8_E4M3_B128") == TypeId::FP8_E4M3_B128);
    // Types we only name still have no kernels.
    CHECK(type_traits(TypeId::IQ2_XXS).to_float == nullptr);
}

// --- known answers: hand-built blocks, values worked out by hand from ggml's formulas ---

TEST_CASE("Q8_0 and Q4_0 known blocks", "[quantize][layout]") {
    BlockQ8_0 a{};
    a.d = kTwo;
    a.qs[5] = -3;
    a.qs[31] = 127;
    auto v = dequant(TypeId::Q8_0, &a, 32);
    CHECK(v[5] == -6.0f);
    CHECK(v[31] == 254.0f);
    CHECK(v[0] == 0.0f);

    BlockQ4_0 b{};
    b.d = kOne;
    std::memset(b.qs, 0x88, sizeof b.qs);  // every level 8 - 8 = 0
    b.qs[0] = 0x1F;                       // element 0: 15 - 8, element 16: 1 - 8
    b.qs[15] = 0x80;                      // element 15: 0 - 8, element 31: 8 - 8
    v = dequant(TypeId::Q4_0, &b, 32);
    CHECK(v[0] == 7.0f);
    CHECK(v[16] == -7.0f);
    CHECK(v[15] == -8.0f);
    CHECK(v[31] == 0.0f);
    CHECK(v[7] == 0.0f);
}

TEST_CASE("Q8_K and FP8 known blocks", "[quantize][layout]") {
    BlockQ8_K k{};
    k.d = 0.5f;
    k.qs[3] = -7;
    auto v = dequant(TypeId::Q8_K, &k, 256);
    CHECK(v[3] == -3.5f);

    BlockFp8B128 f{};
    f.d = 0.25f;
    f.qs[0] = 0x38;  // exponent 7, mantissa 0: 1.0
    f.qs[1] = 0x7e;  // largest finite: 448
    f.qs[2] = 0x01;  // smallest subnormal: 2^-9
    f.qs[3] = 0xC0;  // -2
    v = dequant(TypeId::FP8_E4M3_B128, &f, 128);
    CHECK(v[0] == 0.25f);
    CHECK(v[1] == 112.0f);
    CHECK(v[2] == std::ldexp(1.0f, -11));
    CHECK(v[3] == -0.5f);
}

TEST_CASE("Q2_K known block", "[quantize][layout]") {
    BlockQ2_K b{};
    b.d = kOne;
    b.dmin = kHalf;
    b.scales[0] = 0x23;  // scale 3, min 2
    b.scales[2] = 0x15;  // scale 5, min 1
    b.scales[4] = 0x01;  // scale 1, min 0
    b.scales[6] = 0x30;  // scale 0, min 3
    b.scales[8] = 0xF7;  // scale 7, min 15
    b.qs[0] = 0xE4;      // levels 0, 1, 2, 3 for elements 0, 32, 64, 96
    b.qs[32] = 0x02;     // level 2 for element 128
    auto v = dequant(TypeId::Q2_K, &b, 256);
    CHECK(v[0] == -1.0f);   // 3·0 - 0.5·2
    CHECK(v[32] == 4.5f);   // 5·1 - 0.5·1
    CHECK(v[64] == 2.0f);   // 1·2 - 0
    CHECK(v[96] == -1.5f);  // 0·3 - 0.5·3
    CHECK(v[128] == 6.5f);  // 7·2 - 0.5·15
}

TEST_CASE("Q3_K known block", "[quantize][layout]") {
    BlockQ3_K b{};
    b.d = kOne;
    b.scales[0] = 0x05;  // scale 0 low nibble 5; scale 8 low nibble 0
    b.scales[8] = 0x02;  // scale 0 high bits 2 → 37 - 32 = 5; scales 4, 8, 12 high bits 0
    b.qs[0] = 0x03;      // element 0 low bits 3; element 32 low bits 0
    b.qs[32] = 0x01;     // element 128 low bits 1
    b.hmask[0] = 0x11;   // high bit set for element 0 (bit 0) and element 128 (bit 4)
    auto v = dequant(TypeId::Q3_K, &b, 256);
    CHECK(v[0] == 15.0f);     // scale 5 · level 3
    CHECK(v[1] == -20.0f);    // scale 5 · (0 - 4)
    CHECK(v[32] == 128.0f);   // scale 2 = 0 - 32 = -32, level 0 - 4
    CHECK(v[128] == -32.0f);  // scale 8 = -32, level 1
}

TEST_CASE("Q4_K and Q5_K known blocks", "[quantize][layout]") {
    uint8_t sc[12] = {};
    sc[0] = 0x4A;  // scale 0 = 10; top bits 1 → high bits of scale 4
    sc[4] = 0x83;  // min 0 = 3; top bits 2 → high bits of min 4
    sc[8] = 0x75;  // scale 4 = 5 | 1<<4 = 21, min 4 = 7 | 2<<4 = 39
    sc[2] = 4;     // scale 2
    sc[6] = 1;     // min 2
    BlockQ4_K b{};
    b.d = kOne;
    b.dmin = kOne;
    std::memcpy(b.scales, sc, 12);
    b.qs[0] = 0xA7;   // element 0 level 7 (sub-block 0), element 32 level 10 (sub-block 1: scale 0, min 0)
    b.qs[64] = 0x02;  // element 128 level 2 (sub-block 4)
    auto v = dequant(TypeId::Q4_K, &b, 256);
    CHECK(v[0] == 67.0f);  // 10·7 - 3
    CHECK(v[32] == 0.0f);
    CHECK(v[128] == 3.0f);  // 21·2 - 39

    BlockQ5_K c{};
    c.d = kOne;
    c.dmin = kOne;
    std::memcpy(c.scales, sc, 12);
    c.qs[0] = 0xA7;
    c.qs[32] = 0x01;  // element 64 low nibble 1 (sub-block 2)
    c.qh[0] = 0x05;   // fifth bit for element 0 (bit 0) and element 64 (bit 2)
    v = dequant(TypeId::Q5_K, &c, 256);
    CHECK(v[0] == 227.0f);  // 10·(7 + 16) - 3
    CHECK(v[64] == 67.0f);  // 4·(1 + 16) - 1
    CHECK(v[32] == 0.0f);
}

TEST_CASE("Q6_K known block", "[quantize][layout]") {
    BlockQ6_K b{};
    b.d = kHalf;
    b.scales[0] = 2;
    b.scales[2] = -3;
    b.scales[4] = 4;
    b.scales[6] = 1;
    b.scales[8] = -1;
    b.ql[0] = 0x21;   // element 0 low 1, element 64 low 2
    b.ql[32] = 0x0F;  // element 32 low 15, element 96 low 0
    b.qh[0] = 0xE4;   // high bits: element 0 → 0, 32 → 1, 64 → 2, 96 → 3
    b.qh[32] = 0x03;  // element 128 high bits 3
    auto v = dequant(TypeId::Q6_K, &b, 256);
    CHECK(v[0] == -31.0f);   // 0.5·2·(1 - 32)
    CHECK(v[32] == 1.5f);    // 0.5·-3·(31 - 32)
    CHECK(v[64] == 4.0f);    // 0.5·4·(34 - 32)
    CHECK(v[96] == 8.0f);    // 0.5·1·(48 - 32)
    CHECK(v[128] == -8.0f);  // 0.5·-1·(48 - 32)
}

TEST_CASE("IQ4_XS known block", "[quantize][layout]") {
    BlockIQ4_XS b{};
    b.d = kOne;
    b.scales_l[0] = 0x9A;  // sub-block 0 low 0xA, sub-block 1 low 0x9
    b.scales_h = 0x6;      // sub-block 0 high 2, sub-block 1 high 1
    std::memset(b.qs, 0x88, sizeof b.qs);
    b.qs[0] = 0xF0;   // element 0 index 0 (-127), element 16 index 15 (113)
    b.qs[16] = 0x78;  // element 32 index 8 (1), element 48 index 7 (-10)
    auto v = dequant(TypeId::IQ4_XS, &b, 256);
    CHECK(v[0] == -1270.0f);  // (42 - 32)·-127
    CHECK(v[16] == 1130.0f);
    CHECK(v[32] == -7.0f);  // (25 - 32)·1
    CHECK(v[48] == 70.0f);
}

// --- round trips ---------------------------------------------------------------------------

// RMSE of dequant(quant(x)) on N(0,1) rows, bounds from docs/quantization.md: the uniform
// quantisation noise Δ/√12 of each format's step on Gaussian blocks, plus margin.
TEST_CASE("round trip RMSE within per-format bounds", "[quantize][roundtrip]") {
    struct Case {
        TypeId t;
        double bound;
    };
    const Case cases[] = {{TypeId::F32, 0.0},      {TypeId::F16, 3e-4},    {TypeId::BF16, 2.5e-3},
                          {TypeId::Q8_0, 0.006},   {TypeId::Q8_K, 0.008}, {TypeId::FP8_E4M3_B128, 0.03},
                          {TypeId::Q6_K, 0.019},   {TypeId::Q5_K, 0.042},  {TypeId::Q4_K, 0.085},
                          {TypeId::Q4_0, 0.09},    {TypeId::IQ4_XS, 0.085}, {TypeId::Q3_K, 0.16},
                          {TypeId::Q2_K, 0.34}};
    const int64_t n = 256 * 7;  // odd number of super-blocks
    const auto x = test::gaussian(static_cast<size_t>(n) * 5, 42);
    for (const Case& c : cases) {
        INFO(type_traits(c.t).name);
        std::vector<float> orig, back;
        for (int r = 0; r < 5; ++r) {
            const float* row = x.data() + r * n;
            auto buf = test::row_buffer(c.t, n);
            quantize_row(c.t, row, buf.data(), n);
            auto y = dequant(c.t, buf.data(), n);
            orig.insert(orig.end(), row, row + n);
            back.insert(back.end(), y.begin(), y.end());
        }
        const double e = rmse(orig, back);
        if (std::getenv("DS3_PRINT_RMSE")) std::printf("%s rmse %.5f\n", std::string(type_traits(c.t).name).c_str(), e);
        CHECK(e <= c.bound);
        // Scale-free: the same data times 1000 keeps the relative error (no absolute epsilons).
        std::vector<float> big(orig.begin(), orig.begin() + n);
        for (auto& f : big) f *= 1000.0f;
        auto buf = test::row_buffer(c.t, n);
        quantize_row(c.t, big.data(), buf.data(), n);
        auto y = dequant(c.t, buf.data(), n);
        CHECK(rmse(big, y) <= 1000.0 * c.bound * 1.5 + 1e-9);
    }
}

TEST_CASE("zero rows quantise to zero", "[quantize][roundtrip]") {
    const int64_t n = 512;
    std::vector<float> z(n, 0.0f);
    for (TypeId t : kFormats) {
        INFO(type_traits(t).name);
        auto buf = test::row_buffer(t, n);
        quantize_row(t, z.data(), buf.data(), n);
        for (float f : dequant(t, buf.data(), n)) CHECK(f == 0.0f);
    }
}

// Values already on a format's grid (power-of-two super-scales, integer sub-scales with
// the extreme one present, every level the search anchors on present) come back exactly.
TEST_CASE("exact round trip for values on the grid", "[quantize][roundtrip]") {
    std::mt19937 rng(7);
    auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    auto exact = [&](TypeId t, const std::vector<float>& x) {
        INFO(type_traits(t).name);
        auto buf = test::row_buffer(t, static_cast<int64_t>(x.size()));
        quantize_row(t, x.data(), buf.data(), static_cast<int64_t>(x.size()));
        auto y = dequant(t, buf.data(), static_cast<int64_t>(x.size()));
        int bad = 0;
        for (size_t i = 0; i < x.size(); ++i) bad += x[i] != y[i];
        CHECK(bad == 0);
    };
    const int nsb = 3;  // super-blocks
    {  // Q8_0: d·l, l in [-127, 127], 127 in every block
        std::vector<float> x(32 * 5);
        for (size_t i = 0; i < x.size(); ++i) x[i] = 0.25f * static_cast<float>(i % 32 == 3 ? 127 : uni(-127, 127));
        exact(TypeId::Q8_0, x);
    }
    {  // Q4_0: d·l, l in [-8, 7], -8 in every block
        std::vector<float> x(32 * 5);
        for (size_t i = 0; i < x.size(); ++i) x[i] = 0.5f * static_cast<float>(i % 32 == 9 ? -8 : uni(-7, 7));
        exact(TypeId::Q4_0, x);
    }
    {  // Q6_K: D·s·l, s in [-127, 127] with one sub-block at -128, l in [-32, 31] with -32 per sub-block
        std::vector<float> x(256 * nsb);
        for (int b = 0; b < nsb * 16; ++b) {
            int s = b % 16 == 5 ? -128 : uni(-127, 127);
            if (s == 0) s = 1;
            for (int l = 0; l < 16; ++l)
                x[16 * b + l] = 0.125f * static_cast<float>(s) * static_cast<float>(l == 2 ? -32 : uni(-31, 31));
        }
        exact(TypeId::Q6_K, x);
    }
    {  // Q3_K: D·s·l, s in [-31, 31] with one at -32, l in [-4, 3] with -4 per sub-block
        std::vector<float> x(256 * nsb);
        for (int b = 0; b < nsb * 16; ++b) {
            int s = b % 16 == 11 ? -32 : uni(-31, 31);
            if (s == 0) s = 3;
            for (int l = 0; l < 16; ++l)
                x[16 * b + l] = 0.5f * static_cast<float>(s) * static_cast<float>(l == 0 ? -4 : uni(-3, 3));
        }
        exact(TypeId::Q3_K, x);
    }
    // Q4_K / Q5_K / Q2_K: D·s·l - Dmin·m, the largest scale and min at the top of their
    // range, levels 0 and nmax present in every sub-block.
    auto asym = [&](TypeId t, int sub, int nmax, int smax) {
        std::vector<float> x(256 * nsb);
        const int nsub = 256 / sub;
        for (int b = 0; b < nsb * nsub; ++b) {
            const int s = b % nsub == 1 ? smax : uni(1, smax);
            const int m = b % nsub == 2 ? smax : uni(0, smax);
            for (int l = 0; l < sub; ++l) {
                const int q = l == 0 ? 0 : l == 1 ? nmax : uni(0, nmax);
                x[static_cast<size_t>(sub * b + l)] = 0.25f * static_cast<float>(s * q) - 0.125f * static_cast<float>(m);
            }
        }
        exact(t, x);
    };
    asym(TypeId::Q4_K, 32, 15, 63);
    asym(TypeId::Q5_K, 32, 31, 63);
    asym(TypeId::Q2_K, 16, 3, 15);
    {  // IQ4_XS: D·s·v with v from the grid, s in [-31, 31] with one at -32, -127 per sub-block
        std::vector<float> x(256 * nsb);
        for (int b = 0; b < nsb * 8; ++b) {
            int s = b % 8 == 4 ? -32 : uni(-31, 31);
            if (s == 0) s = 2;
            for (int l = 0; l < 32; ++l)
                x[32 * b + l] = 0.5f * static_cast<float>(s) * kIQ4NLValues[l == 7 ? 0 : uni(0, 15)];
        }
        exact(TypeId::IQ4_XS, x);
    }
    {  // FP8: d·e4m3 value with 448 in every block
        std::vector<float> x(128 * 3);
        for (size_t i = 0; i < x.size(); ++i) {
            uint8_t byte = static_cast<uint8_t>(uni(0, 255));
            if ((byte & 0x7f) == 0x7f) byte = 0x10;  // not NaN
            x[i] = 0.0625f * (i % 128 == 100 ? 448.0f : fp8_e4m3_to_f32(byte));
        }
        exact(TypeId::FP8_E4M3_B128, x);
    }
    {  // f16 / bf16 values
        std::vector<float> x(96);
        for (size_t i = 0; i < x.size(); ++i) x[i] = f16_to_f32(static_cast<uint16_t>(uni(0, 0x7bff) | (i % 2 ? 0x8000 : 0)));
        exact(TypeId::F16, x);
        for (auto& f : x) f = bf16_to_f32(f32_to_bf16(f));
        exact(TypeId::BF16, x);
        exact(TypeId::F32, x);
    }
}

TEST_CASE("f32 to e4m3 rounds to nearest even and saturates", "[quantize][fp8]") {
    CHECK(f32_to_fp8_e4m3(1.0f) == 0x38);
    CHECK(f32_to_fp8_e4m3(448.0f) == 0x7e);
    CHECK(f32_to_fp8_e4m3(1e6f) == 0x7e);
    CHECK(f32_to_fp8_e4m3(-1e6f) == 0xfe);
    CHECK(f32_to_fp8_e4m3(1.0625f) == 0x38);  // halfway 1 and 1.125: to the even mantissa
    CHECK(f32_to_fp8_e4m3(1.1875f) == 0x3a);  // halfway 1.125 and 1.25: to 1.25
    CHECK(f32_to_fp8_e4m3(std::ldexp(1.0f, -9)) == 0x01);
    CHECK(f32_to_fp8_e4m3(std::ldexp(1.0f, -11)) == 0x00);
    CHECK((f32_to_fp8_e4m3(std::nanf("")) & 0x7f) == 0x7f);
    for (int b = 0; b < 256; ++b) {
        if ((b & 0x7f) == 0x7f) continue;
        const float f = fp8_e4m3_to_f32(static_cast<uint8_t>(b));
        if (f == 0.0f) continue;  // -0 and +0 both fine
        CHECK(f32_to_fp8_e4m3(f) == b);
    }
}

TEST_CASE("fp8_b128_pack_row keeps the release's bytes and tile scales", "[quantize][fp8]") {
    std::vector<uint8_t> fp8(256);
    for (int i = 0; i < 256; ++i) fp8[static_cast<size_t>(i)] = static_cast<uint8_t>((i * 37) & 0x7e);
    const float scales[2] = {0.5f, 3.0f};
    auto buf = test::row_buffer(TypeId::FP8_E4M3_B128, 256);
    fp8_b128_pack_row(fp8.data(), scales, buf.data(), 256);
    auto v = dequant(TypeId::FP8_E4M3_B128, buf.data(), 256);
    for (int i = 0; i < 256; ++i) CHECK(v[static_cast<size_t>(i)] == fp8_e4m3_to_f32(fp8[static_cast<size_t>(i)]) * scales[i / 128]);
}

// --- importance ---------------------------------------------------------------------------

// With importance the quantiser minimises Σ imp·(x - x̂)²: that weighted error must come
// out lower than without importance (which minimises the unweighted error), and the
// unweighted error higher. Summed over many rows so that the effect of the scale
// quantisation of individual blocks averages out.
TEST_CASE("importance weights lower the weighted error", "[quantize][importance]") {
    const int64_t n = 256 * 3, rows = 24;
    const auto x = test::gaussian(static_cast<size_t>(n * rows), 99);
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> imp(static_cast<size_t>(n));
    for (auto& w : imp) w = std::exp(4.0f * u(rng));  // a few columns matter ~50x more
    for (TypeId t : {TypeId::Q4_0, TypeId::Q2_K, TypeId::Q3_K, TypeId::Q4_K, TypeId::Q5_K, TypeId::Q6_K, TypeId::IQ4_XS}) {
        INFO(type_traits(t).name);
        double wplain = 0, wimp = 0, uplain = 0, uimp = 0;
        for (int64_t r = 0; r < rows; ++r) {
            const float* row = x.data() + r * n;
            auto a = test::row_buffer(t, n), b = test::row_buffer(t, n);
            quantize_row(t, row, a.data(), n);
            quantize_row(t, row, b.data(), n, imp.data());
            const auto ya = dequant(t, a.data(), n), yb = dequant(t, b.data(), n);
            for (int64_t i = 0; i < n; ++i) {
                const double ea = std::pow(row[i] - ya[static_cast<size_t>(i)], 2.0);
                const double eb = std::pow(row[i] - yb[static_cast<size_t>(i)], 2.0);
                wplain += imp[static_cast<size_t>(i)] * ea;
                wimp += imp[static_cast<size_t>(i)] * eb;
                uplain += ea;
                uimp += eb;
            }
        }
        CHECK(wimp < wplain);
        CHECK(uimp >= uplain * 0.999);
    }
}

TEST_CASE("all-zero importance falls back to unweighted", "[quantize][importance]") {
    const int64_t n = 256;
    const auto x = test::gaussian(static_cast<size_t>(n), 3);
    std::vector<float> zero(static_cast<size_t>(n), 0.0f);
    for (TypeId t : {TypeId::Q4_0, TypeId::Q4_K, TypeId::Q6_K, TypeId::IQ4_XS}) {
        auto a = test::row_buffer(t, n), b = test::row_buffer(t, n);
        quantize_row(t, x.data(), a.data(), n);
        quantize_row(t, x.data(), b.data(), n, zero.data());
        CHECK(a == b);
    }
}

// --- dot products -------------------------------------------------------------------------

// vec_dot against f32 activations (quantised to the pairing type on the way) equals
// Σ dequant(w)·x up to the activation's own quantisation: each activation moves by at
// most half its block's step (amax/127 for Q8_0 and Q8_K), so the difference is bounded by
// Σ|w|·step/2, plus float rounding of the sums.
TEST_CASE("vec_dot agrees with dequantise-then-multiply", "[quantize][dot]") {
    const int64_t n = 256 * 5;
    const auto w = test::gaussian(static_cast<size_t>(n), 11);
    const auto x = test::gaussian(static_cast<size_t>(n), 12, 3.0f);
    for (TypeId t : kFormats) {
        if (t == TypeId::Q8_K) continue;
        INFO(type_traits(t).name);
        auto buf = test::row_buffer(t, n);
        quantize_row(t, w.data(), buf.data(), n);
        const auto wd = dequant(t, buf.data(), n);
        double exact = 0, bound = 0, mag = 0;
        const TypeId at = type_traits(t).vec_dot_type;
        const int ab = static_cast<int>(type_traits(at).block_size);
        for (int64_t b = 0; b < n / ab; ++b) {
            float amax = 0;
            for (int i = 0; i < ab; ++i) amax = std::max(amax, std::fabs(x[static_cast<size_t>(b * ab + i)]));
            const double step = at == TypeId::F32 ? 0.0 : amax / 127.0;
            for (int i = 0; i < ab; ++i) {
                const size_t k = static_cast<size_t>(b * ab + i);
                exact += static_cast<double>(wd[k]) * x[k];
                bound += std::fabs(wd[k]) * step / 2;
                mag += std::fabs(static_cast<double>(wd[k]) * x[k]);
            }
        }
        const double got = vec_dot_f32(t, n, buf.data(), x.data());
        CHECK(std::fabs(got - exact) <= bound * 1.001 + 4 * static_cast<double>(n) * 6e-8 * mag);
    }
}

// --- errors -----------------------------------------------------------------------------------

TEST_CASE("row helpers reject missing kernels and partial blocks", "[quantize][errors]") {
    std::vector<uint8_t> buf(1024);
    std::vector<float> f(512);
    CHECK_THROWS_WITH(dequantize_row(TypeId::IQ2_XXS, buf.data(), f.data(), 256),
                      "[quantize] type iq2_xxs has no dequantize");
    CHECK_THROWS_WITH(quantize_row(TypeId::Q4_K, f.data(), buf.data(), 100),
                      "[quantize] quantize of q4_K: expected a multiple of 256 elements, found 100");
    CHECK_THROWS_WITH(dequantize_row(TypeId::Q8_0, buf.data(), f.data(), 33),
                      "[quantize] dequantize of q8_0: expected a multiple of 32 elements, found 33");
    CHECK_THROWS_WITH(vec_dot_f32(TypeId::Q8_K, 256, buf.data(), f.data()), "[quantize] type q8_K has no vec_dot");
    CHECK_THROWS_AS(quantize_row(TypeId::MXFP4, f.data(), buf.data(), 32), Error);
}
