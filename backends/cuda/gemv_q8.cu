// Integer decode GEMVs (see gemv_q8.h). Two launches per product: quantize_q8_kernel
// turns the ≤ 8 activation rows into int8 blocks in the scratch (a warp per 32 values),
// then gemv_q8_kernel streams the weight rows. A row is shared by `lpr` lanes (32 for
// long rows, fewer when a row has fewer chunks than a warp has lanes, so short rows do not
// idle most of the warp); each lane loads a chunk's bytes once (16-byte loads for Q4_K /
// Q5_K, realigned 32-bit loads for the 2-byte-aligned formats) and dots them with every
// activation row, which the CTA's warps share through L1. Both are launched with
// programmatic dependent launch (device_util.cuh); the dense GEMVs issue their first weight
// loads before they wait for the activations, the MoE ones wait first (the route picks
// their rows).
#include "backends/cuda/device_util.cuh"
#include "backends/cuda/dot_q8.cuh"
#include "backends/cuda/gemv_q8.h"
#include "backends/cuda/kernels.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <vector>

namespace ds3::cuda {

namespace {

constexpr int kThreads = kGemvThreads, kWarps = kThreads / 32;
// Weight rows a CTA takes: its warps (parts to a row) hold 32 / lpr lane groups of rw rows.
__host__ __device__ constexpr int rows_per_cta(int parts, int lpr, int rw) { return kWarps / parts * (32 / lpr) * rw; }
constexpr int kMaxDevices = 64;

// Quantised rows of K values: int8 values [rows][K], then block scales [rows][K/32].
struct Act {
    const int8_t* q = nullptr;
    const q8::XDs* d = nullptr;
};
Act act_at(const void* base, int64_t rows, int64_t K) {
    Act a;
    a.q = static_cast<const int8_t*>(base);
    a.d = reinterpret_cast<const q8::XDs*>(static_cast<const uint8_t*>(base) + q8::xds_offset(rows, K));
    return a;
}

// DS3_CUDA_Q8_PARTS=0: every row on one warp.
bool parts_on() {
    static const bool on = env_on("DS3_CUDA_Q8_PARTS");
    return on;
}

// DS3_CUDA_Q8_BATCHED=0 keeps the batched (per-head) products on the f32 kernels.
bool batched_on() {
    static const bool on = env_on("DS3_CUDA_Q8_BATCHED");
    return on;
}

__global__ void quantize_q8_kernel(const float* x, int64_t ldx, int64_t rows, int64_t K, int8_t* q, q8::XDs* d) {
    dep_wait();  // x is the previous kernel's output, and q, d may still be read by it
    dep_trigger();
    const int lane = threadIdx.x & 31;
    const int64_t kb = K / 32, nb = rows * kb;
    const int64_t step = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
    for (int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; b < nb; b += step) {
        const int64_t r = b / kb, c = b % kb;
        q8::quantize_warp(x[r * ldx + 32 * c + lane], true, q + r * K + 32 * c + lane, d + b);
    }
}

void quantize_rows(const float* x, int64_t ldx, int64_t rows, int64_t K, void* scratch, cudaStream_t s) {
    const Act a = act_at(scratch, rows, K);
    const int64_t nb = rows * (K / 32);
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>((nb + 7) / 8, 4096));
    launch_pdl(quantize_q8_kernel, dim3(grid), dim3(256), 0, s, x, ldx, rows, K, const_cast<int8_t*>(a.q),
               const_cast<q8::XDs*>(a.d));
}

__device__ inline float group_sum(float v, int lpr) {
    for (int o = lpr >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

enum Mode { kPlain, kSwiglu, kMoeGateUp, kMoeDown };
template <int Mode>
__host__ __device__ constexpr int matrices_of() {
    return Mode == kSwiglu || Mode == kMoeGateUp ? 2 : 1;
}
// Chunks per lane per round when a lane reads R weight rows at once (NW matrices times RW
// rows): about Q::UNROLL chunks of weights in flight per lane in all.
template <typename Q, int R>
__host__ __device__ constexpr int unroll_of() {
    return Q::UNROLL / R > 1 ? Q::UNROLL / R : 1;
}

struct QArgs {
    const uint8_t* w[2] = {nullptr, nullptr};  // the matrix (and up, for the SwiGLU modes)
    int64_t N = 0, K = 0;
    int M = 1;
    Act x;
    float* y = nullptr;
    int64_t ldy = 0;
    // Plain mode with grid.y > 1: a strided batch of one-row products (MLA's per-head
    // k_b / v_b), matrix b at w + b·w_bstride, its quantised row b, output at y + b·y_bstride.
    int64_t w_bstride = 0, y_bstride = 0;
    int lpr = 32;  // lanes per weight row
    int parts = 1;  // warps per row (a split of K for few long rows: lpr 32, RW 1, plain)
    // Plain batched mode: xf non-null (and x unset): batch row b is xf + b·xf_stride in f32,
    // quantised by each block into its dynamic shared memory (K ≤ kInlineRowK).
    const float* xf = nullptr;
    int64_t xf_stride = 0;
    // MoE modes: grid.y is the (token, slot) pair; w[i] are stacks of n_expert matrices.
    const float* route = nullptr;
    int n_used = 1, n_expert = 1;
    ExpertMask mask;
    DevError* err = nullptr;
    bool moe_early = false;  // gemv_i_kernel's MoE down: the route read before the wait
    // SwiGLU modes of gemv_i_kernel: y also quantised here (rows of N values: the down
    // product's input, the bytes quantize_q8_kernel would make of y); null: not. Plain
    // one-row products of gemv_q8_kernel with 32 rows a CTA (MLA's v_b, a batch of heads):
    // y's row (batch · N values) quantised as one row, block (yoff + n) / 32 by each CTA.
    int8_t* yq = nullptr;
    q8::XDs* yd = nullptr;
};

// One lane's share of the dot products of NW weight rows with M activation rows: chunks
// sub, sub + lpr, ... of the nc in a row, U per round. Every load of a round is issued
// (past the row's end, the last chunk again) before any arithmetic, so a lane has U
// chunks' bytes in flight at once; the first round is issued before the wait for the
// kernel that wrote the activations (dep_wait). A lane with no chunk (sub ≥ nc) does not
// wait, and reads nothing. Host and device: the host check runs it lane by lane.
template <typename Q, int MR, int NW, int U>
DS3_QHD void lane_dots(const uint8_t* const (&rows)[NW], int nc, int sub, int lpr, const int8_t* xq0,
                       const q8::XDs* xd0, int64_t xstride, int M, float (&acc)[NW][MR]) {
    for (int c0 = sub; c0 < nc; c0 += U * lpr) {
        typename Q::R r[U][NW];
DS3_UNROLL
        for (int u = 0; u < U; ++u) {
            const int c = c0 + u * lpr < nc ? c0 + u * lpr : nc - 1, blk = c / Q::NC, j = c % Q::NC;
DS3_UNROLL
            for (int i = 0; i < NW; ++i) {
                if constexpr (std::is_same_v<Q, q8::Q6_KG>) Q::load_row(rows[i], c, r[u][i]);
                else Q::load(rows[i] + static_cast<int64_t>(blk) * Q::TS, j, r[u][i]);
            }
        }
        if (c0 == sub) {  // the activations are read from here on
            dep_wait();
            dep_trigger();
        }
DS3_UNROLL
        for (int u = 0; u < U; ++u) {
            const int c = c0 + u * lpr, blk = c / Q::NC, j = c % Q::NC;
            if (c >= nc) break;
DS3_UNROLL
            for (int m = 0; m < MR; ++m) {
                if (m >= M) break;
                const int8_t* xq = xq0 + m * xstride + static_cast<int64_t>(blk) * Q::QK;
                const q8::XDs* xd = xd0 + m * (xstride / 32) + static_cast<int64_t>(blk) * (Q::QK / 32);
DS3_UNROLL
                for (int i = 0; i < NW; ++i) acc[i][m] += Q::dot(r[u][i], j, xq, xd);
            }
        }
    }
}

// A lane group (lpr lanes) takes RW consecutive rows of each of the NW matrices and reads
// every chunk of activations once for all of them: the activation loads, which hit L1 but
// cost as many wavefronts as the weights' own, are shared RW·NW ways (gate and up share
// them too). Rows past N repeat row N − 1 and are not written.
template <typename Q, int MR, int Mode, int RW>
__global__ void __launch_bounds__(kThreads) gemv_q8_kernel(QArgs a) {
    constexpr int NW = matrices_of<Mode>(), R = NW * RW;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int lpr = a.lpr, sub = lane & (lpr - 1), parts = a.parts, part = warp % parts;
    const int64_t n =
        ((static_cast<int64_t>(blockIdx.x) * (kWarps / parts) + warp / parts) * (32 / lpr) + lane / lpr) * RW;
    const int64_t rb = a.K / Q::QK * Q::TS, xstride = a.K;
    const uint8_t* w[NW];
#pragma unroll
    for (int i = 0; i < NW; ++i) w[i] = a.w[i];
    Act x = a.x;
    int64_t yoff = 0;
    if constexpr (Mode == kMoeGateUp || Mode == kMoeDown) {
        // The route, like the activations, comes from an earlier kernel. (lane_dots waits
        // again: a no-op now, but without it ptxas schedules these kernels differently, with
        // up to 13 more registers: Q6_KG's down product with RW 4 took 93 instead of 80.)
        dep_wait();
        dep_trigger();
        const int64_t pair = blockIdx.y, t = pair / a.n_used;
        const int e = pair_expert(a.route, pair, a.n_used, a.n_expert, a.mask, a.err, Mode == kMoeGateUp);
        if (e < 0) return;
#pragma unroll
        for (int i = 0; i < NW; ++i) w[i] += static_cast<int64_t>(e) * a.N * rb;
        const int64_t xr = Mode == kMoeGateUp ? t : pair;
        x.q += xr * xstride;
        x.d += xr * (xstride / 32);
        yoff = pair * a.ldy;
    } else if constexpr (Mode == kPlain) {
        const int64_t b = blockIdx.y;  // 0 unless batched
        w[0] += b * a.w_bstride;
        bool inline_row = false;  // one activation row only: no other kernel carries the code
        if constexpr (MR == 1) inline_row = a.xf != nullptr;
        if (inline_row) {
            // The block's rows asked of L2 first (their first loads now follow the wait), then
            // batch row b quantised as quantize_q8_kernel does, a 32-block per warp and step.
            extern __shared__ __align__(16) uint8_t xs[];
            const int64_t per_cta = rows_per_cta(parts, lpr, RW);
            const int64_t n0 = static_cast<int64_t>(blockIdx.x) * per_cta;
            const int64_t bytes = (n0 + per_cta < a.N ? per_cta : a.N - n0) * rb;
            prefetch_l2_run(w[0] + n0 * rb, bytes, threadIdx.x, kThreads);
            dep_wait();
            dep_trigger();
            int8_t* sq = reinterpret_cast<int8_t*>(xs);
            q8::XDs* sd = reinterpret_cast<q8::XDs*>(xs + q8::xds_offset(1, a.K));
            const float* xr = a.xf + b * a.xf_stride;
            for (int64_t c = warp; c < a.K / 32; c += kWarps)
                q8::quantize_warp(xr[32 * c + lane], true, sq + 32 * c + lane, sd + c);
            __syncthreads();
            x.q = sq;
            x.d = sd;
        } else {
            x.q += b * xstride;
            x.d += b * (xstride / 32);
        }
        yoff = b * a.y_bstride;
    }
    float acc[R][MR];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int m = 0; m < MR; ++m) acc[i][m] = 0.0f;
    if (n < a.N) {
        const uint8_t* rows[R];  // matrix i, row r at rows[i·RW + r]
#pragma unroll
        for (int i = 0; i < NW; ++i)
#pragma unroll
            for (int r = 0; r < RW; ++r) rows[i * RW + r] = w[i] + (n + r < a.N ? n + r : a.N - 1) * rb;
        // With parts warps on a row, warp p takes chunks sub + p·32, then every parts·32th.
        // Dense modes: a lane waits for the activations' kernel in lane_dots, after its first
        // loads; lanes with no row or no chunk never wait, but read nothing and write no y
        // (the writing lane has chunk 0: gemv_applies asks for whole blocks, so nc ≥ 1), and
        // lane 0 of every CTA waits, so the grid ends only after the kernels before it.
        lane_dots<Q, MR, R, unroll_of<Q, R>()>(rows, static_cast<int>(a.K / Q::QK) * Q::NC, sub + part * lpr,
                                               lpr * parts, x.q, x.d, xstride, a.M, acc);
    }
    if (parts > 1) {  // plain, RW 1, lpr 32: the row's warps add their sums in part order
        __shared__ float red[kWarps][MR];
#pragma unroll
        for (int m = 0; m < MR; ++m) {
            const float v = group_sum(acc[0][m], 32);
            if (lane == 0) red[warp][m] = v;
        }
        __syncthreads();
        if (part != 0 || lane != 0 || n >= a.N) return;
#pragma unroll
        for (int m = 0; m < MR; ++m) {
            if (m >= a.M) break;
            float v = 0.0f;
            for (int p = 0; p < parts; ++p) v += red[warp + p][m];
            a.y[yoff + m * a.ldy + n] = v;
        }
        return;
    }
    [[maybe_unused]] float* ys = nullptr;  // the CTA's 32 values of y, for their quantisation
    if constexpr (Mode == kPlain && MR == 1) {
        __shared__ float y32[32];
        if (a.yq) ys = y32;
    }
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int m = 0; m < MR; ++m) {
            if (m >= a.M) break;
            float v = group_sum(acc[r][m], lpr);
            if constexpr (NW == 2) v = silu(v) * group_sum(acc[RW + r][m], lpr);
            if (sub == 0 && n + r < a.N) {
                a.y[yoff + m * a.ldy + n + r] = v;
                if constexpr (Mode == kPlain && MR == 1) {
                    if (ys) ys[n + r - static_cast<int64_t>(blockIdx.x) * 32] = v;
                }
            }
        }
    if constexpr (Mode == kPlain && MR == 1) {
        if (ys) {  // launch_u: 32 rows a CTA, N and the batch's y offsets multiples of 32
            __syncthreads();
            const int64_t at = yoff + static_cast<int64_t>(blockIdx.x) * 32;
            if (warp == 0) q8::quantize_warp(ys[lane], true, a.yq + at + lane, a.yd + at / 32);
        }
    }
}

// The interleaved layouts (q4_K_i, q5_K_i, q6_K_i; quant.cuh): a lane takes a row, a warp
// a group of 32 rows, and the CTA's KP warps split the group's blocks (warp p the p-th run
// of about nb/KP blocks). Each lane loads its row's whole block at once (9, 11 or 13
// 16-byte loads, every one 512 contiguous bytes for the warp); all lanes then read the
// same activation block (a broadcast). The warps' sums meet in shared memory and warp 0
// adds them in warp order. Modes as gemv_q8_kernel's: plain, gate and up (SwiGLU) of the
// same rows (KP more warps for up), and the MoE pairs' gate/up and down (grid.y the pair,
// its expert's matrix from the route). Like the dense GEMVs, the dense modes issue the
// first block's loads before the wait for the kernel that wrote the activations; the MoE
// gate/up waits first (the route, the kernel before's output, picks the rows), the MoE down
// reads its route and loads its first block before the wait. Rows past M read row M − 1 again (no branch
// in the inner loop, so that the loads of the activation blocks can all be issued at
// once); they are not written. Measured alone on the H200 against q6_K_g
// (docs/performance-cuda.md, slice 21): V3's wo 7168 x 16384 30.9 → 26.9 µs (KP 8), the output
// head 129280 x 7168 196.1 → 176.2 (KP 2; its read ceiling is 167), q_b 24576 x 1536 12.8 →
// 10.8 (KP 4); 4 rows: wo 83.6 → 46.2, the head 346.1 → 282.8. With a branch on M in the
// inner loop the head took 218 µs.
// Registers: ≤ 80 for one row (24 warps an SM; q5_K_i's single matrices ≤ 128: QI::WARPS
// and WARPS2 for gate + up), 4 warps fewer for the MoE modes (the route's code; they
// spilled), ≤ 128 for 2 rows; 4 and 8 rows uncapped (at 128 they spilled). SMW: the warps
// an SM the bound is for (12 warps a group: 24 for all three formats, i_kernel_m1).
template <int MR, int W, int WARPS>
constexpr int i_min_blocks() {
    constexpr int n = (MR == 1 ? WARPS : MR == 2 ? 16 : 8) / W;
    return n > 0 ? n : 1;
}
template <typename QI, int Mode>
constexpr int i_sm_warps() {
    return (matrices_of<Mode>() == 2 ? QI::WARPS2 : QI::WARPS) - (Mode == kMoeGateUp || Mode == kMoeDown ? 4 : 0);
}
template <typename QI, int MR, int Mode, int KP, int SMW = i_sm_warps<QI, Mode>(), int NW = matrices_of<Mode>()>
__global__ void __launch_bounds__(32 * KP * NW, i_min_blocks<MR, KP * NW, SMW>()) gemv_i_kernel(QArgs a) {
    constexpr int64_t GB = 32 * QI::TS;  // a group's block
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, mat = warp / KP, part = warp % KP;
    const int nb = static_cast<int>(a.K / 256), b0 = part * nb / KP, b1 = (part + 1) * nb / KP;
    const uint8_t* w = a.w[NW == 2 ? mat : 0] + static_cast<int64_t>(blockIdx.x) * nb * GB;
    Act x = a.x;
    int64_t yoff = 0;
    if constexpr (Mode == kMoeGateUp || Mode == kMoeDown) {
        // The gate/up product's route is the kernel before's output: wait first. The down's
        // was written two kernels back at least (the gate/up product lies between): that
        // kernel is complete once this one runs (the kernel before waited for it before it
        // let this one launch), so the route is read, and the first block loaded, before the
        // wait for the activations (MoeEarly; read through L2).
        if (Mode == kMoeGateUp || !a.moe_early) {
            dep_wait();
            dep_trigger();
        }
        const int64_t pair = blockIdx.y, t = pair / a.n_used;
        const int e = pair_expert(a.route, pair, a.n_used, a.n_expert, a.mask, a.err, Mode == kMoeGateUp);
        if (e < 0) {  // the whole block; it still waits, so that the grid ends after the kernels before it
            dep_wait();
            dep_trigger();
            return;
        }
        w += static_cast<int64_t>(e) * a.N * (a.K / 256 * QI::TS);
        const int64_t xr = Mode == kMoeGateUp ? t : pair;
        x.q += xr * a.K;
        x.d += xr * (a.K / 32);
        yoff = pair * a.ldy;
    }
    float acc[MR];
#pragma unroll
    for (int m = 0; m < MR; ++m) acc[m] = 0.0f;
    if (b0 == b1) {  // no block (KP > nb): nothing to read, but the grid still waits
        dep_wait();
        dep_trigger();
    }
    for (int b = b0; b < b1; ++b) {
        typename QI::R r;
        QI::load(w + static_cast<int64_t>(b) * GB, lane, r);
        if (b == b0) {  // the activations are read from here on
            dep_wait();
            dep_trigger();
        }
        const int8_t* xq[MR];
        const q8::XDs* xd[MR];
#pragma unroll
        for (int m = 0; m < MR; ++m) {
            const int64_t xm = m < a.M ? m : a.M - 1;
            xq[m] = x.q + xm * a.K + 256 * static_cast<int64_t>(b);
            xd[m] = x.d + xm * (a.K / 32) + 8 * b;
        }
        QI::template block<MR>(r, xq, xd, acc);
    }
    __shared__ float red[NW][KP][MR][32];
#pragma unroll
    for (int m = 0; m < MR; ++m) red[mat][part][m][lane] = acc[m];
    __syncthreads();
    if (warp != 0) return;
    const int64_t n = static_cast<int64_t>(blockIdx.x) * 32 + lane;
#pragma unroll
    for (int m = 0; m < MR; ++m) {
        if (m >= a.M) break;
        float v[NW];
#pragma unroll
        for (int i = 0; i < NW; ++i) {
            v[i] = 0.0f;
#pragma unroll
            for (int p = 0; p < KP; ++p) v[i] += red[i][p][m][lane];
        }
        float out = v[0];
        if constexpr (NW == 2) {
            out = silu(v[0]) * v[1];
            if (a.yq) {  // the warp's 32 values are one block of the row
                const int64_t row = Mode == kMoeGateUp ? static_cast<int64_t>(blockIdx.y) : m;
                q8::quantize_warp(out, true, a.yq + row * a.N + n, a.yd + row * (a.N / 32) + blockIdx.x);
            }
        }
        a.y[yoff + m * a.ldy + n] = out;
    }
}

// The MoE down of a token's k ≤ kSumSlots slots and moe_combine's sum of them in one
// launch (interleaved layouts; decode): a CTA takes 32 output rows, warp j slot j's expert
// rows of them over all of K, block by block, then warp 0 adds the slots' sums times their
// weights in slot order, as moe_combine does. No pair rows are written and no combine is
// launched. A token's grid (N / 32 CTAs: V3's 224) is one wave at 2 CTAs an SM. Measured
// on the V3 slice (slice 23): asking for the next block before this one's arithmetic (in
// registers, or in L2) made the step 10-20 µs slower, and 3 CTAs an SM (80 registers:
// q4_K_i spilled 84 bytes) 10 µs slower. Like the MoE down of gemv_i_kernel, the route is
// read (two kernels back) and the first block loaded before the wait for the activations
// (moe_early).
constexpr int kSumSlots = 8;
template <typename QI>
__global__ void __launch_bounds__(32 * kSumSlots, 2) moe_down_sum_kernel(QArgs a, float* out) {
    constexpr int64_t GB = 32 * QI::TS;
    const int lane = threadIdx.x & 31, j = threadIdx.x >> 5, k = a.n_used, nb = static_cast<int>(a.K / 256);
    const int64_t t = blockIdx.y, pair = t * k + j;
    if (!a.moe_early) {
        dep_wait();
        dep_trigger();
    }
    const int e = pair_expert(a.route, pair, k, a.n_expert, a.mask, a.err, false);
    float acc[1] = {0.0f};
    if (e < 0 || nb == 0) {  // nothing to read; the warp still waits (the grid ends after the kernels before it)
        dep_wait();
        dep_trigger();
    } else {
        const uint8_t* w =
            a.w[0] + static_cast<int64_t>(e) * a.N * (nb * QI::TS) + static_cast<int64_t>(blockIdx.x) * nb * GB;
        const int8_t* xq = a.x.q + pair * a.K;
        const q8::XDs* xd = a.x.d + pair * (a.K / 32);
        for (int b = 0; b < nb; ++b) {
            typename QI::R r;
            QI::load(w + b * GB, lane, r);
            if (b == 0) {  // the activations are read from here on
                dep_wait();
                dep_trigger();
            }
            const int8_t* bq[1] = {xq + 256 * static_cast<int64_t>(b)};
            const q8::XDs* bd[1] = {xd + 8 * b};
            QI::template block<1>(r, bq, bd, acc);
        }
    }
    __shared__ float red[kSumSlots][32];
    red[j][lane] = acc[0];
    __syncthreads();
    if (j != 0) return;
    const float* r = a.route + t * 2 * k;
    float v = 0.0f;
    for (int s = 0; s < k; ++s) {
        const int es = static_cast<int>(r[k + s]);
        if (es < 0 || es >= a.n_expert || !expert_in(a.mask, es)) continue;
        v += r[s] * red[s][lane];
    }
    out[t * a.N + static_cast<int64_t>(blockIdx.x) * 32 + lane] = v;
}

// Warps a group for gemv_i_kernel where one_wave_parts (below) finds none, and for the MoE
// and many-row products: 2, or more (4, 8) while the grid has fewer than 2048 warps
// (DS3_CUDA_I_WARPS, read once) and each still has a block (V3: the output head 2, the 8
// routed experts' gate/up 4 and down 2). N: rows of all the grid's matrices.
int interleaved_parts(int64_t N, int64_t K) {
    static const int64_t target = [] {
        const int v = env_int("DS3_CUDA_I_WARPS");
        return v > 0 ? int64_t(v) : int64_t(2048);
    }();
    const int64_t groups = N / 32, nb = K / 256;
    int kp = 2;
    while (kp < 8 && groups * kp < target && 2 * kp <= nb) kp *= 2;
    return kp;
}

// CTAs of Kernel (of `threads` threads) resident at once on the current device (0 where it
// cannot be told), asked once a device.
template <auto Kernel>
int64_t resident_ctas(int threads) {
    static std::atomic<int64_t> known[kMaxDevices];  // slots + 1; 0: not asked yet
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
        cudaGetLastError();
        return 0;
    }
    if (const int64_t k = known[dev].load(std::memory_order_relaxed)) return k - 1;
    int n_sm = 0, per_sm = 0;
    if (cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, threads, 0) != cudaSuccess) {
        cudaGetLastError();
        n_sm = per_sm = 0;
    }
    const int64_t slots = static_cast<int64_t>(n_sm) * per_sm;
    known[dev].store(slots + 1, std::memory_order_relaxed);
    return slots;
}

