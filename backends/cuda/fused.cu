// Row kernels of the decode path that replace chains of small ops (kernels.h): RoPE with
// one angle table per row, and residual adds fused with the RMS norm that follows them.
// Each gives the same bits as the unfused kernels it stands in for (same operation
// order, same reduction tree), so a replayed graph equals a node-by-node run.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backends/cuda/device_util.cuh"
#include "backends/cuda/kernels.h"

namespace ds3::cuda {

namespace {

constexpr int kNormThreads = 256;  // the reduction tree of rms_norm_kernel (kernels.cu)

// Sum of v over the block (kNormThreads threads), in the order rms_norm_kernel uses.
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

// Row r: mid = a + b (when c is given: then sum = c + mid), sum = a + b otherwise;
// y = rms_norm(sum) · gain.
__global__ void __launch_bounds__(kNormThreads)
    add_rms_norm_kernel(const float* a, const float* b, const float* c, float* mid, float* sum, const void* gain,
                        WType wt, float eps, int64_t cols, float* y) {
    const int64_t off = static_cast<int64_t>(blockIdx.x) * cols;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = a[off + i] + b[off + i];
        if (c) {
            mid[off + i] = v;
            v = c[off + i] + v;
        }
        sum[off + i] = v;
        ss += static_cast<double>(v) * v;
    }
    const double total = block_sum(ss);
    const float inv = static_cast<float>(1.0 / sqrt(total / static_cast<double>(cols) + eps));
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) y[off + i] = sum[off + i] * inv * load_w(wt, gain, i);
}

// Row r of x with the rope part of every head rotated. All heads of a row share their
// angles (position · inv_freq[i]): they are computed once per row, in double as on the
// CPU (positions reach 10^5 and float loses pos · freq), into shared memory.
__global__ void rope_rows_kernel(RopeArgs a, const int32_t* positions, const float* x, float* y) {
    __shared__ float cs[kMaxRopeHalf], sn[kMaxRopeHalf];
    const int64_t r = blockIdx.x;
    const int half = a.rope_dim / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const double theta = static_cast<double>(positions[r]) * static_cast<double>(a.inv_freq[i]);
        cs[i] = static_cast<float>(cos(theta) * a.attn_factor);
        sn[i] = static_cast<float>(sin(theta) * a.attn_factor);
    }
    __syncthreads();
    const float* xr = x + r * a.cols;
    float* yr = y + r * a.cols;
    // Pairs: every column pair (2j, 2j+1) of the row; rotated when it lies in a head's
    // rope part, copied otherwise (head_dim, rope_offset and rope_dim are all even).
    const int64_t roped = static_cast<int64_t>(a.n_head) * a.head_dim;
    for (int64_t j = threadIdx.x; 2 * j < a.cols; j += blockDim.x) {
        const int64_t c = 2 * j;
        const int64_t in_head = c % a.head_dim;
        if (2 * j + 1 < a.cols && c < roped && in_head >= a.rope_offset && in_head < a.rope_offset + a.rope_dim) {
            const int i = static_cast<int>((in_head - a.rope_offset) / 2);
            const float x0 = xr[c], x1 = xr[c + 1];
            yr[c] = x0 * cs[i] - x1 * sn[i];
            yr[c + 1] = x0 * sn[i] + x1 * cs[i];
        } else {
            yr[c] = xr[c];
            if (c + 1 < a.cols) yr[c + 1] = xr[c + 1];
        }
    }
}

}  // namespace

void add_rms_norm(const float* a, const float* b, const float* c, float* mid, float* sum, const void* gain, WType wt,
                  float eps, int64_t rows, int64_t cols, float* y, cudaStream_t s) {
    if (rows > 0)
        add_rms_norm_kernel<<<static_cast<unsigned>(rows), kNormThreads, 0, s>>>(a, b, c, mid, sum, gain, wt, eps,
                                                                                  cols, y);
}

void rope_rows(const RopeArgs& a, const int32_t* positions, const float* x, float* y, cudaStream_t s) {
    if (a.rows > 0) rope_rows_kernel<<<static_cast<unsigned>(a.rows), 256, 0, s>>>(a, positions, x, y);
}

}  // namespace ds3::cuda
