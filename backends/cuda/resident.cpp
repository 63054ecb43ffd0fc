// Resident weights of the CUDA backend (resident.h).
#include "backends/cuda/resident.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "backends/cuda/check.h"
#include "quantize/types.h"
#include "runtime/error.h"

namespace ds3::cuda {

namespace {

// A sample of a weight's bytes: a later Weight at the same address with other contents
// (a model unloaded and another mapped in its place) is uploaded afresh.
uint64_t fingerprint(const Weight& w) {
    const size_t n = static_cast<size_t>(w.nbytes), k = std::min<size_t>(n, 256);
    uint64_t h = XXH3_64bits(w.data, k);
    if (n > k) h ^= XXH3_64bits(w.data + n - k, k) * 0x9E3779B97F4A7C15ull;
    if (n > 2 * k) h ^= XXH3_64bits(w.data + n / 2, k) * 0xC2B2AE3D27D4EB4Full;
    return h;
}

}  // namespace

// The weight types the kernels decode (quant.cuh), or nullopt.
std::optional<WType> wtype_of(TypeId t) {
    switch (t) {
        case TypeId::F32: return WType::f32;
        case TypeId::BF16: return WType::bf16;
        case TypeId::F16: return WType::f16;
        case TypeId::Q8_0: return WType::q8_0;
        case TypeId::Q4_0: return WType::q4_0;
        case TypeId::Q2_K: return WType::q2_K;
        case TypeId::Q3_K: return WType::q3_K;
        case TypeId::Q4_K: return WType::q4_K;
        case TypeId::Q5_K: return WType::q5_K;
        case TypeId::Q6_K: return WType::q6_K;
        case TypeId::IQ4_XS: return WType::iq4_xs;
        case TypeId::FP8_E4M3_B128: return WType::fp8_b128;
        default: return std::nullopt;
    }
}

Resident::~Resident() {
    for (auto& [k, e] : entries_) cudaFree(e.ptr);
}

// The layout w is kept in on the device: q4_K, q5_K and q6_K are regrouped on upload for
// the kernels (kernels.h's gpu_layout: interleaved 32 rows at a time for matrices of many
// rows, else q4_K_g, q5_K_g, and q6_K_g for rows of an even block count).
// DS3_CUDA_REGROUP=0 keeps every plain layout; a comma-separated list of type names
// (q4_K,q6_K) regroups those only (read once).
WType Resident::layout_of(const Weight& w) {
    const WType t = wtype(w.type), g = gpu_layout(t, w.ne[0], w.ne[1], w.ne[2] * w.ne[3]);
    if (g == t) return t;
    static const std::string only = [] {
        std::string list;
        if (const char* e = std::getenv("DS3_CUDA_REGROUP")) list.append(",").append(e).append(",");
        return list;
    }();
    if (only.empty() || only == ",1,") return g;
    std::string name(",");
    name.append(type_traits(w.type).name).append(",");
    return only.find(name) != std::string::npos ? g : t;
}

// Copies w to dst in layout g: through a device staging buffer of at most 64 MiB, a
// slice of whole units at a time. False (nothing written) when the staging buffer
// cannot be had; the caller then uploads the plain layout.
bool Resident::upload_regrouped(void* dst, const Weight& w, WType g) {
    const uint64_t unit = static_cast<uint64_t>(regroup_unit(g, w.ne[0])), units = w.nbytes / unit;
    const uint64_t step = std::max<uint64_t>(1, std::min<uint64_t>(units, (64ull << 20) / unit));
    void* tmp = nullptr;
    if (cudaMalloc(&tmp, step * unit) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    cudaError_t e = cudaSuccess;
    for (uint64_t p = 0; p < units && e == cudaSuccess; p += step) {
        const uint64_t n = std::min(step, units - p);
        e = cudaMemcpyAsync(tmp, w.data + p * unit, n * unit, cudaMemcpyHostToDevice, stream_);
        if (e == cudaSuccess) {
            regroup(g, tmp, static_cast<uint8_t*>(dst) + p * unit, static_cast<int64_t>(n), stream_, w.ne[0]);
            e = cudaGetLastError();
        }
    }
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream_);  // tmp is freed next
    cudaFree(tmp);
    if (e != cudaSuccess) throw Error("cuda", w.name + ": weight upload failed: " + cudaGetErrorString(e));
    return true;
}

const Resident::Entry& Resident::get(const Weight& w, bool& replaced) {
    check(wtype_of(w.type).has_value(), "cuda",
          w.name + ": weight type " + std::string(type_traits(w.type).name) + " is not supported by the CUDA backend");
    const uint64_t print = fingerprint(w);
    auto it = entries_.find(w.data);
    if (it != entries_.end()) {
        if (it->second.nbytes == w.nbytes && it->second.type == w.type && it->second.print == print)
            return it->second;
        DS3_CU(cudaStreamSynchronize(stream_));  // the old copy may still be read
        replaced = true;                         // captured graphs may read it
        cudaFree(it->second.ptr);
        entries_.erase(it);
    }
    Entry d{nullptr, w.nbytes, w.type, print, wtype(w.type)};
    cudaError_t e = cudaMalloc(&d.ptr, std::max<uint64_t>(w.nbytes, 1));
    if (e != cudaSuccess) {
        cudaGetLastError();
        pool_.trim();
        e = cudaMalloc(&d.ptr, std::max<uint64_t>(w.nbytes, 1));
    }
    if (e != cudaSuccess)
        throw Error("cuda", w.name + ": cannot keep the weight on the device (" + std::to_string(w.nbytes) +
                                " bytes): " + cudaGetErrorString(e));
    const WType g = layout_of(w);
    if (const int64_t unit = regroup_unit(g, w.ne[0]); g != d.wt && unit > 0 && w.nbytes % unit == 0) {
        try {
            if (upload_regrouped(d.ptr, w, g)) {
                d.wt = g;
                return entries_[w.data] = d;
            }
        } catch (...) {
            cudaFree(d.ptr);
            throw;
        }
    }
    // On our stream: kernels run on a non-blocking stream, which does not wait for
    // the legacy stream, and a pageable cudaMemcpy may return before its DMA ends.
    e = cudaMemcpyAsync(d.ptr, w.data, w.nbytes, cudaMemcpyHostToDevice, stream_);
    if (e != cudaSuccess) {
        cudaFree(d.ptr);
        throw Error("cuda", w.name + ": weight upload failed: " + cudaGetErrorString(e));
    }
    return entries_[w.data] = d;
}


}  // namespace ds3::cuda
