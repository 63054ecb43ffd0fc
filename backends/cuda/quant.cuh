// Device-side decoders of the quantized block formats (quantize/blocks.h: ggml's layouts
// byte for byte, plus our FP8 e4m3 block-128). Every format is read the same way: a
// "chunk" is 16 consecutive elements of one block, decoded to f32 in registers. The GEMV,
// MoE and get_rows kernels give each lane chunks of a row; the tiled GEMM decodes a chunk
// per k-tile (its BK is 16). Loads use the widest access the block layout's alignment
// allows (blocks of 34, 110 or 210 bytes are only 2-byte aligned).
//
// The arithmetic mirrors quantize/formats_ref.cpp's dequantisers (scale · level − min in
// f32), so a GPU matmul equals dequantise-then-f32 up to summation order.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

// Host and device: the decoders also run on the host, where a throwaway check can compare
// them with the CPU references without a GPU.
#define DS3_QHD __host__ __device__ __forceinline__
#ifdef __CUDA_ARCH__
#define DS3_UNROLL _Pragma("unroll")
#else
#define DS3_UNROLL
#endif

namespace ds3::cuda::q {

DS3_QHD float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
#endif
}

DS3_QHD float h2f(const uint8_t* p) {
    return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}

// 16 bytes starting at p, as four little-endian words, for p aligned to A bytes.
template <int A>
DS3_QHD void ld16(const uint8_t* p, uint32_t (&w)[4]) {
    if constexpr (A >= 16) {
        const uint4 v = *reinterpret_cast<const uint4*>(p);
        w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    } else if constexpr (A >= 8) {
        const uint2 a = reinterpret_cast<const uint2*>(p)[0], b = reinterpret_cast<const uint2*>(p)[1];
        w[0] = a.x, w[1] = a.y, w[2] = b.x, w[3] = b.y;
    } else if constexpr (A >= 4) {
DS3_UNROLL
        for (int i = 0; i < 4; ++i) w[i] = reinterpret_cast<const uint32_t*>(p)[i];
    } else {
        const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
DS3_UNROLL
        for (int i = 0; i < 4; ++i) w[i] = static_cast<uint32_t>(h[2 * i]) | (static_cast<uint32_t>(h[2 * i + 1]) << 16);
    }
}
DS3_QHD int byte_of(const uint32_t (&w)[4], int i) { return (w[i >> 2] >> (8 * (i & 3))) & 0xff; }

// The scale and min of sub-block j of the 12-byte Q4_K/Q5_K packing (k4_scale_min).
DS3_QHD void k4_scale_min(int j, const uint8_t* s, int& sc, int& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// e4m3: 4 exponent bits (bias 7), 3 mantissa bits, no infinities, 0x7f/0xff NaN.
DS3_QHD float fp8_e4m3(int b) {
    const int e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 15 && m == 7) v = bits_to_float(0x7fc00000u);
    else if (e == 0) v = static_cast<float>(m) * (1.0f / 512.0f);
    else v = bits_to_float(static_cast<uint32_t>(((e + 120) << 23) | (m << 20)));
    return (b & 0x80) ? -v : v;
}

// ggml's kvalues_iq4nl, kept in two 64-bit registers (a table in local or constant memory
// would serialise on divergent indices).
DS3_QHD int iq4nl(int i) {
    const uint64_t lo = 0xF6EADDCFBFAD9881ull;  // -127,-104,-83,-65,-49,-35,-22,-10
    const uint64_t hi = 0x7159453526190D01ull;  // 1,13,25,38,53,69,89,113
    return static_cast<int8_t>(((i < 8 ? lo : hi) >> (8 * (i & 7))) & 0xff);
}

// Each format: QK elements in TS bytes; chunk(blk, c, o) writes elements 16c..16c+15.
struct Q8_0 {
    static constexpr int QK = 32, TS = 34;
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const float d = h2f(b);
        uint32_t w[4];
        ld16<2>(b + 2 + 16 * c, w);
DS3_UNROLL
        for (int i = 0; i < 16; ++i) o[i] = d * static_cast<float>(static_cast<int8_t>(byte_of(w, i)));
    }
};

