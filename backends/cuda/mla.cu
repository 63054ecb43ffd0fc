// Absorbed MLA over the latent cache: storing a batch's rows and the split-sequence
// (flash-decoding) attention of every head against the shared latent rows (kernels.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "backends/cuda/device_util.cuh"
#include "backends/cuda/dot_q8.cuh"
#include "backends/cuda/kernels.h"

namespace ds3::cuda {

namespace {

// ---- MLA ----------------------------------------------------------------------------

__global__ void mla_store_kernel(float* cache, int64_t width, int64_t n_ctx, const float* latent, const float* k_pe,
                                 int kv_lora, int qk_rope, const int32_t* positions, DevError* err) {
    dep_wait();
    dep_trigger();
    const int64_t t = blockIdx.x;
    const int32_t pos = positions[t];
    if (pos < 0 || pos >= n_ctx) {
        if (threadIdx.x == 0) set_error(err, 3, pos, static_cast<int>(n_ctx));
        return;
    }
    float* row = cache + static_cast<int64_t>(pos) * width;
    for (int i = threadIdx.x; i < kv_lora + qk_rope; i += blockDim.x)
        row[i] = i < kv_lora ? latent[t * kv_lora + i] : k_pe[t * qk_rope + (i - kv_lora)];
}

constexpr int kMlaHeads = 8;     // heads per block: they share every cache row read
constexpr int kMlaThreads = 256;
// Positions one pass of two rows a warp covers: a split with more takes four rows at once.
constexpr int kMlaTwoRowPass = 2 * (kMlaThreads / 32);
constexpr int kMlaMaxChunk = 512;
// DeepSeek's rows of 512 + 64 = 576 values: 18 a lane, all held at once.
constexpr int kMlaRowRegs = 18;

// Warp sums of a lane's kN values at once (the split kernel's scores): values [0, n/2)
// and [n/2, n) are halves, and a lane hands its partner (lane ^ O) the half it does not
// keep (the upper if lane & O), adding the partner's — n − 1 shuffles for n sums.
template <int N, int O, int kN>
__device__ __forceinline__ void sum_halves(float (&v)[kN], int lane) {
    if constexpr (N > 1) {
        const bool up = lane & O;
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
            const float send = up ? v[i] : v[i + N / 2], keep = up ? v[i + N / 2] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
        }
        sum_halves<N / 2, O / 2>(v, lane);
    }
}

// The split kernel's shared memory, [kMlaHeads][width] queries then [kMlaHeads][pst]
// scores: the scores start on a 16-byte boundary and a head's row of them is whole
// float4s (the context pass reads four positions at a time).
template <typename I>
__host__ __device__ constexpr I round4(I v) {
    return (v + 3) & ~I(3);
}
__host__ __device__ constexpr int64_t mla_scores_offset(int64_t width) { return round4(kMlaHeads * width); }

// One block: query t (of this pass), heads h0..h0+7, positions of split `blockIdx.x`.
// Query t sees positions 0..positions[t]. chunk > 0: positions per split; 0: the query's
// visible positions divided evenly over the n_split splits (the decode plan, whose launch
// shape does not depend on the context length, so a captured CUDA graph stays valid).
// Writes the unnormalised partial context and the split's (max, sum) per head.
// kR: a cache row's values per lane (width ≤ 32·kR), all loaded at once.
// kD: latent dimensions a thread of the context pass takes at once; kMaxRA: the most cache
// rows a warp scores at once (4 takes 128 registers, 2 takes 96).
template <int kR, int kD, int kMaxRA>
__global__ void __launch_bounds__(kMlaThreads, 2) mla_split_kernel(const float* q_abs, const float* q_pe, int64_t pe_ld,
                                                              const float* cache, int64_t width, int kv_lora,
                                                              int n_head, int64_t t0,
                                                              const int32_t* positions, int64_t n_ctx, float scale,
                                                              int chunk, int n_split, float* part, float* stats,
                                                              bool ahead, L2Ahead weights_ahead, const float* pe_cs) {
    extern __shared__ __align__(16) float smem[];
    float* q_s = smem;                                     // [kMlaHeads][width]
    float* p_s = smem + mla_scores_offset(width);          // [kMlaHeads][pst]
    const int split = blockIdx.x;
    const int h0 = blockIdx.y * kMlaHeads;
    const int64_t tl = blockIdx.z, t = t0 + tl;
    const int nh = min(kMlaHeads, n_head - h0);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // The positions are a step's input, copied before its first kernel.
    const int64_t n_vis = min(static_cast<int64_t>(positions[t]) + 1, n_ctx);
    if (chunk == 0) chunk = static_cast<int>((n_vis + n_split - 1) / n_split);
    const int64_t s_lo = static_cast<int64_t>(split) * chunk;
    const int64_t s_hi = min(n_vis, s_lo + chunk);
    const int n_pos = s_hi > s_lo ? static_cast<int>(s_hi - s_lo) : 0;
    const int pst = round4(chunk);  // a head's row of p_s
    // The split's cache rows are asked of L2 while the kernel before still runs (a decode
    // step's weights have pushed them out since the last step), by one head group for all:
    // a prefetch only warms L2, which every SM sees, and the loads come after the wait.
    if (ahead && blockIdx.y == 0) {
        prefetch_l2_run(cache + s_lo * width, static_cast<int64_t>(n_pos) * width * 4, threadIdx.x, kMlaThreads);
    }
    prefetch_l2(weights_ahead, (static_cast<int64_t>(blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) *
                                   kMlaThreads + threadIdx.x,
                static_cast<int64_t>(gridDim.x) * gridDim.y * gridDim.z * kMlaThreads);
    dep_wait();
    dep_trigger();

    // The block's query rows: q_abs (kv_lora, the heads' rows consecutive) then q_pe
    // (read in place from the projected q, pe_ld apart), all loads independent (unrolled,
    // 16-byte where aligned) — a chain of dependent loads here would cost more than the
    // rest of a decode split.
    {
        const int rope = static_cast<int>(width) - kv_lora;
        const int64_t row0 = t * n_head + h0;
        const float* qa = q_abs + row0 * kv_lora;
        const float* qp = q_pe + row0 * pe_ld;
        if ((kv_lora & 3) == 0 && (rope & 3) == 0 && (pe_ld & 3) == 0 && (reinterpret_cast<uintptr_t>(qa) & 15) == 0 &&
            (reinterpret_cast<uintptr_t>(qp) & 15) == 0) {
            const int w4 = static_cast<int>(width) / 4, l4 = kv_lora / 4;
            // Every load of the block's rows (and of their angles) at once, then the
            // rotations and the stores: one trip to memory (width ≤ 32·kR).
            constexpr int kIt = (kMlaHeads * 8 * kR + kMlaThreads - 1) / kMlaThreads;
            float4 v[kIt], cs[kIt];
#pragma unroll
            for (int it = 0; it < kIt; ++it) {
                const int i = threadIdx.x + it * kMlaThreads, h = i / w4, d = i - h * w4;
                v[it] = cs[it] = make_float4(0.f, 0.f, 0.f, 0.f);
                if (i < kMlaHeads * w4 && h < nh) {
                    v[it] = d < l4 ? reinterpret_cast<const float4*>(qa + h * kv_lora)[d]
                                   : reinterpret_cast<const float4*>(qp + h * pe_ld)[d - l4];
                    if (pe_cs && d >= l4) cs[it] = reinterpret_cast<const float4*>(pe_cs)[d - l4];
                }
            }
#pragma unroll
            for (int it = 0; it < kIt; ++it) {
                const int i = threadIdx.x + it * kMlaThreads, h = i / w4, d = i - h * w4;
                if (i >= kMlaHeads * w4) break;
                if (pe_cs && h < nh && d >= l4) {  // pairs 2(d − l4) and 2(d − l4) + 1, rotated
                    float y[4];
                    rope_pair(v[it].x, v[it].y, cs[it].x, cs[it].y, y);
                    rope_pair(v[it].z, v[it].w, cs[it].z, cs[it].w, y + 2);
                    v[it] = make_float4(y[0], y[1], y[2], y[3]);
                }
                reinterpret_cast<float4*>(q_s)[i] = v[it];
            }
        } else {
            const int w = static_cast<int>(width);
#pragma unroll 4
            for (int i = threadIdx.x; i < kMlaHeads * w; i += blockDim.x) {
                const int h = i / w, d = i - h * w;
                float v = h >= nh ? 0.0f : d < kv_lora ? qa[h * kv_lora + d] : qp[h * pe_ld + (d - kv_lora)];
                if (pe_cs && h < nh && d >= kv_lora) {  // the pair's other value, and both rotated
                    const int j = d - kv_lora, i0 = j & ~1;
                    float y[2];
                    rope_pair(qp[h * pe_ld + i0], qp[h * pe_ld + i0 + 1], pe_cs[i0], pe_cs[i0 + 1], y);
                    v = y[j & 1];
                }
                q_s[i] = v;
            }
        }
    }
    __syncthreads();

    // Scores: a warp takes kRA cache rows at a time, all heads of the block against them,
    // and issues every load of those rows before the first multiply (one trip to memory per
    // step, not one per 32 values). kRA is 4 where the split has more positions than a pass
    // of 2 rows a warp covers, else 2 (with few positions, the busy warps' own work is the
    // time); every score is the same sum either way, in the same order (sum_halves' steps
    // are warp_sum's butterfly), so the bits do not depend on it.
    auto scores = [&](auto rows_at_once) {
        constexpr int kMlaRowsAtOnce = decltype(rows_at_once)::value;
        for (int j0 = warp * kMlaRowsAtOnce; j0 < n_pos; j0 += kMlaRowsAtOnce * (kMlaThreads / 32)) {
            float c[kMlaRowsAtOnce][kR];
#pragma unroll
            for (int r = 0; r < kMlaRowsAtOnce; ++r) {
                const float* row = cache + (s_lo + min(j0 + r, n_pos - 1)) * width;
#pragma unroll
                for (int k = 0; k < kR; ++k) c[r][k] = lane + 32 * k < width ? row[lane + 32 * k] : 0.0f;
            }
            float acc[kMlaRowsAtOnce][kMlaHeads] = {};
#pragma unroll
            for (int k = 0; k < kR; ++k) {
                const int d = lane + 32 * k;
                if (d >= width) break;
#pragma unroll
                for (int h = 0; h < kMlaHeads; ++h) {
                    const float q = q_s[h * width + d];
#pragma unroll
                    for (int r = 0; r < kMlaRowsAtOnce; ++r) acc[r][h] += q * c[r][k];
                }
            }
            constexpr int kN = kMlaRowsAtOnce * kMlaHeads;
            if constexpr (kN == 16 || kN == 32) {
                // All kN sums at once: each step hands half of a lane's values to its partner and
                // keeps the other half, so kN − 1 shuffles instead of 5·kN; lane L ends with sum L
                // (kN = 32) or L >> 1 (kN = 16, lanes L and L ^ 1 alike).
                float(&v)[kN] = reinterpret_cast<float(&)[kN]>(acc);
                sum_halves<kN, 16>(v, lane);
                if constexpr (kN == 16) v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1);
                const int idx = kN == 32 ? lane : lane >> 1, r = idx / kMlaHeads, h = idx % kMlaHeads;
                if ((kN == 32 || (lane & 1) == 0) && j0 + r < n_pos) p_s[h * pst + j0 + r] = v[0] * scale;
            } else {
#pragma unroll
                for (int r = 0; r < kMlaRowsAtOnce; ++r)
#pragma unroll
                    for (int h = 0; h < kMlaHeads; ++h) {
                        const float v = warp_sum(acc[r][h]);
                        if (lane == 0 && j0 + r < n_pos) p_s[h * pst + j0 + r] = v * scale;
                    }
            }
        }
    };
    if constexpr (kMaxRA >= 4) {
        if (n_pos > kMlaTwoRowPass) {
            scores(std::integral_constant<int, 4>{});
        } else {
            scores(std::integral_constant<int, 2>{});
        }
    } else {
        scores(std::integral_constant<int, 2>{});
    }
    __syncthreads();

    // Split-local softmax statistics, a warp per head.
    float* st = stats + ((tl * n_split + split) * n_head + h0) * 2;
    for (int h = warp; h < nh; h += kMlaThreads / 32) {
        float mx = -INFINITY;
        for (int j = lane; j < n_pos; j += 32) mx = fmaxf(mx, p_s[h * pst + j]);
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int j = lane; j < n_pos; j += 32) {
            const float e = expf(p_s[h * pst + j] - mx);
            p_s[h * pst + j] = e;
            sum += e;
        }
        if (lane < round4(n_pos) - n_pos) p_s[h * pst + n_pos + lane] = 0.0f;  // the last float4's tail
        sum = warp_sum(sum);
        if (lane == 0) {
            st[2 * h] = mx;
            st[2 * h + 1] = sum;
        }
    }
    __syncthreads();

