// Integer block dot products for the decode GEMV (M ≤ 8 activation rows): activations
// are quantised to 32-element blocks of int8 with a scale d = amax/127 and the block's
// sum s = d·Σq, and each weight format's levels are packed four to a 32-bit word so
// that __dp4a does four multiply-adds at once (no nibble→float conversions).
//
// A format is read in "chunks" (one lane's share of a block): load() pulls the chunk's
// bytes and scales into registers once, dot() multiplies them with one activation row,
// so the weight bytes are read once for all M rows. For the formats with a min/offset
// term (Q4_K, Q5_K, Q4_0) the dot is dl·dx·Σq·qx − ml·s; Q6_K's −32 offset is folded into
// the levels before the dot. Host and device: the host build emulates dp4a, which lets
// tests hold the arithmetic to the CPU's vec_dot without a GPU.
#pragma once

#include <limits>
#include <type_traits>

#include "backends/cuda/quant.cuh"
#ifdef __CUDACC__
#include "backends/cuda/device_util.cuh"
#endif

namespace ds3::cuda::q8 {

// One quantised activation block: scale d and s = d·Σq, the sum of the rounded values
// (not Σx: with it, dl·Σq_w·x̂ − ml·Σx would leave the rounding error weighted by the
// raw levels, which average 7.5 for 4-bit, instead of by the centred weights).
struct alignas(8) XDs {
    float d, s;
};

DS3_QHD int dp4a(int a, int b, int c) {
#ifdef __CUDA_ARCH__
    return __dp4a(a, b, c);
#else
    for (int i = 0; i < 4; ++i)
        c += static_cast<int>(static_cast<int8_t>(a >> (8 * i))) * static_cast<int>(static_cast<int8_t>(b >> (8 * i)));
    return c;
#endif
}

// A T (uint32_t or uint4) at p, aligned for it, through the read-only cache on the device.
template <typename T>
DS3_QHD T ldg(const uint8_t* p) {
#ifdef __CUDA_ARCH__
    if constexpr (std::is_same_v<T, uint4>) return __ldg(reinterpret_cast<const uint4*>(p));
    else return __ldg(reinterpret_cast<const unsigned int*>(p));
#else
    T v;
    __builtin_memcpy(&v, p, sizeof(T));
    return v;
#endif
}

// Bytewise a − b without borrows between bytes (levels 0..63 minus 32 → −32..31).
DS3_QHD uint32_t sub4(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
    return __vsub4(a, b);
#else
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= ((((a >> (8 * i)) & 0xff) - ((b >> (8 * i)) & 0xff)) & 0xff) << (8 * i);
    return r;
#endif
}

// NW little-endian words from a 2-byte-aligned p: aligned 32-bit loads, realigned with
// funnel shifts (the 34-, 18- and 210-byte blocks are only 2-byte aligned). The extra
// word is loaded only when p is misaligned; it may reach 2 bytes past p + 4·NW, inside
// the aligned word that holds the data's last byte (never another page).
template <int NW>
DS3_QHD void ld_words2(const uint8_t* p, uint32_t (&w)[NW]) {
#ifdef __CUDA_ARCH__
    const uint32_t* a = reinterpret_cast<const uint32_t*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(3));
    const int sh = static_cast<int>(reinterpret_cast<uintptr_t>(p) & 3) * 8;
    uint32_t r[NW + 1];
DS3_UNROLL
    for (int i = 0; i < NW; ++i) r[i] = __ldg(a + i);
    r[NW] = sh ? __ldg(a + NW) : 0u;
DS3_UNROLL
    for (int i = 0; i < NW; ++i) w[i] = __funnelshift_r(r[i], r[i + 1], sh);
#else
    __builtin_memcpy(w, p, 4 * NW);
#endif
}

