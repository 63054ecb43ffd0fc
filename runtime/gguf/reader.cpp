// GGUF reader: parses and validates a whole file (or in-memory image) up front, so that
// everything a caller gets afterwards (metadata, tensor infos, tensor_data views) is in
// bounds. Every defect becomes one Error("gguf", "<path>: ...") line.
#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/gguf/internal.h"

namespace ds3::gguf {

namespace detail {

std::string shape_string(const std::vector<uint64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(ne[i]);
    }
    return s + "]";
}

std::optional<std::string> check_tensor_shape(const std::vector<uint64_t>& ne, uint32_t type,
                                              uint64_t& nbytes) {
    if (ne.empty() || ne.size() > kMaxDims)
        return "n_dims is " + std::to_string(ne.size()) + ", expected 1 to " + std::to_string(kMaxDims);
    const TypeTraits* tr = type_traits(type);
    if (!tr) return "unknown tensor type " + std::to_string(type);
    // ggml keeps dimensions and element counts in int64_t, so both must fit there.
    constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    uint64_t n = 1;
    for (size_t i = 0; i < ne.size(); ++i) {
        if (ne[i] > kMax)
            return "dimension " + std::to_string(i) + " is " + std::to_string(ne[i]) + ", above 2^63-1";
        if (__builtin_mul_overflow(n, ne[i], &n) || n > kMax)
            return "shape " + shape_string(ne) + " has more than 2^63-1 elements";
    }
    if (ne[0] % tr->block_size != 0)
        return "ne[0] = " + std::to_string(ne[0]) + " is not a multiple of " +
               std::string(tr->name) + "'s block size " + std::to_string(tr->block_size);
    const auto bytes = type_nbytes(tr->id, n);
    if (!bytes) return "shape " + shape_string(ne) + " of type " + std::string(tr->name) + " overflows 64-bit byte size";
    nbytes = *bytes;
    return std::nullopt;
}

}  // namespace detail

namespace {

using detail::kMaxArrayDepth;

// A bounds-checked little-endian cursor over the image. `where_` describes what is being
// read (a key or tensor) so that errors can name it; it is only formatted on failure.
class Parser {
public:
    Parser(std::span<const uint8_t> bytes, const std::string& path) : b_(bytes), path_(path) {}

    [[noreturn]] void fail(const std::string& msg) const {
        throw Error("gguf", path_ + ": " + where() + msg);
    }

    uint64_t pos() const { return pos_; }
    uint64_t remaining() const { return b_.size() - pos_; }

    void need(uint64_t n, const char* what) const {
        if (n > remaining())
            fail("truncated: " + std::string(what) + " at offset " + std::to_string(pos_) + " needs " +
                 std::to_string(n) + " bytes, file has " + std::to_string(b_.size()));
    }

    template <typename T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, b_.data() + pos_, sizeof(T));  // hosts are little-endian (checked in parse)
        pos_ += sizeof(T);
        return v;
    }

    std::string read_string(const char* what) {
        const uint64_t len = read<uint64_t>(what);
        if (len > remaining())
            fail(std::string(what) + " at offset " + std::to_string(pos_ - 8) + " has length " +
                 std::to_string(len) + ", beyond the end of the file (" + std::to_string(remaining()) +
                 " bytes left)");
        std::string s(reinterpret_cast<const char*>(b_.data() + pos_), len);
        pos_ += len;
        return s;
    }

    Value read_value(uint32_t type, int depth) {
        if (!detail::valid_value_type(type)) fail("unknown value type " + std::to_string(type));
        Value v;
        v.type = static_cast<ValueType>(type);
        switch (v.type) {
            case ValueType::UINT8: v.data = uint64_t{read<uint8_t>("u8 value")}; break;
            case ValueType::INT8: v.data = int64_t{read<int8_t>("i8 value")}; break;
            case ValueType::UINT16: v.data = uint64_t{read<uint16_t>("u16 value")}; break;
            case ValueType::INT16: v.data = int64_t{read<int16_t>("i16 value")}; break;
            case ValueType::UINT32: v.data = uint64_t{read<uint32_t>("u32 value")}; break;
            case ValueType::INT32: v.data = int64_t{read<int32_t>("i32 value")}; break;
            case ValueType::UINT64: v.data = read<uint64_t>("u64 value"); break;
            case ValueType::INT64: v.data = read<int64_t>("i64 value"); break;
            case ValueType::FLOAT32: v.data = double{read<float>("f32 value")}; break;
            case ValueType::FLOAT64: v.data = read<double>("f64 value"); break;
            case ValueType::BOOL: v.data = read<uint8_t>("bool value") != 0; break;
            case ValueType::STRING: v.data = read_string("string value"); break;
            case ValueType::ARRAY: v.data = read_array(depth + 1); break;
        }
        return v;
    }

    Array read_array(int depth) {
        if (depth > kMaxArrayDepth)
            fail("arrays nested deeper than " + std::to_string(kMaxArrayDepth) + " levels");
        Array a;
        const uint32_t et = read<uint32_t>("array element type");
        if (!detail::valid_value_type(et)) fail("unknown array element type " + std::to_string(et));
        a.elem_type = static_cast<ValueType>(et);
        const uint64_t count = read<uint64_t>("array count");
        // Checked before reserving: a count the rest of the file cannot hold is a lie, and
        // trusting it would allocate whatever the file asks for.
        const uint64_t min = detail::min_encoded_size(et);
        if (count > remaining() / min)
            fail("array of " + std::to_string(count) + " " + std::string(value_type_name(a.elem_type)) +
                 " elements needs at least " + std::to_string(min) + " bytes each but only " +
                 std::to_string(remaining()) + " bytes are left in the file");
        a.items.reserve(count);
        for (uint64_t i = 0; i < count; ++i) a.items.push_back(read_value(et, depth));
        return a;
    }

    void skip_to(uint64_t p) { pos_ = p; }
    void set_where(std::string w) { where_ = std::move(w); }

