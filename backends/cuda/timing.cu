// Timings for the hidden benches of test_cuda_quant (kernels.h): one decode product at a
// given shape, and a kernel that only reads a product's bytes, each over copies of the
// weights cycled so that L2 holds none of them.
#include "backends/cuda/device_util.cuh"
#include "backends/cuda/gemv_q8.h"
#include "backends/cuda/kernels.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace ds3::cuda {

namespace {
// time_read_us's product stand-in: block b reads words [b·run, (b + 1)·run) of p, four
// 16-byte loads in flight a thread, the first round issued before the wait for the kernel
// ahead (as the dense GEMVs do). The xor of the words keeps the loads.
__global__ void __launch_bounds__(kGemvThreads) read_run_kernel(const int4* p, int64_t run, int64_t n, int* sink) {
    constexpr int U = 4;
    const int64_t b0 = static_cast<int64_t>(blockIdx.x) * run, end = min(run, n - b0);
    int acc = 0;
    bool waited = false;
    for (int64_t i = threadIdx.x; i < end; i += U * kGemvThreads) {
        int4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = i + u * kGemvThreads < end ? __ldg(p + b0 + i + u * kGemvThreads) : int4{};
        if (!waited) {
            dep_wait();
            dep_trigger();
            waited = true;
        }
#pragma unroll
        for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (!waited) {
        dep_wait();
        dep_trigger();
    }
    if (acc == 0x5eed5eed) *sink = acc;
}

// Copies of a timed product's bytes, cycled so that L2 holds none of them: ~512 MiB in all,
// 2 to 64 copies.
int64_t cycled_copies(int64_t per_copy) {
    return std::max<int64_t>(2, std::min<int64_t>(64, ((int64_t(1) << 29) + per_copy - 1) / per_copy));
}

// Mean µs of one(c) on s over iters launches, c cycling over the copies, after one warm-up
// pass over them; −1 when the events fail.
template <typename F>
double time_cycled_us(cudaStream_t s, int64_t copies, int iters, F&& one) {
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    double us = -1.0;
    if (cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess) {
        for (int64_t c = 0; c < copies; ++c) one(c);
        cudaEventRecord(e0, s);
        for (int i = 0; i < iters; ++i) one(i % copies);
        cudaEventRecord(e1, s);
        float ms = 0.0f;
        if (cudaEventSynchronize(e1) == cudaSuccess && cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess)
            us = 1000.0 * ms / iters;
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    return us;
}
}  // namespace

double time_read_us(int64_t bytes, int iters) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0 || bytes < 16 || iters < 1) {
        cudaGetLastError();
        return -1.0;
    }
    const int64_t n = bytes / 16, run = 2048;  // 32 KiB a block
    const int64_t copies = cycled_copies(bytes);
    int4* w = nullptr;
    int* sink = nullptr;
    cudaStream_t s = nullptr;
    double us = -1.0;
    if (cudaMalloc(&w, static_cast<size_t>(copies * n) * sizeof(int4)) == cudaSuccess &&
        cudaMalloc(&sink, sizeof(int)) == cudaSuccess && cudaStreamCreate(&s) == cudaSuccess) {
        cudaMemset(w, 0x11, static_cast<size_t>(copies * n) * sizeof(int4));
        const dim3 grid(static_cast<unsigned>((n + run - 1) / run));
        us = time_cycled_us(s, copies, iters, [&](int64_t c) {
            launch_pdl(read_run_kernel, grid, dim3(kGemvThreads), 0, s, w + c * n, run, n, sink);
        });
    }
    cudaGetLastError();
    if (s) cudaStreamDestroy(s);
    if (w) cudaFree(w);
    if (sink) cudaFree(sink);
    return us;
}

double time_decode_us(int kind, WType t, int64_t M, int64_t N, int64_t K, bool int_path, int iters) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        cudaGetLastError();
        return -1.0;
    }
    const int64_t bs = wtype_block(t), bb = wtype_block_bytes(t);
    const int64_t rb = K / bs * bb, rb_down = N / bs * bb;
    const int E = 8;
    const int64_t mat = N * rb;  // one N×K matrix
    const int64_t per_copy = kind == 0 ? mat : kind == 1 ? 2 * mat : E * (2 * mat + K * rb_down);
    const int64_t copies = cycled_copies(per_copy);
    uint8_t* w = nullptr;
    float *x = nullptr, *y = nullptr, *act = nullptr, *route = nullptr;
    void* scratch = nullptr;
    DevError* err = nullptr;
    cudaStream_t s = nullptr;
    const int64_t T = M;
    bool ok = cudaMalloc(&w, static_cast<size_t>(copies * per_copy)) == cudaSuccess &&
              cudaMalloc(&x, static_cast<size_t>(M * std::max(K, N)) * 4) == cudaSuccess &&
              cudaMalloc(&y, static_cast<size_t>(M * E * std::max(K, N)) * 4) == cudaSuccess &&
              cudaMalloc(&act, static_cast<size_t>(M * E * N) * 4) == cudaSuccess &&
              cudaMalloc(&route, static_cast<size_t>(T * 2 * E) * 4) == cudaSuccess &&
              cudaMalloc(&scratch, q8_rows_bytes(M, std::max(K, N)) + q8_rows_bytes(M * E, N)) == cudaSuccess &&
              cudaMalloc(&err, sizeof(DevError)) == cudaSuccess && cudaStreamCreate(&s) == cudaSuccess;
    double us = -1.0;
    if (ok) {
        cudaMemset(w, 0x11, static_cast<size_t>(copies * per_copy));  // small finite scales and levels
        cudaMemset(x, 0, static_cast<size_t>(M * std::max(K, N)) * 4);
        cudaMemset(err, 0, sizeof(DevError));
        std::vector<float> r(static_cast<size_t>(T * 2 * E));
        for (int64_t i = 0; i < T; ++i)
            for (int j = 0; j < E; ++j) {
                r[static_cast<size_t>(i * 2 * E + j)] = 1.0f / E;
                r[static_cast<size_t>(i * 2 * E + E + j)] = static_cast<float>(j);
            }
        cudaMemcpy(route, r.data(), r.size() * 4, cudaMemcpyHostToDevice);
        auto one = [&](int64_t c) {
            const uint8_t* base = w + c * per_copy;
            if (kind == 2) {
                MoeArgs a;
                a.T = T, a.D = K, a.F = N, a.n_used = E, a.n_expert = E;
                a.gate = base, a.up = base + E * mat, a.down = base + 2 * E * mat;
                a.wt = a.wt_down = t;
                a.mask.bits[0] = (1u << E) - 1;
                a.scratch = int_path ? scratch : nullptr;
                moe_pairs_gate_up(a, x, route, act, err, s);
                moe_pairs_down(a, act, route, y, s);
                return;
            }
            GemmArgs a;
            a.x = x, a.ldx = K, a.w = base, a.wt = t, a.y = y, a.ldy = N, a.M = M, a.N = N, a.K = K;
            a.scratch = int_path ? scratch : nullptr;
            if (kind == 0) gemm(a, s);
            else gemv_swiglu(a, base + mat, s);
        };
        us = time_cycled_us(s, copies, iters, one);
    }
    cudaGetLastError();
    if (s) cudaStreamDestroy(s);
    for (void* p : {static_cast<void*>(w), static_cast<void*>(x), static_cast<void*>(y), static_cast<void*>(act),
                    static_cast<void*>(route), scratch, static_cast<void*>(err)})
        if (p) cudaFree(p);
    return us;
}

}  // namespace ds3::cuda
