// CPU kernels of the fused ops (the reference every other backend is tested against).
// f32 activations; OpenMP threads over output rows (matmuls) or heads (attention).
// Weights: F32/F16/BF16 through the fused row kernels of simd.h; every other type whose
// traits have to_float runs too: matmuls quantise each activation row once to the
// type's vec_dot_type and call its vec_dot per weight row (types without vec_dot, and
// the row-wise uses — embeddings, norms, MLA's W_kb/W_vb — dequantise with to_float).
#pragma once

#include <cstdint>

#include "quantize/types.h"
#include "runtime/graph/graph.h"

namespace ds3::cpu {

bool weight_type_supported(TypeId t);  // traits with to_float
// Converts n elements of a row of type t to f32.
void dequant_row(TypeId t, const uint8_t* src, float* dst, int64_t n);
float dot_f32(const float* a, const float* b, int64_t n);

// y[r][o] = Σ_i W_mat[o][i] · x[r][i] for r < n_rows; x [n_rows, ne0], y [n_rows, ne1].
void matmul(const Weight& w, int64_t mat, const float* x, int64_t n_rows, float* y, int n_threads);

void get_rows(const Weight& embd, const int32_t* ids, int64_t n, float* y);
void rms_norm(const float* x, const Weight& gain, float eps, int64_t rows, int64_t cols, float* y);
void swiglu(const float* gate, const float* up, int64_t n, float* y);
// In place on a copy of x already in y: rotates the rope part of every head.
void rope(const Node& n, const int32_t* positions, float* y);
// Writes the batch's latent + k_pe rows into `cache` ([n_ctx][kv_lora + qk_rope]) at
// positions pos0..pos0+T-1, then attends causally over positions 0..pos0+T-1.
// ctx_out (optional, [T][n_head][kv_lora]): the attended latents, W_vb's inputs.
void mla_attn(const Node& n, const float* q, const float* latent, const float* k_pe, float* cache,
              int64_t n_ctx, float* out, int n_threads, float* ctx_out = nullptr);
void moe_route(const Node& n, const float* x, float* out, int n_threads);
void moe_ffn(const Node& n, const float* x, const float* route, float* out, int n_threads);
void shared_ffn(const Node& n, const float* x, float* out, int n_threads);

}  // namespace ds3::cpu
