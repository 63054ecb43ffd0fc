// CUDA kernels of the matrix products and the element-wise ops (see kernels.h): the f32
// GEMV and tiled GEMM over every weight type, get_rows, add/SwiGLU/copy, and the MoE decode
// pairs. The integer decode GEMV is in gemv_q8.cu, MLA in mla.cu, routing in route.cu, the
// row kernels (RMS norm, RoPE) in fused.cu. CUDA C++ for sm_80 and sm_90; the tiled GEMM
// runs on tensor cores (mma.sync, in f32 precision).
#include "backends/cuda/kernels.h"
#include "backends/cuda/device_util.cuh"
#include "backends/cuda/gemv_fp8.h"
#include "backends/cuda/gemv_q8.h"
#include "backends/cuda/quant.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

namespace ds3::cuda {

int wtype_block(WType t) {
    switch (t) {
        case WType::f32: case WType::bf16: case WType::f16: return 1;
        case WType::q8_0: case WType::q4_0: return 32;
        case WType::fp8_b128: return 128;
        default: return 256;
    }
}
int wtype_block_bytes(WType t) {
    switch (t) {
        case WType::f32: return 4;
        case WType::bf16: case WType::f16: return 2;
        case WType::q8_0: return q::Q8_0::TS;
        case WType::q4_0: return q::Q4_0::TS;
        case WType::q2_K: return q::Q2_K::TS;
        case WType::q3_K: return q::Q3_K::TS;
        case WType::q4_K: return q::Q4_K::TS;
        case WType::q5_K: return q::Q5_K::TS;
        case WType::q6_K: case WType::q6_K_g: case WType::q6_K_i: return q::Q6_K::TS;
        case WType::q4_K_g: case WType::q4_K_i: return q::Q4_KG::TS;
        case WType::q5_K_g: case WType::q5_K_i: return q::Q5_KG::TS;
        case WType::iq4_xs: return q::IQ4_XS::TS;
        case WType::fp8_b128: return q::FP8_B128::TS;
    }
    return 1;
}

namespace {

// ---- weight element loaders ---------------------------------------------------------

struct WF32 {
    static constexpr bool kQuant = false;
    static constexpr int kPerVec = 4;  // elements per 16 bytes
    __host__ __device__ static constexpr int64_t row_bytes(int64_t K) { return K * 4; }
    __device__ static float get(const void* p, int64_t i) { return static_cast<const float*>(p)[i]; }
    __device__ static void vec(const uint4& v, float* o) {
        o[0] = __uint_as_float(v.x);
        o[1] = __uint_as_float(v.y);
        o[2] = __uint_as_float(v.z);
        o[3] = __uint_as_float(v.w);
    }
};
struct WBF16 {
    static constexpr bool kQuant = false;
    static constexpr int kPerVec = 8;
    __host__ __device__ static constexpr int64_t row_bytes(int64_t K) { return K * 2; }
    __device__ static float get(const void* p, int64_t i) {
        return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16);
    }
    __device__ static void pair(uint32_t u, float* o) {
        o[0] = __uint_as_float(u << 16);
        o[1] = __uint_as_float(u & 0xffff0000u);
    }
    __device__ static void vec(const uint4& v, float* o) {
        pair(v.x, o);
        pair(v.y, o + 2);
        pair(v.z, o + 4);
        pair(v.w, o + 6);
    }
};
struct WF16 {
    static constexpr bool kQuant = false;
    static constexpr int kPerVec = 8;
    __host__ __device__ static constexpr int64_t row_bytes(int64_t K) { return K * 2; }
    __device__ static float get(const void* p, int64_t i) {
        return __half2float(static_cast<const __half*>(p)[i]);
    }
    __device__ static void pair(uint32_t u, float* o) {
        __half2 h = *reinterpret_cast<const __half2*>(&u);
        float2 f = __half22float2(h);
        o[0] = f.x;
        o[1] = f.y;
    }
    __device__ static void vec(const uint4& v, float* o) {
        pair(v.x, o);
        pair(v.y, o + 2);
        pair(v.z, o + 4);
        pair(v.w, o + 6);
    }
};

// A block format as a row loader: chunk i of a row is elements 16i..16i+15.
template <typename Q>
struct WQ {
    static constexpr bool kQuant = true;
    static constexpr int kPerBlock = Q::QK / 16;
    __host__ __device__ static constexpr int64_t row_bytes(int64_t K) { return K / Q::QK * Q::TS; }
    __host__ __device__ static void chunk(const uint8_t* row, int64_t i, float (&o)[16]) {
        Q::chunk(row + (i / kPerBlock) * Q::TS, static_cast<int>(i % kPerBlock), o);
    }
};

// Q6_K regrouped (q6_K_g): the decoder takes the row itself (a pair of blocks is one unit).
struct WQ6G {
    static constexpr bool kQuant = true;
    __host__ __device__ static constexpr int64_t row_bytes(int64_t K) { return K / 256 * q::Q6_KG::TS; }
    __host__ __device__ static void chunk(const uint8_t* row, int64_t i, float (&o)[16]) { q::Q6_KG::chunk(row, i, o); }
};

// The interleaved layouts (q4_K_i, q5_K_i, q6_K_i): rows are named by row() (a group's
// start plus the lane), and row_bytes(k) is the offset of element k along a row, not the
// distance between rows.
template <typename QI>
struct WQI {
    using Fmt = QI;
    static constexpr bool kQuant = true;
    __host__ __device__ static constexpr int64_t row_bytes(int64_t K) { return QI::row_bytes(K); }
    __host__ __device__ static void chunk(const uint8_t* row, int64_t i, float (&o)[16]) { QI::chunk(row, i, o); }
};
template <typename L>
struct is_wqi : std::false_type {};
template <typename QI>
struct is_wqi<WQI<QI>> : std::true_type {};

// Row n of matrix w (rows of K values) for loader L.
template <typename L>
__host__ __device__ inline const uint8_t* row_of(const void* w, int64_t n, int64_t K) {
    if constexpr (is_wqi<L>::value) return L::Fmt::row(static_cast<const uint8_t*>(w), n, K);
    else return static_cast<const uint8_t*>(w) + n * L::row_bytes(K);
}

// Calls f(L{}) with the loader of type t (host side: picks the kernel instantiation).
template <typename F>
void with_loader(WType t, F&& f) {
    switch (t) {
        case WType::f32: return f(WF32{});
        case WType::bf16: return f(WBF16{});
        case WType::f16: return f(WF16{});
        case WType::q8_0: return f(WQ<q::Q8_0>{});
        case WType::q4_0: return f(WQ<q::Q4_0>{});
        case WType::q2_K: return f(WQ<q::Q2_K>{});
        case WType::q3_K: return f(WQ<q::Q3_K>{});
        case WType::q4_K: return f(WQ<q::Q4_K>{});
        case WType::q5_K: return f(WQ<q::Q5_K>{});
        case WType::q6_K: return f(WQ<q::Q6_K>{});
        case WType::q6_K_g: return f(WQ6G{});
        case WType::q6_K_i: return f(WQI<q::Q6_KI>{});
        case WType::q4_K_i: return f(WQI<q::Q4_KI>{});
        case WType::q5_K_i: return f(WQI<q::Q5_KI>{});
        case WType::q4_K_g: return f(WQ<q::Q4_KG>{});
        case WType::q5_K_g: return f(WQ<q::Q5_KG>{});
        case WType::iq4_xs: return f(WQ<q::IQ4_XS>{});
        case WType::fp8_b128: return f(WQ<q::FP8_B128>{});
    }
}

// Dot products of one weight row with MR activation rows, spread over a warp: each lane
// takes 16-byte slices of the row (vec) or single elements (unaligned shapes).
template <typename L, int MR>
__device__ inline void warp_dot_rows(const uint8_t* wrow, int64_t K, const float* x, int64_t ldx, int m_rows,
                                     bool vec, float (&acc)[MR]) {
    const int lane = threadIdx.x & 31;
    if (vec) {
        constexpr int V = L::kPerVec;
        const uint4* wv = reinterpret_cast<const uint4*>(wrow);
        const int64_t nv = K / V;
#pragma unroll 2
        for (int64_t i = lane; i < nv; i += 32) {
            uint4 raw = __ldg(wv + i);
            float w[V];
            L::vec(raw, w);
#pragma unroll
            for (int m = 0; m < MR; ++m) {
                if (m >= m_rows) break;
                const float4* xv = reinterpret_cast<const float4*>(x + m * ldx + i * V);
#pragma unroll
                for (int q = 0; q < V / 4; ++q) {
                    float4 xx = __ldg(xv + q);
                    acc[m] += w[4 * q] * xx.x + w[4 * q + 1] * xx.y + w[4 * q + 2] * xx.z + w[4 * q + 3] * xx.w;
                }
            }
        }
    } else {
        for (int64_t k = lane; k < K; k += 32) {
            const float w = L::get(wrow, k);
#pragma unroll
            for (int m = 0; m < MR; ++m) {
                if (m >= m_rows) break;
                acc[m] += w * x[m * ldx + k];
            }
        }
    }
}

// Any loader: 16-byte vectors for the plain types where aligned (else single elements),
// 16-element chunks for the block formats (lane i takes chunks i, i + 32, ...: adjacent
// lanes read adjacent bytes, and every block is read once).
template <typename L, int MR>
__device__ inline void warp_dot(const uint8_t* wrow, int64_t K, const float* x, int64_t ldx, int m_rows,
                                float (&acc)[MR]) {
    const bool xvec = (ldx % 4) == 0 && (reinterpret_cast<uintptr_t>(x) % 16) == 0;
    if constexpr (L::kQuant) {
        const int lane = threadIdx.x & 31;
        const int64_t nc = K / 16;
#pragma unroll 2
        for (int64_t i = lane; i < nc; i += 32) {
            float w[16];
            L::chunk(wrow, i, w);
#pragma unroll
            for (int m = 0; m < MR; ++m) {
                if (m >= m_rows) break;
                const float* xr = x + m * ldx + i * 16;
                if (xvec) {
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        const float4 xx = __ldg(reinterpret_cast<const float4*>(xr) + q);
                        acc[m] += w[4 * q] * xx.x + w[4 * q + 1] * xx.y + w[4 * q + 2] * xx.z + w[4 * q + 3] * xx.w;
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < 16; ++j) acc[m] += w[j] * xr[j];
                }
            }
        }
    } else {
        const bool vec = xvec && (K % L::kPerVec) == 0 && (reinterpret_cast<uintptr_t>(wrow) % 16) == 0;
        warp_dot_rows<L, MR>(wrow, K, x, ldx, m_rows, vec, acc);
    }
}

