#include "backends/backend.h"

#include "backends/cpu/cpu_backend.h"
#ifdef DS3_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"  // the CUDA backend, when built
#endif
#include "runtime/error.h"

namespace ds3 {

std::vector<std::string> available_backends() {
#ifdef DS3_HAVE_CUDA
    if (cuda_device_count() > 0) return {"cpu", "cuda"};
#endif
    return {"cpu"};
}

std::unique_ptr<Backend> create_backend(std::string_view name, const BackendOptions& opts) {
    if (name == "cpu") return make_cpu_backend(opts);
#ifdef DS3_HAVE_CUDA
    if (name == "cuda") return make_cuda_backend(opts);
#endif
    std::string known;
    for (const auto& b : available_backends()) known += (known.empty() ? "" : ", ") + b;
    throw Error("backend", "unknown or unavailable backend '" + std::string(name) + "' (available: " + known + ")");
}

}  // namespace ds3
