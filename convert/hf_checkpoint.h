// A Hugging Face release directory as one set of named tensors: a single
// model.safetensors, or shards listed by model.safetensors.index.json ("weight_map":
// tensor -> shard file). Shards are mapped lazily, on the first tensor read from them.
//
// Reads give f32 whatever the stored dtype: BF16/F16/F32/F64 converted, FP8 e4m3
// dequantised with its `<name>_scale_inv` block scales (one f32 per block of
// block_out x block_in elements, [ceil(rows/block_out), ceil(cols/block_in)], partial
// blocks at the edges included). Reads go by row ranges so that a caller can stream a
// tensor of any size through a small buffer; the pages a read touched are handed back to
// the kernel afterwards, so resident memory stays near the caller's buffers however
// large the checkpoint is.
//
// Errors are one line naming the file and the tensor: Error("checkpoint", ...) for
// index-level defects (missing shard, tensor named by the index but absent from its
// shard), Error("safetensors", ...) for a damaged file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "convert/safetensors.h"

namespace ds3::hf {

class Checkpoint {
public:
    // Opens `dir`; checks the index and that every shard it names exists (shard headers
    // are read later, on demand). Throws Error("checkpoint", ...).
    static Checkpoint open(const std::string& dir);
    Checkpoint(Checkpoint&&) noexcept;
    Checkpoint& operator=(Checkpoint&&) noexcept;
    ~Checkpoint();

    const std::string& dir() const { return dir_; }
    bool sharded() const { return sharded_; }
    size_t n_shards() const { return shards_.size(); }

    // Every tensor name of the release, sorted.
    std::vector<std::string> names() const;
    bool has(std::string_view name) const { return where_.find(name) != where_.end(); }
    // Path of the file holding `name` (throws when the release has no such tensor).
    const std::string& file_of(std::string_view name) const;

    // The stored tensor (opens its shard). Throws when the shard lacks it.
    const StTensor& tensor(std::string_view name);
    std::vector<uint64_t> shape(std::string_view name) { return tensor(name).shape; }

    // FP8 scale block (default 128 x 128, from quantization_config.weight_block_size).
    void set_fp8_block(uint32_t block_out, uint32_t block_in);

    // Rows [row0, row0 + n_rows) of `name` as f32, where a row is everything after the
    // first dimension (a 1-D tensor has one element per row). out.size() must be
    // n_rows * row_size. FP8 tensors are dequantised with `<name>_scale_inv`.
    void read_rows_f32(std::string_view name, uint64_t row0, uint64_t n_rows, std::span<float> out);
    // The whole tensor as f32.
    std::vector<float> read_f32(std::string_view name);

private:
    Checkpoint() = default;
    struct Shard {
        std::string path;
        std::unique_ptr<SafetensorsFile> file;  // null until first use
    };
    const SafetensorsFile& shard(size_t i, std::string_view wanted_by);
    const std::vector<float>& scales_for(std::string_view name, const StTensor& w);

    std::string dir_;
    bool sharded_ = false;
    std::vector<Shard> shards_;
    std::map<std::string, size_t, std::less<>> where_;  // tensor -> shard index
    uint32_t block_out_ = 128, block_in_ = 128;
    std::string scale_cache_name_;  // the scales of the FP8 tensor read last
    std::vector<float> scale_cache_;
};

// Elements per row as read_rows_f32 counts them (product of shape[1..]; 1 for 1-D).
uint64_t row_size(const std::vector<uint64_t>& shape);

}  // namespace ds3::hf
