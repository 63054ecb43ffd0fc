// FP8 decode GEMVs on tensor cores (gemv_fp8.h). The f32 path decoded every e4m3 byte to
// f32 and multiplied on the SIMT units: instruction-bound at ~1 TB/s. Here e4m3 → f16 is
// exact (Hopper converts two bytes an instruction) and mma.sync m16n8k16 does the
// multiply-adds, with the ≤ 8 activation rows as the 8 columns of B (one row still
// fills a column: the tensor cores have the throughput to spare).
//
// A block owns 16 weight rows (the MMA's M) and splits K over its 4 warps. A dot product
// does not care about the order of K, so each 32-value chunk is permuted: lane (g, t) of
// a warp feeds the MMA's logical k 2t, 2t+1, 2t+8, 2t+9 of half s from bytes 8t+4s..+3
// of the chunk — one 32-bit load per row and half — and B the same four activations.
// Activations enter as two f16 terms, hi + lo of x·2⁻⁴ (the scale keeps them far from
// f16's 65504; the lo term keeps f32 accuracy), one MMA each. Every 128-value block goes
// to fresh accumulators multiplied by the block's f32 scale (the MMA's internal sums are
// not IEEE-rounded, so no long chains), and the warps' sums are added in warp order.
#include "backends/cuda/device_util.cuh"
#include "backends/cuda/gemv_fp8.h"

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

namespace ds3::cuda {

namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps, kRows = 16;
constexpr int kBlock = 128, kBlockBytes = 132;  // q::FP8_B128: f32 scale, 128 × e4m3
constexpr float kPreScale = 0.0625f;

enum Mode { kPlain, kSwiglu, kMoeGateUp, kMoeDown };

struct F8Args {
    const uint8_t* w[2] = {nullptr, nullptr};  // the matrix (and up, for the SwiGLU modes)
    int64_t N = 0, K = 0;
    int M = 1;
    const float* x = nullptr;
    int64_t ldx = 0;
    float* y = nullptr;
    int64_t ldy = 0;
    // MoE modes: grid.y is the (token, slot) pair; w[i] are stacks of n_expert matrices.
    const float* route = nullptr;
    int n_used = 1, n_expert = 1;
    ExpertMask mask;
    DevError* err = nullptr;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ uint32_t e4m3x2_f16x2(uint32_t two) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two & 0xffffu), __NV_E4M3);
    return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}
__device__ __forceinline__ uint32_t h2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
// Four activations (scaled) as f16 hi and lo pairs: (v0, v1) and (v2, v3).
__device__ __forceinline__ void f16_split(float4 v, uint32_t (&hi)[2], uint32_t (&lo)[2]) {
    v.x *= kPreScale, v.y *= kPreScale, v.z *= kPreScale, v.w *= kPreScale;
    const __half2 h0 = __floats2half2_rn(v.x, v.y), h1 = __floats2half2_rn(v.z, v.w);
    const float2 f0 = __half22float2(h0), f1 = __half22float2(h1);
    hi[0] = h2_bits(h0), hi[1] = h2_bits(h1);
    lo[0] = h2_bits(__floats2half2_rn(v.x - f0.x, v.y - f0.y));
    lo[1] = h2_bits(__floats2half2_rn(v.z - f1.x, v.w - f1.y));
}
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

template <int Mode>
__global__ void __launch_bounds__(kThreads) gemv_fp8_kernel(F8Args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int NW = Mode == kSwiglu || Mode == kMoeGateUp ? 2 : 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows, rb = a.K / kBlock * kBlockBytes;
    const uint8_t* w[NW];
#pragma unroll
    for (int i = 0; i < NW; ++i) w[i] = a.w[i];
    const float* x = a.x;
    int M = a.M;
    int64_t yoff = 0;
    if constexpr (Mode == kMoeGateUp || Mode == kMoeDown) {
        const int64_t pair = blockIdx.y, tok = pair / a.n_used;
        const int e = pair_expert(a.route, pair, a.n_used, a.n_expert, a.mask, a.err, Mode == kMoeGateUp);
        if (e < 0) return;
#pragma unroll
        for (int i = 0; i < NW; ++i) w[i] += static_cast<int64_t>(e) * a.N * rb;
        x += (Mode == kMoeGateUp ? tok : pair) * a.ldx;
        M = 1;
        yoff = pair * a.ldy;
    }
    const int64_t row[2] = {min(n0 + g, a.N - 1), min(n0 + g + 8, a.N - 1)};
    const int nkb = static_cast<int>(a.K / kBlock);
    const int kb0 = warp * nkb / kWarps, kb1 = (warp + 1) * nkb / kWarps;
    const bool has_x = g < M;  // B's column g: activation row g, or zeros
    const float* xr = x + (has_x ? g : 0) * a.ldx;
    float acc[NW][4] = {};
    for (int kb = kb0; kb < kb1; ++kb) {
        // Every load of the block first: scales, 8 words a row (chunk c = 2·quarter + half),
        // the activations.
        uint32_t q[NW][2][8];
        float d[NW][2];
#pragma unroll
        for (int i = 0; i < NW; ++i)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const uint8_t* blk = w[i] + row[r] * rb + static_cast<int64_t>(kb) * kBlockBytes;
                d[i][r] = __ldg(reinterpret_cast<const float*>(blk));
#pragma unroll
                for (int c = 0; c < 8; ++c)
                    q[i][r][c] = __ldg(reinterpret_cast<const uint32_t*>(blk + 4 + 32 * (c >> 1) + 8 * t + 4 * (c & 1)));
            }
        float4 xv[8];
#pragma unroll
        for (int c = 0; c < 8; ++c)
            xv[c] = has_x ? __ldg(reinterpret_cast<const float4*>(xr + static_cast<int64_t>(kb) * kBlock + 32 * (c >> 1) +
                                                                   8 * t + 4 * (c & 1)))
                          : make_float4(0.f, 0.f, 0.f, 0.f);
        float part[NW][4] = {};
#pragma unroll
        for (int c = 0; c < 8; ++c) {
            uint32_t bh[2], bl[2];
            f16_split(xv[c], bh, bl);
#pragma unroll
            for (int i = 0; i < NW; ++i) {
                // A: (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..) ← bytes 0-1 and 2-3.
                const uint32_t A[4] = {e4m3x2_f16x2(q[i][0][c]), e4m3x2_f16x2(q[i][1][c]),
                                       e4m3x2_f16x2(q[i][0][c] >> 16), e4m3x2_f16x2(q[i][1][c] >> 16)};
                mma_f16(part[i], A, bl);
                mma_f16(part[i], A, bh);
            }
        }
        // C: (row g, columns 2t, 2t+1), (row g + 8, the same columns).
#pragma unroll
        for (int i = 0; i < NW; ++i) {
            acc[i][0] += d[i][0] * part[i][0];
            acc[i][1] += d[i][0] * part[i][1];
            acc[i][2] += d[i][1] * part[i][2];
            acc[i][3] += d[i][1] * part[i][3];
        }
    }
    __shared__ float red[kWarps][NW][4][32];