// ---- GEMV (M ≤ 8): warps per output column n, all M rows at once ----------------------

// `parts` warps share a row (1, 2, 4 or 8; 8 / parts rows per block): warp p dots the
// p-th run of the row (runs of a multiple of 512 elements, so every run starts on a pair
// of blocks and a 16-byte boundary) and the first warp of the row adds the runs. Few-row products
// such as the MoE router (256 rows of 7168) then still spread over the whole chip.
// l2_ahead (small matrices, such as the f32 MoE router): each warp first asks L2 for its
// run of the row, while the kernel before it is still running (dependent launch).
template <typename L, int MR>
__global__ void __launch_bounds__(256) gemv_kernel(GemmArgs a, int parts, bool l2_ahead) {
    __shared__ float red[8][MR];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t n = static_cast<int64_t>(blockIdx.x) * (8 / parts) + warp / parts;
    const int part = warp % parts;
    const int b = blockIdx.y;
    const int64_t run = (a.K + parts - 1) / parts + 511 & ~int64_t(511);
    const int64_t k0 = part * run, left = a.K > k0 ? a.K - k0 : 0, kn = left < run ? left : run;
    if (l2_ahead && n < a.N && kn > 0) {
        const char* p = reinterpret_cast<const char*>(row_of<L>(static_cast<const char*>(a.w) + b * a.w_bstride, n, a.K)) +
                        L::row_bytes(k0);
        for (int64_t o = 128 * lane; o < L::row_bytes(kn); o += 32 * 128)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
    }
    dep_wait();  // x comes from an earlier kernel, which may still read y
    dep_trigger();
    float acc[MR];
#pragma unroll
    for (int m = 0; m < MR; ++m) acc[m] = 0.0f;
    if (n < a.N && kn > 0) {
        const uint8_t* wrow = row_of<L>(static_cast<const uint8_t*>(a.w) + b * a.w_bstride, n, a.K);
        warp_dot<L, MR>(wrow + L::row_bytes(k0), kn, a.x + b * a.x_bstride + k0, a.ldx, static_cast<int>(a.M), acc);
    }
#pragma unroll
    for (int m = 0; m < MR; ++m) acc[m] = warp_sum(acc[m]);
    if (parts > 1) {
        if (lane == 0)
#pragma unroll
            for (int m = 0; m < MR; ++m) red[warp][m] = acc[m];
        __syncthreads();
        if (part != 0) return;
#pragma unroll
        for (int m = 0; m < MR; ++m) {
            acc[m] = 0.0f;
            for (int p = 0; p < parts; ++p) acc[m] += red[warp + p][m];  // in run order, as one warp would
        }
    }
    if (n >= a.N) return;
#pragma unroll
    for (int m = 0; m < MR; ++m) {
        if (m >= a.M) break;
        if (lane == 0) a.y[b * a.y_bstride + m * a.ldy + n] = acc[m];
    }
}

