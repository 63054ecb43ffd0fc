// Scalar reference quantisers. Each block's scales are chosen by a small search (the idea
// of ggml's make_qx_quants / make_qkx2_quants, our own code): try a handful of candidate
// scales around the one that maps the largest value onto the end of the grid, round to
// levels, refit the scale (and offset) by weighted least squares for those levels, keep
// the candidate with the smallest weighted squared error. The weight of element i is the
// caller's importance[i] when given (the imatrix), else 1: without importance we minimise
// the plain squared error, which is what the round-trip tests measure.
//
// K-quants then quantise the per-sub-block scales themselves (6, 4 or 8 bits against an
// f16 super-scale) and round every element again against the scale actually stored, so
// the stored levels are the best ones for the stored scales.
#include <algorithm>
#include <cmath>
#include <limits>

#include "quantize/blocks.h"
#include "quantize/float.h"
#include "quantize/formats.h"

namespace ds3::quant {

namespace {

float h2f(uint16_t h) { return f16_to_f32(h); }

// The importance of one block, or nullptr (= all ones) when there is none or it is all
// zero there (a column never seen in calibration must not zero the block).
const float* block_importance(const float* imp, int n) {
    if (!imp) return nullptr;
    double s = 0;
    for (int i = 0; i < n; ++i) s += imp[i];
    return s > 0 ? imp : nullptr;
}

inline float wt(const float* w, int i) { return w ? w[i] : 1.0f; }

// x ≈ d·l with l in [nmin, nmax] (nmin < 0 < nmax). The largest |x| goes to nmin (the
// longer side of the grid), give or take 0.1·ntry levels. Returns d (signed), writes L.
float fit_symmetric(int n, const float* x, const float* w, int nmin, int nmax, int ntry, int8_t* L) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; ++i)
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
        }
    if (amax < 1e-30f) {
        std::fill(L, L + n, int8_t{0});
        return 0;
    }
    int8_t tmp[kQK_K];
    double best_score = -1;
    float best_d = 0;
    auto attempt = [&](float iscale) {
        double sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::clamp(nearest_int(iscale * x[i]), nmin, nmax);
            tmp[i] = static_cast<int8_t>(l);
            sumlx += static_cast<double>(wt(w, i)) * x[i] * l;
            suml2 += static_cast<double>(wt(w, i)) * l * l;
        }
        // For fixed levels the best d is sumlx/suml2 and the error is Σw·x² - sumlx²/suml2.
        if (suml2 > 0 && sumlx * sumlx / suml2 > best_score) {
            best_score = sumlx * sumlx / suml2;
            best_d = static_cast<float>(sumlx / suml2);
            std::copy(tmp, tmp + n, L);
        }
    };
    for (int k = -ntry; k <= ntry; ++k) attempt((static_cast<float>(nmin) + 0.1f * static_cast<float>(k)) / max);
    if (best_d != 0) attempt(1.0f / best_d);  // round once more against the fitted scale
    if (best_score < 0) std::fill(L, L + n, int8_t{0});
    return best_d;
}

