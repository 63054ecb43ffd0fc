// The CUDA backend's resident weights: each weight's device copy, uploaded on first use
// (in the layout its kernels read: q4_K, q5_K and q6_K are regrouped, kernels.h) and kept
// until the backend goes, or replaced when another model's bytes are mapped at the same
// host address.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <unordered_map>

#include "backends/cuda/kernels.h"
#include "backends/cuda/pool.h"
#include "runtime/weights.h"

namespace ds3::cuda {

// The kernels' type for a weight type (quant.cuh decodes it), or nullopt.
std::optional<WType> wtype_of(TypeId t);
inline WType wtype(TypeId t) { return wtype_of(t).value_or(WType::f32); }

class Resident {
public:
    struct Entry {
        void* ptr = nullptr;
        uint64_t nbytes = 0;
        TypeId type = TypeId::F32;
        uint64_t print = 0;
        WType wt = WType::f32;  // the device layout (q6_K_g for regrouped Q6_K, ...)
    };
    Resident(Pool& pool, cudaStream_t stream) : pool_(pool), stream_(stream) {}
    ~Resident();
    Resident(const Resident&) = delete;
    Resident& operator=(const Resident&) = delete;

    // The device copy of w, uploaded now if needed (on the stream, waited for). `replaced`
    // is set when an older copy at w's address was freed: graphs captured with it are stale.
    const Entry& get(const Weight& w, bool& replaced);

private:
    static WType layout_of(const Weight& w);
    bool upload_regrouped(void* dst, const Weight& w, WType g);

    Pool& pool_;
    cudaStream_t stream_;
    std::unordered_map<const uint8_t*, Entry> entries_;
};

}  // namespace ds3::cuda
