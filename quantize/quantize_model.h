// `ds3 quantize IN.gguf OUT.gguf TYPE`: a deepseek2 GGUF to another with every tensor in
// the type quantize/mixes.h chooses. Streams: each tensor is read from the mapped input
// in chunks of rows (never more than a chunk of f32 rows and its quantized bytes in
// memory, whatever the tensor's size), quantised on all threads and written through
// gguf::Writer (temporary file, renamed at the end; a failure or Ctrl-C leaves nothing at
// OUT). Metadata is copied, with general.file_type / general.quantization_version set.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "quantize/mixes.h"
#include "runtime/progress.h"

namespace ds3::quant {

struct Imatrix;

struct QuantizeOptions {
    Target target;
    const TypeOverrides* overrides = nullptr;  // --tensor-type rules (nullable)
    const Imatrix* imatrix = nullptr;           // per-column importance (nullable)
    std::string imatrix_path;                   // recorded in the output's metadata
    int n_threads = 0;                          // 0: OpenMP's default
    Progress::Mode progress = Progress::Mode::Off;
};

struct QuantizeStats {
    size_t n_tensors = 0;
    size_t n_fallback = 0;  // matrices whose rows did not fit the wanted type
    uint64_t bytes_in = 0, bytes_out = 0;  // tensor data
    uint64_t n_weights = 0;                // elements of all tensors
    double seconds = 0;
    std::vector<std::string> notes;  // one line per fallback
};

QuantizeStats quantize_model(const std::string& in_path, const std::string& out_path, const QuantizeOptions& o);

// Quantises n_rows rows of row_len f32 values into `type` (dst: n_rows whole rows), rows
// in parallel. importance: empty, or one pointer per row (row_len weights, or nullptr).
// Same bytes whatever the thread count (rows are independent).
void quantize_rows(TypeId type, const float* src, uint8_t* dst, int64_t n_rows, int64_t row_len,
                   std::span<const float* const> importance, int n_threads);

// Elements per streamed chunk (4 Mi: 16 MiB of f32).
inline constexpr int64_t kQuantChunkElems = int64_t{4} << 20;

}  // namespace ds3::quant
