// The CUDA backend (docs/cuda.md): every op of the graph on one GPU, weights uploaded
// once and kept resident (keyed by the Weight's data pointer), activations and the
// latent cache in device memory from a caching pool, all work on one stream.
// Built only when the CUDA toolkit is found (DS3_HAVE_CUDA).
#pragma once

#include <memory>
#include <string>

#include "backends/backend.h"

namespace ds3 {

// Devices the runtime sees; 0 when there is no driver or no GPU (never throws).
int cuda_device_count();

// Throws Error("cuda", ...) when no device is usable. Device: $DS3_CUDA_DEVICE or 0.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& opts, std::string name = "cuda");

}  // namespace ds3
