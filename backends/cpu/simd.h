// The CPU inner loops — dot products on f32 / bf16 / f16 rows and row conversion —
// with a portable scalar version and AVX2+FMA(+F16C) versions chosen at run time, so
// one binary runs everywhere and uses the wide units where they exist. The scalar
// versions are the reference the tests hold the others to.
#pragma once

#include <cstdint>

namespace ds3::cpu {

struct RowKernels {
    float (*dot_f32)(const float* a, const float* b, int64_t n);
    float (*dot_bf16)(const uint8_t* w, const float* x, int64_t n);  // w: n bf16 values
    float (*dot_f16)(const uint8_t* w, const float* x, int64_t n);   // w: n f16 values
    void (*bf16_to_f32)(const uint8_t* src, float* dst, int64_t n);
    void (*f16_to_f32)(const uint8_t* src, float* dst, int64_t n);
    // Batch micro-kernel: out[2·i + j] = w[i] · x_j for 4 weight rows and 2 activation
    // rows, so every load feeds more than one FMA (prompt processing is compute-bound).
    void (*dot_4x2_f32)(const float* const* w, const float* x0, const float* x1, int64_t n, float* out);
    const char* name;
};

const RowKernels& scalar_kernels();
const RowKernels& best_kernels();  // AVX2 when the CPU has it, else scalar

}  // namespace ds3::cpu