    // Partial context: thread per latent dimension, all heads of the block.
    float* out = part + ((tl * n_split + split) * n_head + h0) * static_cast<int64_t>(kv_lora);
    // Four positions a step: each head's weights for them in one 16-byte shared load. kD
    // dimensions a thread at once (d, d + blockDim.x, ...), so their loads are in flight
    // together (each dimension's sum in the same order as alone).
    for (int d0 = threadIdx.x; d0 < kv_lora; d0 += kD * blockDim.x) {
        float acc[kD][kMlaHeads] = {};
#pragma unroll 2
        for (int j = 0; j < n_pos; j += 4) {
            float c[kD][4];
#pragma unroll
            for (int e = 0; e < kD; ++e)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int d = d0 + e * blockDim.x;
                    c[e][i] = j + i < n_pos && d < kv_lora ? cache[(s_lo + j + i) * width + d] : 0.0f;
                }
#pragma unroll
            for (int h = 0; h < kMlaHeads; ++h) {
                const float4 w = *reinterpret_cast<const float4*>(p_s + h * pst + j);
#pragma unroll
                for (int e = 0; e < kD; ++e) {
                    acc[e][h] += w.x * c[e][0];
                    acc[e][h] += w.y * c[e][1];
                    acc[e][h] += w.z * c[e][2];
                    acc[e][h] += w.w * c[e][3];
                }
            }
        }
#pragma unroll
        for (int e = 0; e < kD; ++e) {
            const int d = d0 + e * blockDim.x;
            if (d < kv_lora)
                for (int h = 0; h < nh; ++h) out[h * static_cast<int64_t>(kv_lora) + d] = acc[e][h];
        }
    }
}