private:
    std::string where() const { return where_.empty() ? "" : where_ + ": "; }
    std::span<const uint8_t> b_;
    const std::string& path_;
    uint64_t pos_ = 0;
    std::string where_;
};

}  // namespace

File File::open(const std::string& path) {
    File f;
    f.path_ = path;
    f.map_ = MappedFile(path, "gguf");
    f.bytes_ = f.map_.bytes();
    f.parse_all();
    return f;
}

File File::parse(std::span<const uint8_t> bytes, std::string name) {
    File f;
    f.path_ = std::move(name);
    f.bytes_ = bytes;
    f.parse_all();
    return f;
}

File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

void File::parse_all() {
    static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");
    Parser p(bytes_, path_);

    // --- header
    p.need(4, "magic");
    if (std::memcmp(bytes_.data(), "GGUF", 4) != 0) {
        std::string found;
        for (int i = 0; i < 4; ++i) {
            const uint8_t c = bytes_[i];
            if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
                found += static_cast<char>(c);
            } else {
                char hex[8];
                std::snprintf(hex, sizeof hex, "\\x%02x", c);
                found += hex;
            }
        }
        p.fail("bad magic \"" + found + "\", expected \"GGUF\"");
    }
    p.skip_to(4);
    version_ = p.read<uint32_t>("version");
    if (version_ == 1) p.fail("GGUF version 1 is not supported (expected 2 or 3)");
    if (version_ != 2 && version_ != 3) {
        if ((version_ & 0xffff) == 0 && version_ != 0)
            p.fail("version " + std::to_string(version_) + " looks like a big-endian GGUF, which is not supported");
        p.fail("unsupported GGUF version " + std::to_string(version_) + " (expected 2 or 3)");
    }
    const uint64_t n_tensors = p.read<uint64_t>("tensor count");
    const uint64_t n_kv = p.read<uint64_t>("metadata count");
    // Each key/value takes at least 13 bytes (key length, value type, one byte of value) and
    // each tensor info at least 32 (name length, n_dims, one dimension, type, offset).
    {
        const uint64_t rem = p.remaining();
        if (n_kv > rem / 13)
            p.fail("metadata count " + std::to_string(n_kv) + " cannot fit in the " + std::to_string(rem) +
                   " bytes left");
        if (n_tensors > rem / 32 || n_kv * 13 + n_tensors * 32 > rem)
            p.fail("tensor count " + std::to_string(n_tensors) + " cannot fit in the " + std::to_string(rem) +
                   " bytes left");
    }

    // --- metadata
    kvs_.reserve(n_kv);
    for (uint64_t i = 0; i < n_kv; ++i) {
        p.set_where("metadata entry " + std::to_string(i));
        KeyValue kv;
        kv.key = p.read_string("key");
        p.set_where("key '" + kv.key + "'");
        const uint32_t type = p.read<uint32_t>("value type");
        kv.value = p.read_value(type, 0);
        if (kv_index_.count(kv.key)) p.fail("duplicate key");
        kv_index_.emplace(kv.key, kvs_.size());
        kvs_.push_back(std::move(kv));
    }
    p.set_where("");

    alignment_ = kDefaultAlignment;
    if (const Value* a = find("general.alignment")) {
        if (a->type != ValueType::UINT32)
            p.fail("general.alignment: expected u32, found " + std::string(value_type_name(a->type)));
        const uint64_t al = std::get<uint64_t>(a->data);
        if (!detail::is_pow2(al))
            p.fail("general.alignment is " + std::to_string(al) + ", expected a non-zero power of two");
        alignment_ = al;
    }

    // --- tensor infos
    tensors_.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) {
        p.set_where("tensor info " + std::to_string(i));
        TensorInfo t;
        t.name = p.read_string("tensor name");
        p.set_where("tensor '" + t.name + "'");
        const uint32_t n_dims = p.read<uint32_t>("n_dims");
        if (n_dims == 0 || n_dims > kMaxDims)
            p.fail("n_dims is " + std::to_string(n_dims) + ", expected 1 to " + std::to_string(kMaxDims));
        t.ne.resize(n_dims);
        for (uint32_t d = 0; d < n_dims; ++d) t.ne[d] = p.read<uint64_t>("dimension");
        const uint32_t type = p.read<uint32_t>("tensor type");
        t.offset = p.read<uint64_t>("tensor offset");
        if (auto err = detail::check_tensor_shape(t.ne, type, t.nbytes)) p.fail(*err);
        t.type = static_cast<TypeId>(type);
        if (t.offset % alignment_ != 0)
            p.fail("offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                   std::to_string(alignment_));
        if (tensor_index_.count(t.name)) p.fail("duplicate tensor name");
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }
    p.set_where("");

    // --- data section: starts at the next multiple of the alignment after the infos.
    const uint64_t end_of_infos = p.pos();
    data_offset_ = end_of_infos + (alignment_ - end_of_infos % alignment_) % alignment_;
    const uint64_t size = bytes_.size();
    for (const TensorInfo& t : tensors_) {
        if (t.nbytes == 0) continue;
        uint64_t begin = 0, end = 0;
        if (__builtin_add_overflow(data_offset_, t.offset, &begin) ||
            __builtin_add_overflow(begin, t.nbytes, &end) || end > size) {
            p.set_where("tensor '" + t.name + "'");
            p.fail("data [" + std::to_string(t.offset) + ", +" + std::to_string(t.nbytes) +
                   ") from the data section at " + std::to_string(data_offset_) + " extends past the end of the file (" +
                   std::to_string(size) + " bytes)");
        }
    }
    // Overlapping tensors would let one tensor's writes show up in another's view.
    std::vector<const TensorInfo*> by_offset;
    by_offset.reserve(tensors_.size());
    for (const TensorInfo& t : tensors_)
        if (t.nbytes) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        const TensorInfo* a = by_offset[i - 1];
        const TensorInfo* b = by_offset[i];
        if (a->offset + a->nbytes > b->offset)
            p.fail("tensor '" + b->name + "' at offset " + std::to_string(b->offset) + " overlaps tensor '" +
                   a->name + "' [" + std::to_string(a->offset) + ", " + std::to_string(a->offset + a->nbytes) + ")");
    }
}

