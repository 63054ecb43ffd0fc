#include "quantize/types.h"

#include "quantize/formats.h"

#include <array>
#include <cctype>
#include <limits>
#include <cassert>

namespace ds3 {

namespace {

constexpr std::array kTypes = {
    TypeTraits{TypeId::F32, "f32", 1, 4, false,
               &quant::f32_to_float, &quant::f32_from_float, &quant::f32_from_float, &quant::f32_vec_dot, TypeId::F32},
    TypeTraits{TypeId::F16, "f16", 1, 2, false,
               &quant::f16_to_float, &quant::f16_from_float, &quant::f16_from_float, &quant::f16_vec_dot, TypeId::F32},
    TypeTraits{TypeId::Q4_0, "q4_0", 32, 18, true,
               &quant::q4_0_to_float, &quant::q4_0_from_float_ref, &quant::q4_0_from_float_ref, &quant::q4_0_vec_dot, TypeId::Q8_0},
    TypeTraits{TypeId::Q4_1, "q4_1", 32, 20, true},
    TypeTraits{TypeId::Q5_0, "q5_0", 32, 22, true},
    TypeTraits{TypeId::Q5_1, "q5_1", 32, 24, true},
    TypeTraits{TypeId::Q8_0, "q8_0", 32, 34, true,
               &quant::q8_0_to_float, &quant::q8_0_from_float_ref, &quant::q8_0_from_float, &quant::q8_0_vec_dot, TypeId::Q8_0},
    TypeTraits{TypeId::Q8_1, "q8_1", 32, 36, true},
    TypeTraits{TypeId::Q2_K, "q2_K", 256, 84, true,
               &quant::q2_K_to_float, &quant::q2_K_from_float_ref, &quant::q2_K_from_float_ref, &quant::q2_K_vec_dot_ref, TypeId::Q8_K},
    TypeTraits{TypeId::Q3_K, "q3_K", 256, 110, true,
               &quant::q3_K_to_float, &quant::q3_K_from_float_ref, &quant::q3_K_from_float_ref, &quant::q3_K_vec_dot_ref, TypeId::Q8_K},
    TypeTraits{TypeId::Q4_K, "q4_K", 256, 144, true,
               &quant::q4_K_to_float, &quant::q4_K_from_float_ref, &quant::q4_K_from_float_ref, &quant::q4_K_vec_dot, TypeId::Q8_K},
    TypeTraits{TypeId::Q5_K, "q5_K", 256, 176, true,
               &quant::q5_K_to_float, &quant::q5_K_from_float_ref, &quant::q5_K_from_float_ref, &quant::q5_K_vec_dot_ref, TypeId::Q8_K},
    TypeTraits{TypeId::Q6_K, "q6_K", 256, 210, true,
               &quant::q6_K_to_float, &quant::q6_K_from_float_ref, &quant::q6_K_from_float_ref, &quant::q6_K_vec_dot, TypeId::Q8_K},
    TypeTraits{TypeId::Q8_K, "q8_K", 256, 292, true,
               &quant::q8_K_to_float, &quant::q8_K_from_float_ref, &quant::q8_K_from_float, nullptr, TypeId::F32},
    TypeTraits{TypeId::IQ2_XXS, "iq2_xxs", 256, 66, true},
    TypeTraits{TypeId::IQ2_XS, "iq2_xs", 256, 74, true},
    TypeTraits{TypeId::IQ3_XXS, "iq3_xxs", 256, 98, true},
    TypeTraits{TypeId::IQ1_S, "iq1_s", 256, 50, true},
    TypeTraits{TypeId::IQ4_NL, "iq4_nl", 32, 18, true},
    TypeTraits{TypeId::IQ3_S, "iq3_s", 256, 110, true},
    TypeTraits{TypeId::IQ2_S, "iq2_s", 256, 82, true},
    TypeTraits{TypeId::IQ4_XS, "iq4_xs", 256, 136, true,
               &quant::iq4_xs_to_float, &quant::iq4_xs_from_float_ref, &quant::iq4_xs_from_float_ref, &quant::iq4_xs_vec_dot_ref, TypeId::Q8_K},
    TypeTraits{TypeId::I8, "i8", 1, 1, false},
    TypeTraits{TypeId::I16, "i16", 1, 2, false},
    TypeTraits{TypeId::I32, "i32", 1, 4, false},
    TypeTraits{TypeId::I64, "i64", 1, 8, false},
    TypeTraits{TypeId::F64, "f64", 1, 8, false},
    TypeTraits{TypeId::IQ1_M, "iq1_m", 256, 56, true},
    TypeTraits{TypeId::BF16, "bf16", 1, 2, false,
               &quant::bf16_to_float, &quant::bf16_from_float, &quant::bf16_from_float, &quant::bf16_vec_dot, TypeId::F32},
    TypeTraits{TypeId::TQ1_0, "tq1_0", 256, 54, true},
    TypeTraits{TypeId::TQ2_0, "tq2_0", 256, 66, true},
    TypeTraits{TypeId::MXFP4, "mxfp4", 32, 17, true},
    TypeTraits{TypeId::FP8_E4M3_B128, "fp8_e4m3_b128", 128, 132, true,
               &quant::fp8_b128_to_float, &quant::fp8_b128_from_float_ref, &quant::fp8_b128_from_float_ref,
               &quant::fp8_b128_vec_dot, TypeId::F32},
};

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

}  // namespace

const TypeTraits* type_traits(uint32_t id) {
    for (const auto& t : kTypes)
        if (static_cast<uint32_t>(t.id) == id) return &t;
    return nullptr;
}

const TypeTraits& type_traits(TypeId id) {
    const TypeTraits* t = type_traits(static_cast<uint32_t>(id));
    assert(t && "TypeId without traits");
    return *t;
}

std::optional<TypeId> type_from_name(std::string_view name) {
    for (const auto& t : kTypes)
        if (iequals(t.name, name)) return t.id;
    return std::nullopt;
}

std::optional<uint64_t> type_nbytes(TypeId t, uint64_t n) {
    const TypeTraits& tr = type_traits(t);
    if (n % tr.block_size != 0) return std::nullopt;
    const uint64_t blocks = n / tr.block_size;
    if (blocks > std::numeric_limits<uint64_t>::max() / tr.type_size) return std::nullopt;
    return blocks * tr.type_size;
}

}  // namespace ds3