// DS3_CUDA_MOE_EARLY=0: the MoE down waits before it reads the route (read once).
bool moe_early_on() {
    static const bool on = env_on("DS3_CUDA_MOE_EARLY");
    return on;
}

// DS3_CUDA_I_KP_PLAIN, _SWIGLU, _MOE_GU, _MOE_DOWN (2, 4, 8, or 12 for one-row plain
// products; read once): that mode's warps a group instead of the rules below, for
// measurements.
int interleaved_kp_forced(int mode) {
    static const std::array<int, 4> forced = [] {
        std::array<int, 4> f{};
        const char* names[4] = {"DS3_CUDA_I_KP_PLAIN", "DS3_CUDA_I_KP_SWIGLU", "DS3_CUDA_I_KP_MOE_GU",
                                "DS3_CUDA_I_KP_MOE_DOWN"};
        for (int m = 0; m < 4; ++m) {
            const int v = env_int(names[m]);
            f[static_cast<size_t>(m)] = v == 2 || v == 4 || v == 8 || (v == 12 && m == kPlain) ? v : 0;
        }
        return f;
    }();
    return forced[static_cast<size_t>(mode)];
}

// The one-row kernel at KP warps a group; KP 12 (plain only) at 24 warps an SM for all three
// formats (2 CTAs an SM, ≤ 85 registers: none spill).
template <typename QI, int Mode, int KP>
constexpr auto i_kernel_m1 = gemv_i_kernel<QI, 1, Mode, KP, KP == 12 ? 24 : i_sm_warps<QI, Mode>()>;

