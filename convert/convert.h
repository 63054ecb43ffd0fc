// `ds3 convert`: a Hugging Face DeepSeek release directory -> one GGUF v3 file in
// llama.cpp's "deepseek2" layout (metadata keys and tensor names in docs/gguf.md).
//
// The job streams: every tensor is declared first (shapes checked against config.json,
// so a bad release fails before the output exists), then each is read from its shard in
// row chunks, dequantised to f32, transformed (kv_b split, expert stacking), converted to
// the output type and written. Resident memory is a few chunk buffers whatever the
// release's size. The output is written under a temporary name and renamed at the end;
// any error (or an exception from on_tensor) leaves nothing at the output path.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "convert/hf_config.h"
#include "quantize/mixes.h"
#include "quantize/types.h"
#include "runtime/progress.h"

namespace ds3::gguf {
class Writer;
}
namespace ds3::quant {
struct Imatrix;
}

namespace ds3::hf {

// Output types of the matrices (norms, router, biases and embeddings stay F32). Any
// other --outtype (a mix such as Q4_K_M, or a quantized type, fp8 included) is a
// quant::Target in ConvertOptions::target: the same per-tensor choice as `ds3 quantize`.
enum class OutType { F32, BF16, F16 };
std::optional<OutType> outtype_from_name(std::string_view name);  // "f32" | "bf16" | "f16"
std::string_view outtype_name(OutType t);
TypeId outtype_type(OutType t);
// llama.cpp's general.file_type: 0 ALL_F32, 1 MOSTLY_F16, 32 MOSTLY_BF16.
uint32_t outtype_file_type(OutType t);

struct ConvertOptions {
    OutType outtype = OutType::BF16;
    // When set, replaces outtype: every tensor gets quant::choose_type(*target, ...) and is
    // quantised as it streams (no f32 intermediate file). With fp8 on an FP8 release, the
    // release's e4m3 bytes and 128x128 tile scales are kept as they are (FP8_E4M3_B128).
    std::optional<quant::Target> target;
    // Per-column importance for the quantised matrices (`--imatrix`), applied exactly as
    // `ds3 quantize --imatrix` applies it (same bytes, same quantize.imatrix.* keys).
    // Needs a target; nullable.
    const quant::Imatrix* imatrix = nullptr;
    std::string imatrix_path;  // recorded in the output's metadata
    std::string name;  // general.name; empty: the release directory's name
    Progress::Mode progress = Progress::Mode::Off;  // the CLI passes Auto
    bool tokenizer = true;  // write tokenizer.* keys when the release has tokenizer.json
    // Called after each tensor is written: (index, count, GGUF name). An exception thrown
    // from it aborts the conversion like any other error.
    std::function<void(size_t, size_t, const std::string&)> on_tensor;
};

struct ConvertStats {
    size_t n_tensors = 0;
    uint64_t bytes = 0;  // the output file's size
    double seconds = 0;
};

ConvertStats convert(const std::string& hf_dir, const std::string& out_path, const ConvertOptions& opts = {});

// The model's metadata: general.*, deepseek2.* and ds3.* keys (not the tokenizer's).
// `source_dtype` is how the release stores its matrices ("fp8", "bf16", ...).
void write_model_metadata(gguf::Writer& w, const HfConfig& c, const std::optional<GenerationConfig>& gen,
                          OutType outtype, const std::string& name, const std::string& source_dtype);

}  // namespace ds3::hf
