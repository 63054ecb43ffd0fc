// GGUF v3: the one container ds3 reads and writes. Layout (little-endian):
//   magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
//   n_kv × (string key, u32 value type, value),
//   n_tensors × (string name, u32 n_dims, n_dims × u64 ne, u32 type, u64 offset),
//   padding to general.alignment (default 32), then tensor data; each tensor's offset
//   is relative to the start of the data section and a multiple of the alignment.
// A string is u64 length + bytes (no terminator); an array is u32 element type +
// u64 count + elements (arrays of arrays allowed).
//
// File (reader): mmaps the file and validates everything before returning, so that
// tensor_data() views are always in bounds; bad input throws ds3::Error("gguf", ...).
// Writer: streams one tensor at a time to a temporary file and renames it at finish();
// it computes each tensor's xxh3-64 while writing and stores them under
// "ds3.checksum.xxh3_64" (u64 array, in tensor order), patched into the header at the end.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "quantize/types.h"
#include "runtime/mmap.h"

namespace ds3::gguf {

inline constexpr uint32_t kVersion = 3;
inline constexpr uint64_t kDefaultAlignment = 32;
inline constexpr uint32_t kMaxDims = 4;
inline constexpr std::string_view kChecksumKey = "ds3.checksum.xxh3_64";

enum class ValueType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
    BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
std::string_view value_type_name(ValueType t);

struct Value;
struct Array {
    ValueType elem_type = ValueType::UINT8;
    std::vector<Value> items;
};

// One metadata value. Integers are held widened (u64 / i64), floats as double, and the
// declared GGUF type is kept so a value is written back with the type it was read with.
struct Value {
    ValueType type = ValueType::UINT8;
    std::variant<uint64_t, int64_t, double, bool, std::string, Array> data;

    static Value u8(uint8_t v) { return {ValueType::UINT8, uint64_t{v}}; }
    static Value i8(int8_t v) { return {ValueType::INT8, int64_t{v}}; }
    static Value u16(uint16_t v) { return {ValueType::UINT16, uint64_t{v}}; }
    static Value i16(int16_t v) { return {ValueType::INT16, int64_t{v}}; }
    static Value u32(uint32_t v) { return {ValueType::UINT32, uint64_t{v}}; }
    static Value i32(int32_t v) { return {ValueType::INT32, int64_t{v}}; }
    static Value u64(uint64_t v) { return {ValueType::UINT64, v}; }
    static Value i64(int64_t v) { return {ValueType::INT64, v}; }
    static Value f32(float v) { return {ValueType::FLOAT32, double{v}}; }
    static Value f64(double v) { return {ValueType::FLOAT64, v}; }
    static Value boolean(bool v) { return {ValueType::BOOL, v}; }
    static Value str(std::string v) { return {ValueType::STRING, std::move(v)}; }
    static Value array(ValueType elem, std::vector<Value> items) {
        return {ValueType::ARRAY, Array{elem, std::move(items)}};
    }
    static Value strings(const std::vector<std::string>& v);
    static Value i32s(const std::vector<int32_t>& v);
    static Value f32s(const std::vector<float>& v);

    bool is_integer() const;
    bool is_float() const { return type == ValueType::FLOAT32 || type == ValueType::FLOAT64; }
    // Checked accessors: throw Error("gguf", "key K: expected ..., found ...") via the
    // File getters below, which know the key; these throw with a generic message.
    uint64_t as_u64() const;  // any non-negative integer
    int64_t as_i64() const;   // any integer that fits
    double as_f64() const;    // any integer or float
    bool as_bool() const;
    const std::string& as_string() const;
    const Array& as_array() const;
};

struct KeyValue {
    std::string key;
    Value value;
};

struct TensorInfo {
    std::string name;
    std::vector<uint64_t> ne;  // ggml order: ne[0] is the contiguous (fastest) dimension
    TypeId type = TypeId::F32;
    uint64_t offset = 0;  // from the start of the data section
    uint64_t nbytes = 0;  // derived from ne and type
    uint64_t n_elements() const;
};

class File {
public:
    // Maps and validates `path`. Throws Error("gguf", "<path>: ...") on any defect.
    static File open(const std::string& path);
    // Validates an in-memory image (the fuzz target and tests use this). The bytes must
    // outlive the File.
    static File parse(std::span<const uint8_t> bytes, std::string name = "<memory>");