const Value* File::find(std::string_view key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kvs_[it->second].value;
}

namespace {
template <typename Fn>
decltype(auto) get_checked(const File& f, std::string_view key, Fn fn) {
    const Value* v = f.find(key);
    if (!v) throw Error("gguf", f.path() + ": missing key '" + std::string(key) + "'");
    try {
        return fn(*v);
    } catch (const Error& e) {
        throw Error("gguf", f.path() + ": key '" + std::string(key) + "': " + e.message());
    }
}
}  // namespace

uint64_t File::get_u64(std::string_view key) const {
    return get_checked(*this, key, [](const Value& v) { return v.as_u64(); });
}
int64_t File::get_i64(std::string_view key) const {
    return get_checked(*this, key, [](const Value& v) { return v.as_i64(); });
}
double File::get_f64(std::string_view key) const {
    return get_checked(*this, key, [](const Value& v) { return v.as_f64(); });
}
bool File::get_bool(std::string_view key) const {
    return get_checked(*this, key, [](const Value& v) { return v.as_bool(); });
}
const std::string& File::get_string(std::string_view key) const {
    return get_checked(*this, key, [](const Value& v) -> const std::string& { return v.as_string(); });
}
const Array& File::get_array(std::string_view key) const {
    return get_checked(*this, key, [](const Value& v) -> const Array& { return v.as_array(); });
}
uint64_t File::get_u64(std::string_view key, uint64_t def) const { return has(key) ? get_u64(key) : def; }
double File::get_f64(std::string_view key, double def) const { return has(key) ? get_f64(key) : def; }
bool File::get_bool(std::string_view key, bool def) const { return has(key) ? get_bool(key) : def; }
std::string File::get_string(std::string_view key, std::string_view def) const {
    return has(key) ? get_string(key) : std::string(def);
}

const TensorInfo* File::find_tensor(std::string_view name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::tensor(std::string_view name) const {
    const TensorInfo* t = find_tensor(name);
    if (!t) throw Error("gguf", path_ + ": no tensor named '" + std::string(name) + "'");
    return *t;
}

std::span<const uint8_t> File::tensor_data(const TensorInfo& t) const {
    if (t.nbytes == 0) return {};
    return bytes_.subspan(data_offset_ + t.offset, t.nbytes);
}

}  // namespace ds3::gguf