struct Q4_0 {
    static constexpr int QK = 32, TS = 18;
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const float d = h2f(b);
        uint32_t w[4];
        ld16<2>(b + 2, w);
DS3_UNROLL
        for (int i = 0; i < 16; ++i) o[i] = d * static_cast<float>(((byte_of(w, i) >> (4 * c)) & 0xF) - 8);
    }
};

struct Q2_K {  // scales[16] @0, qs[64] @16, d @80, dmin @82
    static constexpr int QK = 256, TS = 84;
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const int h = c >> 3, j = (c & 7) >> 1, l0 = 16 * (c & 1);
        const int sc = b[c];
        const float dl = h2f(b + 80) * static_cast<float>(sc & 0xF), ml = h2f(b + 82) * static_cast<float>(sc >> 4);
        uint32_t w[4];
        ld16<4>(b + 16 + 32 * h + l0, w);
DS3_UNROLL
        for (int i = 0; i < 16; ++i) o[i] = dl * static_cast<float>((byte_of(w, i) >> (2 * j)) & 3) - ml;
    }
};

struct Q3_K {  // hmask[32] @0, qs[64] @32, scales[12] @96, d @108
    static constexpr int QK = 256, TS = 110;
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const int h = c >> 3, j = (c & 7) >> 1, l0 = 16 * (c & 1);
        const uint8_t* s = b + 96;
        const int lo = c < 8 ? (s[c] & 0xF) : (s[c - 8] >> 4);
        const int hi = (s[8 + (c & 3)] >> (2 * (c >> 2))) & 3;
        const float dl = h2f(b + 108) * static_cast<float>((lo | (hi << 4)) - 32);
        uint32_t q[4], m[4];
        ld16<2>(b + 32 + 32 * h + l0, q);
        ld16<2>(b + l0, m);
        const int bit = 4 * h + j;
DS3_UNROLL
        for (int i = 0; i < 16; ++i) {
            const int v = ((byte_of(q, i) >> (2 * j)) & 3) - (((byte_of(m, i) >> bit) & 1) ? 0 : 4);
            o[i] = dl * static_cast<float>(v);
        }
    }
};

struct Q4_K {  // d @0, dmin @2, scales[12] @4, qs[128] @16
    static constexpr int QK = 256, TS = 144;
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const int s = c >> 1, l0 = 16 * (c & 1), p = s >> 1, sh = 4 * (s & 1);
        int sc, mn;
        k4_scale_min(s, b + 4, sc, mn);
        const float dl = h2f(b) * static_cast<float>(sc), ml = h2f(b + 2) * static_cast<float>(mn);
        uint32_t w[4];
        ld16<16>(b + 16 + 32 * p + l0, w);
DS3_UNROLL
        for (int i = 0; i < 16; ++i) o[i] = dl * static_cast<float>((byte_of(w, i) >> sh) & 0xF) - ml;
    }
};

struct Q5_K {  // d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48
    static constexpr int QK = 256, TS = 176;
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const int s = c >> 1, l0 = 16 * (c & 1), p = s >> 1, sh = 4 * (s & 1);
        int sc, mn;
        k4_scale_min(s, b + 4, sc, mn);
        const float dl = h2f(b) * static_cast<float>(sc), ml = h2f(b + 2) * static_cast<float>(mn);
        uint32_t w[4], hb[4];
        ld16<16>(b + 48 + 32 * p + l0, w);
        ld16<16>(b + 16 + l0, hb);
DS3_UNROLL
        for (int i = 0; i < 16; ++i) {
            const int v = ((byte_of(w, i) >> sh) & 0xF) | (((byte_of(hb, i) >> s) & 1) << 4);
            o[i] = dl * static_cast<float>(v) - ml;
        }
    }
};

