// Row kernels of the decode path (kernels.h): RMS norm, alone or fused with the residual
// adds before it, and RoPE with one angle table per row. The fused form gives the same
// bits as the plain one run after separate adds (same operation order, same reduction
// tree), so a replayed graph equals a node-by-node run.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backends/cuda/device_util.cuh"
#include "backends/cuda/dot_q8.cuh"
#include "backends/cuda/kernels.h"

namespace ds3::cuda {

namespace {

constexpr int kNormThreads = 1024;  // a decode row is one block: as many loads in flight as possible
// Or a cluster of kNormCluster blocks of kClusterThreads (sm_90): an eighth of the row each,
// their sums of squares exchanged through distributed shared memory. One SM issuing the
// whole row's instructions took ~3.4 µs of a 4.5–6.6 µs norm (Nsight Compute); on V3's
// slice 8 blocks of 256 threads made a step 11 µs shorter than 4 (slice 23: 4 of 128
// threads +48, 8 of 128 ±0).
constexpr int kNormCluster = 8, kClusterThreads = 256;

// Sum of v over the block, in double (long rows stay exact enough, as on the CPU).
__device__ double block_sum(double v) {
    __shared__ double part[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        double w = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
        if (threadIdx.x == 0) part[0] = w;
    }
    __syncthreads();
    return part[0];
}

// The sum of every block's v over a cluster of C blocks (each passes its block total), in
// rank order, so every block gets the same bits.
template <int C>
__device__ double cluster_sum(double v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (C > 1) {
        __shared__ double mine;
        namespace cg = cooperative_groups;
        cg::cluster_group cl = cg::this_cluster();
        if (threadIdx.x == 0) mine = v;
        cl.sync();
        double t = 0.0;
        for (int r = 0; r < C; ++r) t += *cl.map_shared_rank(&mine, r);
        cl.sync();  // no block leaves while another still reads its `mine`
        return t;
    }
#endif
    return v;
}

// Row r: v = a + b, or with c: mid = a + b and v = c + mid (the order of the two adds of a
// layer's end); sum = v when sum is given; y = rms_norm(v) · gain. b = null: v = a (a
// plain RMS norm). Four consecutive columns per thread and step (float4 where the row
// allows), so each thread has independent loads in flight instead of one long chain.
// q (cols a multiple of 32): y is also quantised there for the integer GEMVs that read it
// (gemv_q8.h's layout: int8 rows, then the blocks' (d, d·Σq)), the same bytes their own
// quantise kernel would make, so the product after the norm needs no launch of its own.
// kCluster > 1: blocks r·kCluster .. of a cluster share row r, block `rank` its columns
// [rank·cols/kCluster, ...) (cols a multiple of 32·kCluster).
template <int kThreads, int kCluster>
__global__ void __launch_bounds__(kThreads)
    add_rms_norm_kernel(const float* a, const float* b, const float* c, float* mid, float* sum, const void* gain,
                        WType wt, float eps, int64_t row_cols, float* y, int8_t* q, q8::XDs* qd) {
    const int rank = static_cast<int>(blockIdx.x % kCluster);
    const int64_t cols = row_cols / kCluster, c0 = rank * cols;  // this block's columns
    const int64_t off = static_cast<int64_t>(blockIdx.x / kCluster) * row_cols + c0;
    gain = static_cast<const uint8_t*>(gain) + c0 * (wt == WType::f32 ? 4 : 2);
    auto value = [&](int64_t i) {
        float v = a[off + i];
        if (b) v += b[off + i];
        if (c) {
            mid[off + i] = v;
            v = c[off + i] + v;
        }
        if (sum) sum[off + i] = v;
        return v;
    };
    // The gains of this thread's first kPre steps are loaded first: they come from DRAM
    // (a decode step streams gigabytes of weights between two uses of a norm), and their
    // latency then overlaps the first pass and the block sum (and the wait for the kernel
    // before) instead of following them.
    constexpr int kPre = 2048 / kThreads / kCluster > 2 ? 2048 / kThreads / kCluster : 2;
    const int64_t stride = 4 * static_cast<int64_t>(blockDim.x), first = 4 * static_cast<int64_t>(threadIdx.x);
    auto pre = [&](auto&& f) {  // f(step, k, column) over the first kPre steps, unrolled
#pragma unroll
        for (int p = 0; p < kPre; ++p)
#pragma unroll
            for (int k = 0; k < 4; ++k) f(p, k, first + p * stride + k);
    };
    float g[kPre][4], keep[kPre][4];
    pre([&](int p, int k, int64_t i) { g[p][k] = i < cols ? load_w(wt, gain, i) : 0.0f; });
    dep_wait();  // a, b, c come from earlier kernels, and mid, sum, y, q may still be read by them
    dep_trigger();  // the product after the norm may start loading its weights
    // The first kPre steps' values stay in registers for the second pass.
    pre([&](int p, int k, int64_t i) { keep[p][k] = i < cols ? value(i) : 0.0f; });
    double ss = 0.0;
    pre([&](int p, int k, int64_t) { ss += static_cast<double>(keep[p][k]) * keep[p][k]; });
    for (int64_t i0 = first + kPre * stride; i0 < cols; i0 += stride) {
        float v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = i0 + k < cols ? value(i0 + k) : 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) ss += static_cast<double>(v[k]) * v[k];
    }
    const double total = cluster_sum<kCluster>(block_sum(ss));
    const float inv = static_cast<float>(1.0 / sqrt(total / static_cast<double>(row_cols) + eps));
    // Second pass: each thread takes its first steps' values from registers and re-reads
    // the rest (columns it wrote or read itself, so no barrier is needed beyond
    // block_sum's). Steps run while the warp's first column is in the row, so a warp's
    // lanes run the quantisation's shuffles together; a 32-column block is the four columns
    // of 8 adjacent lanes.
    const float* src = sum ? sum : a;
    const int lane = threadIdx.x & 31;
    auto step = [&](int64_t i0, const float (&gk)[4], const float* kept) {
        float o[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            o[k] = 0.0f;
            if (i0 + k < cols) {
                const float v = kept ? kept[k] : (sum || !b) ? src[off + i0 + k] : a[off + i0 + k] + b[off + i0 + k];
                o[k] = v * inv * gk[k];
                y[off + i0 + k] = o[k];
            }
        }
        if (!q) return;
        float amax = fmaxf(fmaxf(fabsf(o[0]), fabsf(o[1])), fmaxf(fabsf(o[2]), fabsf(o[3])));
        int nan = isnan(o[0]) || isnan(o[1]) || isnan(o[2]) || isnan(o[3]);
#pragma unroll
        for (int m = 1; m < 8; m <<= 1) {
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, m));  // fmaxf drops NaN: flagged apart
            nan |= __shfl_xor_sync(0xffffffffu, nan, m);
        }
        int packed = 0, qs = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int8_t qv = q8::quant_one(o[k], amax);
            packed |= (static_cast<int>(qv) & 0xff) << (8 * k);
            qs += qv;
        }
