// The one table of tensor element types. Ids below 64 are ggml's (same id, same block
// layout, so files move both ways with llama.cpp); formats of our own take ids from the
// private range documented in docs/gguf.md. Block formats store `block_size` elements in
// `type_size` bytes; plain types have block_size 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ds3 {

enum class TypeId : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    // Private range (docs/gguf.md "Private types"): ids >= 1000 are never ggml's.
    FP8_E4M3_B128 = 1000,  // FP8 e4m3, 128-element blocks each with its f32 tile scale
};

// Row kernels of a type (quantize/formats.h has the formats' own). `n` counts elements and
// is a whole number of blocks; rows are independent, so callers split work by rows.
using ToFloatFn = void (*)(const void* blocks, float* out, int64_t n);
// `importance` (nullable): one non-negative weight per element of the row (per column of
// the matrix, e.g. from an imatrix); the quantiser minimises Σ importance·(x - x̂)².
using FromFloatFn = void (*)(const float* in, void* blocks, int64_t n, const float* importance);
// Σ w_row[i]·act_row[i] with act_row in the type's vec_dot_type.
using VecDotFn = float (*)(int64_t n, const void* w_row, const void* act_row);

struct TypeTraits {
    TypeId id;
    std::string_view name;  // ggml's spelling: "f32", "q4_K", ...
    uint32_t block_size;    // elements per block
    uint32_t type_size;     // bytes per block
    bool quantized;
    // Kernels; nullptr where the type has none (the ggml types we only name, I8, ...).
    ToFloatFn to_float = nullptr;          // dequantise (scalar reference)
    FromFloatFn from_float_ref = nullptr;  // scalar reference quantiser
    FromFloatFn from_float = nullptr;      // same bytes as from_float_ref, SIMD where it exists
    VecDotFn vec_dot = nullptr;            // best kernel for this CPU, chosen at first call
    TypeId vec_dot_type = TypeId::F32;     // the activation format vec_dot pairs with
};

// Traits of a known type, or nullptr for an id we do not know (a file from a newer
// writer, or garbage): callers turn that into an Error naming the tensor.
const TypeTraits* type_traits(uint32_t id);
const TypeTraits& type_traits(TypeId id);
std::optional<TypeId> type_from_name(std::string_view name);  // case-insensitive

// Bytes of n elements of type t; nullopt when n is not a whole number of blocks or the
// size overflows 64 bits.
std::optional<uint64_t> type_nbytes(TypeId t, uint64_t n);

}  // namespace ds3