struct Q6_K {  // ql[128] @0, qh[64] @128, scales[16] (int8) @192, d @208
    static constexpr int QK = 256, TS = 210;
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const int h = c >> 3, qd = (c & 7) >> 1, l0 = 16 * (c & 1);
        const float dl = h2f(b + 208) * static_cast<float>(static_cast<int8_t>(b[192 + c]));
        uint32_t l[4], hb[4];
        ld16<2>(b + 64 * h + 32 * (qd & 1) + l0, l);
        ld16<2>(b + 128 + 32 * h + l0, hb);
        const int lsh = 4 * (qd >> 1), hsh = 2 * qd;
DS3_UNROLL
        for (int i = 0; i < 16; ++i) {
            const int v = (((byte_of(l, i) >> lsh) & 0xF) | (((byte_of(hb, i) >> hsh) & 3) << 4)) - 32;
            o[i] = dl * static_cast<float>(v);
        }
    }
};

// Q4_K and Q5_K regrouped on upload (WType::q4_K_g, q5_K_g): the same blocks, header (d,
// dmin, scales[12]) in place, the levels permuted inside the block so that sub-block s
// (elements 32s..32s+31, one 8-bit activation block of the integer GEMV) is one lane's
// 16 bytes at QS + 16s: byte j holds the low four bits of element 32s + j (low nibble)
// and of 32s + 16 + j (high nibble). Q5_K's fifth bits: sub-block s's word at 16 + 4s,
// whose byte b holds at bit k that of element 32s + 4k + b and at bit 4 + k that of
// 32s + 16 + 4k + b (k < 4), so one shift and mask give four bytes' bits. Any whole
// number of blocks: rows, strides and views are unchanged.
template <bool kFive>
struct K4G {
    static constexpr int QK = 256, TS = kFive ? 176 : 144, QS = kFive ? 48 : 16;
    // GGUF level of element e of a plain block (without the fifth bit).
    DS3_QHD static int nibble(const uint8_t* b, int e) {
        return (b[QS + 32 * (e >> 6) + (e & 31)] >> (4 * ((e >> 5) & 1))) & 0xF;
    }
    DS3_QHD static int fifth(const uint8_t* b, int e) { return (b[16 + (e & 31)] >> (e >> 5)) & 1; }
    // One block: plain src to the regrouped dst (not overlapping).
    DS3_QHD static void pack_block(const uint8_t* src, uint8_t* dst) {
        for (int i = 0; i < 16; ++i) dst[i] = src[i];
        for (int sb = 0; sb < 8; ++sb) {
            for (int j = 0; j < 16; ++j)
                dst[QS + 16 * sb + j] =
                    static_cast<uint8_t>(nibble(src, 32 * sb + j) | (nibble(src, 32 * sb + 16 + j) << 4));
            if constexpr (kFive) {
                uint32_t h = 0;
                for (int k = 0; k < 4; ++k)
                    for (int b = 0; b < 4; ++b)
                        h |= static_cast<uint32_t>(fifth(src, 32 * sb + 4 * k + b)) << (8 * b + k) |
                             static_cast<uint32_t>(fifth(src, 32 * sb + 16 + 4 * k + b)) << (8 * b + 4 + k);
                for (int b = 0; b < 4; ++b) dst[16 + 4 * sb + b] = static_cast<uint8_t>(h >> (8 * b));
            }
        }
    }
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const int s = c >> 1;
        chunk_at(b, b + QS + 16 * s, b + 16 + 4 * s, c, o);
    }
    // The same from the block's header (16 bytes), sub-block c/2's 16 level bytes and (Q5_K)
    // its word of fifth bits, wherever they lie (K4GI's interleaved blocks).
    DS3_QHD static void chunk_at(const uint8_t* b, const uint8_t* qs, const uint8_t* qh, int c, float (&o)[16]) {
        const int s = c >> 1, half = c & 1;
        int sc, mn;
        k4_scale_min(s, b + 4, sc, mn);
        const float dl = h2f(b) * static_cast<float>(sc), ml = h2f(b + 2) * static_cast<float>(mn);
        uint32_t w[4];
        ld16<16>(qs, w);
        uint32_t h = 0;
        if constexpr (kFive) h = *reinterpret_cast<const uint32_t*>(qh);
DS3_UNROLL
        for (int t = 0; t < 16; ++t) {
            int v = (byte_of(w, t) >> (4 * half)) & 0xF;
            if constexpr (kFive) v |= static_cast<int>((h >> (8 * (t & 3) + 4 * half + (t >> 2))) & 1) << 4;
            o[t] = dl * static_cast<float>(v) - ml;
        }
    }
};
using Q4_KG = K4G<false>;
using Q5_KG = K4G<true>;

