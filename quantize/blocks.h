// Block layouts of the quantized formats. The ggml ones are byte for byte ggml's
// (ggml-common.h: same field order, sizes and packing), so a row written here is a row
// llama.cpp reads and the other way round. FP8 e4m3 with a scale per 128 elements is our
// own (docs/gguf.md "Private types"). Scales stored as f16 are raw IEEE half bits.
// Shared by the scalar reference and the SIMD kernels; nothing here allocates or throws.
#pragma once

#include <cstdint>
#include <cstring>

namespace ds3::quant {

inline constexpr int kQK8_0 = 32;   // elements per Q8_0 / Q4_0 block
inline constexpr int kQK4_0 = 32;
inline constexpr int kQK_K = 256;   // elements per K-quant / IQ4_XS super-block
inline constexpr int kQKFp8 = 128;  // elements per FP8 block (one row of a 128x128 tile)
inline constexpr int kKScaleSize = 12;  // packed 6-bit scales + mins of Q4_K / Q5_K

struct BlockQ8_0 {
    uint16_t d;            // f16 scale
    int8_t qs[kQK8_0];     // x = d * qs
};
struct BlockQ4_0 {
    uint16_t d;                // f16 scale
    uint8_t qs[kQK4_0 / 2];    // element j in the low nibble of qs[j], j+16 in the high; x = d * (q - 8)
};
// The activation side of the K-quant dot products: f32 scale, sums of 16-element groups
// so that the K-quants' per-sub-block minimums cost one multiply per group.
struct BlockQ8_K {
    float d;
    int8_t qs[kQK_K];
    int16_t bsums[kQK_K / 16];
};
struct BlockQ2_K {
    uint8_t scales[kQK_K / 16];  // per 16 elements: low nibble scale, high nibble min
    uint8_t qs[kQK_K / 4];       // 2-bit levels
    uint16_t d;                  // f16 super-scale of the scales
    uint16_t dmin;               // f16 super-scale of the mins
};
struct BlockQ3_K {
    uint8_t hmask[kQK_K / 8];  // third bit of each level
    uint8_t qs[kQK_K / 4];     // low 2 bits
    uint8_t scales[12];        // 16 signed 6-bit scales (stored + 32)
    uint16_t d;                // f16 super-scale
};
struct BlockQ4_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[kKScaleSize];  // 8 scales + 8 mins, 6 bits each
    uint8_t qs[kQK_K / 2];
};
struct BlockQ5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[kKScaleSize];
    uint8_t qh[kQK_K / 8];  // fifth bit
    uint8_t qs[kQK_K / 2];  // low 4 bits
};
struct BlockQ6_K {
    uint8_t ql[kQK_K / 2];      // low 4 bits
    uint8_t qh[kQK_K / 4];      // high 2 bits
    int8_t scales[kQK_K / 16];  // 8-bit scale per 16 elements
    uint16_t d;                 // f16 super-scale
};
struct BlockIQ4_XS {
    uint16_t d;
    uint16_t scales_h;            // high 2 bits of the eight 6-bit scales
    uint8_t scales_l[kQK_K / 64]; // low 4 bits, two per byte
    uint8_t qs[kQK_K / 2];        // 4-bit indices into kIQ4NLValues
};
// Ours: 128 e4m3 bytes and the f32 scale (the release's `scale_inv` of the 128x128 tile
// that holds them). The scale comes first so that it stays 4-byte aligned (132 = 4·33).
struct BlockFp8B128 {
    float d;
    uint8_t qs[kQKFp8];
};

static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ8_K) == 292);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockIQ4_XS) == 136);
static_assert(sizeof(BlockFp8B128) == 132);

// IQ4_NL / IQ4_XS non-linear grid (ggml's kvalues_iq4nl): denser near zero, where most
// weights are.
inline constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// Round to nearest, ties to even, for |f| < 2^22: adding 1.5·2^23 puts the integer in the
// low mantissa bits. The SIMD kernels' cvtps (default MXCSR) rounds the same way, so the
// integer paths agree bit for bit.
inline int nearest_int(float f) {
    const float v = f + 12582912.f;
    int32_t i;
    std::memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

// Scale j (< 8) and min j of the 12-byte Q4_K / Q5_K packing: the first four in the low 6
// bits of bytes 0..3 (scales) and 4..7 (mins); the last four split into a low nibble in
// bytes 8..11 and the two high bits in the spare top bits of bytes 0..7.
inline void k4_scale_min(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Signed scale j (< 16) of Q3_K, in [-32, 31]: low nibble from bytes 0..7 (j < 8 low
// nibbles, j >= 8 high nibbles), two high bits from bytes 8..11.
inline int q3k_scale(int j, const uint8_t* s) {
    const int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
    const int hi = (s[8 + (j & 3)] >> (2 * (j / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

}  // namespace ds3::quant
