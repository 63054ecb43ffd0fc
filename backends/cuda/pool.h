// Device memory of the CUDA backend: a caching pool by size class, the buffers the
// scheduler gets from it, and scratch held for one op (cuda_backend.cpp, resident.cpp).
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backends/backend.h"
#include "runtime/error.h"

namespace ds3::cuda {

// Device memory is recycled by size class: the scheduler allocates and frees one buffer
// per node per step, and cudaMalloc/cudaFree would synchronise the device each time.
// All work runs on one stream, so a block freed after enqueuing kernels that use it can
// be handed to later work on the same stream without waiting (a captured step's second
// stream never sees a block reused: blocks given back during a capture are held).
class Pool {
public:
    ~Pool() {
        for (auto& [size, list] : free_)
            for (void* p : list) cudaFree(p);
    }
    static size_t size_class(size_t n) {
        if (n <= 4096) return (n + 255) / 256 * 256;
        // Eight classes per power of two: ≤ 12.5% waste, good reuse across steps.
        size_t p = 1;
        while (p * 2 <= n) p *= 2;
        const size_t step = p / 8;
        return (n + step - 1) / step * step;
    }
    void* get(size_t n, size_t& cap) {
        cap = size_class(std::max<size_t>(n, 1));
        auto it = free_.find(cap);
        if (it != free_.end() && !it->second.empty()) {
            void* p = it->second.back();
            it->second.pop_back();
            return p;
        }
        void* p = nullptr;
        cudaError_t e = cudaMalloc(&p, cap);
        if (e != cudaSuccess) {
            // Give cached blocks back and try once more before failing.
            cudaGetLastError();
            trim();
            e = cudaMalloc(&p, cap);
        }
        if (e != cudaSuccess)
            throw Error("cuda", "out of device memory: " + std::to_string(cap) + " bytes requested (" +
                                    cudaGetErrorString(e) + ")");
        return p;
    }
    void put(void* p, size_t cap) {
        if (hold_)
            hold_->push_back({p, cap});
        else
            free_[cap].push_back(p);
    }
    // While a CUDA graph is captured, blocks given back are kept for that graph (its
    // replays use their addresses) instead of going back to the free lists.
    using Held = std::vector<std::pair<void*, size_t>>;
    void hold(Held* h) { hold_ = h; }
    void trim() {
        cudaDeviceSynchronize();
        for (auto& [size, list] : free_) {
            for (void* p : list) cudaFree(p);
            list.clear();
        }
    }

private:
    std::map<size_t, std::vector<void*>> free_;
    Held* hold_ = nullptr;
};

class CudaBuffer final : public Buffer {
public:
    CudaBuffer(std::shared_ptr<Pool> pool, size_t bytes) : pool_(std::move(pool)), bytes_(bytes) {
        ptr_ = pool_->get(bytes, cap_);
    }
    // A view on memory owned elsewhere (a replayable graph's activation arena).
    CudaBuffer(void* ptr, size_t bytes) : bytes_(bytes), ptr_(ptr) {}
    ~CudaBuffer() override {
        if (pool_) pool_->put(ptr_, cap_);
    }
    CudaBuffer(const CudaBuffer&) = delete;
    CudaBuffer& operator=(const CudaBuffer&) = delete;
    size_t size() const override { return bytes_; }
    void* dev() const { return ptr_; }

private:
    std::shared_ptr<Pool> pool_;
    size_t bytes_;
    size_t cap_ = 0;
    void* ptr_ = nullptr;
};

// Temporary device memory for one compute(): back to the pool at scope exit, which is
// safe because later users are ordered after this op on the same stream.
class Scratch {
public:
    Scratch(Pool& pool, size_t bytes) : pool_(pool) { ptr_ = pool_.get(bytes, cap_); }
    ~Scratch() { pool_.put(ptr_, cap_); }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    float* f() const { return static_cast<float*>(ptr_); }
    int* i() const { return static_cast<int*>(ptr_); }

private:
    Pool& pool_;
    size_t cap_ = 0;
    void* ptr_ = nullptr;
};

}  // namespace ds3::cuda
