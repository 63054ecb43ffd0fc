// Run-time dispatch of the SIMD kernels (quantize/simd.h) and the dispatched entry points
// of quantize/formats.h. Each entry point resolves its kernel once (a function-local
// static), so the per-call cost is one predictable branch.
#include "quantize/simd.h"

#include <cstdlib>
#include <cstring>

#include "quantize/formats.h"
#include "quantize/simd_x86.h"

#if DS3_QUANT_X86
#include <cpuid.h>
#endif

namespace ds3::quant {

std::string_view simd_level_name(SimdLevel l) {
    switch (l) {
        case SimdLevel::scalar: return "scalar";
        case SimdLevel::avx2: return "avx2";
        case SimdLevel::avx512: return "avx512";
    }
    return "?";
}

#if DS3_QUANT_X86
// F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports has no "f16c".
static bool cpu_has_f16c() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}
#endif

bool simd_level_available(SimdLevel l) {
    switch (l) {
        case SimdLevel::scalar: return true;
#if DS3_QUANT_X86
        case SimdLevel::avx2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
        case SimdLevel::avx512:
            return simd_level_available(SimdLevel::avx2) && __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
        default: return false;
#endif
    }
    return false;
}

namespace {

SimdLevel pick_level() {
    SimdLevel best = SimdLevel::scalar;
    if (simd_level_available(SimdLevel::avx512)) best = SimdLevel::avx512;
    else if (simd_level_available(SimdLevel::avx2)) best = SimdLevel::avx2;
    // An explicit lower level from the environment; a higher one than the CPU has is ignored.
    if (const char* env = std::getenv("DS3_SIMD")) {
        if (std::strcmp(env, "scalar") == 0) best = SimdLevel::scalar;
        else if (std::strcmp(env, "avx2") == 0 && best == SimdLevel::avx512) best = SimdLevel::avx2;
    }
    return best;
}

// The next lower level to fall back to when a level has no kernel for a type.
SimdLevel lower(SimdLevel l) { return l == SimdLevel::avx512 ? SimdLevel::avx2 : SimdLevel::scalar; }

VecDotFn best_vec_dot(TypeId t) {
    for (SimdLevel l = simd_level();; l = lower(l)) {
        if (VecDotFn f = vec_dot_kernel(t, l)) return f;
        if (l == SimdLevel::scalar) return nullptr;
    }
}

FromFloatFn best_from_float(TypeId t) {
    for (SimdLevel l = simd_level();; l = lower(l)) {
        if (FromFloatFn f = from_float_kernel(t, l)) return f;
        if (l == SimdLevel::scalar) return nullptr;
    }
}

}  // namespace

SimdLevel simd_level() {
    static const SimdLevel level = pick_level();
    return level;
}

VecDotFn vec_dot_kernel(TypeId t, SimdLevel l) {
    if (!simd_level_available(l)) return nullptr;
    switch (l) {
        case SimdLevel::scalar:
            switch (t) {
                case TypeId::Q8_0: return q8_0_vec_dot_ref;
                case TypeId::Q4_0: return q4_0_vec_dot_ref;
                case TypeId::Q4_K: return q4_K_vec_dot_ref;
                case TypeId::Q6_K: return q6_K_vec_dot_ref;
                default: {
                    const TypeTraits* tr = type_traits(static_cast<uint32_t>(t));
                    return tr ? tr->vec_dot : nullptr;  // the rest have only their reference
                }
            }
#if DS3_QUANT_X86
        case SimdLevel::avx2:
            switch (t) {
                case TypeId::Q8_0: return q8_0_vec_dot_avx2;
                case TypeId::Q4_0: return q4_0_vec_dot_avx2;
                case TypeId::Q4_K: return q4_K_vec_dot_avx2;
                case TypeId::Q6_K: return q6_K_vec_dot_avx2;
                default: return nullptr;
            }
        case SimdLevel::avx512:
            switch (t) {
                case TypeId::Q8_0: return q8_0_vec_dot_avx512;
                case TypeId::Q4_0: return q4_0_vec_dot_avx512;
                case TypeId::Q4_K: return q4_K_vec_dot_avx512;
                case TypeId::Q6_K: return q6_K_vec_dot_avx512;
                default: return nullptr;
            }
#else
        default: return nullptr;
#endif
    }
    return nullptr;
}

FromFloatFn from_float_kernel(TypeId t, SimdLevel l) {
    if (!simd_level_available(l)) return nullptr;
    switch (l) {
        case SimdLevel::scalar:
            if (t == TypeId::Q8_0) return q8_0_from_float_ref;
            if (t == TypeId::Q8_K) return q8_K_from_float_ref;
            return nullptr;
#if DS3_QUANT_X86
        case SimdLevel::avx2:
            if (t == TypeId::Q8_0) return q8_0_from_float_avx2;
            if (t == TypeId::Q8_K) return q8_K_from_float_avx2;
            return nullptr;
        case SimdLevel::avx512:
            if (t == TypeId::Q8_0) return q8_0_from_float_avx512;
            if (t == TypeId::Q8_K) return q8_K_from_float_avx512;
            return nullptr;
#else
        default: return nullptr;
#endif
    }
    return nullptr;
}

// --- dispatched entry points ---------------------------------------------------------

void q8_0_from_float(const float* src, void* dst, int64_t n, const float* importance) {
    static const FromFloatFn fn = best_from_float(TypeId::Q8_0);
    fn(src, dst, n, importance);
}
void q8_K_from_float(const float* src, void* dst, int64_t n, const float* importance) {
    static const FromFloatFn fn = best_from_float(TypeId::Q8_K);
    fn(src, dst, n, importance);
}
float q8_0_vec_dot(int64_t n, const void* w, const void* act) {
    static const VecDotFn fn = best_vec_dot(TypeId::Q8_0);
    return fn(n, w, act);
}
float q4_0_vec_dot(int64_t n, const void* w, const void* act) {
    static const VecDotFn fn = best_vec_dot(TypeId::Q4_0);
    return fn(n, w, act);
}
float q4_K_vec_dot(int64_t n, const void* w, const void* act) {
    static const VecDotFn fn = best_vec_dot(TypeId::Q4_K);
    return fn(n, w, act);
}
float q6_K_vec_dot(int64_t n, const void* w, const void* act) {
    static const VecDotFn fn = best_vec_dot(TypeId::Q6_K);
    return fn(n, w, act);
}

}  // namespace ds3::quant