// x ≈ d·l - m with l in [0, nmax], d ≥ 0, m ≥ 0 (the K-quants store the offset as a
// positive min that is subtracted). Candidate scales (nmax + rmin + rdelta·k)/(max - min).
float fit_asymmetric(int n, const float* x, const float* w, int nmax, float rmin, float rdelta, int ntry,
                     uint8_t* L, float* m_out) {
    float min = x[0], max = x[0];
    for (int i = 1; i < n; ++i) {
        min = std::min(min, x[i]);
        max = std::max(max, x[i]);
    }
    if (min > 0) min = 0;
    if (!(max > min)) {
        std::fill(L, L + n, uint8_t{0});
        *m_out = -min;
        return 0;
    }
    uint8_t tmp[kQK_K];
    auto error_of = [&](const uint8_t* lv, float d, float mn) {
        double e = 0;
        for (int i = 0; i < n; ++i) {
            const double diff = static_cast<double>(d) * lv[i] + mn - x[i];
            e += wt(w, i) * diff * diff;
        }
        return e;
    };
    // Start from the plain min/max mapping.
    float best_d = (max - min) / static_cast<float>(nmax), best_min = min;
    {
        const float iscale = static_cast<float>(nmax) / (max - min);
        for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    }
    double best_err = error_of(L, best_d, best_min);
    for (int k = 0; k <= ntry; ++k) {
        const float iscale = (static_cast<float>(nmax) + rmin + rdelta * static_cast<float>(k)) / (max - min);
        double sw = 0, sl = 0, sll = 0, sx = 0, slx = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
            tmp[i] = static_cast<uint8_t>(l);
            const double wi = wt(w, i);
            sw += wi;
            sl += wi * l;
            sll += wi * l * l;
            sx += wi * x[i];
            slx += wi * l * x[i];
        }
        const double det = sw * sll - sl * sl;
        if (det <= 0) continue;
        double d = (sw * slx - sx * sl) / det;
        double mn = (sll * sx - sl * slx) / det;
        if (mn > 0) {  // the offset must not be positive: refit the scale alone
            mn = 0;
            d = slx / sll;
        }
        if (!(d > 0)) continue;
        const double e = error_of(tmp, static_cast<float>(d), static_cast<float>(mn));
        if (e < best_err) {
            best_err = e;
            best_d = static_cast<float>(d);
            best_min = static_cast<float>(mn);
            std::copy(tmp, tmp + n, L);
        }
    }
    *m_out = -best_min;
    return best_d;
}

// The nearest of the 16 IQ4_NL values (ties to the lower index).
int iq4_index(float v) {
    int best = 0;
    float bd = std::fabs(v - kIQ4NLValues[0]);
    for (int k = 1; k < 16; ++k) {
        const float dd = std::fabs(v - kIQ4NLValues[k]);
        if (dd < bd) {
            bd = dd;
            best = k;
        }
    }
    return best;
}

// x ≈ d·kIQ4NLValues[idx]: candidate scales put the largest |x| at -127 + k, k in
// [-ntry, ntry]; d refit by weighted least squares. Returns d (signed).
float fit_iq4(int n, const float* x, const float* w, int ntry) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; ++i)
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
        }
    if (amax < 1e-30f) return 0;
    double best_score = -1;
    float best_d = 0;
    for (int k = -ntry; k <= ntry; ++k) {
        const float id = (static_cast<float>(kIQ4NLValues[0]) + static_cast<float>(k)) / max;
        double sumqx = 0, sumq2 = 0;
        for (int i = 0; i < n; ++i) {
            const double q = kIQ4NLValues[iq4_index(id * x[i])];
            sumqx += wt(w, i) * q * x[i];
            sumq2 += wt(w, i) * q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx / sumq2 > best_score) {
            best_score = sumqx * sumqx / sumq2;
            best_d = static_cast<float>(sumqx / sumq2);
        }
    }
    return best_d;
}

int round_level(float x, float d, int lo, int hi) {
    return d == 0 ? std::clamp(0, lo, hi) : std::clamp(nearest_int(x / d), lo, hi);
}

// Largest |v| among n values, with its sign.
float signed_absmax(const float* v, int n) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; ++i)
        if (std::fabs(v[i]) > amax) {
            amax = std::fabs(v[i]);
            max = v[i];
        }
    return max;
}