// One-row dense products (plain, gate + up): the most warps a group (plain 12, 8, 4, 2;
// gate + up 8, 4, 2) that still leaves a block to every warp and makes the grid one wave
// (every CTA resident at once); 0 where none does (interleaved_parts' then). A second,
// partly filled wave cost more than the warps gained (slice 22, V3's slice on the H200: the
// dense gate + up at 2 warps a group, 576 CTAs in one wave, against 4 in 1.45 waves, and
// wo at 12 warps a group, 224 CTAs in 2 an SM, against 8 at 1.7 of 3 an SM: tg128 +2 %).
// The MoE products keep interleaved_parts: their one-wave forms were slower (the gate/up
// at 2 warps a group +30 µs a step, the down at 1 +6).
template <typename QI, int Mode>
int one_wave_parts(int64_t groups, int64_t nb) {
    auto fits = [&](auto kp) {
        constexpr int KP = decltype(kp)::value;
        return nb >= KP && groups <= resident_ctas<i_kernel_m1<QI, Mode, KP>>(32 * KP * matrices_of<Mode>());
    };
    if constexpr (Mode == kPlain) {
        if (fits(std::integral_constant<int, 12>{})) return 12;
    }
    if (fits(std::integral_constant<int, 8>{})) return 8;
    if (fits(std::integral_constant<int, 4>{})) return 4;
    if (fits(std::integral_constant<int, 2>{})) return 2;
    return 0;
}

