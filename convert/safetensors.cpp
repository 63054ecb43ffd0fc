#include "convert/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "quantize/float.h"
#include "runtime/error.h"

namespace ds3::hf {

namespace {

using json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; a larger one is garbage
// and would make us parse an arbitrarily large JSON document.
constexpr uint64_t kMaxHeader = 100ull << 20;

struct DTypeInfo {
    DType t;
    std::string_view name;
    size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::BF16, "BF16", 2}, {DType::F16, "F16", 2},
    {DType::F32, "F32", 4},         {DType::F64, "F64", 8},   {DType::I8, "I8", 1},
    {DType::I16, "I16", 2},         {DType::I32, "I32", 4},   {DType::I64, "I64", 8},
    {DType::U8, "U8", 1},           {DType::BOOL, "BOOL", 1},
};

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
    throw Error("safetensors", path + ": " + msg);
}

uint64_t read_u64le(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

}  // namespace

std::string_view dtype_name(DType t) {
    for (const auto& d : kDTypes)
        if (d.t == t) return d.name;
    return "?";
}

size_t dtype_size(DType t) {
    for (const auto& d : kDTypes)
        if (d.t == t) return d.size;
    return 0;
}

uint64_t StTensor::n_elements() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;  // validated against overflow at open()
    return n;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::string& path) {
    SafetensorsFile f;
    f.path_ = path;
    f.map_ = MappedFile(path, "safetensors");
    const std::span<const uint8_t> bytes = f.map_.bytes();
    if (bytes.size() < 8)
        fail(path, "file has " + std::to_string(bytes.size()) + " bytes, too short for the 8-byte header length");
    const uint64_t hlen = read_u64le(bytes.data());
    if (hlen > kMaxHeader) fail(path, "header length " + std::to_string(hlen) + " exceeds the 100 MB limit");
    if (hlen > bytes.size() - 8)
        fail(path, "header length " + std::to_string(hlen) + " runs past the end of the file (" +
                       std::to_string(bytes.size()) + " bytes)");
    const char* hbeg = reinterpret_cast<const char*>(bytes.data() + 8);
    json header = json::parse(hbeg, hbeg + hlen, nullptr, /*allow_exceptions=*/false);
    if (header.is_discarded()) fail(path, "header is not valid JSON");
    if (!header.is_object()) fail(path, "header is not a JSON object");

    const uint64_t data_start = 8 + hlen;
    const uint64_t data_size = bytes.size() - data_start;

    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& name = it.key();
        const json& v = it.value();
        if (name == "__metadata__") {
            if (!v.is_object()) fail(path, "__metadata__ is not an object");
            for (auto m = v.begin(); m != v.end(); ++m) {
                if (!m.value().is_string()) fail(path, "__metadata__ value '" + m.key() + "' is not a string");
                f.metadata_[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        const std::string where = "tensor " + name + ": ";
        if (!v.is_object()) fail(path, where + "entry is not an object");
        auto dt = v.find("dtype");
        auto sh = v.find("shape");
        auto off = v.find("data_offsets");
        if (dt == v.end() || !dt->is_string()) fail(path, where + "missing or non-string 'dtype'");
        if (sh == v.end() || !sh->is_array()) fail(path, where + "missing or non-array 'shape'");
        if (off == v.end() || !off->is_array() || off->size() != 2)
            fail(path, where + "'data_offsets' must be an array of 2 integers");

        StTensor t;
        t.name = name;
        const std::string dts = dt->get<std::string>();
        const DTypeInfo* info = nullptr;
        for (const auto& d : kDTypes)
            if (d.name == dts) info = &d;
        if (!info) fail(path, where + "unsupported dtype '" + dts + "'");
        t.dtype = info->t;

        uint64_t n = 1;
        bool overflow = false;
        for (const json& d : *sh) {
            if (!d.is_number_unsigned()) fail(path, where + "shape entries must be non-negative integers");
            const uint64_t x = d.get<uint64_t>();
            t.shape.push_back(x);
            if (x != 0 && n > std::numeric_limits<uint64_t>::max() / x) overflow = true;
            else n *= x;
        }
        if (overflow || n > std::numeric_limits<uint64_t>::max() / info->size)
            fail(path, where + "shape element count overflows 64 bits");
        const uint64_t want = n * info->size;

        for (const json& o : *off)
            if (!o.is_number_unsigned()) fail(path, where + "'data_offsets' must be non-negative integers");
        const uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
        if (b > e) fail(path, where + "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "] are reversed");
        if (e > data_size)
            fail(path, where + "data ends at " + std::to_string(e) + " but the data section has " +
                           std::to_string(data_size) + " bytes");
        if (e - b != want)
            fail(path, where + "shape and dtype " + dts + " need " + std::to_string(want) +
                           " bytes but data_offsets span " + std::to_string(e - b));
        t.data = bytes.subspan(data_start + b, e - b);
        f.tensors_.push_back(std::move(t));
    }

    // Order by position in the file (what a sequential reader wants), then reject overlaps:
    // two tensors sharing bytes would make one an alias of the other.
    std::sort(f.tensors_.begin(), f.tensors_.end(),
              [](const StTensor& a, const StTensor& b) { return a.data.data() < b.data.data(); });
    for (size_t i = 1; i < f.tensors_.size(); ++i) {
        const StTensor& p = f.tensors_[i - 1];
        const StTensor& c = f.tensors_[i];
        if (p.data.data() + p.data.size() > c.data.data() && !c.data.empty() && !p.data.empty())
            fail(path, "tensors " + p.name + " and " + c.name + " overlap");
    }
    for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_.emplace(f.tensors_[i].name, i);
    return f;
}

const StTensor* SafetensorsFile::find(std::string_view name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

void to_f32(const StTensor& t, std::span<float> out) {
    const uint64_t n = t.n_elements();
    if (out.size() != n)
        throw Error("safetensors", "tensor " + t.name + ": output holds " + std::to_string(out.size()) +
                                       " floats but the tensor has " + std::to_string(n));
    const uint8_t* p = t.data.data();
    switch (t.dtype) {
    case DType::F8_E4M3:
        for (uint64_t i = 0; i < n; ++i) out[i] = fp8_e4m3_to_f32(p[i]);
        return;
    case DType::BF16:
        for (uint64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8)));
        return;
    case DType::F16:
        for (uint64_t i = 0; i < n; ++i) out[i] = f16_to_f32(static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8)));
        return;
    case DType::F32:
        std::memcpy(out.data(), p, n * 4);  // little-endian host assumed throughout ds3
        return;
    case DType::F64:
        for (uint64_t i = 0; i < n; ++i) {
            double d;
            std::memcpy(&d, p + 8 * i, 8);
            out[i] = static_cast<float>(d);
        }
        return;
    default:
        throw Error("safetensors", "tensor " + t.name + ": dtype " + std::string(dtype_name(t.dtype)) +
                                       " is not a float type");
    }
}

}  // namespace ds3::hf