// DeepSeek's rows (≤ 576 values: 18 a lane) with two latent dimensions a thread in the
// context pass; wider rows (up to kMlaMaxWidth) one dimension and two rows at once, within
// the registers of two blocks an SM. Four rows at once only where the plan's splits can
// hold more than 16 positions (V3's 16 splits of a 640-position context: 40): at 128
// registers two blocks take an SM's whole register file, so the merge and v_b, launched
// early, find no room beside them, which cost V2-Lite (132 splits of 5) ~3 % of tg128.
// Measured on the H200 (docs/performance-cuda.md, slice 17): with the query rows in one trip,
// four rows at once and the score sums at once, k_b's end → the merge's end 24.9 → 20.8 µs
// a V3 layer.
constexpr auto kSplitFour = mla_split_kernel<kMlaRowRegs, 2, 4>;
constexpr auto kSplitTwo = mla_split_kernel<kMlaRowRegs, 2, 2>;
constexpr auto kSplitWide = mla_split_kernel<kMlaMaxWidth / 32, 1, 2>;

// Merges the splits: ctx = Σ_i e^{m_i − M} O_i / Σ_i e^{m_i − M} l_i, the split weights
// e^{m_i − M} in shared memory. Two forms:
// - few splits (n_split ≤ kMergeHoist, kv_lora ≤ 2·kMergeThreads: V3's decode plan): a
//   block per (head, query), a thread's partials for both its latent dimensions loaded at
//   once with the statistics, before the split weights are known (one trip to memory
//   instead of three);
// - otherwise (V2-Lite's 132 splits of 16 heads, wide rows): a block per (head, query,
//   kMergeDims latent dimensions), whose kMergeGroups thread groups sum every
//   kMergeGroups-th split of a dimension, added in group order. 16 heads then make 128
//   blocks, and a thread has 33 of the 132 splits. On the H200 the merge now ends ~3.8 µs
//   after the split; one block a head, each thread summing two dimensions over all 132
//   splits, took ~15 µs (the same loads in chunks of 16, 27 µs), and V2-Lite's tg128 rose
//   505 → 576 tok/s (docs/performance-cuda.md, slice 18). V3's merge in this form (1024 blocks)
//   ended 5.6 µs after the split against the few-split form's 5.0.
// q (a single query, kv_lora a multiple of 32): ctx also quantised there as the rows of
// the per-head v_b GEMV (gemv_q8.h's layout with H rows), a 32-block per warp and step.
constexpr int kMergeThreads = 256;
constexpr int kMergeHoist = 16;
constexpr int kMergeDims = 64, kMergeGroups = kMergeThreads / kMergeDims;

