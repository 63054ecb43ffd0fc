// Rules shared by the GGUF reader and writer, so that whatever the writer accepts the
// reader accepts too (and the other way round).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "runtime/gguf/gguf.h"

namespace ds3::gguf::detail {

// Arrays of arrays deeper than this are rejected: real files nest at most once, and a
// bound keeps a hostile file from recursing the reader off its stack.
inline constexpr int kMaxArrayDepth = 8;
// llama.cpp rejects tensor names of GGML_MAX_NAME (64) bytes or more; the writer enforces
// it so that our files stay readable there.
inline constexpr size_t kMaxTensorName = 63;

// Encoded size of a scalar value type; 0 for STRING and ARRAY (variable) and unknown ids.
inline uint64_t scalar_size(uint32_t t) {
    switch (static_cast<ValueType>(t)) {
        case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
        case ValueType::UINT16: case ValueType::INT16: return 2;
        case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
        case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: return 8;
        default: return 0;
    }
}

inline bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::FLOAT64); }

// Smallest number of bytes one element of type t takes in a file: a string is at least
// its u64 length, an array at least its u32 type and u64 count.
inline uint64_t min_encoded_size(uint32_t t) {
    if (t == static_cast<uint32_t>(ValueType::STRING)) return 8;
    if (t == static_cast<uint32_t>(ValueType::ARRAY)) return 12;
    return scalar_size(t);
}

inline bool is_pow2(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

// Checks a tensor's shape and type and computes its byte size. Returns the defect as a
// message ("dimension 1 is ...") or nullopt when the tensor is fine.
std::optional<std::string> check_tensor_shape(const std::vector<uint64_t>& ne, uint32_t type,
                                              uint64_t& nbytes);

std::string shape_string(const std::vector<uint64_t>& ne);

}  // namespace ds3::gguf::detail
