// The CPU backend: host buffers and the kernels of backends/cpu/ops.h. Several
// instances may coexist (the split-experts test runs two), each with its own thread
// count.
#pragma once

#include <memory>
#include <string>

#include "backends/backend.h"

namespace ds3 {

std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& opts, std::string name = "cpu");

}  // namespace ds3