// The row addressing of the interleaved layouts (Q4_KI, Q5_KI, Q6_KI; blocks of 256 values
// and TS bytes): rows taken 32 at a time (a group), a group's blocks one after another
// (GROUP_BLOCK = 32 · TS bytes each), so a matrix keeps its size. A row is named by its
// group's start plus its index in the group (its lane, 0..31) in bytes, so the group's
// start must be 32-byte aligned (device allocations are; a matrix's groups are
// GROUP_BLOCK·blocks bytes apart); offsets along a row add row_bytes(k) = k/256 ·
// GROUP_BLOCK, not k/256 · TS.
template <int TS_>
struct Interleaved {
    static constexpr int QK = 256, TS = TS_, ROWS = 32, GROUP_BLOCK = ROWS * TS;
    DS3_QHD static constexpr int64_t row_bytes(int64_t K) { return K / QK * GROUP_BLOCK; }
    // Row n of a matrix w with rows of K values.
    DS3_QHD static const uint8_t* row(const uint8_t* w, int64_t n, int64_t K) {
        return w + (n / ROWS) * ROWS * (K / QK * TS) + (n % ROWS);
    }
    // The lane of a row named by row(): its group's block b starts at row − lane + b · GROUP_BLOCK.
    DS3_QHD static int lane(const uint8_t* row) { return static_cast<int>(reinterpret_cast<uintptr_t>(row) & (ROWS - 1)); }
};

// Q4_K and Q5_K interleaved on upload (WType::q4_K_i, q5_K_i): in a group's block the
// 16-byte units of its rows' K4G blocks side by side: unit u of row l (its lane) at
// 512·u + 16·l holds bytes 16u..16u+15 of that row's K4G block (9 units for Q4_K, 11 for
// Q5_K).
template <bool kFive>
struct K4GI : Interleaved<K4G<kFive>::TS> {
    using Base = Interleaved<K4G<kFive>::TS>;
    static constexpr int UNITS = Base::TS / 16;
    // Row l's plain GGUF block src into a group's block dst.
    DS3_QHD static void pack_lane(const uint8_t* src, int l, uint8_t* dst) {
        uint8_t g[Base::TS];
        K4G<kFive>::pack_block(src, g);
        for (int u = 0; u < UNITS; ++u)
            for (int j = 0; j < 16; ++j) dst[512 * u + 16 * l + j] = g[16 * u + j];
    }
    DS3_QHD static void chunk(const uint8_t* row, int64_t i, float (&o)[16]) {
        const int l = Base::lane(row);
        const uint8_t* p = row - l + (i >> 4) * Base::GROUP_BLOCK + 16 * l;  // unit 0 of the row's block
        const int c = static_cast<int>(i & 15), s = c >> 1;
        K4G<kFive>::chunk_at(p, p + 512 * (K4G<kFive>::QS / 16 + s), p + 512 * (1 + (s >> 2)) + 4 * (s & 3), c, o);
    }
};
using Q4_KI = K4GI<false>;
using Q5_KI = K4GI<true>;