template <typename QI, int Mode, int KP>
void launch_i_kp(const QArgs& a, unsigned pairs, cudaStream_t s) {
    const dim3 grid(static_cast<unsigned>(a.N / 32), pairs), block(32 * KP * matrices_of<Mode>());
    if (Mode == kMoeGateUp || Mode == kMoeDown || a.M == 1) launch_pdl(i_kernel_m1<QI, Mode, KP>, grid, block, 0, s, a);
    else if constexpr ((Mode == kPlain || Mode == kSwiglu) && KP != 12) {
        if (a.M == 2) launch_pdl(gemv_i_kernel<QI, 2, Mode, KP>, grid, block, 0, s, a);
        else if (a.M <= 4) launch_pdl(gemv_i_kernel<QI, 4, Mode, KP>, grid, block, 0, s, a);
        else launch_pdl(gemv_i_kernel<QI, 8, Mode, KP>, grid, block, 0, s, a);
    }
}

// A product of ≤ 8 rows of an interleaved type t (N a multiple of 32: the layout's), or of
// the MoE pairs (grid.y; one row each). False for the other types.
template <int Mode>
bool launch_interleaved(WType t, const QArgs& a, unsigned pairs, cudaStream_t s) {
    auto go = [&](auto l) {
        using QI = decltype(l);
        const int64_t groups = a.N / 32 * pairs, nb = a.K / 256;
        int kp = interleaved_kp_forced(Mode);
        if (kp == 12 && a.M > 1) kp = 8;
        if (!kp && (Mode == kPlain || Mode == kSwiglu) && a.M == 1) kp = one_wave_parts<QI, Mode>(groups, nb);
        if (!kp) kp = interleaved_parts(a.N * pairs, a.K);
        switch (kp) {
            case 2: return launch_i_kp<QI, Mode, 2>(a, pairs, s);
            case 4: return launch_i_kp<QI, Mode, 4>(a, pairs, s);
            case 12:
                if constexpr (Mode == kPlain) return launch_i_kp<QI, Mode, 12>(a, pairs, s);
                [[fallthrough]];
            default: return launch_i_kp<QI, Mode, 8>(a, pairs, s);
        }
    };
    switch (t) {
        case WType::q6_K_i: go(q8::Q6_KI{}); return true;
        case WType::q4_K_i: go(q8::Q4_KI{}); return true;
        case WType::q5_K_i: go(q8::Q5_KI{}); return true;
        default: return false;
    }
}