// 32 activation int8 values (16-byte aligned) as 8 words.
DS3_QHD void ld_x32(const int8_t* p, int (&x)[8]) {
    const int4* v = reinterpret_cast<const int4*>(p);
    const int4 a = v[0], b = v[1];
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

DS3_QHD int dot8(const uint32_t* w, const int* x, int acc = 0) {
DS3_UNROLL
    for (int i = 0; i < 8; ++i) acc = dp4a(static_cast<int>(w[i]), x[i], acc);
    return acc;
}
DS3_QHD int dot4(const uint32_t* w, const int* x) {
    int acc = 0;
DS3_UNROLL
    for (int i = 0; i < 4; ++i) acc = dp4a(static_cast<int>(w[i]), x[i], acc);
    return acc;
}

DS3_QHD float h2f_bits(uint32_t u) { return __half2float(__ushort_as_half(static_cast<unsigned short>(u & 0xffff))); }

// Each format: QK elements in TS bytes, NC chunks per block; a lane keeps UNROLL chunks
// in flight (divided among the rows when it reads several at once, at most MAX_RW rows of
// one matrix: Q5_K's chunks take the most registers). load(blk, j, r) reads chunk
// j; dot(r, j, xq, xd) takes the activation row's int8 values and block scales from the
// start of the same weight block.
// Q8_0 (d @0, qs[32] @2): chunk j is elements 8j..8j+7, so that four adjacent lanes read
// one block and a warp's loads cover a contiguous run of blocks.
struct Q8_0 {
    static constexpr int QK = 32, TS = 34, NC = 4, UNROLL = 8, MAX_RW = 4;
    struct R {
        uint32_t q[2];
        float d;
    };
    DS3_QHD static void load(const uint8_t* b, int j, R& r) {
        r.d = q::h2f(b);
        ld_words2<2>(b + 2 + 8 * j, r.q);
    }
    DS3_QHD static float dot(const R& r, int j, const int8_t* xq, const XDs* xd) {
        const int2 x = *reinterpret_cast<const int2*>(xq + 8 * j);
        const int s = dp4a(static_cast<int>(r.q[1]), x.y, dp4a(static_cast<int>(r.q[0]), x.x, 0));
        return r.d * xd[0].d * static_cast<float>(s);
    }
};

struct Q4_0 {  // d @0, qs[16] @2: low nibbles are elements 0..15, high 16..31
    static constexpr int QK = 32, TS = 18, NC = 1, UNROLL = 4, MAX_RW = 4;
    struct R {
        uint32_t q[8];
        float d;
    };
    DS3_QHD static void load(const uint8_t* b, int, R& r) {
        r.d = q::h2f(b);
        uint32_t w[4];
        ld_words2<4>(b + 2, w);
DS3_UNROLL
        for (int i = 0; i < 4; ++i) {
            r.q[i] = w[i] & 0x0f0f0f0fu;
            r.q[i + 4] = (w[i] >> 4) & 0x0f0f0f0fu;
        }
    }
    DS3_QHD static float dot(const R& r, int, const int8_t* xq, const XDs* xd) {
        int x[8];
        ld_x32(xq, x);
        return r.d * (xd[0].d * static_cast<float>(dot8(r.q, x)) - 8.0f * xd[0].s);
    }
};

// Q4_K and Q5_K: chunk j is sub-blocks 2j and 2j+1 (elements 64j..64j+63), which share
// the 32 bytes qs[32j..32j+31] (low and high nibbles).
template <bool kFive>
struct QK45 {
    static constexpr int QK = 256, TS = kFive ? 176 : 144, NC = 4, UNROLL = 4, MAX_RW = kFive ? 2 : 4;
    struct R {
        uint32_t lo[8], hi[8];
        float dl0, dl1, ml0, ml1;
    };
    // q::k4_scale_min on the 12 scale bytes held in words h[1..3] (register shifts, no
    // byte array: a runtime index into one would go to local memory).
    DS3_QHD static void scale_min(int s, const uint32_t (&h)[4], int& sc, int& m) {
        const int k = 8 * (s & 3);
        const int a = (h[1] >> k) & 0xff, c = (h[2] >> k) & 0xff;
        if (s < 4) {
            sc = a & 63;
            m = c & 63;
        } else {
            const int e = (h[3] >> k) & 0xff;
            sc = (e & 0xF) | ((a >> 6) << 4);
            m = (e >> 4) | ((c >> 6) << 4);
        }
    }
    DS3_QHD static void load(const uint8_t* b, int j, R& r) {
        uint32_t h[4], w0[4], w1[4];
        q::ld16<16>(b, h);  // d, dmin, scales[12]
        const int off = kFive ? 48 : 16;
        q::ld16<16>(b + off + 32 * j, w0);
        q::ld16<16>(b + off + 32 * j + 16, w1);
        const uint32_t w[8] = {w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3]};
        int sc0, m0, sc1, m1;
        scale_min(2 * j, h, sc0, m0);
        scale_min(2 * j + 1, h, sc1, m1);
        const float d = h2f_bits(h[0]), dmin = h2f_bits(h[0] >> 16);
        r.dl0 = d * static_cast<float>(sc0), r.dl1 = d * static_cast<float>(sc1);
        r.ml0 = dmin * static_cast<float>(m0), r.ml1 = dmin * static_cast<float>(m1);
DS3_UNROLL
        for (int i = 0; i < 8; ++i) {
            r.lo[i] = w[i] & 0x0f0f0f0fu;
            r.hi[i] = (w[i] >> 4) & 0x0f0f0f0fu;
        }
        if constexpr (kFive) {  // qh[32] @16: bit s of qh[l] is the fifth bit of sub-block s
            uint32_t h0[4], h1[4];
            q::ld16<16>(b + 16, h0);
            q::ld16<16>(b + 32, h1);
            const uint32_t qh[8] = {h0[0], h0[1], h0[2], h0[3], h1[0], h1[1], h1[2], h1[3]};
DS3_UNROLL
            for (int i = 0; i < 8; ++i) {
                r.lo[i] |= ((qh[i] >> (2 * j)) & 0x01010101u) << 4;
                r.hi[i] |= ((qh[i] >> (2 * j + 1)) & 0x01010101u) << 4;
            }
        }
    }
    DS3_QHD static float dot(const R& r, int j, const int8_t* xq, const XDs* xd) {
        int x[8];
        ld_x32(xq + 64 * j, x);
        const int s0 = dot8(r.lo, x);
        ld_x32(xq + 64 * j + 32, x);
        const int s1 = dot8(r.hi, x);
        const XDs a = xd[2 * j], c = xd[2 * j + 1];
        return r.dl0 * a.d * static_cast<float>(s0) - r.ml0 * a.s + r.dl1 * c.d * static_cast<float>(s1) - r.ml1 * c.s;
    }
};
using Q4_K = QK45<false>;
using Q5_K = QK45<true>;