// Gate and up rows n of a SwiGLU MLP against the same ≤ 8 activation rows.
template <typename L, int MR>
__global__ void gemv_swiglu_kernel(GemmArgs a, const void* up) {
    dep_wait();  // as in gemv_kernel
    dep_trigger();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t n = static_cast<int64_t>(blockIdx.x) * 8 + warp;
    if (n >= a.N) return;
    float ag[MR], au[MR];
#pragma unroll
    for (int m = 0; m < MR; ++m) ag[m] = au[m] = 0.0f;
    warp_dot<L, MR>(row_of<L>(a.w, n, a.K), a.K, a.x, a.ldx, static_cast<int>(a.M), ag);
    warp_dot<L, MR>(row_of<L>(up, n, a.K), a.K, a.x, a.ldx, static_cast<int>(a.M), au);
#pragma unroll
    for (int m = 0; m < MR; ++m) {
        if (m >= a.M) break;
        const float g = warp_sum(ag[m]), u = warp_sum(au[m]);
        if (lane == 0) a.y[m * a.ldy + n] = silu(g) * u;
    }
}

// ---- tiled GEMM (M > 8, or grouped) --------------------------------------------------

// 64 × 64 output tiles, 64 values of K a step: a thread loads 16 consecutive values of
// one activation row and decodes one 16-element chunk of one weight row (every chunk
// decoded once), and the tensor cores then run 8 k-steps between two barriers.
constexpr int BM = 64, BN = 64, BK = 64;
// Tiles k-major; rows padded by 8 floats so that a warp's tensor-core fragment loads (rows
// k = lane % 4 (+4), columns lane / 4) fall in 32 different banks.
constexpr int kPad = 8;