// Calls f(Q{}) with the integer-dot format of t; false for the other types.
template <typename F>
bool with_q8(WType t, F&& f) {
    switch (t) {
        case WType::q8_0: f(q8::Q8_0{}); return true;
        case WType::q4_0: f(q8::Q4_0{}); return true;
        case WType::q4_K: f(q8::Q4_K{}); return true;
        case WType::q5_K: f(q8::Q5_K{}); return true;
        case WType::q6_K: f(q8::Q6_K{}); return true;
        case WType::q6_K_g: f(q8::Q6_KG{}); return true;
        case WType::q4_K_g: f(q8::Q4_KG{}); return true;
        case WType::q5_K_g: f(q8::Q5_KG{}); return true;
        default: return false;
    }
}

// Lanes per row: a power of two, the fewest that still give every lane a full round of
// U chunks (short rows such as the experts' down projection then share a warp).
int pick_lpr(int64_t chunks, int U) {
    int l = 32;
    while (l > 1 && int64_t(l / 2) * U >= chunks) l >>= 1;
    return l;
}

// Rows per lane group of one matrix: 4 where that still leaves ≥ ~1000 blocks of work
// (fewer for small products, which need the blocks more than the shared activation
// loads), fewer with more activation rows (their accumulators take the registers), and 1
// for gate+up, whose two matrices already share the loads (measured on the H200: the MoE
// gate/up pairs take 54 µs with 2 rows against 44 µs with 1; docs/performance-cuda.md, slice 5).
// DS3_CUDA_Q8_RW=1|2|4 forces it for every single-matrix product (read once).
int pick_rw(int64_t rows, int M, int matrices, int max_rw) {
    static const int forced = [] {
        const int d = env_int("DS3_CUDA_Q8_RW");
        return d == 1 || d == 2 || d == 4 ? d : 0;
    }();
    // ≤ 4 weight rows per lane at once, and the format's own limit (registers).
    if (matrices > 1) return 1;
    const int cap = std::min(max_rw, M <= 2 ? 4 : M <= 4 ? 2 : 1);
    if (forced) return std::max(1, std::min(forced, cap));
    return std::max(1, std::min(cap, rows >= 4096 ? 4 : rows >= 2048 ? 2 : 1));
}

