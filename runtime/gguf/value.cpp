// Metadata values: names of the value types and the checked accessors.
#include <limits>
#include <string>

#include <xxhash.h>

#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

namespace ds3::gguf {

std::string_view value_type_name(ValueType t) {
    switch (t) {
        case ValueType::UINT8: return "u8";
        case ValueType::INT8: return "i8";
        case ValueType::UINT16: return "u16";
        case ValueType::INT16: return "i16";
        case ValueType::UINT32: return "u32";
        case ValueType::INT32: return "i32";
        case ValueType::FLOAT32: return "f32";
        case ValueType::BOOL: return "bool";
        case ValueType::STRING: return "string";
        case ValueType::ARRAY: return "array";
        case ValueType::UINT64: return "u64";
        case ValueType::INT64: return "i64";
        case ValueType::FLOAT64: return "f64";
    }
    return "unknown";
}

Value Value::strings(const std::vector<std::string>& v) {
    std::vector<Value> items;
    items.reserve(v.size());
    for (const auto& s : v) items.push_back(Value::str(s));
    return array(ValueType::STRING, std::move(items));
}

Value Value::i32s(const std::vector<int32_t>& v) {
    std::vector<Value> items;
    items.reserve(v.size());
    for (int32_t x : v) items.push_back(Value::i32(x));
    return array(ValueType::INT32, std::move(items));
}

Value Value::f32s(const std::vector<float>& v) {
    std::vector<Value> items;
    items.reserve(v.size());
    for (float x : v) items.push_back(Value::f32(x));
    return array(ValueType::FLOAT32, std::move(items));
}

bool Value::is_integer() const {
    switch (type) {
        case ValueType::UINT8: case ValueType::INT8: case ValueType::UINT16: case ValueType::INT16:
        case ValueType::UINT32: case ValueType::INT32: case ValueType::UINT64: case ValueType::INT64:
            return true;
        default: return false;
    }
}

namespace {
[[noreturn]] void wrong_type(std::string_view expected, const Value& v) {
    throw Error("gguf", "expected " + std::string(expected) + ", found " +
                            std::string(value_type_name(v.type)));
}

// A Value built by hand may pair a type with the wrong alternative; that is reported as
// an Error like any other mismatch instead of std::bad_variant_access.
template <typename T>
const T& held(const Value& v, std::string_view expected) {
    const T* p = std::get_if<T>(&v.data);
    if (!p) throw Error("gguf", "expected " + std::string(expected) + ", found a " +
                                    std::string(value_type_name(v.type)) + " holding another kind of value");
    return *p;
}

}  // namespace

uint64_t Value::as_u64() const {
    if (!is_integer()) wrong_type("a non-negative integer", *this);
    if (const auto* u = std::get_if<uint64_t>(&data)) return *u;
    const int64_t i = held<int64_t>(*this, "an integer");
    if (i < 0) throw Error("gguf", "expected a non-negative integer, found " + std::to_string(i));
    return static_cast<uint64_t>(i);
}

int64_t Value::as_i64() const {
    if (!is_integer()) wrong_type("an integer", *this);
    if (const auto* i = std::get_if<int64_t>(&data)) return *i;
    const uint64_t u = held<uint64_t>(*this, "an integer");
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw Error("gguf", "expected an integer that fits in i64, found " + std::to_string(u));
    return static_cast<int64_t>(u);
}

double Value::as_f64() const {
    if (is_float()) return held<double>(*this, "a number");
    if (!is_integer()) wrong_type("a number", *this);
    if (const auto* i = std::get_if<int64_t>(&data)) return static_cast<double>(*i);
    return static_cast<double>(held<uint64_t>(*this, "a number"));
}

bool Value::as_bool() const {
    if (type != ValueType::BOOL) wrong_type("bool", *this);
    return held<bool>(*this, "bool");
}

const std::string& Value::as_string() const {
    if (type != ValueType::STRING) wrong_type("string", *this);
    return held<std::string>(*this, "string");
}

const Array& Value::as_array() const {
    if (type != ValueType::ARRAY) wrong_type("array", *this);
    return held<Array>(*this, "array");
}

uint64_t TensorInfo::n_elements() const {
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;  // validated not to overflow by the reader and the writer
    return n;
}

uint64_t checksum(std::span<const uint8_t> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

}  // namespace ds3::gguf
