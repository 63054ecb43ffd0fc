// AVX2 and AVX-512 kernels for the hot paths: the Q8_0 / Q4_0 / Q4_K / Q6_K dot products
// and the Q8_0 / Q8_K activation quantisers. Each function carries its own target
// attribute, so this file builds without -march and the dispatch (simd.cpp) runs it only
// on CPUs that have the features.
//
// What "equal to the reference" means here:
//  - the quantisers produce the same bytes (same multiply, cvtps rounds to nearest even
//    like nearest_int, same clamp);
//  - the K-quant dots compute each block's integer sums exactly and then the reference's
//    float step per block, in block order: the same bits (this file is built with
//    -ffp-contract=off so no FMA sneaks into that step);
//  - the Q8_0 / Q4_0 dots have the same integer sum per 32-element block but accumulate
//    d·isum in vector lanes (one FMA per block instead of a horizontal sum): different
//    float summation order, bounded in tests/quantize (docs/quantization.md).
#include "quantize/simd_x86.h"

#if DS3_QUANT_X86

// GCC 12's AVX-512 headers build vectors from a deliberately uninitialised __Y
// (_mm512_undefined_*), which -Wuninitialized reports at every inlined use (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "quantize/blocks.h"
#include "quantize/float.h"

#define DS3_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DS3_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))

namespace ds3::quant {

namespace {

// --- AVX2 helpers -----------------------------------------------------------------------

DS3_AVX2 inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

DS3_AVX2 inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

DS3_AVX2 inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

DS3_AVX2 inline float hmin_ps(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// Pairwise Σ x·y into 16 int16 for signed bytes x (any value, -128 included: |−128| is 128
// as an unsigned byte) and y in [-127, 127] (our activation quantisers never make -128, so
// moving x's sign onto y cannot overflow). |sum| ≤ 2·128·127 < 2^15: no saturation.
DS3_AVX2 inline __m256i dot_pairs_s8(__m256i x, __m256i y) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

// 32 signed levels (-8..7) of a Q4_0 block in element order.
DS3_AVX2 inline __m256i q4_0_levels(const BlockQ4_0& b) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(raw, m4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
    return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
}

// The four 32-level groups of half h of a Q6_K block, unsigned 0..63: elements
// 128h + 32k + l for k = 0..3.
DS3_AVX2 inline void q6_K_levels(const BlockQ6_K& b, int h, __m256i q[4]) {
    const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.ql + 64 * h));
    const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.ql + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * h));
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    // (qh >> s) & 3, moved to bits 4..5; 16-bit shifts are safe because of the byte masks.
    const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4);
    const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4);
    const __m256i h4 = _mm256_and_si256(qh, _mm256_set1_epi8(0x30));
    const __m256i h6 = _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30));
    q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), h0);
    q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), h2);
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h4);
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h6);
}

// Stores 32 int32 lanes (in order) as int8; values must already be in [-128, 127].
DS3_AVX2 inline void store_i8x32(int8_t* out, __m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    const __m256i a = _mm256_packs_epi32(i0, i1);
    const __m256i c = _mm256_packs_epi32(i2, i3);
    // packs works per 128-bit lane: undo the interleave of 4-element chunks.
    const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, c), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), p);
}

// The element with the largest |x| (the first one on a tie of +a and -a), as the
// reference's scan finds it, from the block's max and min.
inline float signed_absmax_from(float mx, float mn, const float* x, int n) {
    const float amax = std::fmax(mx, -mn);
    if (mx == amax && -mn == amax) {
        for (int j = 0; j < n; ++j)
            if (std::fabs(x[j]) == amax) return x[j];
    }
    return mx == amax ? mx : mn;
}

}  // namespace

// --- AVX2 ---------------------------------------------------------------------------------

DS3_AVX2 float q8_0_vec_dot_avx2(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ8_0*>(w);
    const auto* y = static_cast<const BlockQ8_0*>(act);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / kQK8_0; ++i) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(x[i].d) * _cvtsh_ss(y[i].d));
        const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs));
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs));
        const __m256i p = _mm256_madd_epi16(dot_pairs_s8(qx, qy), ones);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
}

