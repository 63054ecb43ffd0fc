// Scalar references: dequantisation and dot products of every format, plus the plain
// float types and the generic row helpers. These define the formats; the SIMD kernels
// are tested against them. Dot products add integer sums per block and combine them in
// float once per block, in block order, so a SIMD kernel that computes the same integer
// sums and then the same float steps gets the same bits.
#include <cmath>
#include <string>
#include <vector>

#include "quantize/blocks.h"
#include "quantize/float.h"
#include "quantize/formats.h"
#include "runtime/error.h"

namespace ds3::quant {

namespace {

float h2f(uint16_t h) { return f16_to_f32(h); }

// fp8 e4m3 → f32 for all 256 bytes, built once: the table lookup is what the dequantise
// and dot loops do per element.
struct Fp8Table {
    float v[256];
    Fp8Table() {
        for (int i = 0; i < 256; ++i) v[i] = fp8_e4m3_to_f32(static_cast<uint8_t>(i));
    }
};
const Fp8Table& fp8_table() {
    static const Fp8Table t;
    return t;
}

}  // namespace

// --- plain floats -----------------------------------------------------------------

void f32_to_float(const void* src, float* dst, int64_t n) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
}
void f16_to_float(const void* src, float* dst, int64_t n) {
    const auto* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
}
void bf16_to_float(const void* src, float* dst, int64_t n) {
    const auto* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
}
void f32_from_float(const float* src, void* dst, int64_t n, const float*) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
}
void f16_from_float(const float* src, void* dst, int64_t n, const float*) {
    auto* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
}
void bf16_from_float(const float* src, void* dst, int64_t n, const float*) {
    auto* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
}

float f32_vec_dot(int64_t n, const void* w, const void* act) {
    const auto* a = static_cast<const float*>(w);
    const auto* b = static_cast<const float*>(act);
    float s = 0;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}
float f16_vec_dot(int64_t n, const void* w, const void* act) {
    const auto* a = static_cast<const uint16_t*>(w);
    const auto* b = static_cast<const float*>(act);
    float s = 0;
    for (int64_t i = 0; i < n; ++i) s += f16_to_f32(a[i]) * b[i];
    return s;
}
float bf16_vec_dot(int64_t n, const void* w, const void* act) {
    const auto* a = static_cast<const uint16_t*>(w);
    const auto* b = static_cast<const float*>(act);
    float s = 0;
    for (int64_t i = 0; i < n; ++i) s += bf16_to_f32(a[i]) * b[i];
    return s;
}

// --- FP8 e4m3, 128-element blocks -----------------------------------------------------

void fp8_b128_to_float(const void* src, float* dst, int64_t n) {
    const auto* b = static_cast<const BlockFp8B128*>(src);
    const float* t = fp8_table().v;
    for (int64_t i = 0; i < n / kQKFp8; ++i, dst += kQKFp8)
        for (int j = 0; j < kQKFp8; ++j) dst[j] = t[b[i].qs[j]] * b[i].d;
}

float fp8_b128_vec_dot(int64_t n, const void* w, const void* act) {
    const auto* b = static_cast<const BlockFp8B128*>(w);
    const auto* x = static_cast<const float*>(act);
    const float* t = fp8_table().v;
    float s = 0;
    for (int64_t i = 0; i < n / kQKFp8; ++i, x += kQKFp8) {
        float bs = 0;
        for (int j = 0; j < kQKFp8; ++j) bs += t[b[i].qs[j]] * x[j];
        s += bs * b[i].d;
    }
    return s;
}

uint8_t f32_to_fp8_e4m3(float f) {
    const uint32_t u = f32_bits(f);
    const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
    const float a = std::fabs(f);
    if (std::isnan(f)) return sign | 0x7f;
    if (a >= 464.0f) return sign | 0x7e;  // beyond the midpoint of 448 and (absent) 480: saturate
    // Smallest normal is 2^-6; below it the grid is uniform in steps of 2^-9.
    if (a < 0.015625f) {
        const int q = nearest_int(a * 512.0f);  // 0..8; 8 is the smallest normal, encoded 0x08
        return sign | static_cast<uint8_t>(q);
    }
    int e;
    const float m = std::frexp(a, &e);  // a = m·2^e, m in [0.5, 1)
    // value = (1 + k/8)·2^(e-1) with k = round((2m - 1)·8); k == 8 carries into the exponent.
    int k = nearest_int((2.0f * m - 1.0f) * 8.0f);
    int exp = e - 1 + 7;
    if (k == 8) {
        k = 0;
        ++exp;
    }
    if (exp > 15 || (exp == 15 && k > 6)) return sign | 0x7e;
    return sign | static_cast<uint8_t>((exp << 3) | k);
}

