// Helpers of the CUDA tests: a CUDA backend or a skip (no GPU: CI), and the error
// measures every op comparison uses.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "backends/cuda/cuda_backend.h"

namespace ds3::test {

inline std::unique_ptr<Backend> cuda_or_null() {
    if (cuda_device_count() == 0) return nullptr;
    return create_backend("cuda");
}

// A CUDA backend with decode-step graphs on or off (DS3_CUDA_GRAPHS is read at creation).
inline std::unique_ptr<Backend> cuda_with_graphs(bool on) {
    ::setenv("DS3_CUDA_GRAPHS", on ? "1" : "0", 1);
    auto b = create_backend("cuda");
    ::unsetenv("DS3_CUDA_GRAPHS");
    return b;
}

// Sets an environment variable for one scope (the backend reads DS3_CUDA_Q6I_ROWS at each
// upload, most switches at its creation).
struct EnvGuard {
    std::string name, old;
    bool had = false;
    EnvGuard(const char* n, const char* v) : name(n) {
        if (const char* o = std::getenv(n)) had = true, old = o;
        ::setenv(n, v, 1);
    }
    ~EnvGuard() {
        if (had) ::setenv(name.c_str(), old.c_str(), 1);
        else ::unsetenv(name.c_str());
    }
};

// ‖a − ref‖₂ / max(‖ref‖₂, tiny): the normalised error of test-backend-ops.
inline double nmse_root(std::span<const float> a, std::span<const float> ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size() && i < ref.size(); ++i) {
        const double d = double(a[i]) - double(ref[i]);
        num += d * d;
        den += double(ref[i]) * ref[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
}

inline bool all_finite(std::span<const float> v) {
    for (float x : v)
        if (!std::isfinite(x)) return false;
    return true;
}

}  // namespace ds3::test

// Skips the rest of a test case when no CUDA device is present (CI builds the backend
// but has no GPU).
#define DS3_REQUIRE_CUDA(var)                                                  \
    auto var = ::ds3::test::cuda_or_null();                                    \
    if (!var) {                                                                \
        WARN("skipped: no CUDA device (cuda_device_count() == 0)");            \
        return;                                                                \
    }