DS3_AVX2 float q4_0_vec_dot_avx2(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ4_0*>(w);
    const auto* y = static_cast<const BlockQ8_0*>(act);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / kQK4_0; ++i) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(x[i].d) * _cvtsh_ss(y[i].d));
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs));
        const __m256i p = _mm256_madd_epi16(dot_pairs_s8(q4_0_levels(x[i]), qy), ones);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
}

DS3_AVX2 float q4_K_vec_dot_avx2(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ4_K*>(w);
    const auto* y = static_cast<const BlockQ8_K*>(act);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    float s = 0;
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        uint8_t sc[8], mn[8];
        int imin = 0;
        for (int g = 0; g < 8; ++g) {
            k4_scale_min(g, x[i].scales, sc[g], mn[g]);
            imin += mn[g] * (y[i].bsums[2 * g] + y[i].bsums[2 * g + 1]);
        }
        __m256i acc = _mm256_setzero_si256();
        for (int p = 0; p < 4; ++p) {
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs + 32 * p));
            const __m256i lo = _mm256_and_si256(q, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs + 64 * p));
            const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs + 64 * p + 32));
            // levels ≤ 15 are valid unsigned operands of maddubs: |pair| ≤ 2·15·127
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), _mm256_set1_epi16(sc[2 * p]));
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), _mm256_set1_epi16(sc[2 * p + 1]));
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(p0, p1));
        }
        const int isum = hsum_epi32(acc);
        s += y[i].d * (_cvtsh_ss(x[i].d) * static_cast<float>(isum) - _cvtsh_ss(x[i].dmin) * static_cast<float>(imin));
    }
    return s;
}

DS3_AVX2 float q6_K_vec_dot_avx2(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ6_K*>(w);
    const auto* y = static_cast<const BlockQ8_K*>(act);
    const __m256i off = _mm256_set1_epi8(32);
    float s = 0;
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        __m256i acc = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            __m256i q[4];
            q6_K_levels(x[i], h, q);
            for (int k = 0; k < 4; ++k) {
                const __m256i lv = _mm256_sub_epi8(q[k], off);  // -32..31
                const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs + 128 * h + 32 * k));
                // int16 lanes 0..7 are the first 16 elements (scale g), 8..15 the next 16 (g+1).
                const int g = 8 * h + 2 * k;
                const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(x[i].scales[g + 1]), _mm_set1_epi16(x[i].scales[g]));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(dot_pairs_s8(lv, a), scv));
            }
        }
        const int isum = hsum_epi32(acc);
        s += y[i].d * (_cvtsh_ss(x[i].d) * static_cast<float>(isum));
    }
    return s;
}

DS3_AVX2 void q8_0_from_float_avx2(const float* src, void* dst, int64_t n, const float*) {
    auto* b = static_cast<BlockQ8_0*>(dst);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / kQK8_0; ++i, src += kQK8_0) {
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 4; ++k) {
            v[k] = _mm256_loadu_ps(src + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
        }
        const float amax = hmax_ps(m);
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = f32_to_f16(d);
        const __m256 sc = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; ++k) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], sc));
        store_i8x32(b[i].qs, q[0], q[1], q[2], q[3]);
    }
}

DS3_AVX2 void q8_K_from_float_avx2(const float* src, void* dst, int64_t n, const float*) {
    auto* b = static_cast<BlockQ8_K*>(dst);
    const __m256i lim = _mm256_set1_epi32(127);
    for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
        __m256 vmax = _mm256_loadu_ps(src), vmin = vmax;
        for (int k = 1; k < kQK_K / 8; ++k) {
            const __m256 v = _mm256_loadu_ps(src + 8 * k);
            vmax = _mm256_max_ps(vmax, v);
            vmin = _mm256_min_ps(vmin, v);
        }
        const float mx = hmax_ps(vmax), mn = hmin_ps(vmin);
        if (mx == 0 && mn == 0) {
            std::memset(&b[i], 0, sizeof(BlockQ8_K));
            continue;
        }
        const float max = signed_absmax_from(mx, mn, src, kQK_K);
        const float iscale = -127.0f / max;
        const __m256 sc = _mm256_set1_ps(iscale);
        for (int g = 0; g < kQK_K / 32; ++g) {
            __m256i q[4];
            for (int k = 0; k < 4; ++k)
                q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + 32 * g + 8 * k), sc)), lim);
            b[i].bsums[2 * g] = static_cast<int16_t>(hsum_epi32(_mm256_add_epi32(q[0], q[1])));
            b[i].bsums[2 * g + 1] = static_cast<int16_t>(hsum_epi32(_mm256_add_epi32(q[2], q[3])));
            store_i8x32(b[i].qs + 32 * g, q[0], q[1], q[2], q[3]);
        }
        b[i].d = 1.0f / iscale;
    }
}