void fp8_b128_from_float_ref(const float* src, void* dst, int64_t n, const float*) {
    auto* b = static_cast<BlockFp8B128*>(dst);
    for (int64_t i = 0; i < n / kQKFp8; ++i, src += kQKFp8) {
        float amax = 0;
        for (int j = 0; j < kQKFp8; ++j) amax = std::fmax(amax, std::fabs(src[j]));
        const float d = amax / 448.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = d;
        for (int j = 0; j < kQKFp8; ++j) b[i].qs[j] = f32_to_fp8_e4m3(src[j] * id);
    }
}

void fp8_b128_pack_row(const uint8_t* fp8, const float* tile_scales, void* dst, int64_t n) {
    auto* b = static_cast<BlockFp8B128*>(dst);
    for (int64_t i = 0; i < n / kQKFp8; ++i) {
        b[i].d = tile_scales[i];
        std::memcpy(b[i].qs, fp8 + i * kQKFp8, kQKFp8);
    }
}

// --- Q8_0 / Q4_0 ----------------------------------------------------------------------

void q8_0_to_float(const void* src, float* dst, int64_t n) {
    const auto* b = static_cast<const BlockQ8_0*>(src);
    for (int64_t i = 0; i < n / kQK8_0; ++i, dst += kQK8_0) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < kQK8_0; ++j) dst[j] = d * b[i].qs[j];
    }
}

void q4_0_to_float(const void* src, float* dst, int64_t n) {
    const auto* b = static_cast<const BlockQ4_0*>(src);
    for (int64_t i = 0; i < n / kQK4_0; ++i, dst += kQK4_0) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < kQK4_0 / 2; ++j) {
            dst[j] = d * ((b[i].qs[j] & 0xF) - 8);
            dst[j + 16] = d * ((b[i].qs[j] >> 4) - 8);
        }
    }
}

float q8_0_vec_dot_ref(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ8_0*>(w);
    const auto* y = static_cast<const BlockQ8_0*>(act);
    float s = 0;
    for (int64_t i = 0; i < n / kQK8_0; ++i) {
        int isum = 0;
        for (int j = 0; j < kQK8_0; ++j) isum += x[i].qs[j] * y[i].qs[j];
        s += static_cast<float>(isum) * (h2f(x[i].d) * h2f(y[i].d));
    }
    return s;
}

float q4_0_vec_dot_ref(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ4_0*>(w);
    const auto* y = static_cast<const BlockQ8_0*>(act);
    float s = 0;
    for (int64_t i = 0; i < n / kQK4_0; ++i) {
        int isum = 0;
        for (int j = 0; j < kQK4_0 / 2; ++j)
            isum += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
        s += static_cast<float>(isum) * (h2f(x[i].d) * h2f(y[i].d));
    }
    return s;
}

// --- Q8_K -----------------------------------------------------------------------------

void q8_K_to_float(const void* src, float* dst, int64_t n) {
    const auto* b = static_cast<const BlockQ8_K*>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K)
        for (int j = 0; j < kQK_K; ++j) dst[j] = b[i].d * b[i].qs[j];
}

// --- K-quants: levels unpacked per block ------------------------------------------------
// Each decode_* writes the block's 256 integer levels in element order and its per-16
// (or per-32) integer scales; dequantise and dot share them so they cannot disagree.

namespace {

// Q2_K: element e = 128·h + 32·j + l (h < 2, j < 4, l < 32) is bits 2j..2j+1 of
// qs[32h + l]; its scale/min byte is scales[e / 16].
void decode_q2_K(const BlockQ2_K& b, uint8_t* q) {
    for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 4; ++j)
            for (int l = 0; l < 32; ++l) q[128 * h + 32 * j + l] = (b.qs[32 * h + l] >> (2 * j)) & 3;
}

