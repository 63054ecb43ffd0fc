// Safetensors reader: u64 header length, a JSON header {name: {dtype, shape,
// data_offsets}, "__metadata__": {...}}, then the data. The file is mmapped and every
// tensor's extent is validated against the file before a view is handed out.
// Shapes are PyTorch's (row-major, shape[0] slowest).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/mmap.h"

namespace ds3::hf {

enum class DType { F8_E4M3, BF16, F16, F32, F64, I8, I16, I32, I64, U8, BOOL };
std::string_view dtype_name(DType t);
size_t dtype_size(DType t);

struct StTensor {
    std::string name;
    DType dtype = DType::F32;
    std::vector<uint64_t> shape;      // PyTorch order
    std::span<const uint8_t> data;    // view into the mapping
    uint64_t n_elements() const;
};

class SafetensorsFile {
public:
    // Throws Error("safetensors", "<path>: ...") on any defect.
    static SafetensorsFile open(const std::string& path);
    SafetensorsFile(SafetensorsFile&&) noexcept;
    SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
    ~SafetensorsFile();

    const std::string& path() const { return path_; }
    const std::vector<StTensor>& tensors() const { return tensors_; }
    const StTensor* find(std::string_view name) const;
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

private:
    SafetensorsFile() = default;
    std::string path_;
    MappedFile map_;
    std::vector<StTensor> tensors_;
    std::map<std::string, size_t, std::less<>> index_;
    std::map<std::string, std::string> metadata_;
};

// Element i of a float tensor (F8_E4M3, BF16, F16, F32, F64) as f32.
// Whole-tensor conversion, FP8 block dequantisation and sharded checkpoints are in
// convert/hf_checkpoint.h.
void to_f32(const StTensor& t, std::span<float> out);

}  // namespace ds3::hf
