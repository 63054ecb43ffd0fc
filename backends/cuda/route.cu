// Fused MoE routing: scores, bias, group limits, top-k, normalisation (kernels.h).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backends/cuda/device_util.cuh"
#include "backends/cuda/kernels.h"

namespace ds3::cuda {

namespace {

// ---- routing --------------------------------------------------------------------------

// One warp per token: lane l holds experts l, l + 32, ... (up to kMaxExperts / 32 each) in
// registers, and every selection (groups, then the k experts) is a warp-wide argmax by
// shuffles, with no block barriers: a decode step's routing is a few hundred cycles.
constexpr int kPerLane = kMaxExperts / 32;

// The lane-wide best (value desc, index asc) of (v, i) pairs: ties go to the lower index,
// as on the CPU (torch.topk keeps the earlier of equal values).
__device__ inline void warp_argmax(float& v, int& idx) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (oi >= 0 && (idx < 0 || ov > v || (ov == v && oi < idx))) v = ov, idx = oi;
    }
}

__global__ void __launch_bounds__(32) route_kernel(RouteArgs a, const float* logits, float* out) {
    __shared__ float choice_s[kMaxExperts];
    __shared__ float gscore[kMaxExperts];
    const int64_t t = blockIdx.x;
    const int lane = threadIdx.x;
    const int E = a.n_expert, k = a.n_used, per_group = a.n_expert / a.n_group;
    const float* lg = logits + t * E;

    float score[kPerLane], choice[kPerLane];
    uint32_t avail = 0;  // bit i: expert lane + 32 i exists, is in a kept group and not taken
    if (a.sigmoid) {
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
            const int e = lane + 32 * i;
            score[i] = e < E ? 1.0f / (1.0f + expf(-lg[e])) : 0.0f;
        }
    } else {
        float mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i)
            if (lane + 32 * i < E) mx = fmaxf(mx, lg[lane + 32 * i]);
        mx = warp_max(mx);
        double sum = 0.0;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
            const int e = lane + 32 * i;
            score[i] = e < E ? expf(lg[e] - mx) : 0.0f;
            sum += score[i];
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) score[i] = static_cast<float>(score[i] / sum);
    }
    // The correction bias steers which experts are chosen, never their weights.
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
        const int e = lane + 32 * i;
        choice[i] = score[i] + (a.bias && e < E ? load_w(a.bias_t, a.bias, e) : 0.0f);
        if (e < E) {
            choice_s[e] = choice[i];
            avail |= 1u << i;
        }
    }
    __syncwarp();

    if (a.method != 0 && a.topk_group < a.n_group) {
        // Group scores: V3 the sum of the best two, V2 the best one; a lane per group.
        for (int g = lane; g < a.n_group; g += 32) {
            const float* c = choice_s + g * per_group;
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int i = 0; i < per_group; ++i) {
                if (c[i] > b1) b2 = b1, b1 = c[i];
                else if (c[i] > b2) b2 = c[i];
            }
            gscore[g] = a.method == 2 ? b1 + b2 : b1;
        }
        __syncwarp();
        // The topk_group best groups, ties to the lower index.
        uint32_t gtaken = 0;  // bit i: group lane + 32 i kept
        for (int n = 0; n < a.topk_group; ++n) {
            float v = -INFINITY;
            int idx = -1;
            for (int i = 0; lane + 32 * i < a.n_group; ++i) {
                const int g = lane + 32 * i;
                if (!((gtaken >> i) & 1u) && (idx < 0 || gscore[g] > v)) v = gscore[g], idx = g;
            }
            warp_argmax(v, idx);
            if (idx >= 0 && (idx & 31) == lane) gtaken |= 1u << (idx >> 5);
        }
        __syncwarp();
        // Publish the kept groups through shared memory (gscore's slots are free now).
        for (int i = 0; lane + 32 * i < a.n_group; ++i) gscore[lane + 32 * i] = ((gtaken >> i) & 1u) ? 1.0f : 0.0f;
        __syncwarp();
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
            const int e = lane + 32 * i;
            if (e < E && gscore[e / per_group] == 0.0f) avail &= ~(1u << i);
        }
    }

    float w_out = 0.0f;  // lane j < k ends with the j-th weight and id
    int id_out = -1;
    for (int j = 0; j < k; ++j) {
        float v = -INFINITY;
        int idx = -1;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i)
            if (((avail >> i) & 1u) && (idx < 0 || choice[i] > v)) v = choice[i], idx = lane + 32 * i;
        warp_argmax(v, idx);
        float sc = 0.0f;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i)
            if (idx == lane + 32 * i) {
                avail &= ~(1u << i);
                sc = score[i];
            }
        // The owner's score, to everyone.
        sc = __shfl_sync(0xffffffffu, sc, idx >= 0 ? (idx & 31) : 0);
        if (lane == j) {
            w_out = idx >= 0 ? sc : 0.0f;
            id_out = idx;
        }
    }
    // Normalisation in double over the weights in slot order, as before.
    double wsum = 0.0;
    for (int j = 0; j < k; ++j) wsum += __shfl_sync(0xffffffffu, w_out, j);
    // V3 (sigmoid) normalises when asked and then always scales; V2 (softmax) either
    // normalises or scales, as the reference implementations do.
    const bool norm = a.norm_topk && k > 1;
    const bool scale = a.sigmoid || !norm;
    if (lane < k) {
        float w = w_out;
        if (norm) w = static_cast<float>(w / (wsum + 1e-20));
        if (scale) w *= a.scale;
        float* o = out + t * 2 * k;
        o[lane] = w;
        o[k + lane] = static_cast<float>(id_out);
    }
}

}  // namespace

void moe_route(const RouteArgs& a, const float* logits, float* out, cudaStream_t s) {
    if (a.T > 0) route_kernel<<<static_cast<unsigned>(a.T), 32, 0, s>>>(a, logits, out);
}

}  // namespace ds3::cuda
