// Streaming safetensors writer (for `ds3 synth` and tests): the header is written from
// the declared tensors up front, then each tensor's bytes in declaration order, so a
// checkpoint of any size is written with one tensor in memory. The file appears under
// its name only at finish() (temporary name + rename).
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "convert/safetensors.h"

namespace ds3::hf {

struct StDecl {
    std::string name;
    DType dtype = DType::F32;
    std::vector<uint64_t> shape;  // PyTorch order
};

class SafetensorsWriter {
public:
    SafetensorsWriter(std::string path, std::vector<StDecl> tensors,
                      const std::map<std::string, std::string>& metadata = {});
    SafetensorsWriter(const SafetensorsWriter&) = delete;
    SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
    ~SafetensorsWriter();  // removes the temporary file unless finish() ran

    // The next declared tensor's bytes (exactly n_elements * dtype_size).
    void write(std::span<const uint8_t> bytes);
    void finish();

private:
    std::string path_, tmp_;
    std::vector<StDecl> decls_;
    size_t next_ = 0;
    std::FILE* f_ = nullptr;
};

// Bytes of a declared tensor.
uint64_t decl_nbytes(const StDecl& d);

}  // namespace ds3::hf
