// Read-only memory mapping of a whole file (RAII). Used by the GGUF reader and the
// safetensors reader; an empty file maps to an empty span.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace ds3 {

class MappedFile {
public:
    MappedFile() = default;
    // Throws Error(component, "<path>: <strerror>") when the file cannot be opened/mapped.
    MappedFile(const std::string& path, const char* component);
    MappedFile(MappedFile&& o) noexcept;
    MappedFile& operator=(MappedFile&& o) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    ~MappedFile();

    std::span<const uint8_t> bytes() const { return {static_cast<const uint8_t*>(addr_), size_}; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    void release();
    std::string path_;
    void* addr_ = nullptr;
    size_t size_ = 0;
};

}  // namespace ds3