// Q3_K: low bits as Q2_K; the third bit of element 128·h + 32·j + l is bit (4h + j) of
// hmask[l]. A set bit means level + 0, a clear one level - 4: levels in [-4, 3].
void decode_q3_K(const BlockQ3_K& b, int8_t* q) {
    for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 4; ++j)
            for (int l = 0; l < 32; ++l) {
                const int lo = (b.qs[32 * h + l] >> (2 * j)) & 3;
                const bool hi = b.hmask[l] & (1u << (4 * h + j));
                q[128 * h + 32 * j + l] = static_cast<int8_t>(lo - (hi ? 0 : 4));
            }
}

// Q4_K: 64 elements per 32 bytes: the low nibbles are sub-block 2p, the high ones 2p+1.
void decode_q4_K(const BlockQ4_K& b, uint8_t* q) {
    for (int p = 0; p < 4; ++p)
        for (int l = 0; l < 32; ++l) {
            q[64 * p + l] = b.qs[32 * p + l] & 0xF;
            q[64 * p + 32 + l] = b.qs[32 * p + l] >> 4;
        }
}

// Q5_K: Q4_K's nibbles plus a fifth bit: element 64p + l has bit 2p of qh[l], element
// 64p + 32 + l bit 2p+1.
void decode_q5_K(const BlockQ5_K& b, uint8_t* q) {
    for (int p = 0; p < 4; ++p)
        for (int l = 0; l < 32; ++l) {
            q[64 * p + l] = static_cast<uint8_t>((b.qs[32 * p + l] & 0xF) | (((b.qh[l] >> (2 * p)) & 1) << 4));
            q[64 * p + 32 + l] = static_cast<uint8_t>((b.qs[32 * p + l] >> 4) | (((b.qh[l] >> (2 * p + 1)) & 1) << 4));
        }
}