#pragma unroll
    for (int i = 0; i < NW; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) red[warp][i][e][lane] = acc[i][e];
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        float v[NW];
#pragma unroll
        for (int i = 0; i < NW; ++i) {
            float s = 0.0f;
#pragma unroll
            for (int p = 0; p < kWarps; ++p) s += red[p][i][e][lane];
            v[i] = s / kPreScale;
        }
        const int64_t n = n0 + g + 8 * (e >> 1);
        const int col = 2 * t + (e & 1);
        if (n < a.N && col < M) {
            float out = v[0];
            if constexpr (NW == 2) out = silu(v[0]) * v[1];
            a.y[yoff + col * a.ldy + n] = out;
        }
    }
#endif
}

// sm_90 and later (hardware e4m3 conversion), unless DS3_CUDA_FP8_MMA=0 (read once).
bool fp8_mma_on() {
    static const bool on = env_on_sm90("DS3_CUDA_FP8_MMA");
    return on;
}

bool x_ok(const float* x, int64_t ldx) { return (reinterpret_cast<uintptr_t>(x) & 15) == 0 && ldx % 4 == 0; }

}  // namespace

bool gemv_fp8(const GemmArgs& a, const void* up, cudaStream_t s) {
    if (a.wt != WType::fp8_b128 || !fp8_mma_on() || a.groups || a.batch != 1 || a.M < 1 || a.M > 8 ||
        a.K % kBlock || !x_ok(a.x, a.ldx))
        return false;
    F8Args f;
    f.w[0] = static_cast<const uint8_t*>(a.w);
    f.w[1] = static_cast<const uint8_t*>(up);
    f.N = a.N, f.K = a.K, f.M = static_cast<int>(a.M);
    f.x = a.x, f.ldx = a.ldx, f.y = a.y, f.ldy = a.ldy;
    const dim3 grid(static_cast<unsigned>((a.N + kRows - 1) / kRows));
    if (up) gemv_fp8_kernel<kSwiglu><<<grid, kThreads, 0, s>>>(f);
    else gemv_fp8_kernel<kPlain><<<grid, kThreads, 0, s>>>(f);
    return true;
}

bool moe_gate_up_fp8(const MoeArgs& a, const float* x, const float* route, float* act, DevError* err,
                     cudaStream_t s) {
    if (a.wt != WType::fp8_b128 || !fp8_mma_on() || a.D % kBlock || !x_ok(x, a.D)) return false;
    F8Args f;
    f.w[0] = static_cast<const uint8_t*>(a.gate);
    f.w[1] = static_cast<const uint8_t*>(a.up);
    f.N = a.F, f.K = a.D, f.x = x, f.ldx = a.D, f.y = act, f.ldy = a.F;
    f.route = route, f.n_used = a.n_used, f.n_expert = a.n_expert, f.mask = a.mask, f.err = err;
    const dim3 grid(static_cast<unsigned>((a.F + kRows - 1) / kRows), static_cast<unsigned>(a.T * a.n_used));
    gemv_fp8_kernel<kMoeGateUp><<<grid, kThreads, 0, s>>>(f);
    return true;
}

bool moe_down_fp8(const MoeArgs& a, const float* act, const float* route, float* y, cudaStream_t s) {
    if (a.wt_down != WType::fp8_b128 || !fp8_mma_on() || a.F % kBlock || !x_ok(act, a.F)) return false;
    F8Args f;
    f.w[0] = static_cast<const uint8_t*>(a.down);
    f.N = a.D, f.K = a.F, f.x = act, f.ldx = a.F, f.y = y, f.ldy = a.D;
    f.route = route, f.n_used = a.n_used, f.n_expert = a.n_expert, f.mask = a.mask;
    const dim3 grid(static_cast<unsigned>((a.D + kRows - 1) / kRows), static_cast<unsigned>(a.T * a.n_used));
    gemv_fp8_kernel<kMoeDown><<<grid, kThreads, 0, s>>>(f);
    return true;
}

}  // namespace ds3::cuda