// The merge's inputs: the many-split kernel takes them as one argument, the few-split
// kernel one by one (its code as before the many-split form was added, PTX and all).
struct MergeArgs {
    const float* part = nullptr;
    const float* stats = nullptr;
    int kv_lora = 0, n_head = 0, n_split = 0;
    int64_t t0 = 0;
    float* ctx = nullptr;
    int8_t* q = nullptr;
    q8::XDs* qd = nullptr;
};

// The split weights of (query tl, head h) into w_s[n_split]; returns 1 / Σ_i w_i l_i.
// Every thread of the block calls it.
__device__ float merge_weights(const MergeArgs& a, int64_t tl, int h, float* w_s, float* red) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    auto stat = [&](int i) { return a.stats + ((tl * a.n_split + i) * a.n_head + h) * 2; };
    float M = -INFINITY;
    for (int i = threadIdx.x; i < a.n_split; i += blockDim.x) M = fmaxf(M, stat(i)[0]);
    M = warp_max(M);
    if (lane == 0) red[warp] = M;
    __syncthreads();
    M = red[0];
    for (int k = 1; k < kMergeThreads / 32; ++k) M = fmaxf(M, red[k]);
    __syncthreads();

    float denom = 0.0f;
    for (int i = threadIdx.x; i < a.n_split; i += blockDim.x) {
        const float* st = stat(i);
        const float w = st[1] > 0.0f ? expf(st[0] - M) : 0.0f;  // empty splits weigh nothing
        w_s[i] = w;
        denom += w * st[1];
    }
    denom = warp_sum(denom);
    if (lane == 0) red[warp] = denom;
    __syncthreads();
    denom = 0.0f;
    for (int k = 0; k < kMergeThreads / 32; ++k) denom += red[k];
    return 1.0f / denom;
}