// --- AVX-512 (F + BW + VL) ----------------------------------------------------------------

namespace {

// 512-bit form of dot_pairs_s8; AVX-512 has no sign_epi8, so negate y under x's sign mask.
DS3_AVX512 inline __m512i dot_pairs_s8_512(__m512i x, __m512i y) {
    const __mmask64 neg = _mm512_movepi8_mask(x);
    return _mm512_maddubs_epi16(_mm512_abs_epi8(x), _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y));
}

DS3_AVX512 inline __m512i join256(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

}  // namespace

DS3_AVX512 float q8_0_vec_dot_avx512(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ8_0*>(w);
    const auto* y = static_cast<const BlockQ8_0*>(act);
    const int64_t nb = n / kQK8_0;
    const __m512i ones = _mm512_set1_epi16(1);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {  // two blocks per 512-bit register
        const __m512i qx = join256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs)),
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i + 1].qs)));
        const __m512i qy = join256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs)),
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i + 1].qs)));
        const __m512 d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(_cvtsh_ss(x[i].d) * _cvtsh_ss(y[i].d)),
                                              _mm512_set1_ps(_cvtsh_ss(x[i + 1].d) * _cvtsh_ss(y[i + 1].d)));
        const __m512i p = _mm512_madd_epi16(dot_pairs_s8_512(qx, qy), ones);
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
    }
    float s = _mm512_reduce_add_ps(acc);
    if (i < nb) {
        const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs));
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs));
        const int isum = hsum_epi32(_mm256_madd_epi16(dot_pairs_s8(qx, qy), _mm256_set1_epi16(1)));
        s += static_cast<float>(isum) * (_cvtsh_ss(x[i].d) * _cvtsh_ss(y[i].d));
    }
    return s;
}

DS3_AVX512 float q4_0_vec_dot_avx512(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ4_0*>(w);
    const auto* y = static_cast<const BlockQ8_0*>(act);
    const int64_t nb = n / kQK4_0;
    const __m512i ones = _mm512_set1_epi16(1);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m512i qx = join256(q4_0_levels(x[i]), q4_0_levels(x[i + 1]));
        const __m512i qy = join256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs)),
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i + 1].qs)));
        const __m512 d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(_cvtsh_ss(x[i].d) * _cvtsh_ss(y[i].d)),
                                              _mm512_set1_ps(_cvtsh_ss(x[i + 1].d) * _cvtsh_ss(y[i + 1].d)));
        const __m512i p = _mm512_madd_epi16(dot_pairs_s8_512(qx, qy), ones);
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
    }
    float s = _mm512_reduce_add_ps(acc);
    if (i < nb) {
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs));
        const int isum = hsum_epi32(_mm256_madd_epi16(dot_pairs_s8(q4_0_levels(x[i]), qy), _mm256_set1_epi16(1)));
        s += static_cast<float>(isum) * (_cvtsh_ss(x[i].d) * _cvtsh_ss(y[i].d));
    }
    return s;
}

DS3_AVX512 float q4_K_vec_dot_avx512(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ4_K*>(w);
    const auto* y = static_cast<const BlockQ8_K*>(act);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    float s = 0;
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        uint8_t sc[8], mn[8];
        int imin = 0;
        for (int g = 0; g < 8; ++g) {
            k4_scale_min(g, x[i].scales, sc[g], mn[g]);
            imin += mn[g] * (y[i].bsums[2 * g] + y[i].bsums[2 * g + 1]);
        }
        __m512i acc = _mm512_setzero_si512();
        for (int p = 0; p < 4; ++p) {
            // 64 elements 64p..64p+63: low nibbles then high nibbles, against 64 contiguous activations.
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs + 32 * p));
            const __m512i lv = join256(_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
            const __m512i a = _mm512_loadu_si512(y[i].qs + 64 * p);
            const __m512i scv = join256(_mm256_set1_epi16(sc[2 * p]), _mm256_set1_epi16(sc[2 * p + 1]));
            acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(lv, a), scv));
        }
        const int isum = _mm512_reduce_add_epi32(acc);
        s += y[i].d * (_cvtsh_ss(x[i].d) * static_cast<float>(isum) - _cvtsh_ss(x[i].dmin) * static_cast<float>(imin));
    }
    return s;
}