// Packs 8 scales and 8 mins (6 bits each) the way k4_scale_min reads them.
void pack_k4_scales(const uint8_t* ls, const uint8_t* lm, uint8_t* q) {
    for (int j = 0; j < 4; ++j) {
        q[j] = ls[j];
        q[j + 4] = lm[j];
    }
    for (int j = 4; j < 8; ++j) {
        q[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
        q[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
        q[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
}

// Quantises n non-negative values onto [0, nmax] against one f16 super-scale; returns
// the stored f16 bits.
uint16_t quantize_positive_scales(const float* v, int n, int nmax, uint8_t* out) {
    const float max = *std::max_element(v, v + n);
    const float inv = max > 0 ? static_cast<float>(nmax) / max : 0.0f;
    for (int j = 0; j < n; ++j) out[j] = static_cast<uint8_t>(std::min(nmax, nearest_int(inv * v[j])));
    return f32_to_f16(max / static_cast<float>(nmax));
}

// Shared by Q4_K and Q5_K: per 32-element sub-block an asymmetric fit with nmax levels,
// then 6-bit scales and mins. Writes d, dmin, scales and the final levels L.
void quantize_k4_like(const float* x, const float* imp, int nmax, float rmin, float rdelta, int ntry,
                      uint16_t& d, uint16_t& dmin, uint8_t* scales, uint8_t* L) {
    float sc[8], mn[8];
    for (int s = 0; s < 8; ++s) {
        const float* w = block_importance(imp ? imp + 32 * s : nullptr, 32);
        sc[s] = fit_asymmetric(32, x + 32 * s, w, nmax, rmin, rdelta, ntry, L + 32 * s, &mn[s]);
    }
    uint8_t ls[8], lm[8];
    d = quantize_positive_scales(sc, 8, 63, ls);
    dmin = quantize_positive_scales(mn, 8, 63, lm);
    std::memset(scales, 0, kKScaleSize);
    pack_k4_scales(ls, lm, scales);
    const float df = h2f(d), mf = h2f(dmin);
    for (int s = 0; s < 8; ++s) {
        uint8_t a, b;
        k4_scale_min(s, scales, a, b);
        const float dl = df * a, ml = mf * b;
        for (int l = 0; l < 32; ++l) L[32 * s + l] = static_cast<uint8_t>(round_level(x[32 * s + l] + ml, dl, 0, nmax));
    }
}

}  // namespace

// --- Q8_0 / Q4_0 ----------------------------------------------------------------------

void q8_0_from_float_ref(const float* src, void* dst, int64_t n, const float*) {
    auto* b = static_cast<BlockQ8_0*>(dst);
    for (int64_t i = 0; i < n / kQK8_0; ++i, src += kQK8_0) {
        float amax = 0;
        for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(src[j]));
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = f32_to_f16(d);
        for (int j = 0; j < kQK8_0; ++j) b[i].qs[j] = static_cast<int8_t>(nearest_int(src[j] * id));
    }
}

void q4_0_from_float_ref(const float* src, void* dst, int64_t n, const float* importance) {
    auto* b = static_cast<BlockQ4_0*>(dst);
    int8_t L[kQK4_0];
    for (int64_t i = 0; i < n / kQK4_0; ++i, src += kQK4_0) {
        const float* w = block_importance(importance ? importance + i * kQK4_0 : nullptr, kQK4_0);
        const float d = fit_symmetric(kQK4_0, src, w, -8, 7, 9, L);
        b[i].d = f32_to_f16(d);
        const float df = h2f(b[i].d);
        uint8_t u[kQK4_0];
        for (int j = 0; j < kQK4_0; ++j) u[j] = static_cast<uint8_t>(round_level(src[j], df, -8, 7) + 8);
        for (int j = 0; j < kQK4_0 / 2; ++j) b[i].qs[j] = static_cast<uint8_t>(u[j] | (u[j + 16] << 4));
    }
}

// --- Q8_K: ggml's activation quantiser exactly (the largest |x| maps to -127) ----------

void q8_K_from_float_ref(const float* src, void* dst, int64_t n, const float*) {
    auto* b = static_cast<BlockQ8_K*>(dst);
    for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
        const float max = signed_absmax(src, kQK_K);
        if (max == 0) {
            std::memset(&b[i], 0, sizeof(BlockQ8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < kQK_K; ++j) b[i].qs[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * src[j])));
        for (int g = 0; g < kQK_K / 16; ++g) {
            int s = 0;
            for (int l = 0; l < 16; ++l) s += b[i].qs[16 * g + l];
            b[i].bsums[g] = static_cast<int16_t>(s);
        }
        b[i].d = 1.0f / iscale;
    }
}

// --- K-quants -----------------------------------------------------------------------------

void q2_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance) {
    auto* b = static_cast<BlockQ2_K*>(dst);
    for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
        const float* imp = importance ? importance + i * kQK_K : nullptr;
        uint8_t L[kQK_K];
        float sc[16], mn[16];
        for (int s = 0; s < 16; ++s) {
            const float* w = block_importance(imp ? imp + 16 * s : nullptr, 16);
            sc[s] = fit_asymmetric(16, src + 16 * s, w, 3, -0.5f, 0.1f, 15, L + 16 * s, &mn[s]);
        }
        uint8_t ls[16], lm[16];
        b[i].d = quantize_positive_scales(sc, 16, 15, ls);
        b[i].dmin = quantize_positive_scales(mn, 16, 15, lm);
        const float df = h2f(b[i].d), mf = h2f(b[i].dmin);
        for (int s = 0; s < 16; ++s) {
            b[i].scales[s] = static_cast<uint8_t>(ls[s] | (lm[s] << 4));
            for (int l = 0; l < 16; ++l)
                L[16 * s + l] = static_cast<uint8_t>(round_level(src[16 * s + l] + mf * lm[s], df * ls[s], 0, 3));
        }
        std::memset(b[i].qs, 0, sizeof b[i].qs);
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < 4; ++j)
                for (int l = 0; l < 32; ++l) b[i].qs[32 * h + l] |= static_cast<uint8_t>(L[128 * h + 32 * j + l] << (2 * j));
    }
}