// ctx at dimension d (< kv_lora) of (query t, head h) from v, its splits' weighted sum, and
// its quantised copy. A whole warp calls it (the quantisation's shuffles), lanes past
// kv_lora with store off.
__device__ void merge_emit(const MergeArgs& a, int64_t t, int h, int d, float v, float inv) {
    float o = 0.0f;
    if (d < a.kv_lora) {
        o = v * inv;
        a.ctx[(t * a.n_head + h) * static_cast<int64_t>(a.kv_lora) + d] = o;
    }
    if (a.q)
        q8::quantize_warp(o, d < a.kv_lora, a.q + static_cast<int64_t>(h) * a.kv_lora + d,
                          a.qd + static_cast<int64_t>(h) * (a.kv_lora / 32) + d / 32);
}

__global__ void __launch_bounds__(kMergeThreads) mla_merge_few_kernel(const float* part, const float* stats, int kv_lora,
                                                                     int n_head, int n_split, int64_t t0, float* ctx,
                                                                     int8_t* q, q8::XDs* qd, L2Ahead weights_ahead) {
    const MergeArgs a{part, stats, kv_lora, n_head, n_split, t0, ctx, q, qd};
    extern __shared__ float w_s[];  // [n_split]
    __shared__ float red[kMergeThreads / 32];
    prefetch_l2(weights_ahead, static_cast<int64_t>(blockIdx.y * gridDim.x + blockIdx.x) * kMergeThreads + threadIdx.x,
                static_cast<int64_t>(gridDim.x) * gridDim.y * kMergeThreads);
    dep_wait();
    dep_trigger();
    const int h = blockIdx.x, lane = threadIdx.x & 31;
    const int64_t tl = blockIdx.y;
    const float* p0 = a.part + (tl * a.n_split * a.n_head + h) * static_cast<int64_t>(a.kv_lora);
    const int64_t step = static_cast<int64_t>(a.n_head) * a.kv_lora;  // from one split to the next
    float held[2][kMergeHoist];
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int i = 0; i < kMergeHoist; ++i) {
            const int d = threadIdx.x + j * kMergeThreads;
            held[j][i] = i < a.n_split && d < a.kv_lora ? p0[i * step + d] : 0.0f;
        }
    const float inv = merge_weights(a, tl, h, w_s, red);
    // Each dimension's sum over the splits in split order. The bound is the warp's first
    // dimension, so a warp's lanes run the quantisation's shuffles together.
    float v[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < kMergeHoist; ++i)
        if (i < a.n_split) {
#pragma unroll
            for (int j = 0; j < 2; ++j) v[j] += w_s[i] * held[j][i];
        }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const int d = threadIdx.x + j * kMergeThreads;
        if (d - lane < a.kv_lora) merge_emit(a, a.t0 + tl, h, d, v[j], inv);
    }
}