// Q6_K (ql[128] @0, qh[64] @128, scales[16] int8 @192, d @208): chunk j = (half h = j/4,
// g = j%4) holds l = 8g..8g+7 of all four quarters qd, elements 128h + 32qd + l: the low
// nibbles of ql[64h+l] (qd 0) and ql[64h+32+l] (qd 1), their high nibbles (qd 2, 3), and
// bits 2qd of qh[32h+l]. Eight lanes per block, each reading 8-byte runs, so a warp's
// loads stay on few sectors despite the 2-byte alignment.
struct Q6_K {
    static constexpr int QK = 256, TS = 210, NC = 8, UNROLL = 4, MAX_RW = 4;
    struct R {
        uint32_t v[4][2];  // levels − 32 of quarter qd
        int sc[4];
        float d;
    };
    DS3_QHD static void load(const uint8_t* b, int j, R& r) {
        const int h = j >> 2, g = j & 3;
        uint32_t a[2], c[2], e[2], sw[2];
        ld_words2<2>(b + 64 * h + 8 * g, a);
        ld_words2<2>(b + 64 * h + 32 + 8 * g, c);
        ld_words2<2>(b + 128 + 32 * h + 8 * g, e);
        ld_words2<2>(b + 192 + 8 * h, sw);  // scales 8h..8h+7: quarter qd uses 2qd + (g ≥ 2)
        r.d = q::h2f(b + 208);
DS3_UNROLL
        for (int qd = 0; qd < 4; ++qd)
            r.sc[qd] = static_cast<int8_t>(sw[qd >> 1] >> (8 * (2 * (qd & 1) + (g >> 1))));
DS3_UNROLL
        for (int w = 0; w < 2; ++w) {
            const uint32_t m4 = 0x0f0f0f0fu, m2 = 0x30303030u, k = 0x20202020u;
            r.v[0][w] = sub4((a[w] & m4) | ((e[w] << 4) & m2), k);
            r.v[1][w] = sub4((c[w] & m4) | ((e[w] << 2) & m2), k);
            r.v[2][w] = sub4(((a[w] >> 4) & m4) | (e[w] & m2), k);
            r.v[3][w] = sub4(((c[w] >> 4) & m4) | ((e[w] >> 2) & m2), k);
        }
    }
    DS3_QHD static float dot(const R& r, int j, const int8_t* xq, const XDs* xd) {
        const int h = j >> 2, g = j & 3;
        float acc = 0.0f;
DS3_UNROLL
        for (int qd = 0; qd < 4; ++qd) {
            const int bq = 4 * h + qd;
            const int2 x = *reinterpret_cast<const int2*>(xq + 32 * bq + 8 * g);
            const int s = dp4a(static_cast<int>(r.v[qd][1]), x.y, dp4a(static_cast<int>(r.v[qd][0]), x.x, 0));
            acc += xd[bq].d * static_cast<float>(r.sc[qd] * s);
        }
        return r.d * acc;
    }
};