// Tensor cores in f32 precision ("3xTF32"): x = hi + lo with hi, lo TF32 (10-bit
// mantissas), and a·b ≈ hi_a·hi_b + hi_a·lo_b + lo_a·hi_b, each an m16n8k8 TF32 MMA with
// f32 accumulation. The dropped lo·lo term is ~2^-22 relative: the products stay as exact
// as the SIMT f32 kernel's (the tests hold the tiled path to 1e-5 of the f32 reference).
__device__ __forceinline__ void tf32_split(float x, uint32_t& hi, uint32_t& lo) {
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(hi) : "f"(x));
    const float r = x - __uint_as_float(hi);
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(lo) : "f"(r));
}
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Three blocks an SM (≤ 85 registers): with 93 the SM held two and pp512 lost what the
// tensor cores gained (measured on the H200).
template <typename L>
__global__ void __launch_bounds__(256, 3) gemm_kernel(GemmArgs a) {
    __shared__ float As[BK][BM + kPad];
    __shared__ float Bs[BK][BN + kPad];
    dep_wait();  // x, groups and x_rows come from earlier work, which may still read y
    dep_trigger();
    const int tid = threadIdx.x;
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
    const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM;
    const int z = blockIdx.z;
    int64_t rows = a.M, y_off = 0, x_off = 0;
    const uint8_t* w = static_cast<const uint8_t*>(a.w);
    if (a.groups) {
        const int e = a.groups[3 * z], first = a.groups[3 * z + 1];
        rows = a.groups[3 * z + 2];
        w += static_cast<int64_t>(e) * a.w_bstride;
        y_off = static_cast<int64_t>(first) * a.ldy;
        x_off = first;
    } else {
        w += z * a.w_bstride;
        y_off = z * a.y_bstride;
    }
    if (m0 >= rows) return;
    const float* xb = a.groups ? a.x : a.x + z * a.x_bstride;

    // Thread (lr, c): row lr of each tile, its 16 values from k0 + 16c (consecutive
    // threads on consecutive rows: the shared stores fall in different banks).
    const int lr = tid % 64, c16 = 16 * (tid / 64);
    const int64_t xm = m0 + lr;
    const float* xrow = nullptr;
    if (xm < rows) {
        int64_t xr = a.groups ? (a.x_rows ? a.x_rows[x_off + xm] : x_off + xm) : xm;
        xrow = xb + xr * a.ldx;
    }
    const bool xvec = xrow && (reinterpret_cast<uintptr_t>(xrow) & 15) == 0;  // kc is a multiple of 16
    const int64_t wn = n0 + lr;
    const uint8_t* wrow = wn < a.N ? row_of<L>(w, wn, a.K) : nullptr;

    // Warp w computes rows wm = 32·(w / 4).. (two 16-row MMA tiles) × columns wc = 16·(w % 4)..
    // (two 8-column tiles) of the 64 × 64 output tile; acc[i][j] holds MMA tile (i, j)'s four
    // values of this lane: rows g and g + 8, columns 2t and 2t + 1 (g = lane / 4, t = lane % 4).
    const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int wm = 32 * (warp >> 2), wc = 16 * (warp & 3);
    float acc[2][2][4] = {};
    for (int64_t k0 = 0; k0 < a.K; k0 += BK) {
        const int64_t kc = k0 + c16;  // this thread's first k
        if (xvec && kc + 16 <= a.K) {  // four 16-byte loads where the row allows
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float4 v = __ldg(reinterpret_cast<const float4*>(xrow + kc) + q);
                As[c16 + 4 * q][lr] = v.x, As[c16 + 4 * q + 1][lr] = v.y;
                As[c16 + 4 * q + 2][lr] = v.z, As[c16 + 4 * q + 3][lr] = v.w;
            }
        } else {
#pragma unroll
            for (int i = 0; i < 16; ++i) As[c16 + i][lr] = (xrow && kc + i < a.K) ? xrow[kc + i] : 0.0f;
        }
        if constexpr (L::kQuant) {
            // K is a whole number of blocks (of 32 or 256) and kc a multiple of 16: one chunk.
            float wv[16];
            const bool in = wrow && kc < a.K;
            if (in) L::chunk(wrow, kc / 16, wv);
#pragma unroll
            for (int j = 0; j < 16; ++j) Bs[c16 + j][lr] = in ? wv[j] : 0.0f;
        } else if (wrow && kc + 16 <= a.K &&
                   (reinterpret_cast<uintptr_t>(wrow + L::row_bytes(kc)) & 15) == 0) {  // 16-byte loads
            float wv[16];
            const uint4* p = reinterpret_cast<const uint4*>(wrow + L::row_bytes(kc));
#pragma unroll
            for (int q = 0; q < 16 / L::kPerVec; ++q) L::vec(__ldg(p + q), wv + q * L::kPerVec);
#pragma unroll
            for (int j = 0; j < 16; ++j) Bs[c16 + j][lr] = wv[j];
        } else {
#pragma unroll
            for (int i = 0; i < 16; ++i) Bs[c16 + i][lr] = (wrow && kc + i < a.K) ? L::get(wrow, kc + i) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k16 = 0; k16 < BK; k16 += 16) {
            // Every 16 values of K go to fresh accumulators, added to acc in f32 with
            // round-to-nearest: the MMA's own accumulation is not IEEE-rounded, and over the
            // whole of K its error exceeded the SIMT kernel's (1.25e-5 against < 1e-5
            // normalised at K = 1792, measured on the H200).
            float part[2][2][4] = {};
#pragma unroll
            for (int kk = k16; kk < k16 + 16; kk += 8) {
                // A (16 × 8, row-major): a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4);
                // B (8 × 8, column-major): b0 (t, g), b1 (t + 4, g).
                uint32_t ah[2][4], al[2][4], bh[2][2], bl[2][2];
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const int r = wm + 16 * i + g;
                    tf32_split(As[kk + t4][r], ah[i][0], al[i][0]);
                    tf32_split(As[kk + t4][r + 8], ah[i][1], al[i][1]);
                    tf32_split(As[kk + t4 + 4][r], ah[i][2], al[i][2]);
                    tf32_split(As[kk + t4 + 4][r + 8], ah[i][3], al[i][3]);
                }
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int c = wc + 8 * j + g;
                    tf32_split(Bs[kk + t4][c], bh[j][0], bl[j][0]);
                    tf32_split(Bs[kk + t4 + 4][c], bh[j][1], bl[j][1]);
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        mma_tf32(part[i][j], al[i], bh[j]);
                        mma_tf32(part[i][j], ah[i], bl[j]);
                        mma_tf32(part[i][j], ah[i], bh[j]);
                    }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[i][j][e] += part[i][j][e];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t m = m0 + wm + 16 * i + g + 8 * h;
            if (m >= rows) continue;
#pragma unroll
            for (int j = 0; j < 2; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int64_t n = n0 + wc + 8 * j + 2 * t4 + e;
                    if (n < a.N) a.y[y_off + m * a.ldy + n] = acc[i][j][2 * h + e];
                }
        }
}

