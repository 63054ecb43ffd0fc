// Row kernels of every format: the scalar references (the definition of each format:
// dequantise, quantise with optional importance weights, dot product against the
// activation type it pairs with) and the dispatched entry points that pick an AVX2 /
// AVX-512 kernel at run time. The type table (quantize/types.h) points at these; callers
// normally go through it or through the generic row helpers at the bottom.
//
// Pairings (ggml's, except that F16/BF16 pair with f32 activations here, because the
// runtime keeps activations in f32): F32/F16/BF16/FP8 × F32; Q8_0/Q4_0 × Q8_0;
// Q2_K..Q6_K/IQ4_XS × Q8_K. Q8_K is an activation-only format (no vec_dot of its own).
#pragma once

#include <cstdint>

#include "quantize/types.h"

namespace ds3::quant {

// --- scalar references ------------------------------------------------------------
void f32_to_float(const void* src, float* dst, int64_t n);
void f16_to_float(const void* src, float* dst, int64_t n);
void bf16_to_float(const void* src, float* dst, int64_t n);
void q8_0_to_float(const void* src, float* dst, int64_t n);
void q4_0_to_float(const void* src, float* dst, int64_t n);
void q8_K_to_float(const void* src, float* dst, int64_t n);
void q2_K_to_float(const void* src, float* dst, int64_t n);
void q3_K_to_float(const void* src, float* dst, int64_t n);
void q4_K_to_float(const void* src, float* dst, int64_t n);
void q5_K_to_float(const void* src, float* dst, int64_t n);
void q6_K_to_float(const void* src, float* dst, int64_t n);
void iq4_xs_to_float(const void* src, float* dst, int64_t n);
void fp8_b128_to_float(const void* src, float* dst, int64_t n);

// Importance is ignored by the plain float types, Q8_0 and Q8_K (their grids are fine
// enough that the scale choice barely matters) and used by every other format.
void f32_from_float(const float* src, void* dst, int64_t n, const float* importance);
void f16_from_float(const float* src, void* dst, int64_t n, const float* importance);
void bf16_from_float(const float* src, void* dst, int64_t n, const float* importance);
void q8_0_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);
void q4_0_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);
void q8_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);
void q2_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);
void q3_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);
void q4_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);
void q5_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);
void q6_K_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);
void iq4_xs_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);
// Per-block scale amax/448 (a 1x128 tile); importance ignored. Converting a release keeps
// its bytes and 128x128 tile scales instead: fp8_b128_pack_row.
void fp8_b128_from_float_ref(const float* src, void* dst, int64_t n, const float* importance);

float f32_vec_dot(int64_t n, const void* w, const void* act_f32);
float f16_vec_dot(int64_t n, const void* w, const void* act_f32);
float bf16_vec_dot(int64_t n, const void* w, const void* act_f32);
float fp8_b128_vec_dot(int64_t n, const void* w, const void* act_f32);
float q8_0_vec_dot_ref(int64_t n, const void* w, const void* act_q8_0);
float q4_0_vec_dot_ref(int64_t n, const void* w, const void* act_q8_0);
float q2_K_vec_dot_ref(int64_t n, const void* w, const void* act_q8_K);
float q3_K_vec_dot_ref(int64_t n, const void* w, const void* act_q8_K);
float q4_K_vec_dot_ref(int64_t n, const void* w, const void* act_q8_K);
float q5_K_vec_dot_ref(int64_t n, const void* w, const void* act_q8_K);
float q6_K_vec_dot_ref(int64_t n, const void* w, const void* act_q8_K);
float iq4_xs_vec_dot_ref(int64_t n, const void* w, const void* act_q8_K);

// --- dispatched (quantize/simd.cpp): the best kernel this CPU has, else the reference ---
void q8_0_from_float(const float* src, void* dst, int64_t n, const float* importance);
void q8_K_from_float(const float* src, void* dst, int64_t n, const float* importance);
float q8_0_vec_dot(int64_t n, const void* w, const void* act_q8_0);
float q4_0_vec_dot(int64_t n, const void* w, const void* act_q8_0);
float q4_K_vec_dot(int64_t n, const void* w, const void* act_q8_K);
float q6_K_vec_dot(int64_t n, const void* w, const void* act_q8_K);

// --- FP8 from a release -------------------------------------------------------------
// One row of an FP8_E4M3_B128 tensor from the release's e4m3 bytes (n, a multiple of
// 128) and the scale_inv of each of the row's 128-column tiles (n/128 of them).
void fp8_b128_pack_row(const uint8_t* fp8, const float* tile_scales, void* dst, int64_t n);
uint8_t f32_to_fp8_e4m3(float f);  // round to nearest even, saturating at ±448, NaN kept

}  // namespace ds3::quant

namespace ds3 {

// Generic row helpers over the type table. They throw Error("quantize", ...) naming the
// type when it has no such kernel or n is not a whole number of blocks.
void dequantize_row(TypeId t, const void* src, float* dst, int64_t n);
void quantize_row(TypeId t, const float* src, void* dst, int64_t n, const float* importance = nullptr);
// Σ w·x for a row w of type t and f32 activations x: quantises x to t's vec_dot_type (in a
// thread-local buffer) first. For one-off use; matmuls quantise x once per activation row
// and call the table's vec_dot for each weight row.
float vec_dot_f32(TypeId t, int64_t n, const void* w, const float* x);

}  // namespace ds3