// Q4_K and Q5_K regrouped on upload (quant.cuh's K4G): chunk j is sub-block j, one lane's
// 16 bytes (plus a word of fifth bits) and one activation block; the levels stay packed
// in registers until the dot (6-7 registers a chunk, so more warps an SM).
template <bool kFive>
struct K4GDot {
    // 4 chunks a lane in flight: with 8, the MoE products and the output head were 3-5 %
    // slower on the H200 (more registers, fewer warps; docs/performance-cuda.md, slice 7).
    static constexpr int QK = 256, TS = kFive ? 176 : 144, NC = 8, UNROLL = 4, MAX_RW = 4;
    struct R {
        uint32_t q[4];
        uint32_t h;
        float dl, ml;
    };
    DS3_QHD static void load(const uint8_t* b, int j, R& r) {
        uint32_t hw[4];
        q::ld16<16>(b, hw);  // d, dmin, scales[12]
        q::ld16<16>(b + q::K4G<kFive>::QS + 16 * j, r.q);
        r.h = 0;
        if constexpr (kFive) {
#ifdef __CUDA_ARCH__
            r.h = __ldg(reinterpret_cast<const unsigned int*>(b + 16 + 4 * j));
#else
            __builtin_memcpy(&r.h, b + 16 + 4 * j, 4);
#endif
        }
        int sc, m;
        QK45<kFive>::scale_min(j, hw, sc, m);
        r.dl = h2f_bits(hw[0]) * static_cast<float>(sc);
        r.ml = h2f_bits(hw[0] >> 16) * static_cast<float>(m);
    }
    DS3_QHD static float dot(const R& r, int j, const int8_t* xq, const XDs* xd) {
        int x[8];
        ld_x32(xq + 32 * j, x);
        const uint32_t m4 = 0x0f0f0f0fu;
        int s = 0;
DS3_UNROLL
        for (int k = 0; k < 4; ++k) {
            uint32_t lo = r.q[k] & m4, hi = (r.q[k] >> 4) & m4;
            if constexpr (kFive) {
                lo |= ((r.h >> k) & 0x01010101u) << 4;
                hi |= ((r.h >> (4 + k)) & 0x01010101u) << 4;
            }
            s = dp4a(static_cast<int>(lo), x[k], s);
            s = dp4a(static_cast<int>(hi), x[4 + k], s);
        }
        const XDs a = xd[j];
        return r.dl * a.d * static_cast<float>(s) - r.ml * a.s;
    }
};
using Q4_KG = K4GDot<false>;
using Q5_KG = K4GDot<true>;

