// Run-time choice of the SIMD kernels. Each kernel is compiled with a per-function target
// attribute (no -march needed) and used only when the CPU reports the features
// (__builtin_cpu_supports). The dispatched entry points in quantize/formats.h pick the
// best level once; tests and benchmarks ask for a given level's kernel here to compare it
// with the scalar reference.
#pragma once

#include <string_view>

#include "quantize/types.h"

namespace ds3::quant {

enum class SimdLevel { scalar, avx2, avx512 };

std::string_view simd_level_name(SimdLevel l);
// Compiled in and supported by this CPU (scalar always is).
bool simd_level_available(SimdLevel l);
// The level the dispatched kernels use: the best available, unless DS3_SIMD=scalar|avx2
// in the environment lowers it (to measure or to rule out a kernel).
SimdLevel simd_level();

// The kernel of exactly that level for weight type t, or nullptr when that level has none
// for t (or is not available here). Scalar returns the reference.
VecDotFn vec_dot_kernel(TypeId t, SimdLevel l);
// The activation quantiser of exactly that level (Q8_0, Q8_K), same contract.
FromFloatFn from_float_kernel(TypeId t, SimdLevel l);

}  // namespace ds3::quant