namespace {

// The sixteen 16-element sub-blocks of a 256-block, each fitted symmetrically to levels
// [nmin, nmax] with its own importance (Q3_K, Q6_K): scales to sc, levels to L.
void fit_sub16(const float* x, const float* imp, int nmin, int nmax, int8_t* L, float* sc) {
    for (int s = 0; s < 16; ++s) {
        const float* w = block_importance(imp ? imp + 16 * s : nullptr, 16);
        sc[s] = fit_symmetric(16, x + 16 * s, w, nmin, nmax, 9, L + 16 * s);
    }
}

}  // namespace

void q3_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance) {
    auto* b = static_cast<BlockQ3_K*>(dst);
    for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
        const float* imp = importance ? importance + i * kQK_K : nullptr;
        int8_t L[kQK_K];
        float sc[16];
        fit_sub16(src, imp, -4, 3, L, sc);
        // Signed 6-bit scales: the largest |scale| maps to -32.
        const float max = signed_absmax(sc, 16);
        std::memset(b[i].scales, 0, sizeof b[i].scales);
        float df = 0;
        int ls[16] = {};
        if (max != 0) {
            const float iscale = -32.0f / max;
            for (int s = 0; s < 16; ++s) ls[s] = std::clamp(nearest_int(iscale * sc[s]), -32, 31);
            b[i].d = f32_to_f16(1.0f / iscale);
            df = h2f(b[i].d);
        } else {
            b[i].d = 0;
        }
        for (int s = 0; s < 16; ++s) {
            const int u = ls[s] + 32;
            if (s < 8) b[i].scales[s] |= static_cast<uint8_t>(u & 0xF);
            else b[i].scales[s - 8] |= static_cast<uint8_t>((u & 0xF) << 4);
            b[i].scales[8 + (s & 3)] |= static_cast<uint8_t>((u >> 4) << (2 * (s / 4)));
            for (int l = 0; l < 16; ++l) L[16 * s + l] = static_cast<int8_t>(round_level(src[16 * s + l], df * ls[s], -4, 3));
        }
        std::memset(b[i].qs, 0, sizeof b[i].qs);
        std::memset(b[i].hmask, 0, sizeof b[i].hmask);
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < 4; ++j)
                for (int l = 0; l < 32; ++l) {
                    const int u = L[128 * h + 32 * j + l] + 4;  // 0..7: bit 2 to hmask, bits 0..1 to qs
                    b[i].qs[32 * h + l] |= static_cast<uint8_t>((u & 3) << (2 * j));
                    if (u & 4) b[i].hmask[l] |= static_cast<uint8_t>(1u << (4 * h + j));
                }
    }
}

void q4_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance) {
    auto* b = static_cast<BlockQ4_K*>(dst);
    for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
        uint8_t L[kQK_K];
        quantize_k4_like(src, importance ? importance + i * kQK_K : nullptr, 15, -1.0f, 0.1f, 20, b[i].d, b[i].dmin,
                         b[i].scales, L);
        for (int p = 0; p < 4; ++p)
            for (int l = 0; l < 32; ++l)
                b[i].qs[32 * p + l] = static_cast<uint8_t>(L[64 * p + l] | (L[64 * p + 32 + l] << 4));
    }
}

