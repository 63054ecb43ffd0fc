// Small device helpers shared by the CUDA kernel files (warp reductions, SwiGLU's SiLU,
// the in-kernel error record, grid sizing).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "backends/cuda/kernels.h"

namespace ds3::cuda {

// Element i of a plain-float vector (norm gains, the router bias): F32, BF16 or F16.
__device__ inline float load_w(WType t, const void* p, int64_t i) {
    switch (t) {
        case WType::bf16: return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16);
        case WType::f16: return __half2float(static_cast<const __half*>(p)[i]);
        default: return static_cast<const float*>(p)[i];
    }
}

__device__ inline float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ inline float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ inline float silu(float x) { return x / (1.0f + expf(-x)); }

// Programmatic dependent launch (sm_90): lets the next kernel on the stream, when it was
// launched with the attribute (the integer GEMVs), start now and issue its weight loads;
// it waits for this grid to finish (griddepcontrol.wait) before reading what it wrote.
__device__ __forceinline__ void dep_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ inline void set_error(DevError* e, int code, int value, int limit) {
    if (atomicCAS(&e->code, 0, code) == 0) {
        e->value = value;
        e->limit = limit;
    }
}

// A switch that is on unless the environment sets it to 0 (before/after timings with one
// binary); callers read it once.
inline bool env_on(const char* name) {
    const char* e = std::getenv(name);
    return !(e && std::atoi(e) == 0);
}

// env_on(name), and the current device of compute capability 9.0 or later (programmatic
// dependent launch, thread-block clusters).
inline bool env_on_sm90(const char* name) {
    if (!env_on(name)) return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return major >= 9;
}

inline unsigned grid_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 32)));
}

}  // namespace ds3::cuda