// Q6_K: per 128 elements (h): ql[64h + l] holds elements l (low nibble) and 64 + l (high),
// ql[64h + 32 + l] elements 32 + l and 96 + l; qh[32h + l] gives their high 2 bits at
// shifts 0, 4, 2, 6 respectively. Levels in [-32, 31].
void decode_q6_K(const BlockQ6_K& b, int8_t* q) {
    for (int h = 0; h < 2; ++h) {
        const uint8_t* ql = b.ql + 64 * h;
        const uint8_t* qh = b.qh + 32 * h;
        int8_t* o = q + 128 * h;
        for (int l = 0; l < 32; ++l) {
            o[l] = static_cast<int8_t>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            o[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            o[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            o[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

// IQ4_XS: sub-block s (32 elements) uses qs[16s .. 16s+15]: low nibbles elements 0..15,
// high 16..31; its 6-bit scale is a nibble of scales_l[s/2] plus bits 2s..2s+1 of scales_h.
int iq4_xs_scale(const BlockIQ4_XS& b, int s) {
    return (((b.scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | (((b.scales_h >> (2 * s)) & 3) << 4)) - 32;
}
void decode_iq4_xs(const BlockIQ4_XS& b, int8_t* q) {
    for (int s = 0; s < 8; ++s)
        for (int j = 0; j < 16; ++j) {
            q[32 * s + j] = kIQ4NLValues[b.qs[16 * s + j] & 0xF];
            q[32 * s + 16 + j] = kIQ4NLValues[b.qs[16 * s + j] >> 4];
        }
}

template <typename T>
int dot_levels(const T* q, const int8_t* a, int len) {
    int s = 0;
    for (int i = 0; i < len; ++i) s += q[i] * a[i];
    return s;
}

}  // namespace

void q2_K_to_float(const void* src, float* dst, int64_t n) {
    const auto* b = static_cast<const BlockQ2_K*>(src);
    uint8_t q[kQK_K];
    for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
        decode_q2_K(b[i], q);
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        for (int s = 0; s < 16; ++s) {
            const float dl = d * (b[i].scales[s] & 0xF), ml = dmin * (b[i].scales[s] >> 4);
            for (int l = 0; l < 16; ++l) dst[16 * s + l] = dl * q[16 * s + l] - ml;
        }
    }
}

void q3_K_to_float(const void* src, float* dst, int64_t n) {
    const auto* b = static_cast<const BlockQ3_K*>(src);
    int8_t q[kQK_K];
    for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
        decode_q3_K(b[i], q);
        const float d = h2f(b[i].d);
        for (int s = 0; s < 16; ++s) {
            const float dl = d * q3k_scale(s, b[i].scales);
            for (int l = 0; l < 16; ++l) dst[16 * s + l] = dl * q[16 * s + l];
        }
    }
}

// Q4_K and Q5_K dequantise alike: 8 groups of 32 with 6-bit scale and min, only the level
// decoder differs.
template <typename Block, void (*decode)(const Block&, uint8_t*)>
void k4_to_float(const void* src, float* dst, int64_t n) {
    const auto* b = static_cast<const Block*>(src);
    uint8_t q[kQK_K];
    for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
        decode(b[i], q);
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        for (int s = 0; s < 8; ++s) {
            uint8_t sc, m;
            k4_scale_min(s, b[i].scales, sc, m);
            const float dl = d * sc, ml = dmin * m;
            for (int l = 0; l < 32; ++l) dst[32 * s + l] = dl * q[32 * s + l] - ml;
        }
    }
}

void q4_K_to_float(const void* src, float* dst, int64_t n) { k4_to_float<BlockQ4_K, decode_q4_K>(src, dst, n); }
void q5_K_to_float(const void* src, float* dst, int64_t n) { k4_to_float<BlockQ5_K, decode_q5_K>(src, dst, n); }

void q6_K_to_float(const void* src, float* dst, int64_t n) {
    const auto* b = static_cast<const BlockQ6_K*>(src);
    int8_t q[kQK_K];
    for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
        decode_q6_K(b[i], q);
        const float d = h2f(b[i].d);
        for (int s = 0; s < 16; ++s) {
            const float dl = d * b[i].scales[s];
            for (int l = 0; l < 16; ++l) dst[16 * s + l] = dl * q[16 * s + l];
        }
    }
}

void iq4_xs_to_float(const void* src, float* dst, int64_t n) {
    const auto* b = static_cast<const BlockIQ4_XS*>(src);
    int8_t q[kQK_K];
    for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
        decode_iq4_xs(b[i], q);
        const float d = h2f(b[i].d);
        for (int s = 0; s < 8; ++s) {
            const float dl = d * iq4_xs_scale(b[i], s);
            for (int l = 0; l < 32; ++l) dst[32 * s + l] = dl * q[32 * s + l];
        }
    }
}

// The K-quant dots: per block an integer Σ scale·(levels·a) and, for the formats with
// minimums, an integer Σ min·bsum; then one float step per block:
//   s += a.d · (d · isum - dmin · imin)      (Q2_K, Q4_K, Q5_K)
//   s += a.d · d · isum                      (Q3_K, Q6_K, IQ4_XS)

float q2_K_vec_dot_ref(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ2_K*>(w);
    const auto* y = static_cast<const BlockQ8_K*>(act);
    uint8_t q[kQK_K];
    float s = 0;
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        decode_q2_K(x[i], q);
        int isum = 0, imin = 0;
        for (int g = 0; g < 16; ++g) {
            isum += (x[i].scales[g] & 0xF) * dot_levels(q + 16 * g, y[i].qs + 16 * g, 16);
            imin += (x[i].scales[g] >> 4) * y[i].bsums[g];
        }
        s += y[i].d * (h2f(x[i].d) * static_cast<float>(isum) - h2f(x[i].dmin) * static_cast<float>(imin));
    }
    return s;
}

float q3_K_vec_dot_ref(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ3_K*>(w);
    const auto* y = static_cast<const BlockQ8_K*>(act);
    int8_t q[kQK_K];
    float s = 0;
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        decode_q3_K(x[i], q);
        int isum = 0;
        for (int g = 0; g < 16; ++g) isum += q3k_scale(g, x[i].scales) * dot_levels(q + 16 * g, y[i].qs + 16 * g, 16);
        s += y[i].d * (h2f(x[i].d) * static_cast<float>(isum));
    }
    return s;
}