    File(File&&) noexcept;
    File& operator=(File&&) noexcept;
    ~File();

    const std::string& path() const { return path_; }
    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }  // absolute, in the file
    uint64_t file_size() const { return bytes_.size(); }

    const std::vector<KeyValue>& metadata() const { return kvs_; }
    const Value* find(std::string_view key) const;  // nullptr when absent
    bool has(std::string_view key) const { return find(key) != nullptr; }
    // Typed getters: throw Error naming the key when absent or of the wrong type.
    uint64_t get_u64(std::string_view key) const;
    int64_t get_i64(std::string_view key) const;
    double get_f64(std::string_view key) const;
    bool get_bool(std::string_view key) const;
    const std::string& get_string(std::string_view key) const;
    const Array& get_array(std::string_view key) const;
    // Same, with a default when absent (still throws on a wrong type).
    uint64_t get_u64(std::string_view key, uint64_t def) const;
    double get_f64(std::string_view key, double def) const;
    bool get_bool(std::string_view key, bool def) const;
    std::string get_string(std::string_view key, std::string_view def) const;

    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const TensorInfo* find_tensor(std::string_view name) const;  // nullptr when absent
    const TensorInfo& tensor(std::string_view name) const;       // throws when absent
    // Zero-copy view of a tensor's bytes in the mapping.
    std::span<const uint8_t> tensor_data(const TensorInfo& t) const;

private:
    File() = default;
    void parse_all();

    std::string path_;
    std::span<const uint8_t> bytes_;
    MappedFile map_;  // empty for parse()
    uint32_t version_ = 0;
    uint64_t alignment_ = kDefaultAlignment;
    uint64_t data_offset_ = 0;
    std::vector<KeyValue> kvs_;
    std::map<std::string, size_t, std::less<>> kv_index_;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Streaming writer. Usage:
//   Writer w(out_path);
//   w.set_kv("general.architecture", Value::str("deepseek2"));  ...
//   w.add_tensor("token_embd.weight", {n_embd, n_vocab}, TypeId::F32); ...  (all of them)
//   w.write_header();
//   for each tensor, in the order added: w.write_tensor_data(bytes) (may be called in
//     several chunks per tensor with begin_tensor()/write_chunk()/end_tensor())
//   w.finish();   // pads, patches checksums, fsyncs, renames to out_path
// Destroying a Writer that has not finished removes the temporary file, so a failure
// or Ctrl-C (see runtime/signals) never leaves a partial file at out_path.
class Writer {
public:
    explicit Writer(std::string out_path, uint64_t alignment = kDefaultAlignment);
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;
    ~Writer();

    void set_kv(std::string key, Value value);  // replaces an existing key
    void add_tensor(std::string name, std::vector<uint64_t> ne, TypeId type);
    void set_checksums(bool on) { checksums_ = on; }  // default on

    void write_header();
    void write_tensor_data(std::span<const uint8_t> bytes);  // a whole tensor
    void begin_tensor();
    void write_chunk(std::span<const uint8_t> bytes);
    void end_tensor();
    void finish();

    const std::string& temp_path() const { return tmp_path_; }
    uint64_t bytes_written() const { return written_; }
    const std::vector<TensorInfo>& tensors() const { return tensors_; }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::string out_path_;
    std::string tmp_path_;
    uint64_t alignment_;
    bool checksums_ = true;
    uint64_t written_ = 0;
    std::vector<KeyValue> kvs_;
    std::vector<TensorInfo> tensors_;
};

// xxh3-64 of a tensor's bytes, as stored under kChecksumKey.
uint64_t checksum(std::span<const uint8_t> bytes);

}  // namespace ds3::gguf