template <typename L>
void launch_gemv_swiglu(const GemmArgs& a, const void* up, cudaStream_t s) {
    const dim3 grid(static_cast<unsigned>((a.N + 7) / 8));
    switch (a.M) {
        case 1: return launch_pdl(gemv_swiglu_kernel<L, 1>, grid, dim3(256), 0, s, a, up);
        case 2: return launch_pdl(gemv_swiglu_kernel<L, 2>, grid, dim3(256), 0, s, a, up);
        case 3: case 4: return launch_pdl(gemv_swiglu_kernel<L, 4>, grid, dim3(256), 0, s, a, up);
        default: return launch_pdl(gemv_swiglu_kernel<L, 8>, grid, dim3(256), 0, s, a, up);
    }
}

template <typename L>
void launch_gemm(const GemmArgs& a, cudaStream_t s) {
    if (!a.groups && a.M <= 8) {
        // Few rows: split each over up to 8 warps, aiming at ~4096 warps in all.
        int parts = 1;
        while (parts < 8 && a.N * a.batch * parts < 4096 && a.K >= 512 * parts) parts *= 2;
        const int64_t rows_per_block = 8 / parts;
        dim3 grid(static_cast<unsigned>((a.N + rows_per_block - 1) / rows_per_block), static_cast<unsigned>(a.batch));
        // Up to 8 MB of weights (a sixth of L2) are asked for ahead; more would evict itself
        // (DS3_CUDA_L2_AHEAD=0: never; read once).
        static const bool ahead_on = env_on("DS3_CUDA_L2_AHEAD");
        const bool ahead = ahead_on && a.N * a.batch * L::row_bytes(a.K) <= (int64_t{8} << 20);
        switch (a.M) {
            case 1: return launch_pdl(gemv_kernel<L, 1>, grid, dim3(256), 0, s, a, parts, ahead);
            case 2: return launch_pdl(gemv_kernel<L, 2>, grid, dim3(256), 0, s, a, parts, ahead);
            case 3: return launch_pdl(gemv_kernel<L, 3>, grid, dim3(256), 0, s, a, parts, ahead);
            case 4: return launch_pdl(gemv_kernel<L, 4>, grid, dim3(256), 0, s, a, parts, ahead);
            default: return launch_pdl(gemv_kernel<L, 8>, grid, dim3(256), 0, s, a, parts, ahead);
        }
    }
    dim3 grid(static_cast<unsigned>((a.N + BN - 1) / BN), static_cast<unsigned>((a.M + BM - 1) / BM),
              static_cast<unsigned>(a.batch));
    launch_pdl(gemm_kernel<L>, grid, dim3(256), 0, s, a);
}

// ---- element-wise and small ops ------------------------------------------------------

template <typename L>
__global__ void get_rows_kernel(const void* w, int64_t cols, int64_t n_vocab, const int32_t* ids, float* y,
                                DevError* err) {
    dep_wait();  // ids come from earlier work, which may still read y
    dep_trigger();
    // Row r of the output is grid.y blocks (the first decode kernel of a step: one block's
    // chain of loads took 7 µs for V3's 7168 columns).
    const int64_t r = blockIdx.x, t0 = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x,
                  step = static_cast<int64_t>(gridDim.y) * blockDim.x;
    const int32_t id = ids[r];
    if (id < 0 || id >= n_vocab) {
        if (t0 == 0) set_error(err, 1, id, static_cast<int>(n_vocab));
        for (int64_t c = t0; c < cols; c += step) y[r * cols + c] = 0.0f;
        return;
    }
    const uint8_t* row = row_of<L>(w, id, cols);
    if constexpr (L::kQuant) {
        for (int64_t c = t0; c < cols / 16; c += step) {
            float v[16];
            L::chunk(row, c, v);
#pragma unroll
            for (int j = 0; j < 16; ++j) y[r * cols + 16 * c + j] = v[j];
        }
    } else {
        for (int64_t c = t0; c < cols; c += step) y[r * cols + c] = L::get(row, c);
    }
}