#pragma unroll
        for (int m = 1; m < 8; m <<= 1) qs += __shfl_xor_sync(0xffffffffu, qs, m);
        if (i0 < cols) {
            reinterpret_cast<int*>(q + off)[i0 / 4] = packed;
            if ((lane & 7) == 0) qd[off / 32 + i0 / 32] = q8::block_xds(amax, nan, static_cast<float>(qs));
        }
    };
    const int64_t w_first = first - 4 * lane;  // the warp's first column
#pragma unroll
    for (int p = 0; p < kPre; ++p)
        if (w_first + p * stride < cols) step(first + p * stride, g[p], keep[p]);
    for (int64_t i0 = first + kPre * stride; i0 - 4 * lane < cols; i0 += stride) {
        float gk[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) gk[k] = i0 + k < cols ? load_w(wt, gain, i0 + k) : 0.0f;
        step(i0, gk, nullptr);
    }
}

// RoPE: all heads of a row share their angles (position · inv_freq[i]), computed once per
// block in double as on the CPU (positions reach 10^5 and float loses pos · freq). Grid:
// (row, slice of kRopePairs column pairs), so a wide q row spreads over several blocks.
constexpr int kRopeThreads = 256, kRopePairs = 1024;
__global__ void __launch_bounds__(kRopeThreads) rope_rows_kernel(RopeArgs a, const int32_t* positions, const float* x,
                                                                float* y) {
    __shared__ float cs[kMaxRopeHalf], sn[kMaxRopeHalf];
    dep_wait();  // positions and x come from earlier kernels, which may still read y
    dep_trigger();
    const int64_t r = blockIdx.x;
    const int half = a.rope_dim / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) rope_angle(a, positions[r], i, cs[i], sn[i]);
    __syncthreads();
    const float* xr = x + r * a.cols;
    float* yr = y + r * a.cols;
    // Pairs (2j, 2j+1) of the row: rotated inside a head's rope part, copied elsewhere
    // (head_dim, rope_offset and rope_dim are even).
    const int64_t roped = static_cast<int64_t>(a.n_head) * a.head_dim;
    const int64_t j_end = min((a.cols + 1) / 2, static_cast<int64_t>(blockIdx.y + 1) * kRopePairs);
    for (int64_t j = static_cast<int64_t>(blockIdx.y) * kRopePairs + threadIdx.x; j < j_end; j += blockDim.x) {
        const int64_t c = 2 * j;
        const int64_t in_head = c % a.head_dim;
        if (c + 1 < a.cols && c < roped && in_head >= a.rope_offset && in_head < a.rope_offset + a.rope_dim) {
            const int i = static_cast<int>((in_head - a.rope_offset) / 2);
            rope_pair(xr[c], xr[c + 1], cs[i], sn[i], yr + c);
        } else {
            yr[c] = xr[c];
            if (c + 1 < a.cols) yr[c + 1] = xr[c + 1];
        }
    }
}