// lane_div > 1: a row on that many times fewer lanes than pick_lpr's (fewer_lanes).
// True: y was also quantised into a.yq (kept only for one-row plain products of 32 rows a
// CTA; see QArgs).
template <typename Q, int Mode, int RW>
bool launch_u(QArgs a, unsigned pairs, cudaStream_t s, int lane_div = 1) {
    a.lpr = std::max(1, pick_lpr(a.K / Q::QK * Q::NC, unroll_of<Q, matrices_of<Mode>() * RW>()) / lane_div);
    // Few long rows (kv_a's 576 at V3's width): kWarps warps per row, so that the product
    // still fills the chip and each lane has a round or two (kv_a 7.4 → 5.5 µs on the
    // H200; q_a's 1536 rows were slower split).
    a.parts = Mode == kPlain && RW == 1 && a.lpr == 32 && parts_on() && a.N * static_cast<int64_t>(pairs) < 1024
                  ? kWarps
                  : 1;
    const int64_t per_cta = rows_per_cta(a.parts, a.lpr, RW);
    const dim3 grid(static_cast<unsigned>((a.N + per_cta - 1) / per_cta), pairs);
    const dim3 block(kThreads);
    if (!(Mode == kPlain && a.M == 1 && a.parts == 1 && per_cta == 32 && a.N % 32 == 0 && a.y_bstride % 32 == 0))
        a.yq = nullptr, a.yd = nullptr;
    if constexpr (Mode == kMoeGateUp || Mode == kMoeDown) {
        launch_pdl(gemv_q8_kernel<Q, 1, Mode, RW>, grid, block, 0, s, a);
    } else {
        // pick_rw gives RW = 4 only for M ≤ 2 and RW = 2 for M ≤ 4, one_wave_rw RW = 3 only for
        // M = 1: no other kernels are made.
        const size_t xs = a.xf ? static_cast<size_t>(q8_rows_bytes(1, a.K)) : 0;  // the row quantised in-kernel
        if (a.M == 1) launch_pdl(gemv_q8_kernel<Q, 1, Mode, RW>, grid, block, xs, s, a);
        else if constexpr (RW == 3) return false;
        else if (a.M == 2) launch_pdl(gemv_q8_kernel<Q, 2, Mode, RW>, grid, block, 0, s, a);
        else if constexpr (RW <= 2) {
            if (a.M <= 4) launch_pdl(gemv_q8_kernel<Q, 4, Mode, RW>, grid, block, 0, s, a);
            else if constexpr (RW == 1) launch_pdl(gemv_q8_kernel<Q, 8, Mode, RW>, grid, block, 0, s, a);
        }
    }
    return a.yq != nullptr;
}

// CTAs of gemv_q8_kernel<Q, 1, kPlain, RW> resident at once on the current device.
template <typename Q, int RW>
int64_t plain_slots() {
    return resident_ctas<gemv_q8_kernel<Q, 1, kPlain, RW>>(kThreads);
}

// A single-token product of one wave at 4 rows a lane group leaves warp slots empty (wo's
// 448 CTAs: 13.6 warps an SM); within one wave, more CTAs an SM ran faster alone (slice 15:
// q4_K_g 18432 x 7168 at 2 rows a lane group, 896 CTAs at 64 registers, 24.7 µs; at 4 rows
// 31.0). So the fewest rows a lane group (2, else 3) that still make one wave: wo (q6_K_g,
// 80 registers at 2 rows: 896 CTAs, 6 an SM, do not fit) at 3 (598 CTAs, 70 registers), the
// q5_K_g downs at 2 (896 CTAs, 64 registers, 8 an SM). At 3 rows each lane's chunks are
// those of 4 (same unroll), so are the bits; at 2 they may split a row over fewer lanes.
// Measured alone (H200, docs/performance-cuda.md slice 16): wo's shape 35.2 → 30.0 µs, q4_K_g
// 18432 x 7168 31.0 → 24.9; tg128 on the V3 slice +1.5–2 %.
// Returns the rows a lane group; DS3_CUDA_Q8_ONE_WAVE=0: rw (read once).
template <typename Q>
int one_wave_rw(int64_t N, int rw) {
    static const bool on = env_on("DS3_CUDA_Q8_ONE_WAVE");
    if (!on || rw != 4) return rw;
    // (As if each row took a whole warp: more CTAs than short rows make, so a conservative test.)
    auto fits = [&](int r, int64_t slots) {
        return slots > 0 && (N + rows_per_cta(1, 32, r) - 1) / rows_per_cta(1, 32, r) <= slots;
    };
    if (!fits(4, plain_slots<Q, 4>())) return rw;
    if (fits(2, plain_slots<Q, 2>())) return 2;
    if (fits(3, plain_slots<Q, 3>())) return 3;
    return rw;
}

// A single-token product of two waves at 4 rows a lane group whose rows are short enough
// that a lane has few rounds (q_b at V3's width: 24576 rows of 1536, 1536 CTAs of 792
// slots, 1.5 rounds a lane) runs as one wave with each row on half the lanes (768 CTAs,
// 3 rounds a lane). Measured (H200, docs/performance-cuda.md slice 16): q_b's shape alone
// 14.0 → 12.5 µs, a traced step −14 µs, tg128 +0.3–1 %. Returns the divisor of the lanes
// a row (1: as pick_lpr gives); DS3_CUDA_Q8_HALF_LANES=0: always 1 (read once).
template <typename Q>
int fewer_lanes(int64_t N, int64_t K) {
    static const bool on = env_on("DS3_CUDA_Q8_HALF_LANES");
    if (!on) return 1;
    const int lpr = pick_lpr(K / Q::QK * Q::NC, unroll_of<Q, 4>());
    const int64_t slots = plain_slots<Q, 4>(), per_cta = rows_per_cta(1, lpr, 4);
    const int64_t ctas = (N + per_cta - 1) / per_cta;
    return lpr >= 2 && slots > 0 && ctas > slots && (ctas + 1) / 2 <= slots ? 2 : 1;
}

template <typename Q, int Mode>
bool launch(QArgs a, unsigned pairs, cudaStream_t s) {
    int rw = pick_rw(a.N * static_cast<int64_t>(pairs), a.M, matrices_of<Mode>(), Q::MAX_RW);
    if constexpr (Mode == kPlain && Q::MAX_RW >= 4) {
        if (a.M == 1 && pairs == 1 && !a.xf) {
            if (rw == 4) {
                if (const int d = fewer_lanes<Q>(a.N, a.K); d > 1) return launch_u<Q, Mode, 4>(a, pairs, s, d);
            }
            rw = one_wave_rw<Q>(a.N, rw);
            if (rw == 3) return launch_u<Q, Mode, 3>(a, pairs, s);
        }
    }
    switch (rw) {
        case 4:
            if constexpr (matrices_of<Mode>() == 1 && Q::MAX_RW >= 4) return launch_u<Q, Mode, 4>(a, pairs, s);
            [[fallthrough]];
        case 2:
            if constexpr (matrices_of<Mode>() == 1 && Q::MAX_RW >= 2) return launch_u<Q, Mode, 2>(a, pairs, s);
            [[fallthrough]];
        default: return launch_u<Q, Mode, 1>(a, pairs, s);
    }
}

