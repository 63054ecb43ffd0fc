#include "convert/hf_checkpoint.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "quantize/float.h"
#include "runtime/error.h"

namespace ds3::hf {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

[[noreturn]] void fail(const std::string& msg) { throw Error("checkpoint", msg); }

std::string shape_str(const std::vector<uint64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

// Gives the pages backing `bytes` back to the kernel. The mapping is read-only and
// file-backed, so a later access simply faults them in again; this is what keeps the
// resident set of a 688 GB conversion at a few buffers instead of the whole release.
void drop_pages(std::span<const uint8_t> bytes) {
    if (bytes.empty()) return;
    static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    uintptr_t b = reinterpret_cast<uintptr_t>(bytes.data()) & ~(page - 1);
    uintptr_t e = reinterpret_cast<uintptr_t>(bytes.data() + bytes.size());
    madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);  // advisory: failure is harmless
}

uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

}  // namespace

uint64_t row_size(const std::vector<uint64_t>& shape) {
    uint64_t n = 1;
    for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
    return n;
}

Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

Checkpoint Checkpoint::open(const std::string& dir) {
    Checkpoint c;
    c.dir_ = dir;
    const fs::path index = fs::path(dir) / "model.safetensors.index.json";
    const fs::path single = fs::path(dir) / "model.safetensors";
    if (fs::exists(index)) {
        c.sharded_ = true;
        std::ifstream in(index, std::ios::binary);
        if (!in) fail(index.string() + ": cannot open");
        std::stringstream ss;
        ss << in.rdbuf();
        json j = json::parse(ss.str(), nullptr, false);
        if (j.is_discarded()) fail(index.string() + ": not valid JSON");
        auto wm = j.is_object() ? j.find("weight_map") : j.end();
        if (!j.is_object() || wm == j.end() || !wm->is_object())
            fail(index.string() + ": missing object 'weight_map'");
        std::map<std::string, size_t> shard_index;
        for (auto it = wm->begin(); it != wm->end(); ++it) {
            if (!it.value().is_string()) fail(index.string() + ": weight_map entry '" + it.key() + "' is not a string");
            const std::string file = it.value().get<std::string>();
            // Shards live beside the index: refuse names that would escape the directory.
            if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
                fail(index.string() + ": tensor " + it.key() + ": bad shard file name '" + file + "'");
            auto [s, inserted] = shard_index.emplace(file, c.shards_.size());
            if (inserted) {
                const fs::path sp = fs::path(dir) / file;
                if (!fs::is_regular_file(sp))
                    fail(sp.string() + ": shard is missing (model.safetensors.index.json names it for tensor " +
                         it.key() + ")");
                c.shards_.push_back({sp.string(), nullptr});
            }
            c.where_.emplace(it.key(), s->second);
        }
        if (c.shards_.empty()) fail(index.string() + ": weight_map is empty");
    } else if (fs::exists(single)) {
        c.shards_.push_back({single.string(), nullptr});
        for (const StTensor& t : c.shard(0, "").tensors()) c.where_.emplace(t.name, 0);
    } else {
        fail(dir + ": neither model.safetensors nor model.safetensors.index.json found");
    }
    return c;
}

std::vector<std::string> Checkpoint::names() const {
    std::vector<std::string> r;
    r.reserve(where_.size());
    for (const auto& [n, _] : where_) r.push_back(n);
    return r;
}

const std::string& Checkpoint::file_of(std::string_view name) const {
    auto it = where_.find(name);
    if (it == where_.end()) fail(dir_ + ": no tensor " + std::string(name) + " in this release");
    return shards_[it->second].path;
}

const SafetensorsFile& Checkpoint::shard(size_t i, std::string_view wanted_by) {
    Shard& s = shards_[i];
    if (!s.file) {
        if (!fs::is_regular_file(s.path))
            fail(s.path + ": shard is missing" +
                 (wanted_by.empty() ? std::string() : " (needed for tensor " + std::string(wanted_by) + ")"));
        s.file = std::make_unique<SafetensorsFile>(SafetensorsFile::open(s.path));
    }
    return *s.file;
}

const StTensor& Checkpoint::tensor(std::string_view name) {
    auto it = where_.find(name);
    if (it == where_.end()) fail(dir_ + ": no tensor " + std::string(name) + " in this release");
    const SafetensorsFile& f = shard(it->second, name);
    const StTensor* t = f.find(name);
    if (!t)
        fail(f.path() + ": tensor " + std::string(name) +
             " is named by model.safetensors.index.json but absent from the shard");
    return *t;
}

