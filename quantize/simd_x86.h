// The x86 kernels (quantize/simd_x86.cpp), internal to quantize/: reached through the
// dispatch in quantize/simd.cpp, which calls them only when the CPU has the features.
// Integer sums per block equal the reference's exactly; see simd_x86.cpp for which
// kernels also keep the reference's float order (and so return the same bits).
#pragma once

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DS3_QUANT_X86 1
#else
#define DS3_QUANT_X86 0
#endif

#if DS3_QUANT_X86
namespace ds3::quant {

float q8_0_vec_dot_avx2(int64_t n, const void* w, const void* act);
float q4_0_vec_dot_avx2(int64_t n, const void* w, const void* act);
float q4_K_vec_dot_avx2(int64_t n, const void* w, const void* act);
float q6_K_vec_dot_avx2(int64_t n, const void* w, const void* act);
void q8_0_from_float_avx2(const float* src, void* dst, int64_t n, const float* importance);
void q8_K_from_float_avx2(const float* src, void* dst, int64_t n, const float* importance);

float q8_0_vec_dot_avx512(int64_t n, const void* w, const void* act);
float q4_0_vec_dot_avx512(int64_t n, const void* w, const void* act);
float q4_K_vec_dot_avx512(int64_t n, const void* w, const void* act);
float q6_K_vec_dot_avx512(int64_t n, const void* w, const void* act);
void q8_0_from_float_avx512(const float* src, void* dst, int64_t n, const float* importance);
void q8_K_from_float_avx512(const float* src, void* dst, int64_t n, const float* importance);

}  // namespace ds3::quant
#endif
