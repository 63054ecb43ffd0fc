// The integer decode GEMVs (gemv_q8.cu) behind kernels.cu's launchers: activations are
// quantised to 8-bit blocks in the caller's scratch, then __dp4a block dots (dot_q8.cuh)
// stream the weights. Each function returns false, launching nothing, where the integer
// path does not apply (a type without integer dots, no scratch, more than 8 rows), and
// the caller runs its f32 kernel instead.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/cuda/kernels.h"

namespace ds3::cuda {

// Threads of an integer GEMV block (gemv_q8_kernel; time_read_us launches its reads so).
inline constexpr int kGemvThreads = 128;

// Types with integer block dots (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K).
bool q8_supported(WType t);
// Bytes of `rows` quantised activation rows of K values (K a multiple of 32), 16-aligned.
size_t q8_rows_bytes(int64_t rows, int64_t K);

// quantised: also y quantised into a.yq (GemmArgs::yq).
bool gemv_q8(const GemmArgs& a, cudaStream_t s, bool& quantised);
// quantised: also y (act) quantised into a.yq (the down's scratch, MoeArgs::quantise_act).
bool gemv_swiglu_q8(const GemmArgs& a, const void* up, cudaStream_t s, bool& quantised);
bool moe_gate_up_q8(const MoeArgs& a, const float* x, const float* route, float* act, DevError* err, cudaStream_t s,
                    bool& quantised);
bool moe_down_q8(const MoeArgs& a, const float* act, const float* route, float* y, cudaStream_t s);
// moe_pairs_down_sum's kernel (interleaved down types, n_used ≤ 8).
bool moe_down_sum_q8(const MoeArgs& a, const float* act, const float* route, float* out, cudaStream_t s);

}  // namespace ds3::cuda