__global__ void add_kernel(const float* a, const float* b, int64_t n, float* y) {
    dep_wait();
    dep_trigger();
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        y[i] = a[i] + b[i];
}

__global__ void swiglu_kernel(const float* g, const float* u, int64_t n, float* y) {
    dep_wait();
    dep_trigger();
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        y[i] = silu(g[i]) * u[i];
}

__global__ void copy2d_kernel(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
    dep_wait();
    dep_trigger();
    const int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        dst[r * ldd + c] = src[r * lds + c];
    }
}

// ---- MoE, decode path -----------------------------------------------------------------


template <typename L>
__global__ void moe_gate_up_kernel(MoeArgs a, const float* x, const float* route, float* act, DevError* err) {
    dep_wait();  // x and route come from earlier kernels, which may still read act
    dep_trigger();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t f = static_cast<int64_t>(blockIdx.x) * 8 + warp;
    const int64_t pair = blockIdx.y, t = pair / a.n_used, j = pair % a.n_used;
    if (f >= a.F) return;
    const int e = static_cast<int>(route[t * 2 * a.n_used + a.n_used + j]);
    if (e < 0 || e >= a.n_expert) {
        if (lane == 0) set_error(err, 2, e, a.n_expert);
        return;
    }
    if (!expert_in(a.mask, e)) return;
    const uint8_t* g = row_of<L>(a.gate, e * a.F + f, a.D);
    const uint8_t* u = row_of<L>(a.up, e * a.F + f, a.D);
    const float* xr = x + t * a.D;
    float ag[1] = {0.0f}, au[1] = {0.0f};
    warp_dot<L, 1>(g, a.D, xr, 0, 1, ag);
    warp_dot<L, 1>(u, a.D, xr, 0, 1, au);
    const float gs = warp_sum(ag[0]), us = warp_sum(au[0]);
    if (lane == 0) act[pair * a.F + f] = silu(gs) * us;
}

template <typename L>
__global__ void moe_down_kernel(MoeArgs a, const float* act, const float* route, float* y) {
    dep_wait();
    dep_trigger();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t d = static_cast<int64_t>(blockIdx.x) * 8 + warp;
    const int64_t pair = blockIdx.y, t = pair / a.n_used, j = pair % a.n_used;
    if (d >= a.D) return;
    const int e = static_cast<int>(route[t * 2 * a.n_used + a.n_used + j]);
    if (e < 0 || e >= a.n_expert || !expert_in(a.mask, e)) return;
    const uint8_t* w = row_of<L>(a.down, e * a.D + d, a.F);
    const float* xr = act + pair * a.F;
    float acc[1] = {0.0f};
    warp_dot<L, 1>(w, a.F, xr, 0, 1, acc);
    const float v = warp_sum(acc[0]);
    if (lane == 0) y[pair * a.D + d] = v;
}

__global__ void moe_combine_kernel(MoeArgs a, const float* y, const float* route, const int* pair_row, float* out) {
    dep_wait();
    dep_trigger();
    const int64_t t = blockIdx.y;
    const int k = a.n_used;
    const float* r = route + t * 2 * k;
    for (int64_t d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; d < a.D;
         d += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) {
            const int e = static_cast<int>(r[k + j]);
            if (e < 0 || e >= a.n_expert || !expert_in(a.mask, e)) continue;
            const int64_t row = pair_row ? pair_row[t * k + j] : t * k + j;
            if (row < 0) continue;
            acc += r[j] * y[row * a.D + d];
        }
        out[t * a.D + d] = acc;
    }
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------

bool decode_row_host(WType t, const void* row, int64_t K, float* out) {
    if (!wtype_quantized(t) || K <= 0 || K % wtype_block(t) || (t == WType::q6_K_g && !q6k_groupable(K))) return false;
    with_loader(t, [&](auto l) {
        using L = decltype(l);
        if constexpr (L::kQuant) {
            for (int64_t i = 0; i < K / 16; ++i) {
                float o[16];
                L::chunk(static_cast<const uint8_t*>(row), i, o);
                for (int j = 0; j < 16; ++j) out[16 * i + j] = o[j];
            }
        }
    });
    return true;
}

int64_t interleave_rows(WType t) {
    const char* e = std::getenv(t == WType::q6_K ? "DS3_CUDA_Q6I_ROWS" : "DS3_CUDA_Q45I_ROWS");
    return e && *e ? std::max<int64_t>(0, std::atoll(e)) : 4096;
}

WType gpu_layout(WType t, int64_t K, int64_t N, int64_t stack) {
    if (t != WType::q4_K && t != WType::q5_K && t != WType::q6_K) return t;
    // A stack's decode product reads up to n_used of its matrices at once (V3 and Kimi-K2
    // route 8, V2 6): counted as eight.
    const int64_t from = interleave_rows(t), rows = N * std::clamp<int64_t>(stack, 1, 8);
    if (K > 0 && K % 256 == 0 && N > 0 && N % 32 == 0 && from > 0 && rows >= from)
        return t == WType::q4_K ? WType::q4_K_i : t == WType::q5_K ? WType::q5_K_i : WType::q6_K_i;
    if (t == WType::q4_K) return WType::q4_K_g;
    if (t == WType::q5_K) return WType::q5_K_g;
    return q6k_groupable(K) ? WType::q6_K_g : t;
}