void q5_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance) {
    auto* b = static_cast<BlockQ5_K*>(dst);
    for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
        uint8_t L[kQK_K];
        quantize_k4_like(src, importance ? importance + i * kQK_K : nullptr, 31, -0.5f, 0.1f, 15, b[i].d, b[i].dmin,
                         b[i].scales, L);
        std::memset(b[i].qh, 0, sizeof b[i].qh);
        for (int p = 0; p < 4; ++p)
            for (int l = 0; l < 32; ++l) {
                const uint8_t lo = L[64 * p + l], hi = L[64 * p + 32 + l];
                b[i].qs[32 * p + l] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
                b[i].qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * p)) | ((hi >> 4) << (2 * p + 1)));
            }
    }
}

void q6_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance) {
    auto* b = static_cast<BlockQ6_K*>(dst);
    for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
        const float* imp = importance ? importance + i * kQK_K : nullptr;
        int8_t L[kQK_K];
        float sc[16];
        fit_sub16(src, imp, -32, 31, L, sc);
        // 8-bit signed scales: the largest |scale| maps to -128.
        const float max = signed_absmax(sc, 16);
        float df = 0;
        if (max != 0) {
            const float iscale = -128.0f / max;
            for (int s = 0; s < 16; ++s) b[i].scales[s] = static_cast<int8_t>(std::min(127, nearest_int(iscale * sc[s])));
            b[i].d = f32_to_f16(1.0f / iscale);
            df = h2f(b[i].d);
        } else {
            std::memset(b[i].scales, 0, sizeof b[i].scales);
            b[i].d = 0;
        }
        uint8_t u[kQK_K];
        for (int s = 0; s < 16; ++s)
            for (int l = 0; l < 16; ++l)
                u[16 * s + l] = static_cast<uint8_t>(round_level(src[16 * s + l], df * b[i].scales[s], -32, 31) + 32);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* v = u + 128 * h;
            for (int l = 0; l < 32; ++l) {
                b[i].ql[64 * h + l] = static_cast<uint8_t>((v[l] & 0xF) | ((v[l + 64] & 0xF) << 4));
                b[i].ql[64 * h + 32 + l] = static_cast<uint8_t>((v[l + 32] & 0xF) | ((v[l + 96] & 0xF) << 4));
                b[i].qh[32 * h + l] = static_cast<uint8_t>((v[l] >> 4) | ((v[l + 32] >> 4) << 2) | ((v[l + 64] >> 4) << 4) |
                                                           ((v[l + 96] >> 4) << 6));
            }
        }
    }
}

// --- IQ4_XS -----------------------------------------------------------------------------

void iq4_xs_from_float_ref(const float* src, void* dst, int64_t n, const float* importance) {
    auto* b = static_cast<BlockIQ4_XS*>(dst);
    for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
        const float* imp = importance ? importance + i * kQK_K : nullptr;
        float sc[8];
        for (int s = 0; s < 8; ++s) sc[s] = fit_iq4(32, src + 32 * s, block_importance(imp ? imp + 32 * s : nullptr, 32), 7);
        // Signed 6-bit scales (stored + 32): the largest |scale| maps to -32.
        const float max = signed_absmax(sc, 8);
        int ls[8] = {};
        float df = 0;
        if (max != 0) {
            const float d = -max / 32.0f;
            const float id = 1.0f / d;
            for (int s = 0; s < 8; ++s) ls[s] = std::clamp(nearest_int(id * sc[s]), -32, 31);
            b[i].d = f32_to_f16(d);
            df = h2f(b[i].d);
        } else {
            b[i].d = 0;
        }
        b[i].scales_h = 0;
        std::memset(b[i].scales_l, 0, sizeof b[i].scales_l);
        for (int s = 0; s < 8; ++s) {
            const int u = ls[s] + 32;
            b[i].scales_l[s / 2] |= static_cast<uint8_t>((u & 0xF) << (4 * (s % 2)));
            b[i].scales_h |= static_cast<uint16_t>((u >> 4) << (2 * s));
            const float dl = df * ls[s];
            const float idl = dl != 0 ? 1.0f / dl : 0.0f;
            for (int j = 0; j < 16; ++j) {
                const int lo = iq4_index(src[32 * s + j] * idl);
                const int hi = iq4_index(src[32 * s + 16 + j] * idl);
                b[i].qs[16 * s + j] = static_cast<uint8_t>(lo | (hi << 4));
            }
        }
    }
}

}  // namespace ds3::quant