// Q6_K regrouped on upload (WType::q6_K_g) for rows of an even number of blocks, so that
// a lane's bytes come in whole, coalesced 32-bit words: the same 210 bytes a block, the
// same rows, blocks taken in pairs (420 bytes, 4-byte aligned while rows start so). Lane
// L = 8·bi + c of a pair owns elements 32c..32c+31 of block bi (one 8-bit activation
// block of the integer GEMV) in six words, word k of lane L at 4·(16k + L):
//   k 0..3: byte j holds the low four bits of element 4k + j (low nibble) and of 16 + 4k + j
//           (high nibble);
//   k 4, 5: byte j holds, at bits 2i and 2i + 1, the top two bits of element 4i + j (k 4) or
//           16 + 4i + j (k 5).
// Then the lanes' two int8 scales (elements 0..15, 16..31) at 384 + 2L, and the pair's two
// f16 d at 416 + 2·bi. Elements are GGUF's levels 0..63, value d·scale·(level − 32).
struct Q6_KG {
    static constexpr int QK = 256, TS = 210, PAIR = 2 * TS;
    // The six words and the scale pair of lane (bi, c) of a pair of GGUF Q6_K blocks.
    DS3_QHD static void pack_lane(const uint8_t* b, int c, uint32_t (&w)[6], uint16_t& sc) {
        auto level = [&](int e) {  // GGUF: ql[64h + l + 32(qd&1)] nibble qd>>1, qh[32h + l] bits 2qd
            const int h = e >> 7, qd = (e >> 5) & 3, l = e & 31;
            const int lo = (b[64 * h + l + 32 * (qd & 1)] >> (4 * (qd >> 1))) & 0xF;
            return lo | (((b[128 + 32 * h + l] >> (2 * qd)) & 3) << 4);
        };
        for (int k = 0; k < 6; ++k) w[k] = 0;
        for (int k = 0; k < 4; ++k)
            for (int j = 0; j < 4; ++j) {
                const int lo = level(32 * c + 4 * k + j), hi = level(32 * c + 16 + 4 * k + j);
                w[k] |= static_cast<uint32_t>((lo & 0xF) | ((hi & 0xF) << 4)) << (8 * j);
                w[4] |= static_cast<uint32_t>(lo >> 4) << (8 * j + 2 * k);
                w[5] |= static_cast<uint32_t>(hi >> 4) << (8 * j + 2 * k);
            }
        sc = static_cast<uint16_t>(b[192 + 2 * c] | (b[192 + 2 * c + 1] << 8));
    }
    // One pair: GGUF blocks src[0..420) to the grouped layout dst[0..420).
    DS3_QHD static void pack_pair(const uint8_t* src, uint8_t* dst) {
        for (int L = 0; L < 16; ++L) {
            uint32_t w[6];
            uint16_t sc;
            pack_lane(src + (L >> 3) * TS, L & 7, w, sc);
            for (int k = 0; k < 6; ++k)
                for (int j = 0; j < 4; ++j) dst[4 * (16 * k + L) + j] = static_cast<uint8_t>(w[k] >> (8 * j));
            dst[384 + 2 * L] = static_cast<uint8_t>(sc), dst[384 + 2 * L + 1] = static_cast<uint8_t>(sc >> 8);
        }
        for (int bi = 0; bi < 2; ++bi) dst[416 + 2 * bi] = src[bi * TS + 208], dst[417 + 2 * bi] = src[bi * TS + 209];
    }
    // Elements 16i..16i+15 of a row (i counts 16-element chunks from the row's start).
    DS3_QHD static void chunk(const uint8_t* row, int64_t i, float (&o)[16]) {
        const int64_t blk = i >> 4;
        const int s16 = static_cast<int>(i & 15), c = s16 >> 1, half = s16 & 1, bi = static_cast<int>(blk & 1);
        const uint8_t* p = row + (blk >> 1) * PAIR;
        const int L = 8 * bi + c;
        const uint32_t* w = reinterpret_cast<const uint32_t*>(p);
        uint32_t q[4];
DS3_UNROLL
        for (int k = 0; k < 4; ++k) q[k] = w[16 * k + L];
        const uint32_t hb = w[16 * (4 + half) + L];
        const float dl = h2f(p + 416 + 2 * bi) * static_cast<float>(static_cast<int8_t>(p[384 + 2 * L + half]));
        values(q, hb, half, dl, o);
    }
    // Half `half` of a chunk from its four level words and its word of top bits: dl·(level − 32).
    DS3_QHD static void values(const uint32_t (&q)[4], uint32_t hb, int half, float dl, float (&o)[16]) {
DS3_UNROLL
        for (int t = 0; t < 16; ++t) {
            const int k = t >> 2, j = t & 3;
            const int v = (((q[k] >> (4 * half + 8 * j)) & 0xF) | (((hb >> (8 * j + 2 * k)) & 3) << 4)) - 32;
            o[t] = dl * static_cast<float>(v);
        }
    }
};