// Q6_K regrouped on upload (quant.cuh's Q6_KG): chunk c of a row is one lane's six words,
// all 32-bit loads that a warp makes in 64-byte runs, and elements 32c'..32c'+31 of its
// block (c' = c % 8), so the dot reads one activation block. Row-addressed: load_row
// takes the row and the chunk's index in it (a pair's lanes are spread over 420 bytes).
struct Q6_KG {
    static constexpr int QK = 256, TS = 210, NC = 8, UNROLL = 4, MAX_RW = 4;
    struct R {
        uint32_t v[8];  // levels − 32 of elements 4q..4q+3
        int sc0, sc1;
        float d;
    };
    DS3_QHD static void load_row(const uint8_t* row, int c, R& r) {
        const int blk = c >> 3, L = 8 * (blk & 1) + (c & 7);
        const uint8_t* p = row + static_cast<int64_t>(blk >> 1) * (2 * TS);
        uint32_t w[6];
DS3_UNROLL
        for (int k = 0; k < 6; ++k) w[k] = ldg<uint32_t>(p + 4 * (16 * k + L));
        const uint32_t sc = *reinterpret_cast<const uint16_t*>(p + 384 + 2 * L);
        r.d = q::h2f(p + 416 + 2 * (blk & 1));
        r.sc0 = static_cast<int8_t>(sc & 0xff), r.sc1 = static_cast<int8_t>(sc >> 8);
        levels(w, r.v);
    }
    // A chunk's six words (four of low nibbles, two of top bits) to its levels − 32, four
    // elements a word: v[q] elements 4q..4q+3, v[4 + q] elements 16 + 4q...
    DS3_QHD static void levels(const uint32_t* w, uint32_t (&v)[8]) {
        // Bits 2q..2q+1 of each byte of the top-bit words moved to bits 4..5.
        const uint32_t m4 = 0x0f0f0f0fu, m2 = 0x30303030u;
        const uint32_t top[2][4] = {{w[4] << 4, w[4] << 2, w[4], w[4] >> 2}, {w[5] << 4, w[5] << 2, w[5], w[5] >> 2}};
DS3_UNROLL
        for (int q = 0; q < 4; ++q) {
            // A 6-bit level a per byte to the int8 a − 32: (a + 96) ^ 128, no carries (a ≤ 63).
            v[q] = (((w[q] & m4) | (top[0][q] & m2)) + 0x60606060u) ^ 0x80808080u;
            v[4 + q] = ((((w[q] >> 4) & m4) | (top[1][q] & m2)) + 0x60606060u) ^ 0x80808080u;
        }
    }
    DS3_QHD static float dot(const R& r, int j, const int8_t* xq, const XDs* xd) {
        int x[8];
        ld_x32(xq + 32 * j, x);
        const int s0 = dot4(r.v, x), s1 = dot4(r.v + 4, x + 4);
        return r.d * xd[j].d * static_cast<float>(r.sc0 * s0 + r.sc1 * s1);
    }
};

// Lane l's U 16-byte units of an interleaved group's block (unit u at 512·u + 16·l): its
// row's block, whole, in 4U words.
template <int U>
DS3_QHD void load_units(const uint8_t* blk, int l, uint32_t (&w)[4 * U]) {
DS3_UNROLL
    for (int u = 0; u < U; ++u) {
        const uint4 v = ldg<uint4>(blk + 512 * u + 16 * l);
        w[4 * u] = v.x, w[4 * u + 1] = v.y, w[4 * u + 2] = v.z, w[4 * u + 3] = v.w;
    }
}

