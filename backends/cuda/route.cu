// Fused MoE routing: scores, bias, group limits, top-k, normalisation (kernels.h).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backends/cuda/device_util.cuh"
#include "backends/cuda/kernels.h"

namespace ds3::cuda {

namespace {

// ---- routing --------------------------------------------------------------------------

constexpr int kRouteThreads = 256;

// Block-wide argmax over (value desc, index asc); -1 when nothing is eligible.
__device__ void block_argmax(float v, int idx, float* sv, int* si, float& best_v, int& best_i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (oi >= 0 && (idx < 0 || ov > v || (ov == v && oi < idx))) v = ov, idx = oi;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sv[warp] = v, si[warp] = idx;
    __syncthreads();
    if (threadIdx.x == 0) {
        best_v = sv[0], best_i = si[0];
        for (int w = 1; w < kRouteThreads / 32; ++w)
            if (si[w] >= 0 && (best_i < 0 || sv[w] > best_v || (sv[w] == best_v && si[w] < best_i)))
                best_v = sv[w], best_i = si[w];
        si[0] = best_i;
    }
    __syncthreads();
    best_i = si[0];
    __syncthreads();
}

__global__ void __launch_bounds__(kRouteThreads) route_kernel(RouteArgs a, const float* logits, float* out) {
    __shared__ float score[kMaxExperts], choice[kMaxExperts];
    __shared__ uint8_t keep[kMaxExperts], taken[kMaxExperts];
    __shared__ float gscore[kMaxExperts];
    __shared__ uint8_t gkeep[kMaxExperts];
    __shared__ float sv[kRouteThreads / 32];
    __shared__ int si[kRouteThreads / 32];
    __shared__ double dsum[kRouteThreads / 32];
    __shared__ int chosen[32];
    const int64_t t = blockIdx.x;
    const int E = a.n_expert, k = a.n_used, per_group = a.n_expert / a.n_group;
    const float* lg = logits + t * E;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    if (a.sigmoid) {
        for (int e = threadIdx.x; e < E; e += blockDim.x) score[e] = 1.0f / (1.0f + expf(-lg[e]));
    } else {
        float mx = -INFINITY;
        for (int e = threadIdx.x; e < E; e += blockDim.x) mx = fmaxf(mx, lg[e]);
        mx = warp_max(mx);
        if (lane == 0) sv[warp] = mx;
        __syncthreads();
        mx = sv[0];
        for (int w = 1; w < kRouteThreads / 32; ++w) mx = fmaxf(mx, sv[w]);
        double s = 0.0;
        for (int e = threadIdx.x; e < E; e += blockDim.x) s += (score[e] = expf(lg[e] - mx));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) dsum[warp] = s;
        __syncthreads();
        double sum = 0.0;
        for (int w = 0; w < kRouteThreads / 32; ++w) sum += dsum[w];
        for (int e = threadIdx.x; e < E; e += blockDim.x) score[e] = static_cast<float>(score[e] / sum);
    }
    __syncthreads();
    // The correction bias steers which experts are chosen, never their weights.
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        choice[e] = score[e] + (a.bias ? load_w(a.bias_t, a.bias, e) : 0.0f);
        taken[e] = 0;
    }
    for (int g = threadIdx.x; g < a.n_group; g += blockDim.x) gkeep[g] = 1;
    __syncthreads();
    if (a.method != 0 && a.topk_group < a.n_group) {
        for (int g = threadIdx.x; g < a.n_group; g += blockDim.x) {
            const float* c = choice + g * per_group;
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int i = 0; i < per_group; ++i) {
                if (c[i] > b1) b2 = b1, b1 = c[i];
                else if (c[i] > b2) b2 = c[i];
            }
            gscore[g] = a.method == 2 ? b1 + b2 : b1;  // V3: best two; V2: the best one
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            // The topk_group best groups, ties to the lower index (a stable sort).
            for (int g = 0; g < a.n_group; ++g) gkeep[g] = 0;
            for (int n = 0; n < a.topk_group; ++n) {
                int best = -1;
                for (int g = 0; g < a.n_group; ++g)
                    if (!gkeep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
                gkeep[best] = 1;
            }
        }
        __syncthreads();
    }
    for (int e = threadIdx.x; e < E; e += blockDim.x) keep[e] = gkeep[e / per_group];
    __syncthreads();

    for (int j = 0; j < k; ++j) {
        float v = -INFINITY;
        int idx = -1;
        for (int e = threadIdx.x; e < E; e += blockDim.x)
            if (keep[e] && !taken[e] && (idx < 0 || choice[e] > v)) v = choice[e], idx = e;
        float bv;
        int bi;
        block_argmax(v, idx, sv, si, bv, bi);
        if (threadIdx.x == 0) {
            chosen[j] = bi;
            if (bi >= 0) taken[bi] = 1;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float* o = out + t * 2 * k;
        double wsum = 0.0;
        for (int j = 0; j < k; ++j) {
            const int e = chosen[j];
            o[j] = e >= 0 ? score[e] : 0.0f;
            o[k + j] = static_cast<float>(e);
            wsum += o[j];
        }
        // V3 (sigmoid) normalises when asked and then always scales; V2 (softmax) either
        // normalises or scales, as the reference implementations do.
        const bool norm = a.norm_topk && k > 1;
        const bool scale = a.sigmoid || !norm;
        for (int j = 0; j < k; ++j) {
            if (norm) o[j] = static_cast<float>(o[j] / (wsum + 1e-20));
            if (scale) o[j] *= a.scale;
        }
    }
}

}  // namespace

void moe_route(const RouteArgs& a, const float* logits, float* out, cudaStream_t s) {
    if (a.T > 0) route_kernel<<<static_cast<unsigned>(a.T), kRouteThreads, 0, s>>>(a, logits, out);
}

}  // namespace ds3::cuda
