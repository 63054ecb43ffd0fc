#include "backends/backend.h"

#include "backends/cpu/cpu_backend.h"
#include "runtime/error.h"

namespace ds3 {

std::vector<std::string> available_backends() { return {"cpu"}; }

std::unique_ptr<Backend> create_backend(std::string_view name, const BackendOptions& opts) {
    if (name == "cpu") return make_cpu_backend(opts);
    std::string known;
    for (const auto& b : available_backends()) known += (known.empty() ? "" : ", ") + b;
    throw Error("backend", "unknown or unavailable backend '" + std::string(name) + "' (available: " + known + ")");
}

}  // namespace ds3