__global__ void __launch_bounds__(kMergeThreads) mla_merge_many_kernel(MergeArgs a, L2Ahead weights_ahead) {
    extern __shared__ float w_s[];  // [n_split]
    __shared__ float red[kMergeThreads / 32];
    __shared__ float sums[kMergeGroups][kMergeDims];
    prefetch_l2(weights_ahead,
                (static_cast<int64_t>(blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * kMergeThreads +
                    threadIdx.x,
                static_cast<int64_t>(gridDim.x) * gridDim.y * gridDim.z * kMergeThreads);
    dep_wait();
    dep_trigger();
    const int h = blockIdx.x, lane = threadIdx.x & 31;
    const int64_t tl = blockIdx.y;
    const int dl = threadIdx.x % kMergeDims, g = threadIdx.x / kMergeDims;
    const int d = static_cast<int>(blockIdx.z) * kMergeDims + dl;
    const float inv = merge_weights(a, tl, h, w_s, red);
    const int64_t step = static_cast<int64_t>(a.n_head) * a.kv_lora;  // from one split to the next
    float v = 0.0f;
    if (d < a.kv_lora) {
        const float* p = a.part + (tl * a.n_split * a.n_head + h) * static_cast<int64_t>(a.kv_lora) + d;
#pragma unroll 16
        for (int i = g; i < a.n_split; i += kMergeGroups) v += w_s[i] * p[i * step];
    }
    sums[g][dl] = v;
    __syncthreads();
    if (g != 0) return;  // group 0 is whole warps (kMergeDims a multiple of 32)
    float s = sums[0][dl];
#pragma unroll
    for (int k = 1; k < kMergeGroups; ++k) s += sums[k][dl];
    if (d - lane < a.kv_lora) merge_emit(a, a.t0 + tl, h, d, s, inv);
}

}  // namespace

void mla_store(float* cache, int64_t width, int64_t n_ctx, const float* latent, const float* k_pe, int kv_lora,
               int qk_rope, const int32_t* positions, int64_t T, DevError* err, cudaStream_t s) {
    if (T > 0)
        launch_pdl(mla_store_kernel, dim3(static_cast<unsigned>(T)), dim3(128), 0, s, cache, width, n_ctx, latent, k_pe,
                   kv_lora, qk_rope, positions, err);
}

MlaPlan mla_plan(int n_head, int64_t T, int64_t n_kv, int kv_lora, int n_sm) {
    MlaPlan p;
    const int64_t head_groups = (n_head + kMlaHeads - 1) / kMlaHeads;
    // Blocks for two a SM (all resident at once: a third would make a second wave); never
    // a split of fewer than 32 positions nor more than kMlaMaxChunk (its scores live in
    // shared memory).
    int64_t want = std::max<int64_t>(1, 2 * static_cast<int64_t>(n_sm) / std::max<int64_t>(1, head_groups * T));
    want = std::max<int64_t>(1, std::min<int64_t>(want, (n_kv + 31) / 32));
    want = std::max<int64_t>(want, (n_kv + kMlaMaxChunk - 1) / kMlaMaxChunk);
    int64_t chunk = (n_kv + want - 1) / want;
    chunk = std::min<int64_t>(kMlaMaxChunk, (chunk + 31) / 32 * 32);
    p.chunk = p.chunk_cap = static_cast<int>(chunk);
    p.n_split = static_cast<int>((n_kv + chunk - 1) / chunk);
    // Scratch per query: n_split · n_head · (kv_lora + 2) floats; keep a pass ≤ 64 M floats.
    const int64_t per_t = static_cast<int64_t>(p.n_split) * n_head * (kv_lora + 2);
    p.t_per_pass = std::max<int64_t>(1, std::min<int64_t>(T, (int64_t{64} << 20) / std::max<int64_t>(1, per_t)));
    return p;
}

MlaPlan mla_plan_decode(int n_head, int64_t T, int64_t n_ctx, int kv_lora, int n_sm) {
    MlaPlan p;
    const int64_t head_groups = (n_head + kMlaHeads - 1) / kMlaHeads;
    // Splits for two blocks a SM (all resident at once), more where a split would exceed
    // kMlaMaxChunk positions at the full context; each query divides what it sees over
    // all of them.
    int64_t want = std::max<int64_t>(1, 2 * static_cast<int64_t>(n_sm) / std::max<int64_t>(1, head_groups * T));
    // DS3_CUDA_MLA_SPLITS=N: N splits instead (measurements; read once).
    static const int forced = std::max(0, env_int("DS3_CUDA_MLA_SPLITS"));
    if (forced) want = forced;
    want = std::max<int64_t>(want, (n_ctx + kMlaMaxChunk - 1) / kMlaMaxChunk);
    want = std::max<int64_t>(1, std::min<int64_t>(want, n_ctx));
    p.n_split = static_cast<int>(want);
    p.chunk = 0;
    p.chunk_cap = static_cast<int>((n_ctx + want - 1) / want);
    const int64_t per_t = static_cast<int64_t>(p.n_split) * n_head * (kv_lora + 2);
    p.t_per_pass = std::max<int64_t>(1, std::min<int64_t>(T, (int64_t{64} << 20) / std::max<int64_t>(1, per_t)));
    return p;
}

int64_t mla_scratch_floats(const MlaPlan& p, int n_head, int kv_lora) {
    return p.t_per_pass * p.n_split * static_cast<int64_t>(n_head) * (kv_lora + 2);
}

void mla_attend(const MlaPlan& p, const float* q_abs, const float* q_pe, int64_t pe_ld, const float* cache,
                int64_t width, int64_t n_ctx, int kv_lora, int n_head, int64_t T, const int32_t* positions,
                float scale, float* ctx, float* scratch, cudaStream_t s, void* ctx_q8, const L2Ahead& split_ahead,
                const L2Ahead& merge_ahead, const float* pe_cs) {
    int8_t* cq = nullptr;
    q8::XDs* cd = nullptr;
    if (ctx_q8 && T == 1 && kv_lora % 32 == 0) {  // gemv_q8.h's layout of n_head rows
        cq = static_cast<int8_t*>(ctx_q8);
        cd = reinterpret_cast<q8::XDs*>(static_cast<uint8_t*>(ctx_q8) + q8::xds_offset(n_head, kv_lora));
    }
    const size_t smem =
        static_cast<size_t>(mla_scores_offset(width) + int64_t{kMlaHeads} * round4(p.chunk_cap)) * sizeof(float);
    static bool attr_set = false;
    if (!attr_set) {
        // Up to kMlaHeads · (kMlaMaxWidth + kMlaMaxChunk) floats = 48 KB (both multiples of 4).
        const int most = kMlaHeads * (kMlaMaxWidth + kMlaMaxChunk) * static_cast<int>(sizeof(float));
        cudaFuncSetAttribute(kSplitFour, cudaFuncAttributeMaxDynamicSharedMemorySize, most);
        cudaFuncSetAttribute(kSplitTwo, cudaFuncAttributeMaxDynamicSharedMemorySize, most);
        cudaFuncSetAttribute(kSplitWide, cudaFuncAttributeMaxDynamicSharedMemorySize, most);
        attr_set = true;
    }
    // Wider rows than DeepSeek's in kMlaMaxWidth / 32 registers a lane.
    static_assert(kMlaMaxWidth % 32 == 0);
    auto* split_kernel = width > 32 * kMlaRowRegs     ? kSplitWide
                         : p.chunk_cap > kMlaTwoRowPass ? kSplitFour
                                                        : kSplitTwo;
    const int head_groups = (n_head + kMlaHeads - 1) / kMlaHeads;
    // Decode (the plan splits each query's context evenly): the split kernel asks L2 for its
    // cache rows ahead, unless DS3_CUDA_MLA_AHEAD=0 (read once). A prompt's queries share
    // their rows, which the first of them bring into L2.
    static const bool ahead_on = env_on("DS3_CUDA_MLA_AHEAD");
    const bool ahead = ahead_on && p.chunk == 0;
    for (int64_t t0 = 0; t0 < T; t0 += p.t_per_pass) {
        const int64_t nt = std::min<int64_t>(p.t_per_pass, T - t0);
        float* part = scratch;
        float* stats = scratch + nt * p.n_split * static_cast<int64_t>(n_head) * kv_lora;
        dim3 grid(static_cast<unsigned>(p.n_split), static_cast<unsigned>(head_groups), static_cast<unsigned>(nt));
        launch_pdl(split_kernel, grid, dim3(kMlaThreads), smem, s, q_abs, q_pe, pe_ld, cache, width, kv_lora, n_head, t0,
                   positions, n_ctx, scale, p.chunk, p.n_split, part, stats, ahead, t0 == 0 ? split_ahead : L2Ahead{},
                   T == 1 ? pe_cs : nullptr);
        const bool few = p.n_split <= kMergeHoist && kv_lora <= 2 * kMergeThreads;
        const dim3 mgrid(static_cast<unsigned>(n_head), static_cast<unsigned>(nt),
                         few ? 1u : static_cast<unsigned>((kv_lora + kMergeDims - 1) / kMergeDims));
        const size_t w_bytes = static_cast<size_t>(p.n_split) * sizeof(float);
        const L2Ahead ahead_w = t0 == 0 ? merge_ahead : L2Ahead{};
        if (few)
            launch_pdl(mla_merge_few_kernel, mgrid, dim3(kMergeThreads), w_bytes, s, static_cast<const float*>(part),
                       static_cast<const float*>(stats), kv_lora, n_head, p.n_split, t0, ctx, cq, cd, ahead_w);
        else
            launch_pdl(mla_merge_many_kernel, mgrid, dim3(kMergeThreads), w_bytes, s,
                       MergeArgs{part, stats, kv_lora, n_head, p.n_split, t0, ctx, cq, cd}, ahead_w);
    }
}

}  // namespace ds3::cuda
