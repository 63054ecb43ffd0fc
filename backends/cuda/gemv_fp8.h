// FP8 (e4m3, 128-value blocks with an f32 scale) decode GEMVs on tensor cores
// (gemv_fp8.cu), behind kernels.cu's launchers: ≤ 8 activation rows, f32 accuracy (the
// activations as f16 hi + lo). Each returns false, launching nothing, where it does not
// apply (another type, before sm_90, DS3_CUDA_FP8_MMA=0, unaligned activations, more rows,
// batches or groups), and the caller runs its f32 kernel instead.
#pragma once

#include "backends/cuda/kernels.h"

namespace ds3::cuda {

// up null: y = x·Wᵀ; else the SwiGLU pair: y = silu(x·Wᵀ) · (x·Upᵀ).
bool gemv_fp8(const GemmArgs& a, const void* up, cudaStream_t s);
bool moe_gate_up_fp8(const MoeArgs& a, const float* x, const float* route, float* act, DevError* err,
                     cudaStream_t s);
bool moe_down_fp8(const MoeArgs& a, const float* act, const float* route, float* y, cudaStream_t s);

}  // namespace ds3::cuda