// A batch of single rows that the GEMV's blocks quantise themselves (GemmArgs::quantise_rows).
bool rows_inline(const GemmArgs& a) {
    return !a.xq && a.quantise_rows && a.batch > 1 && a.M == 1 && a.K <= kInlineRowK;
}

// A batch of matrices only for single rows (decode's per-head products of MLA).
bool gemv_applies(const GemmArgs& a) {
    // Interleaved types: not the batched per-head products (they stay on the f32 kernels).
    if (wtype_interleaved(a.wt) && (a.batch != 1 || a.N % 32 || rows_inline(a))) return false;
    return (a.scratch || a.xq || rows_inline(a)) && !a.groups && (a.batch == 1 || (a.M == 1 && batched_on())) &&
           a.batch >= 1 && a.M >= 1 && a.M <= 8 && a.K > 0 && a.K % 32 == 0 && q8_supported(a.wt) &&
           a.K % wtype_block(a.wt) == 0;
}

}  // namespace

bool q8_supported(WType t) {
    // DS3_CUDA_Q8=0 turns the integer path off (read once): before/after timings with one
    // binary; the scratch sizes are then 0 and the f32-activation kernels run.
    static const bool on = env_on("DS3_CUDA_Q8");
    return on && (wtype_interleaved(t) || with_q8(t, [](auto) {}));
}

size_t q8_rows_bytes(int64_t rows, int64_t K) {
    const int64_t xds_bytes = rows * (K / 32) * int64_t(sizeof(q8::XDs));
    return static_cast<size_t>(q8::xds_offset(rows, K) + ((xds_bytes + 15) & ~int64_t(15)));
}

size_t gemv_scratch_bytes(WType wt, int64_t M, int64_t K, int batch) {
    if (!q8_supported(wt) || M < 1 || M > 8 || K <= 0 || K % 32 || batch < 1) return 0;
    if (batch > 1) return M == 1 && batched_on() ? q8_rows_bytes(batch, K) : 0;
    return q8_rows_bytes(M, K);
}

size_t moe_scratch_bytes(const MoeArgs& a) {
    if (a.T < 1 || a.T > 8 || a.D % 32 || a.F % 32) return 0;
    return (q8_supported(a.wt) ? q8_rows_bytes(a.T, a.D) : 0) +
           (q8_supported(a.wt_down) ? q8_rows_bytes(a.T * a.n_used, a.F) : 0);
}

bool gemv_q8(const GemmArgs& a, cudaStream_t s, bool& quantised) {
    quantised = false;
    if (!gemv_applies(a)) return false;
    // A batch of single rows is quantised as `batch` rows x_bstride apart.
    const int64_t rows = a.batch > 1 ? a.batch : a.M, ld = a.batch > 1 ? a.x_bstride : a.ldx;
    QArgs q;
    if (rows_inline(a)) {
        q.xf = a.x, q.xf_stride = a.x_bstride;
    } else {
        if (!a.xq) quantize_rows(a.x, ld, rows, a.K, a.scratch, s);
        q.x = act_at(a.xq ? a.xq : a.scratch, rows, a.K);
    }
    q.w[0] = static_cast<const uint8_t*>(a.w);
    q.N = a.N, q.K = a.K, q.M = static_cast<int>(a.M);
    q.y = a.y, q.ldy = a.ldy;
    q.w_bstride = a.w_bstride, q.y_bstride = a.y_bstride;
    if (launch_interleaved<kPlain>(a.wt, q, 1, s)) return true;
    if (a.yq && a.M == 1 && (a.batch == 1 || a.y_bstride == a.N)) {  // y's row (batch · N values), quantised
        const Act yq = act_at(a.yq, 1, a.batch * a.N);
        q.yq = const_cast<int8_t*>(yq.q), q.yd = const_cast<q8::XDs*>(yq.d);
    }
    return with_q8(a.wt, [&](auto l) {
        quantised = launch<decltype(l), kPlain>(q, static_cast<unsigned>(a.batch), s);
    });
}

bool gemv_swiglu_q8(const GemmArgs& a, const void* up, cudaStream_t s, bool& quantised) {
    quantised = false;
    if (!gemv_applies(a)) return false;
    if (!a.xq) quantize_rows(a.x, a.ldx, a.M, a.K, a.scratch, s);
    QArgs q;
    q.w[0] = static_cast<const uint8_t*>(a.w);
    q.w[1] = static_cast<const uint8_t*>(up);
    q.N = a.N, q.K = a.K, q.M = static_cast<int>(a.M);
    q.x = act_at(a.xq ? a.xq : a.scratch, a.M, a.K);
    q.y = a.y, q.ldy = a.ldy;
    if (a.yq && a.ldy == a.N) {  // only the interleaved kernel writes it
        const Act yq = act_at(a.yq, a.M, a.N);
        q.yq = const_cast<int8_t*>(yq.q), q.yd = const_cast<q8::XDs*>(yq.d);
    }
    if (launch_interleaved<kSwiglu>(a.wt, q, 1, s)) {
        quantised = q.yq != nullptr;
        return true;
    }
    q.yq = nullptr, q.yd = nullptr;
    return with_q8(a.wt, [&](auto l) { launch<decltype(l), kSwiglu>(q, 1, s); });
}

namespace {
QArgs moe_qargs(const MoeArgs& a, const float* route) {
    QArgs q;
    q.route = route;
    q.n_used = a.n_used, q.n_expert = a.n_expert;
    q.mask = a.mask;
    return q;
}

// The down's part of the scratch (its P = T·k activation rows quantised); null where the
// down has no integer path.
void* moe_down_scratch(const MoeArgs& a) {
    if (!a.scratch || moe_scratch_bytes(a) == 0 || !q8_supported(a.wt_down)) return nullptr;
    return static_cast<uint8_t*>(a.scratch) + (q8_supported(a.wt) ? q8_rows_bytes(a.T, a.D) : 0);
}

// Launches the quantisation of act into the down's scratch, unless the gate/up wrote it
// there (act_q8), and returns the down's arguments.
QArgs prepare_moe_down(const MoeArgs& a, const float* act, const float* route, void* base, cudaStream_t s) {
    const int64_t P = a.T * a.n_used;
    if (!a.act_q8) quantize_rows(act, a.F, P, a.F, base, s);
    QArgs q = moe_qargs(a, route);
    q.w[0] = static_cast<const uint8_t*>(a.down);
    q.N = a.D, q.K = a.F;
    q.x = act_at(base, P, a.F);
    q.moe_early = moe_early_on();
    return q;
}
}  // namespace

