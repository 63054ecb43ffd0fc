#include "convert/safetensors_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace ds3::hf {

namespace {
[[noreturn]] void fail(const std::string& msg) { throw Error("safetensors", msg); }
}  // namespace

uint64_t decl_nbytes(const StDecl& d) {
    uint64_t n = dtype_size(d.dtype);
    for (uint64_t x : d.shape) n *= x;
    return n;
}

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<StDecl> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : path_(std::move(path)), tmp_(path_ + ".tmp"), decls_(std::move(tensors)) {
    nlohmann::ordered_json h;
    if (!metadata.empty()) h["__metadata__"] = metadata;
    uint64_t off = 0;
    for (const StDecl& d : decls_) {
        if (h.contains(d.name)) fail(path_ + ": duplicate tensor " + d.name);
        const uint64_t n = decl_nbytes(d);
        h[d.name] = {{"dtype", std::string(dtype_name(d.dtype))}, {"shape", d.shape}, {"data_offsets", {off, off + n}}};
        off += n;
    }
    std::string text = h.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) fail("cannot create " + tmp_ + ": " + std::strerror(errno));
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(uint64_t(text.size()) >> (8 * i));
    if (std::fwrite(len, 1, 8, f_) != 8 || std::fwrite(text.data(), 1, text.size(), f_) != text.size())
        fail("write " + tmp_ + ": " + std::strerror(errno));
}

SafetensorsWriter::~SafetensorsWriter() {
    if (f_) {
        std::fclose(f_);
        ::unlink(tmp_.c_str());
    }
}

void SafetensorsWriter::write(std::span<const uint8_t> bytes) {
    if (next_ >= decls_.size()) fail(path_ + ": more tensors written than declared");
    const StDecl& d = decls_[next_];
    if (bytes.size() != decl_nbytes(d))
        fail(path_ + ": tensor " + d.name + ": " + std::to_string(bytes.size()) + " bytes written, " +
             std::to_string(decl_nbytes(d)) + " declared");
    if (std::fwrite(bytes.data(), 1, bytes.size(), f_) != bytes.size())
        fail("write " + tmp_ + ": " + std::strerror(errno));
    ++next_;
}

void SafetensorsWriter::finish() {
    if (next_ != decls_.size())
        fail(path_ + ": " + std::to_string(next_) + " of " + std::to_string(decls_.size()) + " tensors written");
    const bool ok = std::fflush(f_) == 0;
    std::fclose(f_);
    f_ = nullptr;
    if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp_.c_str());
        fail("cannot write " + path_ + ": " + std::strerror(e));
    }
}

}  // namespace ds3::hf