void Checkpoint::set_fp8_block(uint32_t block_out, uint32_t block_in) {
    if (block_out == 0 || block_in == 0) fail("FP8 block size must be positive");
    block_out_ = block_out;
    block_in_ = block_in;
    scale_cache_name_.clear();
}

const std::vector<float>& Checkpoint::scales_for(std::string_view name, const StTensor& w) {
    const std::string sname = std::string(name) + "_scale_inv";
    if (scale_cache_name_ == sname) return scale_cache_;
    if (w.shape.size() != 2)
        fail(file_of(name) + ": tensor " + std::string(name) + ": FP8 weight must be 2-D, found shape " +
             shape_str(w.shape));
    if (!has(sname))
        fail(file_of(name) + ": tensor " + std::string(name) + " is F8_E4M3 but " + sname + " is missing");
    const StTensor& s = tensor(sname);
    const std::vector<uint64_t> want = {(w.shape[0] + block_out_ - 1) / block_out_,
                                        (w.shape[1] + block_in_ - 1) / block_in_};
    if (s.shape != want)
        fail(file_of(sname) + ": tensor " + sname + ": shape " + shape_str(s.shape) + " but " +
             std::string(name) + " " + shape_str(w.shape) + " in " + std::to_string(block_out_) + "x" +
             std::to_string(block_in_) + " blocks needs " + shape_str(want));
    if (s.dtype == DType::F8_E4M3)
        fail(file_of(sname) + ": tensor " + sname + ": scales must be a float type other than F8_E4M3");
    scale_cache_.assign(s.n_elements(), 0.0f);
    to_f32(s, scale_cache_);  // throws for a non-float dtype
    scale_cache_name_ = sname;
    return scale_cache_;
}

void Checkpoint::read_rows_f32(std::string_view name, uint64_t row0, uint64_t n_rows, std::span<float> out) {
    const StTensor& t = tensor(name);
    const uint64_t rows = t.shape.empty() ? 1 : t.shape[0];
    const uint64_t rs = row_size(t.shape);
    if (row0 > rows || n_rows > rows - row0)
        fail(file_of(name) + ": tensor " + std::string(name) + ": rows [" + std::to_string(row0) + ", " +
             std::to_string(row0 + n_rows) + ") outside its " + std::to_string(rows) + " rows");
    if (out.size() != n_rows * rs)
        fail("tensor " + std::string(name) + ": output holds " + std::to_string(out.size()) + " floats, the rows need " +
             std::to_string(n_rows * rs));
    const size_t es = dtype_size(t.dtype);
    const std::span<const uint8_t> bytes = t.data.subspan(row0 * rs * es, n_rows * rs * es);
    const uint8_t* p = bytes.data();
    const uint64_t n = n_rows * rs;

    switch (t.dtype) {
    case DType::F8_E4M3: {
        const std::vector<float>& sc = scales_for(name, t);
        const uint64_t sc_cols = (rs + block_in_ - 1) / block_in_;
        for (uint64_t r = 0; r < n_rows; ++r) {
            const float* srow = sc.data() + ((row0 + r) / block_out_) * sc_cols;
            const uint8_t* src = p + r * rs;
            float* dst = out.data() + r * rs;
            for (uint64_t c = 0; c < rs; ++c) dst[c] = fp8_e4m3_to_f32(src[c]) * srow[c / block_in_];
        }
        break;
    }
    case DType::BF16:
        for (uint64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(load_u16(p + 2 * i));
        break;
    case DType::F16:
        for (uint64_t i = 0; i < n; ++i) out[i] = f16_to_f32(load_u16(p + 2 * i));
        break;
    case DType::F32:
        std::copy_n(p, n * 4, reinterpret_cast<uint8_t*>(out.data()));
        break;
    case DType::F64:
        for (uint64_t i = 0; i < n; ++i) {
            double d;
            std::copy_n(p + 8 * i, 8, reinterpret_cast<uint8_t*>(&d));
            out[i] = static_cast<float>(d);
        }
        break;
    default:
        fail(file_of(name) + ": tensor " + std::string(name) + ": dtype " + std::string(dtype_name(t.dtype)) +
             " is not a float type");
    }
    drop_pages(bytes);
}

std::vector<float> Checkpoint::read_f32(std::string_view name) {
    const StTensor& t = tensor(name);
    std::vector<float> out(t.n_elements());
    read_rows_f32(name, 0, t.shape.empty() ? 1 : t.shape[0], out);
    return out;
}

}  // namespace ds3::hf