bool moe_gate_up_q8(const MoeArgs& a, const float* x, const float* route, float* act, DevError* err, cudaStream_t s,
                    bool& quantised) {
    quantised = false;
    if (!a.scratch || moe_scratch_bytes(a) == 0 || !q8_supported(a.wt) || (wtype_interleaved(a.wt) && a.F % 32)) return false;
    if (!a.xq) quantize_rows(x, a.D, a.T, a.D, a.scratch, s);
    QArgs q = moe_qargs(a, route);
    q.w[0] = static_cast<const uint8_t*>(a.gate);
    q.w[1] = static_cast<const uint8_t*>(a.up);
    q.N = a.F, q.K = a.D;
    q.x = act_at(a.xq ? a.xq : a.scratch, a.T, a.D);
    q.y = act, q.ldy = a.F;
    q.err = err;
    const unsigned P = static_cast<unsigned>(a.T * a.n_used);
    if (void* base = a.quantise_act ? moe_down_scratch(a) : nullptr) {  // only the interleaved kernel writes it
        const Act yq = act_at(base, P, a.F);
        q.yq = const_cast<int8_t*>(yq.q), q.yd = const_cast<q8::XDs*>(yq.d);
    }
    if (launch_interleaved<kMoeGateUp>(a.wt, q, P, s)) {
        quantised = q.yq != nullptr;
        return true;
    }
    q.yq = nullptr, q.yd = nullptr;
    return with_q8(a.wt, [&](auto l) { launch<decltype(l), kMoeGateUp>(q, P, s); });
}

bool moe_down_q8(const MoeArgs& a, const float* act, const float* route, float* y, cudaStream_t s) {
    void* base = moe_down_scratch(a);
    if (!base || (wtype_interleaved(a.wt_down) && a.D % 32)) return false;
    QArgs q = prepare_moe_down(a, act, route, base, s);
    q.y = y, q.ldy = a.D;
    const unsigned P = static_cast<unsigned>(a.T * a.n_used);
    if (launch_interleaved<kMoeDown>(a.wt_down, q, P, s)) return true;
    return with_q8(a.wt_down, [&](auto l) { launch<decltype(l), kMoeDown>(q, P, s); });
}

bool moe_down_sum_q8(const MoeArgs& a, const float* act, const float* route, float* out, cudaStream_t s) {
    void* base = moe_down_scratch(a);
    if (!base || !wtype_interleaved(a.wt_down) || a.D % 32 || a.F % 256 || a.n_used < 1 || a.n_used > kSumSlots)
        return false;
    const QArgs q = prepare_moe_down(a, act, route, base, s);
    const dim3 grid(static_cast<unsigned>(a.D / 32), static_cast<unsigned>(a.T)), block(32 * a.n_used);
    switch (a.wt_down) {
        case WType::q6_K_i: launch_pdl(moe_down_sum_kernel<q8::Q6_KI>, grid, block, 0, s, q, out); return true;
        case WType::q4_K_i: launch_pdl(moe_down_sum_kernel<q8::Q4_KI>, grid, block, 0, s, q, out); return true;
        case WType::q5_K_i: launch_pdl(moe_down_sum_kernel<q8::Q5_KI>, grid, block, 0, s, q, out); return true;
        default: return false;
    }
}

bool dot_q8_host(WType t, const void* row, int64_t K, const float* x, float* out, int rw) {
    if (!q8_supported(t) || K <= 0 || K % wtype_block(t)) return false;
    std::vector<int4> qbuf(static_cast<size_t>(K / 16));  // 16-byte aligned int8 values
    int8_t* xq = reinterpret_cast<int8_t*>(qbuf.data());
    std::vector<q8::XDs> xd(static_cast<size_t>(K / 32));
    for (int64_t b = 0; b < K / 32; ++b) {
        float amax = 0.0f;
        bool nan = false;
        for (int i = 0; i < 32; ++i) {
            nan = nan || std::isnan(x[32 * b + i]);
            amax = std::max(amax, std::fabs(x[32 * b + i]));
        }
        int sq = 0;
        for (int i = 0; i < 32; ++i) sq += xq[32 * b + i] = q8::quant_one(x[32 * b + i], amax);
        xd[static_cast<size_t>(b)] = q8::block_xds(amax, nan, static_cast<float>(sq));
    }
    if (wtype_interleaved(t)) {  // as gemv_i_kernel with one warp: block by block
        const auto* r = static_cast<const uint8_t*>(row);
        auto run = [&](auto fmt) {
            using QI = decltype(fmt);
            using A = q::Interleaved<QI::TS>;
            float acc[1] = {0.0f};
            for (int64_t b = 0; b < K / 256; ++b) {
                typename QI::R w;
                QI::load(r - A::lane(r) + b * A::GROUP_BLOCK, A::lane(r), w);
                const int8_t* xqb[1] = {xq + 256 * b};
                const q8::XDs* xdb[1] = {xd.data() + 8 * b};
                QI::template block<1>(w, xqb, xdb, acc);
            }
            *out = acc[0];
        };
        if (t == WType::q6_K_i) run(q8::Q6_KI{});
        else if (t == WType::q4_K_i) run(q8::Q4_KI{});
        else run(q8::Q5_KI{});
        return true;
    }
    const uint8_t* rows[1] = {static_cast<const uint8_t*>(row)};
    float sum = 0.0f;
    with_q8(t, [&](auto l) {
        using Q = decltype(l);
        // The lanes of one row as the kernel splits them, then their sum.
        // The lane split of a row read with 1, 2 or 4 rows per lane group (its unroll).
        constexpr int U1 = unroll_of<Q, 1>(), U2 = unroll_of<Q, 2>(), U4 = unroll_of<Q, 4>();
        const int nc = static_cast<int>(K / Q::QK) * Q::NC, lpr = pick_lpr(nc, rw == 4 ? U4 : rw == 2 ? U2 : U1);
        for (int sub = 0; sub < lpr; ++sub) {
            float acc[1][1] = {{0.0f}};
            if (rw == 4) lane_dots<Q, 1, 1, U4>(rows, nc, sub, lpr, xq, xd.data(), K, 1, acc);
            else if (rw == 2) lane_dots<Q, 1, 1, U2>(rows, nc, sub, lpr, xq, xd.data(), K, 1, acc);
            else lane_dots<Q, 1, 1, U1>(rows, nc, sub, lpr, xq, xd.data(), K, 1, acc);
            sum += acc[0][0];
        }
    });
    *out = sum;
    return true;
}

}  // namespace ds3::cuda