// Q6_K interleaved on upload (quant.cuh's Q6_KI): a lane's whole block of its group (its
// row's 256 levels in 12 16-byte units, 16 scales, d), loaded at once; every lane of the
// warp is on another row at the same block, so the activations are one broadcast.
struct Q6_KI {
    static constexpr int TS = 210, WARPS = 24, WARPS2 = 24;  // warps an SM for one row, one or two matrices
    struct R {
        uint32_t w[48];  // chunk pair p's twelve words at 12p (chunk 2p's six, then 2p + 1's)
        uint32_t sc[4];  // the 16 int8 scales
        float d;
    };
    // Lane l's block of a group (blk: the group's block, 16-byte aligned).
    DS3_QHD static void load(const uint8_t* blk, int l, R& r) {
        load_units<12>(blk, l, r.w);
        const uint4 s = ldg<uint4>(blk + q::Q6_KI::SCALES + 16 * l);
        r.sc[0] = s.x, r.sc[1] = s.y, r.sc[2] = s.z, r.sc[3] = s.w;
        r.d = q::h2f(blk + q::Q6_KI::DS + 2 * l);
    }
    // Chunk c's levels − 32 (elements 4q..4q+3 in v[q], as Q6_KG's) and its two scales.
    DS3_QHD static void levels(const R& r, int c, uint32_t (&v)[8], int& sc0, int& sc1) {
        Q6_KG::levels(r.w + 12 * (c >> 1) + 6 * (c & 1), v);
        const uint32_t s = r.sc[c >> 1] >> (16 * (c & 1));
        sc0 = static_cast<int8_t>(s & 0xff), sc1 = static_cast<int8_t>((s >> 8) & 0xff);
    }
    // Chunk c's levels against activation block xq (32 values) with scale xd: the block's
    // sum is Σc of these, times r.d.
    DS3_QHD static float dot(const uint32_t (&v)[8], int sc0, int sc1, const int8_t* xq, const XDs& xd) {
        int x[8];
        ld_x32(xq, x);
        return xd.d * static_cast<float>(sc0 * dot4(v, x) + sc1 * dot4(v + 4, x + 4));
    }
    // acc[m] += the block's dot with activation row m (xq[m]: its 256 values, xd[m]: their
    // 8 blocks' scales); each chunk decoded once for all rows.
    template <int MR>
    DS3_QHD static void block(const R& r, const int8_t* const (&xq)[MR], const XDs* const (&xd)[MR], float (&acc)[MR]) {
        float t[MR];
DS3_UNROLL
        for (int m = 0; m < MR; ++m) t[m] = 0.0f;
DS3_UNROLL
        for (int c = 0; c < 8; ++c) {
            uint32_t v[8];
            int sc0, sc1;
            levels(r, c, v, sc0, sc1);
DS3_UNROLL
            for (int m = 0; m < MR; ++m) t[m] += dot(v, sc0, sc1, xq[m] + 32 * c, xd[m][c]);
        }
DS3_UNROLL
        for (int m = 0; m < MR; ++m) acc[m] += r.d * t[m];
    }
};

