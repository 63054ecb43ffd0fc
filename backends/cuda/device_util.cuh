// Small device helpers shared by the CUDA kernel files (warp reductions, SwiGLU's SiLU,
// the in-kernel error record, grid sizing, programmatic dependent launch).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>

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

// RoPE pair i's angle at position pos (in double: positions reach 10^5 and float loses
// pos · freq), and a pair rotated by it: shared by every kernel that rotates, so that
// they give the same bits (the products spelt out: left to the compiler, which product
// of x0·c − x1·s became an FMA differed between kernels).
__device__ __forceinline__ void rope_angle(const RopeArgs& a, int32_t pos, int i, float& c, float& s) {
    const double theta = static_cast<double>(pos) * static_cast<double>(a.inv_freq[i]);
    c = static_cast<float>(cos(theta) * a.attn_factor);
    s = static_cast<float>(sin(theta) * a.attn_factor);
}
__device__ __forceinline__ void rope_pair(float x0, float x1, float c, float s, float* y) {
    y[0] = __fmaf_rn(x0, c, -__fmul_rn(x1, s));
    y[1] = __fmaf_rn(x0, s, __fmul_rn(x1, c));
}

// Programmatic dependent launch (sm_90). Every kernel of a step is launched with
// launch_pdl (below; MLA's in mla.cu), so the next kernel on the stream is already resident,
// waiting, when this one ends. Such a kernel may load weights (never written during a step)
// first; it calls dep_wait() (griddepcontrol.wait: every earlier grid complete, its memory
// visible) before its first read of anything an earlier kernel wrote and before its first
// global write, then dep_trigger() (griddepcontrol.launch_dependents), which lets the next
// kernel launch: at most two grids are in flight, the running one and the next, waiting.
// Host and device (no-ops on the host): the integer GEMV's lane loop also runs on the host.
__host__ __device__ __forceinline__ void dep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__host__ __device__ __forceinline__ void dep_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Thread i of n asks L2 for its share of the 128-byte lines of [p, p + bytes).
__device__ inline void prefetch_l2_run(const void* p, int64_t bytes, int64_t i, int64_t n) {
    for (int64_t o = 128 * i; o < bytes; o += 128 * n)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(static_cast<const char*>(p) + o));
}

// Thread i of n asks L2 for its share of a's lines (128 bytes each).
__device__ inline void prefetch_l2(const L2Ahead& a, int64_t i, int64_t n) {
    if (a.rows <= 0 || a.prefix <= 0) return;
    const int64_t lines = (a.prefix + 127) / 128;
    for (int64_t k = i; k < a.rows * lines; k += n) {
        const int64_t r = k / lines, l = k - r * lines;
        asm volatile("prefetch.global.L2 [%0];" ::"l"(static_cast<const char*>(a.base) + r * a.row_bytes + l * 128));
    }
}

__device__ inline void set_error(DevError* e, int code, int value, int limit) {
    if (atomicCAS(&e->code, 0, code) == 0) {
        e->value = value;
        e->limit = limit;
    }
}

// Whether expert e is one of those a moe_ffn node computes (its mask).
__device__ inline bool expert_in(const ExpertMask& m, int e) { return (m.bits[e >> 5] >> (e & 31)) & 1u; }

// The expert of (token, slot) pair `pair` of a route ([T][2k]: k weights, then k ids as
// floats), or −1 when the block has nothing to do: an id out of range (recorded as
// DevError code 2 by thread 0 when `report`) or an expert outside the mask.
__device__ inline int pair_expert(const float* route, int64_t pair, int k, int n_expert, const ExpertMask& mask,
                                  DevError* err, bool report) {
    const int64_t t = pair / k, j = pair % k;
    const int e = static_cast<int>(__ldcg(route + t * 2 * k + k + j));
    if (e < 0 || e >= n_expert) {
        if (report && threadIdx.x == 0) set_error(err, 2, e, n_expert);
        return -1;
    }
    return expert_in(mask, e) ? e : -1;
}

// A switch that is on unless the environment sets it to 0 (before/after timings with one
// binary); callers read it once.
inline bool env_on(const char* name) {
    const char* e = std::getenv(name);
    return !(e && std::atoi(e) == 0);
}

// An integer switch (0 when unset): DS3_CUDA_Q8_RW, DS3_CUDA_MLA_SPLITS; callers read it once.
inline int env_int(const char* name) {
    const char* e = std::getenv(name);
    return e ? std::atoi(e) : 0;
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

// Whether launches use programmatic dependent launch: sm_90 and later, unless DS3_CUDA_PDL=0
// (no PDL anywhere: before/after timings with one binary). Read once.
inline bool pdl_enabled() {
    static const bool on = env_on_sm90("DS3_CUDA_PDL");
    return on;
}

// Whether a launch from this thread now uses it: enabled, and not inside a batch's op
// (set_pdl_suspended, kernels.h).
inline bool pdl_now() { return pdl_enabled() && !pdl_suspended(); }

// The launch attribute every kernel of a step gets, appended at attr[n]: programmatic
// dependent launch where pdl_now(). Returns the new count (n or n + 1).
inline unsigned step_launch_attrs(cudaLaunchAttribute* attr, unsigned n) {
    if (pdl_now()) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n].val.programmaticStreamSerializationAllowed = 1;
        ++n;
    }
    return n;
}

// kernel<<<grid, block, smem, s>>>(args...), launched with step_launch_attrs (the kernel
// must follow dep_wait's rule above). Errors are left for cudaGetLastError, as with <<<>>>.
template <typename... P, typename... A>
void launch_pdl(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A&&... args) {
    cudaLaunchAttribute attr[1];
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = step_launch_attrs(attr, 0);
    (void)cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

inline unsigned grid_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 32)));
}

}  // namespace ds3::cuda