int64_t regroup_unit(WType g, int64_t K) {
    switch (g) {
        case WType::q4_K_g: return q::Q4_KG::TS;
        case WType::q5_K_g: return q::Q5_KG::TS;
        case WType::q6_K_g: return q::Q6_KG::PAIR;
        case WType::q6_K_i: case WType::q4_K_i: case WType::q5_K_i:
            return K > 0 && K % 256 == 0 ? 32 * (K / 256) * wtype_block_bytes(g) : 0;
        default: return 0;
    }
}

void regroup_host(WType g, const void* src, void* dst, int64_t units, int64_t K) {
    const int64_t u = regroup_unit(g, K);
    const auto* in = static_cast<const uint8_t*>(src);
    auto* out = static_cast<uint8_t*>(dst);
    if (u == 0) return;
    for (int64_t i = 0; i < units; ++i) {
        if (wtype_interleaved(g)) {  // a group of 32 rows: block b of row l to the group's block b
            const int64_t nb = K / 256, ts = wtype_block_bytes(g), rb = nb * ts;
            for (int64_t b = 0; b < nb; ++b)
                for (int l = 0; l < 32; ++l) {
                    const uint8_t* src_b = in + i * u + l * rb + b * ts;
                    uint8_t* dst_b = out + i * u + b * 32 * ts;
                    if (g == WType::q6_K_i) q::Q6_KI::pack_lane(src_b, l, dst_b);
                    else if (g == WType::q4_K_i) q::Q4_KI::pack_lane(src_b, l, dst_b);
                    else q::Q5_KI::pack_lane(src_b, l, dst_b);
                }
        } else if (g == WType::q6_K_g) q::Q6_KG::pack_pair(in + i * u, out + i * u);
        else if (g == WType::q4_K_g) q::Q4_KG::pack_block(in + i * u, out + i * u);
        else if (g == WType::q5_K_g) q::Q5_KG::pack_block(in + i * u, out + i * u);
    }
}

namespace {
// A thread per lane of a pair (16 a pair): its six words and scale pair, and the pair's d.
__global__ void q6k_group_kernel(const uint8_t* src, uint8_t* dst, int64_t pairs) {
    const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, p = t >> 4;
    if (p >= pairs) return;
    const int L = static_cast<int>(t & 15);
    const uint8_t* s = src + p * q::Q6_KG::PAIR;
    uint8_t* d = dst + p * q::Q6_KG::PAIR;
    uint32_t w[6];
    uint16_t sc;
    q::Q6_KG::pack_lane(s + (L >> 3) * q::Q6_KG::TS, L & 7, w, sc);
    uint32_t* dw = reinterpret_cast<uint32_t*>(d);
    for (int k = 0; k < 6; ++k) dw[16 * k + L] = w[k];
    reinterpret_cast<uint16_t*>(d + 384)[L] = sc;
    if (L < 2) reinterpret_cast<uint16_t*>(d + 416)[L] = *reinterpret_cast<const uint16_t*>(s + L * q::Q6_KG::TS + 208);
}
// A thread per (group block, lane) of an interleaved layout QI: row l's GGUF block b to the
// group's block b.
template <typename QI>
__global__ void interleave_kernel(const uint8_t* src, uint8_t* dst, int64_t groups, int64_t nb) {
    const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, gb = t >> 5;
    if (gb >= groups * nb) return;
    const int l = static_cast<int>(t & 31);
    const int64_t g = gb / nb, b = gb % nb, rb = nb * QI::TS;
    QI::pack_lane(src + (g * 32 + l) * rb + b * QI::TS, l, dst + gb * QI::GROUP_BLOCK);
}
// A thread per block (their bytes are read many times each, from L1).
template <typename G>
__global__ void k4_group_kernel(const uint8_t* src, uint8_t* dst, int64_t blocks) {
    const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (b < blocks) G::pack_block(src + b * G::TS, dst + b * G::TS);
}
}  // namespace

void regroup(WType g, const void* src, void* dst, int64_t units, cudaStream_t s, int64_t K) {
    if (units <= 0) return;
    const auto* in = static_cast<const uint8_t*>(src);
    auto* out = static_cast<uint8_t*>(dst);
    if (wtype_interleaved(g)) {
        if (regroup_unit(g, K) == 0) return;
        const int64_t nb = K / 256, threads = units * nb * 32;
        const unsigned grid = static_cast<unsigned>((threads + 255) / 256);
        if (g == WType::q6_K_i) interleave_kernel<q::Q6_KI><<<grid, 256, 0, s>>>(in, out, units, nb);
        else if (g == WType::q4_K_i) interleave_kernel<q::Q4_KI><<<grid, 256, 0, s>>>(in, out, units, nb);
        else interleave_kernel<q::Q5_KI><<<grid, 256, 0, s>>>(in, out, units, nb);
    } else if (g == WType::q6_K_g) {
        q6k_group_kernel<<<static_cast<unsigned>((units * 16 + 255) / 256), 256, 0, s>>>(in, out, units);
    } else if (g == WType::q4_K_g) {
        k4_group_kernel<q::Q4_KG><<<static_cast<unsigned>((units + 127) / 128), 128, 0, s>>>(in, out, units);
    } else if (g == WType::q5_K_g) {
        k4_group_kernel<q::Q5_KG><<<static_cast<unsigned>((units + 127) / 128), 128, 0, s>>>(in, out, units);
    }
}