// MLA's query at decode (one row of n_head heads [nope | rope], rope_offset = nope, a
// multiple of 32, the rope part last): rope_rows_kernel's y, and each head's nope part
// also quantised as the n_head rows of the per-head k_b GEMV (gemv_q8.h's layout), so
// that k_b needs no launch of its own to quantise. A warp per head; the angles are
// computed before the wait (the positions are the step's input, copied before its first
// kernel), so the double-precision cos/sin are off the path.
constexpr int kRopeQ8Warps = 4;
__global__ void __launch_bounds__(32 * kRopeQ8Warps)
    rope_q8_kernel(RopeArgs a, const int32_t* positions, const float* x, float* y, int8_t* q, q8::XDs* qd) {
    constexpr int kPer = kMaxRopeHalf / 32;  // pairs a lane
    const int lane = threadIdx.x & 31, h = blockIdx.x * kRopeQ8Warps + (threadIdx.x >> 5);
    const int half = a.rope_dim / 2, nope = a.rope_offset;
    float cs[kPer], sn[kPer];
#pragma unroll
    for (int k = 0; k < kPer; ++k)
        if (lane + 32 * k < half) rope_angle(a, positions[0], lane + 32 * k, cs[k], sn[k]);
    dep_wait();  // x comes from the q projection, and y, q, qd may still be read
    dep_trigger();
    if (h >= a.n_head) return;
    const float* xh = x + static_cast<int64_t>(h) * a.head_dim;
    float* yh = y + static_cast<int64_t>(h) * a.head_dim;
    float v[kMaxRopeHalf * 2 / 32];  // the nope part, ≤ 2 · kMaxRopeHalf values (checked on the host)
    const int nb = nope / 32;
#pragma unroll
    for (int b = 0; b < kMaxRopeHalf * 2 / 32; ++b)
        if (b < nb) v[b] = xh[32 * b + lane];
    float2 pr[kPer];
#pragma unroll
    for (int k = 0; k < kPer; ++k)
        if (lane + 32 * k < half) pr[k] = *reinterpret_cast<const float2*>(xh + nope + 2 * (lane + 32 * k));
#pragma unroll
    for (int k = 0; k < kPer; ++k)
        if (lane + 32 * k < half) rope_pair(pr[k].x, pr[k].y, cs[k], sn[k], yh + nope + 2 * (lane + 32 * k));
#pragma unroll
    for (int b = 0; b < kMaxRopeHalf * 2 / 32; ++b)
        if (b < nb) {
            yh[32 * b + lane] = v[b];
            q8::quantize_warp(v[b], true, q + static_cast<int64_t>(h) * nope + 32 * b + lane,
                              qd + static_cast<int64_t>(h) * nb + b);
        }
}