// Q4_K and Q5_K interleaved on upload (quant.cuh's K4GI): a lane's whole K4G block of its
// group (9 or 11 16-byte units), loaded at once; sub-block s is one activation block, as
// in K4GDot.
template <bool kFive>
struct K4GIDot {
    static constexpr int TS = q::K4GI<kFive>::TS, UNITS = q::K4GI<kFive>::UNITS, QS = q::K4G<kFive>::QS / 16;
    // Warps an SM for one row of one matrix, and for gate + up (gemv_i_kernel's register
    // bound): Q5_K's down at 8 warps a group took 27.2 µs at 128 registers and 29.5 at 85
    // (V3's dense down, H200), its gate + up at 4 warps a group each 57.4 at 128 and 55.0
    // at 85.
    static constexpr int WARPS = kFive ? 20 : 24, WARPS2 = 24;
    struct R {
        uint32_t w[4 * UNITS];  // the K4G block's bytes
    };
    DS3_QHD static void load(const uint8_t* blk, int l, R& r) { load_units<UNITS>(blk, l, r.w); }
    template <int MR>
    DS3_QHD static void block(const R& r, const int8_t* const (&xq)[MR], const XDs* const (&xd)[MR], float (&acc)[MR]) {
        const uint32_t h[4] = {r.w[0], r.w[1], r.w[2], r.w[3]};  // d, dmin, scales[12]
        const float d = h2f_bits(h[0]), dmin = h2f_bits(h[0] >> 16);
DS3_UNROLL
        for (int s = 0; s < 8; ++s) {
            int sc, mn;
            QK45<kFive>::scale_min(s, h, sc, mn);
            const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
            const uint32_t* q = r.w + 4 * (QS + s);
            const uint32_t fb = kFive ? r.w[4 * (1 + (s >> 2)) + (s & 3)] : 0u;
            const uint32_t m4 = 0x0f0f0f0fu;
            uint32_t lo[4], hi[4];
DS3_UNROLL
            for (int k = 0; k < 4; ++k) {
                lo[k] = q[k] & m4, hi[k] = (q[k] >> 4) & m4;
                if constexpr (kFive) {
                    lo[k] |= ((fb >> k) & 0x01010101u) << 4;
                    hi[k] |= ((fb >> (4 + k)) & 0x01010101u) << 4;
                }
            }
DS3_UNROLL
            for (int m = 0; m < MR; ++m) {
                int x[8];
                ld_x32(xq[m] + 32 * s, x);
                int v = 0;
DS3_UNROLL
                for (int k = 0; k < 4; ++k) {
                    v = dp4a(static_cast<int>(lo[k]), x[k], v);
                    v = dp4a(static_cast<int>(hi[k]), x[4 + k], v);
                }
                const XDs a = xd[m][s];
                acc[m] += dl * a.d * static_cast<float>(v) - ml * a.s;
            }
        }
    }
};
using Q4_KI = K4GIDot<false>;
using Q5_KI = K4GIDot<true>;

// The quantisation of one activation block, shared by the host check; the kernel does
// the same per lane with warp reductions.
DS3_QHD float block_scale(float amax) { return amax / 127.0f; }
DS3_QHD int8_t quant_one(float v, float amax) {
    if (!(amax > 0.0f)) return 0;
    float q = v * (127.0f / amax);
#ifdef __CUDA_ARCH__
    q = rintf(q);
#else
    q = __builtin_rintf(q);
#endif
    q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
    return static_cast<int8_t>(q);
}
// A block's (d, d·Σq) from its amax, whether it held a NaN (then d is NaN, so the products
// it enters are NaN, as on the CPU) and the sum of its rounded values.
DS3_QHD XDs block_xds(float amax, bool nan, float sq) {
#ifdef __CUDA_ARCH__
    const float qnan = __int_as_float(0x7fc00000);
#else
    const float qnan = std::numeric_limits<float>::quiet_NaN();
#endif
    const float ds = nan ? qnan : block_scale(amax);
    return XDs{ds, ds * sq};
}
// The layout of quantised activation rows: rows × K int8 values, then the blocks' XDs from
// the next 16-byte boundary, at this byte offset.
DS3_QHD int64_t xds_offset(int64_t rows, int64_t K) { return (rows * K + 15) & ~int64_t(15); }

#ifdef __CUDACC__
// One 32-value block quantised by a warp, a value per lane: the lane's rounded value to *q
// and, from lane 0, the block's XDs to *d. store false: the lane's value is padding; it
// stores nothing but still takes part in the shuffles.
__device__ inline void quantize_warp(float v, bool store, int8_t* q, XDs* d) {
    const float amax = warp_max(fabsf(v));  // fmaxf drops NaN: flagged apart
    const bool nan = __any_sync(0xffffffffu, isnan(v));
    const int8_t qv = quant_one(v, amax);
    if (store) *q = qv;
    const float sq = warp_sum(static_cast<float>(qv));
    if (store && (threadIdx.x & 31) == 0) *d = block_xds(amax, nan, sq);
}
#endif

}  // namespace ds3::cuda::q8