// Q6_K interleaved on upload (WType::q6_K_i; rows addressed as Interleaved's) for matrices
// of a multiple of 32 rows, so that a single-token GEMV can give each lane a row and a warp
// 32 rows: the lanes then read every activation block at the same time (one broadcast
// load) and each 16-byte load of the warp is 512 contiguous bytes. Within the block of a
// group, row l of the group (its lane) owns:
//   units 0..11 (16 bytes at 512·u + 16·l): the levels of chunks 2p and 2p + 1 (elements
//           64p..64p+63) in units 3p..3p+2, as Q6_KG's six words of each (chunk 2p's
//           words 0..5, then chunk 2p + 1's);
//   unit 12 (at 6144 + 16·l): the block's 16 int8 scales, as GGUF keeps them;
//   d (f16) at 6656 + 2·l.
struct Q6_KI : Interleaved<210> {
    static constexpr int SCALES = 12 * 512, DS = 13 * 512;
    // Byte offset of word k (0..5) of chunk c (0..7) of lane l in a group's block.
    DS3_QHD static int word_at(int l, int c, int k) {
        const int i = 6 * (c & 1) + k;
        return 512 * (3 * (c >> 1) + (i >> 2)) + 16 * l + 4 * (i & 3);
    }
    // Row l's plain GGUF block src into a group's block dst.
    DS3_QHD static void pack_lane(const uint8_t* src, int l, uint8_t* dst) {
        for (int c = 0; c < 8; ++c) {
            uint32_t w[6];
            uint16_t sc;
            Q6_KG::pack_lane(src, c, w, sc);
            for (int k = 0; k < 6; ++k)
                for (int j = 0; j < 4; ++j) dst[word_at(l, c, k) + j] = static_cast<uint8_t>(w[k] >> (8 * j));
        }
        for (int j = 0; j < 16; ++j) dst[SCALES + 16 * l + j] = src[192 + j];
        dst[DS + 2 * l] = src[208], dst[DS + 2 * l + 1] = src[209];
    }
    // Elements 16i..16i+15 of a row (row() of it).
    DS3_QHD static void chunk(const uint8_t* row, int64_t i, float (&o)[16]) {
        const int l = lane(row);
        const uint8_t* p = row - l + (i >> 4) * GROUP_BLOCK;
        const int s16 = static_cast<int>(i & 15), c = s16 >> 1, half = s16 & 1;
        uint32_t q[4];
DS3_UNROLL
        for (int k = 0; k < 4; ++k) q[k] = *reinterpret_cast<const uint32_t*>(p + word_at(l, c, k));
        const uint32_t hb = *reinterpret_cast<const uint32_t*>(p + word_at(l, c, 4 + half));
        const float dl = h2f(p + DS + 2 * l) * static_cast<float>(static_cast<int8_t>(p[SCALES + 16 * l + 2 * c + half]));
        Q6_KG::values(q, hb, half, dl, o);
    }
};

struct IQ4_XS {  // d @0, scales_h @2, scales_l[4] @4, qs[128] @8
    static constexpr int QK = 256, TS = 136;
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const int s = c >> 1, sh = 4 * (c & 1);
        const int sh_bits = *reinterpret_cast<const uint16_t*>(b + 2);
        const int sc = (((b[4 + (s >> 1)] >> (4 * (s & 1))) & 0xF) | (((sh_bits >> (2 * s)) & 3) << 4)) - 32;
        const float dl = h2f(b) * static_cast<float>(sc);
        uint32_t w[4];
        ld16<8>(b + 8 + 16 * s, w);
DS3_UNROLL
        for (int i = 0; i < 16; ++i) o[i] = dl * static_cast<float>(iq4nl((byte_of(w, i) >> sh) & 0xF));
    }
};

struct FP8_B128 {  // d (f32) @0, qs[128] @4
    static constexpr int QK = 128, TS = 132;
    DS3_QHD static void chunk(const uint8_t* b, int c, float (&o)[16]) {
        const float d = *reinterpret_cast<const float*>(b);
        uint32_t w[4];
        ld16<4>(b + 4 + 16 * c, w);
DS3_UNROLL
        for (int i = 0; i < 16; ++i) o[i] = fp8_e4m3(byte_of(w, i)) * d;
    }
};

}  // namespace ds3::cuda::q