bool decode_chunk_host(WType t, const void* block, int c, float out[16]) {
    if (t == WType::q6_K_g || wtype_interleaved(t)) return false;  // row-addressed: decode_row_host
    if (!wtype_quantized(t)) return false;
    float o[16] = {};
    const auto* b = static_cast<const uint8_t*>(block);
    with_loader(t, [&](auto l) {
        if constexpr (decltype(l)::kQuant) decltype(l)::chunk(b, c, o);
    });
    for (int i = 0; i < 16; ++i) out[i] = o[i];
    return true;
}

namespace {
thread_local bool g_pdl_suspended = false;
}  // namespace
void set_pdl_suspended(bool on) { g_pdl_suspended = on; }
bool pdl_suspended() { return g_pdl_suspended; }

bool gemm(const GemmArgs& a, cudaStream_t s) {
    if (a.M <= 0 || a.N <= 0 || a.batch <= 0) return false;
    bool quantised = false;
    if (gemv_q8(a, s, quantised)) return quantised;
    if (gemv_fp8(a, nullptr, s)) return false;
    with_loader(a.wt, [&](auto l) { launch_gemm<decltype(l)>(a, s); });
    return false;
}

bool gemv_swiglu(const GemmArgs& a, const void* up, cudaStream_t s) {
    if (a.M <= 0 || a.N <= 0) return false;
    bool quantised = false;
    if (gemv_swiglu_q8(a, up, s, quantised)) return quantised;
    if (gemv_fp8(a, up, s)) return false;
    with_loader(a.wt, [&](auto l) { launch_gemv_swiglu<decltype(l)>(a, up, s); });
    return false;
}

void get_rows(const void* w, WType wt, int64_t cols, int64_t n_vocab, const int32_t* ids, int64_t n, float* y,
              DevError* err, cudaStream_t s) {
    if (n <= 0) return;
    with_loader(wt, [&](auto l) {
        using L = decltype(l);
        // A thread a 16-value chunk (quantised rows) or a value: up to 16 blocks a row.
        const int64_t units = L::kQuant ? cols / 16 : cols;
        const unsigned parts = static_cast<unsigned>(std::clamp<int64_t>((units + 127) / 128, 1, 16));
        launch_pdl(get_rows_kernel<L>, dim3(static_cast<unsigned>(n), parts), dim3(128), 0, s, w, cols, n_vocab, ids,
                   y, err);
    });
}

void add(const float* a, const float* b, int64_t n, float* y, cudaStream_t s) {
    if (n > 0) launch_pdl(add_kernel, dim3(grid_for(n, 256)), dim3(256), 0, s, a, b, n, y);
}

void swiglu(const float* g, const float* u, int64_t n, float* y, cudaStream_t s) {
    if (n > 0) launch_pdl(swiglu_kernel, dim3(grid_for(n, 256)), dim3(256), 0, s, g, u, n, y);
}

void copy2d(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols, cudaStream_t s) {
    if (rows > 0 && cols > 0)
        launch_pdl(copy2d_kernel, dim3(grid_for(rows * cols, 256)), dim3(256), 0, s, src, lds, dst, ldd, rows, cols);
}

bool moe_pairs_gate_up(const MoeArgs& a, const float* x, const float* route, float* act, DevError* err,
                       cudaStream_t s) {
    if (a.T <= 0) return false;
    bool quantised = false;
    if (moe_gate_up_q8(a, x, route, act, err, s, quantised)) return quantised;
    if (moe_gate_up_fp8(a, x, route, act, err, s)) return false;
    dim3 grid(static_cast<unsigned>((a.F + 7) / 8), static_cast<unsigned>(a.T * a.n_used));
    with_loader(a.wt, [&](auto l) {
        launch_pdl(moe_gate_up_kernel<decltype(l)>, grid, dim3(256), 0, s, a, x, route, act, err);
    });
    return false;
}

void moe_pairs_down(const MoeArgs& a, const float* act, const float* route, float* y, cudaStream_t s) {
    if (a.T <= 0) return;
    if (moe_down_q8(a, act, route, y, s) || moe_down_fp8(a, act, route, y, s)) return;
    dim3 grid(static_cast<unsigned>((a.D + 7) / 8), static_cast<unsigned>(a.T * a.n_used));
    with_loader(a.wt_down,
                [&](auto l) { launch_pdl(moe_down_kernel<decltype(l)>, grid, dim3(256), 0, s, a, act, route, y); });
}

bool moe_pairs_down_sum(const MoeArgs& a, const float* act, const float* route, float* out, cudaStream_t s) {
    return a.T > 0 && moe_down_sum_q8(a, act, route, out, s);
}

void moe_combine(const MoeArgs& a, const float* y, const float* route, const int* pair_row, float* out,
                 cudaStream_t s) {
    if (a.T <= 0) return;
    dim3 grid(static_cast<unsigned>(std::min<int64_t>((a.D + 255) / 256, 64)), static_cast<unsigned>(a.T));
    launch_pdl(moe_combine_kernel, grid, dim3(256), 0, s, a, y, route, pair_row, out);
}

}  // namespace ds3::cuda