// Q4_K and Q5_K share the dot: 8 groups of 32 with 6-bit scale and min, only the level
// decoder differs.
template <typename Block, void (*decode)(const Block&, uint8_t*)>
float k4_vec_dot_ref(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const Block*>(w);
    const auto* y = static_cast<const BlockQ8_K*>(act);
    uint8_t q[kQK_K];
    float s = 0;
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        decode(x[i], q);
        int isum = 0, imin = 0;
        for (int g = 0; g < 8; ++g) {
            uint8_t sc, m;
            k4_scale_min(g, x[i].scales, sc, m);
            isum += sc * dot_levels(q + 32 * g, y[i].qs + 32 * g, 32);
            imin += m * (y[i].bsums[2 * g] + y[i].bsums[2 * g + 1]);
        }
        s += y[i].d * (h2f(x[i].d) * static_cast<float>(isum) - h2f(x[i].dmin) * static_cast<float>(imin));
    }
    return s;
}

float q4_K_vec_dot_ref(int64_t n, const void* w, const void* act) {
    return k4_vec_dot_ref<BlockQ4_K, decode_q4_K>(n, w, act);
}

float q5_K_vec_dot_ref(int64_t n, const void* w, const void* act) {
    return k4_vec_dot_ref<BlockQ5_K, decode_q5_K>(n, w, act);
}

float q6_K_vec_dot_ref(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ6_K*>(w);
    const auto* y = static_cast<const BlockQ8_K*>(act);
    int8_t q[kQK_K];
    float s = 0;
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        decode_q6_K(x[i], q);
        int isum = 0;
        for (int g = 0; g < 16; ++g) isum += x[i].scales[g] * dot_levels(q + 16 * g, y[i].qs + 16 * g, 16);
        s += y[i].d * (h2f(x[i].d) * static_cast<float>(isum));
    }
    return s;
}

float iq4_xs_vec_dot_ref(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockIQ4_XS*>(w);
    const auto* y = static_cast<const BlockQ8_K*>(act);
    int8_t q[kQK_K];
    float s = 0;
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        decode_iq4_xs(x[i], q);
        int isum = 0;
        for (int g = 0; g < 8; ++g) isum += iq4_xs_scale(x[i], g) * dot_levels(q + 32 * g, y[i].qs + 32 * g, 32);
        s += y[i].d * (h2f(x[i].d) * static_cast<float>(isum));
    }
    return s;
}

}  // namespace ds3::quant

namespace ds3 {

namespace {

const TypeTraits& checked(TypeId t, int64_t n, bool has_kernel, const char* what) {
    const TypeTraits& tr = type_traits(t);
    if (!has_kernel)
        throw Error("quantize", std::string("type ") + std::string(tr.name) + " has no " + what);
    if (n < 0 || n % tr.block_size != 0)
        throw Error("quantize", std::string(what) + " of " + std::string(tr.name) + ": expected a multiple of " +
                                    std::to_string(tr.block_size) + " elements, found " + std::to_string(n));
    return tr;
}

}  // namespace

void dequantize_row(TypeId t, const void* src, float* dst, int64_t n) {
    const TypeTraits& tr = type_traits(t);
    checked(t, n, tr.to_float != nullptr, "dequantize").to_float(src, dst, n);
}

void quantize_row(TypeId t, const float* src, void* dst, int64_t n, const float* importance) {
    const TypeTraits& tr = type_traits(t);
    checked(t, n, tr.from_float != nullptr, "quantize").from_float(src, dst, n, importance);
}

float vec_dot_f32(TypeId t, int64_t n, const void* w, const float* x) {
    const TypeTraits& tr = type_traits(t);
    checked(t, n, tr.vec_dot != nullptr, "vec_dot");
    if (tr.vec_dot_type == TypeId::F32) return tr.vec_dot(n, w, x);
    const TypeTraits& at = type_traits(tr.vec_dot_type);
    checked(tr.vec_dot_type, n, true, "vec_dot");
    thread_local std::vector<uint8_t> act;
    act.resize(static_cast<size_t>(n / at.block_size * at.type_size));
    at.from_float(x, act.data(), n, nullptr);
    return tr.vec_dot(n, w, act.data());
}

}  // namespace ds3