// MLA's latent side at decode in one launch (one token, 128 threads, so that the block
// finds a slot beside a GEMV's): the kv_a row's first kv_lora values RMS-normed into lat,
// its rope part rotated into kpe, and both stored as the cache row at positions[0] (a
// position outside the context is DevError code 3, as in mla_store). Bit for bit
// add_rms_norm_kernel<kNormThreads, 1>, rope_rows_kernel and mla_store run apart: with
// kv_lora ≤ 4·kLatentThreads each thread takes the same four columns, in the same order,
// and block_sum adds the same warp sums (the other warps' being zeros).
constexpr int kLatentThreads = 128;
__global__ void __launch_bounds__(kLatentThreads)
    mla_latent_kernel(const float* kv, int kv_lora, const void* gain, WType wt, float eps, RopeArgs ra,
                      const int32_t* positions, float* lat, float* kpe, float* cache, int64_t n_ctx, DevError* err,
                      float* cs_out) {
    const int t = threadIdx.x, half = ra.rope_dim / 2;
    const int32_t pos = positions[0];  // the step's input, copied before its first kernel
    float g[4], c = 0.0f, sn = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; ++k) g[k] = 4 * t + k < kv_lora ? load_w(wt, gain, 4 * t + k) : 0.0f;
    if (t < half) rope_angle(ra, pos, t, c, sn);
    dep_wait();  // kv comes from kv_a's product; lat, kpe and the cache row may still be read
    dep_trigger();
    float v[4];
    double ss = 0.0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        v[k] = 4 * t + k < kv_lora ? kv[4 * t + k] : 0.0f;
        ss += static_cast<double>(v[k]) * v[k];
    }
    const double total = block_sum(ss);
    const float inv = static_cast<float>(1.0 / sqrt(total / static_cast<double>(kv_lora) + eps));
    const bool in_ctx = pos >= 0 && pos < n_ctx;
    if (!in_ctx && t == 0) set_error(err, 3, pos, static_cast<int>(n_ctx));
    float* row = in_ctx ? cache + static_cast<int64_t>(pos) * (kv_lora + ra.rope_dim) : nullptr;
#pragma unroll
    for (int k = 0; k < 4; ++k)
        if (4 * t + k < kv_lora) {
            const float o = v[k] * inv * g[k];
            lat[4 * t + k] = o;
            if (row) row[4 * t + k] = o;
        }
    if (t < half) {
        if (cs_out) cs_out[2 * t] = c, cs_out[2 * t + 1] = sn;
        float y[2];
        rope_pair(kv[kv_lora + 2 * t], kv[kv_lora + 2 * t + 1], c, sn, y);
        kpe[2 * t] = y[0], kpe[2 * t + 1] = y[1];
        if (row) row[kv_lora + 2 * t] = y[0], row[kv_lora + 2 * t + 1] = y[1];
    }
}

}  // namespace

