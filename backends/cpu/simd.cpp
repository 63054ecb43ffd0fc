#include "backends/cpu/simd.h"

#include <cstring>
#include <vector>

#include "quantize/float.h"
#include "quantize/simd.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ds3::cpu {

namespace {

// f16 → f32 through a table: cheaper than the bit manipulation in a scalar loop.
const float* f16_table() {
    static const std::vector<float> table = [] {
        std::vector<float> t(65536);
        for (uint32_t i = 0; i < 65536; ++i) t[i] = ds3::f16_to_f32(static_cast<uint16_t>(i));
        return t;
    }();
    return table.data();
}

uint16_t load_u16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return h;
}

// Eight independent accumulators: lets the compiler vectorise without -ffast-math.
template <class Load>
float dot_generic(Load load, const float* x, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += load(i + j) * x[i + j];
    float s = 0.0f;
    for (; i < n; ++i) s += load(i) * x[i];
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

float dot_f32_scalar(const float* a, const float* b, int64_t n) {
    return dot_generic([a](int64_t i) { return a[i]; }, b, n);
}
float dot_bf16_scalar(const uint8_t* w, const float* x, int64_t n) {
    return dot_generic([w](int64_t i) { return bf16_to_f32(load_u16(w + 2 * i)); }, x, n);
}
float dot_f16_scalar(const uint8_t* w, const float* x, int64_t n) {
    const float* tab = f16_table();
    return dot_generic([w, tab](int64_t i) { return tab[load_u16(w + 2 * i)]; }, x, n);
}
void bf16_to_f32_scalar(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
}
void f16_to_f32_scalar(const uint8_t* src, float* dst, int64_t n) {
    const float* tab = f16_table();
    for (int64_t i = 0; i < n; ++i) dst[i] = tab[load_u16(src + 2 * i)];
}

void dot_4x2_f32_scalar(const float* const* w, const float* x0, const float* x1, int64_t n, float* out) {
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = dot_f32_scalar(w[i], x0, n);
        out[2 * i + 1] = dot_f32_scalar(w[i], x1, n);
    }
}

#if defined(__x86_64__)
#define DS3_AVX2 __attribute__((target("avx2,fma,f16c")))

DS3_AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

DS3_AVX2 __m256 load_bf16x8(const uint8_t* p) {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));  // bf16 is the top half of an f32
}

DS3_AVX2 __m256 load_f16x8(const uint8_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Two accumulators of 8: enough independent FMAs to hide their latency on one core.
#define DS3_DOT_AVX2(NAME, T, LOAD, SCALAR_TAIL)                                       \
    DS3_AVX2 float NAME(const T* w, const float* x, int64_t n) {                     \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                    \
        int64_t i = 0;                                                                \
        for (; i + 16 <= n; i += 16) {                                                \
            a0 = _mm256_fmadd_ps(LOAD(w, i), _mm256_loadu_ps(x + i), a0);             \
            a1 = _mm256_fmadd_ps(LOAD(w, i + 8), _mm256_loadu_ps(x + i + 8), a1);     \
        }                                                                             \
        for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(LOAD(w, i), _mm256_loadu_ps(x + i), a0); \
        float s = hsum(_mm256_add_ps(a0, a1));                                        \
        for (; i < n; ++i) s += SCALAR_TAIL;                                          \
        return s;                                                                     \
    }

#define LOAD_F32(w, i) _mm256_loadu_ps((w) + (i))
#define LOAD_BF16(w, i) load_bf16x8((w) + 2 * (i))
#define LOAD_F16(w, i) load_f16x8((w) + 2 * (i))
DS3_DOT_AVX2(dot_f32_avx2, float, LOAD_F32, w[i] * x[i])
DS3_DOT_AVX2(dot_bf16_avx2, uint8_t, LOAD_BF16, bf16_to_f32(load_u16(w + 2 * i)) * x[i])
DS3_DOT_AVX2(dot_f16_avx2, uint8_t, LOAD_F16, f16_table()[load_u16(w + 2 * i)] * x[i])
#undef LOAD_F32
#undef LOAD_BF16
#undef LOAD_F16
#undef DS3_DOT_AVX2

// 8 accumulators (4 weight rows × 2 activation rows) + 2 activation loads + 1 weight
// load live in 11 of the 16 ymm registers.
DS3_AVX2 void dot_4x2_f32_avx2(const float* const* w, const float* x0, const float* x1, int64_t n, float* out) {
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 a0 = _mm256_loadu_ps(x0 + i), a1 = _mm256_loadu_ps(x1 + i);
        for (int r = 0; r < 4; ++r) {
            const __m256 wv = _mm256_loadu_ps(w[r] + i);
            acc[2 * r] = _mm256_fmadd_ps(wv, a0, acc[2 * r]);
            acc[2 * r + 1] = _mm256_fmadd_ps(wv, a1, acc[2 * r + 1]);
        }
    }
    for (int r = 0; r < 4; ++r) {
        float s0 = hsum(acc[2 * r]), s1 = hsum(acc[2 * r + 1]);
        for (int64_t j = i; j < n; ++j) {
            s0 += w[r][j] * x0[j];
            s1 += w[r][j] * x1[j];
        }
        out[2 * r] = s0;
        out[2 * r + 1] = s1;
    }
}

DS3_AVX2 void bf16_to_f32_avx2(const uint8_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_bf16x8(src + 2 * i));
    for (; i < n; ++i) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
}

DS3_AVX2 void f16_to_f32_avx2(const uint8_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16x8(src + 2 * i));
    for (; i < n; ++i) dst[i] = f16_table()[load_u16(src + 2 * i)];
}
#undef DS3_AVX2
#endif

}  // namespace

const RowKernels& scalar_kernels() {
    static const RowKernels k{dot_f32_scalar,     dot_bf16_scalar,    dot_f16_scalar, bf16_to_f32_scalar,
                              f16_to_f32_scalar, dot_4x2_f32_scalar, "scalar"};
    return k;
}

const RowKernels& best_kernels() {
#if defined(__x86_64__)
    static const bool avx2 = quant::simd_level_available(quant::SimdLevel::avx2);  // avx2 + fma + f16c
    static const RowKernels k{dot_f32_avx2,    dot_bf16_avx2,    dot_f16_avx2, bf16_to_f32_avx2,
                              f16_to_f32_avx2, dot_4x2_f32_avx2, "avx2"};
    if (avx2) return k;
#endif
    return scalar_kernels();
}

}  // namespace ds3::cpu