DS3_AVX512 float q6_K_vec_dot_avx512(int64_t n, const void* w, const void* act) {
    const auto* x = static_cast<const BlockQ6_K*>(w);
    const auto* y = static_cast<const BlockQ8_K*>(act);
    const __m512i off = _mm512_set1_epi8(32);
    // int16 lane k of the 64 elements starting at 128h + 64j belongs to scale 8h + 4j + k/8.
    __m512i idx[2][2];
    for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 2; ++j) {
            alignas(64) int16_t t[32];
            for (int k = 0; k < 32; ++k) t[k] = static_cast<int16_t>(8 * h + 4 * j + k / 8);
            idx[h][j] = _mm512_load_si512(t);
        }
    float s = 0;
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const __m512i sc16 =
            _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].scales))));
        __m512i acc = _mm512_setzero_si512();
        for (int h = 0; h < 2; ++h) {
            __m256i q[4];
            q6_K_levels(x[i], h, q);
            for (int j = 0; j < 2; ++j) {
                const __m512i lv = _mm512_sub_epi8(join256(q[2 * j], q[2 * j + 1]), off);
                const __m512i a = _mm512_loadu_si512(y[i].qs + 128 * h + 64 * j);
                const __m512i scv = _mm512_permutexvar_epi16(idx[h][j], sc16);
                acc = _mm512_add_epi32(acc, _mm512_madd_epi16(dot_pairs_s8_512(lv, a), scv));
            }
        }
        const int isum = _mm512_reduce_add_epi32(acc);
        s += y[i].d * (_cvtsh_ss(x[i].d) * static_cast<float>(isum));
    }
    return s;
}

DS3_AVX512 void q8_0_from_float_avx512(const float* src, void* dst, int64_t n, const float*) {
    auto* b = static_cast<BlockQ8_0*>(dst);
    for (int64_t i = 0; i < n / kQK8_0; ++i, src += kQK8_0) {
        const __m512 v0 = _mm512_loadu_ps(src), v1 = _mm512_loadu_ps(src + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = f32_to_f16(d);
        const __m512 sc = _mm512_set1_ps(id);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(b[i].qs), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, sc))));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(b[i].qs + 16),
                         _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, sc))));
    }
}

DS3_AVX512 void q8_K_from_float_avx512(const float* src, void* dst, int64_t n, const float*) {
    auto* b = static_cast<BlockQ8_K*>(dst);
    const __m512i lim = _mm512_set1_epi32(127);
    for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
        __m512 vmax = _mm512_loadu_ps(src), vmin = vmax;
        for (int k = 1; k < kQK_K / 16; ++k) {
            const __m512 v = _mm512_loadu_ps(src + 16 * k);
            vmax = _mm512_max_ps(vmax, v);
            vmin = _mm512_min_ps(vmin, v);
        }
        const float mx = _mm512_reduce_max_ps(vmax), mn = _mm512_reduce_min_ps(vmin);
        if (mx == 0 && mn == 0) {
            std::memset(&b[i], 0, sizeof(BlockQ8_K));
            continue;
        }
        const float max = signed_absmax_from(mx, mn, src, kQK_K);
        const float iscale = -127.0f / max;
        const __m512 sc = _mm512_set1_ps(iscale);
        for (int g = 0; g < kQK_K / 16; ++g) {  // one 16-element bsum group per register
            const __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(src + 16 * g), sc)), lim);
            b[i].bsums[g] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(b[i].qs + 16 * g), _mm512_cvtsepi32_epi8(q));
        }
        b[i].d = 1.0f / iscale;
    }
}

}  // namespace ds3::quant

#endif  // DS3_QUANT_X86