void add_rms_norm(const float* a, const float* b, const float* c, float* mid, float* sum, const void* gain, WType wt,
                  float eps, int64_t rows, int64_t cols, float* y, cudaStream_t s, void* yq) {
    if (rows <= 0) return;
    int8_t* q = nullptr;
    q8::XDs* qd = nullptr;
    if (yq && cols % 32 == 0) {  // gemv_q8.h's layout of quantised rows
        q = static_cast<int8_t*>(yq);
        qd = reinterpret_cast<q8::XDs*>(static_cast<uint8_t*>(yq) + q8::xds_offset(rows, cols));
    }
    // Whole rows of 32-column blocks per cluster member, on sm_90 (DS3_CUDA_NORM_CLUSTER=0:
    // one block a row; read once). Both launched with programmatic dependent launch
    // (device_util.cuh) where it is on.
    static const bool cluster = env_on_sm90("DS3_CUDA_NORM_CLUSTER");
    // DS3_CUDA_NORM_MEMBERS=4|16 (read once): clusters of that many blocks, for measurements.
    static const int members = [] {
        const int m = env_int("DS3_CUDA_NORM_MEMBERS");
        return m == 4 || m == 16 ? m : kNormCluster;
    }();
    if (cluster && cols % (32 * members) == 0 && cols >= 1024) {
        cudaLaunchAttribute attr[2];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = members, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(static_cast<unsigned>(rows * members));
        cfg.blockDim = dim3(kClusterThreads);
        cfg.stream = s;
        cfg.attrs = attr;
        cfg.numAttrs = step_launch_attrs(attr, 1);
        auto go = [&](auto kernel) {
            if (members > 8) cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
            return cudaLaunchKernelEx(&cfg, kernel, a, b, c, mid, sum, gain, wt, eps, cols, y, q, qd);
        };
        const cudaError_t e = members == 4    ? go(add_rms_norm_kernel<kClusterThreads, 4>)
                              : members == 16 ? go(add_rms_norm_kernel<kClusterThreads, 16>)
                                              : go(add_rms_norm_kernel<kClusterThreads, kNormCluster>);
        if (e == cudaSuccess) return;
        cudaGetLastError();  // no cluster launch here: one block a row
    }
    launch_pdl(add_rms_norm_kernel<kNormThreads, 1>, dim3(static_cast<unsigned>(rows)), dim3(kNormThreads), 0, s, a,
               b, c, mid, sum, gain, wt, eps, cols, y, q, qd);
}

void rope_rows(const RopeArgs& a, const int32_t* positions, const float* x, float* y, cudaStream_t s) {
    if (a.rows <= 0) return;
    const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(((a.cols + 1) / 2 + kRopePairs - 1) / kRopePairs));
    launch_pdl(rope_rows_kernel, grid, dim3(kRopeThreads), 0, s, a, positions, x, y);
}

bool rope_q8_applies(const RopeArgs& a) {
    return a.rows == 1 && a.rope_offset > 0 && a.rope_offset % 32 == 0 && a.rope_offset <= 2 * kMaxRopeHalf &&
           a.rope_dim > 0 && a.rope_dim % 2 == 0 && a.rope_offset + a.rope_dim == a.head_dim &&
           a.cols == static_cast<int64_t>(a.n_head) * a.head_dim && a.head_dim % 2 == 0;
}

void rope_rows_q8(const RopeArgs& a, const int32_t* positions, const float* x, float* y, void* q8_rows,
                  cudaStream_t s) {
    auto* q = static_cast<int8_t*>(q8_rows);
    auto* qd = reinterpret_cast<q8::XDs*>(static_cast<uint8_t*>(q8_rows) + q8::xds_offset(a.n_head, a.rope_offset));
    const unsigned grid = static_cast<unsigned>((a.n_head + kRopeQ8Warps - 1) / kRopeQ8Warps);
    launch_pdl(rope_q8_kernel, dim3(grid), dim3(32 * kRopeQ8Warps), 0, s, a, positions, x, y, q, qd);
}

bool mla_latent_applies(int kv_lora, const RopeArgs& a) {
    return kv_lora > 0 && kv_lora <= 4 * kLatentThreads && a.rows == 1 && a.n_head == 1 && a.rope_offset == 0 &&
           a.rope_dim > 0 && a.rope_dim % 2 == 0 && a.head_dim == a.rope_dim && a.cols == a.rope_dim &&
           a.rope_dim / 2 <= kLatentThreads;
}

void mla_latent(const float* kv, int kv_lora, const void* gain, WType wt, float eps, const RopeArgs& a,
                const int32_t* positions, float* lat, float* kpe, float* cache, int64_t n_ctx, DevError* err,
                cudaStream_t s, float* cs_out) {
    launch_pdl(mla_latent_kernel, dim3(1), dim3(kLatentThreads), 0, s, kv, kv_lora, gain, wt, eps, a, positions, lat,
               kpe, cache, n_ctx, err, cs_out);
}

}  // namespace ds3::cuda
