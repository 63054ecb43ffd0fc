// Fused MoE routing: scores, bias, group limits, top-k, normalisation (kernels.h).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backends/cuda/device_util.cuh"
#include "backends/cuda/kernels.h"

namespace ds3::cuda {

namespace {

// ---- routing ----------------------------------------------------------------------------

// One block per token, a thread per expert (and per group): every selection is a rank —
// the number of candidates ahead of this one by (value descending, index ascending), the
// order of a sequential top-k that keeps the earlier of equal values (torch.topk, the
// CPU) — so the group limit and the top-k take one pass over shared memory each, in
// parallel, instead of k dependent arg-max rounds (a single warp doing those took ~13 µs
// per decode step on the H200; docs/performance-cuda.md, slice 5). The group scores take a warp
// a group, and a kept group's experts are ranked against the kept groups' only (slice 20:
// tg128 +0.5–0.8 % on the V3 slice, faster in 7 of 7 alternating pairs).
constexpr int kRouteThreads = 256;
constexpr int kMaxUsed = 64;

__device__ inline bool ahead(float v, int i, float w, int j) { return v > w || (v == w && i < j); }

__global__ void __launch_bounds__(kRouteThreads) route_kernel(RouteArgs a, const float* logits, float* out) {
    __shared__ float score_s[kMaxExperts], choice_s[kMaxExperts], gscore[kMaxExperts], cand[kMaxExperts];
    __shared__ unsigned char kept[kMaxExperts];  // per group
    __shared__ float sel_w[kMaxUsed];
    __shared__ int sel_id[kMaxUsed];
    __shared__ float red_f;
    __shared__ double red_d;
    const int64_t t = blockIdx.x;
    const int tid = threadIdx.x;
    const int E = a.n_expert, k = a.n_used, G = a.n_group, per_group = E / G;
    const float* lg = logits + t * E;
    // The correction bias is a weight: this thread's first value is loaded before the wait
    // for the router product that wrote the logits.
    const float bias0 = a.bias && tid < E ? load_w(a.bias_t, a.bias, tid) : 0.0f;
    dep_wait();  // the logits come from an earlier kernel, which may still read out
    dep_trigger();

    if (tid < k) sel_w[tid] = 0.0f, sel_id[tid] = -1;  // slots no expert reaches
    if (a.sigmoid) {
        for (int e = tid; e < E; e += blockDim.x) score_s[e] = 1.0f / (1.0f + expf(-lg[e]));
    } else {
        // Softmax, its sum in double and in expert order, as on the CPU.
        if (tid < 32) {
            float mx = -INFINITY;
            for (int e = tid; e < E; e += 32) mx = fmaxf(mx, lg[e]);
            mx = warp_max(mx);
            if (tid == 0) red_f = mx;
        }
        __syncthreads();
        for (int e = tid; e < E; e += blockDim.x) score_s[e] = expf(lg[e] - red_f);
        __syncthreads();
        if (tid == 0) {
            double sum = 0.0;
            for (int e = 0; e < E; ++e) sum += score_s[e];
            red_d = sum;
        }
        __syncthreads();
        for (int e = tid; e < E; e += blockDim.x) score_s[e] = static_cast<float>(score_s[e] / red_d);
    }
    __syncthreads();
    // The correction bias steers which experts are chosen, never their weights.
    for (int e = tid; e < E; e += blockDim.x)
        choice_s[e] = score_s[e] + (!a.bias ? 0.0f : e == tid ? bias0 : load_w(a.bias_t, a.bias, e));
    __syncthreads();

    const bool limited = a.method != 0 && a.topk_group < G;
    if (limited) {
        // Group scores: V3 the sum of the best two, V2 the best one. A warp a group: each lane
        // keeps the best two of its share (the CPU's sequential rule), then the warp's best
        // value and the best of the rest — the same two values, so the same sum.
        const int warp = tid >> 5, lane = tid & 31;
        for (int g = warp; g < G; g += kRouteThreads / 32) {
            const float* c = choice_s + g * per_group;
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int i = lane; i < per_group; i += 32) {
                if (c[i] > b1) b2 = b1, b1 = c[i];
                else if (c[i] > b2) b2 = c[i];
            }
            const float m1 = warp_max(b1);
            const int first = __ffs(__ballot_sync(0xffffffffu, b1 == m1)) - 1;  // the lane whose b1 it is
            const float m2 = warp_max(lane == first ? b2 : b1);
            if (lane == 0) gscore[g] = a.method == 2 ? m1 + m2 : m1;
        }
        __syncthreads();
        for (int g = tid; g < G; g += blockDim.x) {
            int rank = 0;
            for (int h = 0; h < G; ++h) rank += ahead(gscore[h], h, gscore[g], g);
            kept[g] = rank < a.topk_group;
        }
        __syncthreads();
    }
    // The experts of the kept groups, ranked; rank r < k fills slot r. The others enter the
    // ranking as −∞, which is never ahead of a candidate (a sigmoid or softmax score plus
    // a finite bias).
    for (int e = tid; e < E; e += blockDim.x) cand[e] = !limited || kept[e / per_group] ? choice_s[e] : -INFINITY;
    __syncthreads();
    for (int e = tid; e < E; e += blockDim.x) {
        const float c = cand[e];
        if (c == -INFINITY) continue;
        int rank = 0;
        if (limited) {  // only the kept groups' experts can be ahead (V3: 128 of 256)
            for (int g = 0; g < G; ++g) {
                if (!kept[g]) continue;
#pragma unroll 8
                for (int f = g * per_group; f < (g + 1) * per_group; ++f) rank += ahead(cand[f], f, c, e);
            }
        } else {
#pragma unroll 8
            for (int f = 0; f < E; ++f) rank += ahead(cand[f], f, c, e);
        }
        if (rank < k) {
            sel_w[rank] = score_s[e];
            sel_id[rank] = e;
        }
    }
    __syncthreads();
    if (tid >= k) return;
    // Normalisation in double over the weights in slot order, as on the CPU. V3 (sigmoid)
    // normalises when asked and then always scales; V2 (softmax) either normalises or
    // scales, as the reference implementations do.
    double wsum = 0.0;
    for (int j = 0; j < k; ++j) wsum += sel_w[j];
    const bool norm = a.norm_topk && k > 1;
    const bool scale = a.sigmoid || !norm;
    float w = sel_w[tid];
    if (norm) w = static_cast<float>(w / (wsum + 1e-20));
    if (scale) w *= a.scale;
    float* o = out + t * 2 * k;
    o[tid] = w;
    o[k + tid] = static_cast<float>(sel_id[tid]);
}

}  // namespace

void moe_route(const RouteArgs& a, const float* logits, float* out, cudaStream_t s) {
    if (a.T > 0) launch_pdl(route_kernel, dim3(static_cast<unsigned>(a.T)), dim3(kRouteThreads), 0, s, a, logits, out);
}

}  // namespace ds3::cuda
